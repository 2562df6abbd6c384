"""Core of the arm driver node: validates position commands and forwards good ones to an Arm.

A rejected command never reaches the arm: the arm keeps its last accepted target (at start,
the position it was in), the rejection is counted and its reason kept for the log.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from apprentice.robot_io import Arm, ArmSpec, JointReading

LIMIT_TOLERANCE = 1e-6  # rad or m


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


class ArmDriver:
    """Owns one Arm: reads it, and writes only commands that pass `check_positions`."""

    def __init__(self, arm: Arm) -> None:
        self.arm = arm
        self.spec = arm.spec
        self._lock = threading.Lock()
        self._index = {name: i for i, name in enumerate(self.spec.joint_names)}
        self._target = np.array(arm.read().position, dtype=float)  # hold where we start
        self.counts: Counter[str] = Counter()  # accepted / rejected
        self.last_rejection = ""

    @property
    def target(self) -> np.ndarray:
        with self._lock:
            return self._target.copy()

    def read(self) -> JointReading:
        return self.arm.read()

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
        if enabled:
            # Re-enabling must not jump to a stale target: hold the present position.
            with self._lock:
                self._target = np.array(self.arm.read().position, dtype=float)
                self.arm.write(self._target)
        self.arm.set_torque(enabled)

    def stats(self) -> dict[str, object]:
        return {
            "accepted": self.counts["accepted"],
            "rejected": self.counts["rejected"],
            "last_rejection": self.last_rejection,
        }

    def _apply(self, q: np.ndarray) -> Verdict:
        verdict = check_positions(q, self.spec)
        if not verdict.accepted:
            return self._reject(verdict.reason)
        with self._lock:
            self._target = np.clip(q, self.spec.lower, self.spec.upper)
            self.arm.write(self._target)
            self.counts["accepted"] += 1
        return verdict

    def _reject(self, reason: str) -> Verdict:
        with self._lock:
            self.counts["rejected"] += 1
            self.last_rejection = reason
        return Verdict(False, reason)
