"""The end-to-end demo pipeline (no rclpy here).

    apprentice demo [--scene aloha_transfer_cube | aloha_insertion | so100_lift |
                     so100_pick_place] [--out DIR]
                    [--fresh]

The demo runs every stage as the CLI command a user would type, in an output folder:
scripted demos → bags (`apprentice record`) → dataset cache → CPU-preset training → ONNX
export → closed-loop eval (`apprentice.eval_cli`); a stage whose result is already in the folder
is reused (`--fresh` starts over). It ends with the policy's success rate and its 95 % interval
next to the scripted demonstrator's (measured on the recorded episodes, through the same
teleop → robot path). `--scene` picks the simulated robot and task (`SCENES`): its record and
eval graphs, the arms and the camera the policy learns from.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from apprentice.eval_cli import EVAL_GRAPH, sim_process
from apprentice.evaluation import RESULTS_FILE, format_rate, format_stages, summarize
from apprentice.report import REPORT_FILE, write_report

RECORD_GRAPH = "record_sim_aloha"  # `apprentice record`'s default graph
FEW_DEMOS = 10  # fewer successful demonstrations than this: warn
RECORD_ROWS = "record_rows.json"  # the record stage's per-episode rows (`apprentice record --rows`)


@dataclass(frozen=True)
class DemoScene:
    """What the demo needs per simulated scene: its graphs (launch/graphs/), the arms and the
    camera the policy learns from (the record graph's names), the default output folder."""

    record_graph: str
    eval_graph: str
    arms: tuple[str, ...]
    camera: str
    out: str
    eval_duration_s: float = 10.0  # s per closed-loop episode (`apprentice eval --duration`)


SCENES = {
    "aloha_transfer_cube": DemoScene(RECORD_GRAPH, EVAL_GRAPH, ("left", "right"), "top",
                                     "runs/demo"),
    "so100_lift": DemoScene("record_sim_so100", "eval_sim_so100", ("arm",), "front",
                            "runs/demo-so100"),
    "so100_pick_place": DemoScene("record_sim_so100_pick_place", "eval_sim_so100_pick_place",
                                  ("arm",), "front", "runs/demo-so100-pick-place"),
    # the transfer cube's top camera: at 128×96 the peg is 16×2.5 px, the socket 17×5 px
    # 12 s: the scripted insertion takes 8.6 s; 10 s left a slow policy 1.4 s to finish
    "aloha_insertion": DemoScene("record_sim_aloha_insertion", "eval_sim_aloha_insertion",
                                 ("left", "right"), "top", "runs/demo-insertion", 12.0),
}  # fmt: skip
DEFAULT_SCENE = "aloha_transfer_cube"


@dataclass(frozen=True)
class DemoConfig:
    """The demo's defaults (docs/BENCHMARKS.md, closed loop): 50 scripted demos (~8 min to
    record, 50/50 succeed through ROS), ACT CPU preset, chunk 50, 8000 steps (~12 min on 2
    cores) exported from an EMA of the weights, 20 eval episodes (~5 min).

    EMA: the last weights of a constant-rate run are noisy; the same run's EMA (decay 0.999)
    did 12/20 closed loop against 3/20 for its raw weights (8000 steps).
    Camera (transfer cube): the ALOHA graphs' top camera (50° lens, 2×2 supersampling) took
    the demo from 10/20 to 17/20 and 18/20 (two demos); through the MJCF's 78° lens, aliased,
    the cube was ~3 px and most grasps missed."""

    scene: str = DEFAULT_SCENE  # a key of SCENES
    episodes: int = 50  # scripted demonstrations
    image_hw: tuple[int, int] = (96, 128)  # the sim renders at this size, recorded and live
    policy: str = "act"
    steps: int = 8000
    ema: float = 0.999  # decay of the exported weights' moving average
    batch_size: int = 8
    chunk_size: int = 50
    threads: int = 2  # torch threads for training
    eval_episodes: int = 20
    seed0: int = 1000
    execution: str = "ensemble"

    def __post_init__(self) -> None:
        if self.scene not in SCENES:
            raise ValueError(f"no demo for scene {self.scene!r}; scenes: {', '.join(SCENES)}")

    @property
    def demo_scene(self) -> DemoScene:
        return SCENES[self.scene]


def dataset_config(hw: tuple[int, int], scene: DemoScene) -> dict[str, Any]:
    """The followers' joint positions → their commands, the scene's camera. The leaders' joint
    states are in the bags too, but the policy cannot see a leader: leave them out.
    Max ages are looser than the defaults (dataset/config.py): on a loaded 2-core host the
    simulator stalls for a few frames at times (measured gaps 0.1-0.3 s), and a scripted demo with
    such a gap is still a good demo."""
    return {
        "control_rate_hz": 50.0,
        "image_hw": list(hw),
        "val_fraction": 0.1,
        "state": [{"topic": f"/{a}/joint_states", "max_age_s": 0.25} for a in scene.arms],
        "action": [{"topic": f"/{a}/commands", "max_age_s": 0.3} for a in scene.arms],
        "cameras": [
            {"name": scene.camera, "topic": f"/cameras/{scene.camera}/image_raw", "max_age_s": 0.4}
        ],
    }


@dataclass(frozen=True)
class DemoSelection:
    kept: int
    unsuccessful: int  # demonstrations whose task failed
    flagged: dict[str, str]  # episode → the quality gate's reasons (left out unless included)

    def summary(self, total: int, listed: int = 3) -> str:
        """One line: up to `listed` flagged episodes with their findings; more are counted by
        kind of finding (lost messages, rate, gaps, ...), never printed whole (100 flagged
        episodes made a 40 kB line)."""
        head = f"{self.kept} of {total} demonstrations kept: {self.unsuccessful} failed the task"
        head += f", {len(self.flagged)} flagged by the quality gate"
        if not self.flagged:
            return head
        if len(self.flagged) <= listed:
            return head + f" ({'; '.join(f'{ep}: {why}' for ep, why in self.flagged.items())})"
        kinds: dict[str, int] = {}
        for why in self.flagged.values():
            for kind in {_finding_kind(part) for part in why.split("; ")}:
                kinds[kind] = kinds.get(kind, 0) + 1
        counted = ", ".join(f"{k} in {n}" for k, n in sorted(kinds.items(), key=lambda kv: -kv[1]))
        names = ", ".join(list(self.flagged)[:listed])
        return f"{head} ({names} and {len(self.flagged) - listed} more; {counted})"


_KIND_NAMES = {"lost": "messages lost", "gap": "gaps", "ends": "streams end early",
               "starts": "streams start late", "future": "future stamps"}  # fmt: skip


def _finding_kind(finding: str) -> str:
    """A quality-gate finding's kind: its text after the topic, without numbers."""
    for word in ("lost", "rate", "gap", "skew", "ends", "starts", "future", "out of order"):
        if word in finding:
            return _KIND_NAMES.get(word, word)
    return finding.split(": ", 1)[-1][:40]


def link_successful(
    demos: Path, rows: Sequence[dict[str, Any]], dest: Path, include_flagged: bool = False
) -> DemoSelection:
    """A folder of links to the episodes whose demonstration succeeded and whose recording
    passed the quality gate (`include_flagged`: those that failed it too): the policy learns
    from those only (a demo that dropped the cube teaches dropping it; one that lost 3 % of
    its joint states teaches jumps)."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    kept, unsuccessful, flagged = 0, 0, {}
    for r in rows:
        if not (demos / r["episode"]).is_dir():
            continue  # in the log, but no bag was kept (a discarded episode)
        if not r.get("success"):
            unsuccessful += 1
            continue
        quality = r.get("quality", "ok")
        if quality != "ok":
            flagged[r["episode"]] = quality
            if not include_flagged:
                continue
        (dest / r["episode"]).symlink_to(demos / r["episode"], target_is_directory=True)
        kept += 1
    return DemoSelection(kept, unsuccessful, flagged)


@dataclass(frozen=True)
class Stage:
    name: str
    done: Callable[[], bool]  # its result is in the output folder
    command: list[str]  # `python -m <command...>`: a CLI module and its arguments
    log: Path


def _checkpoint_step(run: Path) -> int:
    state = run / "checkpoints" / "last" / "state.json"
    return int(json.loads(state.read_text())["step"]) if state.exists() else 0


def demo_stages(out: Path, cfg: DemoConfig) -> list[Stage]:
    from apprentice.dataset import is_cache

    demos, cache, run = out / "demos", out / "cache", out / "run"
    kept = out / "demos_ok"  # links to the successful demonstrations
    policy, evals = run / "policy", out / "eval"
    h, w = cfg.image_hw
    train = ["apprentice", "train", "--policy", cfg.policy, "--preset", "cpu", "--data", str(cache),
             "--out", str(run), "--steps", str(cfg.steps), "--batch-size", str(cfg.batch_size),
             "--threads", str(cfg.threads), "--no-progress", "--val-every", "500",
             "--checkpoint-every", "500", "--ema", str(cfg.ema),
             "--set", f"chunk_size={cfg.chunk_size}"]  # fmt: skip
    if cfg.policy == "diffusion":
        train = train[: train.index("--set")]
    if 0 < _checkpoint_step(run) < cfg.steps:
        train = ["apprentice", "train", "--out", str(run), "--resume", "--steps", str(cfg.steps),
                 "--threads", str(cfg.threads), "--no-progress"]  # fmt: skip
    return [
        Stage("record", lambda: (kept / "record.json").exists(),
              ["apprentice", "record", "--graph", cfg.demo_scene.record_graph, "--episodes",
               str(cfg.episodes), "--dataset", str(demos), "--rows", str(out / RECORD_ROWS),
               "-p", f"image_width={w}", "-p", f"image_height={h}"], out / "record.log"),
        Stage("dataset", lambda: is_cache(cache),
              ["apprentice", "dataset", "build", str(kept), "--out", str(cache), "--config",
               str(out / "dataset.yaml"), "--skip-bad", "--overwrite"],
              out / "dataset.log"),
        Stage("train", lambda: _checkpoint_step(run) >= cfg.steps, train, out / "train.log"),
        Stage("export", lambda: (policy / "policy_card.json").exists(),
              ["apprentice", "export", str(run)], out / "export.log"),
        Stage("eval", lambda: (evals / RESULTS_FILE).exists(),
              ["apprentice", "eval", "--policy", str(policy), "--graph", cfg.demo_scene.eval_graph,
               "--episodes", str(cfg.eval_episodes), "--seed0", str(cfg.seed0),
               "--duration", str(cfg.demo_scene.eval_duration_s), "--out",
               str(evals), "--set", f"execution={cfg.execution}"], out / "eval.log"),
    ]  # fmt: skip


SETUP_FILE = "setup.json"
# sim_robot parameters that change what the policy sees (not only how fast it runs)
CAMERA_KEYS = ("scene", "cameras", "camera_fovy", "supersample")


def demo_setup(cfg: DemoConfig) -> dict[str, Any]:
    """What a demo folder's recordings and policy depend on: the image size and the simulated
    cameras of the record and eval graphs (lens, supersampling)."""
    from apprentice.graph import load_graph

    sims = {}
    for name in (cfg.demo_scene.record_graph, cfg.demo_scene.eval_graph):
        sim = sim_process(load_graph(name))
        sims[name] = {k: sim.parameters.get(k) for k in CAMERA_KEYS}
    return {"image_hw": list(cfg.image_hw), "sim": sims}


def set_aside_if_other_setup(out: Path, setup: dict[str, Any]) -> Path | None:
    """A folder whose stages were made with other cameras (or before the setup was written
    down) is renamed to <out>.<time>, not reused: its demos would train a policy for a camera
    the eval no longer has. Returns the new name, or None when the folder can be reused."""
    if not out.exists() or not any(out.iterdir()):
        return None
    file = out / SETUP_FILE
    try:
        if json.loads(file.read_text()) == setup:
            return None
    except (OSError, ValueError):  # none, or unreadable: not known to match
        pass
    stamp, n = time.strftime("%Y%m%d-%H%M%S"), 1
    aside = out.with_name(f"{out.name}.{stamp}")
    while aside.exists():
        n += 1
        aside = out.with_name(f"{out.name}.{stamp}-{n}")
    out.rename(aside)
    return aside


def drop_run_without_ema(run: Path) -> bool:
    """Deletes a training run that keeps no EMA (one from before the demo exported the EMA):
    resuming it would export its last weights. True when it did."""
    last = run / "checkpoints" / "last"
    if (last / "state.json").exists() and not (last / "ema").exists():
        shutil.rmtree(run)
        return True
    return False


def stale_after(stages: Sequence[Stage]) -> list[bool]:
    """Which stages to run: the first not done and everything after it (a later stage's
    result was made from an earlier one's, so it is stale once that is redone)."""
    run, out = False, []
    for s in stages:
        run = run or not s.done()
        out.append(run)
    return out


def _run_stage(stage: Stage) -> None:
    cmd = [sys.executable, "-m", *stage.command]
    print(f"  $ python -m {' '.join(stage.command)}\n  (log: {stage.log})", flush=True)
    with stage.log.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:  # the log keeps everything; the terminal gets progress lines
            log.write(line)
            log.flush()
            if line.startswith(("[", "step ", "success", "stages", "dataset", "eval:", "record:")):
                print(f"    {line.rstrip()[:160]}", flush=True)
        code = proc.wait()
    if code != 0:
        raise SystemExit(f"demo: stage {stage.name} failed (exit {code}); see {stage.log}")


def run_demo(args: argparse.Namespace) -> int:
    """The whole job in simulation; see the module docstring."""
    cfg = DemoConfig(
        scene=args.scene, episodes=args.episodes, steps=args.steps,
        eval_episodes=args.eval_episodes, policy=args.policy,
    )  # fmt: skip
    out = Path(args.out or cfg.demo_scene.out).resolve()
    if args.fresh and out.exists():
        shutil.rmtree(out)
    setup = demo_setup(cfg)
    aside = set_aside_if_other_setup(out, setup)
    if aside is not None:
        print(f"demo: {out} was made with other camera settings (or by an older version): "
              f"moved to {aside}; starting over", flush=True)  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / SETUP_FILE).write_text(json.dumps(setup, indent=2))
    (out / "dataset.yaml").write_text(yaml.safe_dump(dataset_config(cfg.image_hw, cfg.demo_scene)))
    if drop_run_without_ema(out / "run"):
        print("train: the run in this folder keeps no EMA of its weights: training again")
    stages = demo_stages(out, cfg)
    t_all = time.monotonic()
    for i, (stage, todo) in enumerate(zip(stages, stale_after(stages), strict=True)):
        head = f"[{i + 1}/{len(stages)}] {stage.name}"
        if not todo:
            print(f"{head}: done already in {out} (--fresh redoes it)", flush=True)
            continue
        print(f"{head} ...", flush=True)
        t0 = time.monotonic()
        _run_stage(stage)
        if stage.name == "record":
            rows = json.loads((out / RECORD_ROWS).read_text())
            chosen = link_successful(out / "demos", rows, out / "demos_ok", args.include_flagged)
            print(f"{head}: {chosen.summary(len(rows))}", flush=True)
            if chosen.flagged and not args.include_flagged:
                print(f"{head}: --include-flagged trains on flagged demonstrations too")
            n = chosen.kept
            if n == 0:
                raise SystemExit("demo: no demonstration succeeded: nothing to learn from")
            if n < FEW_DEMOS:
                print(f"warning: only {n} successful demonstrations", file=sys.stderr)
            (out / "demos_ok" / "record.json").write_text(json.dumps(rows, indent=2))
        print(f"{head}: {time.monotonic() - t0:.0f} s", flush=True)
    scripted = summarize(json.loads((out / "demos_ok" / "record.json").read_text()))
    report = out / "eval" / REPORT_FILE
    if not report.exists():  # an eval from before the report
        write_report(out / "eval")
    results = json.loads((out / "eval" / RESULTS_FILE).read_text())
    policy = summarize(results["rows"], results.get("task"))  # results.json of any version
    ratio = (policy["success_rate"] / scripted["success_rate"]) if scripted["success_rate"] else 0
    print(
        f"demo done in {time.monotonic() - t_all:.0f} s ({out}):\n"
        f"  scripted demonstrator  {format_rate(scripted['successes'], scripted['episodes'])}\n"
        f"  {results['policy_type']} policy (closed loop)  "
        f"{format_rate(policy['successes'], policy['episodes'])}, {100 * ratio:.0f} % of the "
        f"demonstrator\n"
        f"  stages reached: {format_stages(policy.get('stages', {}))}\n"
        f"  report {report} (videos in {out / 'eval' / 'videos'})",
        flush=True,
    )
    return 0


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    d = DemoConfig()
    p.add_argument("--scene", choices=tuple(SCENES), default=d.scene,
                   help="the simulated robot and task: its graphs, arms and camera")  # fmt: skip
    outs = ", ".join(f"{s.out} for {name}" for name, s in SCENES.items())
    p.add_argument("--out", help=f"output folder, stages reused (default: {outs})")
    p.add_argument("--fresh", action="store_true", help="start over: delete the output folder")
    p.add_argument("--episodes", type=int, default=d.episodes, help="scripted demonstrations")
    p.add_argument("--steps", type=int, default=d.steps, help="training steps")
    p.add_argument("--eval-episodes", type=int, default=d.eval_episodes,
                   help="closed-loop evaluation episodes (unseen seeds)")  # fmt: skip
    p.add_argument("--policy", choices=("act", "diffusion"), default=d.policy,
                   help="the policy to train")  # fmt: skip
    p.add_argument("--include-flagged", action="store_true",
                   help="train on demonstrations the quality gate flagged too")  # fmt: skip
