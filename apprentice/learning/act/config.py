"""ACT hyper-parameters. Defaults are the paper's (ALOHA); `cpu_preset` is a small variant that
trains at a few steps per second on a laptop CPU."""

from __future__ import annotations

from dataclasses import dataclass

from apprentice.learning.backbone import (
    BACKBONE_NORMS,
    OUTPUT_STRIDES,
    BackboneNorm,
    ImageStats,
    check_image_stats,
)
from apprentice.learning.normalize import NORM_MODES, NormMode


@dataclass(frozen=True)
class ActConfig:
    state_dim: int  # joint positions in (rad / m)
    action_dim: int  # joint position targets out
    n_cameras: int = 1
    image_hw: tuple[int, int] = (480, 640)  # (H, W) pixels every camera is resized to
    chunk_size: int = 100  # actions predicted per inference (k in the paper)
    d_model: int = 512
    n_heads: int = 8
    dim_feedforward: int = 3200
    n_encoder_layers: int = 4
    n_decoder_layers: int = 7
    n_vae_encoder_layers: int = 4
    latent_dim: int = 32
    dropout: float = 0.1
    kl_weight: float = 10.0
    backbone_width: int = 64  # 64 = ResNet-18; 16/32 = light variants
    # frozen_bn with ImageNet weights (the paper); group_norm when training from scratch.
    backbone_norm: BackboneNorm = "frozen_bn"
    # 32: the paper's ResNet-18 (480×640 → 15×20 image tokens). Small images need 8 or 16.
    backbone_stride: int = 32
    state_norm: NormMode = "mean_std"
    action_norm: NormMode = "mean_std"
    # None: ImageNet's stats for every camera (what the ResNet was pretrained with). A LeRobot
    # policy brings its dataset's per camera (apprentice import-policy).
    image_stats: ImageStats | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_hw", tuple(int(v) for v in self.image_hw))
        object.__setattr__(self, "image_stats", check_image_stats(self.image_stats, self.n_cameras))
        positive = (
            "state_dim", "action_dim", "n_cameras", "chunk_size", "d_model", "n_heads",
            "dim_feedforward", "n_encoder_layers", "n_decoder_layers", "n_vae_encoder_layers",
            "latent_dim", "backbone_width",
        )  # fmt: skip
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if len(self.image_hw) != 2 or min(self.image_hw) < 32:
            raise ValueError(f"image_hw must be (H, W) with both >= 32, got {self.image_hw}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} not divisible by n_heads {self.n_heads}")
        if self.d_model % 4:
            # the 2D sine embedding gives d_model/2 channels per axis, in sin/cos pairs
            raise ValueError(f"d_model must be a multiple of 4, got {self.d_model}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.kl_weight < 0:
            raise ValueError(f"kl_weight must be >= 0, got {self.kl_weight}")
        if self.backbone_norm not in BACKBONE_NORMS:
            raise ValueError(f"backbone_norm must be one of {BACKBONE_NORMS}")
        if self.backbone_stride not in OUTPUT_STRIDES:
            raise ValueError(f"backbone_stride must be one of {OUTPUT_STRIDES}")
        if self.state_norm not in NORM_MODES or self.action_norm not in NORM_MODES:
            raise ValueError(f"state_norm and action_norm must be in {NORM_MODES}")

    @classmethod
    def cpu_preset(cls, state_dim: int, action_dim: int, n_cameras: int = 1) -> ActConfig:
        """d_model 128, 2+2 layers, 96x128 images, quarter-width ResNet-18 from scratch at
        output stride 16 (6x8 image tokens: at stride 32, 3x4 tokens could not place a 4-pixel
        cube; measured on the transfer cube, the same budget went from 0/10 to 5/10 with the
        idle-start fix; d_model 256 trained at half the steps per second)."""
        return cls(
            state_dim=state_dim, action_dim=action_dim, n_cameras=n_cameras, image_hw=(96, 128),
            d_model=128, n_heads=8, dim_feedforward=512, n_encoder_layers=2,
            n_decoder_layers=2, n_vae_encoder_layers=2, backbone_width=16,
            backbone_norm="group_norm", backbone_stride=16,
        )  # fmt: skip
