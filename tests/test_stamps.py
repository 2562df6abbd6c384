"""The stamp rule (apprentice.stamps): a stamp far ahead of the host clock is dropped and
counted and never blocks later messages; out of order means against the last accepted stamp."""

from __future__ import annotations

import math

import pytest

from apprentice.stamps import ACCEPTED, FUTURE, MAX_FUTURE_S, OUT_OF_ORDER, StampGate, Throttle

NOW = 1_763_900_000.0  # s, host clock
MONO = 500.0  # s, the same instant on the monotonic clock


def test_a_future_stamp_is_dropped_and_never_blocks_later_messages() -> None:
    gate = StampGate()
    assert gate.admit(NOW - 0.01, NOW, MONO) == ACCEPTED
    assert gate.admit(NOW + 30.0, NOW + 0.02, MONO + 0.02) == FUTURE
    assert gate.last_stamp == NOW - 0.01 and gate.last_received == MONO  # untouched
    for k in range(1, 4):  # the correct frames after it are all accepted
        t = NOW + k * 0.033
        assert gate.admit(t - 0.01, t, MONO + k * 0.033) == ACCEPTED
    assert gate.counts == {ACCEPTED: 4, FUTURE: 1, OUT_OF_ORDER: 0}
    assert gate.last_ahead == pytest.approx(29.98)


def test_the_bound_and_out_of_order_against_the_last_accepted_stamp() -> None:
    gate = StampGate(max_future=0.5)
    assert gate.admit(NOW + 0.5, NOW, MONO) == ACCEPTED  # at the bound: accepted
    assert gate.admit(NOW + 0.5, NOW, MONO) == OUT_OF_ORDER  # the same stamp again
    assert gate.admit(NOW + 0.2, NOW, MONO) == OUT_OF_ORDER  # older than the accepted one
    assert gate.admit(NOW + 0.6, NOW + 0.09, MONO + 0.09) == FUTURE  # 0.51 s ahead
    assert gate.admit(NOW + 0.55, NOW + 0.1, MONO + 0.1) == ACCEPTED
    assert gate.admit(math.nan, NOW, MONO) == FUTURE  # no stamp at all: never accepted
    # far in the past is this rule's business only as out of order; max-age rules judge age
    fresh = StampGate()
    assert fresh.admit(NOW - 30.0, NOW, MONO) == ACCEPTED
    assert MAX_FUTURE_S == 0.5
    with pytest.raises(ValueError, match="max_future"):
        StampGate(max_future=-0.1)


def test_arrival_age_is_on_the_monotonic_clock_of_accepted_messages() -> None:
    gate = StampGate()
    assert gate.age(MONO) == math.inf and gate.stats(MONO)["arrival_age_s"] is None
    gate.admit(NOW, NOW, MONO)
    gate.admit(NOW + 30.0, NOW + 1.0, MONO + 1.0)  # rejected: does not refresh the age
    assert gate.age(MONO + 2.5) == pytest.approx(2.5)
    assert gate.stats(MONO + 2.5) == {
        ACCEPTED: 1,
        "future_stamps": 1,
        OUT_OF_ORDER: 0,
        "arrival_age_s": 2.5,
    }


def test_reports_first_at_once_then_at_most_every_report_every() -> None:
    gate = StampGate(report_every=5.0)
    gate.admit(NOW, NOW, MONO)
    assert gate.report("camera top", MONO) is None  # nothing rejected: nothing to say
    gate.admit(NOW + 30.0, NOW, MONO)
    line = gate.report("camera top", MONO)
    assert line is not None and line.startswith("camera top: dropped 1 stamped more than 0.5 s")
    assert "+30.000 s" in line
    gate.admit(NOW + 31.0, NOW + 1, MONO + 1)
    gate.admit(NOW - 1.0, NOW + 1, MONO + 1)
    assert gate.report("camera top", MONO + 1) is None  # within 5 s of the last line
    line = gate.report("camera top", MONO + 5.0)
    assert line is not None
    assert "1 stamped more than" in line and "1 not newer than the last accepted" in line
    assert "(2 future, 1 out of order in all)" in line
    assert gate.report("camera top", MONO + 20.0) is None  # nothing new since


def test_throttle() -> None:
    throttle = Throttle(2.0)
    assert throttle.due(0.0) and not throttle.due(1.9) and throttle.due(2.0)
    with pytest.raises(ValueError):
        Throttle(-1.0)
