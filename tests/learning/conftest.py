"""Tiny policy configs and synthetic batches for the learning tests (CPU, 1 thread)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from apprentice.dataset import DatasetCache, EpisodeBag, build_cache, infer_config
from apprentice.dataset.synthetic import SyntheticEpisode, write_episode
from apprentice.learning.act.config import ActConfig
from apprentice.learning.diffusion.config import DiffusionConfig
from apprentice.learning.normalize import NormStats

# Other processes share this machine's two cores.
torch.set_num_threads(1)

STATE_DIM = ACTION_DIM = 4
N_CAMERAS = 2


@pytest.fixture(scope="session")
def cache(tmp_path_factory) -> DatasetCache:
    """A training cache of three 1 s synthetic episodes at 32x40 (the training-loop tests)."""
    root = tmp_path_factory.mktemp("train_cache")
    for i in range(3):
        write_episode(root / "bags" / f"ep{i}", SyntheticEpisode(duration_s=1.0), seed=i)
    cfg = infer_config(EpisodeBag(root / "bags" / "ep0").topics, image_hw=(32, 40))
    return build_cache(root / "bags", cfg, root / "cache", progress=False)


@pytest.fixture
def act_cfg() -> ActConfig:
    return ActConfig(
        state_dim=STATE_DIM, action_dim=ACTION_DIM, n_cameras=N_CAMERAS, image_hw=(32, 48),
        chunk_size=6, d_model=32, n_heads=4, dim_feedforward=64, n_encoder_layers=2,
        n_decoder_layers=2, n_vae_encoder_layers=1, latent_dim=8, dropout=0.0,
        backbone_width=8, backbone_norm="group_norm",
    )  # fmt: skip


@pytest.fixture
def diffusion_cfg() -> DiffusionConfig:
    return DiffusionConfig(
        state_dim=STATE_DIM, action_dim=ACTION_DIM, n_cameras=N_CAMERAS, image_hw=(36, 40),
        crop_hw=(32, 32), n_obs_steps=2, horizon=8, n_action_steps=4, backbone_width=8,
        n_keypoints=8, image_feature_dim=16, down_dims=(16, 32), kernel_size=3, n_groups=4,
        step_embed_dim=16, num_train_timesteps=100, num_inference_steps=10,
    )  # fmt: skip


def _fitted_stats(rng: np.random.Generator, dim: int, mode: str) -> NormStats:
    """Stats fitted on made-up joint data with distinct per-joint ranges (rad)."""
    centre = rng.uniform(-1.0, 1.0, dim)
    spread = rng.uniform(0.2, 1.5, dim)
    return NormStats.fit(centre + spread * rng.standard_normal((500, dim)), mode)


def _act_batch(
    cfg: ActConfig, batch: int, seed: int
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Actions that depend on the state and on the images' mean brightness, so there is
    something to learn from both inputs."""
    g = torch.Generator().manual_seed(seed)
    h, w = cfg.image_hw
    state = torch.randn(batch, cfg.state_dim, generator=g)  # (B, S)
    images = torch.rand(batch, cfg.n_cameras, 3, h, w, generator=g)  # (B, N, 3, H, W)
    ramp = torch.linspace(0.0, 1.0, cfg.chunk_size)[None, :, None]  # (1, K, 1)
    brightness = images.mean(dim=(1, 2, 3, 4))[:, None, None]  # (B, 1, 1)
    actions = state[:, None, : cfg.action_dim] + ramp * (brightness - 0.5) * 4  # (B, K, A)
    return {"state": state, "images": images}, actions


def _diffusion_batch(
    cfg: DiffusionConfig, batch: int, seed: int
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    h, w = cfg.image_hw
    to = cfg.n_obs_steps
    state = torch.rand(batch, to, cfg.state_dim, generator=g) * 2 - 1  # (B, To, S)
    images = torch.rand(batch, to, cfg.n_cameras, 3, h, w, generator=g)  # (B, To, N, 3, H, W)
    ramp = torch.linspace(-0.5, 0.5, cfg.horizon)[None, :, None]  # (1, Tp, 1)
    actions = state[:, -1:, : cfg.action_dim] * 0.5 + ramp  # (B, Tp, A)
    return {"state": state, "images": images}, actions


# Helpers are handed out as fixtures: test modules never import from a conftest.
@pytest.fixture
def fitted_stats():
    return _fitted_stats


@pytest.fixture
def act_batch():
    return _act_batch


@pytest.fixture
def diffusion_batch():
    return _diffusion_batch
