"""DDPM noise schedule, DDPM and DDIM steps, and the DDIM sampling loop, without torch.

The math is that of diffusers' DDPMScheduler / DDIMScheduler with the settings Diffusion Policy
uses (squaredcos_cap_v2 betas, epsilon prediction, clipped x0, fixed_small variance, DDIM with
"leading" timestep spacing, steps_offset 0, set_alpha_to_one, eta 0). Tests compare it to
diffusers. The step functions use only arithmetic and `.clip`, so they accept numpy arrays
(the robot-side runtime) and torch tensors (training-time evaluation) alike: one implementation
for both sides of the ONNX boundary.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

Array = TypeVar("Array")  # np.ndarray or torch.Tensor


@dataclass(frozen=True)
class NoiseSchedule:
    betas: np.ndarray  # (T,) float64
    alphas_cumprod: np.ndarray = field(init=False)  # (T,) float64, ᾱ_t = Π_{s<=t} (1 - β_s)

    def __post_init__(self) -> None:
        betas = np.asarray(self.betas, dtype=np.float64)
        if betas.ndim != 1 or betas.size == 0 or np.any(betas <= 0) or np.any(betas >= 1):
            raise ValueError("betas must be a non-empty 1-D array in (0, 1)")
        alphas_cumprod = np.cumprod(1.0 - betas)
        betas.setflags(write=False)
        alphas_cumprod.setflags(write=False)
        object.__setattr__(self, "betas", betas)
        object.__setattr__(self, "alphas_cumprod", alphas_cumprod)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.betas.shape[0])

    @classmethod
    def squared_cosine(cls, num_train_timesteps: int, max_beta: float = 0.999) -> NoiseSchedule:
        """Nichol & Dhariwal 2021 cosine schedule (diffusers' "squaredcos_cap_v2")."""

        def alpha_bar(s: float) -> float:
            return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

        n = num_train_timesteps
        betas = [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)]
        return cls(np.asarray(betas))

    def to_json(self) -> dict[str, Any]:
        return {
            "num_train_timesteps": self.num_train_timesteps,
            "betas": self.betas.tolist(),
            "alphas_cumprod": self.alphas_cumprod.tolist(),
        }

    def alpha_bar(self, t: int) -> float:
        """ᾱ_t, with ᾱ_{-1} = 1 (the clean sample)."""
        return 1.0 if t < 0 else float(self.alphas_cumprod[t])


def add_noise(
    schedule: NoiseSchedule, x0: np.ndarray, noise: np.ndarray, t: np.ndarray
) -> np.ndarray:
    """Forward process q(x_t | x_0) for a batch: x0, noise (B, ...), t (B,) integer steps."""
    ab = schedule.alphas_cumprod[np.asarray(t)].reshape(-1, *([1] * (np.ndim(x0) - 1)))  # (B, 1..)
    return np.sqrt(ab) * x0 + np.sqrt(1.0 - ab) * noise


def ddim_timesteps(num_train_timesteps: int, num_inference_steps: int) -> np.ndarray:
    """Descending steps with "leading" spacing: T=100, n=10 → [90, 80, ..., 0]."""
    if not 1 <= num_inference_steps <= num_train_timesteps:
        raise ValueError("need 1 <= num_inference_steps <= num_train_timesteps")
    ratio = num_train_timesteps // num_inference_steps
    return (np.arange(num_inference_steps, dtype=np.int64) * ratio)[::-1].copy()


def predict_x0(schedule: NoiseSchedule, eps: Array, t: int, x_t: Array, clip_range: float) -> Array:
    """x̂_0 = (x_t - √(1-ᾱ_t) ε) / √ᾱ_t, clipped to ±clip_range (normalized action units)."""
    ab = schedule.alpha_bar(t)
    return ((x_t - math.sqrt(1.0 - ab) * eps) / math.sqrt(ab)).clip(-clip_range, clip_range)


def ddim_step(
    schedule: NoiseSchedule, eps: Array, t: int, prev_t: int, x_t: Array, clip_range: float
) -> Array:
    """Deterministic DDIM (eta = 0) from step t to prev_t (< 0 means to the clean sample)."""
    x0 = predict_x0(schedule, eps, t, x_t, clip_range)
    ab_prev = schedule.alpha_bar(prev_t)
    return math.sqrt(ab_prev) * x0 + math.sqrt(1.0 - ab_prev) * eps


def ddpm_step(
    schedule: NoiseSchedule, eps: Array, t: int, x_t: Array, clip_range: float, noise: Array
) -> Array:
    """Ancestral DDPM step t → t-1: posterior mean (Ho et al. eq. 7) from the clipped x̂_0, plus
    √(fixed_small variance) · noise for t > 0."""
    ab_t, ab_prev = schedule.alpha_bar(t), schedule.alpha_bar(t - 1)
    beta_t = 1.0 - ab_t / ab_prev
    x0 = predict_x0(schedule, eps, t, x_t, clip_range)
    coef_x0 = math.sqrt(ab_prev) * beta_t / (1.0 - ab_t)
    coef_xt = math.sqrt(1.0 - beta_t) * (1.0 - ab_prev) / (1.0 - ab_t)
    mean = coef_x0 * x0 + coef_xt * x_t
    if t == 0:
        return mean
    variance = max((1.0 - ab_prev) / (1.0 - ab_t) * beta_t, 1e-20)
    return mean + math.sqrt(variance) * noise


def ddim_sample(
    denoise: Callable[[Array, int], Array],
    noise: Array,
    schedule: NoiseSchedule,
    num_inference_steps: int,
    clip_range: float,
) -> Array:
    """Runs DDIM from pure noise x_T (B, Tp, A) to x_0; `denoise(x_t, t)` returns ε̂."""
    ratio = schedule.num_train_timesteps // num_inference_steps
    x = noise
    for t in ddim_timesteps(schedule.num_train_timesteps, num_inference_steps).tolist():
        x = ddim_step(schedule, denoise(x, t), t, t - ratio, x, clip_range)
    return x
