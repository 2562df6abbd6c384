"""Chunk execution: turns action chunks (predicted asynchronously) into one action per control tick.

Every action carries a target time. A chunk predicted from an observation stamped t_obs holds
actions for t_obs, t_obs + dt, ..., on the policy's step grid (dt = 1 / the card's control rate);
`StepGrid` snaps t_obs to that grid, so chunks from different observations line up step by step
(what ACT's temporal ensembling averages over). When a chunk arrives after some of its target
times have passed, those actions are stale: they are dropped and counted, never executed late.

Three strategies behind one interface (`ChunkExecutor`):
  TemporalEnsemble   ACT (Zhao et al. 2023): every step averages all predictions made for it,
                     weights w_i = exp(-k·i), i = 0 the oldest (weighted most), k = 0.01.
  RecedingHorizon    executes the first n actions of the newest chunk, then waits for the next.
  RealTimeChunking   RTC (Black et al. 2025) for diffusion: the next chunk is sampled with the
                     actions that will execute during its inference frozen to the current plan
                     and a soft, decaying pull toward the rest of the plan (`rtc_weights`,
                     `inpainted_ddim_sample`), so consecutive chunks join without a jump.

A control loop faster than the policy (an integer multiple of its rate) gets actions linearly
interpolated between grid steps. Pure numpy, no clocks: callers pass times in (host clock, s).
"""

from __future__ import annotations

import math
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable

import numpy as np

from apprentice.learning.diffusion.scheduler import NoiseSchedule, ddim_timesteps, predict_x0

_EPS = 1e-3  # in steps: host-clock seconds (~1.7e9) carry ~1e-7 s of rounding


class StepGrid:
    """Policy steps n ↔ host times t0 + n·dt (dt in s)."""

    def __init__(self, t0: float, dt: float) -> None:
        if not dt > 0:
            raise ValueError(f"dt must be positive, got {dt}")
        self.t0 = float(t0)
        self.dt = float(dt)

    def position(self, t: float) -> float:
        """Fractional step at time t."""
        return (t - self.t0) / self.dt

    def nearest(self, t: float) -> int:
        return int(math.floor(self.position(t) + 0.5))

    def floor(self, t: float) -> int:
        return int(math.floor(self.position(t) + _EPS))

    def time(self, n: int) -> float:
        return self.t0 + n * self.dt


class ChunkExecutor(ABC):
    """One interface for every strategy. Thread-safe: the inference thread adds chunks while
    the control thread reads actions."""

    def __init__(self, grid: StepGrid) -> None:
        self.grid = grid
        self.stale = 0  # actions dropped because their target time had passed on arrival
        self.chunks = 0  # chunks received
        self.now_step = -(2**62)  # the step of the latest action_at query; older steps are past
        self.last_obs_stamp: float | None = None  # observation behind the newest chunk in use
        self._lock = threading.Lock()

    def add_chunk(self, actions: np.ndarray, obs_stamp: float) -> int:
        """actions (K, A) for the steps from the one nearest obs_stamp on. Returns how many
        were stale (target step already past) and dropped."""
        actions = np.asarray(actions, dtype=float)
        if actions.ndim != 2 or actions.shape[0] == 0:
            raise ValueError(f"a chunk is (K, A) with K >= 1, got shape {actions.shape}")
        start = self.grid.nearest(obs_stamp)
        with self._lock:
            skip = min(max(0, self.now_step - start), actions.shape[0])
            self.stale += skip
            self.chunks += 1
            if skip < actions.shape[0]:
                self._add(start + skip, actions[skip:], obs_stamp)
        return skip

    def action_at(self, t: float) -> np.ndarray | None:
        """The action (A,) for time t, or None when no chunk covers it (the caller holds).
        Advances `now_step`: steps before t's are past from then on."""
        u = self.grid.position(t)
        n = int(math.floor(u + _EPS))
        frac = u - n
        with self._lock:
            self.now_step = max(self.now_step, n)
            self._prune(n)
            a0 = self._action(n)
            if a0 is None:
                return None
            if frac <= _EPS:
                return a0
            a1 = self._action(n + 1)
            return a0 if a1 is None else (1.0 - frac) * a0 + frac * a1

    def plan(self, t: float, n: int) -> list[tuple[float, np.ndarray]]:
        """Up to n future (target time, action) pairs from the step after t's (a trajectory
        preview). Stops at the first step with no action."""
        out = []
        with self._lock:
            first = self.grid.floor(t) + 1
            for step in range(first, first + n):
                a = self._action(step)
                if a is None:
                    break
                out.append((self.grid.time(step), a))
        return out

    @abstractmethod
    def needs_inference(self, t: float, latency: float) -> bool:
        """Whether an inference started now (expected to take `latency` s) is wanted."""

    @abstractmethod
    def _add(self, start: int, actions: np.ndarray, obs_stamp: float) -> None: ...

    @abstractmethod
    def _action(self, step: int) -> np.ndarray | None: ...

    @abstractmethod
    def _prune(self, step: int) -> None:
        """Forget everything only needed for steps before `step`."""


