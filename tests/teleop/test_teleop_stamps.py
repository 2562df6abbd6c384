"""The teleop node under a bad leader stamp, over a real rclpy process on the isolated domain:
one leader state stamped +30 s is dropped and counted, and the follower keeps following the
states after it (before the stamp rule it held for 30 s: every later state was out of order)."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import rclpy
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray
from std_srvs.srv import Trigger

from apprentice.graph import write_params_file

pytestmark = [pytest.mark.ros]

NAMES = ["a", "b"]


class FakeArms:
    """/leader/right/joint_states (a slow sine) and /right/joint_states (at rest) at 100 Hz,
    stamped at publish time; `ahead(s)` stamps the next leader state s ahead."""

    def __init__(self, node: Node) -> None:
        self.leader = node.create_publisher(JointState, "/leader/right/joint_states", 10)
        self.follower = node.create_publisher(JointState, "/right/joint_states", 10)
        self._ahead: float | None = None
        self._sent = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def ahead(self, seconds: float) -> None:
        self._sent.clear()
        self._ahead = seconds
        assert self._sent.wait(2.0)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            t = time.time()
            ahead, self._ahead = self._ahead, None
            for pub, q, s in (
                (self.leader, 0.3 * math.sin(t), t + (ahead or 0.0)),
                (self.follower, 0.0, t),
            ):
                msg = JointState(name=NAMES, position=[q, -q])
                msg.header.stamp.sec, msg.header.stamp.nanosec = int(s), int((s % 1) * 1e9)
                pub.publish(msg)
            if ahead is not None:
                self._sent.set()


def test_a_future_leader_state_is_dropped_and_the_follower_keeps_following(tmp_path) -> None:
    params = {"pairs": ["leader/right:right"], "rate_hz": 50.0, "ramp_time": 0.2}
    log = tmp_path / "teleop.log"
    cmd = [sys.executable, "-m", "apprentice_ros.teleop", "--ros-args", "--params-file",
           str(write_params_file(params, tmp_path, "teleop"))]  # fmt: skip
    rclpy.init()
    node = Node("teleop_stamp_tester")
    arms = FakeArms(node)
    commands: list[np.ndarray] = []
    node.create_subscription(
        Float64MultiArray, "/right/commands", lambda m: commands.append(np.array(m.data)), 50
    )

    def spin(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            rclpy.spin_once(node, timeout_sec=0.01)

    def stats() -> dict:
        cli = node.create_client(Trigger, "/teleop/stats")
        assert cli.wait_for_service(timeout_sec=10.0)
        fut = cli.call_async(Trigger.Request())
        rclpy.spin_until_future_complete(node, fut, timeout_sec=10.0)
        node.destroy_client(cli)
        return json.loads(fut.result().message)["/leader/right->/right"]

    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not commands and time.monotonic() < deadline and proc.poll() is None:
            spin(0.05)
        assert commands, f"no command from teleop:\n{log.read_text()}"
        spin(0.5)
        before = stats()
        arms.ahead(30.0)
        commands.clear()
        spin(1.0)
        after = stats()
        assert after["leader"]["future_stamps"] == 1 and after["leader"]["out_of_order"] == 0
        assert after["follower"]["future_stamps"] == 0
        assert after["published"] - before["published"] >= 30, (before, after)
        assert len(commands) >= 30 and not all(np.array_equal(c, commands[0]) for c in commands)
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(15)
        arms.close()
        node.destroy_node()
        rclpy.shutdown()
    assert code == 0, log.read_text()
    assert "/leader/right/joint_states: dropped 1 stamped more than 0.5 s" in log.read_text()
