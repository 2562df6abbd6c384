"""The emulator's servos and faults: register maps, motion, error bits (see `emulator`).

A servo with torque on moves first-order toward its goal (time constant `tau_s`); with torque off
it stays put. Dynamixel's Bus Watchdog is modelled: with torque on and no packet for longer than
its setting, the servo stops, the register reads 0xFF, and goal writes fail with a data range
error until it is reset.
"""

from __future__ import annotations

import math
import random
import struct
import time
from dataclasses import dataclass, field

from apprentice.drivers import dynamixel as dxl
from apprentice.drivers import feetech as ft
from apprentice.drivers.bus import PING, READ, SYNC_READ, WRITE

FAULT_KINDS = ("drop", "delay", "corrupt", "split", "wrong_id")
INSTRUCTIONS = {"ping": PING, "read": READ, "write": WRITE, "sync_read": SYNC_READ}


@dataclass
class Fault:
    kind: str
    ids: list[int] | None = None  # None: every servo
    count: int | None = None  # replies still to affect; None: until cleared
    p: float = 1.0
    delay_s: float = 0.02
    gap_s: float = 0.002
    instruction: str | None = None  # only replies to this one (a key of INSTRUCTIONS)
    skip: int = 0  # replies it would hit that pass untouched first (e.g. a start-up's reads)

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {self.kind!r}; one of {FAULT_KINDS}")
        if self.instruction is not None and self.instruction not in INSTRUCTIONS:
            raise ValueError(f"unknown instruction {self.instruction!r}; one of {INSTRUCTIONS}")

    def hits(self, servo_id: int, instruction: int, rng: random.Random) -> bool:
        if self.count is not None and self.count <= 0:
            return False
        if self.ids is not None and servo_id not in self.ids:
            return False
        if self.instruction is not None and INSTRUCTIONS[self.instruction] != instruction:
            return False
        if self.skip > 0:
            self.skip -= 1
            return False
        if rng.random() >= self.p:
            return False
        if self.count is not None:
            self.count -= 1
        return True


@dataclass
class Servo:
    servo_id: int
    protocol: str
    tau_s: float
    position: float = 2048.0  # ticks
    goal: float = 2048.0  # ticks
    velocity: float = 0.0  # ticks/s
    torque: bool = False
    error_bits: int = 0  # Dynamixel: Hardware Error Status; Feetech: status error byte
    watchdog: int = 0  # Dynamixel Bus Watchdog register
    vanished: bool = False
    last_packet: float = field(default_factory=time.monotonic)
    last_update: float = field(default_factory=time.monotonic)
    mem: bytearray = field(default_factory=lambda: bytearray(256))

    def __post_init__(self) -> None:
        if self.protocol == "dynamixel":
            struct.pack_into("<H", self.mem, dxl.MODEL_NUMBER, dxl.XL330_M288.model_number)
            self.mem[dxl.ID] = self.servo_id
        else:
            struct.pack_into("<H", self.mem, ft.MODEL_NUMBER, ft.STS3215_MODEL)
            self.mem[ft.ID] = self.servo_id
            self.mem[ft.PRESENT_VOLTAGE] = 120  # 12.0 V
            self.mem[ft.PRESENT_TEMPERATURE] = 30  # °C

    def advance(self, now: float) -> None:
        dt = max(0.0, now - self.last_update)
        self.last_update = now
        if self.torque:
            self.position += (self.goal - self.position) * (1.0 - math.exp(-dt / self.tau_s))
            self.velocity = (self.goal - self.position) / self.tau_s
        else:
            self.velocity = 0.0

    def check_watchdog(self, now: float) -> None:
        """Dynamixel Bus Watchdog: silence longer than the setting stops a torqued servo."""
        if self.watchdog in (0, dxl.WATCHDOG_FIRED) or not self.torque:
            return
        if now - self.last_packet > self.watchdog * dxl.WATCHDOG_UNIT_S:
            self.advance(now)
            self.watchdog = dxl.WATCHDOG_FIRED
            self.goal = self.position  # stop where it is

    def refresh(self) -> None:
        """Present values into the register map before a read."""
        pos, vel = round(self.position), round(self.velocity)
        load = max(-1000, min(1000, round((self.goal - self.position) * 2.0))) if self.torque else 0
        if self.protocol == "dynamixel":
            # Present Current in the XL330's 1 mA units, proportional to the tracking error;
            # Present Velocity in 0.229 rev/min units.
            vel_units = round(self.velocity * 60.0 / dxl.TICKS_PER_REV / 0.229)
            struct.pack_into("<hii", self.mem, dxl.PRESENT_CURRENT, load, vel_units, pos)
            struct.pack_into("<i", self.mem, dxl.GOAL_POSITION, round(self.goal))
            self.mem[dxl.TORQUE_ENABLE] = int(self.torque)
            self.mem[dxl.HARDWARE_ERROR_STATUS] = self.error_bits
            self.mem[dxl.BUS_WATCHDOG] = self.watchdog
        else:
            struct.pack_into(
                "<HHH",
                self.mem,
                ft.PRESENT_POSITION,
                ft.to_sign_magnitude(pos, 15),
                ft.to_sign_magnitude(vel, 15),
                ft.to_sign_magnitude(load, 10),
            )
            struct.pack_into(
                "<H", self.mem, ft.GOAL_POSITION, ft.to_sign_magnitude(round(self.goal), 15)
            )
            self.mem[ft.TORQUE_ENABLE] = int(self.torque)

    def status_error(self, result: int = 0) -> int:
        if self.protocol == "dynamixel":
            return (dxl.ALERT if self.error_bits else 0) | result
        return self.error_bits

    def write(self, address: int, data: bytes) -> int:
        """Applies a register write; returns a Dynamixel result code (0 = fine)."""
        if self.protocol == "dynamixel":
            return self._write_dynamixel(address, data)
        for i, b in enumerate(data):
            self.mem[address + i] = b
        if address <= ft.TORQUE_ENABLE < address + len(data):
            self.torque = bool(self.mem[ft.TORQUE_ENABLE]) and not self._protecting()
            self.goal = self.position
        if address <= ft.GOAL_POSITION and ft.GOAL_POSITION + 2 <= address + len(data):
            raw = self.mem[ft.GOAL_POSITION] | self.mem[ft.GOAL_POSITION + 1] << 8
            self.goal = float(ft.sign_magnitude(raw, 15))
        return 0

    def _protecting(self) -> bool:
        return bool(self.error_bits & 0x24)  # overload / overheating unload the STS3215

    def _write_dynamixel(self, address: int, data: bytes) -> int:
        end = address + len(data)
        if address <= dxl.GOAL_POSITION and dxl.GOAL_POSITION + 4 <= end:
            if self.watchdog == dxl.WATCHDOG_FIRED:
                return 4  # data range error: goals are frozen until the watchdog is reset
            at = dxl.GOAL_POSITION - address
            self.goal = float(struct.unpack_from("<i", data, at)[0])
        if address <= dxl.BUS_WATCHDOG < end:
            value = data[dxl.BUS_WATCHDOG - address]
            if self.watchdog == dxl.WATCHDOG_FIRED and value != 0:
                return 4  # must be cleared with 0 first
            self.watchdog = value
        if address <= dxl.TORQUE_ENABLE < end:
            on = bool(data[dxl.TORQUE_ENABLE - address])
            if on and self.error_bits:
                return 1  # result fail: a latched hardware error keeps torque off
            if on and not self.torque:
                self.goal = self.position  # X-series: goal follows present at torque-on
            self.torque = on
        return 0

    def set_error(self, bits: int) -> None:
        self.error_bits = bits
        if self.protocol == "dynamixel":
            if bits & ~0x01:  # default Shutdown: anything but input voltage turns torque off
                self.torque = False
        elif self._protecting():
            self.torque = False

    def reboot(self) -> None:
        self.error_bits = 0
        self.torque = False
        self.watchdog = 0


