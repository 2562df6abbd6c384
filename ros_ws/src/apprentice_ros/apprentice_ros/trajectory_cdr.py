"""trajectory_msgs/JointTrajectory as CDR bytes, written with numpy: the policy node's
predicted chunk, published once per inference as a serialized message.

Why not a JointTrajectory object: rclpy converts a Python message to its C struct inside
`publish`, one C call that holds the GIL for all points (~280 µs for 100 points of 7 joints
here), and the control thread may wake inside it. `publisher.publish(bytes)` hands the bytes
to the middleware in ~5 µs, and writing them takes a few tens of µs in numpy
(bench/chunk_publish.py). Subscribers receive an ordinary JointTrajectory.

Layout (XCDR1, little endian; alignment counts from after the 4-byte encapsulation header):
header (stamp int32 sec, uint32 nanosec; frame_id string), joint_names (string sequence),
points: uint32 count, then per point positions (uint32 n, padding to 8, n float64),
velocities, accelerations, effort (empty: uint32 0 each), time_from_start (int32, uint32).
Every point but the first starts 4 bytes past a multiple of 8, so its doubles follow its
count with no padding: all points after the first are one fixed numpy record.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

import numpy as np

ENCAPSULATION = b"\x00\x01\x00\x00"  # CDR, little endian, no options


def _string(text: str, offset: int) -> bytes:
    """A CDR string at body offset `offset` (4-aligned): length with NUL, bytes, NUL."""
    assert offset % 4 == 0
    data = text.encode() + b"\x00"
    return struct.pack("<I", len(data)) + data


def _pad(buf: bytearray, align: int) -> None:
    body = len(buf) - len(ENCAPSULATION)
    buf.extend(b"\x00" * (-body % align))


def _duration(seconds: float) -> tuple[int, int]:
    sec = math.floor(seconds)
    nanosec = int(round((seconds - sec) * 1e9))
    if nanosec >= 1_000_000_000:
        sec, nanosec = sec + 1, nanosec - 1_000_000_000
    return sec, nanosec


class TrajectoryEncoder:
    """Encodes (stamp, positions (H, J)) for fixed joint names, H and point spacing `dt`
    (s): point k has time_from_start k·dt. The frame_id is empty."""

    def __init__(self, joint_names: Sequence[str], horizon: int, dt: float) -> None:
        if not joint_names or horizon < 1 or not dt > 0:  # (no joints: no doubles to align)
            raise ValueError(f"need joints, horizon >= 1 and dt > 0, got {len(joint_names)}, "
                             f"{horizon}, {dt}")  # fmt: skip
        self.names, self.horizon, self.dt = tuple(joint_names), int(horizon), float(dt)
        j = len(self.names)
        tail = bytearray(ENCAPSULATION + b"\x00" * 8)  # stamp, filled per message
        tail += _string("", len(tail) - 4)  # header.frame_id
        _pad(tail, 4)
        tail += struct.pack("<I", j)
        for name in self.names:
            _pad(tail, 4)
            tail += _string(name, len(tail) - 4)
        _pad(tail, 4)
        tail += struct.pack("<I", self.horizon)
        self._head = bytes(tail)  # encapsulation .. point count
        # the first point: its doubles need 4 bytes of padding when its count is 8-aligned
        first_pad = 4 if (len(self._head) - 4) % 8 == 0 else 0
        fields = [("n", "<u4"), ("pad", "<u4")] if first_pad else [("n", "<u4")]
        tail_fields = [("pos", "<f8", (j,)), ("empty", "<u4", (3,)), ("sec", "<i4"),
                       ("nanosec", "<u4")]  # fmt: skip
        first = np.zeros(1, dtype=np.dtype(fields + tail_fields))
        rest = np.zeros(self.horizon - 1, dtype=np.dtype([("n", "<u4"), *tail_fields]))
        # after the first point the body offset is ≡ 4 (mod 8): no padding before doubles
        assert (len(self._head) - 4 + first.itemsize) % 8 == 4
        durations = np.array([_duration(k * self.dt) for k in range(self.horizon)])
        for rec, d in ((first, durations[:1]), (rest, durations[1:])):
            rec["n"] = j
            rec["sec"], rec["nanosec"] = d[:, 0], d[:, 1]
        self._first, self._rest = first, rest

    def encode(self, stamp: float, positions: np.ndarray) -> bytes:
        """positions (H, J) in joint order; stamp: the header stamp, s (host clock)."""
        positions = np.asarray(positions, dtype=np.float64)
        if positions.shape != (self.horizon, len(self.names)):
            raise ValueError(f"positions {positions.shape}, expected "
                             f"({self.horizon}, {len(self.names)})")  # fmt: skip
        sec, nanosec = _duration(stamp)
        self._first["pos"] = positions[:1]
        self._rest["pos"] = positions[1:]
        return b"".join((
            self._head[:4], struct.pack("<iI", sec, nanosec), self._head[12:],
            self._first.tobytes(), self._rest.tobytes(),
        ))  # fmt: skip
