"""ONNX export: onnxruntime agrees with PyTorch eager, the numpy DDIM rollout agrees with the
torch one, the runtime maps raw observations to raw actions, and the card carries the contract."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch

from apprentice.learning.act.model import ActPolicy
from apprentice.learning.diffusion.model import DiffusionPolicy
from apprentice.learning.export import export_onnx, make_card
from apprentice.learning.runtime import ActOnnxRunner, DiffusionOnnxRunner, load_onnx_policy

TOL = 1e-4  # max abs, normalized units
JOINTS = ["shoulder_pan", "shoulder_lift", "elbow_flex", "gripper"]
CAMERAS = ["top", "wrist"]


@pytest.fixture
def act_export(tmp_path, act_cfg, fitted_stats):
    torch.manual_seed(0)
    policy = ActPolicy(act_cfg)
    rng = np.random.default_rng(0)
    policy.normalizer.set_stats("state", fitted_stats(rng, act_cfg.state_dim, "mean_std"))
    policy.normalizer.set_stats("action", fitted_stats(rng, act_cfg.action_dim, "mean_std"))
    policy.train()  # export must switch to eval itself, and switch back
    folder = tmp_path / "act"
    card = export_onnx(policy, folder, joint_names=JOINTS, camera_names=CAMERAS,
                       control_rate_hz=30.0, data_index_hash="sha256:abc123")  # fmt: skip
    assert policy.training
    return policy.eval(), card, folder


@pytest.fixture
def diffusion_export(tmp_path, diffusion_cfg, fitted_stats):
    torch.manual_seed(0)
    policy = DiffusionPolicy(diffusion_cfg)
    rng = np.random.default_rng(1)
    policy.normalizer.set_stats("state", fitted_stats(rng, diffusion_cfg.state_dim, "min_max"))
    policy.normalizer.set_stats("action", fitted_stats(rng, diffusion_cfg.action_dim, "min_max"))
    folder = tmp_path / "diffusion"
    card = export_onnx(policy, folder, joint_names=JOINTS, camera_names=CAMERAS,
                       control_rate_hz=10.0, data_index_hash="sha256:def456")  # fmt: skip
    return policy.eval(), card, folder


def _max_diff(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


def test_act_onnx_matches_eager(act_export, act_batch) -> None:
    policy, card, folder = act_export
    onnx.checker.check_model(str(folder / "policy.onnx"))
    assert sorted(p.name for p in folder.iterdir()) == ["policy.onnx", "policy_card.json"]
    runner = load_onnx_policy(folder)
    assert isinstance(runner, ActOnnxRunner)
    for batch in (1, 3):  # the batch axis is dynamic
        obs, _ = act_batch(policy.cfg, batch=batch, seed=batch)
        with torch.no_grad():
            eager = policy(obs["state"], obs["images"])
        ort_out = runner.run_normalized(obs["state"].numpy(), obs["images"].numpy())
        assert ort_out.shape == (batch, policy.cfg.chunk_size, len(JOINTS))
        assert _max_diff(ort_out, eager) <= TOL
    # raw in, raw out: normalization from the card equals the policy's own
    raw_state = obs["state"].numpy() * 0.7 + 0.2
    eager_raw = policy.predict_action(
        {"state": torch.from_numpy(raw_state), "images": obs["images"]}
    )
    ort_raw = runner.predict(raw_state, obs["images"].numpy())
    scale = policy.normalizer.stats("action").scale
    assert _max_diff(ort_raw / scale, eager_raw.numpy() / scale) <= TOL


def test_diffusion_onnx_graphs_match_eager(diffusion_export, diffusion_batch) -> None:
    policy, card, folder = diffusion_export
    for name in ("policy.onnx", "obs_encoder.onnx"):
        onnx.checker.check_model(str(folder / name))
    runner = load_onnx_policy(folder)
    assert isinstance(runner, DiffusionOnnxRunner)
    obs, actions = diffusion_batch(policy.cfg, batch=3, seed=4)
    state_n = policy.normalizer.normalize("state", obs["state"])
    with torch.no_grad():
        cond = policy.encode_obs(state_n, obs["images"])
    cond_ort = runner.encode(state_n.numpy(), obs["images"].numpy())
    assert _max_diff(cond_ort, cond) <= TOL
    x = torch.randn(3, policy.cfg.horizon, policy.cfg.action_dim)
    for t in (99, 50, 0):
        with torch.no_grad():
            eps = policy(x, torch.full((3,), t), cond)
        assert _max_diff(runner.denoise(x.numpy(), t, cond.numpy()), eps) <= TOL


def test_numpy_ddim_rollout_matches_torch(diffusion_export, diffusion_batch) -> None:
    policy, card, folder = diffusion_export
    runner = load_onnx_policy(folder)
    obs, _ = diffusion_batch(policy.cfg, batch=2, seed=5)
    with torch.no_grad():
        cond = policy.encode_obs(policy.normalizer.normalize("state", obs["state"]), obs["images"])
    noise = torch.randn(2, policy.cfg.horizon, policy.cfg.action_dim,
                        generator=torch.Generator().manual_seed(6))  # fmt: skip
    torch_x0 = policy.sample(cond, noise)
    numpy_x0 = runner.sample(cond.numpy(), noise.numpy())
    assert isinstance(numpy_x0, np.ndarray)
    assert _max_diff(numpy_x0, torch_x0) <= TOL
    # raw end to end with the runner's own noise draw
    rng_seed = 7
    ort_raw = runner.predict(obs["state"].numpy(), obs["images"].numpy(),
                             np.random.default_rng(rng_seed))  # fmt: skip
    noise = np.random.default_rng(rng_seed).standard_normal(noise.shape, dtype=np.float32)
    expected = policy.normalizer.unnormalize("action", policy.sample(cond, torch.from_numpy(noise)))
    start, n = policy.cfg.n_obs_steps - 1, policy.cfg.n_action_steps
    scale = policy.normalizer.stats("action").scale
    assert ort_raw.shape == (2, n, len(JOINTS))
    assert _max_diff(ort_raw / scale, expected[:, start : start + n].numpy() / scale) <= TOL


def test_cards_carry_the_deployment_contract(act_export, diffusion_export) -> None:
    for policy, card, folder in (act_export, diffusion_export):
        on_disk = json.loads((folder / "policy_card.json").read_text())
        assert on_disk == json.loads(json.dumps(card))
        assert on_disk["joint_names"] == JOINTS
        assert [c["name"] for c in on_disk["cameras"]] == CAMERAS
        assert all((c["height"], c["width"]) == policy.cfg.image_hw for c in on_disk["cameras"])
        for key in ("state", "action"):
            stats = policy.normalizer.stats(key)
            assert on_disk["normalization"][key]["offset"] == stats.offset.tolist()
            assert on_disk["normalization"][key]["mode"] == stats.mode
        for name, entry in on_disk["files"].items():  # what every loader verifies
            data = (folder / name).read_bytes()
            assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    act_card, dp_card = act_export[1], diffusion_export[1]
    assert sorted(act_card["files"]) == ["policy.onnx"]
    assert sorted(dp_card["files"]) == ["obs_encoder.onnx", "policy.onnx"]
    assert act_card["policy_type"] == "act" and act_card["diffusion"] is None
    assert act_card["chunk_size"] == 6 and act_card["control_rate_hz"] == 30.0
    assert act_card["data_index_hash"] == "sha256:abc123"
    assert dp_card["policy_type"] == "diffusion" and dp_card["data_index_hash"] == "sha256:def456"
    assert (dp_card["n_obs_steps"], dp_card["chunk_size"], dp_card["action_horizon"]) == (2, 8, 4)
    assert dp_card["action_start"] == 1
    diffusion = dp_card["diffusion"]
    assert diffusion["num_train_timesteps"] == 100 and diffusion["num_inference_steps"] == 10
    assert diffusion["beta_schedule"] == "squaredcos_cap_v2"
    np.testing.assert_array_equal(
        diffusion["alphas_cumprod"], diffusion_export[0].schedule.alphas_cumprod
    )


def test_card_rejects_names_that_do_not_fit(act_cfg) -> None:
    policy = ActPolicy(act_cfg)
    args = {"camera_names": CAMERAS, "control_rate_hz": 30.0, "data_index_hash": "h"}
    with pytest.raises(ValueError, match="joint names"):
        make_card(policy, joint_names=JOINTS[:3], **args)
    with pytest.raises(ValueError, match="camera"):
        make_card(policy, joint_names=JOINTS, **(args | {"camera_names": ["top", "top"]}))
    with pytest.raises(ValueError, match="data_index_hash"):
        make_card(policy, joint_names=JOINTS, **(args | {"data_index_hash": ""}))


def test_the_deployment_side_imports_no_torch(act_export) -> None:
    """A robot computer runs the exported folder with numpy + onnxruntime only."""
    _, _, folder = act_export
    code = (
        "import sys, numpy as np\n"
        "from apprentice.learning.runtime import load_onnx_policy\n"
        f"r = load_onnx_policy({str(folder)!r})\n"
        "cams = r.card['cameras']\n"
        "images = np.zeros((1, len(cams), 3, cams[0]['height'], cams[0]['width']))\n"
        "out = r.predict(np.zeros((1, len(r.card['state_names']))), images)\n"
        "assert out.shape == (1, r.card['chunk_size'], len(r.card['joint_names'])), out.shape\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
