"""ACT: training reduces the loss, padding is ignored, inference is deterministic with z = 0,
and every decoder layer reaches the output."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from apprentice.learning.act.config import ActConfig
from apprentice.learning.act.model import ActPolicy, Dropout, sine_embedding_2d


def _eval_loss(policy: ActPolicy, obs, actions, pad=None) -> dict[str, float]:
    policy.eval()
    with torch.no_grad():
        return policy.compute_loss(obs, actions, pad)[1]


def test_a_few_steps_reduce_the_loss_on_a_fixed_batch(act_cfg, act_batch, fitted_stats) -> None:
    torch.manual_seed(0)
    policy = ActPolicy(act_cfg)
    rng = np.random.default_rng(0)
    policy.normalizer.set_stats("state", fitted_stats(rng, act_cfg.state_dim, "mean_std"))
    obs, actions = act_batch(act_cfg, batch=8, seed=1)
    before = _eval_loss(policy, obs, actions)
    optim = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    policy.train()
    for _ in range(40):
        loss, _ = policy.compute_loss(obs, actions)
        optim.zero_grad()
        loss.backward()
        optim.step()
    after = _eval_loss(policy, obs, actions)
    assert after["loss"] < 0.5 * before["loss"], (before, after)
    assert after["l1"] < 0.8 * before["l1"], (before, after)


def test_padded_steps_do_not_affect_the_loss(act_cfg, act_batch) -> None:
    torch.manual_seed(0)
    policy = ActPolicy(act_cfg)
    obs, actions = act_batch(act_cfg, batch=4, seed=2)
    pad = torch.zeros(4, act_cfg.chunk_size, dtype=torch.bool)
    pad[:, -2:] = True  # the episode ended two steps before the chunk does
    garbage = actions.clone()
    garbage[:, -2:] = 1e3
    a = _eval_loss(policy, obs, actions, pad)
    b = _eval_loss(policy, obs, garbage, pad)
    assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
    assert _eval_loss(policy, obs, garbage)["l1"] > 10 * a["l1"]  # unmasked, it would count


def test_inference_uses_z_zero_and_is_deterministic(act_cfg, act_batch) -> None:
    policy = ActPolicy(act_cfg).eval()
    obs, _ = act_batch(act_cfg, batch=3, seed=3)
    with torch.no_grad():
        out1 = policy(obs["state"], obs["images"])
        out2 = policy(obs["state"], obs["images"])
        z0 = policy.decode(obs["state"], obs["images"], torch.zeros(3, act_cfg.latent_dim))
        z1 = policy.decode(obs["state"], obs["images"], torch.ones(3, act_cfg.latent_dim))
    assert out1.shape == (3, act_cfg.chunk_size, act_cfg.action_dim)
    torch.testing.assert_close(out1, out2, rtol=0, atol=0)
    torch.testing.assert_close(out1, z0, rtol=0, atol=0)
    assert (out1 - z1).abs().max() > 1e-4  # z does reach the output


def test_every_decoder_layer_reaches_the_output(act_cfg, act_batch) -> None:
    """The original ACT code reads the first decoder layer's output only; here the last one is
    read, so changing the last layer's weights must change the actions."""
    policy = ActPolicy(act_cfg).eval()
    obs, _ = act_batch(act_cfg, batch=2, seed=4)
    with torch.no_grad():
        before = policy(obs["state"], obs["images"])
        last_ff = policy.decoder.layers[-1].ff[-1].weight  # (D, dim_ff)
        last_ff.add_(torch.randn(last_ff.shape, generator=torch.Generator().manual_seed(0)))
        after = policy(obs["state"], obs["images"])
    assert (before - after).abs().max() > 1e-3


def test_cameras_are_distinguishable(act_cfg, act_batch) -> None:
    """Swapping two camera images changes the output (per-camera embedding)."""
    policy = ActPolicy(act_cfg).eval()
    with torch.no_grad():
        policy.camera_embed.normal_()
        obs, _ = act_batch(act_cfg, batch=2, seed=5)
        out = policy(obs["state"], obs["images"])
        swapped = policy(obs["state"], obs["images"].flip(1))
    assert (out - swapped).abs().max() > 1e-4


def test_sine_embedding_2d_is_unique_per_cell() -> None:
    pos = sine_embedding_2d(32, 3, 4)  # (12, 32)
    assert pos.shape == (12, 32)
    assert torch.cdist(pos, pos).add(torch.eye(12) * 10).min() > 1e-3


def test_config_validation() -> None:
    ok = ActConfig(state_dim=2, action_dim=2)
    assert ok.chunk_size == 100 and ok.latent_dim == 32 and ok.kl_weight == 10.0
    for bad in ({"d_model": 30}, {"n_heads": 3}, {"chunk_size": 0}, {"image_hw": (16, 64)},
                {"backbone_norm": "batch_norm"}, {"dropout": 1.0},
                {"backbone_stride": 4}):  # fmt: skip
        with pytest.raises(ValueError):
            dataclasses.replace(ok, **bad)
    preset = ActConfig.cpu_preset(6, 6)
    assert preset.image_hw == (96, 128) and preset.n_encoder_layers == 2
    assert preset.backbone_stride == 16  # 6x8 image tokens at 96x128


def test_cpu_dropout_drops_p_of_the_elements_and_keeps_the_mean() -> None:
    drop = Dropout(0.1).train()
    x = torch.ones(400_000)
    torch.manual_seed(0)
    y = drop(x)
    dropped = float((y == 0).float().mean())
    assert abs(dropped - 26 / 256) < 0.003  # p rounded to 1/256
    assert abs(float(y.mean()) - 1.0) < 0.005  # survivors scaled by 1 / (1 - p)
    torch.manual_seed(0)
    assert torch.equal(drop(x), y)  # seeded like any torch op
    a, b = drop(x[:1000].reshape(10, 100)), drop(x[:1000].reshape(10, 100))
    assert not torch.equal(a, b)  # a fresh mask per call
    x.requires_grad_(True)
    drop(x).sum().backward()
    assert torch.allclose(x.grad.unique(), torch.tensor([0.0, 256 / 230]))  # same mask, scaled
    assert abs(float((x.grad == 0).float().mean()) - 26 / 256) < 0.003
    drop.eval()
    assert drop(x) is x
    assert Dropout(0.0).train()(x) is x
