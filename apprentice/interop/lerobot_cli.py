"""`apprentice dataset import-lerobot` and `apprentice dataset export-lerobot`.

apprentice dataset import-lerobot ~/lerobot/aloha_sim_transfer_cube_human --out recordings/tc
apprentice dataset build recordings/tc --out caches/tc --config recordings/tc/dataset.yaml
apprentice dataset export-lerobot recordings/pick --out lerobot/pick [--codec h264]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from apprentice.errors import UserError


def _need_modules() -> None:
    """pyarrow and PyAV: the `lerobot` extra of the apprentice package."""
    missing = []
    for module in ("pyarrow", "av"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise UserError(
            f"LeRobot datasets need {' and '.join(missing)}: pip install 'apprentice[lerobot]'"
        )


def cmd_import(a: argparse.Namespace) -> int:
    _need_modules()
    from apprentice.interop.lerobot_import import import_lerobot

    summary = import_lerobot(a.source, a.out, arm=a.arm, progress=not a.quiet)
    print(summary.describe())
    print(f"build: apprentice dataset build {a.out} --out CACHE --config {a.out}/dataset.yaml")
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    _need_modules()
    from apprentice.dataset import DatasetConfig
    from apprentice.interop.lerobot_export import export_lerobot

    config = DatasetConfig.from_yaml(a.config) if a.config is not None else None
    index = Path(a.source) / "index.json"
    if not a.include_flagged and index.is_file():  # as `dataset build` says it
        from apprentice.recording import DatasetIndex

        flagged = [e for e in DatasetIndex(a.source).list() if not e.passed]
        for entry in flagged:
            print(f"left out {entry.episode_id}: quality gate: {'; '.join(entry.reasons)}")
        if flagged:
            print(f"{len(flagged)} flagged episode(s) left out; --include-flagged includes them")
    summary = export_lerobot(
        a.source, a.out, config=config, fps=a.fps, codec=a.codec,
        image_hw=tuple(a.image_hw) if a.image_hw else None, robot_type=a.robot_type,
        include_flagged=a.include_flagged, progress=not a.quiet,
    )  # fmt: skip
    print(summary.describe())
    return 0


def _one_line_errors(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """A mistyped argument is one line and exit code 2, like every other error here (argparse
    would print the usage first)."""

    def error(message: str) -> None:
        p.exit(2, f"{p.prog}: error: {message} (--help lists the options)\n")

    p.error = error  # type: ignore[method-assign]
    return p


def add_dataset_subcommands(ds_sub: argparse._SubParsersAction) -> None:
    """Registers import-lerobot and export-lerobot under `apprentice dataset`."""
    i = _one_line_errors(ds_sub.add_parser(
        "import-lerobot", help="a LeRobot dataset (v3.0, v2.1) → episode bags (one per episode)"
    ))  # fmt: skip
    i.add_argument("source", help="the LeRobot dataset folder (meta/info.json, data/, videos/)")
    i.add_argument("--out", required=True, help="recording folder to create (bags + index.json)")
    i.add_argument("--arm", default="follower",
                   help="namespace of the joint topics: /ARM/joint_states, /ARM/joint_commands "
                   "(default: follower)")  # fmt: skip
    i.add_argument("--quiet", action="store_true", help="no per-episode progress lines")
    i.set_defaults(func=cmd_import)

    e = _one_line_errors(ds_sub.add_parser(
        "export-lerobot", help="episode bags → a LeRobot v3.0 dataset (parquet + MP4 + meta)"
    ))  # fmt: skip
    e.add_argument("source", help="a bag, a folder of bags, or a recording with index.json")
    e.add_argument("--out", required=True, help="LeRobot dataset folder to create")
    e.add_argument("--config", help="dataset YAML (default: inferred from the first bag)")
    e.add_argument("--fps", type=float,
                   help="frames per second, the grid the bags are resampled onto "
                   "(default: the config's control rate)")  # fmt: skip
    e.add_argument("--image-hw", type=int, nargs=2, metavar=("H", "W"),
                   help="video size (default: the first camera's recorded size)")  # fmt: skip
    e.add_argument("--codec", choices=("av1", "h264"), default="av1",
                   help="video codec: av1 (SVT-AV1, LeRobot's default) or h264")  # fmt: skip
    e.add_argument("--robot-type", default="", help="info.json robot_type (default: none)")
    e.add_argument("--include-flagged", action="store_true",
                   help="also the episodes the quality gate flagged (index.json)")  # fmt: skip
    e.add_argument("--quiet", action="store_true", help="no per-episode progress lines")
    e.set_defaults(func=cmd_export)