class TemporalEnsemble(ChunkExecutor):
    """ACT temporal ensembling: the action for step n is Σ w_i a_i / Σ w_i over every stored
    chunk covering n, ordered oldest first, w_i = exp(-k·i)."""

    def __init__(self, grid: StepGrid, k: float = 0.01) -> None:
        super().__init__(grid)
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        self.k = k
        self._chunks: list[tuple[int, np.ndarray, float]] = []  # (start, (K, A), obs stamp)

    def needs_inference(self, t: float, latency: float) -> bool:
        # ACT queries the policy at every step: wanted until a chunk starts at this step.
        with self._lock:
            return not self._chunks or self._chunks[-1][0] < self.grid.floor(t)

    def _add(self, start: int, actions: np.ndarray, obs_stamp: float) -> None:
        self._chunks.append((start, actions, obs_stamp))
        self._chunks.sort(key=lambda c: c[0])  # oldest first, even if one arrives late
        self.last_obs_stamp = max(c[2] for c in self._chunks)

    def _action(self, step: int) -> np.ndarray | None:
        preds = [a[step - s] for s, a, _ in self._chunks if s <= step < s + a.shape[0]]
        if not preds:
            return None
        w = np.exp(-self.k * np.arange(len(preds)))  # (P,), index 0 = oldest
        return (w[:, None] * np.stack(preds)).sum(axis=0) / w.sum()

    def _prune(self, step: int) -> None:
        self._chunks = [c for c in self._chunks if c[0] + c[1].shape[0] > step]


class _Plan(ChunkExecutor):
    """One current plan: a run of consecutive steps; a newer chunk replaces it from its start."""

    def __init__(self, grid: StepGrid) -> None:
        super().__init__(grid)
        self._start = 0
        self._actions = np.zeros((0, 0))  # (L, A)

    def _keep(self, actions: np.ndarray) -> np.ndarray:
        return actions

    def _add(self, start: int, actions: np.ndarray, obs_stamp: float) -> None:
        self._start, self._actions = start, self._keep(actions)
        self.last_obs_stamp = obs_stamp

    def _action(self, step: int) -> np.ndarray | None:
        i = step - self._start
        return self._actions[i].copy() if 0 <= i < self._actions.shape[0] else None

    def _prune(self, step: int) -> None:
        cut = min(max(0, step - self._start), self._actions.shape[0])
        if cut:
            self._start, self._actions = self._start + cut, self._actions[cut:]

    def _end_time(self) -> float:
        """Target time of the last planned action (−inf without a plan)."""
        if self._actions.shape[0] == 0:
            return -math.inf
        return self.grid.time(self._start + self._actions.shape[0] - 1)


class RecedingHorizon(_Plan):
    """Executes the first `n_execute` actions of each chunk; the newest chunk wins. Inference
    is wanted once the plan would run out before a chunk started now could arrive."""

    def __init__(self, grid: StepGrid, n_execute: int) -> None:
        super().__init__(grid)
        if n_execute < 1:
            raise ValueError(f"n_execute must be >= 1, got {n_execute}")
        self.n_execute = n_execute

    def add_chunk(self, actions: np.ndarray, obs_stamp: float) -> int:
        actions = np.asarray(actions, dtype=float)
        if actions.ndim == 2:
            # the last K - n predictions are never run: trim before counting stale ones
            actions = actions[: self.n_execute]
        return super().add_chunk(actions, obs_stamp)

    def needs_inference(self, t: float, latency: float) -> bool:
        with self._lock:
            return self._end_time() - t <= latency + self.grid.dt


