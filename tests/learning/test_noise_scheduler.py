"""The numpy DDPM/DDIM math against diffusers' schedulers (the reference Diffusion Policy uses)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from apprentice.learning.diffusion.scheduler import (
    NoiseSchedule,
    add_noise,
    ddim_sample,
    ddim_step,
    ddim_timesteps,
    ddpm_step,
)

diffusers = pytest.importorskip("diffusers", reason="diffusers is the reference for these checks")

T = 100
TOL = 1e-6


def _ddpm() -> diffusers.DDPMScheduler:
    return diffusers.DDPMScheduler(
        num_train_timesteps=T, beta_schedule="squaredcos_cap_v2", clip_sample=True,
        prediction_type="epsilon", variance_type="fixed_small",
    )  # fmt: skip


def _ddim() -> diffusers.DDIMScheduler:
    return diffusers.DDIMScheduler(
        num_train_timesteps=T, beta_schedule="squaredcos_cap_v2", clip_sample=True,
        set_alpha_to_one=True, steps_offset=0, prediction_type="epsilon",
    )  # fmt: skip


@pytest.fixture(scope="module")
def schedule() -> NoiseSchedule:
    return NoiseSchedule.squared_cosine(T)


def test_betas_and_alphas_cumprod_match_diffusers(schedule: NoiseSchedule) -> None:
    ref = _ddpm()
    np.testing.assert_allclose(schedule.betas, ref.betas.double().numpy(), rtol=0, atol=TOL)
    np.testing.assert_allclose(
        schedule.alphas_cumprod, ref.alphas_cumprod.double().numpy(), rtol=0, atol=TOL
    )
    assert schedule.alphas_cumprod[0] > 0.999 and schedule.alphas_cumprod[-1] < 1e-3


def test_add_noise_matches_diffusers(schedule: NoiseSchedule) -> None:
    rng = np.random.default_rng(0)
    x0 = rng.uniform(-1, 1, (6, 16, 3)).astype(np.float32)
    noise = rng.standard_normal((6, 16, 3)).astype(np.float32)
    t = np.array([0, 1, 17, 50, 98, 99])
    ours = add_noise(schedule, x0, noise, t)
    ref = _ddpm().add_noise(torch.from_numpy(x0), torch.from_numpy(noise), torch.from_numpy(t))
    np.testing.assert_allclose(ours, ref.numpy(), rtol=0, atol=TOL)


def _in_float64(ref: diffusers.DDPMScheduler, schedule: NoiseSchedule) -> None:
    """diffusers keeps its tables in float32, where 1 - ᾱ_t/ᾱ_(t-1) and 1 - ᾱ_t lose digits
    near t = 1 (errors ~6e-6). Its formulas are compared in float64 instead: same betas (checked
    against diffusers' own above), the scheduler's code untouched."""
    ref.betas = torch.from_numpy(np.array(schedule.betas))
    ref.alphas = 1.0 - ref.betas
    ref.alphas_cumprod = torch.cumprod(ref.alphas, dim=0)
    ref.one = torch.tensor(1.0, dtype=torch.float64)


@pytest.mark.parametrize("t", [99, 42, 1, 0])
def test_ddpm_step_matches_diffusers(schedule: NoiseSchedule, t: int) -> None:
    rng = np.random.default_rng(t)
    x_t = rng.standard_normal((2, 16, 3)) * 1.5  # (B, Tp, A); some x0 get clipped
    eps = rng.standard_normal((2, 16, 3))
    # diffusers draws the step noise with torch.randn on this generator; draw the same numbers.
    gen = torch.Generator().manual_seed(7)
    noise = torch.randn(2, 16, 3, generator=gen, dtype=torch.float64).numpy()
    ref = _ddpm()
    _in_float64(ref, schedule)
    expected = ref.step(
        torch.from_numpy(eps), t, torch.from_numpy(x_t), generator=torch.Generator().manual_seed(7)
    ).prev_sample.numpy()
    ours = ddpm_step(schedule, eps, t, x_t, clip_range=1.0, noise=noise)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=TOL)
    # float32 inputs (what the runtime feeds) stay close to the float64 reference
    ours32 = ddpm_step(schedule, eps.astype(np.float32), t, x_t.astype(np.float32), 1.0,
                       noise.astype(np.float32))  # fmt: skip
    np.testing.assert_allclose(ours32, expected, rtol=0, atol=2e-5)


def test_ddim_timesteps_match_diffusers() -> None:
    for n in (1, 3, 10, 16, 100):
        ref = _ddim()
        ref.set_timesteps(n)
        np.testing.assert_array_equal(ddim_timesteps(T, n), ref.timesteps.numpy())


def test_ddim_step_matches_diffusers_on_numpy_and_torch(schedule: NoiseSchedule) -> None:
    ref = _ddim()
    ref.set_timesteps(10)
    rng = np.random.default_rng(3)
    for t in ref.timesteps.tolist():
        x_t = (rng.standard_normal((2, 16, 3)) * 1.5).astype(np.float32)
        eps = rng.standard_normal((2, 16, 3)).astype(np.float32)
        expected = ref.step(torch.from_numpy(eps), t, torch.from_numpy(x_t)).prev_sample.numpy()
        ours_np = ddim_step(schedule, eps, t, t - 10, x_t, clip_range=1.0)
        ours_torch = ddim_step(
            schedule, torch.from_numpy(eps), t, t - 10, torch.from_numpy(x_t), 1.0
        )
        np.testing.assert_allclose(ours_np, expected, rtol=0, atol=TOL)
        np.testing.assert_allclose(ours_torch.numpy(), expected, rtol=0, atol=TOL)


def test_ddim_sample_matches_a_diffusers_loop(schedule: NoiseSchedule) -> None:
    """A whole 10-step rollout with a fixed made-up ε model, so errors cannot cancel per step."""
    weights = np.random.default_rng(5).standard_normal((3, 3)).astype(np.float32) * 0.5

    def eps_model(x: np.ndarray, t: int) -> np.ndarray:
        return np.tanh(x @ weights + t / 100.0)

    noise = np.random.default_rng(6).standard_normal((2, 16, 3)).astype(np.float32)
    ours = ddim_sample(eps_model, noise, schedule, num_inference_steps=10, clip_range=1.0)
    ref = _ddim()
    ref.set_timesteps(10)
    x = torch.from_numpy(noise)
    for t in ref.timesteps.tolist():
        eps = torch.from_numpy(eps_model(x.numpy(), t))
        x = ref.step(eps, t, x).prev_sample
    np.testing.assert_allclose(ours, x.numpy(), rtol=0, atol=1e-5)
    assert np.abs(ours).max() <= 1.0 + 1e-6  # the last step returns the clipped x0


def test_schedule_rejects_bad_betas() -> None:
    with pytest.raises(ValueError):
        NoiseSchedule(np.array([0.1, 1.0]))
    with pytest.raises(ValueError):
        ddim_timesteps(100, 101)
