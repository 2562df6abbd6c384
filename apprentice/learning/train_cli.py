"""`apprentice dataset build`, `apprentice train` and `apprentice export`.

    apprentice dataset build recordings/ --out caches/pick [--config dataset.yaml]
    apprentice train --policy act --data caches/pick --out runs/pick --preset cpu --steps 2000
    apprentice train --out runs/pick --resume --steps 4000          # continue to step 4000
    torchrun --nproc-per-node 4 -m apprentice.learning.train_cli train --policy diffusion ...
    apprentice export runs/pick                                      # → runs/pick/policy/

Parsers are built without importing torch (the main CLI registers them on every start);
the commands import it when they run.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

import yaml

from apprentice.errors import UserError
from apprentice.graph import parse_overrides
from apprentice.interop.lerobot_cli import add_dataset_subcommands as add_lerobot_subcommands

# Flags that may change when a run is resumed; everything else comes from its run.json.
_RESUMABLE = ("steps", "val_every", "val_batches", "log_every", "checkpoint_every",
              "num_workers", "device", "amp", "cpu_bf16")  # fmt: skip


def _torch_threads(threads: int | None) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def cmd_train(a: argparse.Namespace) -> int:
    from apprentice.learning.train import resume_config, train
    from apprentice.learning.train_config import TrainConfig, check_overrides

    _torch_threads(a.threads)
    given = {
        "steps": a.steps, "val_every": a.val_every, "val_batches": a.val_batches,
        "log_every": a.log_every, "checkpoint_every": a.checkpoint_every,
        "num_workers": a.num_workers, "device": a.device, "amp": a.amp,
        "cpu_bf16": a.cpu_bf16,
    }  # fmt: skip
    given = {k: v for k, v in given.items() if v is not None}
    if a.resume:
        cfg = resume_config(a.out, **given)
        for name in ("policy", "data"):
            value = getattr(a, name)
            if value is not None and value != getattr(cfg, name):
                raise UserError(f"--{name} {value} differs from the run's {getattr(cfg, name)}")
    else:
        missing = [f"--{name}" for name in ("policy", "data") if getattr(a, name) is None]
        if missing:
            raise UserError(f"{' and '.join(missing)} required (unless --resume)")
        if not Path(a.data).exists():
            raise UserError(f"--data {a.data}: no such dataset cache or folder of bags")
        check_overrides(a.policy, parse_overrides(a.set))  # before the data is read
        cfg = TrainConfig(
            policy=a.policy, data=a.data, out=a.out, preset=a.preset, batch_size=a.batch_size,
            lr=a.lr, weight_decay=a.weight_decay, ema_decay=a.ema, seed=a.seed,
            backbone_weights=a.backbone_weights, dataset_config=a.dataset_config,
            policy_overrides=parse_overrides(a.set), **given,
        )  # fmt: skip
    result = train(cfg, resume=a.resume, until=a.until, progress=not a.no_progress)
    val = f", val loss {result.val_loss:.4g}" if result.val_loss is not None else ""
    if result.interrupted:  # not done: a caller (the demo's stages) must not go on to export
        print(f"train: stopped at step {result.step} (checkpointed); continue with: apprentice "
              f"train --out {result.run_dir} --resume", file=sys.stderr)  # fmt: skip
        return 130
    print(f"{result.run_dir}: step {result.step}, train loss {result.train_loss:.4g}{val}")
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    from apprentice.learning.train_report import export_run

    _torch_threads(a.threads)
    try:
        card, diff = export_run(a.run, a.out, a.weights)
    except (FileNotFoundError, ValueError) as exc:  # no run there, or not one of ours
        raise UserError(str(exc)) from None
    out = a.out or f"{a.run.rstrip('/')}/policy"
    graphs = ", ".join(g["file"] for g in card["graphs"].values())
    print(
        f"{out}: {card['policy_type']} ({graphs}), joints {card['joint_names']}, cameras "
        f"{[c['name'] for c in card['cameras']]}, {card['control_rate_hz']:g} Hz, chunk "
        f"{card['chunk_size']}, data {card['data_index_hash'][:19]}...; "
        f"max |onnx - torch| = {diff:.2e}"
    )
    return 0


def cmd_dataset_build(a: argparse.Namespace) -> int:
    from apprentice.dataset import DatasetConfig, build_cache, find_episodes
    from apprentice.dataset.config import infer_config

    overrides: dict[str, Any] = {}
    if a.rate is not None:
        overrides["control_rate_hz"] = a.rate
    if a.image_hw is not None:
        overrides["image_hw"] = tuple(a.image_hw)
    if a.val_fraction is not None:
        overrides["val_fraction"] = a.val_fraction
    if a.image_store is not None:
        overrides["image_store"] = a.image_store
    if a.jpeg_quality is not None:
        overrides["jpeg_quality"] = a.jpeg_quality
    if Path(a.out).exists() and not a.overwrite:
        raise UserError(f"{a.out} exists; --overwrite rebuilds it")
    episodes = find_episodes(a.source, include_failed=a.include_flagged)
    flagged = [] if a.include_flagged else _flagged(Path(a.source))
    for entry in flagged:
        print(f"left out {entry.episode_id}: quality gate: {'; '.join(entry.reasons)}")
    if flagged:
        print(f"{len(flagged)} flagged episode(s) left out; --include-flagged includes them")
    try:  # a bad --val-fraction, --jpeg-quality, ...: the config says which, in one line
        if a.config is not None:
            cfg = dataclasses.replace(DatasetConfig.from_yaml(a.config), **overrides)
        else:
            cfg = infer_config(_first_readable(episodes, a.skip_bad).topics, **overrides)
            print(f"inferred config: {yaml.safe_dump(cfg.to_json(), sort_keys=False)}")
    except UserError:  # a damaged bag (DatasetError) says so itself
        raise
    except ValueError as exc:
        raise UserError(str(exc)) from None
    cache = build_cache(episodes, cfg, a.out, overwrite=a.overwrite, skip_bad=a.skip_bad)
    splits = {s: len(cache.split_episodes(s)) for s in ("train", "val")}
    print(
        f"{cache.root}: {len(cache.episodes)} episodes ({splits['train']} train, "
        f"{splits['val']} val), {cache.n_frames} frames at {cache.control_rate_hz:g} Hz, "
        f"state {cache.state_names}, action {cache.action_names}, cameras "
        f"{cache.camera_names} at {cache.image_hw}, {cache.data_index_hash}"
    )
    return 0


def _first_readable(episodes: list[Any], skip_bad: bool) -> Any:
    """The first episode's bag to infer the config from; with skip_bad, the first that opens."""
    from apprentice.dataset import DatasetError, EpisodeBag

    for source in episodes:
        try:
            return EpisodeBag(source.bag_dir)
        except DatasetError:
            if not skip_bad or source is episodes[-1]:
                raise
    raise AssertionError("unreachable: the last episode's error is raised")


