"""The robot I/O contract: what every arm and camera backend provides.

Backends (MuJoCo now; Feetech and Dynamixel buses, RealSense and UVC cameras later) implement
these protocols; nodes, teleop, the recorder and the policy runtime only ever see them.

Units: joint positions in rad (revolute) or m (prismatic fingers), velocities per second,
efforts in N·m or N. Stamps are seconds on the host's system clock (the clock ROS header
stamps use), taken as close to the sensor as the backend can.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class ArmSpec:
    """Joint names (in command order) and position limits of one arm."""

    joint_names: tuple[str, ...]
    lower: np.ndarray  # (J,)
    upper: np.ndarray  # (J,)

    def __post_init__(self) -> None:
        n = len(self.joint_names)
        if n == 0:
            raise ValueError("an arm needs at least one joint")
        if len(set(self.joint_names)) != n:
            raise ValueError(f"duplicate joint names: {self.joint_names}")
        lower = np.asarray(self.lower, dtype=float)
        upper = np.asarray(self.upper, dtype=float)
        if lower.shape != (n,) or upper.shape != (n,):
            raise ValueError(f"limits must have shape ({n},), got {lower.shape} and {upper.shape}")
        if not (np.all(np.isfinite(lower)) and np.all(np.isfinite(upper))):
            raise ValueError("joint limits must be finite")
        if np.any(lower >= upper):
            raise ValueError(f"every lower limit must be below its upper limit: {lower} {upper}")
        lower.setflags(write=False)
        upper.setflags(write=False)
        object.__setattr__(self, "joint_names", tuple(self.joint_names))
        object.__setattr__(self, "lower", lower)
        object.__setattr__(self, "upper", upper)

    @property
    def n_joints(self) -> int:
        return len(self.joint_names)


@dataclass(frozen=True)
class JointReading:
    """One synchronous read of all joints of an arm."""

    stamp: float  # s, host system clock
    position: np.ndarray  # (J,)
    velocity: np.ndarray | None = None  # (J,) or None where the servo has no velocity
    effort: np.ndarray | None = None  # (J,) or None where the servo has no current sensing


@runtime_checkable
class Arm(Protocol):
    """A position-controlled arm. Thread-safe: read and write may come from different threads."""

    @property
    def spec(self) -> ArmSpec: ...

    def read(self) -> JointReading:
        """Reads every joint now. Raises on a bus failure the backend could not retry away."""
        ...

    def write(self, position: np.ndarray) -> None:
        """Sets position targets (J,), already validated against spec limits by the caller."""
        ...

    def set_torque(self, enabled: bool) -> None:
        """Torque on: the arm holds/tracks targets. Off: it goes limp (a leader arm)."""
        ...

    def close(self) -> None:
        """Releases the bus or simulator handle; torque goes off on hardware."""
        ...


@dataclass(frozen=True)
class CameraSpec:
    """Image geometry and pinhole intrinsics (OpenCV convention, pixels)."""

    name: str
    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    distortion: tuple[float, ...] = field(default=(0.0, 0.0, 0.0, 0.0, 0.0))  # plumb_bob
    encoding: str = "rgb8"

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"camera {self.name}: image size must be positive")
        if self.fx <= 0 or self.fy <= 0:
            raise ValueError(f"camera {self.name}: focal lengths must be positive")

    @property
    def k(self) -> np.ndarray:
        """3×3 intrinsic matrix."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])


@dataclass(frozen=True)
class Frame:
    """One image with the stamp of its capture (exposure) on the host clock."""

    stamp: float  # s
    image: np.ndarray  # (H, W, 3) uint8, RGB
    seq: int


@runtime_checkable
class Camera(Protocol):
    """A camera that delivers frames at its own rate: read() blocks until the next one."""

    @property
    def spec(self) -> CameraSpec: ...

    def read(self, timeout: float = 1.0) -> Frame:
        """Returns the next frame. Raises TimeoutError when none arrives within `timeout` s."""
        ...

    def close(self) -> None: ...
