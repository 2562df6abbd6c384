"""The recorder node as a real process: episodes, quality gate, discard, SIGTERM and kill -9.

Test-owned rclpy publishers stand in for a camera and an arm, so the test controls exactly
what is sent (a real publisher on the isolated domain, not a mock).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import rclpy
from child_processes import Lines, child_pid
from rclpy.node import Node
from rosbags.highlevel import AnyReader
from sensor_msgs.msg import Image, JointState
from std_srvs.srv import Trigger

from apprentice.graph import Graph, GraphRunner, ProcessSpec
from apprentice.recording import DatasetIndex, needs_recovery
from apprentice_ros.conversions import to_time

pytestmark = [pytest.mark.ros, pytest.mark.slow]

TOPICS = ["/test/joint_states:100:joint", "/test/cam/image_raw:30:camera"]


class Publishers(Node):
    """A 100 Hz arm and a 30 Hz camera; `pause_camera` starves the camera for a while."""

    def __init__(self) -> None:
        super().__init__("test_publishers")
        self.joints = self.create_publisher(JointState, "/test/joint_states", 10)
        self.cam = self.create_publisher(Image, "/test/cam/image_raw", 10)
        self.pause_until = 0.0
        self.sent = {"joint": 0, "camera": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)
        self._thread.start()

    def _run(self) -> None:
        start = time.monotonic()
        k = 0
        while not self._stop.wait(max(0.0, start + k * 0.01 - time.monotonic())):
            now = time.time()
            js = JointState(name=["a", "b"], position=[np.sin(now), np.cos(now)])
            js.header.stamp = to_time(now)
            self.joints.publish(js)
            self.sent["joint"] += 1
            if k % 3 == 0 and time.monotonic() >= self.pause_until:
                img = Image(height=24, width=32, encoding="rgb8", step=96, data=bytes(24 * 96))
                img.header.stamp = js.header.stamp
                self.cam.publish(img)
                self.sent["camera"] += 1
            k += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def start_recorder(dataset: Path, logs: Path) -> GraphRunner:
    graph = Graph(
        "recorder_only",
        (
            ProcessSpec(
                "recorder",
                "recorder",
                {"dataset_dir": str(dataset), "task": "test task", "topics": TOPICS},
            ),
        ),
    )
    return GraphRunner(graph, log_dir=logs).start()


@pytest.fixture(scope="module")
def pubs():
    rclpy.init()
    node = Publishers()
    yield node
    node.close()
    node.destroy_node()
    rclpy.shutdown()


def call(node: Node, srv: str, timeout: float = 30.0) -> dict:
    client = node.create_client(Trigger, srv)
    assert client.wait_for_service(timeout_sec=timeout), srv
    future = client.call_async(Trigger.Request())
    rclpy.spin_until_future_complete(node, future, timeout_sec=timeout)
    res = future.result()
    node.destroy_client(client)
    return {"success": res.success, **json.loads(res.message)}


def read_bag(bag: Path) -> dict[str, list[float]]:
    stamps: dict[str, list[float]] = {}
    with AnyReader([bag]) as reader:
        for conn, _t, raw in reader.messages():
            msg = reader.deserialize(raw, conn.msgtype)
            stamps.setdefault(conn.topic, []).append(
                msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
            )
    return stamps


def sha(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_episodes_quality_discard_sigterm_and_kill9(pubs, tmp_path) -> None:
    dataset = tmp_path / "ds"
    runner = start_recorder(dataset, tmp_path / "logs")
    try:
        # 1. a clean 2 s episode
        assert call(pubs, "/recorder/start")["episode"] == "episode_0000"
        time.sleep(2.0)
        ok = call(pubs, "/recorder/stop")
        assert ok["passed"], ok["reasons"]
        # 2. a starved camera: paused 1 s in the middle
        call(pubs, "/recorder/start")
        time.sleep(1.0)
        pubs.pause_until = time.monotonic() + 1.0
        time.sleep(2.0)
        starved = call(pubs, "/recorder/stop")
        assert not starved["passed"]
        assert any("/test/cam/image_raw" in r and "gap" in r for r in starved["reasons"])
        # 3. discard it
        assert call(pubs, "/recorder/discard")["episode"] == "episode_0001"
        assert not (dataset / "episode_0001").exists()
        # 4. SIGTERM mid-episode finalizes the bag
        call(pubs, "/recorder/start")
        time.sleep(1.5)
        runner.procs[0][1].send_signal(signal.SIGTERM)
        assert runner.procs[0][1].wait(15) == 0
    finally:
        runner.stop()
    index = {e.episode_id: e for e in DatasetIndex(dataset).list(include_discarded=True)}
    assert index["episode_0000"].passed and index["episode_0001"].status == "discarded"
    assert (dataset / "episode_0002" / "metadata.yaml").exists()
    assert not needs_recovery(dataset / "episode_0002")

    stamps = read_bag(dataset / "episode_0000")
    duration = ok["duration_s"]  # first to last message of the episode
    assert 1.9 < duration < 3.0
    assert len(stamps["/test/joint_states"]) == pytest.approx(duration * 100, rel=0.05)
    assert len(stamps["/test/cam/image_raw"]) == pytest.approx(duration * 100 / 3, rel=0.05)
    for s in stamps.values():
        assert np.all(np.diff(s) > 0)

    # 5. kill -9 mid-episode: recoverable, earlier episodes byte-identical
    before = {ep: sha(dataset / ep) for ep in ("episode_0000", "episode_0002")}
    runner = start_recorder(dataset, tmp_path / "logs2")
    try:
        started = call(pubs, "/recorder/start")["episode"]
        time.sleep(3.0)
        killed_at = time.time()
        runner.procs[0][1].send_signal(signal.SIGKILL)
        runner.procs[0][1].wait(10)
    finally:
        runner.stop()
    bag = dataset / started
    assert needs_recovery(bag)
    out = subprocess.run(
        [sys.executable, "-m", "apprentice", "recover", str(dataset)],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    assert f"recovered {started}" in out, out
    assert not needs_recovery(bag)
    entry = next(e for e in DatasetIndex(dataset).list() if e.episode_id == started)
    assert entry.recovered and entry.topic_counts["/test/joint_states"] > 100
    recovered = read_bag(bag)
    last = max(s[-1] for s in recovered.values())
    assert killed_at - last <= 1.0, f"lost {killed_at - last:.2f} s"
    assert abs(len(recovered["/test/joint_states"]) - 300) <= 100
    assert {ep: sha(dataset / ep) for ep in before} == before


def _session(stderr=None) -> tuple[subprocess.Popen, Lines]:
    """An interactive record_session; each key waits for the line that says it was done."""
    session = subprocess.Popen(
        [sys.executable, "-m", "apprentice_ros.record_session", "--interactive"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True,
    )  # fmt: skip
    return session, Lines(session.stdout)


def _key(session: subprocess.Popen, out: Lines, key: str, then: str, wait: float = 0.0) -> None:
    session.stdin.write(key + "\n")
    session.stdin.flush()
    out.wait_for(then, 30)
    time.sleep(wait)


def test_terminal_session_keys_start_keep_discard(pubs, tmp_path) -> None:
    """The operator's keys (here piped): s start, k keep, s, d discard, q quit."""
    dataset = tmp_path / "ds"
    runner = start_recorder(dataset, tmp_path / "logs")
    try:
        session, out = _session()
        out.wait_for("ready; keys", 30)
        _key(session, out, "s", "recording episode_0000", wait=1.0)
        _key(session, out, "k", "kept episode_0000")
        _key(session, out, "s", "recording episode_0001", wait=0.5)
        _key(session, out, "d", "discarded episode_0001")
        session.stdin.write("q\n")
        session.stdin.flush()
        assert session.wait(timeout=30) == 0, "".join(out.lines)
    finally:
        runner.stop()
    entries = DatasetIndex(dataset).list(include_discarded=True)
    assert [(e.episode_id, e.status) for e in entries] == [
        ("episode_0000", "kept"),
        ("episode_0001", "discarded"),
    ]


