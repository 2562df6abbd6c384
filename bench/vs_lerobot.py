"""apprentice vs LeRobot 0.6.1 side by side: ACT training steps/s, data loading samples/s and
batch-1 inference latency, on the same episodes with identical model configs.

    .venv/bin/python bench/vs_lerobot.py [--rounds 3] [--quick] [--json out.json]
        [--only train,load,infer] [--work DIR] [--threads 2]

One command from a fresh clone: it first runs scripts/lerobot_venv.sh (idempotent), which makes
.venv-lerobot, a separate Python 3.12 venv with lerobot 0.6.1 and its own torch. Then:
1. Data, once (kept in --work DIR when given, reused by a later run with the same sizes):
   synthetic episodes written as real bags (7 joints at 100 Hz, commands at 50 Hz, a 480x640
   JPEG camera at 30 Hz), each built into an apprentice cache AND exported to a LeRobot v3.0
   dataset (AV1, LeRobot's default codec) by apprentice's exporter, at 96x128 and at 480x640.
   No idle-start trim and no validation split, so both hold the same frames (checked).
2. Models: LeRobot builds its ACT from the dataset's meta (random init: no pretrained backbone
   on either side) and saves it with its processors; apprentice imports that checkpoint
   (`apprentice import-policy`'s conversion, which places every tensor or fails), so both sides
   train and run the same architecture from the same weights. The identical config is
   LeRobot's ACTConfig defaults (resnet18, dim_model 512, 4 encoder / 1 decoder layers, VAE,
   chunk 100) at 96x128, i.e. apprentice's `--preset paper --set n_decoder_layers=1`; paper
   size is 480x640 with 7 decoder layers, apprentice's `--preset paper`. Both are checked
   field by field, and the parameter counts equal (apprentice's per-camera embedding aside).
3. Every measurement is a fresh process, apprentice then LeRobot, round after round, torch
   threads fixed (--threads) and OMP_WAIT_POLICY=PASSIVE on both sides:
   - training: batch 8, AdamW, grad-norm clip 10, each side's own loader (0 workers) and step;
     on a CPU with native bf16 apprentice's process then also times its `--cpu-bf16` step
     (bf16 autocast), a row of its own against the same LeRobot run;
   - loading: ACT samples (state, one image, 100 actions), batch 8, shuffled, 0 and 2 workers,
     at least 150 batches and 5 s: LeRobotDataset (delta_timestamps) + lerobot-train's
     DataLoader settings vs apprentice's training loader (`train_data.train_loader`);
   - inference, batch 1, median: LeRobot eager (preprocessor, predict_action_chunk,
     postprocessor; no_grad, eval) vs apprentice ONNX Runtime (normalization included).
Prints a markdown table: medians over the rounds, and the ratio (apprentice's advantage: its
rate / LeRobot's, or LeRobot's latency / its latency) with its min-max over the rounds' pairs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LEROBOT_VENV = ROOT / ".venv-lerobot"
LEROBOT_WORKER = ROOT / "bench" / "vs_lerobot_worker.py"
APPRENTICE_WORKER = ROOT / "bench" / "vs_lerobot_apprentice.py"
JOINTS = ("waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate", "gripper")
SIZES = {"96x128": (96, 128), "480x640": (480, 640)}
# LeRobot's ACTConfig.n_decoder_layers per size: its default (1), and the paper's 7
DECODER_LAYERS = {"96x128": 1, "480x640": 7}
ARCH_FIELDS = (
    "image_hw", "chunk_size", "d_model", "n_heads", "dim_feedforward", "n_encoder_layers",
    "n_decoder_layers", "n_vae_encoder_layers", "latent_dim", "dropout", "kl_weight",
    "backbone_width", "backbone_norm", "backbone_stride",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Sizes:
    episodes: int = 8
    seconds: float = 15.0  # per episode: 750 frames at 50 Hz
    train_steps: int = 20
    train_warmup: int = 3
    paper_steps: int = 4  # 0.1-0.14 steps/s on the 2-core machine
    paper_warmup: int = 1
    load_batches: int = 150  # at least, and for at least load_seconds
    load_seconds: float = 5.0
    repeats: int = 50
    paper_repeats: int = 10


QUICK = Sizes(episodes=2, seconds=3.0, train_steps=2, train_warmup=1, paper_steps=1,
              paper_warmup=1, load_batches=5, load_seconds=0.2, repeats=3,
              paper_repeats=2)  # fmt: skip


class BenchError(Exception):
    """A failed step: one line for the user."""


def ensure_lerobot_venv() -> Path:
    """scripts/lerobot_venv.sh (a no-op when .venv-lerobot is ready); its python."""
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "lerobot_venv.sh")], cwd=ROOT,
                          capture_output=True, text=True)  # fmt: skip
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        last = lines[-1] if lines else "no output"
        raise BenchError(f"scripts/lerobot_venv.sh failed (exit {proc.returncode}): {last}")
    return LEROBOT_VENV / "bin" / "python"


def worker_env(threads: int, work: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), OMP_WAIT_POLICY="PASSIVE",
        HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(work / "hf_home"),
        TOKENIZERS_PARALLELISM="false", PYTHONWARNINGS="ignore",
    )  # fmt: skip
    return env


def run_worker(argv: list[str], env: dict[str, str], log: Path) -> dict:
    """Runs one worker process; its last stdout line is the JSON result."""
    with open(log, "a") as err:
        err.write(f"\n$ {' '.join(argv)}\n")
        err.flush()
        t0 = time.perf_counter()
        proc = subprocess.run(argv, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
        wall = time.perf_counter() - t0
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = [ln for ln in log.read_text().splitlines() if ln.strip()][-1:]
        raise BenchError(f"{Path(argv[1]).name} {argv[2]} failed (exit {proc.returncode}): "
                         f"{tail[0] if tail else 'no output'} (log: {log})")  # fmt: skip
    return json.loads(lines[-1]) | {"process_wall_s": round(wall, 1)}


def make_data(work: Path, sizes: Sizes) -> dict:
    """Bags, the two caches and the two LeRobot exports; reused when already there."""
    from apprentice.dataset import DatasetCache, EpisodeBag, build_cache, infer_config
    from apprentice.dataset.synthetic import SyntheticEpisode, write_episode
    from apprentice.interop.lerobot_export import export_lerobot

    marker = work / "data.json"
    want = {"episodes": sizes.episodes, "seconds": sizes.seconds}
    if marker.is_file() and json.loads(marker.read_text()).get("made") == want:
        return json.loads(marker.read_text())
    for name in ("bags", *(f"{k}_{s}" for k in ("cache", "lerobot") for s in SIZES)):
        shutil.rmtree(work / name, ignore_errors=True)
    spec = SyntheticEpisode(arm="left", joints=JOINTS, compressed=True, image_hw=(480, 640),
                            duration_s=sizes.seconds)  # fmt: skip
    t0 = time.perf_counter()
    for i in range(sizes.episodes):
        write_episode(work / "bags" / f"episode_{i:04d}", spec, seed=i)
    info: dict = {"made": want, "bags_s": round(time.perf_counter() - t0, 1)}
    topics = EpisodeBag(work / "bags" / "episode_0000").topics
    base = infer_config(topics, val_fraction=0.0, trim_idle_start=False)
    for name, hw in SIZES.items():
        cfg = dataclasses.replace(base, image_hw=hw)
        t0 = time.perf_counter()
        build_cache(work / "bags", cfg, work / f"cache_{name}", progress=False)
        t1 = time.perf_counter()
        # image_store raw: the exporter reads its per-episode cache's frames as one array
        # (the frames written are the same decoded, resized camera images either way)
        out = export_lerobot(work / "bags", work / f"lerobot_{name}", image_hw=hw,
                             config=dataclasses.replace(cfg, image_store="raw"),
                             progress=False)  # fmt: skip
        cache = DatasetCache(work / f"cache_{name}")
        if (out.frames, out.episodes) != (cache.n_frames, len(cache.episodes)):
            raise BenchError(f"{name}: the cache holds {cache.n_frames} frames in "
                             f"{len(cache.episodes)} episodes, the LeRobot export {out.frames} "
                             f"in {out.episodes}")  # fmt: skip
        info[name] = {"frames": cache.n_frames, "episodes": len(cache.episodes),
                      "image_store": cache.meta["config"].get("image_store"),
                      "cache_build_s": round(t1 - t0, 1),
                      "lerobot_export_s": round(time.perf_counter() - t1, 1)}  # fmt: skip
    marker.write_text(json.dumps(info, indent=1))
    return info


def make_models(work: Path, lerobot_py: Path, env: dict[str, str], log: Path) -> dict:
    """LeRobot's random-init ACT per size, imported by apprentice; configs and counts checked."""
    from apprentice.dataset import DatasetCache
    from apprentice.interop.lerobot_policy import read_checkpoint, to_policy
    from apprentice.learning.checkpoint import save_policy
    from apprentice.learning.train_config import make_policy_config

    models = {}
    for name in SIZES:
        src, dst = work / f"lerobot_policy_{name}", work / f"apprentice_policy_{name}"
        for folder in (src, dst):
            shutil.rmtree(folder, ignore_errors=True)
        made = run_worker([str(lerobot_py), str(LEROBOT_WORKER), "make-policy",
                           "--dataset", str(work / f"lerobot_{name}"), "--out", str(src),
                           "--n-decoder-layers", str(DECODER_LAYERS[name])], env, log)  # fmt: skip
        policy, _ = to_policy(read_checkpoint(src))  # every LeRobot tensor placed, or an error
        save_policy(policy, dst)
        overrides = {"n_decoder_layers": 1} if DECODER_LAYERS[name] == 1 else {}
        preset = make_policy_config("act", "paper", DatasetCache(work / f"cache_{name}"), overrides)
        differ = [f for f in ARCH_FIELDS if getattr(preset, f) != getattr(policy.cfg, f)]
        if differ:
            raise BenchError(f"{name}: LeRobot's ACT differs from apprentice's paper preset "
                             f"{overrides or ''} in {differ}")  # fmt: skip
        params = sum(p.numel() for p in policy.parameters())
        camera_embed = policy.camera_embed.numel()  # LeRobot has none (zeros after import)
        if params - camera_embed != made["params"]:
            raise BenchError(f"{name}: apprentice ACT has {params} parameters ({camera_embed} "
                             f"in camera_embed), LeRobot's {made['params']}")  # fmt: skip
        models[name] = {"lerobot_params": made["params"], "apprentice_params": params,
                        "apprentice_camera_embed": camera_embed,
                        "config": {f: getattr(policy.cfg, f) for f in ARCH_FIELDS},
                        "apprentice_preset": "paper" + (" --set n_decoder_layers=1"
                                                        if overrides else ""),
                        "lerobot": made["lerobot"], "lerobot_torch": made["torch"]}  # fmt: skip
    return models


