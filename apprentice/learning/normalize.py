"""Per-dimension normalization stats, numpy only (the deployment side needs no torch).

One formula for every mode, so a runtime in any language needs only two vectors per key:
    x_norm = (x - offset) / scale        x = x_norm * scale + offset
mean_std: offset = mean, scale = std                 (ACT's choice)
min_max:  offset = (max + min) / 2, scale = (max - min) / 2, so x_norm is in [-1, 1]
          (Diffusion Policy's choice: its sampler clips samples to [-1, 1]).

Normalization is applied OUTSIDE the exported ONNX graphs: they consume normalized state and
images in [0, 1] and produce normalized actions. The policy card carries these stats.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

NormMode = Literal["mean_std", "min_max"]
NORM_MODES: tuple[str, ...] = ("mean_std", "min_max")
# A dimension that never moved (a gripper held shut in every demo) would divide by ~0;
# its scale is floored so normalized values stay finite. Units: those of the feature.
MIN_SCALE = 1e-3


@dataclass(frozen=True)
class NormStats:
    """Normalization of one feature vector (state or action), shape (D,)."""

    mode: NormMode
    offset: np.ndarray  # (D,) float64
    scale: np.ndarray  # (D,) float64, > 0

    def __post_init__(self) -> None:
        if self.mode not in NORM_MODES:
            raise ValueError(f"mode must be one of {NORM_MODES}, got {self.mode!r}")
        offset = np.asarray(self.offset, dtype=np.float64)
        scale = np.asarray(self.scale, dtype=np.float64)
        if offset.ndim != 1 or offset.shape != scale.shape:
            raise ValueError(
                f"offset and scale must be equal 1-D shapes: {offset.shape} {scale.shape}"
            )
        if not (np.all(np.isfinite(offset)) and np.all(np.isfinite(scale))):
            raise ValueError("normalization stats must be finite")
        if np.any(scale <= 0):
            raise ValueError("every scale must be > 0")
        offset.setflags(write=False)
        scale.setflags(write=False)
        object.__setattr__(self, "offset", offset)
        object.__setattr__(self, "scale", scale)

    @property
    def dim(self) -> int:
        return int(self.offset.shape[0])

    @classmethod
    def identity(cls, dim: int, mode: NormMode = "mean_std") -> NormStats:
        return cls(mode, np.zeros(dim), np.ones(dim))

    @classmethod
    def fit(cls, data: np.ndarray, mode: NormMode) -> NormStats:
        """Stats over every leading axis of `data` (..., D), e.g. all frames of all episodes."""
        x = np.asarray(data, dtype=np.float64).reshape(-1, np.shape(data)[-1])  # (N, D)
        if x.shape[0] == 0:
            raise ValueError("cannot fit normalization stats on zero samples")
        if mode == "mean_std":
            offset, scale = x.mean(axis=0), x.std(axis=0)
        elif mode == "min_max":
            lo, hi = x.min(axis=0), x.max(axis=0)
            offset, scale = (hi + lo) / 2, (hi - lo) / 2
        else:
            raise ValueError(f"mode must be one of {NORM_MODES}, got {mode!r}")
        return cls(mode, offset, np.maximum(scale, MIN_SCALE))

    def normalize(self, x: np.ndarray) -> np.ndarray:
        """(..., D) raw units → normalized, float32."""
        return ((np.asarray(x, np.float64) - self.offset) / self.scale).astype(np.float32)

    def unnormalize(self, x: np.ndarray) -> np.ndarray:
        """(..., D) normalized → raw units, float64."""
        return np.asarray(x, np.float64) * self.scale + self.offset

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "offset": self.offset.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NormStats:
        return cls(data["mode"], np.asarray(data["offset"]), np.asarray(data["scale"]))
