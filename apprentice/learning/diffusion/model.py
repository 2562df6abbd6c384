"""Diffusion Policy (CNN): per-camera ResNet-18 + spatial softmax encoders, a 1D temporal U-Net
with FiLM conditioning, DDPM training, DDIM sampling.

Chi et al. 2023, "Diffusion Policy: Visuomotor Policy Learning via Action Diffusion".
Deployment is split in two ONNX graphs so the image encoders run once per inference instead of
once per denoising step: `encode_obs` (obs → conditioning vector) and `forward`, the denoiser
ε̂ = f(noisy actions, t, cond). The DDIM loop between them is numpy (`scheduler.py`).

Time axes: observations cover steps [-To+1 .. 0]; the predicted horizon covers [-To+1 .. Tp-To],
so the executable actions are `horizon[To-1 : To-1+Ta]` (the paper's indexing).
Units: `encode_obs`/`forward`/`sample` work in normalized units (see `normalize.py`);
`compute_loss`/`predict_action` take raw observations and actions.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from apprentice.learning.backbone import ResNet18, image_stats_tensors
from apprentice.learning.diffusion.config import DiffusionConfig
from apprentice.learning.diffusion.scheduler import NoiseSchedule, ddim_sample
from apprentice.learning.normalizer_module import Normalizer


class SpatialSoftmax(nn.Module):
    """Keypoints as softmax-weighted image coordinates (Levine et al. 2016, robomimic):
    (B, C, H, W) → (B, 2K) expected (x, y) in [-1, 1]."""

    def __init__(self, in_channels: int, height: int, width: int, n_keypoints: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, n_keypoints, 1)
        ys, xs = torch.meshgrid(
            torch.linspace(-1.0, 1.0, height), torch.linspace(-1.0, 1.0, width), indexing="ij"
        )
        self.register_buffer("grid", torch.stack((xs, ys), dim=-1).reshape(-1, 2), False)  # (HW, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attention = self.proj(x).flatten(2).softmax(dim=-1)  # (B, K, HW)
        return (attention @ self.grid).flatten(1)  # (B, 2K)


class ImageEncoder(nn.Module):
    """One camera: standardized (B, 3, h, w) → (B, F). By default a GroupNorm ResNet-18
    trained from scratch (the paper)."""

    def __init__(self, cfg: DiffusionConfig):
        super().__init__()
        self.backbone = ResNet18(cfg.backbone_width, cfg.backbone_norm)
        fh, fw = ResNet18.feature_hw(*cfg.input_hw)
        self.pool = SpatialSoftmax(self.backbone.out_channels, fh, fw, cfg.n_keypoints)
        self.out = nn.Linear(2 * cfg.n_keypoints, cfg.image_feature_dim)
        self.act = nn.ReLU() if cfg.image_feature_relu else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.out(self.pool(self.backbone(x))))  # (B, F)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of integer diffusion steps (B,) → (B, dim)."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) * (-math.log(10000.0) / (half - 1)))
    angle = t.to(torch.float32)[:, None] * freqs[None, :]  # (B, dim/2)
    return torch.cat((angle.sin(), angle.cos()), dim=-1)  # (B, dim)


class Conv1dBlock(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel_size: int, n_groups: int):
        super().__init__(
            nn.Conv1d(c_in, c_out, kernel_size, padding=kernel_size // 2),
            nn.GroupNorm(n_groups, c_out),
            nn.Mish(),
        )


class FiLMResBlock(nn.Module):
    """Two conv blocks; the conditioning vector sets a per-channel scale and bias between them."""

    def __init__(self, c_in: int, c_out: int, cond_dim: int, kernel_size: int, n_groups: int):
        super().__init__()
        self.block1 = Conv1dBlock(c_in, c_out, kernel_size, n_groups)
        self.block2 = Conv1dBlock(c_out, c_out, kernel_size, n_groups)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * c_out))
        self.residual = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        out = self.block1(x)  # (B, C_out, T)
        scale, bias = self.film(cond)[..., None].chunk(2, dim=1)  # (B, C_out, 1) each
        out = self.block2(scale * out + bias)  # (B, C_out, T)
        return out + self.residual(x)  # (B, C_out, T)


class ConditionalUnet1D(nn.Module):
    """Chi et al.'s temporal U-Net over the action horizon, FiLM-conditioned on (t, obs)."""

    def __init__(self, cfg: DiffusionConfig, global_cond_dim: int):
        super().__init__()
        self.step_embed_dim = cfg.step_embed_dim
        dsed, k, g = cfg.step_embed_dim, cfg.kernel_size, cfg.n_groups
        self.step_mlp = nn.Sequential(
            nn.Linear(dsed, 4 * dsed), nn.Mish(), nn.Linear(4 * dsed, dsed)
        )
        cond_dim = dsed + global_cond_dim
        dims = (cfg.action_dim, *cfg.down_dims)
        n_levels = len(cfg.down_dims)
        self.down = nn.ModuleList()
        for i in range(n_levels):
            last = i == n_levels - 1
            self.down.append(
                nn.ModuleList(
                    (
                        FiLMResBlock(dims[i], dims[i + 1], cond_dim, k, g),
                        FiLMResBlock(dims[i + 1], dims[i + 1], cond_dim, k, g),
                        nn.Identity() if last else nn.Conv1d(dims[i + 1], dims[i + 1], 3, 2, 1),
                    )
                )
            )
        mid = cfg.down_dims[-1]
        self.mid = nn.ModuleList(
            (FiLMResBlock(mid, mid, cond_dim, k, g), FiLMResBlock(mid, mid, cond_dim, k, g))
        )
        self.up = nn.ModuleList()
        # The up path pairs with levels n-1..1; level 0's skip is unused, as in the original.
        for i in reversed(range(1, n_levels)):
            c_in, c_out = cfg.down_dims[i - 1], cfg.down_dims[i]
            self.up.append(
                nn.ModuleList(
                    (
                        FiLMResBlock(2 * c_out, c_in, cond_dim, k, g),
                        FiLMResBlock(c_in, c_in, cond_dim, k, g),
                        nn.ConvTranspose1d(c_in, c_in, 4, 2, 1),
                    )
                )
            )
        self.final = nn.Sequential(
            Conv1dBlock(cfg.down_dims[0], cfg.down_dims[0], k, g),
            nn.Conv1d(cfg.down_dims[0], cfg.action_dim, 1),
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor, global_cond: torch.Tensor) -> torch.Tensor:
        """x (B, Tp, A), t (B,) integer steps, global_cond (B, G) → ε̂ (B, Tp, A)."""
        cond = torch.cat(
            (self.step_mlp(timestep_embedding(t, self.step_embed_dim)), global_cond), -1
        )
        x = x.transpose(1, 2)  # (B, A, Tp)
        skips = []
        for res1, res2, downsample in self.down:
            x = res2(res1(x, cond), cond)  # (B, C_i, T_i)
            skips.append(x)
            x = downsample(x)  # (B, C_i, T_i / 2), last level unchanged
        for res in self.mid:
            x = res(x, cond)  # (B, C_last, T_last)
        for res1, res2, upsample in self.up:
            x = torch.cat((x, skips.pop()), dim=1)  # (B, 2·C_i, T_i)
            x = upsample(res2(res1(x, cond), cond))  # (B, C_{i-1}, 2·T_i)
        return self.final(x).transpose(1, 2)  # (B, Tp, A)


