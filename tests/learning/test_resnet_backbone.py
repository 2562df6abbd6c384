"""The hand-written ResNet-18: torchvision's key names and shapes, FrozenBatchNorm math, loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from apprentice.learning.backbone import FrozenBatchNorm2d, ResNet18, load_torchvision_weights

BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def torchvision_resnet18_shapes() -> dict[str, tuple[int, ...]]:
    """torchvision.models.resnet18().state_dict() shapes, written out from its architecture."""
    shapes: dict[str, tuple[int, ...]] = {"conv1.weight": (64, 3, 7, 7)}
    shapes |= {f"bn1.{k}": (64,) if k != "num_batches_tracked" else () for k in BN_KEYS}
    c_in = 64
    for layer, c in enumerate((64, 128, 256, 512), start=1):
        for block in (0, 1):
            p = f"layer{layer}.{block}"
            shapes[f"{p}.conv1.weight"] = (c, c_in if block == 0 else c, 3, 3)
            shapes[f"{p}.conv2.weight"] = (c, c, 3, 3)
            for bn in ("bn1", "bn2"):
                shapes |= {
                    f"{p}.{bn}.{k}": (c,) if k != "num_batches_tracked" else () for k in BN_KEYS
                }
            if block == 0 and layer > 1:
                shapes[f"{p}.downsample.0.weight"] = (c, c_in, 1, 1)
                shapes |= {
                    f"{p}.downsample.1.{k}": (c,) if k != "num_batches_tracked" else ()
                    for k in BN_KEYS
                }
        c_in = c
    shapes |= {"fc.weight": (1000, 512), "fc.bias": (1000,)}
    return shapes


def test_keys_and_shapes_match_torchvision_resnet18() -> None:
    ref = torchvision_resnet18_shapes()
    expected = {k: v for k, v in ref.items() if not k.startswith("fc.")}
    expected = {k: v for k, v in expected.items() if not k.endswith("num_batches_tracked")}
    ours = {k: tuple(v.shape) for k, v in ResNet18(64, "frozen_bn").state_dict().items()}
    assert ours == expected
    # 11,689,512 is torchvision's parameter count with the 513,000-parameter fc head.
    n_params = sum(v.numel() for k, v in ResNet18(64, "frozen_bn").state_dict().items()
                   if not k.endswith(("running_mean", "running_var")))  # fmt: skip
    assert n_params == 11_689_512 - 513_000


@pytest.mark.parametrize("stride", [32, 16, 8])
@pytest.mark.parametrize("hw", [(32, 32), (96, 128), (84, 84), (97, 45)])
def test_feature_hw_matches_the_real_output(hw: tuple[int, int], stride: int) -> None:
    net = ResNet18(4, "group_norm", output_stride=stride).eval()
    with torch.no_grad():
        out = net(torch.rand(1, 3, *hw))
    assert tuple(out.shape) == (1, 32, *ResNet18.feature_hw(*hw, stride))
    if hw == (96, 128):
        assert out.shape[-2:] == (96 // stride, 128 // stride)


def test_output_stride_keeps_the_weights_and_keys() -> None:
    shapes = {k: v.shape for k, v in ResNet18(16, "group_norm").state_dict().items()}
    for stride in (16, 8):
        other = ResNet18(16, "group_norm", output_stride=stride).state_dict()
        assert {k: v.shape for k, v in other.items()} == shapes
    with pytest.raises(ValueError, match="output_stride"):
        ResNet18(16, "group_norm", output_stride=4)


def test_frozen_batchnorm_equals_batchnorm_in_eval_mode() -> None:
    g = torch.Generator().manual_seed(0)
    bn = torch.nn.BatchNorm2d(6).eval()
    state = {
        "weight": torch.rand(6, generator=g) + 0.5,
        "bias": torch.randn(6, generator=g),
        "running_mean": torch.randn(6, generator=g),
        "running_var": torch.rand(6, generator=g) + 0.1,
        "num_batches_tracked": torch.tensor(100),
    }
    bn.load_state_dict(state)
    frozen = FrozenBatchNorm2d(6)
    frozen.load_state_dict(state)  # drops num_batches_tracked like torchvision dicts need
    x = torch.randn(3, 6, 5, 7, generator=g)
    torch.testing.assert_close(frozen(x), bn(x), rtol=0, atol=1e-6)


def test_load_torchvision_weights_from_safetensors(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(1)
    ref = {
        k: torch.randn(s, generator=g) if s else torch.tensor(0)
        for k, s in torchvision_resnet18_shapes().items()
    }
    path = tmp_path / "resnet18.safetensors"
    save_file(ref, str(path))
    frozen = ResNet18(64, "frozen_bn")
    load_torchvision_weights(frozen, path)
    torch.testing.assert_close(frozen.layer3[0].downsample[1].running_var,
                               ref["layer3.0.downsample.1.running_var"])  # fmt: skip
    grouped = ResNet18(64, "group_norm")  # keeps convs and affine params, drops running stats
    load_torchvision_weights(grouped, path)
    torch.testing.assert_close(grouped.layer4[1].conv2.weight, ref["layer4.1.conv2.weight"])
    torch.testing.assert_close(grouped.bn1.bias, ref["bn1.bias"])
    with pytest.raises(RuntimeError):  # a quarter-width net cannot take ResNet-18 weights
        load_torchvision_weights(ResNet18(16, "frozen_bn"), path)
