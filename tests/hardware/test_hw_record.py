"""`apprentice record --robot so101` against byte-level emulated leader and follower buses and
file-backed cameras: the real robot config, its generated record graph, real processes.

A hand moves the limp leader (the emulator's `move`); teleop copies it onto the follower; the
recorder writes both arms, the commands and both cameras; the dataset builder takes the bag.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from child_processes import Lines
from hw_setup import IDS, centred_calibration
from rosbags.highlevel import AnyReader

from apprentice.calibration.arm import ArmCalibration
from apprentice.dataset import EpisodeBag, build_cache, infer_config
from apprentice.drivers.emulator import EmulatorProcess
from apprentice.drivers.factory import arm_config
from apprentice.recording import DatasetIndex

pytestmark = [pytest.mark.ros, pytest.mark.slow]

# Leader poses the "hand" moves through, in ticks per servo id (the centred calibration maps
# tick 2048 to joint value 0; both arms use the same map, so the follower's goal ticks should
# end where the leader's positions are).
POSES = [
    {1: 2048, 2: 2048, 3: 2048, 4: 2048, 5: 2048, 6: 1200},
    {1: 2300, 2: 1850, 3: 2250, 4: 1900, 5: 2200, 6: 1500},
    {1: 2500, 2: 1700, 3: 2400, 4: 1800, 5: 2350, 6: 1800},
]


def write_video(path: Path, color: tuple[int, int, int], frames: int = 30) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (640, 480))
    for i in range(frames):
        img = np.full((480, 640, 3), color, np.uint8)
        cv2.circle(img, (50 + 15 * i, 240), 30, (255, 255, 255), -1)
        writer.write(img)
    writer.release()
    return path


def move_leader(leader: EmulatorProcess, start: dict, end: dict, duration: float) -> None:
    """A hand moving the limp leader smoothly from one pose to another."""
    steps = int(duration * 50)
    for k in range(1, steps + 1):
        for i in IDS:
            ticks = start[i] + (end[i] - start[i]) * k / steps
            leader.control("move", id=i, ticks=round(ticks))
        time.sleep(duration / steps)


def test_record_an_episode_on_emulated_so101(tmp_path: Path) -> None:
    cals = {}
    for arm in ("follower", "leader"):
        cal = centred_calibration(arm_config("so101", arm))
        cals[arm] = cal.save(tmp_path / f"so101_{arm}.yaml")
    front = write_video(tmp_path / "front.avi", (40, 90, 160))
    wrist = write_video(tmp_path / "wrist.avi", (160, 90, 40))
    dataset = tmp_path / "demos"
    with (
        EmulatorProcess("feetech", IDS, tau_s=0.01) as follower,
        EmulatorProcess("feetech", IDS, tau_s=0.01) as leader,
    ):
        for i, ticks in POSES[0].items():
            leader.control("move", id=i, ticks=ticks)
        start_goals = {i: s["goal"] for i, s in follower.state()["servos"].items()}
        cmd = [sys.executable, "-m", "apprentice", "record", "--robot", "so101",
               "--port", f"follower={follower.port}", "--port", f"leader={leader.port}",
               "--camera", f"front={front}", "--camera", f"wrist={wrist}",
               "--calibration", f"follower={cals['follower']}",
               "--calibration", f"leader={cals['leader']}",
               "--dataset", str(dataset), "--task", "wave"]  # fmt: skip
        proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        out = Lines(proc.stdout)
        try:
            at, _ = out.wait_for("ready; keys", 90)
            time.sleep(3.0)  # teleop's smooth start (2 s) brings the follower onto the leader
            proc.stdin.write("s\n")
            proc.stdin.flush()
            at, _ = out.wait_for("recording episode_0000", 20, at)
            move_leader(leader, POSES[0], POSES[1], 1.5)
            move_leader(leader, POSES[1], POSES[2], 1.5)
            time.sleep(2.5)  # holding still: the follower settles on the leader's pose
            at, status = out.wait_for("REC episode_0000", 10, at)
            goals = {int(i): s["goal"] for i, s in follower.state()["servos"].items()}
            torques = [s["torque"] for s in follower.state()["servos"].values()]
            proc.stdin.write("k\n")
            proc.stdin.flush()
            _, kept = out.wait_for("kept episode_0000", 30, at)
            proc.stdin.write("q\n")
            proc.stdin.flush()
            assert proc.wait(timeout=60) == 0, "".join(out.lines)[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        after = follower.state()["servos"]
    log = "".join(out.lines)
    # What the operator saw: episode time and the live rates of every stream.
    assert re.search(r"Hz: follower \d+ .* leader/follower \d+ .* front \d+", status), log
    assert "kept episode_0000" in kept
    # The follower was torqued and its goal registers followed the leader's hand.
    assert all(torques)
    assert all(goals[i] != start_goals[str(i)] for i in IDS if POSES[2][i] != POSES[0][i])
    for i in IDS:
        assert abs(goals[i] - POSES[2][i]) <= 8, (i, goals[i], POSES[2][i], log[-2000:])
    assert not any(s["torque"] for s in after.values()), "stopping leaves the follower limp"

    entries = DatasetIndex(dataset).list()
    assert [e.episode_id for e in entries] == ["episode_0000"] and entries[0].task == "wave"
    bag = dataset / entries[0].bag
    counts: dict[str, int] = {}
    with AnyReader([bag]) as reader:
        for conn, _t, _raw in reader.messages():
            counts[conn.topic] = counts.get(conn.topic, 0) + 1
    duration = entries[0].duration_s
    assert duration > 4.0, entries[0]
    for topic, hz in (("/follower/joint_states", 100), ("/leader/follower/joint_states", 100),
                      ("/cameras/front/image_raw/compressed", 30),
                      ("/cameras/wrist/image_raw/compressed", 30),
                      ("/cameras/front/camera_info", 30), ("/follower/commands", 50)):  # fmt: skip
        assert counts.get(topic, 0) >= 0.85 * hz * duration, (topic, counts, duration)

    # The dataset builder takes the bag: the follower is the state, its commands the action.
    cfg = infer_config(EpisodeBag(bag).topics, image_hw=(48, 64))
    assert [s.topic for s in cfg.state] == ["/follower/joint_states"]
    assert [c.name for c in cfg.cameras] == ["front", "wrist"]
    # the bag itself: under load the quality gate may flag it (lost messages), not our point
    cache = build_cache(bag, cfg, tmp_path / "cache", progress=False)
    assert len(cache.episodes) == 1 and cache.episodes[0].length > 50
    follower_cal = ArmCalibration.load(cals["follower"]).joint_calibrations()
    actions = cache.array("action")
    final = np.array([c.to_joint(POSES[2][c.servo_id]) for c in follower_cal])
    np.testing.assert_allclose(actions[-1], final, atol=0.02)


def test_record_mistakes_are_one_line_and_exit_2(tmp_path: Path) -> None:
    """Before any process starts: what the user has not set up yet, or mistyped."""
    cases = [
        (["--robot", "aloha"], "RealSense cameras top, left_wrist, right_wrist have no serial"),
        (["--robot", "aloha"], "left: no calibration"),
        (["--robot", "so101", "--camera", f"front={tmp_path / 'none.avi'}"],
         "front: no camera or video file"),
        (["--robot", "so101", "--scripted"], "a robot has a leader arm"),
        (["--robot", "so101", "--port", "folower=/dev/null"], "no process labelled 'folower'"),
        (["--robot", "so-101"], "no robot config 'so-101'"),
    ]  # fmt: skip
    for args, message in cases:
        out = subprocess.run(
            [sys.executable, "-m", "apprentice", "record", *args, "--dataset", str(tmp_path)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        assert message in out.stderr and "Traceback" not in out.stderr, (args, out.stderr)
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert not any(tmp_path.iterdir()), "nothing is written before the checks pass"
