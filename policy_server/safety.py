"""The safety layer between a policy and the arm: every command the policy node publishes passes
through `SafetyLayer.step`, once per control tick. Pure: no clocks, no I/O; times come in.

Per tick, per joint (position units: rad, or m for prismatic fingers):
  - the target must be finite and the right length, else it is rejected (counted) and the arm
    holds;
  - the target is clipped into [lower, upper];
  - the step toward it is bounded by the velocity limit (max_step = max_velocity · period), by
    a braking curve that reaches the target without overshoot, and by the acceleration limit
    (the step may change by at most max_accel · period² from the previous step);
  - a step that would still leave the limits stops that joint instead.
Invariant (the property tests check it for arbitrary targets): each command is finite and inside
the limits, moves each joint by at most max_step, and either changes each joint's step by at
most max_accel · period² or stops the joint (step 0). A stop is always allowed: holding the
last command is the safe direction, and the watchdog and e-stop must act within one tick.

Modes: `running` (tracking targets), `hold` (observations older than `hold_after`: the last
command is repeated, and tracking resumes with a new ramp once they are fresh), `fault`
(observations older than `safe_after`: latched, the arm holds, or moves slowly to `safe_pose`
when one is given, until `rearm`), `estop` (latched hold until `rearm`). `start` takes the
measured pose and holds it; tracking begins at the first tick with fresh observations, with a
velocity limit ramping from ~0 to full over `ramp_time` (smooth start), and so does every
resume after a hold or a re-arm (from rest: a moving joint is stopped for one tick first).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

RUNNING, HOLD, FAULT, ESTOP = "running", "hold", "fault", "estop"
_MIN_RAMP = 0.02  # ramp scale at the first tick: a ramp never starts at an exact standstill


@dataclass(frozen=True)
class SafetyConfig:
    lower: np.ndarray  # (J,) position limits
    upper: np.ndarray  # (J,)
    max_velocity: np.ndarray  # (J,) per second
    max_accel: np.ndarray  # (J,) per second²
    period: float  # s, one control tick
    hold_after: float = 0.1  # s of observation age before holding
    safe_after: float = 1.0  # s of observation age before the latched safe state
    ramp_time: float = 1.0  # s from (re)start to full velocity
    safe_pose: np.ndarray | None = None  # (J,) where the safe state goes; None: hold in place
    safe_speed_scale: float = 0.25  # of max_velocity, on the way to safe_pose

    def __post_init__(self) -> None:
        lower = np.asarray(self.lower, dtype=float).reshape(-1)
        n = lower.size
        arrays = {"lower": lower}
        for name in ("upper", "max_velocity", "max_accel"):
            a = np.asarray(getattr(self, name), dtype=float).reshape(-1)
            if a.size == 1:
                a = np.full(n, a[0])
            if a.shape != (n,):
                raise ValueError(f"{name} needs 1 or {n} values, got {a.size}")
            arrays[name] = a
        if n == 0 or not all(np.isfinite(a).all() for a in arrays.values()):
            raise ValueError("limits must be non-empty and finite")
        if np.any(arrays["lower"] >= arrays["upper"]):
            raise ValueError("every lower limit must be below its upper limit")
        if np.any(arrays["max_velocity"] <= 0) or np.any(arrays["max_accel"] <= 0):
            raise ValueError("max_velocity and max_accel must be positive")
        if not self.period > 0 or not 0 < self.hold_after <= self.safe_after:
            raise ValueError("need period > 0 and 0 < hold_after <= safe_after")
        if self.ramp_time < 0 or not 0 < self.safe_speed_scale <= 1:
            raise ValueError("need ramp_time >= 0 and 0 < safe_speed_scale <= 1")
        if self.safe_pose is not None:
            pose = np.asarray(self.safe_pose, dtype=float).reshape(-1)
            if pose.shape != (n,) or np.any(pose < lower) or np.any(pose > arrays["upper"]):
                raise ValueError("safe_pose must have one value per joint, inside the limits")
            arrays["safe_pose"] = pose
        for name, a in arrays.items():
            a.setflags(write=False)
            object.__setattr__(self, name, a)

    @property
    def max_step(self) -> np.ndarray:
        """(J,) largest move per tick."""
        return self.max_velocity * self.period

    @property
    def max_step_change(self) -> np.ndarray:
        """(J,) largest change of the per-tick move from one tick to the next."""
        return self.max_accel * self.period**2


def braking_step(distance: np.ndarray, accel_step: np.ndarray) -> np.ndarray:
    """Largest move v this tick after which a joint `distance` from its target can still stop
    exactly on it, slowing by accel_step A per tick: the moves v, v − A, v − 2A, ... (positive
    terms) sum to at most the distance. With k = ⌊v / A⌋ that sum is (k + 1)·v − A·k(k + 1)/2,
    so k is the largest integer with A·k(k + 1)/2 <= distance, and v solves sum = distance."""
    k = np.floor((np.sqrt(1.0 + 8.0 * distance / accel_step) - 1.0) / 2.0)
    return (distance + accel_step * k * (k + 1) / 2.0) / (k + 1)


class SafetyLayer:
    """Stateful per-tick filter. Call `start` with the measured pose, then `step` each tick."""

    def __init__(self, cfg: SafetyConfig) -> None:
        self.cfg = cfg
        self.mode = HOLD
        self.fault_reason = ""
        self.counts: Counter[str] = Counter()
        self._q = np.zeros_like(cfg.lower)  # last command
        self._v = np.zeros_like(cfg.lower)  # last per-tick move
        self._ramp_start = 0.0
        self._started = False

    @property
    def command(self) -> np.ndarray:
        return self._q.copy()

    def start(self, current: np.ndarray, t: float) -> np.ndarray:
        """Begins from the measured pose (clipped into the limits): no jump at the first tick."""
        q = np.asarray(current, dtype=float).reshape(-1)
        if q.shape != self.cfg.lower.shape or not np.isfinite(q).all():
            raise ValueError(f"start pose must be {self.cfg.lower.size} finite values, got {q}")
        self._q = np.clip(q, self.cfg.lower, self.cfg.upper)
        self._v = np.zeros_like(self._q)
        self._ramp_start = t
        self._started = True
        self.mode = HOLD  # tracking begins, ramping, at the first tick with fresh observations
        return self.command

    def estop(self, reason: str = "e-stop") -> None:
        """Latches: the arm holds its last command until `rearm`."""
        if self.mode != ESTOP:
            self.counts["estops"] += 1
        self.mode, self.fault_reason = ESTOP, reason

    def rearm(self, t: float) -> None:
        """Clears an e-stop or fault; tracking restarts with a fresh ramp from the last command."""
        if self.mode in (ESTOP, FAULT):
            self.mode, self.fault_reason = HOLD, ""
            self._ramp_start = t
            self.counts["rearms"] += 1

    def step(self, target: np.ndarray | None, obs_age: float, t: float) -> np.ndarray:
        """The command (J,) for this tick. target: the policy's action (J,) or None (nothing to
        do: hold). obs_age: s, the watchdog's age of the observations (inf if none; the
        policy runtime takes the stalest stream's, by stamp and by arrival)."""
        if not self._started:
            raise RuntimeError("SafetyLayer.start must be called first")
        cfg = self.cfg
        if self.mode in (ESTOP, FAULT):
            if self.mode == FAULT and cfg.safe_pose is not None:
                return self._track(cfg.safe_pose, cfg.safe_speed_scale)
            return self._stop()
        if not obs_age <= cfg.safe_after:  # also catches NaN ages
            self.mode, self.fault_reason = FAULT, f"no fresh observation for {obs_age:.3f} s"
            self.counts["faults"] += 1
            return self._stop()  # the way to safe_pose starts from rest, next tick
        if obs_age > cfg.hold_after:
            if self.mode != HOLD:
                self.counts["watchdog_holds"] += 1
            self.mode = HOLD
            return self._stop()
        if self.mode == HOLD:  # fresh again (or re-armed): resume from rest with a new ramp
            if np.any(self._v != 0):
                return self._stop()
            self.mode = RUNNING
            self._ramp_start = t
        if target is None:
            self.counts["no_target"] += 1
            return self._stop()
        q = np.asarray(target, dtype=float).reshape(-1)
        if q.shape != cfg.lower.shape:
            self.counts["rejected_shape"] += 1
            return self._stop()
        if not np.isfinite(q).all():
            self.counts["rejected_nonfinite"] += 1
            return self._stop()
        if cfg.ramp_time > 0:
            scale = min(1.0, max(_MIN_RAMP, (t - self._ramp_start) / cfg.ramp_time))
        else:
            scale = 1.0
        return self._track(q, scale)

    def _stop(self) -> np.ndarray:
        self._v = np.zeros_like(self._q)
        return self.command

    def _track(self, target: np.ndarray, speed_scale: float) -> np.ndarray:
        cfg = self.cfg
        goal = np.clip(target, cfg.lower, cfg.upper)
        if np.any(goal != target):
            self.counts["clipped_to_limits"] += 1
        error = goal - self._q
        a_step = cfg.max_step_change
        v_max = np.minimum(cfg.max_step * speed_scale, braking_step(np.abs(error), a_step))
        want = np.clip(error, -v_max, v_max)
        move = np.clip(want, self._v - a_step, self._v + a_step)
        # The scale only drops when tracking restarts from rest (v = 0), so |v| <= this bound
        # and the clip keeps the move inside the acceleration window.
        move = np.clip(move, -cfg.max_step * speed_scale, cfg.max_step * speed_scale)
        q = self._q + move
        leaving = (q < cfg.lower) | (q > cfg.upper)
        if leaving.any():  # momentum would carry the joint out: stop it inside
            self.counts["limit_stops"] += 1
            move = np.where(leaving, 0.0, move)
            q = self._q + move
        if np.any(np.abs(move) < np.abs(want) - 1e-12):
            self.counts["rate_limited"] += 1
        self._q, self._v = q, move
        return self.command
