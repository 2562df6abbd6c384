"""The as-of rule, offline and live, gives the same answers."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from apprentice.resample import AsOfBuffer, asof_indices, control_grid


def test_asof_picks_latest_not_future_and_respects_max_age() -> None:
    stamps = np.array([0.00, 0.10, 0.20, 0.50])
    idx, valid = asof_indices(stamps, np.array([-0.01, 0.0, 0.15, 0.20, 0.39, 0.45, 0.5]), 0.2)
    assert idx.tolist() == [-1, 0, 1, 2, 2, 2, 3]
    assert valid.tolist() == [False, True, True, True, True, False, True]


def test_unsorted_stamps_are_refused() -> None:
    with pytest.raises(ValueError, match="sorted"):
        asof_indices(np.array([0.2, 0.1]), np.array([0.3]), 1.0)


def test_control_grid() -> None:
    g = control_grid(10.0, 11.0, 50.0)
    assert g.size == 51 and g[0] == 10.0 and g[-1] == pytest.approx(11.0)


@given(
    st.lists(st.floats(0, 10, allow_nan=False), min_size=1, max_size=40, unique=True),
    st.lists(st.floats(-1, 11, allow_nan=False), min_size=1, max_size=20),
    st.floats(0.01, 2.0),
)
def test_live_buffer_agrees_with_offline(stamps, queries, max_age) -> None:
    stamps = np.sort(np.array(stamps))
    buf: AsOfBuffer[int] = AsOfBuffer(max_age, capacity=len(stamps))
    for i, s in enumerate(stamps):
        buf.push(float(s), i)
    idx, valid = asof_indices(stamps, np.array(queries), max_age)
    for q, i, v in zip(queries, idx, valid, strict=True):
        got = buf.at(q)
        assert (got is not None) == bool(v)
        if got is not None:
            assert got[1] == i


def test_live_buffer_drops_out_of_order() -> None:
    buf: AsOfBuffer[str] = AsOfBuffer(1.0)
    buf.push(1.0, "a")
    buf.push(0.5, "late")
    assert buf.out_of_order == 1 and buf.latest() == (1.0, "a")


def test_a_sample_on_the_query_time_counts_whatever_the_rounding() -> None:
    """Joint states at 100 Hz stamped as a bag gives them (sec + nanosec · 1e-9) and a 50 Hz
    control grid from the first one, near 1.7e9 s (float64 resolves ~0.24 us there): every
    second tick is a sample's time, computed a few ulp either side of it (40 of these 100 fall
    before it, where a strict <= took the previous sample). Each tie takes its sample, offline
    and live alike."""
    ns = 1_700_000_000_123_000_000 + np.arange(200, dtype=np.int64) * 10_000_000
    stamps = (ns // 10**9) + (ns % 10**9) * 1e-9
    grid = control_grid(stamps[0], stamps[-1], 50.0)
    assert grid.size == 100
    on = stamps[::2]
    assert np.abs(grid - on).max() < 1e-6 and (grid < on).sum() == 40  # ties, rounded below
    idx, valid = asof_indices(stamps, grid, 0.02)
    assert valid.all() and idx.tolist() == list(range(0, 200, 2))
    buf: AsOfBuffer[int] = AsOfBuffer(0.02, capacity=200)
    for i, t in enumerate(stamps):
        buf.push(float(t), i)
    assert [buf.at(float(t))[1] for t in grid] == idx.tolist()
