"""Diffusion Policy hyper-parameters. Defaults follow the paper's CNN-based image policy;
`cpu_preset` is a small variant for laptop CPUs."""

from __future__ import annotations

from dataclasses import dataclass

from apprentice.learning.backbone import (
    BACKBONE_NORMS,
    BackboneNorm,
    ImageStats,
    check_image_stats,
)
from apprentice.learning.normalize import NORM_MODES, NormMode

BETA_SCHEDULES: tuple[str, ...] = ("squaredcos_cap_v2",)
PREDICTION_TYPES: tuple[str, ...] = ("epsilon",)


@dataclass(frozen=True)
class DiffusionConfig:
    state_dim: int
    action_dim: int
    n_cameras: int = 1
    image_hw: tuple[int, int] = (96, 96)  # (H, W) pixels every camera is resized to
    # Random crop when training, center crop at inference (the paper: 84x84 of 96x96).
    crop_hw: tuple[int, int] | None = (84, 84)
    n_obs_steps: int = 2  # observation history To
    horizon: int = 16  # predicted steps Tp, starting at the oldest observation
    n_action_steps: int = 8  # executed steps Ta, starting at the newest observation
    backbone_width: int = 64  # 64 = ResNet-18 (GroupNorm); 16/32 = light variants
    n_keypoints: int = 32  # spatial-softmax keypoints per camera
    image_feature_dim: int = 64  # per camera per step, after the keypoint projection
    down_dims: tuple[int, ...] = (256, 512, 1024)
    kernel_size: int = 5
    n_groups: int = 8  # GroupNorm groups in the U-Net
    step_embed_dim: int = 256  # diffusion timestep embedding
    num_train_timesteps: int = 100
    num_inference_steps: int = 10  # DDIM steps
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: str = "epsilon"
    clip_sample_range: float = 1.0  # predicted x0 is clipped to ±this (normalized units)
    state_norm: NormMode = "min_max"
    action_norm: NormMode = "min_max"
    # The options below default to the paper's encoder; LeRobot's differs in each of them
    # (apprentice import-policy sets them). frozen_bn: torchvision BatchNorm in eval mode.
    backbone_norm: BackboneNorm = "group_norm"
    # None: mean 0.5, std 0.5 for every camera, i.e. [0, 1] → [-1, 1] (the paper's).
    image_stats: ImageStats | None = None
    image_feature_relu: bool = False  # a ReLU after the keypoint projection (LeRobot has one)

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_hw", tuple(int(v) for v in self.image_hw))
        object.__setattr__(self, "image_stats", check_image_stats(self.image_stats, self.n_cameras))
        if self.backbone_norm not in BACKBONE_NORMS:
            raise ValueError(f"backbone_norm must be one of {BACKBONE_NORMS}")
        if self.crop_hw is not None:
            object.__setattr__(self, "crop_hw", tuple(int(v) for v in self.crop_hw))
        object.__setattr__(self, "down_dims", tuple(int(v) for v in self.down_dims))
        positive = (
            "state_dim", "action_dim", "n_cameras", "n_obs_steps", "horizon", "n_action_steps",
            "backbone_width", "n_keypoints", "image_feature_dim", "kernel_size", "n_groups",
            "step_embed_dim", "num_train_timesteps", "num_inference_steps",
        )  # fmt: skip
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if len(self.image_hw) != 2 or min(self.image_hw) < 32:
            raise ValueError(f"image_hw must be (H, W) with both >= 32, got {self.image_hw}")
        if self.crop_hw is not None and (
            len(self.crop_hw) != 2
            or min(self.crop_hw) < 32
            or any(c > s for c, s in zip(self.crop_hw, self.image_hw, strict=True))
        ):
            raise ValueError(f"crop_hw {self.crop_hw} must be >= 32 and fit in {self.image_hw}")
        if self.n_obs_steps - 1 + self.n_action_steps > self.horizon:
            raise ValueError("n_obs_steps - 1 + n_action_steps must be <= horizon")
        if not self.down_dims or any(d < 1 or d % self.n_groups for d in self.down_dims):
            raise ValueError(f"down_dims {self.down_dims} must be multiples of {self.n_groups}")
        if self.horizon % 2 ** (len(self.down_dims) - 1):
            # each U-Net level but the last halves the time axis and the up path doubles it
            raise ValueError(f"horizon must be divisible by {2 ** (len(self.down_dims) - 1)}")
        if self.kernel_size % 2 == 0:
            raise ValueError("kernel_size must be odd (same-length convolutions)")
        if self.step_embed_dim % 2 or self.step_embed_dim < 4:
            raise ValueError("step_embed_dim must be even and >= 4 (sin/cos halves)")
        if self.num_inference_steps > self.num_train_timesteps:
            raise ValueError("num_inference_steps must be <= num_train_timesteps")
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"beta_schedule must be one of {BETA_SCHEDULES}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}")
        if self.clip_sample_range <= 0:
            raise ValueError("clip_sample_range must be > 0")
        if self.state_norm not in NORM_MODES or self.action_norm not in NORM_MODES:
            raise ValueError(f"state_norm and action_norm must be in {NORM_MODES}")

    @property
    def input_hw(self) -> tuple[int, int]:
        """Size the image encoder sees."""
        return self.crop_hw if self.crop_hw is not None else self.image_hw

    @classmethod
    def cpu_preset(cls, state_dim: int, action_dim: int, n_cameras: int = 1) -> DiffusionConfig:
        """Quarter-width ResNet-18 encoders and a (64, 128, 256) U-Net."""
        return cls(
            state_dim=state_dim, action_dim=action_dim, n_cameras=n_cameras,
            backbone_width=16, down_dims=(64, 128, 256), step_embed_dim=64,
        )  # fmt: skip
