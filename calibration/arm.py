"""Arm calibration core: reference pose, ranges of motion, directions, servo offsets, YAML.

No prompts and no ROS here: `arm_cli` asks the user and feeds the values in; the arm driver
loads the YAML and verifies it against the servos before it drives them.

How a joint is calibrated (ticks: 4096 a turn on both servo families):
1. With the offset registers cleared, the arm is put in the robot config's reference pose and
   the raw ticks are read. Leader and follower calibrated at the same pose read the same joint
   values there (the config's `reference`, rad), which is what makes them agree.
2. The user moves each joint a little in its positive direction (grippers: opening): the sign.
3. The user moves every joint through its whole range while samples are fed to `RangeRecorder`,
   which unwraps them continuously, so a range crossing the encoder's 4095 → 0 seam is one
   interval, not two.
4. The middle of each range is moved to tick 2048 by the servo's own offset register
   (`REGISTERS`), so the servo's reported ticks never cross the seam inside the range, and
   position goals stay inside 0..4095. The remaining shift to the reference value is a
   software offset (`JointCalibration.homing_offset`). Grippers map their range linearly onto
   the config's (closed, open) values instead.
The driver's joint limits are the robot config's limits narrowed to the recorded range.
"""

from __future__ import annotations

import math
import os
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import yaml

from apprentice.drivers import dynamixel as dxl
from apprentice.drivers import feetech as ft
from apprentice.drivers.bus import ServoBus
from apprentice.drivers.factory import MODELS, ArmConfig
from apprentice.drivers.joints import CENTER_TICKS, RAD_PER_TICK, TICKS_PER_REV, JointCalibration
from apprentice.drivers.link import BusError, SerialLink
from apprentice.robot_io import ArmSpec

T = TypeVar("T")

MIN_DIRECTION_TICKS = 40  # ~3.5°: a smaller move is no answer to "which way is positive"
MIN_RANGE_TICKS = 100  # ~9°: a joint that moved less was forgotten during range recording


class CalibrationMismatch(ValueError):
    """The calibration file, the robot config and the servos on the bus disagree."""


def wrap_delta(ticks: int) -> int:
    """A tick difference brought into [-2048, 2048): the short way round the encoder."""
    return (ticks + CENTER_TICKS) % TICKS_PER_REV - CENTER_TICKS


# --- servo registers ---------------------------------------------------------------------------
class DynamixelRegisters:
    """X-series: Homing Offset (addr 20, 4 bytes signed, EEPROM: torque must be off).
    Present Position = actual position + Homing Offset."""

    model_address = dxl.MODEL_NUMBER
    offset_address = 20

    def present(self, raw: int, offset: int) -> int:
        return (raw + offset) % TICKS_PER_REV

    def centring_offset(self, raw: int) -> int:
        """The offset that makes `raw` read as 2048."""
        return wrap_delta(CENTER_TICKS - raw)

    def write_offset(self, bus: ServoBus, servo_id: int, offset: int) -> None:
        bus.write(servo_id, dxl.TORQUE_ENABLE, b"\x00")
        bus.write(servo_id, self.offset_address, struct.pack("<i", offset))

    def read_offset(self, bus: ServoBus, servo_id: int) -> int:
        return struct.unpack("<i", bus.read(servo_id, self.offset_address, 4).data)[0]


class FeetechRegisters:
    """STS3215: Ofs / position correction (addr 31, 2 bytes, sign-magnitude with the sign in bit
    11, ±2047). Present Position = actual position − Ofs. EEPROM: saved only while the Lock
    register (55) is 0, so it is unlocked for the write and locked again."""

    model_address = ft.MODEL_NUMBER
    offset_address = 31

    def present(self, raw: int, offset: int) -> int:
        return (raw - offset) % TICKS_PER_REV

    def centring_offset(self, raw: int) -> int:
        # ±2048 does not fit the register; one tick off centre costs nothing.
        return max(-2047, min(2047, wrap_delta(raw - CENTER_TICKS)))

    def write_offset(self, bus: ServoBus, servo_id: int, offset: int) -> None:
        raw = ft.to_sign_magnitude(offset, 11)
        bus.write(servo_id, ft.TORQUE_ENABLE, b"\x00")
        bus.write(servo_id, ft.LOCK, b"\x00")
        bus.write(servo_id, self.offset_address, bytes([raw & 0xFF, raw >> 8]))
        bus.write(servo_id, ft.LOCK, b"\x01")

    def read_offset(self, bus: ServoBus, servo_id: int) -> int:
        data = bus.read(servo_id, self.offset_address, 2).data
        return ft.sign_magnitude(data[0] | data[1] << 8, 11)


