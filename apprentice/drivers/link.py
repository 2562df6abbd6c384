"""The byte link under a servo bus, and the errors a bus transaction can end with.

Why our own protocol code instead of `dynamixel-sdk` / `feetech-servo-sdk`:
- the SDKs wait for replies by polling the port in a loop with the GIL held (shared/ENVIRONMENT.md:
  in-process emulator threads starve), so a ROS executor or a camera thread in the same process
  stalls during every bus transaction; here a reply is awaited in `select()`, which releases it;
- the SDKs report a failed transaction as one result code and leave it to the caller to count,
  to tell a checksum error from a timeout from a reply with the wrong id, and to resynchronise
  after a late reply; the arm backend needs exactly that per-packet accounting;
- both protocols are small (framing, a checksum, five instructions), and one code path shared
  with the emulator keeps host and emulator honest about the same bytes.
"""

from __future__ import annotations

import errno
import os
import select
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


class BusError(Exception):
    """A bus transaction failed (after the protocol layer gave up on it)."""


class BusTimeout(BusError):
    """No complete reply within the deadline."""


class BusCorrupt(BusError):
    """A reply arrived but its checksum/CRC or framing was wrong."""


class BusWrongId(BusError):
    """A well-formed reply came from an id that was not asked."""


class ByteLink(Protocol):
    """What a protocol needs from a serial port."""

    def write(self, data: bytes) -> None: ...

    def read_some(self, deadline: float) -> bytes:
        """Bytes available now, waiting until `deadline` (time.monotonic(), s); b"" on timeout."""
        ...

    def flush_input(self) -> int:
        """Drops unread input; returns how many bytes were dropped."""
        ...

    def close(self) -> None: ...


class SerialLink:
    """A pyserial port, read through select() so waiting never holds the GIL."""

    def __init__(self, port: str, baudrate: int = 1_000_000) -> None:
        import serial  # pyserial; imported here so the emulator process does not need it

        # timeout=0: pyserial never blocks; waiting happens in select() below.
        self._serial = serial.Serial(port, baudrate=baudrate, timeout=0, write_timeout=0.1)
        self._fd = self._serial.fileno()
        self.port = port
        self.baudrate = baudrate

    def write(self, data: bytes) -> None:
        self._serial.write(data)

    def read_some(self, deadline: float) -> bytes:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            ready = select.select([self._fd], [], [], 0)[0]
        else:
            ready = select.select([self._fd], [], [], remaining)[0]
        if not ready:
            return b""
        return self._read_ready()

    def flush_input(self) -> int:
        dropped = 0
        while select.select([self._fd], [], [], 0)[0]:
            chunk = self._read_ready()
            if not chunk:
                break
            dropped += len(chunk)
        return dropped

    def _read_ready(self) -> bytes:
        """Reads a port select() called ready. Ready but empty is a hang-up (adapter unplugged,
        as pyserial reads it too): an OSError, not a quiet line."""
        try:
            chunk = os.read(self._fd, 4096)
        except BlockingIOError:
            return b""
        if not chunk:
            raise OSError(errno.EIO, f"{self.port}: the device hung up (unplugged?)")
        return chunk

    def close(self) -> None:
        self._serial.close()


@dataclass(frozen=True)
class Frame:
    """One packet off the wire. `code` is the instruction (host→servo) or, in a status packet,
    0x55 (Dynamixel) or the error byte (Feetech, whose status has no instruction field)."""

    servo_id: int
    code: int
    params: bytes
    checksum_ok: bool


# split(buffer) -> (frame or None, bytes consumed): the framing of one protocol.
Splitter = Callable[[bytes | bytearray], tuple["Frame | None", int]]


class FrameReader:
    """Buffers link input and cuts it into frames with a protocol's splitter."""

    def __init__(self, link: ByteLink, split: Splitter) -> None:
        self.link = link
        self._split = split
        self._buf = bytearray()
        self.noise_bytes = 0  # bytes skipped while looking for a header

    def clear(self) -> int:
        """Drops buffered and pending input (stale replies); returns the byte count dropped."""
        dropped = len(self._buf) + self.link.flush_input()
        self._buf.clear()
        return dropped

    def next_frame(self, deadline: float) -> Frame:
        """The next complete frame; BusTimeout if none is complete by `deadline`."""
        while True:
            frame, used = self._split(self._buf)
            if frame is None:
                self.noise_bytes += used
            del self._buf[:used]
            if frame is not None:
                return frame
            chunk = self.link.read_some(deadline)
            if not chunk:
                raise BusTimeout(f"no complete packet before the deadline ({len(self._buf)} bytes)")
            self._buf += chunk
