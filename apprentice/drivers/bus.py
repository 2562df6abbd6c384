"""The five instructions both servo protocols share, over any framing.

Dynamixel 2.0 and Feetech SCS/STS number PING, READ, WRITE, SYNC_READ and SYNC_WRITE alike;
they differ in framing, checksum, and the width of addresses and lengths (2 bytes vs 1), which
the subclasses in `dynamixel` and `feetech` supply.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from apprentice.drivers.link import (
    BusCorrupt,
    BusError,
    BusTimeout,
    BusWrongId,
    ByteLink,
    Frame,
    FrameReader,
)

PING = 0x01
READ = 0x02
WRITE = 0x03
SYNC_READ = 0x82
SYNC_WRITE = 0x83
BROADCAST_ID = 0xFE


@dataclass(frozen=True)
class Reply:
    """The parameters and the error byte of one status packet."""

    data: bytes
    error: int


@dataclass(eq=False)  # exceptions stay hashable
class SyncReadError(BusError):
    """A sync read where some servos did not answer cleanly; `replies` holds those that did."""

    replies: dict[int, Reply]
    missing: list[int] = field(default_factory=list)  # no reply before the deadline
    corrupt: int = 0  # replies with a bad checksum
    wrong_ids: list[int] = field(default_factory=list)  # replies from ids not asked

    def __str__(self) -> str:
        return (
            f"sync read incomplete: missing ids {self.missing}, {self.corrupt} corrupt, "
            f"unexpected ids {self.wrong_ids}"
        )

    @property
    def kind(self) -> type[BusError]:
        """The most telling single cause, for counting."""
        if self.corrupt:
            return BusCorrupt
        if self.wrong_ids:
            return BusWrongId
        return BusTimeout


class ServoBus:
    """Host side of one protocol: sends instructions and waits for status packets in select()."""

    status_overhead = 0  # bytes of a status packet around its parameters
    protocol = ""

    def __init__(self, link: ByteLink, timeout_s: float = 0.01) -> None:
        self.link = link
        self.timeout_s = timeout_s  # s, allowance beyond the wire time of the expected reply
        baud = getattr(link, "baudrate", 1_000_000)
        self.byte_s = 10.0 / baud  # s per byte: 8N1 is 10 bits
        self.reader = FrameReader(link, self.split)

    # --- framing, supplied by the protocol ---------------------------------------------------
    @staticmethod
    def split(buf: bytes | bytearray) -> tuple[Frame | None, int]:
        raise NotImplementedError

    @staticmethod
    def encode(servo_id: int, code: int, params: bytes) -> bytes:
        raise NotImplementedError

    def status(self, frame: Frame) -> Reply:
        """Error byte and parameters of a status frame; BusCorrupt if it is not one."""
        raise NotImplementedError

    def addr(self, address: int) -> bytes:
        raise NotImplementedError

    def size(self, length: int) -> bytes:
        raise NotImplementedError

    # --- transactions --------------------------------------------------------------------
    def _deadline(self, reply_bytes: int) -> float:
        return time.monotonic() + self.timeout_s + reply_bytes * self.byte_s

    def _send(self, servo_id: int, code: int, params: bytes) -> None:
        self.link.write(self.encode(servo_id, code, params))

    def _reply(self, servo_id: int, deadline: float) -> Reply:
        frame = self.reader.next_frame(deadline)
        if not frame.checksum_ok:
            raise BusCorrupt(f"bad checksum in a reply from id {frame.servo_id}")
        if frame.servo_id != servo_id:
            raise BusWrongId(f"asked id {servo_id}, reply from id {frame.servo_id}")
        return self.status(frame)

    def ping(self, servo_id: int) -> Reply:
        self._send(servo_id, PING, b"")
        return self._reply(servo_id, self._deadline(self.status_overhead + 3))

    def read(self, servo_id: int, address: int, length: int) -> Reply:
        self._send(servo_id, READ, self.addr(address) + self.size(length))
        reply = self._reply(servo_id, self._deadline(self.status_overhead + length))
        if len(reply.data) != length:
            raise BusCorrupt(f"id {servo_id}: {len(reply.data)} bytes for a {length}-byte read")
        return reply

    def write(self, servo_id: int, address: int, data: bytes) -> Reply:
        self._send(servo_id, WRITE, self.addr(address) + bytes(data))
        return self._reply(servo_id, self._deadline(self.status_overhead))

    def sync_write(self, address: int, length: int, data: dict[int, bytes]) -> None:
        """One packet, no replies: every servo takes its own `length` bytes at `address`."""
        params = bytearray(self.addr(address) + self.size(length))
        for servo_id, chunk in data.items():
            if len(chunk) != length:
                raise ValueError(f"id {servo_id}: {len(chunk)} bytes, expected {length}")
            params.append(servo_id)
            params += chunk
        self._send(BROADCAST_ID, SYNC_WRITE, bytes(params))

    def sync_read(self, ids: list[int], address: int, length: int) -> dict[int, Reply]:
        """One request, one status packet per servo. Reads every reply that comes (so none is
        left on the wire to be mistaken for the next transaction's) before reporting failures."""
        self._send(BROADCAST_ID, SYNC_READ, self.addr(address) + self.size(length) + bytes(ids))
        deadline = self._deadline(len(ids) * (self.status_overhead + length))
        replies: dict[int, Reply] = {}
        corrupt = 0
        wrong: list[int] = []
        while len(replies) + corrupt + len(wrong) < len(ids):
            try:
                frame = self.reader.next_frame(deadline)
            except BusTimeout:
                break
            if not frame.checksum_ok:
                corrupt += 1
            elif frame.servo_id not in ids or frame.servo_id in replies:
                wrong.append(frame.servo_id)
            else:
                reply = self.status(frame)
                if len(reply.data) != length:
                    corrupt += 1
                else:
                    replies[frame.servo_id] = reply
        if len(replies) < len(ids):
            missing = [i for i in ids if i not in replies]
            raise SyncReadError(replies, missing, corrupt, wrong)
        return replies

    def clear(self) -> int:
        """Drops any input still buffered; returns how many bytes were stale."""
        return self.reader.clear()

    def drain(self, quiet_s: float, max_s: float = 0.1) -> int:
        """Drops input until the line has been quiet for `quiet_s` (at most `max_s`): a reply
        that comes after its deadline is discarded here instead of answering the retry."""
        dropped = self.reader.clear()
        end = time.monotonic() + max_s
        while time.monotonic() < end:
            chunk = self.link.read_some(min(end, time.monotonic() + quiet_s))
            if not chunk:
                break
            dropped += len(chunk)
        return dropped