DXL_HOMING_OFFSET = 20
FT_OFS = 31
FT_LOCK = 55


class OffsetServo(Servo):
    """A servo with the offset registers arm calibration writes (from the datasheets):
    - Dynamixel X: Homing Offset (addr 20, 4 bytes signed), Present = actual + offset; EEPROM
      (addr < 64) writable only with torque off (else Access Error).
    - Feetech STS3215: Ofs (addr 31, 2 bytes, sign-magnitude, sign in bit 11), Present =
      actual − Ofs; EEPROM (addr < 40) takes writes only while Lock (addr 55) is 0; shipped
      locked.
    - both: encoders read one turn, so reported ticks wrap at 0/4095; goals are in the same
      offset frame, and the servo moves to them without crossing that frame's seam.
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.protocol == "feetech":
            self.mem[FT_LOCK] = 1

    def offset(self) -> int:
        if self.protocol == "dynamixel":
            return struct.unpack_from("<i", self.mem, DXL_HOMING_OFFSET)[0]
        raw = self.mem[FT_OFS] | self.mem[FT_OFS + 1] << 8
        return -(raw & 0x7FF) if raw & 0x800 else raw & 0x7FF

    def reported(self, actual: float) -> float:
        shift = self.offset() if self.protocol == "dynamixel" else -self.offset()
        return (actual + shift) % 4096

    def refresh(self) -> None:
        actual = (self.position, self.goal)
        self.position, self.goal = self.reported(self.position), self.reported(self.goal)
        try:
            super().refresh()
        finally:
            self.position, self.goal = actual

    def write(self, address: int, data: bytes) -> int:
        dynamixel = self.protocol == "dynamixel"
        if address < (64 if dynamixel else 40):  # EEPROM
            if dynamixel:
                if self.torque:
                    return 7  # access error
                self.mem[address : address + len(data)] = data
                return 0
            if self.mem[FT_LOCK]:
                return 0  # locked: not taken
        goal_at, goal_len = (116, 4) if dynamixel else (42, 2)
        result = super().write(address, data)
        if result == 0 and address <= goal_at and goal_at + goal_len <= address + len(data):
            # The goal came in the offset frame: the same distance from here in actual ticks.
            self.goal = self.position + (self.goal - self.reported(self.position))
        return result
