"""A servo model's description (`ServoFamily`) and one joint's map from ticks to joint units.

Shared by the arm backend (`bus_arm`), the robot configs (`factory`) and arm calibration.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from apprentice.drivers.bus import ServoBus

TICKS_PER_REV = 4096  # both families
CENTER_TICKS = 2048
RAD_PER_TICK = 2.0 * math.pi / TICKS_PER_REV


class ServoFamily(Protocol):
    """What `ServoBusArm` needs to know of a servo model (dynamixel.XSeries, feetech.STS3215)."""

    name: str
    protocol: str
    model_number: int
    bus_class: type[ServoBus]
    torque_address: int
    goal_address: int
    goal_length: int
    state_address: int
    state_length: int
    hardware_error_address: int | None
    watchdog_address: int | None
    no_load_speed: float  # rad/s at the output shaft, datasheet, at the usual supply voltage

    def decode_state(self, data: bytes) -> tuple[int, float, float]: ...

    def encode_goal(self, ticks: int) -> bytes: ...

    def error_names(self, error: int) -> list[str]: ...

    def needs_hardware_status(self, error: int) -> bool: ...

    def instruction_failed(self, error: int) -> bool: ...

    def hardware_error_names(self, value: int) -> list[str]: ...


@dataclass(frozen=True)
class JointCalibration:
    """Servo id and the map from its ticks to joint units.

    Revolute: q = sign * (ticks - 2048 - homing_offset) * 2π/4096 rad.
    Linear (grippers, `linear_ticks` set): q goes linearly from `linear_values[0]` at
    `linear_ticks[0]` to `linear_values[1]` at `linear_ticks[1]` (m, or 0..1 for a closure).
    """

    servo_id: int
    homing_offset: int = 0  # ticks
    sign: int = 1
    linear_ticks: tuple[int, int] | None = None
    linear_values: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        if not 0 <= self.servo_id <= 252:
            raise ValueError(f"servo id {self.servo_id} out of 0..252")
        if self.sign not in (1, -1):
            raise ValueError(f"sign must be 1 or -1, got {self.sign}")
        if self.linear_ticks is not None and self.linear_ticks[0] == self.linear_ticks[1]:
            raise ValueError("linear_ticks must be two different tick values")

    @property
    def units_per_tick(self) -> float:
        if self.linear_ticks is None:
            return self.sign * RAD_PER_TICK
        (t0, t1), (v0, v1) = self.linear_ticks, self.linear_values
        return (v1 - v0) / (t1 - t0)

    def to_joint(self, ticks: int) -> float:
        if self.linear_ticks is None:
            return (ticks - CENTER_TICKS - self.homing_offset) * self.units_per_tick
        return self.linear_values[0] + (ticks - self.linear_ticks[0]) * self.units_per_tick

    def to_ticks(self, q: float) -> int:
        if self.linear_ticks is None:
            return round(q / self.units_per_tick) + CENTER_TICKS + self.homing_offset
        return round((q - self.linear_values[0]) / self.units_per_tick) + self.linear_ticks[0]
