"""ResNet-18 trunk with torchvision's state-dict key names, and its normalization choices.

torchvision cannot be installed beside the CPU torch used here, so the network is written out.
Key names (`conv1.weight`, `bn1.running_mean`, `layer2.0.downsample.1.weight`, ...) match
`torchvision.models.resnet18`, so torchvision's ImageNet file, converted once to safetensors,
loads with `load_torchvision_weights` (the trainer's `--backbone-weights`; nothing unpickled):

    apprentice convert-backbone resnet18-f37072fd.pth --out resnet18.safetensors
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from apprentice.errors import UserValueError

BackboneNorm = Literal["frozen_bn", "group_norm"]
BACKBONE_NORMS: tuple[str, ...] = ("frozen_bn", "group_norm")
# ImageNet channel stats (RGB); images enter the policies in [0, 1] and are standardized in-graph.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Per camera ((mean R, G, B), (std R, G, B)) that standardize its [0, 1] images in-graph,
# x' = (x - mean) / std; a config's `image_stats` (None: the policy's default for every camera).
ImageStats = tuple[tuple[tuple[float, float, float], tuple[float, float, float]], ...]


def check_image_stats(stats: object, n_cameras: int) -> ImageStats | None:
    """`stats` (None, or nested lists as JSON gives them) as nested tuples, validated."""
    if stats is None:
        return None
    try:
        out = tuple(
            (tuple(float(v) for v in mean), tuple(float(v) for v in std)) for mean, std in stats
        )
    except (TypeError, ValueError):
        raise ValueError(
            f"image_stats must be ((mean RGB), (std RGB)) per camera, got {stats!r}"
        ) from None
    if len(out) != n_cameras or any(len(m) != 3 or len(s) != 3 for m, s in out):
        raise ValueError(f"image_stats needs ((3 means), (3 stds)) for each of {n_cameras} cameras")
    if not all(v > 0 for _, s in out for v in s):
        raise ValueError("every image_stats std must be > 0")
    return out


def image_stats_tensors(
    stats: ImageStats | None, n_cameras: int, default: tuple[tuple[float, ...], tuple[float, ...]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std), each (N, 3, 1, 1), to broadcast over images (..., N, 3, H, W)."""
    pairs = stats if stats is not None else (default,) * n_cameras
    mean = torch.tensor([m for m, _ in pairs], dtype=torch.float32)[:, :, None, None]
    std = torch.tensor([s for _, s in pairs], dtype=torch.float32)[:, :, None, None]
    return mean, std


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters (DETR / ACT).

    Batch statistics of small robot batches are noisy, and ACT fine-tunes from ImageNet weights
    with them frozen. Keeps torchvision's four keys; `num_batches_tracked` is dropped on load.
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()  # (C,)
        shift = self.bias - self.running_mean * scale  # (C,)
        return x * scale[None, :, None, None] + shift[None, :, None, None]  # (B, C, H, W)


