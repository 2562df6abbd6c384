"""Builds an `Arm` from a config dict, through one registry of backends.

    build_arm({"backend": "feetech", "robot": "so101", "arm": "follower",
               "calibration_file": "follower.yaml"})  → BuiltArm
    build_arm({"backend": "mujoco", "scene": "so100_lift", "arm": "arm"})

Servo-bus arms are described by robot configs (`launch/robots/<robot>.yaml`): per arm its bus
(protocol, port, baud rate), whether torque goes on at start (followers hold, leaders stay limp),
a reference pose, and per joint its name, servo id, model, limits, the joint value at the
reference pose and, for grippers, the (closed, open) values the calibrated range maps onto.
`MODELS` names the servo models a config may use.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from apprentice.drivers import dynamixel as dxl
from apprentice.drivers.feetech import STS3215
from apprentice.drivers.joints import RAD_PER_TICK, JointCalibration, ServoFamily
from apprentice.resources import ROBOTS_DIR  # launch/robots, in a checkout or a wheel
from apprentice.robot_io import Arm, ArmSpec

log = logging.getLogger(__name__)

# Servo models by the name robot configs use. X-series share one control table; they differ in
# model number and in the unit of register 126 (Present Current, or Present Load on the XL430,
# given here as 0.1 % of stall torque: unit 0.001, "N·m per amp" = stall torque). Stall and
# no-load speed figures are datasheet values at the usual supply voltage (approximate).
MODELS: dict[str, ServoFamily] = {
    "STS3215": STS3215(),
    "XL330-M077": dxl.XSeries(
        "XL330-M077", 1190, 0.001, torque_per_amp=0.228 / 1.47, no_load_speed=383 * dxl.RPM
    ),
    "XL330-M288": dxl.XL330_M288,
    "XL430-W250": dxl.XSeries(
        "XL430-W250", 1060, 0.001, torque_per_amp=1.5, no_load_speed=57 * dxl.RPM
    ),
    "XM430-W350": dxl.XM430_W350,
    "XM540-W270": dxl.XSeries(
        "XM540-W270", 1120, 0.00269, torque_per_amp=10.6 / 4.4, no_load_speed=39 * dxl.RPM
    ),
}


@dataclass(frozen=True)
class JointConfig:
    """One joint of a robot config. Units: rad, or the gripper's own units (m, or a fraction)."""

    name: str
    servo_id: int
    model: str
    lower: float
    upper: float
    reference: float = 0.0  # joint value at the arm's reference pose
    gripper: tuple[float, float] | None = None  # (closed, open): the calibrated range maps here
    max_velocity: float | None = None  # joint units/s; None: the servo's no-load speed

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(
                f"joint {self.name}: unknown servo model {self.model!r}; known: {', '.join(MODELS)}"
            )
        if self.gripper is not None:
            closed, opened = self.gripper
            if closed == opened:
                raise ValueError(f"joint {self.name}: gripper closed and open values are equal")
            object.__setattr__(self, "lower", min(closed, opened))
            object.__setattr__(self, "upper", max(closed, opened))
        if not self.lower < self.upper:
            raise ValueError(f"joint {self.name}: lower {self.lower} not below upper {self.upper}")
        if self.max_velocity is not None and not 0.0 < self.max_velocity < math.inf:
            raise ValueError(f"joint {self.name}: max_velocity {self.max_velocity} not positive")

    @property
    def family(self) -> ServoFamily:
        return MODELS[self.model]

    def velocity_limit(self, calibration: JointCalibration) -> float:
        """The arm driver's velocity limit, joint units/s: the config's `max_velocity`, else the
        servo's no-load speed (no command is slowed that the servo could follow), through the
        calibration's ticks-to-units map (a linear gripper's units/s)."""
        if self.max_velocity is not None:
            return self.max_velocity
        return self.family.no_load_speed / RAD_PER_TICK * abs(calibration.units_per_tick)


@dataclass(frozen=True)
class ArmConfig:
    """One arm of a robot config: a servo bus and its joints in command order."""

    robot: str
    name: str
    backend: str  # the protocol: "feetech" or "dynamixel"
    port: str
    baudrate: int
    joints: tuple[JointConfig, ...]
    torque_on_start: bool = False
    reference_pose: str = ""  # how the calibration CLI describes the reference pose

    def __post_init__(self) -> None:
        wrong = [j.name for j in self.joints if j.family.protocol != self.backend]
        if wrong:
            raise ValueError(
                f"{self.robot}/{self.name}: joints {wrong} are not {self.backend} "
                "servos; one bus speaks one protocol"
            )
        _ = self.spec  # validates names and limits now, not at first use

    @property
    def family(self) -> ServoFamily:
        """The bus-level model: protocol, addresses and, for effort units, the first joint's."""
        return self.joints[0].family

    @property
    def spec(self) -> ArmSpec:
        return ArmSpec(
            tuple(j.name for j in self.joints),
            np.array([j.lower for j in self.joints]),
            np.array([j.upper for j in self.joints]),
        )


def robot_path(name_or_path: str | os.PathLike[str]) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    candidate = ROBOTS_DIR / f"{name_or_path}.yaml"
    if candidate.is_file():
        return candidate
    known = ", ".join(sorted(p.stem for p in ROBOTS_DIR.glob("*.yaml")))
    raise FileNotFoundError(f"no robot config {str(name_or_path)!r}; in {ROBOTS_DIR}: {known}")