def measurements(work: Path, s: Sizes, only: set[str]) -> list[tuple[str, str, list, list]]:
    """(key, figure, apprentice args, LeRobot args or [] when LeRobot has no counterpart)."""
    out = []

    def add(key: str, figure: str, name: str, common: list, policy: bool = True) -> None:
        a = ["--cache", str(work / f"cache_{name}"), *common]
        b = ["--dataset", str(work / f"lerobot_{name}"), *common]
        if policy:
            a += ["--policy", str(work / f"apprentice_policy_{name}")]
            b += ["--policy", str(work / f"lerobot_policy_{name}")]
        out.append((key, figure, [key.split("_")[0], *a], [key.split("_")[0], *b]))

    default, paper = "LeRobot's default ACT", "paper ACT (7 decoder layers)"
    if "train" in only:
        add("train_96x128", f"training, {default}, 96x128, batch 8 (steps/s)", "96x128",
            ["--steps", str(s.train_steps), "--warmup", str(s.train_warmup)])  # fmt: skip
        add("train_480x640", f"training, {paper}, 480x640, batch 8 (steps/s)", "480x640",
            ["--steps", str(s.paper_steps), "--warmup", str(s.paper_warmup)])  # fmt: skip
    if "load" in only:
        at_least = ["--batches", str(s.load_batches), "--seconds", str(s.load_seconds)]
        for name in SIZES:
            for k in (0, 2):
                figure = f"loading ACT samples, {name}, batch 8, {k} workers (samples/s)"
                add(f"load_{name}_{k}w", figure, name, ["--workers", str(k), *at_least], False)
    if "infer" in only:
        add("infer_96x128", f"inference batch 1, {default}, 96x128: ORT vs eager (ms)", "96x128",
            ["--repeats", str(s.repeats)])  # fmt: skip
        add("infer_480x640", f"inference batch 1, {paper}, 480x640: ORT vs eager (ms)", "480x640",
            ["--repeats", str(s.paper_repeats)])  # fmt: skip
        cpu = ["infer", "--cache", str(work / "cache_96x128"), "--policy", "cpu", "--repeats",
               str(s.repeats)]  # fmt: skip
        out.append(("infer_cpu", "inference batch 1, apprentice CPU preset, 96x128 (ms)", cpu, []))
    return out


