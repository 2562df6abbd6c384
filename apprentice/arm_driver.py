"""Core of the arm driver node: validates position commands and forwards good ones to an Arm.

A rejected command never reaches the arm: the arm keeps its last accepted target (at start,
the position it was in), the rejection is counted and its reason kept for the log.

Velocity limit (the last guard before the motors: teleop and the policy node limit their steps,
anything else publishing commands does not): each accepted command moves each joint at most
`max_velocity × min(t − t_prev, MAX_STEP_TIME)` from the previous target, where t_prev is the
arrival of the previous accepted command (at start: the driver's construction). A command that
asks for more is moved that far toward its target, accepted and counted in `clamped`; a single
far command (a 2 rad jump) therefore moves one step, and a stream of them moves at most at
`max_velocity`. The cap keeps a command after a pause from jumping by the whole pause's worth.
Two commands that arrive bunched (DDS delivers a late one just before the next) give the first
a short step; the next, a longer interval, catches up. Limits come from the backend
(apprentice.drivers.factory: a robot config's per-joint `max_velocity`, else the servo's no-load
speed; MuJoCo: SIM_MAX_VELOCITY) unless the node's `max_velocity` parameter overrides them.

Readings (`read_new`, what the node publishes): a reading stamped like the last one published
is no new state (a paused simulation) and is skipped; one stamped more than `max_future` ahead
of the host clock, or before the last one published (the host clock stepped back), is dropped
and counted (apprentice.stamps), and never blocks the readings after it. Commands carry no stamp
the driver uses: the velocity limit runs on their arrival times (monotonic).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from apprentice.robot_io import Arm, ArmSpec, JointReading
from apprentice.stamps import ACCEPTED, FUTURE, MAX_FUTURE_S, OUT_OF_ORDER, StampGate

LIMIT_TOLERANCE = 1e-6  # rad or m
MAX_STEP_TIME = 0.05  # s: the longest interval one command's step may cover (20 Hz)


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    reason: str = ""


def check_positions(position: np.ndarray, spec: ArmSpec) -> Verdict:
    """Accepts a full position vector only if it has one finite value per joint within limits."""
    q = np.asarray(position, dtype=float)
    if q.shape != (spec.n_joints,):
        return Verdict(False, f"wrong length: got {q.size} values for {spec.n_joints} joints")
    bad = ~np.isfinite(q)
    if bad.any():
        names = [spec.joint_names[i] for i in np.flatnonzero(bad)]
        return Verdict(False, f"non-finite value for {', '.join(names)}")
    # A target a rounding error past a limit (interpolation ending exactly on it) is the limit.
    out = (q < spec.lower - LIMIT_TOLERANCE) | (q > spec.upper + LIMIT_TOLERANCE)
    if out.any():
        parts = [
            f"{spec.joint_names[i]}={q[i]:.4f} not in [{spec.lower[i]:.4f}, {spec.upper[i]:.4f}]"
            for i in np.flatnonzero(out)
        ]
        return Verdict(False, "outside limits: " + "; ".join(parts))
    return Verdict(True)


def velocity_limits(
    max_velocity: float | Sequence[float] | np.ndarray, n_joints: int
) -> np.ndarray:
    """(J,) positive finite limits from one value (every joint) or one per joint."""
    v = np.atleast_1d(np.asarray(max_velocity, dtype=float))
    if v.shape == (1,):
        v = np.full(n_joints, v[0])
    if v.shape != (n_joints,):
        raise ValueError(f"max_velocity: {v.size} values for {n_joints} joints (give 1 or all)")
    if not np.all(np.isfinite(v) & (v > 0)):
        raise ValueError(f"max_velocity must be positive and finite, got {v.tolist()}")
    return v


class ArmDriver:
    """Owns one Arm: reads it, and writes only commands that pass `check_positions`, each
    step bounded by `max_velocity` (joint units/s; one value or one per joint)."""

    def __init__(
        self,
        arm: Arm,
        max_velocity: float | Sequence[float] | np.ndarray,
        clock: Callable[[], float] = time.monotonic,
        max_future: float = MAX_FUTURE_S,
        host_clock: Callable[[], float] = time.time,
    ) -> None:
        self.arm = arm
        self.spec = arm.spec
        self.max_velocity = velocity_limits(max_velocity, self.spec.n_joints)
        self._clock = clock
        self._host_clock = host_clock
        self.readings = StampGate(max_future)  # stamps of the readings read_new returned
        self.skipped_stale = 0  # readings with the last one's stamp: no new state
        self._lock = threading.Lock()
        self._index = {name: i for i, name in enumerate(self.spec.joint_names)}
        self._target = np.array(arm.read().position, dtype=float)  # hold where we start
        self._target_time = clock()  # when the last accepted command came (s, `clock`)
        self.counts: Counter[str] = Counter()  # accepted / rejected / clamped
        self.last_rejection = ""

    @property
    def target(self) -> np.ndarray:
        with self._lock:
            return self._target.copy()

    def read(self) -> JointReading:
        return self.arm.read()

    def read_new(self) -> JointReading | None:
        """The arm's reading if it is new and its stamp sane (module docstring), else None."""
        reading = self.arm.read()
        if reading.stamp == self.readings.last_stamp:
            self.skipped_stale += 1
            return None
        verdict = self.readings.admit(reading.stamp, self._host_clock(), self._clock())
        return reading if verdict == ACCEPTED else None

    def reading_report(self) -> str | None:
        """A log line about readings dropped for their stamps (rate-limited), or None."""
        return self.readings.report("joint_states", self._clock())

    def command(self, position: Sequence[float] | np.ndarray) -> Verdict:
        """A full command in joint order (ros2_control forward-controller style)."""
        q = np.asarray(position, dtype=float).reshape(-1)
        return self._apply(q)

    def command_named(self, names: Sequence[str], position: Sequence[float]) -> Verdict:
        """A command by joint name; joints not named keep their current target."""
        if len(names) != len(position):
            return self._reject(f"{len(names)} names but {len(position)} positions")
        if len(set(names)) != len(names):
            return self._reject("a joint is named twice")
        unknown = [n for n in names if n not in self._index]
        if unknown:
            return self._reject(f"unknown joint(s): {', '.join(unknown)}")
        with self._lock:
            q = self._target.copy()
        for name, value in zip(names, position, strict=True):
            q[self._index[name]] = value
        return self._apply(q)

    def set_torque(self, enabled: bool) -> None:
        with self._lock:
            # Torque-on holds the present pose in the backend (a servo bus refuses goal writes
            # until then after a rearm; MuJoCo ignores them while limp); then the driver's
            # target follows, so the next command steps from where the arm is, not a stale one.
            self.arm.set_torque(enabled)
            if enabled:
                self._target = np.array(self.arm.read().position, dtype=float)
                self.arm.write(self._target)

    def stats(self) -> dict[str, object]:
        return {
            "accepted": self.counts["accepted"],
            "rejected": self.counts["rejected"],
            "clamped": self.counts["clamped"],
            "last_rejection": self.last_rejection,
            "max_velocity": self.max_velocity.tolist(),
            "skipped_stale": self.skipped_stale,
            "future_stamps": self.readings.counts[FUTURE],
            "stamps_back": self.readings.counts[OUT_OF_ORDER],
        }

    def _apply(self, q: np.ndarray) -> Verdict:
        verdict = check_positions(q, self.spec)
        if not verdict.accepted:
            return self._reject(verdict.reason)
        with self._lock:
            now = self._clock()
            max_step = self.max_velocity * min(max(now - self._target_time, 0.0), MAX_STEP_TIME)
            wanted = np.clip(q, self.spec.lower, self.spec.upper) - self._target
            step = np.clip(wanted, -max_step, max_step)
            target = self._target + step
            self.arm.write(target)  # a backend refusal raises: target and time stay
            self._target, self._target_time = target, now
            self.counts["accepted"] += 1
            if np.any(np.abs(wanted - step) > LIMIT_TOLERANCE):
                self.counts["clamped"] += 1
        return verdict

    def _reject(self, reason: str) -> Verdict:
        with self._lock:
            self.counts["rejected"] += 1
            self.last_rejection = reason
        return Verdict(False, reason)
