"""The ALOHA insertion's graphs, closed loop: `record_sim_aloha_insertion` records a scripted
insertion (scripted leaders → teleop → followers → recorder) whose bag builds into a dataset,
and `eval_sim_aloha_insertion` runs a policy node on the scene (a tiny untrained ACT: the
machinery, not the policy). The headless demonstrator is tests/teleop/test_scripted_demo.py."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from cache_build import build_flagged
from tiny_act import export_tiny_act

from apprentice.eval_cli import add_subcommands
from apprentice.pipeline import SCENES, dataset_config
from apprentice.recording import DatasetIndex
from apprentice.sim.scenes import get_scene
from apprentice.teleop.scripted import GRIP_CLOSED, GRIP_OPEN

pytestmark = [pytest.mark.ros]

SCENE = "aloha_insertion"
ARMS = get_scene(SCENE).arms
JOINTS = tuple(j for a in ARMS for j in a.joints)  # left's 7, then right's 7


def test_record_graph_records_scripted_insertions_whose_bags_build(tmp_path) -> None:
    """`apprentice record --graph record_sim_aloha_insertion`, two episodes at the demo's image
    size: the peg goes into the socket, each bag has a quality verdict and they build (~50 s)."""
    dataset, cache = tmp_path / "demos", tmp_path / "cache"
    out = subprocess.run(
        [sys.executable, "-m", "apprentice", "record", "--graph", "record_sim_aloha_insertion",
         "--episodes", "2", "--dataset", str(dataset), "--domain", os.environ["ROS_DOMAIN_ID"],
         "-p", "image_width=128", "-p", "image_height=96"],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = [json.loads(ln.split("] ", 1)[1]) for ln in out.stdout.splitlines() if ln[:1] == "["]
    assert [r["seed"] for r in rows] == [1, 2], rows
    # Seeds 1 and 2 insert headless. Through ROS the open-loop script needs a host that keeps
    # up: a long stall while carrying shifts the peg in the fingers and it misses the socket
    # (measured 5/5 at load average 4-9; scripts before the 5 mm rise 2/5-3/5 at 16-23). One
    # of two is a bar a broken graph (another scene, no camera, no teleop) cannot pass.
    assert any(r["success"] for r in rows), rows
    entries = DatasetIndex(dataset).list()
    assert [e.episode_id for e in entries] == ["episode_0000", "episode_0001"]
    for e in entries:
        assert e.task == "insert the peg into the socket"
        # A verdict either way: passing depends on the host's load (it flags > 2 % loss).
        assert e.passed or e.reasons
    # The demo's own dataset config with 1 s max ages, and --include-flagged: this checks the
    # bags, not the host (on a loaded 2-core host a 0.3 s gap in the commands was seen).
    data = dataset_config((96, 128), SCENES[SCENE])
    for stream in (*data["state"], *data["action"], *data["cameras"]):
        stream["max_age_s"] = 1.0
    meta = build_flagged(dataset, cache, data)
    assert [e["seed"] for e in meta["episodes"]] == [1, 2]
    assert tuple(meta["state_names"]) == JOINTS and tuple(meta["action_names"]) == JOINTS
    (cam,) = meta["cameras"]
    assert cam["name"] == "top" and (cam["source"]["width"], cam["source"]["height"]) == (128, 96)
    # The demonstrations are in the data: both grippers open, then hold their object closed.
    action = np.fromfile(cache / "action.f32", np.float32).reshape(-1, len(JOINTS))
    for grip in (6, 13):  # left_gripper (socket), right_gripper (peg), m
        assert action[:, grip].max() > GRIP_OPEN - 0.003, grip
        assert action[-1, grip] < GRIP_CLOSED + 0.003, grip


def test_eval_graph_runs_a_policy_on_the_insertion_scene(tmp_path, capfd) -> None:
    """`apprentice eval --graph eval_sim_aloha_insertion`: one episode of a fresh policy node,
    scored with the insertion's stages (~25 s)."""
    home = np.concatenate([a.home for a in ARMS])
    # "trained" on the record graph's camera: 320×240 through the top camera's 50° lens
    f = 0.5 * 240 / np.tan(np.deg2rad(50.0) / 2)
    k = [f, 0.0, 159.5, 0.0, f, 119.5, 0.0, 0.0, 1.0]
    source = {"width": 320, "height": 240, "k": k, "d": [0.0] * 5, "distortion_model": "plumb_bob"}
    policy = export_tiny_act(tmp_path / "act", JOINTS, home, ["top"], (48, 64),
                             intrinsics={"top": source})  # fmt: skip
    ap = argparse.ArgumentParser()
    add_subcommands(ap.add_subparsers(dest="cmd", required=True))
    out = tmp_path / "eval"
    a = ap.parse_args(["eval", "--policy", str(policy), "--graph", "eval_sim_aloha_insertion",
                       "--episodes", "1", "--duration", "2.0", "--seed0", "1000", "--out",
                       str(out), "--domain", os.environ["ROS_DOMAIN_ID"]])  # fmt: skip
    code = a.func(a)
    printed = capfd.readouterr().out
    assert code == 0, printed
    results = json.loads((out / "results.json").read_text())
    (row,) = results["rows"]
    # The node started (the live lens matched the card's), ran and stopped cleanly; it may
    # stop in hold (a stale frame at that moment, on a loaded host), never faulted or e-stopped.
    assert row["exit_code"] == 0 and row["mode"] in ("running", "hold"), row
    assert row["inferences"] > 10 and row["frames"] > 20, row
    assert row["seed"] == 1000 and 0 <= row["max_stage"] <= 4
    assert results["scene"] == SCENE and results["task"] == "insertion"
    assert list(results["stages"]) == ["touch", "lift", "contact", "insert"]
    assert "stages reached (insertion): touch " in printed
    params = results["policy_params"]
    assert params["arms"] == ["left", "right"] and params["cameras"] == ["top"]
    assert len(params["joint_lower"]) == len(params["max_velocity"]) == len(JOINTS)