def test_ctrl_c_ends_a_terminal_session_with_130_and_no_traceback(pubs, tmp_path) -> None:
    """SIGINT while an episode records: exit 130 within seconds, nothing but our lines."""
    runner = start_recorder(tmp_path / "ds", tmp_path / "logs")
    try:
        session, out = _session(stderr=subprocess.PIPE)
        _key(session, out, "s", "recording episode_0000", wait=0.5)
        session.send_signal(signal.SIGINT)
        session.wait(timeout=15)
        err = session.stderr.read()
    finally:
        runner.stop()
    assert session.returncode == 130, ("".join(out.lines), err)
    assert "Traceback" not in err and "context" not in err, err


def test_queue_depth_holds_two_seconds_of_each_stream() -> None:
    from apprentice_ros.recorder import queue_depth

    # 200 Hz joints: 2 s is 400 messages (depth 100 overflowed within 0.5 s of stalled callbacks)
    assert queue_depth(200.0) == 400
    assert queue_depth(333.3) == 667  # rounded up, never below 2 s
    assert queue_depth(30.0) == 100  # slow streams keep the floor
    assert queue_depth(0.5) == 100


def test_record_goes_on_after_the_recorder_is_killed(pubs, tmp_path) -> None:
    """`apprentice record` with a recorder that is killed mid-episode: one line within a
    second or two names the episode and the command that recovers it, a new recorder is
    started, the next episode is recorded, and the exit code (1) says something was lost."""
    graph = tmp_path / "recorder_only.yaml"
    graph.write_text(
        json.dumps(
            {
                "name": "recorder_only",
                "processes": [
                    {"executable": "recorder", "label": "recorder",
                     "parameters": {"dataset_dir": "", "task": "test task", "topics": TOPICS}},
                ],
            }
        )
    )  # fmt: skip
    dataset = tmp_path / "ds"
    proc = subprocess.Popen(
        [sys.executable, "-m", "apprentice", "record", "--graph", str(graph), "--interactive",
         "--dataset", str(dataset), "--domain", os.environ["ROS_DOMAIN_ID"]],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    out = Lines(proc.stdout)

    def key(k: str) -> None:
        proc.stdin.write(k + "\n")
        proc.stdin.flush()

    try:
        out.wait_for("ready; keys", 60)
        key("s")
        out.wait_for("recording episode_0000", 30)
        time.sleep(1.5)
        os.kill(child_pid(proc.pid, "apprentice_ros.recorder"), signal.SIGKILL)
        killed = time.monotonic()
        i, died = out.wait_for("record: the recorder died", 10)
        noticed_s = time.monotonic() - killed
        key("k")  # meant for the lost episode: must not stop (or keep) another one
        out.wait_for("episode_0000 was lost with the recorder", 30, i)
        key("s")
        j, _ = out.wait_for("recording episode_0001", 60, i)
        time.sleep(1.5)
        key("k")
        out.wait_for("kept episode_0001", 30, j)
        key("q")
        assert proc.wait(timeout=60) == 1, "".join(out.lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = "".join(out.lines)
    assert noticed_s < 3.0, log
    assert "killed by SIGKILL" in died and "while recording episode_0000" in died, died
    assert f"`apprentice recover {dataset}`" in died and "restarting" in died, died
    assert "kept episode_0000" not in log and "Traceback" not in log, log
    assert f"(episode_0000): recover with `apprentice recover {dataset}`" in out.lines[-1], log

    assert [e.episode_id for e in DatasetIndex(dataset).list()] == ["episode_0001"]
    assert needs_recovery(dataset / "episode_0000")
    recover = [sys.executable, "-m", "apprentice", "recover", str(dataset)]
    first = subprocess.run(recover, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stdout + first.stderr
    assert first.stdout.startswith("recovering episode_0000 (episode_0000_0.mcap, "), first.stdout
    assert "\nrecovered episode_0000: " in first.stdout, first.stdout
    entry = DatasetIndex(dataset).get("episode_0000")
    assert entry.recovered and entry.topic_counts["/test/joint_states"] > 50, entry
    again = subprocess.run(recover, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and again.stdout == f"{dataset}: nothing to recover\n"
