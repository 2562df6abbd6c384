"""As-of resampling: the one rule that turns timestamped streams into control-rate samples.

At a query time t, a stream's value is its latest sample stamped at or before t (within
STAMP_TOLERANCE_S: a tie is a tie however float64 rounded the two times), provided that
sample is at most `max_age` seconds old; otherwise the stream has no valid value at t. The
dataset builder applies it offline to recorded bags (`asof_indices`) and the policy node applies
it live to its input buffers (`AsOfBuffer`), so training and deployment see observations the
same way. No interpolation: a sample is never mixed with one from the future.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Generic, TypeVar

import numpy as np

T = TypeVar("T")

# Stamps are float64 s since the epoch, which resolve only ~0.24 us around 1.7e9 s: a sample
# meant to fall on a query time (a sim stream on the 2 ms physics grid, a LeRobot import at its
# own fps) lands a few ulp either side of it. Within this, a sample counts as stamped at the
# query time, so ties resolve one way (included) whatever the rounding (before: 2.5 % of a sim
# demo's rows took the previous sample, up to 0.045 rad off), and the grid keeps its last step
# when the end lies within this of it (it lost it in about 1 episode in 3).
STAMP_TOLERANCE_S = 1e-6


def asof_indices(
    stamps: np.ndarray, query: np.ndarray, max_age: float
) -> tuple[np.ndarray, np.ndarray]:
    """For each query time, the index of the latest stamp <= it (+ STAMP_TOLERANCE_S), and
    whether it is fresh enough.

    stamps: (N,) sorted ascending, s. query: (Q,) s. Returns (index (Q,) int64, valid (Q,) bool);
    index is -1 where no sample precedes the query.
    """
    stamps = np.asarray(stamps, dtype=float)
    query = np.asarray(query, dtype=float)
    if stamps.ndim != 1 or query.ndim != 1:
        raise ValueError("stamps and query must be 1-D")
    if stamps.size > 1 and np.any(np.diff(stamps) < 0):
        raise ValueError("stamps must be sorted ascending")
    idx = np.searchsorted(stamps, query + STAMP_TOLERANCE_S, side="right") - 1  # (Q,)
    valid = idx >= 0
    age = np.where(valid, query - stamps[np.clip(idx, 0, None)], np.inf)
    valid &= age <= max_age
    return idx.astype(np.int64), valid


def control_grid(start: float, end: float, rate_hz: float) -> np.ndarray:
    """Query times from start to end (inclusive when it falls on the grid, within
    STAMP_TOLERANCE_S) at rate_hz."""
    if rate_hz <= 0:
        raise ValueError("rate must be positive")
    n = int(np.floor((end - start + STAMP_TOLERANCE_S) * rate_hz)) + 1
    return start + np.arange(max(n, 0)) / rate_hz


class AsOfBuffer(Generic[T]):
    """A live, thread-safe stream buffer answering the same question as `asof_indices`."""

    def __init__(self, max_age: float, capacity: int = 64) -> None:
        self.max_age = max_age
        self._items: deque[tuple[float, T]] = deque(maxlen=capacity)
        self._lock = threading.Lock()
        self.out_of_order = 0  # samples dropped for arriving older than the newest one

    def push(self, stamp: float, value: T) -> None:
        with self._lock:
            if self._items and stamp <= self._items[-1][0]:
                self.out_of_order += 1
                return
            self._items.append((stamp, value))

    def latest(self) -> tuple[float, T] | None:
        with self._lock:
            return self._items[-1] if self._items else None

    def at(self, t: float) -> tuple[float, T] | None:
        """The latest sample stamped <= t (+ STAMP_TOLERANCE_S) and at most max_age old, or None."""
        with self._lock:
            for stamp, value in reversed(self._items):
                if stamp <= t + STAMP_TOLERANCE_S:
                    return (stamp, value) if t - stamp <= self.max_age else None
        return None