def _flagged(source: Path) -> list[Any]:
    """The index entries of a recording that failed the quality gate (none for a bag, or a
    folder of bags without index.json)."""
    if not (source / "index.json").is_file():
        return []
    from apprentice.recording import DatasetIndex

    return [e for e in DatasetIndex(source).list() if not e.passed]


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    """Registers `dataset`, `train` and `export` on the main CLI's subparsers."""
    ds = sub.add_parser("dataset", help="training datasets from episode bags")
    ds_sub = ds.add_subparsers(dest="dataset_cmd", required=True)
    b = ds_sub.add_parser("build", help="bags → a training cache (resampled, decoded, split)")
    b.add_argument("source", help="a bag, a folder of bags, or a recording with index.json")
    b.add_argument("--out", required=True, help="cache folder to create")
    b.add_argument("--config", help="dataset YAML (default: inferred from the first bag)")
    b.add_argument("--rate", type=float, help="control rate, Hz (default 50)")
    b.add_argument("--image-hw", type=int, nargs=2, metavar=("H", "W"),
                   help="image size to resize to (default: the config's)")  # fmt: skip
    b.add_argument("--val-fraction", type=float, help="share of episodes held out")
    b.add_argument("--image-store", choices=("auto", "raw", "jpeg"),
                   help="frames in the cache: raw, jpeg, or auto: raw up to 128x160, jpeg "
                        "above (default auto)")  # fmt: skip
    b.add_argument("--jpeg-quality", type=int, help="JPEG quality 1-100 (default 90)")
    b.add_argument("--skip-bad", action="store_true", help="leave out episodes that fail")
    b.add_argument("--include-flagged", "--include-failed", action="store_true",
                   help="also the episodes the quality gate flagged (index.json)")  # fmt: skip
    b.add_argument("--overwrite", action="store_true", help="rebuild an existing cache")
    b.set_defaults(func=cmd_dataset_build)
    add_lerobot_subcommands(ds_sub)  # import-lerobot, export-lerobot

    t = sub.add_parser("train", help="train ACT or Diffusion Policy (CPU, GPU, torchrun)")
    t.add_argument("--policy", choices=("act", "diffusion"), help="the policy to train")
    t.add_argument("--data", help="dataset cache, or a folder of bags (cached into the run)")
    t.add_argument("--out", required=True, help="run folder, e.g. runs/<name>")
    t.add_argument("--preset", choices=("paper", "cpu"), default="paper",
                   help="hyper-parameters: the paper's, or a small model for a CPU")  # fmt: skip
    t.add_argument("--steps", type=int,
                   help="total steps (paper 100000; cpu: ACT 6000, diffusion 5000)")  # fmt: skip
    t.add_argument("--batch-size", type=int, help="per process")
    t.add_argument("--lr", type=float, help="learning rate (default: the preset's)")
    t.add_argument("--weight-decay", type=float, help="AdamW weight decay (default: the preset's)")
    t.add_argument("--ema", type=float, nargs="?", const=0.999, metavar="DECAY",
                   help="keep an EMA of the weights (default decay 0.999); export takes it. "
                        "Recommended at constant lr (ACT CPU preset): one run's EMA 12/20 closed "
                        "loop vs 3/20 for its last weights")  # fmt: skip
    t.add_argument("--resume", action="store_true", help="continue <out>/checkpoints/last")
    t.add_argument("--until", type=int, metavar="STEP",
                   help="stop (checkpointed) at this step; --resume continues later")  # fmt: skip
    t.add_argument("--seed", type=int, default=0, help="initialization and sampling seed")
    t.add_argument("--val-every", type=int, help="steps between validations (default 500)")
    t.add_argument("--val-batches", type=int, help="batches per validation (default 8)")
    t.add_argument("--log-every", type=int, help="steps between log lines (default 10)")
    t.add_argument("--checkpoint-every", type=int, help="steps per checkpoint (default 1000)")
    t.add_argument("--num-workers", type=int, help="loader workers (default: CPU 0, CUDA 4)")
    t.add_argument("--device", choices=("auto", "cpu", "cuda"), help="auto: CUDA if present")
    t.add_argument("--no-amp", dest="amp", action="store_const", const=False,
                   help="no bf16 autocast on CUDA")  # fmt: skip
    t.add_argument("--cpu-bf16", dest="cpu_bf16", action="store_const", const=True,
                   help="bf16 autocast on a CPU with native bf16 (AVX512-BF16/AMX)")  # fmt: skip
    t.add_argument("--threads", type=int, help="torch CPU threads")
    t.add_argument("--backbone-weights", help="torchvision ResNet-18 weights (.safetensors)")
    t.add_argument("--dataset-config", help="dataset YAML when --data holds bags")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="policy config field, e.g. --set chunk_size=50")  # fmt: skip
    t.add_argument("--no-progress", action="store_true", help="log lines instead of a progress bar")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("export", help="a training run → ONNX policy folder + policy card")
    e.add_argument("run", help="run folder")
    e.add_argument("--out", help="policy folder (default <run>/policy)")
    e.add_argument("--weights", choices=("auto", "ema", "model"), default="auto",
                   help="auto: the EMA weights when the run kept them")  # fmt: skip
    e.add_argument("--threads", type=int, help="torch CPU threads")
    e.set_defaults(func=cmd_export)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="apprentice", description=__doc__.splitlines()[0])
    add_subcommands(ap.add_subparsers(dest="cmd", required=True))
    a = ap.parse_args(argv)
    return a.func(a)


if __name__ == "__main__":
    sys.exit(main())
