"""Teleop core: joint maps, step clamp, smooth start, limits."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from apprentice.teleop.follower import JointMap, Teleop, TeleopConfig


def test_joint_maps() -> None:
    assert JointMap(offset=0.1, sign=-1.0, scale=2.0).apply(0.5) == pytest.approx(-0.9)
    grip = JointMap(leader_range=(0.0, 1.0), follower_range=(0.057, 0.021))  # open → closed
    assert grip.apply(0.0) == pytest.approx(0.057)
    assert grip.apply(1.0) == pytest.approx(0.021)
    assert grip.apply(0.5) == pytest.approx(0.039)
    assert grip.apply(5.0) == pytest.approx(0.021)  # clipped to the follower's range
    with pytest.raises(ValueError):
        JointMap(sign=0.5)
    with pytest.raises(ValueError):
        JointMap(leader_range=(0.0, 1.0))


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="joint maps"):
        TeleopConfig(n_joints=2, maps=(JointMap(),))
    with pytest.raises(ValueError):
        TeleopConfig(n_joints=2, lower=(0.0,), upper=(1.0, 1.0))
    cfg = TeleopConfig.from_dict(
        2, {"maps": [{"sign": -1.0}, {}], "lower": [-1, -1], "upper": [1, 1]}
    )
    assert cfg.maps[0].sign == -1.0 and cfg.lower == (-1, -1)


def test_smooth_start_eases_from_follower_to_leader() -> None:
    cfg = TeleopConfig(n_joints=2, rate_hz=50, max_step=10.0, ramp_time=1.0)
    t = Teleop(cfg)
    t.start(np.array([0.0, 0.0]), t=0.0)
    leader = np.array([1.0, -1.0])
    first = t.step(leader, 0.02)
    half = [t.step(leader, 0.02 * k) for k in range(2, 26)][-1]
    end = [t.step(leader, 0.02 * k) for k in range(26, 60)][-1]
    assert np.abs(first).max() < 0.05  # no jump on the first tick
    np.testing.assert_allclose(half, [0.5, -0.5], atol=1e-9)
    np.testing.assert_allclose(end, leader)


def test_step_before_start_is_an_error() -> None:
    with pytest.raises(RuntimeError):
        Teleop(TeleopConfig(n_joints=1)).step(np.zeros(1), 0.0)


@given(
    st.lists(st.floats(-10, 10), min_size=3, max_size=3),
    st.lists(st.lists(st.floats(-10, 10), min_size=3, max_size=3), min_size=1, max_size=30),
)
def test_every_command_within_step_and_limits(start, leaders) -> None:
    cfg = TeleopConfig(
        n_joints=3, max_step=0.05, ramp_time=0.0, lower=(-1, -2, -3), upper=(1, 2, 3)
    )
    t = Teleop(cfg)
    prev = np.clip(np.array(start), cfg.lower, cfg.upper)
    t.start(prev, 0.0)
    for k, q in enumerate(leaders):
        cmd = t.step(np.array(q), 0.02 * (k + 1))
        assert np.all(np.abs(cmd - prev) <= 0.05 + 1e-12)
        assert np.all(cmd >= cfg.lower) and np.all(cmd <= cfg.upper)
        prev = cmd
