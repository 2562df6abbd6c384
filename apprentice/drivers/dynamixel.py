"""Dynamixel Protocol 2.0: framing, CRC-16, byte stuffing, and the X-series control table.

Packet: FF FF FD 00 | id | length (LE16, counts instruction + params + CRC) | instruction |
params (stuffed) | CRC16 (LE). A status packet's instruction is 0x55, followed by the error byte.
Stuffing: inside instruction+params, every FF FF FD gets an extra FD so a header never appears
in the payload. CRC: polynomial 0x8005, initial 0, unreflected, over the packet as sent.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import ClassVar

from apprentice.drivers.bus import Reply, ServoBus
from apprentice.drivers.link import BusCorrupt, Frame

HEADER = b"\xff\xff\xfd\x00"
STATUS = 0x55
REBOOT = 0x08
MAX_LENGTH = 1024  # longest length field we accept; a corrupted length must not stall a read


def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x8005) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return table


CRC_TABLE = _crc_table()


def crc16(data: bytes | bytearray, crc: int = 0) -> int:
    for b in data:
        crc = ((crc << 8) ^ CRC_TABLE[((crc >> 8) ^ b) & 0xFF]) & 0xFFFF
    return crc


def stuff(payload: bytes) -> bytes:
    """FF FF FD → FF FF FD FD, so the header cannot appear inside a packet."""
    return payload.replace(b"\xff\xff\xfd", b"\xff\xff\xfd\xfd")


def unstuff(payload: bytes) -> bytes:
    return payload.replace(b"\xff\xff\xfd\xfd", b"\xff\xff\xfd")


def encode(servo_id: int, code: int, params: bytes) -> bytes:
    """A whole packet: `code` is an instruction, or STATUS with the error byte first in params."""
    body = stuff(bytes([code]) + params)
    packet = HEADER + struct.pack("<BH", servo_id, len(body) + 2) + body
    return packet + struct.pack("<H", crc16(packet))


def split(buf: bytes | bytearray) -> tuple[Frame | None, int]:
    """Cuts the first packet off `buf`: (frame, bytes used), or (None, garbage bytes to drop)."""
    at = buf.find(HEADER)
    if at < 0:
        return None, max(0, len(buf) - (len(HEADER) - 1))  # a header may straddle two reads
    if len(buf) < at + 7:
        return None, at
    servo_id = buf[at + 4]
    length = buf[at + 5] | (buf[at + 6] << 8)
    if length < 3 or length > MAX_LENGTH:
        return None, at + 1  # not a real header: resynchronise on the next one
    end = at + 7 + length
    if len(buf) < end:
        return None, at
    packet = bytes(buf[at:end])
    ok = crc16(packet[:-2]) == (packet[-2] | (packet[-1] << 8))
    body = unstuff(packet[7:-2])
    return Frame(servo_id, body[0], body[1:], ok), end


class DynamixelBus(ServoBus):
    protocol = "dynamixel"
    status_overhead = 11  # header 4, id, length 2, 0x55, error, CRC 2

    split = staticmethod(split)
    encode = staticmethod(encode)

    def status(self, frame: Frame) -> Reply:
        if frame.code != STATUS or not frame.params:
            raise BusCorrupt(f"id {frame.servo_id}: not a status packet (0x{frame.code:02x})")
        return Reply(frame.params[1:], frame.params[0])

    def addr(self, address: int) -> bytes:
        return struct.pack("<H", address)

    def size(self, length: int) -> bytes:
        return struct.pack("<H", length)

    def reboot(self, servo_id: int) -> Reply:
        """Clears a latched hardware error (the only way on X-series); torque comes back off."""
        self._send(servo_id, REBOOT, b"")
        return self._reply(servo_id, self._deadline(self.status_overhead))


# X-series (XL330, XM430, XM540, XC330 ...) control table, Protocol 2.0. Addresses in bytes.
MODEL_NUMBER = 0  # 2 bytes
ID = 7
RETURN_DELAY = 9  # 1 byte, 2 µs units; 0 on a tuned bus
TORQUE_ENABLE = 64
HARDWARE_ERROR_STATUS = 70
BUS_WATCHDOG = 98  # 1 byte, 20 ms units; 0 off; reads 0xFF (-1) after it fired
GOAL_POSITION = 116  # 4 bytes, signed ticks
PRESENT_CURRENT = 126  # 2 bytes, signed, model-specific unit
PRESENT_VELOCITY = 128  # 4 bytes, signed, 0.229 rev/min
PRESENT_POSITION = 132  # 4 bytes, signed ticks
WATCHDOG_FIRED = 0xFF
WATCHDOG_UNIT_S = 0.020

# Error byte of a status packet: bit 7 = hardware alert (read HARDWARE_ERROR_STATUS for why);
# bits 0..6 = the result of this instruction.
ALERT = 0x80
RESULT_ERRORS = {
    1: "result_fail",
    2: "instruction_error",
    3: "crc_error",
    4: "data_range_error",
    5: "data_length_error",
    6: "data_limit_error",
    7: "access_error",
}
# HARDWARE_ERROR_STATUS bits; any of them latches, turns torque off, and needs a reboot.
HARDWARE_ERRORS = {
    0x01: "input_voltage",
    0x04: "overheating",
    0x08: "motor_encoder",
    0x10: "electrical_shock",
    0x20: "overload",
}

TICKS_PER_REV = 4096
CENTER_TICKS = 2048
VELOCITY_UNIT_RAD_S = 0.229 * 2.0 * math.pi / 60.0  # rad/s per unit (0.229 rev/min)


@dataclass(frozen=True)
class XSeries:
    """How to read one X-series model: the control-table layout is shared, units are not."""

    name: str
    model_number: int
    current_unit_a: float  # A per Present Current unit
    torque_per_amp: float  # N·m/A, from the datasheet stall torque / stall current (approximate)
    # rad/s, the datasheet's no-load speed at its nominal voltage: the joint velocity limit a
    # robot config gets by default (apprentice.drivers.factory)
    no_load_speed: float

    protocol = "dynamixel"
    bus_class = DynamixelBus
    torque_address = TORQUE_ENABLE
    goal_address = GOAL_POSITION
    goal_length = 4
    # One sync read covers current, velocity and position: 126..135.
    state_address = PRESENT_CURRENT
    state_length = 10
    hardware_error_address: ClassVar[int | None] = HARDWARE_ERROR_STATUS
    watchdog_address: ClassVar[int | None] = BUS_WATCHDOG

    def decode_state(self, data: bytes) -> tuple[int, float, float]:
        """(position ticks, velocity rad/s, effort N·m) from the 10 state bytes."""
        current, velocity, position = struct.unpack("<hii", data)
        return (
            position,
            velocity * VELOCITY_UNIT_RAD_S,
            current * self.current_unit_a * (self.torque_per_amp),
        )

    def encode_goal(self, ticks: int) -> bytes:
        return struct.pack("<i", ticks)

    def error_names(self, error: int) -> list[str]:
        names = ["hardware_alert"] if error & ALERT else []
        code = error & 0x7F
        if code:
            names.append(RESULT_ERRORS.get(code, f"result_0x{code:02x}"))
        return names

    def instruction_failed(self, error: int) -> bool:
        return bool(error & 0x7F)

    def needs_hardware_status(self, error: int) -> bool:
        return bool(error & ALERT)

    def hardware_error_names(self, value: int) -> list[str]:
        return [name for bit, name in HARDWARE_ERRORS.items() if value & bit]


RPM = 2.0 * math.pi / 60.0  # rad/s per rev/min

XL330_M288 = XSeries(
    "XL330-M288", 1200, current_unit_a=0.001, torque_per_amp=0.52 / 1.47, no_load_speed=103 * RPM
)
XM430_W350 = XSeries(
    "XM430-W350", 1020, current_unit_a=0.00269, torque_per_amp=4.1 / 2.3, no_load_speed=46 * RPM
)