def rtc_weights(frozen: int, overlap: int, horizon: int) -> np.ndarray:
    """Guidance weights (H,) of RTC (Black et al. 2025, eq. 5), with s = H − overlap:
    1 for the first `frozen` steps (they execute while the chunk is sampled), then an
    exponential decay c·(e^c − 1)/(e − 1), c = (overlap − i)/(overlap − frozen + 1), over the
    rest of the previous plan, and 0 past its end. Steps the previous plan does not cover get 0."""
    w = np.zeros(horizon)
    overlap = min(max(overlap, 0), horizon)
    frozen = min(max(frozen, 0), overlap)
    w[:frozen] = 1.0
    i = np.arange(frozen, overlap)
    c = (overlap - i) / (overlap - frozen + 1)
    w[frozen:overlap] = c * np.expm1(c) / math.expm1(1.0)
    return w


class RealTimeChunking(_Plan):
    """RTC for diffusion policies: the whole chunk is the plan; the next inference starts
    `n_execute − d` steps into it (d: steps its latency will take), with `guidance` telling the
    sampler which actions are frozen and how strongly to follow the rest of the plan."""

    def __init__(self, grid: StepGrid, n_execute: int) -> None:
        super().__init__(grid)
        if n_execute < 1:
            raise ValueError(f"n_execute must be >= 1, got {n_execute}")
        self.n_execute = n_execute
        self._chunk_start = 0  # step of the current plan's first action, before pruning

    def _add(self, start: int, actions: np.ndarray, obs_stamp: float) -> None:
        super()._add(start, actions, obs_stamp)
        self._chunk_start = start

    def needs_inference(self, t: float, latency: float) -> bool:
        with self._lock:
            if self._actions.shape[0] == 0:
                return True
            delay = math.ceil(latency / self.grid.dt)
            return self.grid.floor(t) >= self._chunk_start + self.n_execute - delay

    def guidance(self, obs_stamp: float, t: float, latency: float, horizon: int):
        """For a chunk of `horizon` steps from obs_stamp's step, inferred from time t for about
        `latency` s: (prefix (H, A) raw actions of the current plan or zeros, weights (H,)).
        Returns (None, zeros) without a plan."""
        start = self.grid.nearest(obs_stamp)
        with self._lock:
            n_plan = self._actions.shape[0]
            if n_plan == 0:
                return None, np.zeros(horizon)
            prefix = np.zeros((horizon, self._actions.shape[1]))
            lo = max(start, self._start)
            hi = min(start + horizon, self._start + n_plan)
            if lo > start or hi <= lo:  # the plan must cover the chunk's first step
                return None, np.zeros(horizon)
            prefix[: hi - start] = self._actions[lo - self._start : hi - self._start]
        arrival = self.grid.position(t + latency)
        frozen = max(0, math.ceil(arrival - start - _EPS))
        return prefix, rtc_weights(frozen, hi - start, horizon)


def inpainted_ddim_sample(
    denoise: Callable[[np.ndarray, int], np.ndarray],
    noise: np.ndarray,
    schedule: NoiseSchedule,
    num_inference_steps: int,
    clip_range: float,
    prefix: np.ndarray | None,
    weights: np.ndarray,
) -> np.ndarray:
    """DDIM (eta 0) from x_T = noise (B, H, A) with the predicted clean sample pulled toward
    `prefix` (H, A), normalized units, at every step: x̂0 ← W·prefix + (1 − W)·x̂0, W = weights
    (H,). Rows with W = 1 come out exactly equal to the prefix (the last step lands on x̂0).

    The simple variant of RTC's guidance: the paper adds a vector-Jacobian-product correction
    (ΠGDM) through the denoiser; an ONNX forward graph has no gradients, so the frozen rows are
    hard-replaced and the soft rows blended, on x̂0, keeping the denoiser's ε̂ (a RePaint-style
    inpainting on the clean-sample estimate). With W = 0 this is exactly `ddim_sample`.
    """
    x = noise.astype(np.float32)
    w = np.asarray(weights, dtype=np.float32)[:, None]  # (H, 1)
    target = None if prefix is None else np.asarray(prefix, dtype=np.float32)
    ratio = schedule.num_train_timesteps // num_inference_steps
    for t in ddim_timesteps(schedule.num_train_timesteps, num_inference_steps).tolist():
        eps = denoise(x, t)
        x0 = predict_x0(schedule, eps, t, x, clip_range)
        if target is not None:
            x0 = w * target + (1.0 - w) * x0
        ab_prev = schedule.alpha_bar(t - ratio)
        x = (math.sqrt(ab_prev) * x0 + math.sqrt(1.0 - ab_prev) * eps).astype(np.float32)
    return x


EXECUTORS = {
    "ensemble": TemporalEnsemble,
    "receding": RecedingHorizon,
    "rtc": RealTimeChunking,
}
