"""The pty servo emulator plus the offset registers the arm calibration writes.

apprentice.drivers.emulator keeps no EEPROM on its Dynamixel servos and does not apply an
offset on either family; these servos add, from the datasheets:
- Dynamixel X: Homing Offset (addr 20, 4 bytes signed), Present = actual + offset; EEPROM
  (addr < 64) writable only with torque off (else Access Error).
- Feetech STS3215: Ofs (addr 31, 2 bytes, sign-magnitude, sign in bit 11), Present = actual −
  Ofs; EEPROM (addr < 40) takes writes only while Lock (addr 55) is 0; shipped locked.
- both: encoders read one turn, so reported ticks wrap at 0/4095; goals are in the same offset
  frame, and the servo moves to them without crossing that frame's seam.
Run as a script (same arguments as the emulator); `OffsetEmulatorProcess` does that.
"""

from __future__ import annotations

import json
import select
import socket
import struct
import subprocess
import sys
from pathlib import Path

from apprentice.drivers import emulator
from apprentice.drivers.emulator import EmulatorProcess, Servo

DXL_HOMING_OFFSET = 20
FT_OFS = 31
FT_LOCK = 55


class OffsetServo(Servo):
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


class OffsetEmulatorProcess(EmulatorProcess):
    """EmulatorProcess running this module instead of the stock emulator."""

    def __init__(self, protocol: str, ids: list[int], tau_s: float = 0.01) -> None:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--protocol", protocol]
        cmd += ["--ids", ",".join(map(str, ids)), "--tau", str(tau_s), "--exit-on-stdin-eof"]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.proc.stdout is not None
        if not select.select([self.proc.stdout], [], [], 10.0)[0]:
            self.close()
            raise RuntimeError("the emulator did not start")
        hello = json.loads(self.proc.stdout.readline())
        self.port = hello["port"]
        self._sock = socket.create_connection(("127.0.0.1", hello["control"]), timeout=5.0)
        self._file = self._sock.makefile("rb")


if __name__ == "__main__":
    emulator.Servo = OffsetServo  # Emulator builds its servos from this module global
    emulator.main()