REGISTERS: dict[str, DynamixelRegisters | FeetechRegisters] = {
    "dynamixel": DynamixelRegisters(),
    "feetech": FeetechRegisters(),
}


# --- the calibration file ----------------------------------------------------------------------
@dataclass(frozen=True)
class JointRecord:
    """The calibration of one joint, as stored in the YAML."""

    name: str
    servo_id: int
    model: str
    servo_offset: int  # ticks, in the servo's offset register
    homing_offset: int  # ticks, applied in software (JointCalibration)
    sign: int
    range_ticks: tuple[int, int]  # servo-reported ticks at the ends of the recorded range
    linear_ticks: tuple[int, int] | None = None  # grippers: (closed, open) ticks
    linear_values: tuple[float, float] | None = None  # grippers: (closed, open) values

    def joint_calibration(self) -> JointCalibration:
        if self.linear_ticks is None:
            return JointCalibration(self.servo_id, self.homing_offset, self.sign)
        assert self.linear_values is not None
        return JointCalibration(
            self.servo_id, linear_ticks=self.linear_ticks, linear_values=self.linear_values
        )

    def range_values(self) -> tuple[float, float]:
        """The recorded range in joint units, low to high."""
        cal = self.joint_calibration()
        a, b = (cal.to_joint(t) for t in self.range_ticks)
        return min(a, b), max(a, b)