def advantage(a: dict, b: dict) -> float:
    """apprentice's speed-up over LeRobot: a ratio of rates, or of latencies the other way."""
    return b["rate"] / a["rate"] if a["unit"] == "ms" else a["rate"] / b["rate"]


def fmt(v: float) -> str:
    return f"{v:.3g}" if v < 100 else f"{v:,.0f}"


def cell(runs: list[dict], key: str = "rate") -> str:
    """The median over the rounds, and the largest peak RSS (plus the loader workers')."""
    main = max(r["peak_rss_mb"] for r in runs) / 1024
    workers = max(sum(r.get("workers_peak_rss_mb", [])) for r in runs) / 1024
    memory = f"{main:.1f} GB" + (f" + workers {workers:.1f} GB" if workers else "")
    return f"{fmt(statistics.median(r[key] for r in runs))} ({memory})"


def table(results: dict, figures: dict) -> str:
    rows = ["| figure | apprentice | LeRobot | ratio (min–max) |", "|---|---|---|---|"]
    for key, runs in results.items():
        a = [r["apprentice"] for r in runs]
        b = [r["lerobot"] for r in runs if "lerobot" in r]
        if not b:
            rows.append(f"| {figures[key]} | {cell(a)} | — | — |")
            continue
        ratios = [advantage(r["apprentice"], r["lerobot"]) for r in runs]
        rows.append(f"| {figures[key]} | {cell(a)} | {cell(b)} | {statistics.median(ratios):.2f}× "
                    f"({min(ratios):.2f}–{max(ratios):.2f}) |")  # fmt: skip
        if key.startswith("train_") and "bf16_rate" in runs[0]["apprentice"]:
            bf16 = [r["apprentice"]["bf16_rate"] / r["lerobot"]["rate"] for r in runs]
            rows.append(
                f"| the same, apprentice with `--cpu-bf16` (bf16 autocast) | "
                f"{cell(a, 'bf16_rate')} | {cell(b)} | "
                f"{statistics.median(bf16):.2f}× ({min(bf16):.2f}–{max(bf16):.2f}) |"
            )
        if key.startswith("infer_"):  # the same graphs in eager mode on both sides
            eager = [r["lerobot"]["rate"] / r["apprentice"]["eager_ms"] for r in runs]
            rows.append(
                f"| {figures[key].replace('ORT vs eager', 'eager both')} | "
                f"{cell(a, 'eager_ms')} | {cell(b)} | "
                f"{statistics.median(eager):.2f}× ({min(eager):.2f}–{max(eager):.2f}) |"
            )
    rows.append(
        "\nMedians over the rounds; in brackets the peak RSS of the measuring process "
        "(VmHWM) and the sum of its loader workers' peaks; ratio: apprentice's speed-up "
        "over LeRobot (rates: apprentice / LeRobot; latencies: LeRobot / apprentice)."
    )
    return "\n".join(rows)


