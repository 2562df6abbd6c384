"""Chunk execution strategies against offline calculations of what they should execute."""

from __future__ import annotations

import math

import numpy as np
import pytest

from apprentice.learning.diffusion.scheduler import NoiseSchedule, ddim_sample
from apprentice.policy_server.chunking import (
    RealTimeChunking,
    RecedingHorizon,
    StepGrid,
    TemporalEnsemble,
    inpainted_ddim_sample,
    rtc_weights,
)

DT = 0.02  # s, a 50 Hz policy
T0 = 1_700_000_000.0  # s, host clock


def _act_reference(chunks: np.ndarray, k: float) -> np.ndarray:
    """ACT's own evaluation loop (imitate_episodes.py, temporal_agg): a policy query at every
    step t fills all_time_actions[t, t:t+K]; the action is the exp-weighted mean of the
    populated rows of column t, oldest row weighted most."""
    steps, chunk, dim = chunks.shape
    all_time = np.zeros((steps, steps + chunk, dim))
    out = np.zeros((steps, dim))
    for t in range(steps):
        all_time[t, t : t + chunk] = chunks[t]
        column = all_time[:, t]
        column = column[np.all(column != 0, axis=1)]
        w = np.exp(-k * np.arange(len(column)))
        w = w / w.sum()
        out[t] = (column * w[:, None]).sum(axis=0)
    return out


def test_temporal_ensemble_equals_act_reference() -> None:
    rng = np.random.default_rng(0)
    chunks = rng.uniform(0.5, 2.0, (40, 10, 3))  # nonzero: ACT marks empty slots by zeros
    ex = TemporalEnsemble(StepGrid(T0, DT), k=0.01)
    got = []
    for t in range(40):
        jitter = rng.uniform(-0.4, 0.4) * DT  # stamps off-grid: snapped to the nearest step
        assert ex.add_chunk(chunks[t], T0 + t * DT + jitter) == 0
        got.append(ex.action_at(T0 + t * DT))
    np.testing.assert_allclose(np.array(got), _act_reference(chunks, 0.01), rtol=0, atol=1e-12)
    assert ex.stale == 0 and ex.chunks == 40
    # a large k puts almost all weight on the oldest prediction, k = 0 is a plain mean
    at_30 = np.stack([chunks[s, 30 - s] for s in range(21, 31)])  # every prediction for 30
    for k, expect in ((50.0, at_30[0]), (0.0, at_30.mean(axis=0))):
        ex = TemporalEnsemble(StepGrid(T0, DT), k=k)
        for t in range(31):
            ex.add_chunk(chunks[t], T0 + t * DT)
        np.testing.assert_allclose(ex.action_at(T0 + 30 * DT), expect, atol=1e-9)


def test_faster_control_loop_interpolates_between_steps() -> None:
    rng = np.random.default_rng(1)
    chunk = rng.normal(size=(6, 2))
    ex = TemporalEnsemble(StepGrid(T0, DT))
    ex.add_chunk(chunk, T0)
    rel = np.arange(0, 5 * 4) * DT / 4  # s after T0: control at 4x the policy rate
    got = np.array([ex.action_at(T0 + r) for r in rel])
    expect = np.stack([np.interp(rel, np.arange(6) * DT, chunk[:, j]) for j in range(2)], 1)
    # host-clock seconds near 1.7e9 carry ~2e-7 s of rounding: ~1e-5 of a step here
    np.testing.assert_allclose(got, expect, atol=1e-4)


def test_stale_actions_are_dropped_and_counted() -> None:
    chunk = np.arange(10, dtype=float)[:, None] * np.ones((1, 2))  # (10, 2), row i = i
    ex = RecedingHorizon(StepGrid(T0, DT), n_execute=8)
    assert ex.action_at(T0 + 12 * DT) is None  # nothing yet: the caller holds
    assert ex.add_chunk(chunk, T0 + 9 * DT) == 3  # steps 9, 10, 11 have passed
    assert ex.stale == 3
    np.testing.assert_array_equal(ex.action_at(T0 + 12 * DT), [3.0, 3.0])
    # only the first 8 are executed: steps 9..16, so step 17 has nothing
    np.testing.assert_array_equal(ex.action_at(T0 + 16 * DT), [7.0, 7.0])
    assert ex.action_at(T0 + 17 * DT) is None
    # a chunk entirely in the past is dropped whole
    assert ex.add_chunk(chunk, T0 - 20 * DT) == 8 and ex.stale == 11


