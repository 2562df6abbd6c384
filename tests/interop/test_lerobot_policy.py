"""`apprentice import-policy` + `apprentice export` on checkpoints LeRobot 0.6.1 wrote
(tests/fixtures/lerobot_policy, made by make_lerobot_policy_fixtures.py in LeRobot's venv):
the ONNX policy, run by onnxruntime, reproduces LeRobot's own eager outputs; a checkpoint the
mapping does not understand is refused by name, in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures.lerobot_levels import digest, rebuild
from safetensors.numpy import load_file, save_file

from apprentice.cli import main
from apprentice.interop.lerobot_policy import read_checkpoint, to_policy
from apprentice.learning.runtime import load_onnx_policy
from policy_server.adapters import open_policy

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "lerobot_policy"
CAMERAS = ("front", "wrist")
JOINTS = [f"joint_{i}" for i in range(6)]
TOLERANCE = 1e-4  # |ONNX - LeRobot eager|, in the joints' units

torch.set_num_threads(1)


def checkpoint(tmp_path: Path, name: str) -> Path:
    """The committed fixture with model.safetensors rebuilt, checked against LeRobot's digest."""
    src, dst = FIXTURES / name, tmp_path / f"{name}_checkpoint"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("eager.safetensors"))
    manifest = json.loads((src / "manifest.json").read_text())
    tensors = rebuild(manifest, load_file(str(src / "kept.safetensors")))
    assert digest(tensors) == manifest["digest"], "rebuilt weights differ from LeRobot's file"
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def eager(name: str) -> dict[str, np.ndarray]:
    e = load_file(str(FIXTURES / name / "eager.safetensors"))
    axis = 1 if name == "act" else 2  # ACT (B, N, 3, H, W); Diffusion (B, To, N, 3, H, W)
    images = [e[f"observation.images.{c}"].astype(np.float32) / np.float32(255) for c in CAMERAS]
    return {"state": e["observation.state"], "images": np.stack(images, axis=axis)} | {
        k: e[k] for k in ("actions", "noise") if k in e
    }


def import_and_export(src: Path, run: Path, capsys: pytest.CaptureFixture) -> Path:
    args = ["import-policy", str(src), "--out", str(run), "--joint-names", ",".join(JOINTS)]
    assert main([*args, "--rate", "30"]) == 0, capsys.readouterr().err
    assert main(["export", str(run)]) == 0, capsys.readouterr().err
    return run / "policy"


def test_act_checkpoint_reproduces_lerobot(tmp_path: Path, capsys) -> None:
    policy_dir = import_and_export(checkpoint(tmp_path, "act"), tmp_path / "run", capsys)
    card = json.loads((policy_dir / "policy_card.json").read_text())
    assert card["joint_names"] == JOINTS
    assert [c["name"] for c in card["cameras"]] == list(CAMERAS)
    assert card["data_index_hash"].startswith("lerobot-checkpoint:sha256:")
    e = eager("act")
    actions = load_onnx_policy(policy_dir).predict(e["state"], e["images"])  # (B, K, A)
    assert actions.shape == e["actions"].shape == (2, 10, 6)
    assert np.abs(actions - e["actions"]).max() < TOLERANCE
    assert np.abs(e["actions"][0] - e["actions"][1]).max() > 0.01  # the inputs matter
    # the policy node's adapter: (To, S) state, (To, N, 3, H, W) images → one chunk
    node_chunk = open_policy(policy_dir).predict(e["state"][:1], e["images"][:1])  # (K, A)
    assert np.abs(node_chunk - e["actions"][0]).max() < TOLERANCE


@pytest.mark.parametrize("name", ["diffusion", "diffusion_bn"])
def test_diffusion_checkpoint_reproduces_lerobot_with_the_same_noise(
    tmp_path: Path, capsys, name: str
) -> None:
    """diffusion: GroupNorm, an encoder per camera, 2 steps, crop, MIN_MAX; diffusion_bn:
    BatchNorm, one shared encoder, 1 step, no crop, MEAN_STD (fixture README)."""
    policy_dir = import_and_export(checkpoint(tmp_path, name), tmp_path / "run", capsys)
    runner = load_onnx_policy(policy_dir)
    card = runner.card
    e = eager(name)
    cond = runner.encode(runner.state_stats.normalize(e["state"]), e["images"])
    chunk = runner.action_stats.unnormalize(runner.sample(cond, e["noise"]))  # (B, Tp, A)
    start, n = card["action_start"], card["action_horizon"]
    actions = chunk[:, start : start + n]
    assert actions.shape == e["actions"].shape == (2, 8, 6)
    assert np.abs(actions - e["actions"]).max() < TOLERANCE


