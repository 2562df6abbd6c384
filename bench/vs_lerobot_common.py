"""What both workers of bench/vs_lerobot.py share: the timers and the memory figures.
Standard library only: the LeRobot-side worker imports it in the LeRobot venv.

Peak RSS is the kernel's VmHWM of this process (/proc/self/status), not getrusage's ru_maxrss:
Linux carries ru_maxrss across exec from the forking parent's memory, so every worker the
driver starts would report at least the driver's RSS.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def median_s(fn: Callable[[], object], repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_batches(
    batches: Iterator[T], size: Callable[[T], int], warmup: int, min_batches: int,
    min_seconds: float,
) -> dict[str, float]:  # fmt: skip
    """Samples/s over at least min_batches batches and min_seconds, after `warmup` batches
    (worker start-up, the first prefetched batches); `size` counts a batch's samples."""
    for _ in range(warmup):
        next(batches)
    t0 = time.perf_counter()
    n = k = 0
    while k < min_batches or time.perf_counter() - t0 < min_seconds:
        n += size(next(batches))
        k += 1
    wall = time.perf_counter() - t0
    return {"rate": n / wall, "unit": "samples/s", "timed_s": wall, "samples": n, "batches": k}


def _hwm_mb(pid: int | str) -> float:
    """A process's peak RSS since its exec (MB); 0 when it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    return 0.0


def children_peak_rss_mb() -> list[float]:
    """Each live child process's peak RSS (DataLoader workers: read before they stop).
    Pages a forked worker shares with its parent count in both."""
    me, out = os.getpid(), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == me:  # field 4: the parent's pid
            out.append(_hwm_mb(entry.name))
    return out


def memory() -> dict[str, float]:
    return {"peak_rss_mb": _hwm_mb("self")}
