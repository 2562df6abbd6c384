"""The simulated robot graph over real ROS 2 processes on an isolated domain.

The graph runs in child processes (GraphRunner, as `apprentice graph run` does); the rate check
uses an independent probe process; commands come from an rclpy node in this test process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest
import rclpy
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, JointState
from std_msgs.msg import Float64MultiArray
from std_srvs.srv import Trigger

from apprentice.graph import GraphRunner, load_graph
from apprentice.sim.scenes import get_scene
from apprentice_ros.sim_robot import camera_fovys

pytestmark = [pytest.mark.ros, pytest.mark.slow]

CAMERAS = ("top", "angle")
FOVY_PARAM = ("top=50",)  # angle keeps the scene's lens


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    # top through a 50° lens (as the graph has it), angle through the scene's own (78°)
    g = load_graph("sim_aloha").with_parameters(
        {"cameras": list(CAMERAS), "camera_fovy": list(FOVY_PARAM)}
    )
    logs = tmp_path_factory.mktemp("graph-logs")
    runner = GraphRunner(g, log_dir=logs).start()
    yield runner
    code = runner.stop()
    log = "\n".join(p.read_text(errors="replace")[-3000:] for p in logs.glob("*.log"))
    assert code == 0, f"graph exited with {code}:\n{log}"


@pytest.fixture(scope="module")
def node(graph):
    rclpy.init()
    n = Node("test_commander")
    yield n
    n.destroy_node()
    rclpy.shutdown()


def test_rates_and_stamps_seen_by_an_independent_subscriber(graph, tmp_path) -> None:
    out = tmp_path / "probe.json"
    topics = ["/left/joint_states", "/right/joint_states"]
    for cam in CAMERAS:
        topics += [f"/cameras/{cam}/image_raw", f"/cameras/{cam}/image_raw/compressed"]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "apprentice_ros.probe",
            *topics,
            "--duration",
            "10",
            "--json",
            str(out),
        ],
        check=True,
        timeout=90,
    )
    report = json.loads(out.read_text())
    assert not graph.poll(), "a graph process died"
    for topic in topics:
        r = report[topic]
        nominal = 100.0 if "joint_states" in topic else 30.0
        tol = 0.1 * nominal  # a fresh-clone CI run on 2 cores saw 93 Hz of 100 (sim lag)
        assert abs(r["rate_hz"] - nominal) <= tol, (topic, r)
        assert r["strictly_increasing"], (topic, r)


def test_camera_fovy_entries_name_their_camera() -> None:
    known = get_scene("aloha_transfer_cube").cameras
    assert camera_fovys(["top", "angle"], ["top=50", "left_wrist=30"], known) == [50.0, None]
    assert camera_fovys(["top"], None, known) == [None]
    for bad in (["top"], ["top=0"], ["top=180"], ["top=wide"], ["nope=50"]):
        with pytest.raises(ValueError):
            camera_fovys(["top"], bad, known)


def test_each_camera_has_its_lens_in_camera_info(graph, node) -> None:
    infos: dict[str, CameraInfo] = {}
    for cam in CAMERAS:
        node.create_subscription(
            CameraInfo, f"/cameras/{cam}/camera_info", lambda m, c=cam: infos.setdefault(c, m), 10
        )
    end = time.monotonic() + 20
    while len(infos) < len(CAMERAS) and time.monotonic() < end:
        rclpy.spin_once(node, timeout_sec=0.1)
    assert set(infos) == set(CAMERAS), f"camera_info from {sorted(infos)} only"
    for cam, fovy in zip(CAMERAS, (50.0, 78.0), strict=True):  # 78: the MJCF's fovy
        info = infos[cam]
        expected = 0.5 * info.height / np.tan(np.deg2rad(fovy) / 2)
        assert info.k[0] == pytest.approx(expected, rel=1e-6), (cam, info.k)


class Watcher:
    def __init__(self, node: Node, arm: str) -> None:
        self.node = node
        self.latest: JointState | None = None
        node.create_subscription(JointState, f"/{arm}/joint_states", self._cb, 10)
        self.pub = node.create_publisher(Float64MultiArray, f"/{arm}/commands", 10)
        self.named = node.create_publisher(JointState, f"/{arm}/joint_commands", 10)
        self.stats_cli = node.create_client(Trigger, f"/{arm}/stats")

    def _cb(self, msg: JointState) -> None:
        self.latest = msg

    def spin(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            rclpy.spin_once(self.node, timeout_sec=0.01)

    def position(self) -> np.ndarray:
        self.latest = None
        while self.latest is None:
            rclpy.spin_once(self.node, timeout_sec=0.1)
        return np.array(self.latest.position)

    def stats(self) -> dict:
        assert self.stats_cli.wait_for_service(timeout_sec=10)
        fut = self.stats_cli.call_async(Trigger.Request())
        rclpy.spin_until_future_complete(self.node, fut, timeout_sec=10)
        return json.loads(fut.result().message)


def test_command_moves_joints_within_002_rad_in_1s(node) -> None:
    w = Watcher(node, "right")
    w.spin(1.0)  # discovery
    q0 = w.position()
    target = q0.copy()
    target[:6] += np.array([0.3, -0.2, 0.2, 0.3, -0.3, 0.4])
    before = w.stats()
    # The sim's velocity limit (10 rad/s) lets one command step 0.5 rad: this one goes whole.
    assert before["max_velocity"] == [10.0] * len(q0)
    t0 = time.monotonic()
    w.pub.publish(Float64MultiArray(data=target.tolist()))
    err = np.inf
    while time.monotonic() - t0 < 1.0:
        err = np.abs(w.position() - target).max()
        if err < 0.02:
            break
    assert err < 0.02, f"max error {err:.4f} rad after {time.monotonic() - t0:.2f} s"
    assert w.stats()["clamped"] == before["clamped"]


def test_bad_commands_refused_counted_and_arm_holds(node) -> None:
    w = Watcher(node, "left")
    w.spin(1.0)
    before = w.stats()
    q0 = w.position()
    bad = [
        [float("nan")] * 7,
        [0.0] * 6,
        (q0 + np.r_[10.0, np.zeros(6)]).tolist(),  # waist far outside its limits
        [float("inf")] + q0[1:].tolist(),
    ]
    for data in bad:
        w.pub.publish(Float64MultiArray(data=data))
    w.named.publish(JointState(name=["left_waist", "no_such_joint"], position=[0.1, 0.2]))
    w.spin(1.0)
    after = w.stats()
    assert after["rejected"] - before["rejected"] == 5, after
    assert after["accepted"] == before["accepted"]
    assert np.abs(w.position() - q0).max() < 0.01  # it held
    # and it still takes a good command by name afterwards
    w.named.publish(JointState(name=["left_waist"], position=[q0[0] + 0.2]))
    w.spin(1.0)
    assert abs(w.position()[0] - (q0[0] + 0.2)) < 0.02
