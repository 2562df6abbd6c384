"""The policy card against the robot: a policy runs only on the robot it was trained for.

`load_card` reads and checks an exported folder (apprentice.learning.export) without running it;
`check_robot` lists every way the card disagrees with the robot's configuration (joint names,
cameras, image sizes, control rate). The policy node refuses to start, before it publishes
anything, when either finds a problem.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apprentice.learning.runtime import CARD_FILE, CARD_FORMAT, RUNNERS

MAX_CONTROL_RATE = 200.0  # Hz: the control thread is measured up to this rate


class PolicyRefused(Exception):
    """The policy must not run on this robot; the message says every reason."""


@dataclass(frozen=True)
class CameraConfig:
    name: str
    height: int  # pixels, as the camera publishes them
    width: int


@dataclass(frozen=True)
class RobotConfig:
    joint_names: tuple[str, ...]  # command order, all arms concatenated
    cameras: tuple[CameraConfig, ...]
    control_rate_hz: float  # the control loop's rate


def load_card(directory: str | Path) -> dict[str, Any]:
    """Reads `policy_card.json` and checks that it is whole: the right format, a known policy
    type, consistent sizes and every graph file present and non-empty. Raises PolicyRefused."""
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
    if problems:
        raise PolicyRefused(f"{path}: " + "; ".join(problems))
    return card


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
    policy_cams = {c["name"]: (int(c["height"]), int(c["width"])) for c in card["cameras"]}
    robot_cams = {c.name: (c.height, c.width) for c in robot.cameras}
    if [c["name"] for c in card["cameras"]] != [c.name for c in robot.cameras]:
        problems.append(f"cameras differ: policy {list(policy_cams)}, robot {list(robot_cams)}")
    for name, hw in policy_cams.items():
        if name in robot_cams and robot_cams[name] != hw:
            problems.append(
                f"camera {name}: policy expects {hw[0]}x{hw[1]} (HxW), robot gives "
                f"{robot_cams[name][0]}x{robot_cams[name][1]}"
            )
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
