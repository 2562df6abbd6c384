"""Where `apprentice train` starts ACT's ResNet-18: the paper preset without weights warns on
stderr; with a converted torchvision file (.pth → convert_backbone → safetensors) the run's
checkpoint holds that file's tensors, and a resumed run no longer needs the file. One or two
optimizer steps each: a small transformer, the full ResNet-18 on 36×40 images."""

from __future__ import annotations

import math

import pytest
import torch

from apprentice.dataset.synthetic import SyntheticEpisode, write_episode
from apprentice.learning.backbone import CONVERT_COMMAND, ResNet18
from apprentice.learning.checkpoint import load_policy
from apprentice.learning.convert_backbone import main as convert_main
from apprentice.learning.train_cli import main
from apprentice.learning.train_report import read_metrics

# the paper preset's transformer cut down; its backbone (ResNet-18, frozen BatchNorm) kept
SMALL = ["d_model=32", "n_heads=4", "dim_feedforward=64", "n_encoder_layers=1",
         "n_decoder_layers=1", "n_vae_encoder_layers=1", "latent_dim=8",
         "chunk_size=10"]  # fmt: skip


@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    root = tmp_path_factory.mktemp("backbone_bags")
    for i in range(2):
        write_episode(root / f"ep{i}", SyntheticEpisode(duration_s=0.6, compressed=True), seed=i)
    (root / "dataset.yaml").write_text(
        "image_hw: [36, 40]\nval_fraction: 0.0\n"
        "state: [{topic: /follower/joint_states}]\n"
        "action: [{topic: /follower/commands}]\n"
        "cameras: [{name: top, topic: /cameras/top/image_raw/compressed}]\n"
    )
    return root


def _train_paper_act(bags, run, *extra: str) -> None:
    args = ["train", "--policy", "act", "--preset", "paper", "--data", str(bags), "--out",
            str(run), "--steps", "2", "--until", "1", "--batch-size", "2", "--dataset-config",
            str(bags / "dataset.yaml"), "--no-progress", *extra]  # fmt: skip
    for kv in SMALL:
        args += ["--set", kv]
    assert main(args) == 0


def test_paper_preset_without_weights_warns(bags, tmp_path, capsys) -> None:
    _train_paper_act(bags, tmp_path / "run")
    warnings = [line for line in capsys.readouterr().err.splitlines() if "WARNING" in line]
    assert len(warnings) == 1
    assert warnings[0].startswith("WARNING: backbone: ACT's ResNet-18 starts from RANDOM")
    assert CONVERT_COMMAND in warnings[0] and "--backbone-weights" in warnings[0]


def test_paper_preset_trains_from_converted_weights(bags, tmp_path, capsys) -> None:
    # torchvision's keys (the backbone's and the fc head): convolutions as initialized, norm
    # statistics and affine parameters made up (randn convolutions would overflow 17 layers)
    torch.manual_seed(0)
    ref = ResNet18().state_dict()
    g = torch.Generator().manual_seed(0)
    for key, value in ref.items():
        if value.dim() == 1:
            ref[key] = torch.rand(value.shape, generator=g) + 0.5
    ref |= {"fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}
    torch.save(ref, tmp_path / "resnet18.pth")
    weights = tmp_path / "resnet18.safetensors"
    assert convert_main([str(tmp_path / "resnet18.pth"), "--out", str(weights)]) == 0
    run = tmp_path / "run"
    _train_paper_act(bags, run, "--backbone-weights", str(weights))
    err = capsys.readouterr().err
    assert f"backbone: torchvision ResNet-18 weights from {weights}" in err
    assert "WARNING" not in err
    assert all(math.isfinite(row["loss"]) for row in read_metrics(run))
    backbone = load_policy(run / "checkpoints" / "last" / "model").backbone.state_dict()
    for key, value in backbone.items():
        if key.endswith(("running_mean", "running_var")):  # frozen: one step leaves them
            assert torch.equal(value, ref[key]), key
    # resuming takes the backbone from the checkpoint: the weights file is no longer needed
    weights.unlink()
    assert main(["train", "--out", str(run), "--resume", "--no-progress"]) == 0
    assert [row["step"] for row in read_metrics(run)][-1] == 2
    assert "backbone" not in capsys.readouterr().err  # said once, when the run started
