"""What a training run is configured by: `TrainConfig` and the presets' optimizer settings
(`DEFAULTS`), the policy config a run builds from its dataset (`make_policy_config`), the
run folder's file names, and two helpers the loop and the report share (`policy_samples`,
`autocast`).

    cfg = TrainConfig(policy="act", data="caches/pick", out="runs/pick", preset="cpu")
    cfg.resolved().steps                         # → 6000, the ACT CPU preset's

Pure configuration: nothing here trains, reads a checkpoint or writes a file.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from apprentice.dataset import DatasetCache
from apprentice.dataset.samples import ActSamples, DiffusionSamples
from apprentice.errors import UserValueError
from apprentice.learning.backbone import CONVERT_COMMAND, IMAGENET_URL, TORCHVISION_WIDTH
from apprentice.learning.checkpoint import POLICIES, PolicyConfig

RUN_FORMAT = "apprentice.train_run/1"
RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"
LAST = Path("checkpoints") / "last"
Preset = Literal["paper", "cpu"]


@dataclass(frozen=True)
class OptimDefaults:
    lr: float
    weight_decay: float
    betas: tuple[float, float]
    batch_size: int
    warmup_steps: int
    schedule: Literal["constant", "cosine"]
    steps: int


# The papers' settings; the CPU presets train small models from scratch, which takes a
# larger learning rate for ACT and a smaller batch for Diffusion Policy. (ACT CPU preset at
# 2e-4 with warm-up and cosine decay: lower validation loss, 0.025 vs 0.028 after 6000 steps,
# but 1/10 vs 6/10 in closed loop on the transfer cube, so the constant rate stays.)
DEFAULTS: dict[tuple[str, str], OptimDefaults] = {
    ("act", "paper"): OptimDefaults(1e-5, 1e-4, (0.9, 0.999), 8, 0, "constant", 100_000),
    ("act", "cpu"): OptimDefaults(1e-4, 1e-4, (0.9, 0.999), 8, 0, "constant", 6_000),
    ("diffusion", "paper"): OptimDefaults(1e-4, 1e-6, (0.95, 0.999), 64, 500, "cosine", 100_000),
    ("diffusion", "cpu"): OptimDefaults(1e-4, 1e-6, (0.95, 0.999), 8, 100, "cosine", 5_000),
}


@dataclass(frozen=True)
class TrainConfig:
    policy: str  # "act" | "diffusion"
    data: str  # a dataset cache, or a folder of episode bags (cached into <out>/dataset)
    out: str  # the run folder
    preset: Preset = "paper"
    steps: int | None = None  # total optimizer steps (a resumed run continues to this)
    batch_size: int | None = None  # per process
    lr: float | None = None
    weight_decay: float | None = None
    ema_decay: float | None = None  # e.g. 0.999; None: no EMA
    grad_clip: float = 10.0
    seed: int = 0
    val_every: int = 500
    val_batches: int = 8
    log_every: int = 10
    checkpoint_every: int = 1000
    num_workers: int | None = None  # DataLoader workers; None: 0 on CPU, 4 on CUDA
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    amp: bool = True  # bf16 autocast on CUDA; CPU trains in float32 unless cpu_bf16
    # bf16 autocast on a CPU with native bf16 (AVX512-BF16 or AMX): ~2x at the paper ACT sizes
    # (docs/BENCHMARKS.md); off by default, the closed-loop results were trained in float32
    cpu_bf16: bool = False
    backbone_weights: str | None = None  # torchvision ResNet-18 as safetensors (backbone.py)
    dataset_config: str | None = None  # YAML (dataset/config.py) when `data` holds bags
    policy_overrides: dict[str, Any] = field(default_factory=dict)  # policy config fields

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise UserValueError(f"policy must be one of {sorted(POLICIES)}, got {self.policy!r}")
        if self.preset not in ("paper", "cpu"):
            raise UserValueError(f"preset must be 'paper' or 'cpu', got {self.preset!r}")
        for name in ("steps", "batch_size", "val_every", "log_every", "checkpoint_every"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserValueError(f"{name} must be >= 1, got {value}")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise UserValueError(f"ema_decay must be in (0, 1), got {self.ema_decay}")

    def resolved(self) -> TrainConfig:
        """None hyper-parameters replaced by the preset's defaults."""
        d = DEFAULTS[(self.policy, self.preset)]
        return dataclasses.replace(
            self,
            steps=self.steps or d.steps,
            batch_size=self.batch_size or d.batch_size,
            lr=self.lr if self.lr is not None else d.lr,
            weight_decay=self.weight_decay if self.weight_decay is not None else d.weight_decay,
        )


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    step: int
    train_loss: float
    val_loss: float | None
    interrupted: bool = False  # stopped by a signal, checkpointed at `step`