def test_ddpm_checkpoint_is_sampled_with_ddim_and_says_so(tmp_path: Path, capsys) -> None:
    """LeRobot's default sampler is DDPM over all training steps; the export runs DDIM on the
    same denoiser (as many steps), and the import says so."""
    src = checkpoint(tmp_path, "diffusion")
    config = json.loads((src / "config.json").read_text())
    config |= {"noise_scheduler_type": "DDPM", "num_inference_steps": None}
    (src / "config.json").write_text(json.dumps(config))
    run = tmp_path / "run"
    args = ["import-policy", str(src), "--out", str(run), "--joint-names", ",".join(JOINTS)]
    assert main([*args, "--rate", "30"]) == 0
    assert "note: LeRobot samples with DDPM" in capsys.readouterr().out
    cfg = json.loads((run / "run.json").read_text())["policy_config"]
    assert cfg["num_inference_steps"] == cfg["num_train_timesteps"] == 100


def test_old_layout_with_stats_inside_the_weights(tmp_path: Path, capsys) -> None:
    """lerobot <= 0.3 kept the statistics in model.safetensors (`normalize_inputs.buffer_
    observation_state.mean`, ...; lerobot 0.3.3 normalize.py). Laid out so from the 0.6 files;
    its formulas equal 0.6's for MEAN_STD, so LeRobot's outputs must come out again."""
    src = checkpoint(tmp_path, "act")
    weights = load_file(str(src / "model.safetensors"))
    for file, prefixes in (
        ("policy_preprocessor_step_3_normalizer_processor.safetensors",
         ("normalize_inputs.", "normalize_targets.")),
        ("policy_postprocessor_step_0_unnormalizer_processor.safetensors",
         ("unnormalize_outputs.",)),
    ):  # fmt: skip
        for flat, value in load_file(str(src / file)).items():
            key, stat = flat.rsplit(".", 1)
            for prefix in prefixes:
                if prefix == "normalize_inputs." and key == "action":
                    continue
                if prefix != "normalize_inputs." and key != "action":
                    continue
                weights[f"{prefix}buffer_{key.replace('.', '_')}.{stat}"] = value
        (src / file).unlink()
    (src / "policy_preprocessor.json").unlink()
    (src / "policy_postprocessor.json").unlink()
    save_file(weights, str(src / "model.safetensors"))
    ck = read_checkpoint(src)
    assert ck.layout.startswith("lerobot<=0.3")
    policy, _ = to_policy(ck)
    e = eager("act")
    state = policy.normalizer.normalize("state", torch.from_numpy(e["state"]))
    with torch.no_grad():
        norm = policy(state, torch.from_numpy(e["images"]))
    actions = policy.normalizer.unnormalize("action", norm).numpy()
    assert np.abs(actions - e["actions"]).max() < TOLERANCE


def test_act_trained_without_the_vae(tmp_path: Path) -> None:
    """use_vae=false: no VAE weights at all. At inference LeRobot's ACT runs z = 0 either way,
    so the same checkpoint without them must give LeRobot's outputs again."""
    src = checkpoint(tmp_path, "act")
    weights = load_file(str(src / "model.safetensors"))
    vae = [k for k in weights if k.startswith("model.vae_encoder")]
    assert len(vae) > 10
    save_file({k: v for k, v in weights.items() if k not in vae}, str(src / "model.safetensors"))
    config = json.loads((src / "config.json").read_text()) | {"use_vae": False}
    (src / "config.json").write_text(json.dumps(config))
    ck = read_checkpoint(src)
    policy, _ = to_policy(ck)
    assert any("use_vae=false" in note for note in ck.notes)
    e = eager("act")
    with torch.no_grad():
        actions = policy.predict_action(
            {"state": torch.from_numpy(e["state"]), "images": torch.from_numpy(e["images"])}
        ).numpy()
    assert np.abs(actions - e["actions"]).max() < TOLERANCE


def test_a_misplaced_weight_changes_the_outputs(tmp_path: Path) -> None:
    """The fixture's weights are distinct enough that a mapping error shows: swapping the
    query and key projections of one attention layer moves the actions far past TOLERANCE."""
    src = checkpoint(tmp_path, "act")
    weights = load_file(str(src / "model.safetensors"))
    key = "model.encoder.layers.0.self_attn.in_proj_weight"
    d = weights[key].shape[1]
    weights[key] = np.concatenate(
        (weights[key][d : 2 * d], weights[key][:d], weights[key][2 * d :])
    )
    save_file(weights, str(src / "model.safetensors"))
    policy, _ = to_policy(read_checkpoint(src))
    e = eager("act")
    with torch.no_grad():
        actions = policy.predict_action(
            {"state": torch.from_numpy(e["state"]), "images": torch.from_numpy(e["images"])}
        ).numpy()
    assert np.abs(actions - e["actions"]).max() > 100 * TOLERANCE


