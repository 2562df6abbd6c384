"""The `camera` executable as a real process: a file-fed UVC backend on ROS 2, checked by the
independent probe process (rates, stamps) and by a CameraInfo subscriber here (calibration).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo

from apprentice.calibration.camera import write_camera_info
from apprentice.robot_io import CameraSpec
from apprentice_ros.camera import IMAGE_QOS

pytestmark = [pytest.mark.ros]

W, H, FPS = 640, 480, 30.0
CALIB = CameraSpec("bench", W, H, 612.5, 611.75, 318.25, 243.5, (0.11, -0.23, 1e-3, -2e-3, 0.0))


@pytest.fixture(scope="module")
def camera_process(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cam-node")
    video = folder / "scene.avi"
    out = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (W, H))
    rng = np.random.default_rng(0)
    for _ in range(30):
        out.write(rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
    out.release()
    info = folder / "bench.yaml"
    write_camera_info(info, CALIB)
    log = folder / "camera.log"
    params = {
        "backend": "uvc",
        "device": str(video),
        "name": "bench",
        "width": W,
        "height": H,
        "fps": FPS,
        "camera_info_file": str(info),
        "jpeg_quality": 80,
    }
    cmd = [sys.executable, "-m", "apprentice_ros.camera", "--ros-args"]
    for k, v in params.items():
        cmd += ["-p", f"{k}:={v}"]
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
        yield proc
        proc.send_signal(signal.SIGINT)  # Ctrl-C, what GraphRunner and ros2 launch send first
        try:
            code = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
    assert code == 0, log.read_text(errors="replace")[-3000:]


def test_topics_at_30hz_with_increasing_stamps(camera_process, tmp_path) -> None:
    out = tmp_path / "probe.json"
    topics = ["/cameras/bench/image_raw", "/cameras/bench/image_raw/compressed"]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "apprentice_ros.probe",
            *topics,
            "--duration",
            "3",
            "--json",
            str(out),
        ],
        check=True,
        timeout=60,
    )
    assert camera_process.poll() is None, "the camera process died"
    report = json.loads(out.read_text())
    for topic in topics:
        r = report[topic]
        assert abs(r["rate_hz"] - FPS) <= 0.1 * FPS, (topic, r)
        assert abs(r["stamp_rate_hz"] - FPS) <= 0.1 * FPS, (topic, r)
        assert r["strictly_increasing"], (topic, r)
        assert 0 < r["latency_mean_ms"] < 100, (topic, r)  # grab stamp: ≥ one period old


def test_camera_info_comes_from_the_calibration_file(camera_process) -> None:
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    try:
        node = Node("camera_info_check", context=ctx)
        ex = SingleThreadedExecutor(context=ctx)
        ex.add_node(node)
        got: list[CameraInfo] = []
        node.create_subscription(CameraInfo, "/cameras/bench/camera_info", got.append, IMAGE_QOS)
        deadline = time.monotonic() + 20
        while len(got) < 3 and time.monotonic() < deadline:
            ex.spin_once(timeout_sec=0.1)
        ex.shutdown()
        node.destroy_node()
    finally:
        rclpy.shutdown(context=ctx)
    assert len(got) >= 3, "no camera_info"
    msg = got[-1]
    assert (msg.width, msg.height) == (W, H)
    np.testing.assert_array_equal(np.array(msg.k).reshape(3, 3), CALIB.k)
    assert list(msg.d) == list(CALIB.distortion)
    assert msg.header.frame_id == "bench_optical_frame"


def test_missing_device_exits_with_a_message() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "apprentice_ros.camera", "--ros-args", "-p", "device:=/no/such.avi"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode != 0
    assert "no video file or device /no/such.avi" in run.stderr