class DiffusionPolicy(nn.Module):
    policy_type: ClassVar[str] = "diffusion"

    def __init__(self, cfg: DiffusionConfig):
        super().__init__()
        self.cfg = cfg
        self.normalizer = Normalizer(
            {"state": (cfg.state_dim, cfg.state_norm), "action": (cfg.action_dim, cfg.action_norm)}
        )
        # One encoder per camera (the paper's default): views differ too much to share weights.
        self.image_encoders = nn.ModuleList(ImageEncoder(cfg) for _ in range(cfg.n_cameras))
        # Default: [0, 1] → [-1, 1], the paper's image normalization.
        mean, std = image_stats_tensors(cfg.image_stats, cfg.n_cameras, ((0.5,) * 3, (0.5,) * 3))
        self.register_buffer("image_mean", mean, False)  # (N, 3, 1, 1)
        self.register_buffer("image_std", std, False)  # (N, 3, 1, 1)
        self.cond_dim = cfg.n_obs_steps * (cfg.n_cameras * cfg.image_feature_dim + cfg.state_dim)
        self.unet = ConditionalUnet1D(cfg, self.cond_dim)
        self.schedule = NoiseSchedule.squared_cosine(cfg.num_train_timesteps)
        alphas_cumprod = torch.tensor(self.schedule.alphas_cumprod, dtype=torch.float32)
        self.register_buffer("alphas_cumprod", alphas_cumprod, False)  # (T,)

    def crop(self, images: torch.Tensor) -> torch.Tensor:
        """(M, 3, H, W) → (M, 3, h, w): a random crop per image when training, center when not."""
        if self.cfg.crop_hw is None:
            return images
        (h, w), (big_h, big_w) = self.cfg.crop_hw, images.shape[-2:]
        if not self.training:
            top, left = (big_h - h) // 2, (big_w - w) // 2
            return images[..., top : top + h, left : left + w]
        tops = torch.randint(0, big_h - h + 1, (images.shape[0],)).tolist()
        lefts = torch.randint(0, big_w - w + 1, (images.shape[0],)).tolist()
        crops = [
            img[:, y : y + h, x : x + w] for img, y, x in zip(images, tops, lefts, strict=True)
        ]
        return torch.stack(crops)

    def encode_obs(self, state: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Deployed graph 1: normalized state (B, To, S), images (B, To, N, 3, H, W) in [0, 1]
        → conditioning (B, To·(N·F + S))."""
        b, to = state.shape[:2]
        images = (images - self.image_mean) / self.image_std  # (B, To, N, 3, H, W)
        feats = [
            encoder(self.crop(images[:, :, i].flatten(0, 1))).reshape(b, to, -1)  # (B, To, F)
            for i, encoder in enumerate(self.image_encoders)
        ]
        return torch.cat((*feats, state), dim=-1).flatten(1)  # (B, To·(N·F + S))

    def forward(
        self, noisy_actions: torch.Tensor, t: torch.Tensor, cond: torch.Tensor
    ) -> torch.Tensor:
        """Deployed graph 2, the denoiser: x_t (B, Tp, A), t (B,) int64, cond (B, G)
        → ε̂ (B, Tp, A)."""
        return self.unet(noisy_actions, t, cond)

    def compute_loss(
        self,
        obs: dict[str, torch.Tensor],
        actions: torch.Tensor,
        noise: torch.Tensor | None = None,
        timesteps: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Raw obs {"state": (B, To, S), "images": (B, To, N, 3, H, W)}, raw actions (B, Tp, A)
        → MSE between the true and predicted noise. `noise`/`timesteps` default to fresh
        random draws; pass them to evaluate the loss deterministically."""
        cond = self.encode_obs(self.normalizer.normalize("state", obs["state"]), obs["images"])
        x0 = self.normalizer.normalize("action", actions)  # (B, Tp, A)
        if noise is None:
            noise = torch.randn_like(x0)  # (B, Tp, A)
        if timesteps is None:
            timesteps = torch.randint(
                0, self.cfg.num_train_timesteps, (x0.shape[0],), device=x0.device
            )
        ab = self.alphas_cumprod[timesteps][:, None, None].to(x0.dtype)  # (B, 1, 1)
        x_t = ab.sqrt() * x0 + (1.0 - ab).sqrt() * noise  # (B, Tp, A), q(x_t | x_0)
        loss = F.mse_loss(self(x_t, timesteps, cond), noise)
        return loss, {"loss": float(loss.detach())}

    @torch.no_grad()
    def sample(self, cond: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """DDIM from x_T = noise (B, Tp, A) → normalized actions (B, Tp, A)."""
        t_batch = torch.empty(noise.shape[0], dtype=torch.int64, device=noise.device)

        def denoise(x: torch.Tensor, t: int) -> torch.Tensor:
            return self(x, t_batch.fill_(t), cond)  # (B, Tp, A)

        cfg = self.cfg
        return ddim_sample(
            denoise, noise, self.schedule, cfg.num_inference_steps, cfg.clip_sample_range
        )

    @torch.no_grad()
    def predict_action(
        self, obs: dict[str, torch.Tensor], generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Raw obs → the Ta executable raw actions (B, Ta, A), in the joints' units."""
        cfg = self.cfg
        cond = self.encode_obs(self.normalizer.normalize("state", obs["state"]), obs["images"])
        noise = torch.randn(
            cond.shape[0], cfg.horizon, cfg.action_dim, generator=generator, device=cond.device
        )  # (B, Tp, A)
        actions = self.normalizer.unnormalize("action", self.sample(cond, noise))  # (B, Tp, A)
        start = cfg.n_obs_steps - 1
        return actions[:, start : start + cfg.n_action_steps]  # (B, Ta, A)