def _refused(args: list[str], capsys) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("apprentice: error: "), err
    return err


@pytest.mark.parametrize(
    ("name", "edit", "expected"),
    [
        ("act", {"model.extra_head.weight": np.zeros((2, 2), np.float32)},
         "unmapped weight(s) model.extra_head.weight"),
        ("act", {"model.action_head.bias": None}, "missing weight(s) model.action_head.bias"),
        ("diffusion", {"diffusion.unet.mid_modules.0.cond_encoder.1.bias": None},
         "missing weight(s) diffusion.unet.mid_modules.0.cond_encoder.1.bias"),
        ("diffusion", {"diffusion.unet.final_conv.1.weight": np.zeros((6, 32, 3), np.float32)},
         "diffusion.unet.final_conv.1.weight has shape (6, 32, 3)"),
    ],
)  # fmt: skip
def test_unmapped_missing_or_misshapen_weight_fails_by_name(
    tmp_path: Path, capsys, name: str, edit: dict, expected: str
) -> None:
    src = checkpoint(tmp_path, name)
    weights = load_file(str(src / "model.safetensors"))
    for key, value in edit.items():
        if value is None:
            del weights[key]
        else:
            weights[key] = value
    save_file(weights, str(src / "model.safetensors"))
    out = tmp_path / "run"
    err = _refused(["import-policy", str(src), "--out", str(out), "--joint-names",
                    ",".join(JOINTS), "--rate", "30"], capsys)  # fmt: skip
    assert expected in err
    assert not out.exists()  # nothing half-written


def test_wrong_folders_are_one_line_errors(tmp_path: Path, capsys) -> None:
    args = ["--out", str(tmp_path / "run"), "--joint-names", ",".join(JOINTS), "--rate", "30"]
    assert "no such folder" in _refused(["import-policy", str(tmp_path / "nope"), *args], capsys)
    empty = tmp_path / "empty"
    empty.mkdir()
    # no config.json: said before the names are asked for (none given here)
    no_names = ["--out", str(tmp_path / "run")]
    assert "not a LeRobot checkpoint folder (no config.json)" in _refused(
        ["import-policy", str(empty), *no_names], capsys
    )
    other = checkpoint(tmp_path, "act")
    config = json.loads((other / "config.json").read_text()) | {"type": "pi0"}
    (other / "config.json").write_text(json.dumps(config))
    assert "policy type 'pi0'" in _refused(["import-policy", str(other), *args], capsys)
    broken = checkpoint(tmp_path / "b", "act")
    (broken / "model.safetensors").write_bytes(b"\x00" * 64)
    assert "not a safetensors file" in _refused(["import-policy", str(broken), *args], capsys)
    ok = checkpoint(tmp_path / "c", "act")
    wrong = ["--out", str(tmp_path / "run"), "--joint-names", "a,b", "--rate", "30"]
    assert "6 actions" in _refused(["import-policy", str(ok), *wrong], capsys)


def test_names_and_rate_from_the_lerobot_dataset(tmp_path: Path, capsys) -> None:
    """--dataset reads meta/info.json: features' names and fps (v3.0 layout; v2.1 nests the
    names under one key)."""
    names = [f"{j}.pos" for j in ("shoulder_pan", "shoulder_lift", "elbow_flex",
                                  "wrist_flex", "wrist_roll", "gripper")]  # fmt: skip
    meta = tmp_path / "dataset" / "meta"
    meta.mkdir(parents=True)
    features = {
        "action": {"shape": [6], "names": names},
        "observation.state": {"shape": [6], "names": {"motors": names}},
    }
    info = {"fps": 25, "features": features}
    (meta / "info.json").write_text(json.dumps(info))
    run = tmp_path / "run"
    src = checkpoint(tmp_path, "act")
    assert main(["import-policy", str(src), "--out", str(run), "--dataset", str(meta.parent)]) == 0
    data = json.loads((run / "run.json").read_text())["dataset"]
    assert data["action_names"] == data["state_names"] == names
    assert data["control_rate_hz"] == 25.0
    assert "next: apprentice export" in capsys.readouterr().out
