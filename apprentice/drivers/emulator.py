"""A servo bus emulator on a pseudo-terminal: Dynamixel 2.0 or Feetech STS, byte by byte.

Run it in its own process (in-process emulator threads fight the host for the GIL):

    python -m apprentice.drivers.emulator --protocol dynamixel --ids 1,2,3

It prints one JSON line, {"port": PATH, "control": TCP_PORT}, then serves until its stdin
closes (so it dies with its parent) or it gets SIGTERM. PATH is a stable name (a symlink in a
temporary folder, as udev gives a USB adapter) for the pty it serves on. `EmulatorProcess`
does all that from Python. The control port (127.0.0.1) takes one JSON object per line and
answers one:

    {"cmd": "fault", "kind": "drop", "ids": [2], "count": 3}   kinds: drop, delay (delay_s),
        corrupt (bad checksum), split (reply in two writes, gap_s apart), wrong_id; optional
        "p" (probability per reply); no "count" = until cleared
    {"cmd": "clear_faults"}
    {"cmd": "vanish", "ids": [3]} / {"cmd": "appear", "ids": [3]}   a servo stops answering
    {"cmd": "error", "id": 2, "bits": ["overload"]}   hardware error bits (names as in
        dynamixel.HARDWARE_ERRORS / feetech.ERRORS); Dynamixel latches them until REBOOT
    {"cmd": "move", "id": 1, "ticks": 2500}   a hand moves a limp servo
    {"cmd": "unplug"} / {"cmd": "replug"}   the USB adapter pulled out / put back: the pty is
        closed (the host's open port fails: writes EIO, reads EOF) and PATH removed; replug
        opens a new pty behind PATH. The servos keep power, torque and goals throughout.
    {"cmd": "state"}   positions, goals, torque, watchdog, error bits, faults, packet counts
Faults also take "instruction" (ping, read, write, sync_read: only replies to it) and "skip"
(matching replies let through first).

Servo model: `emulated_servo`. Replies are paced at the wire speed of the configured baud rate
(10 bits a byte), counted from the end of the request, so timings resemble a real 1 Mbaud bus.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import tty
from dataclasses import asdict
from pathlib import Path

from apprentice.drivers import dynamixel as dxl
from apprentice.drivers import feetech as ft
from apprentice.drivers.bus import PING, READ, SYNC_READ, SYNC_WRITE, WRITE
from apprentice.drivers.emulated_servo import Fault, OffsetServo, Servo
from apprentice.drivers.link import Frame


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
        self._folder = Path(tempfile.mkdtemp(prefix="servo-bus-"))
        self.port = str(self._folder / "ttyUSB")  # stable across unplug/replug, like udev's
        self.master: int | None = None
        self.slave: int | None = None
        self._buf = bytearray()
        self.replug()

    # --- the adapter ---------------------------------------------------------------------
    def unplug(self) -> None:
        """Both pty ends closed: the host's open port sees a hang-up; its name goes away."""
        if self.master is None:
            return
        Path(self.port).unlink(missing_ok=True)
        os.close(self.master)
        assert self.slave is not None
        os.close(self.slave)
        self.master = self.slave = None
        self._buf.clear()

    def replug(self) -> None:
        """A fresh pty behind the same name (the symlink is swapped atomically)."""
        if self.master is not None:
            return
        self.master, self.slave = os.openpty()  # slave kept open: the pty lives between hosts
        tty.setraw(self.master)
        tmp = self._folder / "ttyUSB.new"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(os.ttyname(self.slave))
        os.replace(tmp, self.port)

    def remove(self) -> None:
        self.unplug()
        shutil.rmtree(self._folder, ignore_errors=True)

    # --- faults and control --------------------------------------------------------------
    def _active(self, kind: str, servo_id: int, instruction: int) -> Fault | None:
        for fault in self.faults:
            if fault.kind == kind and fault.hits(servo_id, instruction, self.rng):
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
        elif cmd == "unplug":
            self.unplug()
        elif cmd == "replug":
            self.replug()
        elif cmd != "state":
            return {"ok": False, "error": f"unknown command {cmd!r}"}
        return {
            "ok": True,
            "servos": self._state(now),
            "stats": self.stats,
            "faults": [asdict(f) for f in self.faults],
            "plugged": self.master is not None,
        }

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
            self._send(self._answer(frame), request_end, frame.code)

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

    def _send(self, replies: list[tuple[int, bytes]], start: float, instruction: int) -> None:
        t = start
        for servo_id, payload in replies:
            wire_id = servo_id
            if self._active("drop", servo_id, instruction):
                self.stats["dropped"] += 1
                continue
            if self._active("wrong_id", servo_id, instruction) is not None:
                wire_id = (servo_id + 100) % 253  # an id nobody asked
            if self.protocol == "dynamixel":
                packet = bytearray(dxl.encode(wire_id, dxl.STATUS, payload))
            else:
                packet = bytearray(ft.encode(wire_id, payload[0], payload[1:]))
            if self._active("corrupt", servo_id, instruction):
                packet[-1] ^= 0x5A
            if (f := self._active("delay", servo_id, instruction)) is not None:
                t += f.delay_s
            t += len(packet) * self.byte_s
            split = self._active("split", servo_id, instruction)
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
        assert self.master is not None  # replies are sent while serving a packet off the pty
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
            watch = [server, *clients] + ([stop_fd] if stop_fd is not None else [])
            if self.master is not None:
                watch.append(self.master)
            ready = select.select(watch, [], [], 0.01)[0]
            if stop_fd is not None and stop_fd in ready and not os.read(stop_fd, 4096):
                return
            if self.master is not None and self.master in ready:
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
    """Starts the emulator in a child process; `port` is the path to open (stable across
    unplug/replug), `control()` talks to its control channel. Use as a context manager."""

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
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # so the port's folder goes too
    try:
        emulator.serve(stop_fd)
    except KeyboardInterrupt:
        pass
    finally:
        emulator.remove()


if __name__ == "__main__":
    main()