def run(a: argparse.Namespace, work: Path) -> dict:
    sizes = QUICK if a.quick else Sizes()
    only = set(a.only.split(","))
    if not only <= {"train", "load", "infer"}:
        raise BenchError(f"--only takes train,load,infer; got {a.only!r}")
    if a.rounds < 1 or a.threads < 1:
        raise BenchError("--rounds and --threads must be >= 1")
    print("vs_lerobot: scripts/lerobot_venv.sh (the first time: a ~5 GB install) ...",
          file=sys.stderr, flush=True)  # fmt: skip
    lerobot_py = ensure_lerobot_venv()
    env = worker_env(a.threads, work)
    log = work / "workers.log"
    t0 = time.perf_counter()
    result: dict = {"threads": a.threads, "rounds": a.rounds, "quick": a.quick,
                    "sizes": dataclasses.asdict(sizes)}  # fmt: skip
    print(f"vs_lerobot: data in {work} ...", file=sys.stderr, flush=True)
    result["data"] = make_data(work, sizes)
    print("vs_lerobot: models ...", file=sys.stderr, flush=True)
    result["models"] = make_models(work, lerobot_py, env, log)
    plan = measurements(work, sizes, only)
    figures = {key: figure for key, figure, _, _ in plan}
    results: dict = {key: [] for key, *_ in plan}
    py_a = [sys.executable, str(APPRENTICE_WORKER)]
    py_b = [str(lerobot_py), str(LEROBOT_WORKER)]
    threads = ["--threads", str(a.threads)]
    for r in range(a.rounds):
        for key, _, args_a, args_b in plan:
            print(f"vs_lerobot: round {r + 1}/{a.rounds} {key}", file=sys.stderr, flush=True)
            pair = {"apprentice": run_worker(py_a + args_a + threads, env, log)}
            if args_b:
                pair["lerobot"] = run_worker(py_b + args_b + threads, env, log)
            results[key].append(pair)
    result["results"] = results
    first = next(iter(results.values()))[0]
    result["versions"] = {
        "apprentice_torch": first["apprentice"]["torch"],
        "lerobot_torch": result["models"]["96x128"]["lerobot_torch"],
        "lerobot": result["models"]["96x128"]["lerobot"],
    }
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    result["table"] = table(results, figures)
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="A/B pairs per measurement")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, one round: a smoke run")
    ap.add_argument("--json", type=Path, help="write every raw number here")
    ap.add_argument("--only", default="train,load,infer", help="a subset of train,load,infer")
    ap.add_argument(
        "--work",
        type=Path,
        help="keep the data here (default: a temp folder, removed after a success)",
    )
    ap.add_argument("--threads", type=int, default=2, help="torch / ORT threads, both sides")
    a = ap.parse_args()
    if a.quick:
        a.rounds = 1
    work = a.work.resolve() if a.work is not None else Path(tempfile.mkdtemp(prefix="vs_lerobot."))
    work.mkdir(parents=True, exist_ok=True)
    try:
        result = run(a, work)
    except BenchError as exc:  # the work folder stays, with the workers' log
        print(f"vs_lerobot: error: {exc}", file=sys.stderr)
        return 1
    if a.work is None:
        shutil.rmtree(work)
    v, m = result["versions"], result["models"]
    print(f"apprentice (torch {v['apprentice_torch']}) vs lerobot {v['lerobot']} (torch "
          f"{v['lerobot_torch']}); {a.threads} threads each, {result['rounds']} round(s), "
          f"random init both sides")  # fmt: skip
    for name, model in m.items():
        print(f"ACT {name}: LeRobot {model['lerobot_params'] / 1e6:.2f} M parameters, apprentice "
              f"{model['apprentice_params'] / 1e6:.2f} M (apprentice --preset "
              f"{model['apprentice_preset']}; +{model['apprentice_camera_embed']} in its "
              "per-camera embedding, zeros here)")  # fmt: skip
    print(result["table"])
    if a.json is not None:
        a.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