def make_norm(kind: BackboneNorm) -> Callable[[int], nn.Module]:
    """frozen_bn: for ImageNet-initialized backbones (ACT). group_norm: for training from
    scratch (Diffusion Policy replaces every BatchNorm with GroupNorm, C/16 groups, because
    BatchNorm's running stats interact badly with the EMA of weights and small batches)."""
    if kind == "frozen_bn":
        return FrozenBatchNorm2d
    if kind == "group_norm":
        return lambda c: nn.GroupNorm(max(1, c // 16), c)
    raise ValueError(f"backbone norm must be one of {BACKBONE_NORMS}, got {kind!r}")


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, norm: Callable[[int], nn.Module]):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = norm(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), norm(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)  # (B, C_out, H', W')
        out = self.relu(self.bn1(self.conv1(x)))  # (B, C_out, H', W')
        out = self.bn2(self.conv2(out))  # (B, C_out, H', W')
        return self.relu(out + identity)


OUTPUT_STRIDES: tuple[int, ...] = (8, 16, 32)


class ResNet18(nn.Module):
    """ResNet-18 without avgpool/fc: (B, 3, H, W) → (B, 8·width, ⌈H/s⌉, ⌈W/s⌉), s = 32.

    `width` 64 is the real ResNet-18 (11.2 M parameters); 16 or 32 are light CPU variants
    with the same keys and depth (their weights cannot come from torchvision).
    `output_stride` 16 or 8 keeps layer4 (and layer3) at their input resolution (stride 1,
    same weights and keys): small images then still give a grid of features fine enough to
    say where a 4-pixel object is (96×128 → 12×16 cells at stride 8 instead of 3×4).
    """

    def __init__(self, width: int = 64, norm: BackboneNorm = "frozen_bn", output_stride: int = 32):
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        if output_stride not in OUTPUT_STRIDES:
            raise ValueError(f"output_stride must be one of {OUTPUT_STRIDES}, got {output_stride}")
        # layer2..4 each halve the map until the stride is reached (conv1 + maxpool give 4)
        halvings = {32: 3, 16: 2, 8: 1}[output_stride]
        make = make_norm(norm)
        self.width = width
        self.out_channels = 8 * width
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = make(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        widths = (width, 2 * width, 4 * width, 8 * width)
        c_in = width
        for i, c_out in enumerate(widths):
            stride = 2 if 1 <= i <= halvings else 1
            layer = nn.Sequential(
                BasicBlock(c_in, c_out, stride, make), BasicBlock(c_out, c_out, 1, make)
            )
            self.add_module(f"layer{i + 1}", layer)
            c_in = c_out

    @staticmethod
    def feature_hw(height: int, width: int, output_stride: int = 32) -> tuple[int, int]:
        """Output map size: log2(stride) stride-2 stages (conv1, maxpool, layer2-4 as far as
        the stride goes), each ⌊(n-1)/2⌋+1."""
        for _ in range(output_stride.bit_length() - 1):
            height, width = (height - 1) // 2 + 1, (width - 1) // 2 + 1
        return height, width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, w, H/4, W/4)
        x = self.layer1(x)  # (B, w, H/4, W/4)
        x = self.layer2(x)  # (B, 2w, H/8, W/8)
        x = self.layer3(x)  # (B, 4w, H/16, W/16) at stride ≥ 16, else H/8
        return self.layer4(x)  # (B, 8w, H/s, W/s)


# torchvision's ResNet-18 width: the only one its (ImageNet) weights fit
TORCHVISION_WIDTH = 64
# ResNet18_Weights.IMAGENET1K_V1, the file torchvision keeps in ~/.cache/torch/hub/checkpoints/
IMAGENET_URL = "https://download.pytorch.org/models/resnet18-f37072fd.pth"
CONVERT_COMMAND = (
    "apprentice convert-backbone resnet18-f37072fd.pth "
    "--out resnet18.safetensors"
)
_STATS = ("running_mean", "running_var")


def torchvision_to_backbone(
    state: Mapping[str, torch.Tensor], backbone: ResNet18, source: str
) -> dict[str, torch.Tensor]:
    """The entries of a torchvision resnet18 state dict that `backbone` takes, checked by name
    and shape against it; `source` (a file name) starts every error message.

    Dropped: the classifier head (`fc.weight`, `fc.bias`), BatchNorm's `num_batches_tracked`,
    and with GroupNorm the BatchNorm running stats, which have no counterpart there (only the
    convolutions and the affine norm parameters carry over). Any other key that the backbone
    lacks, a key it needs that is missing, or a shape that differs raises `UserValueError`
    naming the key.
    """
    own = backbone.state_dict()
    # where torchvision has a BatchNorm2d, this backbone has a FrozenBatchNorm2d or GroupNorm
    norms = [
        n for n, m in backbone.named_modules() if isinstance(m, (FrozenBatchNorm2d, nn.GroupNorm))
    ]
    droppable = {"fc.weight", "fc.bias"} | {f"{p}.num_batches_tracked" for p in norms}
    droppable |= {f"{p}.{s}" for p in norms for s in _STATS}
    unexpected = [k for k in state if k not in own and k not in droppable]
    missing = [k for k in own if k not in state]
    if unexpected or missing:
        parts = [f"unexpected {_names(unexpected)}"] if unexpected else []
        parts += [f"missing {_names(missing)}"] if missing else []
        raise UserValueError(
            f"{source}: not a torchvision ResNet-18 state dict: {'; '.join(parts)}"
        )
    for key, want in own.items():
        got = state[key]
        if tuple(got.shape) != tuple(want.shape):
            hint = ""
            if backbone.width != TORCHVISION_WIDTH:
                hint = (f"; torchvision's ResNet-18 weights fit only backbone_width="
                        f"{TORCHVISION_WIDTH}, not {backbone.width}")  # fmt: skip
            raise UserValueError(
                f"{source}: {key} has shape {tuple(got.shape)}, the backbone's is "
                f"{tuple(want.shape)}{hint}"
            )
        if not got.is_floating_point():
            raise UserValueError(f"{source}: {key} is {got.dtype}, not floating point")
    return {k: state[k] for k in own}


def _names(keys: list[str], most: int = 4) -> str:
    more = f" and {len(keys) - most} more" if len(keys) > most else ""
    return ", ".join(keys[:most]) + more


def load_torchvision_weights(backbone: ResNet18, path: str | Path) -> None:
    """Loads a torchvision resnet18 state dict saved as safetensors (`convert_backbone`) into
    `backbone`, checked by `torchvision_to_backbone` (a wrong file is a one-line error)."""
    try:
        state = load_file(str(path))
    except SafetensorError as exc:  # most likely torchvision's .pth itself
        raise UserValueError(
            f"{path}: not a safetensors file ({exc}); convert torchvision's .pth first: "
            f"{CONVERT_COMMAND}"
        ) from None
    backbone.load_state_dict(torchvision_to_backbone(state, backbone, str(path)), strict=True)
