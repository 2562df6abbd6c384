"""The policy node maps its outputs to arms in the card's order, whatever order the arms' first
joint states arrive in (it once took the arrival order: with two arms, left and right commands
were swapped in about half the episodes). Real processes on the isolated domain: this test
publishes two fake arms, `a` and `b` (b first, a once the node listens to b), and a camera."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import rclpy
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64MultiArray
from tiny_act import export_tiny_act

from apprentice.graph import stop_processes, write_params_file

pytestmark = [pytest.mark.ros]

H, W = 32, 32
ARMS = {"a": ("a_j0", "a_j1"), "b": ("b_j0", "b_j1")}
HOME = np.array([0.0, 0.0, 1.0, 1.0])  # a at 0, b at 1
OFFSET = np.array([0.1, 0.1, -0.1, -0.1])  # the policy sends a towards 0.1, b towards 0.9


def _stamp(msg, t: float) -> None:
    msg.header.stamp.sec, msg.header.stamp.nanosec = int(t), int((t % 1) * 1e9)


def test_two_arms_get_their_own_commands_whichever_reports_first(tmp_path: Path) -> None:
    policy = export_tiny_act(tmp_path / "act", [n for ns in ARMS.values() for n in ns], HOME,
                             ["top"], (H, W), OFFSET, spread=0.005)  # fmt: skip
    rclpy.init()
    node = rclpy.create_node("arm_order_tester")
    pubs = {a: node.create_publisher(JointState, f"/{a}/joint_states", 10) for a in ARMS}
    cam = node.create_publisher(Image, "/cameras/top/image_raw", 5)
    got: dict[str, list[np.ndarray]] = {a: [] for a in ARMS}
    for a in ARMS:
        node.create_subscription(Float64MultiArray, f"/{a}/commands",
                                 lambda m, a=a: got[a].append(np.array(m.data)), 50)  # fmt: skip
    stop = threading.Event()
    a_from = [float("inf")]  # a publishes from 0.5 s after the node has subscribed to b

    def publish() -> None:  # b from the start; the camera at 30 Hz
        k = 0
        while not stop.wait(0.01):
            now = time.time()
            if a_from[0] == float("inf") and node.count_subscribers("/b/joint_states") > 0:
                a_from[0] = time.monotonic() + 0.5
            for i, (arm, names) in enumerate(ARMS.items()):
                if arm == "a" and time.monotonic() < a_from[0]:
                    continue
                msg = JointState(name=list(names), position=list(HOME[2 * i : 2 * i + 2]))
                _stamp(msg, now)
                pubs[arm].publish(msg)
            if k % 3 == 0:
                img = Image(height=H, width=W, encoding="rgb8", step=3 * W,
                            data=bytes(np.full(H * W * 3, 90, np.uint8)))  # fmt: skip
                _stamp(img, now)
                cam.publish(img)
            k += 1

    thread = threading.Thread(target=publish, daemon=True)
    thread.start()
    params = {
        "policy_dir": str(policy), "arms": ["a", "b"], "cameras": ["top"],
        "control_rate": 50.0, "output": "forward", "ramp_time": 0.2,
        "joint_lower": [-3.0] * 4, "joint_upper": [3.0] * 4, "max_velocity": [2.0] * 4,
        "max_accel": [50.0], "execution_provider": "cpu", "startup_timeout": 20.0,
    }  # fmt: skip
    path = write_params_file(params, tmp_path, "policy")
    log = tmp_path / "policy.log"
    cmd = [sys.executable, "-m", "apprentice_ros.policy_node", "--ros-args", "--params-file",
           str(path)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        end = time.monotonic() + 40
        while time.monotonic() < end and min(len(v) for v in got.values()) < 100:
            assert proc.poll() is None, log.read_text()
            rclpy.spin_once(node, timeout_sec=0.02)
    finally:
        stop.set()
        thread.join()
        stop_processes([proc], 10.0)
        node.destroy_node()
        rclpy.shutdown()
    assert min(len(v) for v in got.values()) >= 100, log.read_text()
    a, b = np.stack(got["a"][-20:]), np.stack(got["b"][-20:])  # after the smooth start
    np.testing.assert_allclose(a, 0.1, atol=0.08)  # a's own actions, not b's (~0.9)
    np.testing.assert_allclose(b, 0.9, atol=0.08)
    # a card exported without the camera's intrinsics runs, with a warning (no camera_info here)
    assert "camera top (32x32 raw → 32x32): the policy card does not say" in log.read_text()
