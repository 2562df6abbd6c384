"""Nothing runs unverified: the card lists each file's SHA-256 and size at export, and every
loader (load_card, the numpy+onnxruntime runtime, the policy node) refuses a folder whose files
changed since, in one line naming the file and both hashes. A card without hashes (an older
export) loads, with a warning that the model is unverified."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_act import export_tiny_act, flip_weight_bits

from apprentice.graph import write_params_file
from apprentice.learning.runtime import UNVERIFIED, load_onnx_policy
from apprentice.policy_server.adapters import open_policy
from apprentice.policy_server.card import PolicyRefused, load_card, unverified_warning

torch.set_num_threads(1)  # other processes share this machine's cores
JOINTS = ["j0", "j1"]
HW = (32, 40)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("integrity") / "act"
    return export_tiny_act(folder, JOINTS, np.zeros(2), ["front"], HW)


def _copy(src: Path, dst: Path, edit=None) -> Path:
    shutil.copytree(src, dst)
    if edit is not None:
        card = json.loads((dst / "policy_card.json").read_text())
        edit(card)
        (dst / "policy_card.json").write_text(json.dumps(card))
    return dst


def _flipped(exported: Path, dst: Path) -> Path:
    folder = _copy(exported, dst)
    flip_weight_bits(folder / "policy.onnx")
    return folder


def _predict(folder: Path) -> np.ndarray:
    rng = np.random.default_rng(0)
    state, images = rng.normal(size=(1, 2)), rng.uniform(size=(1, 1, 3, *HW))
    return load_onnx_policy(folder).predict(state, images)


def test_export_lists_every_file_the_runtime_loads(exported) -> None:
    card = load_card(exported)
    data = (exported / "policy.onnx").read_bytes()
    assert card["files"] == {
        "policy.onnx": {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    }
    assert unverified_warning(card) is None


def test_flipped_weight_bits_are_refused_by_every_loader(exported, tmp_path) -> None:
    folder = _flipped(exported, tmp_path / "flipped")
    expected = load_card(exported)["files"]["policy.onnx"]["sha256"]
    actual = hashlib.sha256((folder / "policy.onnx").read_bytes()).hexdigest()
    line = (
        f"{folder / 'policy.onnx'}: sha256 {expected[:12]}... expected, the file has "
        f"{actual[:12]}..."
    )
    for load in (load_card, load_onnx_policy, lambda f: open_policy(f, "cpu")):
        with pytest.raises(PolicyRefused) as info:
            load(folder)
        message = str(info.value)
        assert message.startswith(line) and "changed since export" in message, message
        assert "\n" not in message


def test_without_the_hash_a_flipped_model_runs_silently_wrong(exported, tmp_path) -> None:
    """Why the hash: the same corruption with the card's hashes dropped (an older export)
    loads and runs, only with other actions; what tells it is the unverified warning."""
    folder = _copy(exported, tmp_path / "old", lambda card: card.pop("files"))
    flip_weight_bits(folder / "policy.onnx")
    assert unverified_warning(load_card(folder)) == UNVERIFIED
    with pytest.warns(UserWarning, match="UNVERIFIED MODEL"):
        wrong = _predict(folder)
    assert not np.array_equal(wrong, _predict(exported))


ZERO = {"sha256": "0" * 64, "bytes": 1}


def _unlisted(card: dict) -> None:  # an entry dropped by hand: the graph would run unverified
    card["files"] = {"extra.bin": card["files"].pop("policy.onnx")}


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (_unlisted, "graph file(s) policy.onnx not listed in the card's files"),
        (lambda c: c["files"].update({"extra.bin": ZERO}),
         "extra.bin: listed in the policy card but missing"),
        (lambda c: c["files"]["policy.onnx"].update(sha256="abc"),
         "files['policy.onnx'] needs sha256 (64 hex) and bytes"),
        (lambda c: c["files"].update({"../act/policy.onnx": ZERO}),
         "is not inside the policy folder"),
        (lambda c: c.update(files={}), "files must map file names to sha256, bytes"),
    ],
    ids=["unlisted", "missing", "malformed", "outside", "empty"],
)  # fmt: skip
def test_edited_cards_and_missing_files_are_named(exported, tmp_path, edit, reason) -> None:
    folder = _copy(exported, tmp_path / "edited", edit)
    with pytest.raises(PolicyRefused) as info:
        load_card(folder)
    assert reason in str(info.value) and "\n" not in str(info.value), info.value


@pytest.mark.ros
def test_policy_node_refuses_a_flipped_model_in_one_line(exported, tmp_path) -> None:
    """Refused at step 1, before it waits for the robot: no sim needed."""
    folder = _flipped(exported, tmp_path / "flipped")
    params = {
        "policy_dir": str(folder), "arms": ["right"], "cameras": ["front"],
        "control_rate": 50.0, "joint_lower": [-1.0, -1.0], "joint_upper": [1.0, 1.0],
        "execution_provider": "cpu", "startup_timeout": 5.0,
    }  # fmt: skip
    path = write_params_file(params, tmp_path, "policy")
    cmd = [sys.executable, "-m", "apprentice_ros.policy_node", "--ros-args", "--params-file",
           str(path)]  # fmt: skip
    start = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    text = done.stdout + done.stderr
    assert done.returncode == 2, text
    (line,) = [ln for ln in text.splitlines() if "refusing to start" in ln]
    assert "policy.onnx: sha256" in line and "changed since export" in line, text
    assert time.monotonic() - start < 30, "refused only after waiting for the robot"
