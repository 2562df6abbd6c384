"""The hand-written ResNet-18: torchvision's key names and shapes, FrozenBatchNorm math, loading,
the .pth → safetensors converter, and what training says about where the backbone starts.

torchvision's real ImageNet file (resnet18-f37072fd.pth) cannot be downloaded here and torchvision
cannot be installed beside this CPU torch, so the converter is tested on files in torchvision's
format (its keys and shapes, written out below) filled with random values."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from apprentice.learning.act.config import ActConfig
from apprentice.learning.backbone import (
    CONVERT_COMMAND,
    IMAGENET_URL,
    FrozenBatchNorm2d,
    ResNet18,
    load_torchvision_weights,
)
from apprentice.learning.convert_backbone import main as convert_main
from apprentice.learning.diffusion.config import DiffusionConfig
from apprentice.learning.train_config import backbone_notice

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
    # a quarter-width net cannot take ResNet-18 weights: one line naming the first tensor
    with pytest.raises(
        ValueError,
        match=r"conv1.weight has shape \(64, 3, 7, 7\), the backbone's"
        r" is \(16, 3, 7, 7\).*backbone_width=64, not 16",
    ):
        load_torchvision_weights(ResNet18(16, "frozen_bn"), path)


def _torchvision_state(seed: int) -> dict[str, torch.Tensor]:
    """A state dict as torchvision.models.resnet18().state_dict() has it, random values."""
    g = torch.Generator().manual_seed(seed)
    return {
        k: torch.randn(s, generator=g) if s else torch.tensor(7)  # num_batches_tracked: int64
        for k, s in torchvision_resnet18_shapes().items()
    }


def test_convert_round_trip_gives_identical_tensors(tmp_path: Path, capsys) -> None:
    ref = _torchvision_state(2)
    src = tmp_path / "resnet18.pth"
    torch.save(ref, src)
    out = tmp_path / "resnet18.safetensors"
    assert convert_main([str(src), "--out", str(out)]) == 0
    assert f"--backbone-weights {out}" in capsys.readouterr().out
    backbone_keys = set(ResNet18(64, "frozen_bn").state_dict())
    assert set(load_file(str(out))) == backbone_keys  # no fc.*, no num_batches_tracked
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert meta["source"] == "resnet18.pth"
    assert meta["source_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    net = ResNet18(64, "frozen_bn")
    load_torchvision_weights(net, out)
    for key, value in net.state_dict().items():
        assert torch.equal(value, ref[key]), key
    with pytest.raises(ValueError, match="resnet18.pth: not a safetensors file .* convert"):
        load_torchvision_weights(net, src)  # --backbone-weights given the .pth itself
    # an existing file is kept unless asked
    assert convert_main([str(src), "--out", str(out)]) == 2
    assert "--overwrite replaces it" in capsys.readouterr().err
    assert convert_main([str(src), "--out", str(out), "--overwrite"]) == 0


def _renamed(state: dict, old: str, new: str) -> dict:
    return {(new if k == old else k): v for k, v in state.items()}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: _renamed(s, "layer2.0.downsample.0.weight", "layer2.0.shortcut.weight"),
         "unexpected layer2.0.shortcut.weight; missing layer2.0.downsample.0.weight"),
        (lambda s: s | {"layer3.1.conv2.weight": torch.zeros(256, 256, 1, 1)},
         "layer3.1.conv2.weight has shape (256, 256, 1, 1), the backbone's is (256, 256, 3, 3)"),
        (lambda s: {k: v for k, v in s.items() if k != "bn1.running_var"},
         "missing bn1.running_var"),
        (lambda s: s | {"layer1.0.bn1.weight": torch.ones(64, dtype=torch.int64)},
         "layer1.0.bn1.weight is torch.int64, not floating point"),
    ],
)  # fmt: skip
def test_convert_names_a_wrong_key_or_shape(tmp_path: Path, capsys, change, message) -> None:
    src = tmp_path / "resnet18.pth"
    torch.save(change(_torchvision_state(3)), src)
    out = tmp_path / "resnet18.safetensors"
    assert convert_main([str(src), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"apprentice convert-backbone: error: {src}: ")
    assert message in err and err.count("\n") == 1
    assert not out.exists() and not list(tmp_path.glob("*.tmp"))


def test_convert_checks_the_hash_in_torchvisions_file_name(tmp_path: Path, capsys) -> None:
    state = _torchvision_state(4)
    plain = tmp_path / "plain.pth"
    torch.save(state, plain)
    digest = hashlib.sha256(plain.read_bytes()).hexdigest()
    named = tmp_path / f"resnet18-{digest[:8]}.pth"  # as torch.hub names its downloads
    plain.rename(named)
    assert convert_main([str(named), "--out", str(tmp_path / "ok.safetensors")]) == 0
    wrong = "0" * 8 if not digest.startswith("0" * 8) else "1" * 8
    damaged = named.rename(tmp_path / f"resnet18-{wrong}.pth")
    assert convert_main([str(damaged), "--out", str(tmp_path / "no.safetensors")]) == 2
    assert f"SHA-256 starts {digest[:8]}, its name says {wrong}" in capsys.readouterr().err


RAN: list[str] = []


class _Payload:
    """Unpickling this would run `RAN.append` (stands for any code a .pth could carry)."""

    def __reduce__(self):
        return (RAN.append, ("code from the file ran",))


def test_convert_runs_no_code_from_the_file(tmp_path: Path, capsys) -> None:
    src = tmp_path / "resnet18.pth"
    torch.save(_torchvision_state(5) | {"extra": _Payload()}, src)
    assert convert_main([str(src), "--out", str(tmp_path / "x.safetensors")]) == 2
    assert f"{src}: cannot be read weights-only: it holds " in capsys.readouterr().err
    assert RAN == []


def test_convert_from_torchvision_needs_it(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "torchvision", None)  # as where it is not installed
    assert convert_main(["--torchvision", "--out", str(tmp_path / "x.safetensors")]) == 2
    assert f"not installed: download {IMAGENET_URL}" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # neither a file nor --torchvision
        convert_main(["--out", str(tmp_path / "x.safetensors")])
    assert exc.value.code == 2


def test_training_says_where_the_backbone_starts() -> None:
    act_paper, act_cpu = ActConfig(2, 2), ActConfig.cpu_preset(2, 2)
    dp_paper, dp_cpu = DiffusionConfig(2, 2), DiffusionConfig.cpu_preset(2, 2)
    loud = backbone_notice("act", act_paper, None)  # the paper fine-tunes from ImageNet
    assert loud.startswith("WARNING: ") and "RANDOM" in loud
    assert CONVERT_COMMAND in loud and IMAGENET_URL in loud and "--backbone-weights" in loud
    for policy, cfg in (("act", act_cpu), ("diffusion", dp_cpu)):  # width 16: none to load
        assert backbone_notice(policy, cfg, None).startswith(
            "note: backbone: random init (ResNet-18 at width 16; torchvision's ImageNet "
            "weights fit only backbone_width=64)"
        )
    assert backbone_notice("diffusion", dp_paper, None) == (
        "note: backbone: random init, as in the Diffusion Policy paper"
    )
    assert backbone_notice("act", act_paper, "r18.safetensors").endswith("from r18.safetensors")
