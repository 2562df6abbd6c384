"""Policy folder → adapter: card checks against a robot, refusals, RTC-guided diffusion."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from apprentice.learning.act.config import ActConfig
from apprentice.learning.act.model import ActPolicy
from apprentice.learning.diffusion.config import DiffusionConfig
from apprentice.learning.diffusion.model import DiffusionPolicy
from apprentice.learning.export import export_onnx
from apprentice.learning.normalize import NormStats
from apprentice.learning.runtime import load_onnx_policy
from apprentice.policy_server.adapters import ActAdapter, DiffusionAdapter, open_policy
from apprentice.policy_server.card import (
    PolicyRefused,
    RobotConfig,
    check_robot,
    load_card,
)

JOINTS = ["j0", "j1", "j2"]
torch.set_num_threads(1)  # other processes share this machine's cores


def _stats(rng: np.random.Generator, mode: str) -> NormStats:
    data = rng.uniform(-1, 1, 3) + rng.uniform(0.2, 1, 3) * rng.normal(size=(300, 3))  # (N, 3)
    return NormStats.fit(data, mode)


@pytest.fixture(scope="module")
def act_dir(tmp_path_factory):
    torch.manual_seed(0)
    cfg = ActConfig(
        state_dim=3, action_dim=3, n_cameras=1, image_hw=(32, 40), chunk_size=5, d_model=16,
        n_heads=2, dim_feedforward=32, n_encoder_layers=1, n_decoder_layers=1,
        n_vae_encoder_layers=1, latent_dim=4, dropout=0.0, backbone_width=8,
        backbone_norm="group_norm",
    )  # fmt: skip
    policy = ActPolicy(cfg)
    rng = np.random.default_rng(0)
    policy.normalizer.set_stats("state", _stats(rng, "mean_std"))
    policy.normalizer.set_stats("action", _stats(rng, "mean_std"))
    folder = tmp_path_factory.mktemp("act") / "act"
    export_onnx(policy, folder, joint_names=JOINTS, camera_names=["top"], control_rate_hz=25.0,
                data_index_hash="h")  # fmt: skip
    return folder


@pytest.fixture(scope="module")
def diffusion_dir(tmp_path_factory):
    torch.manual_seed(0)
    cfg = DiffusionConfig(
        state_dim=3, action_dim=3, n_cameras=1, image_hw=(36, 40), crop_hw=(32, 32),
        n_obs_steps=2, horizon=8, n_action_steps=4, backbone_width=8, n_keypoints=8,
        image_feature_dim=16, down_dims=(16, 32), kernel_size=3, n_groups=4, step_embed_dim=16,
        num_train_timesteps=100, num_inference_steps=10,
    )  # fmt: skip
    policy = DiffusionPolicy(cfg)
    rng = np.random.default_rng(1)
    policy.normalizer.set_stats("state", _stats(rng, "min_max"))
    policy.normalizer.set_stats("action", _stats(rng, "min_max"))
    folder = tmp_path_factory.mktemp("dp") / "dp"
    export_onnx(policy, folder, joint_names=JOINTS, camera_names=["top"], control_rate_hz=10.0,
                data_index_hash="h")  # fmt: skip
    return folder


def test_card_checked_against_the_robot(act_dir) -> None:
    card = load_card(act_dir)
    fits = RobotConfig(tuple(JOINTS), ("top",), 100.0)  # 4 x 25 Hz
    assert check_robot(card, fits) == []
    bad = RobotConfig(("j0", "j2", "j1"), ("top",), 60.0)
    problems = " | ".join(check_robot(card, bad))
    assert "joint names differ" in problems and "not a whole multiple" in problems
    other_cam = RobotConfig(tuple(JOINTS), ("wrist",), 25.0)
    assert "cameras differ" in " ".join(check_robot(card, other_cam))
    assert "outside" in " ".join(check_robot(card, RobotConfig(tuple(JOINTS), fits.cameras, 400)))


def test_broken_folders_are_refused(act_dir, tmp_path) -> None:
    with pytest.raises(PolicyRefused, match="cannot read"):
        load_card(tmp_path)
    (tmp_path / "policy_card.json").write_text("{not json")
    with pytest.raises(PolicyRefused, match="cannot read"):
        load_card(tmp_path)
    card = json.loads((act_dir / "policy_card.json").read_text())
    (tmp_path / "policy_card.json").write_text(json.dumps(card))  # no policy.onnx beside it
    with pytest.raises(PolicyRefused, match="missing or empty"):
        load_card(tmp_path)
    (tmp_path / "policy.onnx").write_bytes(b"\x08\x07garbage")
    with pytest.raises(PolicyRefused, match="policy.onnx: sha256 .* changed since export"):
        open_policy(tmp_path, "cpu")
    del card["files"]  # an older export: nothing to verify, onnxruntime refuses the graph
    (tmp_path / "policy_card.json").write_text(json.dumps(card))
    with pytest.raises(PolicyRefused, match="cannot load the policy graphs"):
        open_policy(tmp_path, "cpu")
    with pytest.raises(PolicyRefused, match="unknown execution provider"):
        open_policy(act_dir, "opencl")


@pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers(), reason="this onnxruntime has CUDA"
)
@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider'")
def test_requested_gpu_without_one_refuses_but_auto_runs_on_cpu(act_dir) -> None:
    with pytest.raises(PolicyRefused, match="only CPU"):
        open_policy(act_dir, "cuda")
    assert open_policy(act_dir, "auto").provider == "CPUExecutionProvider"


def test_act_adapter_returns_the_runtime_chunk(act_dir) -> None:
    adapter = open_policy(act_dir, "cpu")
    assert isinstance(adapter, ActAdapter) and adapter.horizon == 5 and adapter.dt == 1 / 25
    rng = np.random.default_rng(2)
    state, images = rng.normal(size=(1, 3)), rng.uniform(size=(1, 1, 3, 32, 40))
    expect = load_onnx_policy(act_dir).predict(state, images)[0]
    np.testing.assert_array_equal(adapter.predict(state, images), expect)


def test_diffusion_adapter_follows_rtc_guidance(diffusion_dir) -> None:
    adapter = open_policy(diffusion_dir, "cpu")
    assert isinstance(adapter, DiffusionAdapter)
    assert adapter.horizon == 7  # horizon 8 minus action_start 1
    rng = np.random.default_rng(3)
    state, images = rng.normal(size=(2, 3)), rng.uniform(size=(2, 1, 3, 36, 40))
    stats = adapter.runner.action_stats
    prefix = stats.unnormalize(rng.uniform(-0.8, 0.8, (7, 3)))  # raw, inside the clip range
    weights = np.array([1.0, 1.0, 1.0, 0.6, 0.2, 0.0, 0.0])
    adapter.rng = np.random.default_rng(4)
    guided = adapter.predict(state, images, prefix, weights)
    adapter.rng = np.random.default_rng(4)
    free = adapter.predict(state, images)
    assert guided.shape == free.shape == (7, 3)
    np.testing.assert_allclose(
        guided[:3], prefix[:3], rtol=0, atol=1e-5 * np.abs(stats.scale).max()
    )
    assert np.abs(free[:3] - prefix[:3]).max() > 1e-2  # without guidance it goes elsewhere
    # soft rows land between their free value and the prefix, nearer the prefix when weighted
    d_guided = np.abs(guided[3] - prefix[3]).max()
    assert d_guided < np.abs(free[3] - prefix[3]).max()
