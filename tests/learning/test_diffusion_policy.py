"""Diffusion Policy: training reduces the loss, sampling shapes and horizon indexing, crops."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from apprentice.learning.diffusion.config import DiffusionConfig
from apprentice.learning.diffusion.model import DiffusionPolicy
from apprentice.learning.normalize import NormStats


def test_a_few_steps_reduce_the_loss_on_a_fixed_batch(diffusion_cfg, diffusion_batch) -> None:
    torch.manual_seed(0)
    policy = DiffusionPolicy(diffusion_cfg)
    obs, actions = diffusion_batch(diffusion_cfg, batch=8, seed=1)
    policy.normalizer.set_stats("action", NormStats.fit(actions.numpy(), "min_max"))
    g = torch.Generator().manual_seed(2)
    # one fixed set of noises and steps for the before/after evaluation
    noise = torch.randn(4, *actions.shape, generator=g)  # (4, B, Tp, A)
    steps = torch.randint(0, 100, (4, actions.shape[0]), generator=g)  # (4, B)

    def eval_loss() -> float:
        policy.eval()
        with torch.no_grad():
            return float(np.mean([policy.compute_loss(obs, actions, n, t)[1]["loss"]
                                  for n, t in zip(noise, steps, strict=True)]))  # fmt: skip

    before = eval_loss()
    optim = torch.optim.AdamW(policy.parameters(), lr=2e-3)
    policy.train()
    for _ in range(40):
        loss, _ = policy.compute_loss(obs, actions)
        optim.zero_grad()
        loss.backward()
        optim.step()
    after = eval_loss()
    assert after < 0.8 * before, (before, after)


def test_predict_action_returns_the_executable_slice(diffusion_cfg, diffusion_batch) -> None:
    policy = DiffusionPolicy(diffusion_cfg).eval()
    policy.normalizer.set_stats(
        "action", NormStats("min_max", np.full(4, 0.5), np.array([1.0, 2.0, 3.0, 4.0]))
    )
    obs, _ = diffusion_batch(diffusion_cfg, batch=3, seed=3)
    full = policy.sample(
        policy.encode_obs(policy.normalizer.normalize("state", obs["state"]), obs["images"]),
        torch.randn(3, 8, 4, generator=torch.Generator().manual_seed(9)),
    )
    assert full.shape == (3, 8, 4) and full.abs().max() <= 1.0 + 1e-6  # clipped x0
    out = policy.predict_action(obs, generator=torch.Generator().manual_seed(9))
    assert out.shape == (3, diffusion_cfg.n_action_steps, 4)
    expected = policy.normalizer.unnormalize("action", full)[:, 1:5]  # To-1 .. To-1+Ta
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    # raw actions live in [offset - scale, offset + scale]
    assert (out - 0.5).abs().le(torch.tensor([1.0, 2.0, 3.0, 4.0]) + 1e-5).all()


def test_random_crop_in_training_center_crop_in_eval(diffusion_cfg) -> None:
    policy = DiffusionPolicy(diffusion_cfg)
    images = torch.rand(16, 3, 36, 40)
    policy.eval()
    torch.testing.assert_close(policy.crop(images), images[..., 2:34, 4:36])
    policy.train()
    crops = policy.crop(images)
    assert crops.shape == (16, 3, 32, 32)
    centered = sum(torch.equal(c, i[:, 2:34, 4:36]) for c, i in zip(crops, images, strict=True))
    assert centered < 16  # 45 possible offsets; all 16 central would mean no randomness


def test_config_validation() -> None:
    ok = DiffusionConfig(state_dim=2, action_dim=2)
    assert (ok.n_obs_steps, ok.horizon, ok.n_action_steps) == (2, 16, 8)
    assert (ok.num_train_timesteps, ok.num_inference_steps) == (100, 10)
    for bad in ({"horizon": 10}, {"n_action_steps": 16}, {"crop_hw": (100, 84)},
                {"down_dims": (30, 64)}, {"kernel_size": 4}, {"beta_schedule": "linear"},
                {"num_inference_steps": 101}):  # fmt: skip
        with pytest.raises(ValueError):
            dataclasses.replace(ok, **bad)