def make_policy_config(
    policy_type: str, preset: Preset, cache: DatasetCache, overrides: dict[str, Any]
) -> PolicyConfig:
    """The preset's config with the dataset's dimensions and image size."""
    config_cls = POLICIES[policy_type][0]
    s, a, n = len(cache.state_names), len(cache.action_names), len(cache.camera_names)
    if n < 1:
        raise ValueError(f"{cache.root}: the policies need at least one camera")
    base = config_cls.cpu_preset(s, a, n) if preset == "cpu" else config_cls(s, a, n)
    h, w = cache.image_hw
    changes: dict[str, Any] = {"image_hw": (h, w)}
    if policy_type == "diffusion":
        # The paper crops 84 of 96 pixels (87.5 %) at random while training.
        crop = (round(0.875 * h), round(0.875 * w))
        changes["crop_hw"] = crop if min(crop) >= 32 else None
    check_overrides(policy_type, overrides)
    try:
        return dataclasses.replace(base, **(changes | overrides))
    except ValueError as exc:  # the config's own checks (__post_init__)
        raise UserValueError(f"{policy_type} config: {exc}") from None


def backbone_notice(policy_type: str, pcfg: PolicyConfig, backbone_weights: str | None) -> str:
    """What a fresh run says on stderr about where its ResNet-18 starts: a WARNING for ACT at
    full width from random weights (the paper fine-tunes from ImageNet; with frozen BatchNorm
    at its initial identity a random trunk is not even normalized), a note otherwise."""
    if backbone_weights is not None:
        return f"backbone: torchvision ResNet-18 weights from {backbone_weights}"
    width = pcfg.backbone_width
    if width != TORCHVISION_WIDTH:
        return (f"note: backbone: random init (ResNet-18 at width {width}; torchvision's "
                f"ImageNet weights fit only backbone_width={TORCHVISION_WIDTH})")  # fmt: skip
    if policy_type == "act":
        return (
            "WARNING: backbone: ACT's ResNet-18 starts from RANDOM weights, not ImageNet as in "
            "the paper; convert torchvision's weights once "
            f"({CONVERT_COMMAND}, the .pth from {IMAGENET_URL}) and pass "
            "--backbone-weights resnet18.safetensors"
        )
    return "note: backbone: random init, as in the Diffusion Policy paper"


def check_overrides(policy_type: str, overrides: dict[str, Any]) -> None:
    """Refuses a key that is not a field of the policy's config, naming the nearest one."""
    names = [f.name for f in dataclasses.fields(POLICIES[policy_type][0])]
    for key in overrides:
        if key not in names:
            near = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {near[0]}?" if near else f"; fields: {', '.join(names)}"
            raise UserValueError(f"{policy_type} config has no field {key!r}{hint}")


def preset_image_hw(policy_type: str, preset: Preset) -> tuple[int, int]:
    """The image size a preset's policy is designed for (used when caching bags)."""
    config_cls = POLICIES[policy_type][0]
    cfg = config_cls.cpu_preset(1, 1) if preset == "cpu" else config_cls(1, 1)
    return cfg.image_hw


def policy_samples(
    policy_type: str, cache: DatasetCache, split: str, pcfg: PolicyConfig
) -> ActSamples | DiffusionSamples:
    """The torch dataset of one split, cut to the policy's chunk (ACT) or horizon (DP)."""
    if policy_type == "act":
        return ActSamples(cache, split, pcfg.chunk_size)
    return DiffusionSamples(cache, split, pcfg.n_obs_steps, pcfg.horizon)


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); elsewhere torch emulates
    it, slower than float32."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def uses_bf16(cfg: TrainConfig, device: torch.device) -> bool:
    """bf16 autocast for this run: `amp` on CUDA, `cpu_bf16` on a CPU that computes bf16
    natively (a UserValueError on one that does not: it would train slower, not faster)."""
    if device.type == "cuda":
        return cfg.amp
    if cfg.cpu_bf16 and not cpu_has_bf16():
        raise UserValueError(
            "--cpu-bf16: this CPU has no native bf16 (AVX512-BF16 or AMX); torch would emulate "
            "it, slower than float32: train without it"
        )
    return cfg.cpu_bf16


def autocast(device: torch.device, bf16: bool):
    """bf16 autocast when `bf16` (`uses_bf16`; no loss scaling needed for bf16)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