@dataclass(frozen=True)
class ArmCalibration:
    robot: str
    arm: str
    protocol: str
    joints: tuple[JointRecord, ...]

    def joint_calibrations(self) -> list[JointCalibration]:
        return [j.joint_calibration() for j in self.joints]

    def mismatches(self, cfg: ArmConfig) -> list[str]:
        """Where this file and the robot config describe different arms."""
        problems = []
        if self.protocol != cfg.backend:
            problems.append(f"calibration is for a {self.protocol} bus, config says {cfg.backend}")
        mine = [(j.name, j.servo_id, j.model) for j in self.joints]
        theirs = [(j.name, j.servo_id, j.model) for j in cfg.joints]
        if mine != theirs:
            problems.append(
                f"calibration joints (name, id, model) {mine} differ from the robot config's "
                f"{theirs}"
            )
        return problems

    def arm_spec(self, cfg: ArmConfig) -> ArmSpec:
        """The config's joint limits narrowed to the recorded ranges of motion."""
        problems = self.mismatches(cfg)
        if problems:
            raise CalibrationMismatch("; ".join(problems))
        lower, upper = [], []
        for j, c in zip(self.joints, cfg.joints, strict=True):
            lo, hi = j.range_values()
            lower.append(max(lo, c.lower))
            upper.append(min(hi, c.upper))
            if lower[-1] >= upper[-1]:
                raise CalibrationMismatch(
                    f"{j.name}: recorded range [{lo:.3f}, {hi:.3f}] lies outside the config's "
                    f"limits [{c.lower:.3f}, {c.upper:.3f}]: wrong reference pose or direction?"
                )
        return ArmSpec(cfg.spec.joint_names, np.array(lower), np.array(upper))

    def save(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        joints = {}
        for j in self.joints:
            d = asdict(j)
            d.pop("name")
            joints[j.name] = {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
            if j.linear_ticks is None:
                del joints[j.name]["linear_ticks"], joints[j.name]["linear_values"]
        doc = {"robot": self.robot, "arm": self.arm, "protocol": self.protocol, "joints": joints}
        header = (
            f"# Arm calibration written by apprentice.calibration.arm_cli at "
            f"{time.strftime('%Y-%m-%d %H:%M:%S')}.\n# servo_offset is in the servos' offset "
            "registers too; the arm driver checks both agree before it starts.\n"
        )
        path.write_text(header + yaml.safe_dump(doc, sort_keys=False))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ArmCalibration:
        doc = yaml.safe_load(Path(path).expanduser().read_text())
        try:
            joints = tuple(
                JointRecord(
                    name=str(name),
                    servo_id=int(j["servo_id"]),
                    model=str(j["model"]),
                    servo_offset=int(j["servo_offset"]),
                    homing_offset=int(j["homing_offset"]),
                    sign=int(j["sign"]),
                    range_ticks=(int(j["range_ticks"][0]), int(j["range_ticks"][1])),
                    linear_ticks=tuple(int(v) for v in j["linear_ticks"])
                    if "linear_ticks" in j
                    else None,
                    linear_values=tuple(float(v) for v in j["linear_values"])
                    if "linear_values" in j
                    else None,
                )
                for name, j in doc["joints"].items()
            )
            return cls(str(doc["robot"]), str(doc["arm"]), str(doc["protocol"]), joints)
        except (KeyError, TypeError, IndexError, AttributeError) as exc:
            raise ValueError(f"{path}: not an arm calibration file ({exc!r})") from exc


# --- the computation ---------------------------------------------------------------------------
def direction(reference: int, moved: int) -> int:
    """+1 if the raw ticks grew when the joint moved in its positive direction, else -1."""
    delta = wrap_delta(moved - reference)
    if abs(delta) < MIN_DIRECTION_TICKS:
        raise ValueError(f"moved only {delta} ticks; move the joint further (≥ 5°)")
    return 1 if delta > 0 else -1


class RangeRecorder:
    """Ranges of motion from samples of raw ticks, unwrapped from the reference pose.

    Consecutive samples of a joint are taken to differ by less than half a turn, so a joint
    crossing the encoder seam (4095 → 0) keeps counting (4096, 4097 ...)."""

    def __init__(self, reference: Mapping[str, int]) -> None:
        self._last = dict(reference)
        self._delta = dict.fromkeys(reference, 0)
        self._lo = dict.fromkeys(reference, 0)
        self._hi = dict.fromkeys(reference, 0)
        self.samples = 0

    def add(self, ticks: Mapping[str, int]) -> None:
        for name, t in ticks.items():
            d = self._delta[name] + wrap_delta(t - self._last[name])
            self._last[name], self._delta[name] = t, d
            self._lo[name] = min(self._lo[name], d)
            self._hi[name] = max(self._hi[name], d)
        self.samples += 1

    @property
    def ranges(self) -> dict[str, tuple[int, int]]:
        """Per joint (low, high) ticks relative to the reference pose."""
        return {n: (self._lo[n], self._hi[n]) for n in self._lo}


def compute_calibration(
    cfg: ArmConfig,
    reference: Mapping[str, int],
    ranges: Mapping[str, tuple[int, int]],
    signs: Mapping[str, int],
) -> ArmCalibration:
    """reference: raw ticks at the reference pose (offset registers at 0); ranges: from
    `RangeRecorder`; signs: from `direction`. Raises ValueError on an unusable range."""
    regs = REGISTERS[cfg.backend]
    records = []
    for j in cfg.joints:
        lo, hi = ranges[j.name]
        if hi - lo < MIN_RANGE_TICKS:
            raise ValueError(f"{j.name}: moved through {hi - lo} ticks only; record its range")
        if hi - lo >= TICKS_PER_REV - 1:
            raise ValueError(f"{j.name}: turned a full revolution; a range must be less")
        mid = (lo + hi) // 2
        offset = regs.centring_offset((reference[j.name] + mid) % TICKS_PER_REV)
        at_reference = regs.present(reference[j.name], offset)
        # The register centres the range, so it reads at_reference + lo .. at_reference + hi
        # without crossing the seam (unless the Feetech register's one-tick clamp hit an end).
        span = (at_reference + lo, at_reference + hi)
        if span[0] < 0 or span[1] >= TICKS_PER_REV:
            raise ValueError(f"{j.name}: range {span} does not fit one turn")
        sign = signs[j.name]
        if j.gripper is not None:
            ticks = span if sign > 0 else span[::-1]  # (closed, open): positive is opening
            records.append(
                JointRecord(j.name, j.servo_id, j.model, offset, 0, 1, span, ticks, j.gripper)
            )
        else:
            # q = sign * (ticks - 2048 - homing) * rad/tick equals `reference` at the pose.
            homing = at_reference - CENTER_TICKS - sign * round(j.reference / RAD_PER_TICK)
            records.append(JointRecord(j.name, j.servo_id, j.model, offset, homing, sign, span))
    return ArmCalibration(cfg.robot, cfg.name, cfg.backend, tuple(records))


# --- on the bus --------------------------------------------------------------------------------
def _retried(bus: ServoBus, fn: Callable[[], T], attempts: int = 3, patience_s: float = 0.0) -> T:
    """One transient bus error (a noisy line at power-up) must not fail a calibration. After a
    failure the line is drained until quiet: a reply that came after its deadline would
    otherwise answer the retry, and every transaction after it (seen: "asked id 2, reply
    from id 1" on every joint after one slow first reply)."""
    end = time.monotonic() + patience_s  # and at least `attempts` tries
    attempt = 0
    while True:
        attempt += 1
        bus.clear()  # a reply that came late for the previous transaction
        try:
            return fn()
        except BusError:
            bus.drain(max(bus.timeout_s, 0.05))  # this one's, if it is only slow
            if attempt >= attempts and time.monotonic() >= end:
                raise


def open_bus(cfg: ArmConfig, port: str, baudrate: int, timeout_s: float = 0.02) -> ServoBus:
    return cfg.family.bus_class(SerialLink(port, baudrate), timeout_s=timeout_s)


def read_ticks(bus: ServoBus, cfg: ArmConfig) -> dict[str, int]:
    """Every joint's servo-reported position, ticks in 0..4095."""
    fam = cfg.family
    ids = [j.servo_id for j in cfg.joints]
    replies = _retried(bus, lambda: bus.sync_read(ids, fam.state_address, fam.state_length))
    return {
        j.name: fam.decode_state(replies[j.servo_id].data)[0] % TICKS_PER_REV for j in cfg.joints
    }


def check_servos(bus: ServoBus, cfg: ArmConfig) -> list[str]:
    """Every configured id answers with its configured model; problems as sentences."""
    by_number = {f.model_number: name for name, f in MODELS.items()}
    address = REGISTERS[cfg.backend].model_address
    problems = []
    for j in cfg.joints:
        try:
            # 1 s of patience: the first contact after opening the port (a host under load
            # stalled an emulated bus ~0.5 s in CI); a missing servo costs 1 s to report
            data = _retried(bus, lambda j=j: bus.read(j.servo_id, address, 2), patience_s=1.0).data
        except BusError as exc:
            problems.append(f"{j.name}: servo id {j.servo_id} does not answer ({exc})")
            continue
        number = data[0] | data[1] << 8
        if number != j.family.model_number:
            found = by_number.get(number, "an unknown model")
            problems.append(
                f"{j.name}: servo id {j.servo_id} is {found} (model number {number}), the robot "
                f"config says {j.model} ({j.family.model_number})"
            )
    return problems


def clear_offsets(bus: ServoBus, cfg: ArmConfig) -> None:
    """Torque off and offset registers to 0: the servos report raw ticks."""
    regs = REGISTERS[cfg.backend]
    for j in cfg.joints:
        _retried(bus, lambda j=j: regs.write_offset(bus, j.servo_id, 0))


def write_offsets(bus: ServoBus, cal: ArmCalibration) -> None:
    regs = REGISTERS[cal.protocol]
    for j in cal.joints:
        _retried(bus, lambda j=j: regs.write_offset(bus, j.servo_id, j.servo_offset))


def verify(bus: ServoBus, cfg: ArmConfig, cal: ArmCalibration) -> list[str]:
    """Everything that keeps this calibration from being used on this bus; [] when none."""
    problems = cal.mismatches(cfg) + check_servos(bus, cfg)
    if problems:
        return problems
    regs = REGISTERS[cfg.backend]
    for j in cal.joints:
        try:
            value = _retried(bus, lambda j=j: regs.read_offset(bus, j.servo_id))
        except BusError as exc:
            problems.append(f"{j.name}: offset register unreadable ({exc})")
            continue
        if value != j.servo_offset:
            problems.append(
                f"{j.name}: servo id {j.servo_id} has offset {value}, the calibration file "
                f"{j.servo_offset}: another calibration was written since (recalibrate)"
            )
    return problems


def verify_servos(port: str, baudrate: int, cfg: ArmConfig, cal: ArmCalibration) -> None:
    """Opens the port, verifies, closes it. Raises CalibrationMismatch listing every problem."""
    bus = open_bus(cfg, port, baudrate)
    try:
        problems = verify(bus, cfg, cal)
    finally:
        bus.link.close()
    if problems:
        raise CalibrationMismatch(
            f"{cfg.robot}/{cfg.name} on {port}: calibration does not match the servos:\n  "
            + "\n  ".join(problems)
        )


def describe(cal: ArmCalibration) -> list[str]:
    """One line per joint for the CLI's summary."""
    lines = []
    for j in cal.joints:
        lo, hi = j.range_values()
        unit = "" if j.linear_ticks is not None else f" ({math.degrees(hi - lo):.0f}°)"
        lines.append(
            f"{j.name:16} id {j.servo_id:3} sign {j.sign:+d} offset {j.servo_offset:+5d} "
            f"range [{lo:+.3f}, {hi:+.3f}]{unit}"
        )
    return lines
