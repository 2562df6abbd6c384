"""RateLoop: absolute deadlines, skipped (never bunched) late ticks, prompt stop."""

from __future__ import annotations

import threading
import time

from apprentice.timing import RateLoop


def test_ticks_on_absolute_deadlines_without_drift() -> None:
    stop = threading.Event()
    loop = RateLoop(100.0, stop)
    deadlines, wakes = [], []
    for deadline in loop:
        deadlines.append(deadline)
        wakes.append(time.monotonic())
        if len(deadlines) == 50:
            stop.set()
    steps = [b - a for a, b in zip(deadlines, deadlines[1:], strict=False)]
    assert all(abs(s - 0.01) < 1e-9 for s in steps)  # the grid itself never drifts
    assert all(w >= d for w, d in zip(wakes, deadlines, strict=True))  # never early
    assert loop.missed == 0


def test_an_overrun_skips_ticks_instead_of_bunching_them() -> None:
    stop = threading.Event()
    loop = RateLoop(100.0, stop)
    deadlines = []
    for deadline in loop:
        deadlines.append(deadline)
        if len(deadlines) == 3:
            time.sleep(0.055)  # 5.5 periods
        if len(deadlines) == 6:
            stop.set()
    assert loop.missed == 4  # d+10 … d+40 ms; d+50 runs late, on the grid
    steps = [round((b - a) / 0.01, 6) for a, b in zip(deadlines, deadlines[1:], strict=False)]
    assert steps == [1.0, 1.0, 5.0, 1.0, 1.0]  # one catch-up tick, then back on the grid


def test_a_slow_loop_stops_within_a_tenth_of_a_second() -> None:
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
    assert time.monotonic() - t0 < 0.15
    assert len(ticks) == 1
