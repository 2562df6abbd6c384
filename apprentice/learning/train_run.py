"""The run folder's own files: run.json (what the run is: its config, its policy's config and
its dataset, which export and resume read back) and metrics.jsonl's trim on resume."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from apprentice.dataset import DatasetCache
from apprentice.errors import UserPathError, UserValueError
from apprentice.learning.checkpoint import Policy, config_to_json
from apprentice.learning.train_config import RUN_FILE, RUN_FORMAT, TrainConfig


def write_run_json(
    run_dir: Path, cfg: TrainConfig, policy: Policy, cache: DatasetCache, world_size: int
) -> None:
    run = {
        "format": RUN_FORMAT,
        "train_config": dataclasses.asdict(cfg),
        "policy_type": policy.policy_type,
        "policy_config": config_to_json(policy.cfg),
        "world_size": world_size,
        "dataset": {
            "cache": str(cache.root.resolve()),
            "data_index_hash": cache.data_index_hash,
            "state_names": cache.state_names,
            "action_names": cache.action_names,
            "cameras": cache.meta["cameras"],
            "control_rate_hz": cache.control_rate_hz,
            "episodes": {
                s: [e.episode_id for e in cache.split_episodes(s)] for s in ("train", "val")
            },
        },
    }
    (run_dir / RUN_FILE).write_text(json.dumps(run, indent=1) + "\n")


def load_run_config(run_dir: Path) -> TrainConfig:
    path = run_dir / RUN_FILE
    if not path.is_file():
        raise UserPathError(f"{run_dir}: no {RUN_FILE}, not a training run folder")
    try:
        run = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserValueError(f"{path}: not JSON ({exc})") from None
    if not isinstance(run, dict) or run.get("format") != RUN_FORMAT:
        raise UserValueError(f"{path}: not a {RUN_FORMAT} file")
    try:
        return TrainConfig(**run["train_config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise UserValueError(f"{path}: no valid train_config ({exc})") from None


def resume_config(run_dir: str | Path, **changes: Any) -> TrainConfig:
    """The saved config of a run, with `changes` (e.g. steps=, num_workers=, device=). The run
    continues in `run_dir`, wherever it was first trained (a copied or moved run folder)."""
    changes = {"out": str(run_dir), **changes}
    return dataclasses.replace(load_run_config(Path(run_dir)), **changes)


def trim_metrics(path: Path, step: int) -> None:
    """Drops lines logged after the checkpoint being resumed (the interrupted run's tail)."""
    if not path.exists():
        return
    rows = [line for line in path.read_text().splitlines() if line]
    kept = [line for line in rows if json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in kept))
