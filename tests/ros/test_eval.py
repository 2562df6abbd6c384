"""`apprentice eval` end to end: the sim robot graph, a policy node per episode, the eval session.

The policy is a tiny randomly initialized ACT exported to ONNX here (it will not solve the task:
the test checks the evaluation machinery, not the policy). Real processes on the isolated domain.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from rrd_rows import rrd_rows
from tiny_act import export_tiny_act

from apprentice.eval_cli import add_subcommands
from apprentice.sim.scenes import get_scene

pytestmark = [pytest.mark.ros, pytest.mark.slow]

H, W = 48, 64  # the card's camera size: the sim renders at it


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory) -> Path:
    arms = get_scene("aloha_transfer_cube").arms
    joints = [j for a in arms for j in a.joints]
    home = np.concatenate([a.home for a in arms])  # actions near home: the arms move a little
    folder = tmp_path_factory.mktemp("policy") / "act"
    # "trained" on the record graph's camera: 320x240, the eval graph's lens (top=50° fovy);
    # the eval renders at the card's size, and the policy node finds the same lens
    f = 0.5 * 240 / np.tan(np.deg2rad(50.0) / 2)
    k = [f, 0.0, 159.5, 0.0, f, 119.5, 0.0, 0.0, 1.0]
    source = {"width": 320, "height": 240, "k": k, "d": [0.0] * 5, "distortion_model": "plumb_bob"}
    return export_tiny_act(folder, joints, home, ["top"], (H, W), spread=0.05,
                           intrinsics={"top": source}, train_seeds=range(7))  # fmt: skip


def _eval(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    add_subcommands(ap.add_subparsers(dest="cmd", required=True))
    a = ap.parse_args(argv)
    return a.func(a)


def test_eval_runs_episodes_and_writes_table_json_videos(policy_dir, tmp_path, capfd) -> None:
    out = tmp_path / "eval"
    domain = os.environ["ROS_DOMAIN_ID"]  # the test run's isolated domain (conftest)
    code = _eval(["eval", "--policy", str(policy_dir), "--episodes", "2", "--duration", "2.5",
                  "--seed0", "7", "--out", str(out), "--domain", domain])  # fmt: skip
    printed = capfd.readouterr().out
    assert code == 0, printed
    results = json.loads((out / "results.json").read_text())
    rows = results["rows"]
    assert [r["seed"] for r in rows] == [7, 8]  # one reset per episode, from seed0 on
    assert results["seeds"] == [7, 8] and results["seen_seeds"] == []  # trained on 0-6
    assert results["episodes"] == 2 and results["successes"] == sum(r["success"] for r in rows)
    lo, hi = results["interval95"]
    assert 0 <= lo <= results["success_rate"] <= hi <= 1 and hi - lo > 0.5  # 2 episodes
    assert results["task"] == "transfer_cube" and list(results["stages"]) == [
        "touch", "lift", "transfer"
    ]  # fmt: skip
    touched = sum(r["max_stage"] >= 1 for r in rows)
    assert (results["stages"]["touch"]["reached"], results["stages"]["touch"]["episodes"]) == (
        touched, 2
    )  # fmt: skip
    card = (policy_dir / "policy_card.json").read_bytes()
    assert results["policy"]["card_sha256"] == hashlib.sha256(card).hexdigest()
    for r in rows:
        assert isinstance(r["success"], bool) and isinstance(r["success_at_end"], bool)
        assert isinstance(r["max_stage"], int) and 0 <= r["max_stage"] <= 4
        assert r["inferences"] > 10 and r["exit_code"] == 0  # a fresh node ran and stopped
        assert r["mode"] == "running" and r["sim_stalled"] is False
        cap = cv2.VideoCapture(r["video"])
        n, first = 0, None
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            first = frame if first is None else first
            n += 1
        cap.release()
        assert n == r["frames"] and n > 2.5 * 30 * 0.5, (n, r["frames"])  # 30 Hz camera
        assert first is not None and first.shape == (5 * H, 5 * W, 3) and first.std() > 5
        assert Path(r["plot"]).read_bytes()[:4] == b"\x89PNG"
        with np.load(r["rollout"]) as z:  # the plotted streams, as arrays
            frames_t = z["top_frames_t"]  # the video's frames, by their header stamps
            assert len(frames_t) == r["frames"] and np.all(np.diff(frames_t) > 0)
            assert len(z["success_t"]) == len(z["success"]) > 10  # /sim/success at 10 Hz
            for arm in ("left", "right"):
                assert z[f"{arm}_commands"].shape[1] == 7 and len(z[f"{arm}_commands"]) > 50
                assert len(z[f"{arm}_joints_t"]) == len(z[f"{arm}_joints"]) > 50
                assert np.all(np.diff(z[f"{arm}_joints_t"]) >= 0)
                # the policy's chunks: one per inference, 20 points 1/50 s apart, each from
                # the camera frame the inference saw (the observation's stamp)
                chunk_t, chunks = z[f"{arm}_chunk_t"], z[f"{arm}_chunks"]
                assert chunks.shape == (len(chunk_t), 20, 7) and len(chunk_t) > 10
                assert np.all(np.diff(chunk_t) > 0)
                assert np.allclose(z[f"{arm}_chunk_offsets"], np.arange(20) / 50)
                seen = chunk_t[chunk_t >= frames_t[0]]
                gap = np.abs(seen[:, None] - frames_t[None, :]).min(axis=1)
                assert np.mean(gap < 1e-6) > 0.9, gap
            assert r["chunks"] == len(z["left_chunk_t"]) + len(z["right_chunk_t"])
    # the first episode drawn in Rerun by `apprentice view --save`: every sample of the
    # rollout, at its stamps
    drawn = subprocess.run([sys.executable, "-m", "apprentice", "view", str(out), "--episode", "0",
                            "--save", str(tmp_path / "ep.rrd")], capture_output=True, text=True,
                           timeout=120)  # fmt: skip
    assert drawn.returncode == 0, drawn.stderr[-2000:]
    rows_rrd, _, _ = rrd_rows(tmp_path / "ep.rrd")
    with np.load(rows[0]["rollout"]) as z:
        for arm in ("left", "right"):
            names = [str(n) for n in z[f"{arm}_names"]]
            t = z[f"{arm}_joints_t"]
            assert rows_rrd[f"joints/{arm}/{names[0]}/state"][0] == len(t)
            assert rows_rrd[f"joints/{arm}/{names[-1]}/command"][0] == len(z[f"{arm}_commands"])
            assert rows_rrd[f"joints/{arm}/{names[1]}/chunk"][0] == z[f"{arm}_chunks"].shape[0] * 20
        assert rows_rrd["cameras/eval"][0] == rows[0]["frames"] == len(z["top_frames_t"])
    assert any(e.startswith("robot/") for e in rows_rrd), sorted(rows_rrd)  # the scene in 3D
    # the per-episode table and the rate
    assert "episode  seed  success" in printed
    assert f"success {results['successes']}/2 (" in printed and "95 % interval" in printed
    assert "stages reached (transfer_cube): touch " in printed
    # the policy node got the scene's joint limits in the card's joint order
    params = results["policy_params"]
    assert params["arms"] == ["left", "right"] and len(params["joint_lower"]) == 14
    assert "image_height" not in params  # the node resizes to the card's size itself


def test_an_eval_interrupted_alone_leaves_no_session_behind(policy_dir, tmp_path) -> None:
    """SIGINT to the `apprentice eval` process only (a supervisor's stop, `pkill -INT`, not a
    terminal's Ctrl-C to the whole group): it exits 130 with one line, and its eval session
    and policy node go with it (they were orphaned and went on starting episodes against a
    graph that was gone, then failed with a traceback)."""
    out = tmp_path / "eval"
    proc = subprocess.Popen(
        [sys.executable, "-m", "apprentice", "eval", "--policy", str(policy_dir), "--episodes",
         "20", "--duration", "2.5", "--seed0", "7", "--out", str(out), "--domain",
         os.environ["ROS_DOMAIN_ID"]],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 90
    while not list((out / "logs").glob("policy_episode_*.log")):  # the session is running
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    lines = err.strip().splitlines()  # the session shares stderr and says it stopped
    assert "apprentice: interrupted" in lines and "Traceback" not in err, err
    assert all(ln == "apprentice: interrupted" or ln.startswith("eval session: stopped after")
               for ln in lines), err  # fmt: skip
    left = []
    for _ in range(50):  # PDEATHSIG: SIGTERM to the session, then to its policy node
        left = [p for p in Path("/proc").glob("[0-9]*") if str(out) in _cmdline(p)]
        if not left:
            break
        time.sleep(0.2)
    names = [_cmdline(p) for p in left]
    for p in left:  # don't leave them to load later tests
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(p.name), signal.SIGKILL)
    assert names == [], names


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""
