"""The policy node under bad stamps, over real rclpy processes on the isolated domain: the robot
is faked by this test (joint states at 100 Hz, the `wrist` camera at ~33 Hz, both stamped at
publish time), so it can stamp one frame 30 s ahead, one 0.4 s ahead, and stop the camera.

Before the stamp rule, one frame stamped +30 s made every later frame out of order: inference
stopped, commands froze, stats said `running`, nothing was logged, and a camera that then
stopped for 2.5 s tripped no fault. Here: the frame is dropped and counted, inference and
commands go on, and the stop trips the hold within the arrival bound (not 0.4 s later, as the
stamps alone would) and then the fault.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import rclpy
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from std_srvs.srv import Trigger
from tiny_act import export_tiny_act

from apprentice.graph import write_params_file

pytestmark = [pytest.mark.ros, pytest.mark.slow]

H, W = 48, 64  # camera images, pixels
JOINTS = [f"right_{j}" for j in ("waist", "shoulder", "elbow", "wrist_angle", "gripper")]
HOME = np.array([0.0, -0.96, 1.16, -0.3, 0.024])
LOWER = [-3.14, -1.85, -1.76, -1.86, 0.021]
UPPER = [3.14, 1.25, 1.6, 2.23, 0.057]
RATE = 50.0  # Hz, control = policy rate
MAX_AGE = 0.1  # s, the watchdog's hold threshold
SAFE_AFTER = 1.0  # s, the latched fault
TICK = 1.0 / RATE


def _stamp(msg, t: float) -> None:
    msg.header.stamp.sec, msg.header.stamp.nanosec = int(t), int((t % 1) * 1e9)


class FakeRobot:
    """/right/joint_states every 10 ms (the home pose) and a noise frame on the wrist camera
    every third tick, stamped at publish time, unless `camera_on` is cleared. `ahead(s)`:
    the next frame is stamped s ahead of the clock."""

    def __init__(self, node: Node) -> None:
        self.joints = node.create_publisher(JointState, "/right/joint_states", 10)
        self.camera = node.create_publisher(Image, "/cameras/wrist/image_raw", 5)
        self.rng = np.random.default_rng(1)
        self.camera_on = threading.Event()
        self.camera_on.set()
        self.last_frame_sent = 0.0  # s, host clock: when the last frame went out
        self._ahead: float | None = None
        self._sent_ahead = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def ahead(self, seconds: float) -> None:
        """Stamps the next frame `seconds` ahead; returns once it is sent."""
        self._sent_ahead.clear()
        self._ahead = seconds
        assert self._sent_ahead.wait(2.0)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        k = 0
        while not self._stop.wait(0.01):
            k += 1
            t = time.time()
            msg = JointState(name=JOINTS, position=HOME.tolist())
            _stamp(msg, t)
            self.joints.publish(msg)
            if k % 3 or not self.camera_on.is_set():
                continue
            img = Image(height=H, width=W, encoding="rgb8", step=W * 3)
            ahead, self._ahead = self._ahead, None
            _stamp(img, t + (ahead or 0.0))
            img.data = self.rng.integers(0, 256, H * W * 3, dtype=np.uint8).tobytes()
            self.camera.publish(img)
            self.last_frame_sent = t
            if ahead is not None:
                self._sent_ahead.set()


class RosClient:
    def __init__(self) -> None:
        self.node = Node("stamp_tester")
        self.robot = FakeRobot(self.node)
        self.commands: list[tuple[float, np.ndarray]] = []  # (tick stamp, position)
        self.node.create_subscription(JointState, "/right/joint_commands", self._on_cmd, 50)

    def _on_cmd(self, msg: JointState) -> None:
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        self.commands.append((stamp, np.array(msg.position)))

    def spin(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            rclpy.spin_once(self.node, timeout_sec=0.01)

    def stats(self) -> dict:
        cli = self.node.create_client(Trigger, "/policy/stats")
        assert cli.wait_for_service(timeout_sec=10.0)
        fut = cli.call_async(Trigger.Request())
        rclpy.spin_until_future_complete(self.node, fut, timeout_sec=10.0)
        self.node.destroy_client(cli)
        assert fut.result() is not None
        return json.loads(fut.result().message)


@pytest.fixture(scope="module")
def tester():
    rclpy.init()
    t = RosClient()
    yield t
    t.robot.close()
    t.node.destroy_node()
    rclpy.shutdown()


@pytest.fixture(scope="module")
def policy_node(tmp_path_factory, tester):
    folder = tmp_path_factory.mktemp("stamps")
    policy = export_tiny_act(
        folder / "act", JOINTS, HOME, ["wrist"], (H, W), np.full(len(JOINTS), 0.1), rate_hz=RATE
    )
    params = {
        "policy_dir": str(policy), "arms": ["right"], "cameras": ["wrist"],
        "control_rate": RATE, "output": "joint_state", "max_observation_age": MAX_AGE,
        "safe_after": SAFE_AFTER, "ramp_time": 0.5, "joint_lower": LOWER, "joint_upper": UPPER,
        "max_velocity": [1.0, 1.0, 1.0, 1.0, 0.05], "max_accel": [10.0],
        "execution_provider": "cpu", "startup_timeout": 30.0,
    }  # fmt: skip
    log = folder / "policy.log"
    cmd = [sys.executable, "-m", "apprentice_ros.policy_node", "--ros-args", "--params-file",
           str(write_params_file(params, folder, "policy"))]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while not tester.commands and time.monotonic() < deadline and proc.poll() is None:
        tester.spin(0.05)
    assert tester.commands, f"no command from the policy node:\n{log.read_text()}"
    yield proc, log
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0, log.read_text()


def _all_equal(cmds: list[np.ndarray]) -> bool:
    return all(np.array_equal(c, cmds[0]) for c in cmds)


def test_a_future_frame_is_counted_and_a_stopped_camera_still_holds_then_faults(
    policy_node, tester
) -> None:
    proc, log = policy_node
    tester.spin(1.5)  # past the smooth start
    before = tester.stats()
    assert before["mode"] == "running", before

    tester.robot.ahead(30.0)  # one frame stamped +30 s, then correct frames again
    tester.commands.clear()
    tester.spin(1.5)
    after = tester.stats()
    wrist = after["inputs"]["camera wrist"]
    assert wrist["future_stamps"] == 1 and wrist["out_of_order"] == 0, after["inputs"]
    assert wrist["stale"] is False and after["inputs"]["arm right"]["future_stamps"] == 0
    assert after["mode"] == "running", after
    assert after["inferences"] - before["inferences"] >= 20, (before, after)
    late = [q for stamp, q in tester.commands if stamp > tester.commands[0][0] + 0.5]
    assert len(late) > 30 and not _all_equal(late), "commands froze after the +30 s frame"

    # One frame 0.4 s ahead (within the bound: accepted), then the camera stops for 2.5 s. By
    # its stamp the frame stays fresh 0.4 s longer; by its arrival it does not.
    tester.robot.ahead(0.4)
    tester.robot.camera_on.clear()
    last_sent = tester.robot.last_frame_sent
    tester.commands.clear()
    tester.spin(0.5)
    held = tester.stats()
    assert held["mode"] == "hold" and held["inputs"]["camera wrist"]["stale"] is True, held
    cmds = list(tester.commands)
    after_bound = [q for stamp, q in cmds if stamp > last_sent + MAX_AGE + 0.15]
    assert len(after_bound) > 5 and _all_equal(after_bound), "the arm moved on a stopped camera"
    tester.spin(2.0)  # 2.5 s without frames in all
    faulted = tester.stats()
    assert faulted["mode"] == "fault", faulted
    assert faulted["fault_reason"].startswith("no fresh observation"), faulted
    assert faulted["inputs"]["camera wrist"]["age_s"] > 2.0
    assert faulted["inputs"]["arm right"]["stale"] is False

    proc.send_signal(signal.SIGINT)
    assert proc.wait(15) == 0, log.read_text()
    text = log.read_text()
    assert "camera wrist: dropped 1 stamped more than 0.5 s ahead of the host clock" in text
    assert "safety mode running -> hold: camera wrist: last accepted message arrived" in text
    assert "safety mode hold -> fault: no fresh observation" in text
