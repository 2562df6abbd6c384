"""A servo bus emulator on a pseudo-terminal: Dynamixel 2.0 or Feetech STS, byte by byte.

Run it in its own process (in-process emulator threads fight the host for the GIL):

    python -m apprentice.drivers.emulator --protocol dynamixel --ids 1,2,3

It prints one JSON line, {"port": "/dev/pts/N", "control": TCP_PORT}, then serves until its
stdin closes (so it dies with its parent) or it gets SIGTERM. `EmulatorProcess` does all that
from Python. The control port (127.0.0.1) takes one JSON object per line and answers one:

    {"cmd": "fault", "kind": "drop", "ids": [2], "count": 3}   kinds: drop, delay (delay_s),
        corrupt (bad checksum), split (reply in two writes, gap_s apart), wrong_id; optional
        "p" (probability per reply); no "count" = until cleared
    {"cmd": "clear_faults"}
    {"cmd": "vanish", "ids": [3]} / {"cmd": "appear", "ids": [3]}   a servo stops answering
    {"cmd": "error", "id": 2, "bits": ["overload"]}   hardware error bits (names as in
        dynamixel.HARDWARE_ERRORS / feetech.ERRORS); Dynamixel latches them until REBOOT
    {"cmd": "move", "id": 1, "ticks": 2500}   a hand moves a limp servo
    {"cmd": "state"}   positions, goals, torque, watchdog, error bits, packet counts

Model: a servo with torque on moves first-order toward its goal (time constant `tau_s`); with
torque off it stays put. Replies are paced at the wire speed of the configured baud rate (10 bits
a byte), counted from the end of the request, so timings resemble a real 1 Mbaud bus. Dynamixel's
Bus Watchdog is modelled: with torque on and no packet for longer than its setting, the servo
stops, the register reads 0xFF, and goal writes fail with a data range error until it is reset.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import select
import socket
import struct
import subprocess
import sys
import time
import tty
from dataclasses import dataclass, field

from apprentice.drivers import dynamixel as dxl
from apprentice.drivers import feetech as ft
from apprentice.drivers.bus import PING, READ, SYNC_READ, SYNC_WRITE, WRITE
from apprentice.drivers.link import Frame

FAULT_KINDS = ("drop", "delay", "corrupt", "split", "wrong_id")


@dataclass
class Fault:
    kind: str
    ids: list[int] | None = None  # None: every servo
    count: int | None = None  # replies still to affect; None: until cleared
    p: float = 1.0
    delay_s: float = 0.02
    gap_s: float = 0.002

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {self.kind!r}; one of {FAULT_KINDS}")

    def hits(self, servo_id: int, rng: random.Random) -> bool:
        if self.count is not None and self.count <= 0:
            return False
        if self.ids is not None and servo_id not in self.ids:
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


class Emulator:
    """The bus: parses instruction packets from the pty master and answers as the servos would."""

    def __init__(
        self,
        protocol: str,
        ids: list[int],
        baudrate: int = 1_000_000,
        tau_s: float = 0.03,
        seed: int = 0,
    ) -> None:
        if protocol not in ("dynamixel", "feetech"):
            raise ValueError(f"unknown protocol {protocol!r}")
        self.protocol = protocol
        self.codec = dxl if protocol == "dynamixel" else ft
        self.servos = {i: OffsetServo(i, protocol, tau_s) for i in ids}
        self.byte_s = 10.0 / baudrate if baudrate > 0 else 0.0
        self.faults: list[Fault] = []
        self.rng = random.Random(seed)
        self.stats = {"packets": 0, "bad_checksum": 0, "replies": 0, "dropped": 0}
        self.master, self.slave = os.openpty()
        tty.setraw(self.master)
        self.port = os.ttyname(self.slave)
        self._buf = bytearray()

    # --- faults and control --------------------------------------------------------------
    def _active(self, kind: str, servo_id: int) -> Fault | None:
        for fault in self.faults:
            if fault.kind == kind and fault.hits(servo_id, self.rng):
                return fault
        return None

    def control(self, msg: dict) -> dict:
        cmd = msg.get("cmd")
        now = time.monotonic()
        if cmd == "fault":
            args = {k: v for k, v in msg.items() if k != "cmd"}
            self.faults.append(Fault(**args))
        elif cmd == "clear_faults":
            self.faults.clear()
        elif cmd in ("vanish", "appear"):
            for i in msg["ids"]:
                self.servos[i].vanished = cmd == "vanish"
        elif cmd == "error":
            table = dxl.HARDWARE_ERRORS if self.protocol == "dynamixel" else ft.ERRORS
            by_name = {name: bit for bit, name in table.items()}
            self.servos[msg["id"]].set_error(sum(by_name[b] for b in msg["bits"]))
        elif cmd == "move":
            servo = self.servos[msg["id"]]
            servo.advance(now)
            servo.position = float(msg["ticks"])
            if not servo.torque:
                servo.goal = servo.position
        elif cmd != "state":
            return {"ok": False, "error": f"unknown command {cmd!r}"}
        return {"ok": True, "servos": self._state(now), "stats": self.stats}

    def _state(self, now: float) -> dict:
        out = {}
        for i, s in self.servos.items():
            s.check_watchdog(now)
            s.advance(now)
            out[str(i)] = {
                "position": s.position,
                "goal": s.goal,
                "torque": s.torque,
                "watchdog": s.watchdog,
                "error_bits": s.error_bits,
                "vanished": s.vanished,
            }
        return out

    # --- the bus -------------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        self._buf += data
        while True:
            frame, used = self.codec.split(self._buf)
            request_end = time.monotonic() + used * self.byte_s  # the request's own wire time
            del self._buf[:used]
            if frame is None:
                return
            self.stats["packets"] += 1
            if not frame.checksum_ok:
                self.stats["bad_checksum"] += 1  # real servos ignore a corrupted instruction
                continue
            self._send(self._answer(frame), request_end)

    def _answer(self, frame: Frame) -> list[tuple[int, bytes]]:
        """(servo id, status params incl. error byte for Dynamixel) for each reply due."""
        now = time.monotonic()
        targets = list(self.servos) if frame.servo_id == 0xFE else [frame.servo_id]
        for i in targets:
            if i in self.servos and not self.servos[i].vanished:
                s = self.servos[i]
                s.check_watchdog(now)
                s.last_packet = now
                s.advance(now)
        wide = self.protocol == "dynamixel"
        p = frame.params
        code = frame.code
        replies: list[tuple[int, int, bytes]] = []  # id, error, data

        def live(i: int) -> Servo | None:
            s = self.servos.get(i)
            return s if s is not None and not s.vanished else None

        def addr_len(at: int) -> tuple[int, int, int]:
            if wide:
                a, n = struct.unpack_from("<HH", p, at)
                return a, n, at + 4
            return p[at], p[at + 1], at + 2

        if code == PING:
            for i in targets:
                if (s := live(i)) is not None:
                    model = s.mem[0:2] if wide else s.mem[ft.MODEL_NUMBER : ft.MODEL_NUMBER + 2]
                    replies.append((i, s.status_error(), bytes(model) + (b"\x2e" if wide else b"")))
        elif code == READ and (s := live(frame.servo_id)) is not None:
            a, n, _ = addr_len(0)
            s.refresh()
            replies.append((s.servo_id, s.status_error(), bytes(s.mem[a : a + n])))
        elif code == WRITE and (s := live(frame.servo_id)) is not None:
            a = struct.unpack_from("<H", p, 0)[0] if wide else p[0]
            result = s.write(a, bytes(p[2 if wide else 1 :]))
            replies.append((s.servo_id, s.status_error(result), b""))
        elif code == SYNC_READ and frame.servo_id == 0xFE:
            a, n, at = addr_len(0)
            for i in p[at:]:
                if (s := live(i)) is not None:
                    s.refresh()
                    replies.append((i, s.status_error(), bytes(s.mem[a : a + n])))
        elif code == SYNC_WRITE and frame.servo_id == 0xFE:
            a, n, at = addr_len(0)
            while at + 1 + n <= len(p):
                if (s := live(p[at])) is not None:
                    s.write(a, bytes(p[at + 1 : at + 1 + n]))
                at += 1 + n
        elif wide and code == dxl.REBOOT and (s := live(frame.servo_id)) is not None:
            s.reboot()
            replies.append((s.servo_id, 0, b""))
        elif (s := live(frame.servo_id)) is not None:
            replies.append((s.servo_id, s.status_error(2 if wide else 0), b""))
        return [(i, bytes([err]) + data) for i, err, data in replies]

    def _send(self, replies: list[tuple[int, bytes]], start: float) -> None:
        t = start
        for servo_id, payload in replies:
            wire_id = servo_id
            if self._active("drop", servo_id):
                self.stats["dropped"] += 1
                continue
            if self._active("wrong_id", servo_id) is not None:
                wire_id = (servo_id + 100) % 253  # an id nobody asked
            if self.protocol == "dynamixel":
                packet = bytearray(dxl.encode(wire_id, dxl.STATUS, payload))
            else:
                packet = bytearray(ft.encode(wire_id, payload[0], payload[1:]))
            if self._active("corrupt", servo_id):
                packet[-1] ^= 0x5A
            if (f := self._active("delay", servo_id)) is not None:
                t += f.delay_s
            t += len(packet) * self.byte_s
            split = self._active("split", servo_id)
            if split is not None:
                half = len(packet) // 2
                self._write_at(bytes(packet[:half]), t - (len(packet) - half) * self.byte_s)
                t += split.gap_s
                self._write_at(bytes(packet[half:]), t)
            else:
                self._write_at(bytes(packet), t)
            self.stats["replies"] += 1

    def _write_at(self, data: bytes, when: float) -> None:
        """Writes when the last byte would have crossed the wire."""
        wait = when - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        os.write(self.master, data)

    # --- process -------------------------------------------------------------------------
    def serve(self, stop_fd: int | None = None) -> None:
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen(4)
        print(json.dumps({"port": self.port, "control": server.getsockname()[1]}), flush=True)
        clients: dict[socket.socket, bytearray] = {}
        while True:
            watch = [self.master, server, *clients] + ([stop_fd] if stop_fd is not None else [])
            ready = select.select(watch, [], [], 0.01)[0]
            if stop_fd is not None and stop_fd in ready and not os.read(stop_fd, 4096):
                return
            if self.master in ready:
                self.feed(os.read(self.master, 4096))
            if server in ready:
                conn, _ = server.accept()
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                clients[conn] = bytearray()
            for conn in [c for c in clients if c in ready]:
                chunk = conn.recv(4096)
                if not chunk:
                    conn.close()
                    del clients[conn]
                    continue
                clients[conn] += chunk
                while b"\n" in clients[conn]:
                    line, _, rest = clients[conn].partition(b"\n")
                    clients[conn] = rest
                    try:
                        answer = self.control(json.loads(line))
                    except (ValueError, KeyError, TypeError) as exc:
                        answer = {"ok": False, "error": repr(exc)}
                    conn.sendall(json.dumps(answer).encode() + b"\n")
            now = time.monotonic()
            for servo in self.servos.values():
                servo.check_watchdog(now)


class EmulatorProcess:
    """Starts the emulator in a child process; `port` is the tty to open, `control()` talks to
    its control channel. Use as a context manager."""

    def __init__(
        self,
        protocol: str,
        ids: list[int],
        baudrate: int = 1_000_000,
        tau_s: float = 0.03,
        faults: list[dict] | None = None,
        start_timeout_s: float = 10.0,
    ) -> None:
        cmd = [
            sys.executable,
            "-m",
            "apprentice.drivers.emulator",
            "--protocol",
            protocol,
            "--ids",
            ",".join(map(str, ids)),
            "--baud",
            str(baudrate),
            "--tau",
            str(tau_s),
        ]
        for fault in faults or []:
            cmd += ["--fault", json.dumps(fault)]
        cmd.append("--exit-on-stdin-eof")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.proc.stdout is not None
        if not select.select([self.proc.stdout], [], [], start_timeout_s)[0]:
            self.close()
            raise RuntimeError("the emulator did not start")
        hello = json.loads(self.proc.stdout.readline())
        self.port: str = hello["port"]
        self._sock = socket.create_connection(("127.0.0.1", hello["control"]), timeout=5.0)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._file = self._sock.makefile("rb")

    def control(self, cmd: str, **args: object) -> dict:
        self._sock.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
        answer = json.loads(self._file.readline())
        if not answer.get("ok"):
            raise RuntimeError(f"emulator refused {cmd}: {answer.get('error')}")
        return answer

    def state(self) -> dict:
        return self.control("state")

    def close(self) -> None:
        if self.proc.poll() is None:
            if self.proc.stdin is not None:
                self.proc.stdin.close()  # the emulator exits on EOF
            try:
                self.proc.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if hasattr(self, "_sock"):
            self._file.close()
            self._sock.close()
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> EmulatorProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", choices=["dynamixel", "feetech"], required=True)
    parser.add_argument("--ids", required=True, help="comma-separated servo ids, e.g. 1,2,3")
    parser.add_argument("--baud", type=int, default=1_000_000, help="wire pacing; 0 = none")
    parser.add_argument("--tau", type=float, default=0.03, help="position time constant, s")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fault", action="append", default=[], help="JSON, as the control cmd")
    parser.add_argument(
        "--exit-on-stdin-eof", action="store_true", help="stop when the parent closes our stdin"
    )
    args = parser.parse_args(argv)
    emulator = Emulator(
        args.protocol, [int(i) for i in args.ids.split(",")], args.baud, args.tau, args.seed
    )
    for spec in args.fault:
        emulator.control({"cmd": "fault", **json.loads(spec)})
    # Started by EmulatorProcess, our stdin is the parent's pipe: EOF means the parent left.
    stop_fd = sys.stdin.fileno() if args.exit_on_stdin_eof else None
    try:
        emulator.serve(stop_fd)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