def test_receding_horizon_matches_offline_concatenation() -> None:
    rng = np.random.default_rng(2)
    n, k = 4, 10
    chunks = rng.normal(size=(5, k, 3))
    ex = RecedingHorizon(StepGrid(T0, DT), n_execute=n)
    got = []
    for step in range(5 * n):
        t = T0 + step * DT
        if step % n == 0:  # synchronous use: infer when the plan runs out, no latency
            assert ex.needs_inference(t, latency=0.0)
            ex.add_chunk(chunks[step // n], t)
        got.append(ex.action_at(t))
    np.testing.assert_array_equal(np.array(got), np.concatenate(chunks[:, :n]))
    # asynchronous use: with 30 ms of latency, inference is wanted two steps before the end
    ex = RecedingHorizon(StepGrid(T0, DT), n_execute=n)
    ex.add_chunk(chunks[0], T0)
    assert not ex.needs_inference(T0 + 0 * DT, latency=0.03)
    assert ex.needs_inference(T0 + 1 * DT, latency=0.03)


def test_rtc_weights_follow_the_paper() -> None:
    frozen, overlap, horizon = 3, 8, 12
    w = rtc_weights(frozen, overlap, horizon)
    for i in range(horizon):  # Black et al. 2025, eq. 5, with H - s = overlap
        if i < frozen:
            expect = 1.0
        elif i < overlap:
            c = (overlap - i) / (overlap - frozen + 1)
            expect = c * (math.exp(c) - 1) / (math.e - 1)
        else:
            expect = 0.0
        assert w[i] == pytest.approx(expect, abs=1e-12)
    assert np.all(np.diff(w) <= 0) and 0 < w[overlap - 1] < 1
    np.testing.assert_array_equal(rtc_weights(5, 2, 6), [1, 1, 0, 0, 0, 0])  # frozen <= overlap


def test_rtc_guidance_freezes_what_executes_during_inference() -> None:
    rng = np.random.default_rng(3)
    plan = rng.normal(size=(8, 2))
    ex = RealTimeChunking(StepGrid(T0, DT), n_execute=5)
    assert ex.needs_inference(T0, latency=0.05)  # no plan yet
    ex.add_chunk(plan, T0)
    ex.action_at(T0)
    # inference is due n_execute - ceil(latency / dt) = 5 - 3 = 2 steps in
    assert not ex.needs_inference(T0 + 1 * DT, latency=0.05)
    assert ex.needs_inference(T0 + 2 * DT, latency=0.05)
    # observation at step 4, inference starting at step 4.2 for 50 ms: arrives at step 6.7,
    # so steps 4, 5, 6 execute from the old plan (frozen), 7 is guided softly, 8.. are free
    prefix, w = ex.guidance(T0 + 4 * DT, T0 + 4.2 * DT, 0.05, horizon=8)
    np.testing.assert_array_equal(prefix[:4], plan[4:])
    np.testing.assert_array_equal(w, rtc_weights(3, 4, 8))
    assert w[:3].tolist() == [1.0, 1.0, 1.0] and 0 < w[3] < 1 and not w[4:].any()


def _schedule() -> NoiseSchedule:
    return NoiseSchedule.squared_cosine(100)


def test_inpainted_ddim_without_guidance_is_plain_ddim() -> None:
    rng = np.random.default_rng(4)
    a_mat = rng.normal(scale=0.3, size=(3, 3)).astype(np.float32)

    def denoise(x: np.ndarray, t: int) -> np.ndarray:  # some deterministic ε̂(x, t)
        return np.tanh(x @ a_mat + 0.01 * t).astype(np.float32)

    noise = rng.normal(size=(2, 8, 3)).astype(np.float32)
    plain = ddim_sample(denoise, noise, _schedule(), 10, 1.0)
    for prefix in (None, rng.normal(size=(8, 3))):
        got = inpainted_ddim_sample(denoise, noise, _schedule(), 10, 1.0, prefix, np.zeros(8))
        np.testing.assert_array_equal(got, plain)


def test_inpainted_ddim_one_step_by_hand_and_frozen_rows_exact() -> None:
    rng = np.random.default_rng(5)
    noise = rng.normal(size=(1, 6, 2)).astype(np.float32)
    prefix = rng.uniform(-0.5, 0.5, (6, 2)).astype(np.float32)
    w = np.array([1.0, 1.0, 0.5, 0.25, 0.0, 0.0])

    def denoise(x: np.ndarray, t: int) -> np.ndarray:
        return 0.5 * x

    sched = _schedule()
    got = inpainted_ddim_sample(denoise, noise, sched, 1, 1.0, prefix, w)
    # one DDIM step from t = 0 lands on the clean estimate (ᾱ_prev = 1)
    ab = sched.alphas_cumprod[0]
    x0 = np.clip((noise - math.sqrt(1 - ab) * 0.5 * noise) / math.sqrt(ab), -1, 1)
    expect = w[:, None] * prefix + (1 - w[:, None]) * x0
    np.testing.assert_allclose(got, expect, atol=1e-6)
    # with 10 steps the frozen rows still come out exactly as the prefix
    got = inpainted_ddim_sample(denoise, noise, sched, 10, 1.0, prefix, w)
    np.testing.assert_array_equal(got[0, :2], prefix[:2])
    assert not np.allclose(got[0, 4:], prefix[4:], atol=1e-3)
