"""Feetech SCS/STS protocol (STS3215 of the SO-100/SO-101): framing, checksum, control table.

Packet: FF FF | id | length (params + 2) | instruction | params | checksum, where
checksum = ~(id + length + instruction + sum(params)) & 0xFF. A status packet carries the
servo's error byte where an instruction packet carries the instruction. Addresses and lengths
are one byte. STS registers are little-endian (the older SCS series is big-endian: not covered).
STS3215 answers SYNC_READ (0x82) with one status packet per servo, in the order asked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from apprentice.drivers.bus import Reply, ServoBus
from apprentice.drivers.link import Frame

HEADER = b"\xff\xff"


def checksum(body: bytes | bytearray) -> int:
    """`body` is id, length, instruction/error, params."""
    return ~sum(body) & 0xFF


def encode(servo_id: int, code: int, params: bytes) -> bytes:
    """A whole packet; `code` is the instruction, or the error byte of a status packet."""
    if len(params) > 253:
        raise ValueError(f"{len(params)} parameter bytes do not fit one packet")
    body = bytes([servo_id, len(params) + 2, code]) + params
    return HEADER + body + bytes([checksum(body)])


def split(buf: bytes | bytearray) -> tuple[Frame | None, int]:
    """Cuts the first packet off `buf`: (frame, bytes used), or (None, garbage bytes to drop)."""
    at = buf.find(HEADER)
    while at >= 0 and at + 2 < len(buf) and buf[at + 2] == 0xFF:
        at += 1  # FF FF FF: the header is the last two; 0xFF is never an id
    if at < 0:
        return None, max(0, len(buf) - 1)
    if len(buf) < at + 4:
        return None, at
    servo_id, length = buf[at + 2], buf[at + 3]
    if length < 2:
        return None, at + 1
    end = at + 4 + length
    if len(buf) < end:
        return None, at
    body = bytes(buf[at + 2 : end - 1])
    return Frame(servo_id, body[2], body[3:], checksum(body) == buf[end - 1]), end


class FeetechBus(ServoBus):
    protocol = "feetech"
    status_overhead = 6  # header 2, id, length, error, checksum

    split = staticmethod(split)
    encode = staticmethod(encode)

    def status(self, frame: Frame) -> Reply:
        return Reply(frame.params, frame.code)

    def addr(self, address: int) -> bytes:
        return bytes([address])

    def size(self, length: int) -> bytes:
        return bytes([length])


# STS3215 control table (EEPROM below 40, SRAM from 40). Addresses in bytes, values little-endian.
MODEL_NUMBER = 3  # 2 bytes; 777 for the STS3215
ID = 5
TORQUE_ENABLE = 40
GOAL_POSITION = 42  # 2 bytes, ticks, sign-magnitude (bit 15)
LOCK = 55
PRESENT_POSITION = 56  # 2 bytes, ticks, sign-magnitude (bit 15)
PRESENT_SPEED = 58  # 2 bytes, ticks/s, sign-magnitude (bit 15)
PRESENT_LOAD = 60  # 2 bytes, 0.1 % of max torque, sign in bit 10
PRESENT_VOLTAGE = 62  # 1 byte, 0.1 V
PRESENT_TEMPERATURE = 63  # 1 byte, °C

# Error byte of every status packet: live conditions, reported again in each reply.
ERRORS = {
    0x01: "input_voltage",
    0x02: "angle_sensor",
    0x04: "overheating",
    0x08: "overcurrent",
    0x20: "overload",
}

TICKS_PER_REV = 4096
CENTER_TICKS = 2048
STS3215_MODEL = 777


def sign_magnitude(raw: int, sign_bit: int) -> int:
    magnitude = raw & ((1 << sign_bit) - 1)
    return -magnitude if raw & (1 << sign_bit) else magnitude


def to_sign_magnitude(value: int, sign_bit: int) -> int:
    limit = (1 << sign_bit) - 1
    magnitude = min(abs(value), limit)
    return magnitude | (1 << sign_bit) if value < 0 else magnitude


@dataclass(frozen=True)
class STS3215:
    """How to read an STS3215: one sync read of 56..63 gives position, speed, load, V and °C."""

    name: str = "STS3215"
    model_number: int = STS3215_MODEL
    # N·m at 100 % load: ~30 kg·cm for the 12 V version, ~19.5 kg·cm for the 7.4 V one (approx.).
    max_torque_nm: float = 2.94
    # rad/s without load: 0.222 s per 60° (datasheet, both voltages); the default joint velocity
    # limit of a robot config (apprentice.drivers.factory)
    no_load_speed: float = math.pi / 3 / 0.222

    protocol: ClassVar[str] = "feetech"
    bus_class: ClassVar[type[ServoBus]] = FeetechBus
    torque_address: ClassVar[int] = TORQUE_ENABLE
    goal_address: ClassVar[int] = GOAL_POSITION
    goal_length: ClassVar[int] = 2
    state_address: ClassVar[int] = PRESENT_POSITION
    state_length: ClassVar[int] = 8
    hardware_error_address: ClassVar[int | None] = None  # the error byte says it all
    watchdog_address: ClassVar[int | None] = None  # STS3215 has no bus watchdog

    def decode_state(self, data: bytes) -> tuple[int, float, float]:
        """(position ticks, velocity rad/s, effort N·m) from the 8 state bytes."""
        position = sign_magnitude(data[0] | data[1] << 8, 15)
        speed = sign_magnitude(data[2] | data[3] << 8, 15)  # ticks/s
        load = sign_magnitude(data[4] | data[5] << 8, 10)  # 0.1 %
        return (
            position,
            speed * 2.0 * math.pi / TICKS_PER_REV,
            load * 0.001 * self.max_torque_nm,
        )

    def encode_goal(self, ticks: int) -> bytes:
        # Position mode spans one turn; clamp rather than wrap to the other side.
        raw = to_sign_magnitude(max(0, min(TICKS_PER_REV - 1, ticks)), 15)
        return bytes([raw & 0xFF, raw >> 8])

    def error_names(self, error: int) -> list[str]:
        names = [name for bit, name in ERRORS.items() if error & bit]
        unknown = error & ~sum(ERRORS)
        if unknown:
            names.append(f"error_0x{unknown:02x}")
        return names

    def instruction_failed(self, error: int) -> bool:
        return False  # the error byte reports conditions, not the fate of the instruction

    def needs_hardware_status(self, error: int) -> bool:
        return False

    def hardware_error_names(self, value: int) -> list[str]:
        return self.error_names(value)