def load_robot(name_or_path: str | os.PathLike[str]) -> dict[str, ArmConfig]:
    """Every arm of a robot config, by arm name."""
    path = robot_path(name_or_path)
    doc = yaml.safe_load(path.read_text())
    if not isinstance(doc, dict) or not isinstance(doc.get("arms"), dict):
        raise ValueError(f"{path}: a robot config needs an 'arms' mapping")
    robot = str(doc.get("name", path.stem))
    arms = {}
    for arm, a in doc["arms"].items():
        try:
            joints = tuple(
                JointConfig(
                    name=str(j["name"]),
                    servo_id=int(j["id"]),
                    model=str(j["model"]),
                    lower=float(j.get("lower", -math.pi)),
                    upper=float(j.get("upper", math.pi)),
                    reference=float(j.get("reference", 0.0)),
                    gripper=(
                        (float(j["gripper"]["closed"]), float(j["gripper"]["open"]))
                        if "gripper" in j
                        else None
                    ),
                    max_velocity=float(j["max_velocity"]) if "max_velocity" in j else None,
                )
                for j in a["joints"]
            )
            arms[str(arm)] = ArmConfig(
                robot=robot,
                name=str(arm),
                backend=str(a["backend"]),
                port=str(a.get("port", "")),
                baudrate=int(a.get("baudrate", 1_000_000)),
                joints=joints,
                torque_on_start=bool(a.get("torque_on_start", False)),
                reference_pose=str(a.get("reference_pose", "")).strip(),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{path}: arm {arm!r}: missing or malformed field {exc}") from exc
    return arms


def arm_config(robot: str | os.PathLike[str], arm: str) -> ArmConfig:
    arms = load_robot(robot)
    if arm not in arms:
        raise ValueError(f"robot {robot}: no arm {arm!r}; arms: {', '.join(arms)}")
    return arms[arm]


@dataclass
class BuiltArm:
    """An arm and what its driver process needs beside it."""

    arm: Arm
    close: Callable[[], None]  # releases the backend (torque off on hardware)
    max_velocity: np.ndarray  # (J,) joint units/s: the arm driver's default velocity limits
    diagnostics: Callable[[], dict[str, Any]] = field(default=dict)  # merged into node stats
    rearm: Callable[[], None] | None = None  # leaves a safe state; None: the backend has none


def _build_servo_bus(config: Mapping[str, Any]) -> BuiltArm:
    # Backends import their own modules when built: a bus driver never loads MuJoCo.
    from apprentice.calibration.arm import ArmCalibration, verify_servos
    from apprentice.drivers.bus_arm import ServoBusArm

    if not config.get("robot"):
        raise ValueError("a servo-bus arm needs 'robot' (a config in launch/robots or a path)")
    cfg = arm_config(config["robot"], config["arm"])
    if cfg.backend != config["backend"]:
        raise ValueError(
            f"robot {cfg.robot} arm {cfg.name} is a {cfg.backend} bus, not {config['backend']}"
        )
    if not config.get("calibration_file"):
        raise ValueError(
            f"{cfg.robot}/{cfg.name}: no calibration_file; calibrate first "
            "(python -m apprentice.calibration.arm_cli calibrate)"
        )
    port = config.get("port") or cfg.port
    baudrate = int(config.get("baudrate") or cfg.baudrate)
    cal = ArmCalibration.load(config["calibration_file"])
    verify_servos(port, baudrate, cfg, cal)  # raises CalibrationMismatch, listing every problem
    bus: dict[str, Any] = {}  # absent: ServoBusArm's defaults
    if "bus_timeout" in config:
        bus["timeout_s"] = float(config["bus_timeout"])
    if "bus_retries" in config:
        bus["retries"] = int(config["bus_retries"])
    joints = cal.joint_calibrations()
    arm = ServoBusArm(port, cfg.family, cal.arm_spec(cfg), joints, baudrate=baudrate, **bus)
    try:
        if cfg.torque_on_start:
            arm.set_torque(True)
    except BaseException:
        arm.close()
        raise

    limits = np.array([j.velocity_limit(c) for j, c in zip(cfg.joints, joints, strict=True)])
    return BuiltArm(arm, arm.close, limits, arm.diagnostics, arm.rearm)


# The simulated arms' velocity limit, rad/s (m/s for ALOHA's gripper): twice teleop's step limit
# (0.1 rad per 50 Hz tick = 5 rad/s), so recorded and scripted demonstrations (≤ 3 rad/s
# planned) and policies (their safety layer: ≤ 3 rad/s) pass untouched, a command that
# arrives early on a busy host included; a jump is spread over ≥ 0.5 rad steps instead of
# arriving at 70 rad/s.
SIM_MAX_VELOCITY = 10.0


def _build_mujoco(config: Mapping[str, Any]) -> BuiltArm:
    from apprentice.sim.world import MujocoWorld

    world = MujocoWorld(config.get("scene", "so100_lift"), seed=int(config.get("seed", 0)))
    arm = world.arm(config["arm"])
    world.start()
    return BuiltArm(arm, world.stop, np.full(arm.spec.n_joints, SIM_MAX_VELOCITY))


BACKENDS: dict[str, Callable[[Mapping[str, Any]], BuiltArm]] = {
    "feetech": _build_servo_bus,
    "dynamixel": _build_servo_bus,
    "mujoco": _build_mujoco,
}


def build_arm(config: Mapping[str, Any]) -> BuiltArm:
    """config: "backend" (a key of BACKENDS), "arm", and the backend's own keys: for servo
    buses "robot", "calibration_file", optional "port" / "baudrate" (default: the robot
    config's), "bus_timeout" (s) / "bus_retries" (default: ServoBusArm's); for mujoco "scene",
    "seed"."""
    backend = config.get("backend")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    return BACKENDS[backend](config)
