"""Shared by the hardware tests: robot configs and calibrations that fit the emulated servos."""

from __future__ import annotations

from pathlib import Path

import yaml

from apprentice.calibration.arm import ArmCalibration, compute_calibration
from apprentice.drivers.factory import ArmConfig, arm_config

IDS = [1, 2, 3, 4, 5, 6]
JOINTS = ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper")
SHOULDER_PAN_MAX_VELOCITY = 3.0  # rad/s, set in the robot config


def robot_file(folder: Path, protocol: str) -> Path:
    """A robot config for the emulator with arms `<protocol>_follower`, `<protocol>_leader`:
    SO-101 joints on STS3215 (Feetech), on XL330-M288 (Dynamixel: the model it reports)."""
    model = "STS3215" if protocol == "feetech" else "XL330-M288"
    joints = [
        {"name": name, "id": i, "model": model, "lower": -2.0, "upper": 2.0}
        for name, i in zip(JOINTS[:-1], IDS, strict=False)
    ]
    joints[0]["max_velocity"] = SHOULDER_PAN_MAX_VELOCITY  # the others: the model's default
    joints.append({"name": "gripper", "id": 6, "model": model, "gripper": {"closed": 0, "open": 1}})
    doc = {
        "name": f"emulated_{protocol}",
        "arms": {
            f"{protocol}_follower": {
                "backend": protocol,
                "torque_on_start": True,
                "joints": joints,
            },
            f"{protocol}_leader": {"backend": protocol, "torque_on_start": False, "joints": joints},
        },
    }
    path = folder / f"emulated_{protocol}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def centred_calibration(cfg: ArmConfig) -> ArmCalibration:
    """What calibrating an arm whose joints sat at tick 2048 and swept ±1500 ticks gives:
    offsets of 0 (the emulator's registers read 0), reference = joint value 0, signs alternating."""
    n = len(cfg.joints)
    return compute_calibration(
        cfg,
        reference={j.name: 2048 for j in cfg.joints},
        ranges={j.name: (-1500, 1500) for j in cfg.joints},
        signs={j.name: 1 if k % 2 == 0 or k == n - 1 else -1 for k, j in enumerate(cfg.joints)},
    )


def emulated_arm(folder: Path, protocol: str, role: str = "follower") -> tuple[Path, Path]:
    """(robot config, calibration file) for the emulated arm `<protocol>_<role>`."""
    robot = robot_file(folder, protocol)
    arm = f"{protocol}_{role}"
    cal = centred_calibration(arm_config(robot, arm)).save(folder / f"{protocol}_{arm}.cal.yaml")
    return robot, cal
