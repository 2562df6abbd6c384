"""`apprentice import-policy SRC --out RUN`: a LeRobot ACT / Diffusion checkpoint → a run folder
that `apprentice export RUN` turns into ONNX + policy card (torch imported only to run)."""

from __future__ import annotations

import argparse
from pathlib import Path

from apprentice.errors import UserPathError, UserValueError


def _names(text: str | None) -> list[str] | None:
    return [n.strip() for n in text.split(",") if n.strip()] if text else None


def cmd_import_policy(a: argparse.Namespace) -> int:
    from apprentice.interop.lerobot_policy import dataset_names, import_policy

    if not Path(a.source).is_dir():
        raise UserPathError(f"{a.source}: no such folder")
    for name in ("config.json", "model.safetensors"):  # before asking for names it may not need
        if not (Path(a.source) / name).is_file():
            raise UserPathError(f"{a.source}: not a LeRobot checkpoint folder (no {name})")
    found = dataset_names(a.dataset) if a.dataset else {}
    joints = _names(a.joint_names) or found.get("joint_names")
    state = _names(a.state_names) or found.get("state_names")
    rate = a.rate if a.rate is not None else found.get("rate")
    if joints is None or rate is None:
        what = "joint names (--joint-names)" if joints is None else "the control rate (--rate)"
        raise UserValueError(f"{what} unknown: give it, or --dataset with the LeRobot dataset")
    run = import_policy(
        a.source, a.out, joint_names=joints, state_names=state, control_rate_hz=float(rate),
        camera_names=_names(a.camera_names),
    )  # fmt: skip
    data, src = run["dataset"], run["imported_from"]
    print(
        f"{a.out}: LeRobot {src['lerobot_type']} ({src['layout']}), joints "
        f"{data['action_names']}, cameras {[c['name'] for c in data['cameras']]}, "
        f"{data['control_rate_hz']:g} Hz; next: apprentice export {a.out}"
    )
    for note in src["notes"]:
        print(f"note: {note}")
    return 0


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import-policy", help="a LeRobot ACT or Diffusion checkpoint → a run folder to export"
    )
    p.add_argument("source", help="checkpoint folder (config.json, model.safetensors, ...)")
    p.add_argument("--out", required=True, help="run folder to create, e.g. runs/<name>")
    p.add_argument("--dataset", help="the LeRobot dataset it was trained on (names, fps)")
    p.add_argument("--joint-names", help="comma-separated action names (default: --dataset's)")
    p.add_argument("--state-names", help="comma-separated state names (default: joint names)")
    p.add_argument("--camera-names", help="comma-separated (default: observation.images.<name>)")
    p.add_argument("--rate", type=float, help="control rate, Hz (default: --dataset's fps)")
    p.set_defaults(func=cmd_import_policy)
