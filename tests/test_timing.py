"""RateLoop: absolute deadlines, skipped (never bunched) late ticks, prompt stop."""

from __future__ import annotations

import threading
import time

from apprentice.timing import RateLoop


def _whole_periods(a: float, b: float, period: float = 0.01) -> int:
    """(b - a) in periods, which must be a whole number (to float precision of the clock)."""
    n = (b - a) / period
    assert abs(n - round(n)) < 1e-4, n
    return round(n)


def test_ticks_on_absolute_deadlines_without_drift() -> None:
    stop = threading.Event()
    loop = RateLoop(100.0, stop)
    deadlines, wakes = [], []
    for deadline in loop:
        deadlines.append(deadline)
        wakes.append(time.monotonic())
        if len(deadlines) == 50:
            stop.set()
    steps = [_whole_periods(deadlines[0], d) for d in deadlines]  # on the grid: no drift
    assert all(w >= d for w, d in zip(wakes, deadlines, strict=True))  # never early
    assert steps[-1] == 49 + loop.missed  # a late tick is skipped, not moved


def test_an_overrun_skips_ticks_instead_of_bunching_them() -> None:
    stop = threading.Event()
    loop = RateLoop(100.0, stop)
    deadlines = []
    for deadline in loop:
        deadlines.append(deadline)
        if len(deadlines) == 3:
            time.sleep(0.055)  # 5.5 periods
        if len(deadlines) == 8:
            stop.set()
    assert loop.missed >= 4  # d+10 … d+40 ms at least (more if the host was slow too)
    steps = [_whole_periods(a, b) for a, b in zip(deadlines, deadlines[1:], strict=False)]
    assert steps[2] >= 5  # one catch-up tick on the grid, never a burst of the missed ones
    assert sum(steps) == 7 + loop.missed


def test_a_slow_loop_stops_without_waiting_for_its_next_tick() -> None:
    stop = threading.Event()
    ticks = []

    def run() -> None:
        for deadline in RateLoop(0.5, stop):  # a tick every 2 s
            ticks.append(deadline)

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(0.2)
    t0 = time.monotonic()
    stop.set()
    thread.join(2.0)
    assert not thread.is_alive()
    assert time.monotonic() - t0 < 0.5  # not the 2 s period
    assert len(ticks) == 1
