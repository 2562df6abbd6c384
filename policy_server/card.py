"""The policy card against the robot: a policy runs only on the robot it was trained for.

`load_card` reads and checks an exported folder (apprentice.learning.export) without running it,
its files against the SHA-256 the card lists (apprentice.learning.runtime.verify_files);
`check_robot` lists every way the card disagrees with the robot's configuration (joint names,
camera names, control rate); `check_lens` compares a camera's live CameraInfo with the one the
policy was trained on (the card camera's "source"). The policy node refuses to start, before it
publishes anything, when any of them finds a problem (lens problems may be overridden).

The image size is not checked: the node resizes every frame to the card's height x width, as
the dataset builder did. What must match is the lens, compared resolution-free: fx/W, fy/H,
(cx+0.5)/W, (cy+0.5)/H (pixel centres at integer coordinates, so resizing maps a principal
point at cx to (cx+0.5)·s-0.5: these ratios are exactly unchanged by resizing) and the aspect
ratio W/H, each within LENS_RTOL. 2 %: calibrating one camera twice (ChArUco) repeats fx
within ~0.5 %, and two units of one webcam model differ by ~1 %, while another lens or zoom
setting differs by 10 % and more (a 60° and a 78° field of view: 36 %); a 2 % scale change
moves the edge of a 128-pixel-wide input by ~1.3 px. Distortion coefficients are kept in the
card but not compared: calibrations of one lens scatter in them (k3 most), and a lens with
another distortion also has another focal length.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apprentice.dataset.images import camera_info_record
from apprentice.learning.runtime import (
    CARD_FILE,
    CARD_FORMAT,
    RUNNERS,
    UNVERIFIED,
    PolicyRefused,  # defined beside verify_files, which the torch-free runtime shares
    verify_files,
)

MAX_CONTROL_RATE = 200.0  # Hz: the control thread is measured up to this rate
LENS_RTOL = 0.02  # relative tolerance of the normalized intrinsics (module docstring)


@dataclass(frozen=True)
class RobotConfig:
    joint_names: tuple[str, ...]  # command order, all arms concatenated
    cameras: tuple[str, ...]  # camera names, in the policy's camera order
    control_rate_hz: float  # the control loop's rate


def load_card(directory: str | Path) -> dict[str, Any]:
    """Reads `policy_card.json` and checks that it is whole: the right format, a known policy
    type, consistent sizes, every graph file present and non-empty, and every file the card
    lists unchanged since export (`verify_files`; a card that lists none loads, and
    `unverified_warning` says so). Raises PolicyRefused."""
    directory = Path(directory)
    path = directory / CARD_FILE
    try:
        card = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PolicyRefused(f"cannot read {path}: {exc}") from exc
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        raise PolicyRefused(f"{path}: not an apprentice policy card ({CARD_FORMAT})")
    problems = []
    required = ("policy_type", "joint_names", "state_names", "cameras", "control_rate_hz",
                "chunk_size", "n_obs_steps", "action_horizon", "action_start", "graphs",
                "normalization")  # fmt: skip
    missing = [k for k in required if k not in card]
    if missing:
        raise PolicyRefused(f"{path}: missing {', '.join(missing)}")
    if card["policy_type"] not in RUNNERS:
        problems.append(f"no runtime for policy type {card['policy_type']!r}")
    for name, graph in card["graphs"].items():
        file = directory / str(graph.get("file", ""))
        if not file.is_file() or file.stat().st_size == 0:
            problems.append(f"graph {name!r}: {file} is missing or empty")
    rate = card["control_rate_hz"]
    if not isinstance(rate, int | float) or not rate > 0:
        problems.append(f"control_rate_hz must be > 0, got {rate!r}")
    for cam in card["cameras"]:
        if not (isinstance(cam, dict) and {"name", "height", "width"} <= cam.keys()):
            problems.append(f"camera entry {cam!r} needs name, height and width")
        elif "source" in cam and not _valid_source(cam["source"]):
            problems.append(
                f"camera {cam['name']}: source {cam['source']!r} is not a CameraInfo record "
                "(width, height > 0; k: 9 numbers, fx, fy > 0; d; distortion_model)"
            )
    if problems:
        raise PolicyRefused(f"{path}: " + "; ".join(problems))
    verify_files(card, directory)  # last: the one check that reads every byte
    return card


def unverified_warning(card: dict[str, Any]) -> str | None:
    """For a card `load_card` accepted: the warning to show when its files were not verified
    (an older export without hashes), else None."""
    return None if "files" in card else UNVERIFIED


def check_robot(card: dict[str, Any], robot: RobotConfig) -> list[str]:
    """Every mismatch between card and robot, as sentences; empty when the policy fits."""
    problems = []
    if list(card["joint_names"]) != list(robot.joint_names):
        problems.append(
            f"joint names differ: policy {card['joint_names']}, robot {list(robot.joint_names)}"
        )
    if list(card["state_names"]) != list(robot.joint_names):
        # the node feeds joint positions as the state, in the robot's order
        problems.append(f"state names {card['state_names']} are not the robot's joint positions")
    policy_cams = [c["name"] for c in card["cameras"]]
    if policy_cams != list(robot.cameras):
        problems.append(f"cameras differ: policy {policy_cams}, robot {list(robot.cameras)}")
    policy_rate, rate = float(card["control_rate_hz"]), float(robot.control_rate_hz)
    if not 0 < rate <= MAX_CONTROL_RATE:
        problems.append(f"control rate {rate:g} Hz is outside (0, {MAX_CONTROL_RATE:g}]")
    else:
        ratio = rate / policy_rate
        # the loop interpolates between policy steps, so it may run k times faster (k integer)
        if ratio < 1 - 1e-9 or not math.isclose(ratio, round(ratio), abs_tol=1e-6):
            problems.append(
                f"control rate {rate:g} Hz is not a whole multiple of the policy's "
                f"{policy_rate:g} Hz"
            )
    return problems


def _valid_source(src: Any) -> bool:
    try:
        return camera_info_record(**src) is not None
    except (TypeError, ValueError, KeyError):
        return False


def normalized_lens(info: dict[str, Any]) -> dict[str, float]:
    """A CameraInfo record's intrinsics free of its resolution (module docstring)."""
    k, w, h = info["k"], float(info["width"]), float(info["height"])
    return {
        "fx/W": k[0] / w,
        "fy/H": k[4] / h,
        "cx/W": (k[2] + 0.5) / w,
        "cy/H": (k[5] + 0.5) / h,
        "W/H": w / h,
    }


def check_lens(
    camera: str, trained: dict[str, Any], live: dict[str, Any], rtol: float = LENS_RTOL
) -> list[str]:
    """[] when the live camera (a CameraInfo record: images.camera_info_record) has the lens
    the policy was trained with (the card camera's "source") at any resolution; else one
    sentence naming the camera, what differs, and both cameras' intrinsics."""
    a, b = normalized_lens(trained), normalized_lens(live)
    off = [
        f"{key} {a[key]:.4f} vs {b[key]:.4f}"
        for key in a
        if not math.isclose(a[key], b[key], rel_tol=rtol)
    ]
    if not off:
        return []
    return [
        f"camera {camera}: not the lens the policy was trained with ({'; '.join(off)}: more "
        f"than {rtol:.0%} apart): trained {_describe(trained)}, live {_describe(live)}"
    ]


def _describe(info: dict[str, Any]) -> str:
    k = info["k"]
    return (
        f"{info['width']}x{info['height']} fx {k[0]:.1f} fy {k[4]:.1f} cx {k[2]:.1f} cy {k[5]:.1f}"
    )
