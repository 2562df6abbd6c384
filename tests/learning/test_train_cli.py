"""`apprentice train` from bags and `apprentice export`: run folder, plots, policy card, and the
exported ONNX agreeing with the trained PyTorch policy through `apprentice.learning.runtime`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from apprentice.dataset import DatasetCache
from apprentice.dataset.samples import ActSamples, DiffusionSamples, policy_batch
from apprentice.dataset.synthetic import SyntheticEpisode, write_episode
from apprentice.learning.checkpoint import load_policy
from apprentice.learning.runtime import load_onnx_policy
from apprentice.learning.train_cli import main
from apprentice.learning.train_report import read_metrics

TOL = 1e-4  # max abs, normalized units
PNG = b"\x89PNG\r\n\x1a\n"
FX = 55.4  # px: the recorded camera's focal length (48x64 images)
TINY = {
    "act": ["d_model=32", "n_heads=4", "dim_feedforward=64", "n_encoder_layers=1",
            "n_decoder_layers=1", "n_vae_encoder_layers=1", "latent_dim=8", "chunk_size=10",
            "backbone_width=8"],
    "diffusion": ["backbone_width=8", "n_keypoints=8", "image_feature_dim=16",
                  "down_dims=[16, 32]", "n_groups=4", "kernel_size=3", "step_embed_dim=16"],
}  # fmt: skip


@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_bags")
    for i in range(3):
        spec = SyntheticEpisode(duration_s=1.0, compressed=True, camera_fx=FX)  # + camera_info
        write_episode(root / f"ep{i}", spec, seed=i)
    (root / "dataset.yaml").write_text(
        "image_hw: [36, 40]\nval_fraction: 0.34\n"
        "state: [{topic: /follower/joint_states}]\n"
        "action: [{topic: /follower/commands}]\n"
        "cameras: [{name: top, topic: /cameras/top/image_raw/compressed}]\n"
    )
    return root


def _train(bags, run, policy: str, steps: int, *extra: str) -> None:
    args = ["train", "--policy", policy, "--data", str(bags), "--out", str(run), "--preset",
            "cpu", "--steps", str(steps), "--batch-size", "4", "--log-every", "1",
            "--val-every", "2", "--val-batches", "2", "--dataset-config",
            str(bags / "dataset.yaml"), "--no-progress", *extra]  # fmt: skip
    for kv in TINY[policy]:
        args += ["--set", kv]
    assert main(args) == 0


def _check_run(run, steps: int) -> DatasetCache:
    rows = read_metrics(run)
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    assert all(np.isfinite(r["loss"]) for r in rows)
    assert [r["step"] for r in rows if "val_loss" in r] == list(range(2, steps + 1, 2))
    for png in ("loss.png", "samples.png"):
        assert (run / png).read_bytes()[:8] == PNG
    state = json.loads((run / "checkpoints" / "last" / "state.json").read_text())
    assert state["step"] == steps
    return DatasetCache(run / "dataset")  # cached from the bags inside the run


def test_act_train_export_parity(bags, tmp_path, capsys) -> None:
    run = tmp_path / "act"
    _train(bags, run, "act", 4, "--ema", "0.9")
    cache = _check_run(run, 4)
    assert (run / "checkpoints" / "last" / "ema" / "model.safetensors").exists()
    assert main(["export", str(run)]) == 0
    assert "max |onnx - torch|" in capsys.readouterr().out
    card = json.loads((run / "policy" / "policy_card.json").read_text())
    assert card["joint_names"] == cache.action_names == list(SyntheticEpisode().joints)
    source = {"width": 64, "height": 48, "k": [FX, 0.0, 31.5, 0.0, FX, 23.5, 0.0, 0.0, 1.0],
              "d": [0.0] * 5, "distortion_model": "plumb_bob"}  # fmt: skip
    # the policy's input, and the camera it was trained on (cache metadata → run.json → card)
    assert card["cameras"] == [{"name": "top", "height": 36, "width": 40, "source": source}]
    assert card["control_rate_hz"] == 50.0 and card["chunk_size"] == 10
    assert card["data_index_hash"] == cache.data_index_hash
    assert "train_seeds" not in card  # synthetic bags carry no scene seed (sim recordings do)
    # export took the EMA weights; the runtime maps raw obs to the same raw actions
    policy = load_policy(run / "checkpoints" / "last" / "ema")
    runner = load_onnx_policy(run / "policy")
    ds = ActSamples(cache, "val", chunk_size=10)
    batch = torch.utils.data.default_collate([ds[i] for i in (0, len(ds) // 2, len(ds) - 1)])
    obs, _, _ = policy_batch(batch, "cpu")
    eager = policy.predict_action(obs).numpy()  # (3, K, A)
    onnx = runner.predict(obs["state"].numpy(), obs["images"].numpy())
    scale = np.asarray(card["normalization"]["action"]["scale"])
    assert np.abs(eager - onnx).max() / scale.min() <= TOL


def test_diffusion_train_export_parity(bags, tmp_path) -> None:
    run = tmp_path / "diffusion"
    _train(bags, run, "diffusion", 2)
    cache = _check_run(run, 2)
    assert main(["export", str(run), "--out", str(tmp_path / "policy")]) == 0
    card = json.loads((tmp_path / "policy" / "policy_card.json").read_text())
    assert card["n_obs_steps"] == 2 and card["chunk_size"] == 16  # obs history 2, horizon 16
    assert card["config"]["crop_hw"] == [32, 35]  # 87.5 % of 36x40, the paper's ratio
    assert card["data_index_hash"] == cache.data_index_hash
    policy = load_policy(run / "checkpoints" / "last" / "model")
    runner = load_onnx_policy(tmp_path / "policy")
    ds = DiffusionSamples(cache, "val")
    obs, _, _ = policy_batch(torch.utils.data.default_collate([ds[0], ds[5]]), "cpu")
    state = policy.normalizer.normalize("state", obs["state"])
    noise = torch.randn(2, 16, 4, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        cond = policy.encode_obs(state, obs["images"])
        eager = policy.sample(cond, noise).numpy()  # (2, Tp, A), torch DDIM
    onnx_cond = runner.encode(state.numpy(), obs["images"].numpy())
    assert np.abs(onnx_cond - cond.numpy()).max() <= TOL
    assert np.abs(runner.sample(onnx_cond, noise.numpy()) - eager).max() <= 10 * TOL
