"""The safety layer: invariants for any model output (hypothesis), watchdog, ramp, e-stop."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apprentice.policy_server.safety import ESTOP, FAULT, HOLD, RUNNING, SafetyConfig, SafetyLayer

PERIOD = 0.01  # s, 100 Hz
LOWER = np.array([-1.0, -2.0, 0.0])
UPPER = np.array([1.0, 0.5, 0.04])  # the last joint: a gripper slide in m
CFG = SafetyConfig(
    lower=LOWER, upper=UPPER, max_velocity=np.array([2.0, 1.0, 0.1]),
    max_accel=np.array([20.0, 10.0, 1.0]), period=PERIOD, hold_after=0.1, safe_after=0.5,
    ramp_time=0.2,
)  # fmt: skip
TOL = 1e-12

anything = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(-1e300, 1e300),
    st.floats(-3.0, 3.0),
)
targets = st.one_of(st.none(), st.lists(anything, min_size=3, max_size=3), st.lists(anything))
ticks = st.tuples(targets, st.floats(0.0, 0.6) | st.just(float("inf")), st.integers(0, 40))


def _check_invariants(cmds: np.ndarray, cfg: SafetyConfig) -> None:
    assert np.isfinite(cmds).all()
    assert np.all(cmds >= cfg.lower - TOL) and np.all(cmds <= cfg.upper + TOL)
    moves = np.diff(cmds, axis=0)  # (T-1, J)
    assert np.all(np.abs(moves) <= cfg.max_step + TOL)
    change = np.abs(np.diff(moves, axis=0))  # (T-2, J)
    stopped = moves[1:] == 0.0
    assert np.all((change <= cfg.max_step_change + TOL) | stopped), "acceleration limit broken"


@settings(max_examples=150, deadline=None)
@given(
    start=st.lists(st.floats(-5, 5), min_size=3, max_size=3),
    seq=st.lists(ticks, min_size=1, max_size=120),
)
def test_commands_stay_finite_in_limits_and_rate_limited_for_any_model_output(start, seq) -> None:
    layer = SafetyLayer(CFG)
    t = 100.0
    cmds = [layer.start(np.array(start), t)]
    for target, age, event in seq:
        t += PERIOD
        if event == 0:
            layer.estop()
        elif event == 1:
            layer.rearm(t)
        cmds.append(layer.step(None if target is None else np.array(target), age, t))
    _check_invariants(np.array(cmds), CFG)


@settings(max_examples=60, deadline=None)
@given(seq=st.lists(st.lists(st.floats(-4, 4), min_size=3, max_size=3), min_size=5, max_size=80))
def test_fresh_observations_never_stop_abruptly_except_at_limits(seq) -> None:
    """While tracking, wild but finite targets are followed within the limits: it moves."""
    layer = SafetyLayer(CFG)
    cmds = [layer.start(np.zeros(3), 0.0)]
    for i, target in enumerate(seq * 3):
        cmds.append(layer.step(np.array(target), 0.0, (i + 1) * PERIOD))
    cmds = np.array(cmds)
    _check_invariants(cmds, CFG)
    assert layer.mode == RUNNING


def test_tracks_a_reachable_target_exactly_without_overshoot() -> None:
    layer = SafetyLayer(CFG)
    layer.start(np.array([0.0, 0.0, 0.01]), 0.0)
    goal = np.array([0.7, -1.5, 0.03])
    cmds = np.array([layer.step(goal, 0.0, (i + 1) * PERIOD) for i in range(600)])
    np.testing.assert_allclose(cmds[-1], goal, atol=1e-9)
    assert np.all(cmds <= np.maximum(goal, [0.0, 0.0, 0.01]) + 1e-9)  # never beyond the goal
    assert np.all(cmds >= np.minimum(goal, [0.0, 0.0, 0.01]) - 1e-9)
    # and a target outside the limits ends at the limit
    cmds = [layer.step(np.array([5.0, -5.0, 1.0]), 0.0, 10 + i * PERIOD) for i in range(800)]
    np.testing.assert_allclose(cmds[-1], [1.0, -2.0, 0.04], atol=1e-9)


def test_smooth_start_ramps_from_the_measured_pose() -> None:
    layer = SafetyLayer(CFG)
    pose = np.array([0.3, -0.4, 0.02])
    np.testing.assert_array_equal(layer.start(pose, 0.0), pose)  # first command: no jump
    far = np.array([-1.0, 0.5, 0.0])
    cmds = np.array([layer.step(far, 0.0, (i + 1) * PERIOD) for i in range(40)])
    moves = np.abs(np.diff(np.vstack([pose, cmds]), axis=0))
    scale = np.minimum(1.0, np.maximum(0.02, (np.arange(1, 41) * PERIOD) / CFG.ramp_time))
    assert np.all(moves <= scale[:, None] * CFG.max_step + TOL)  # the ramp bounds the speed
    assert moves[0].max() < 0.1 * CFG.max_step.max()


def test_watchdog_holds_within_one_tick_then_latches_safe_state() -> None:
    layer = SafetyLayer(CFG)
    layer.start(np.zeros(3), 0.0)
    goal = np.array([0.9, -1.0, 0.03])
    t = 0.0
    for _ in range(30):
        t += PERIOD
        moving = layer.step(goal, 0.02, t)
    assert layer.mode == RUNNING
    t += PERIOD
    held = layer.step(goal, 0.1001, t)  # the first tick with a stale observation
    np.testing.assert_array_equal(held, moving)
    assert layer.mode == HOLD and layer.counts["watchdog_holds"] == 1
    # fresh again before safe_after: resumes (from rest, with a new ramp)
    t += PERIOD
    resumed = layer.step(goal, 0.01, t)
    assert layer.mode == RUNNING and np.abs(resumed - held).max() > 0
    # stale for longer than safe_after: the safe state latches
    for age in np.arange(0.11, 0.7, PERIOD):
        t += PERIOD
        last = layer.step(goal, age, t)
    assert layer.mode == FAULT and "no fresh observation" in layer.fault_reason
    t += PERIOD
    np.testing.assert_array_equal(layer.step(goal, 0.0, t), last)  # fresh data: still latched
    layer.rearm(t)
    for _ in range(3):
        t += PERIOD
        out = layer.step(goal, 0.0, t)
    assert layer.mode == RUNNING and np.abs(out - last).max() > 0


def test_safe_state_goes_slowly_to_the_safe_pose() -> None:
    cfg = SafetyConfig(
        lower=LOWER, upper=UPPER, max_velocity=CFG.max_velocity, max_accel=CFG.max_accel,
        period=PERIOD, hold_after=0.05, safe_after=0.1, safe_pose=np.array([0.0, -1.0, 0.0]),
    )  # fmt: skip
    layer = SafetyLayer(cfg)
    layer.start(np.array([0.8, 0.2, 0.04]), 0.0)
    cmds = np.array([layer.step(None, 1.0, (i + 1) * PERIOD) for i in range(1000)])
    assert layer.mode == FAULT
    np.testing.assert_allclose(cmds[-1], [0.0, -1.0, 0.0], atol=1e-9)
    assert np.abs(np.diff(cmds, axis=0)).max(0) == pytest.approx(cfg.max_step * 0.25)
    _check_invariants(cmds, cfg)


def test_estop_latches_until_rearmed() -> None:
    layer = SafetyLayer(CFG)
    layer.start(np.zeros(3), 0.0)
    goal = np.array([0.5, 0.3, 0.02])
    for i in range(20):
        q = layer.step(goal, 0.0, (i + 1) * PERIOD)
    layer.estop()
    assert layer.mode == ESTOP
    for i in range(50):  # fresh observations and targets do not unlatch it
        np.testing.assert_array_equal(layer.step(goal, 0.0, 1 + i * PERIOD), q)
    layer.rearm(2.0)
    moved = [layer.step(goal, 0.0, 2.0 + (i + 1) * PERIOD) for i in range(5)]
    assert layer.mode == RUNNING and np.abs(moved[-1] - q).max() > 0
    assert layer.counts["estops"] == 1 and layer.counts["rearms"] == 1


def test_bad_targets_are_rejected_and_counted() -> None:
    layer = SafetyLayer(CFG)
    q0 = layer.start(np.array([0.1, 0.1, 0.01]), 0.0)
    bad = [np.array([np.nan, 0, 0]), np.array([0, np.inf, 0]), np.zeros(5)]
    for i, target in enumerate(bad):
        np.testing.assert_array_equal(layer.step(target, 0.0, (i + 1) * PERIOD), q0)
    assert layer.counts["rejected_nonfinite"] == 2 and layer.counts["rejected_shape"] == 1
    with pytest.raises(ValueError, match="1 or 3 values"):
        SafetyConfig(lower=LOWER, upper=UPPER, max_velocity=[1.0, 2.0], max_accel=1.0, period=0.01)
