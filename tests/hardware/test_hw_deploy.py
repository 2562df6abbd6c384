"""`apprentice deploy --robot so101 --policy DIR`: the real robot config's deploy graph (the
follower's driver on a byte-level emulated bus, the card's camera playing a 640x480 file, the
policy node), joint limits from the calibration; and the mistakes a new user makes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from hw_setup import IDS
from tiny_act import export_tiny_act

from apprentice.calibration.arm import compute_calibration
from apprentice.cameras.uvc import nominal_spec
from apprentice.dataset.images import camera_info_record
from apprentice.drivers.emulator import EmulatorProcess
from apprentice.drivers.factory import arm_config

pytestmark = [pytest.mark.ros, pytest.mark.slow]

JOINTS = ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper"]
HOME = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.85])  # tick 2048 everywhere (centred calibration)
OFFSET = np.array([0.3, -0.3, 0.3, -0.3, 0.3, 0.2])  # where the tiny policy's actions lie


def apprentice(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "apprentice", *args], capture_output=True,
                          text=True, timeout=60, **kw)  # fmt: skip


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("deploy_cli")
    cfg = arm_config("so101", "follower")
    ref = {j.name: 2048 for j in cfg.joints}
    # each joint swept ±1000 ticks (±1.53 rad) around tick 2048: narrower than the config's
    cal = compute_calibration(cfg, ref, dict.fromkeys(ref, (-1000, 1000)), dict.fromkeys(ref, 1))
    cal = cal.save(folder / "follower.yaml")
    video = folder / "front.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (640, 480))
    for k in range(30):
        img = np.full((480, 640, 3), 40, np.uint8)
        img[180:300, 100 + 12 * k : 220 + 12 * k] = (40, 180, 230)
        writer.write(img)
    writer.release()
    lens = nominal_spec("front", 640, 480)  # what a UVC camera without a calibration reports
    policy = export_tiny_act(
        folder / "policy", JOINTS, HOME, ["front"], (48, 64), OFFSET,
        intrinsics={"front": camera_info_record(640, 480, lens.k.reshape(-1), lens.distortion,
                                                "plumb_bob")},
    )  # fmt: skip
    return {"folder": folder, "calibration": cal, "video": video, "policy": policy}


def test_deploy_drives_the_emulated_follower_and_stops_limp(setup) -> None:
    with EmulatorProcess("feetech", IDS, tau_s=0.01) as emu:
        start = {i: s["goal"] for i, s in emu.state()["servos"].items()}
        log = (setup["folder"] / "deploy.log").open("w+")
        proc = subprocess.Popen(
            [sys.executable, "-m", "apprentice", "deploy", "--robot", "so101",
             "--policy", str(setup["policy"]), "--port", f"follower={emu.port}",
             "--camera", f"front={setup['video']}",
             "--calibration", f"follower={setup['calibration']}",
             "-p", "policy.execution_provider=cpu"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            moved: list[str] = []
            while time.monotonic() < deadline and proc.poll() is None:
                servos = emu.state()["servos"]
                moved = [i for i, s in servos.items() if abs(s["goal"] - start[i]) > 20]
                if len(moved) >= 3:
                    break
                time.sleep(0.2)
            torques = [s["torque"] for s in emu.state()["servos"].values()]
            alive = proc.poll() is None
            proc.send_signal(signal.SIGINT)  # Ctrl-C
            try:
                code = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:  # seen twice in full-suite runs: keep its log
                code = None
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        log.seek(0)
        text = log.read()
        assert alive and len(moved) >= 3, text[-4000:]
        assert all(torques), "the follower holds (torque on) while the policy runs"
        assert code == 0, f"exit {code} (None: still running 30 s after Ctrl-C)\n{text[-4000:]}"
        assert not any(s["torque"] for s in emu.state()["servos"].values()), "limp after Ctrl-C"
    assert "deploy: act policy" in text and "follower, front, policy" in text, text[:2000]


def test_print_graph_has_the_cards_cameras_and_the_calibrated_limits(setup) -> None:
    cal = f"follower={setup['calibration']}"
    out = apprentice("deploy", "--robot", "so101", "--policy", str(setup["policy"]),
                     "--calibration", cal, "--print-graph")  # fmt: skip
    assert out.returncode == 0, out.stderr
    doc = yaml.safe_load(out.stdout)
    procs = {p["label"]: p for p in doc["processes"]}
    assert list(procs) == ["follower", "front", "policy"]  # no leader, no unused wrist camera
    policy = procs["policy"]["parameters"]
    assert policy["arms"] == ["follower"] and policy["cameras"] == ["front"]
    assert policy["image_transport"] == "compressed"
    # the calibrated range of motion (±1000 ticks), inside the config's bounds (±2.0-2.2 rad)
    swept = 1000 * 2 * np.pi / 4096
    np.testing.assert_allclose(policy["joint_lower"][:5], -swept, atol=1e-6)
    np.testing.assert_allclose(policy["joint_upper"][:5], swept, atol=1e-6)
    assert [policy["joint_lower"][5], policy["joint_upper"][5]] == [0.0, 1.7]  # gripper units
    assert procs["follower"]["parameters"]["namespace"] == "follower"


def test_mistakes_are_one_line_and_exit_2(setup, tmp_path) -> None:
    aloha = export_tiny_act(tmp_path / "aloha", [f"left_{j}" for j in JOINTS], HOME, ["front"],
                            (48, 64))  # fmt: skip
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "policy_card.json").write_text(json.dumps({"format": "something else"}))
    cal = f"follower={setup['calibration']}"
    cases = [
        (["--policy", str(tmp_path / "nope")], "cannot read"),
        (["--policy", str(broken)], "not an apprentice policy card"),
        (["--policy", str(aloha), "--calibration", cal], "are not joints of so101"),
        (["--policy", str(setup["policy"]), "--calibration", "follower=/nope.yaml"],
         "no calibration /nope.yaml"),
        (["--policy", str(setup["policy"]), "--calibration", cal, "--port", "follower=/dev/nope"],
         "no serial port /dev/nope"),
        (["--policy", str(setup["policy"]), "--calibration", cal, "--port", "follower"],
         "--port takes NAME=VALUE"),
        (["--policy", str(setup["policy"]), "--calibration", cal, "-p", "polcy.threads=2"],
         "no process labelled 'polcy'"),
    ]  # fmt: skip
    for args, message in cases:
        out = apprentice("deploy", "--robot", "so101", *args)
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        assert message in out.stderr and "Traceback" not in out.stderr, (args, out.stderr)
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    out = apprentice("deploy", "--robot", "sO101", "--policy", str(setup["policy"]))
    assert out.returncode == 2 and "no robot config 'sO101'" in out.stderr, out.stderr
