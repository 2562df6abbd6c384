"""Leader → follower mapping for teleoperation: per-joint map, step clamp, smooth start.

Pure: no ROS, no I/O. The teleop node feeds it the leader's and the follower's joint positions
and publishes what it returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class JointMap:
    """follower = offset + sign * scale * leader, or a linear range map (grippers).

    A gripper's leader and follower often differ in units and direction (a leader's trigger in
    rad, a follower's finger slide in m): `leader_range` → `follower_range` maps the ends onto
    each other, and values outside are clipped to the follower range.
    """

    offset: float = 0.0  # follower units
    sign: float = 1.0
    scale: float = 1.0
    leader_range: tuple[float, float] | None = None
    follower_range: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.sign not in (1.0, -1.0):
            raise ValueError(f"sign must be +1 or -1, got {self.sign}")
        if (self.leader_range is None) != (self.follower_range is None):
            raise ValueError("leader_range and follower_range go together")
        if self.leader_range is not None and self.leader_range[0] == self.leader_range[1]:
            raise ValueError("leader_range must not be empty")

    def apply(self, x: float) -> float:
        if self.leader_range is not None and self.follower_range is not None:
            (a, b), (c, d) = self.leader_range, self.follower_range
            y = c + (x - a) * (d - c) / (b - a)
            return float(np.clip(y, min(c, d), max(c, d)))
        return self.offset + self.sign * self.scale * x


@dataclass(frozen=True)
class TeleopConfig:
    n_joints: int
    maps: tuple[JointMap, ...] = ()  # empty: identity for every joint
    rate_hz: float = 50.0
    max_step: float = 0.1  # rad (or m) per tick: 5 rad/s at 50 Hz; a jump is spread out
    ramp_time: float = 2.0  # s: the follower eases from its own pose onto the leader's
    lower: tuple[float, ...] = ()  # follower limits; empty: no clipping here (the driver checks)
    upper: tuple[float, ...] = ()
    max_leader_age: float = 0.1  # s: an older leader state is not followed (the follower holds)

    def __post_init__(self) -> None:
        if self.maps and len(self.maps) != self.n_joints:
            raise ValueError(f"{len(self.maps)} joint maps for {self.n_joints} joints")
        if not 0 < self.rate_hz <= 1000:
            raise ValueError(f"rate_hz must be in (0, 1000], got {self.rate_hz}")
        if self.max_step <= 0 or self.ramp_time < 0 or self.max_leader_age <= 0:
            raise ValueError("max_step and max_leader_age must be positive, ramp_time >= 0")
        if len(self.lower) != len(self.upper) or (self.lower and len(self.lower) != self.n_joints):
            raise ValueError("lower/upper must both be empty or have one value per joint")

    @classmethod
    def from_dict(cls, n_joints: int, d: dict[str, Any]) -> TeleopConfig:
        maps = tuple(JointMap(**m) for m in d.get("maps", ()))
        rest = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k != "maps"}
        return cls(n_joints=n_joints, maps=maps, **rest)


@dataclass
class Teleop:
    """Turns leader positions into follower commands, one control tick at a time."""

    cfg: TeleopConfig
    _start_pose: np.ndarray | None = field(default=None, init=False)
    _start_t: float = field(default=0.0, init=False)
    _last: np.ndarray | None = field(default=None, init=False)

    def map(self, leader_q: np.ndarray) -> np.ndarray:
        q = np.asarray(leader_q, dtype=float)
        if not self.cfg.maps:
            return q.copy()
        return np.array([m.apply(x) for m, x in zip(self.cfg.maps, q, strict=True)])

    def start(self, follower_q: np.ndarray, t: float) -> None:
        """Begins (or restarts) the smooth start from where the follower is now."""
        self._start_pose = np.asarray(follower_q, dtype=float).copy()
        self._start_t = t
        self._last = self._start_pose.copy()

    @property
    def started(self) -> bool:
        return self._start_pose is not None

    def step(self, leader_q: np.ndarray, t: float) -> np.ndarray:
        """The follower command for this tick. Call start() first."""
        if self._start_pose is None or self._last is None:
            raise RuntimeError("Teleop.start(follower_q, t) must come before step()")
        target = self.map(leader_q)
        if self.cfg.ramp_time > 0:
            alpha = min(1.0, max(0.0, (t - self._start_t) / self.cfg.ramp_time))
            target = self._start_pose + alpha * (target - self._start_pose)
        cmd = self._last + np.clip(target - self._last, -self.cfg.max_step, self.cfg.max_step)
        if self.cfg.lower:
            cmd = np.clip(cmd, self.cfg.lower, self.cfg.upper)
        self._last = cmd
        return cmd.copy()
