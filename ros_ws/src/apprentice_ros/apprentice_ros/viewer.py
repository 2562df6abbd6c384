"""Viewer node: the running graph, live in Rerun (`--view`), drawn by apprentice.viz.layout.

A subscriber like any other, in a process of its own: every subscription is BEST_EFFORT with
a short queue (KEEP_LAST 2 for images, 5 for the rest), so a publisher never waits for it,
and a viewer that falls behind loses its own samples, never anyone else's. It spins rclpy's
EventsExecutor (the cheapest per message here, see the recorder) and sends samples to Rerun in
batches, per series every `flush_s`, as columns (one call per joint per flush, not per
message). docs/BENCHMARKS.md "Live view cost" measures what it costs the recorder and the
policy node's control loop.

Topics (per arm in `arms`, per camera in `cameras`, "NAME:compressed" or "NAME:raw"):
  /<arm>/joint_states                  joints/<arm>/<joint>/state    header stamp
  /<arm>/commands (Float64MultiArray)  joints/<arm>/<joint>/command  receive time (no header);
                                       joint names from the arm's joint_states (commands
                                       before the first one wait for it, at most 1000)
  /<arm>/joint_commands (JointState)   joints/<arm>/<joint>/command  header stamp
  /leader/<arm>/joint_states           joints/<arm>/<joint>/leader   header stamp
  /cameras/<cam>/image_raw/compressed  cameras/<cam> (JPEG, undecoded) header stamp
  /cameras/<cam>/image_raw             cameras/<cam> (rgb8, bgr8, mono8) header stamp
  /sim/task_stage, /sim/success        task/stage, task/success      receive time
A stamp of zero (a publisher that does not stamp) is replaced by the receive time.

With `scene` (simulated graphs), the scene's model is drawn in 3D under robot/ and posed
every `flush_s` from the arms' newest joint states (apprentice.viz.robot_model).

The whole process runs at SCHED_IDLE (`run_idle`, parameter `idle`): it gets only CPU time no
other process wants, so a host without spare time slows the view, not the graph.

Sink (`sink`): web (gRPC `grpc_port` + web viewer `web_port`, on all interfaces), spawn (a
native viewer window), save (`save_path`, an .rrd file, finished on shutdown).
"""

from __future__ import annotations

import os
import sys
import time
from collections import defaultdict, deque
from pathlib import Path

import numpy as np
import rerun as rr
from rclpy.experimental import EventsExecutor
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Bool, Float64MultiArray, Int32

from apprentice.viz import layout
from apprentice_ros.params import declare
from apprentice_ros.runtime import init, spin_nodes

DEFAULTS = {
    "name": "apprentice",  # the recording's application id (the graph's name)
    # (empty lists have no ROS type: both are declared dynamic, and an empty one stays empty)
    "arms": [],  # follower arms, e.g. [left, right]
    "cameras": [],  # NAME:compressed | NAME:raw, e.g. [top:compressed]
    "sink": "web",  # web | spawn | save
    "save_path": "",
    "grpc_port": 9876,
    "web_port": 9090,
    "memory_limit": "1GiB",  # the web server's buffer for late viewers; oldest dropped beyond
    "flush_s": 0.1,  # s between batches sent to Rerun
    # a simulated scene's name: its MuJoCo model in 3D (robot/...), posed once per flush from
    # the newest joint states (every sample would cost a transform per body per message)
    "scene": "",
    # SCHED_IDLE for the whole process (`run_idle`): it never takes CPU time anything else
    # wants; false: normal priority (a test of what it draws, on a host busy with the test)
    "idle": True,
}
SENSOR_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=5, reliability=ReliabilityPolicy.BEST_EFFORT
)
IMAGE_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=2, reliability=ReliabilityPolicy.BEST_EFFORT
)


def stamp_or_now(msg) -> float:
    # (not apprentice_ros.conversions: it imports the dataset package, seconds of start-up)
    t = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
    return t if t > 0 else time.time()


def rgb(msg: Image) -> np.ndarray | None:
    """An Image message as (H, W, 3) rgb8; None for encodings the view does not draw."""
    a = np.frombuffer(msg.data, dtype=np.uint8)
    if msg.encoding in ("rgb8", "bgr8"):
        a = a.reshape(msg.height, msg.step)[:, : msg.width * 3].reshape(msg.height, msg.width, 3)
        return a if msg.encoding == "rgb8" else a[..., ::-1]
    if msg.encoding == "mono8":
        a = a.reshape(msg.height, msg.step)[:, : msg.width]
        return np.repeat(a[..., None], 3, axis=2)
    return None


class ViewerNode(Node):
    def __init__(self) -> None:
        super().__init__("viewer")
        p = declare(self, DEFAULTS, dynamic=("arms", "cameras"))
        self.p = p
        self.arms = [str(a) for a in p["arms"] or []]
        self.cameras = dict(str(c).partition(":")[::2] for c in p["cameras"] or [])
        if bad := {c: t for c, t in self.cameras.items() if t not in ("compressed", "raw")}:
            raise ValueError(f"cameras {bad}: transport must be compressed or raw")
        self.rec = rr.RecordingStream(p["name"])
        self.where = self._open_sink()
        self.robot = None
        if p["scene"]:
            from apprentice.viz.robot_model import RobotModel  # MuJoCo: only for a sim scene

            self.robot = RobotModel(p["scene"])
            self.robot.log_static(self.rec)
        self.newest: dict[str, tuple[float, tuple[str, ...], object]] = {}  # arm → state
        self.names: dict[str, tuple[str, ...]] = {}  # arm → joint names (its joint_states)
        self.pending: dict[tuple[str, str], list] = defaultdict(list)  # (arm, kind) → samples
        self.frames: dict[str, list] = defaultdict(list)  # JPEG camera → [(t, bytes)]
        self.counts: dict[str, int] = defaultdict(int)
        self.unnamed: dict[str, deque] = defaultdict(lambda: deque(maxlen=1000))
        self.blueprint_sent = False
        for arm in self.arms:
            self.create_subscription(JointState, f"/{arm}/joint_states",
                                     lambda m, a=arm: self._on_state(a, m, "state"), SENSOR_QOS)
            self.create_subscription(JointState, f"/leader/{arm}/joint_states",
                                     lambda m, a=arm: self._on_state(a, m, "leader"), SENSOR_QOS)
            self.create_subscription(JointState, f"/{arm}/joint_commands",
                                     lambda m, a=arm: self._on_state(a, m, "command"), SENSOR_QOS)
            self.create_subscription(Float64MultiArray, f"/{arm}/commands",
                                     lambda m, a=arm: self._on_array(a, m), SENSOR_QOS)
        for cam, transport in self.cameras.items():
            if transport == "compressed":
                self.create_subscription(CompressedImage, f"/cameras/{cam}/image_raw/compressed",
                                         lambda m, c=cam: self._on_jpeg(c, m), IMAGE_QOS)
            else:
                self.create_subscription(Image, f"/cameras/{cam}/image_raw",
                                         lambda m, c=cam: self._on_raw(c, m), IMAGE_QOS)
        self.create_subscription(Int32, "/sim/task_stage", self._on_stage, SENSOR_QOS)
        self.create_subscription(Bool, "/sim/success", self._on_success, SENSOR_QOS)
        self.create_timer(p["flush_s"], self.flush)
        self.get_logger().info(
            f"viewing arms {self.arms}, cameras {self.cameras}; {self.where}"
        )  # fmt: skip

    def _open_sink(self) -> str:
        p = self.p
        bp = layout.blueprint(self.arms, list(self.cameras), robot=bool(p["scene"]))
        if p["sink"] == "save":
            if not p["save_path"]:
                raise ValueError("sink save needs save_path")
            self.rec.save(p["save_path"], default_blueprint=bp)
            return f"saving to {p['save_path']}"
        if p["sink"] == "spawn":
            # the `rerun` viewer binary sits beside this Python (a venv not on PATH)
            os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent),
                                                  os.environ.get("PATH", "")])  # fmt: skip
            self.rec.spawn(port=p["grpc_port"], default_blueprint=bp)
            return f"viewer window on gRPC port {p['grpc_port']}"
        if p["sink"] != "web":
            raise ValueError(f"sink must be web, spawn or save, got {p['sink']!r}")
        uri = self.rec.serve_grpc(grpc_port=p["grpc_port"], default_blueprint=bp,
                                  server_memory_limit=p["memory_limit"])  # fmt: skip
        rr.serve_web_viewer(web_port=p["web_port"], open_browser=False, connect_to=uri)
        return f"web viewer on port {p['web_port']}, stream {uri}"

    # -- callbacks: no Rerun call here, only appends (flush sends) -----------------------------

    def _on_state(self, arm: str, msg: JointState, kind: str) -> None:
        names = tuple(msg.name)
        if len(msg.position) != len(names) or not names:
            self.counts["malformed"] += 1
            return
        if kind == "state" and arm not in self.names:
            self.names[arm] = names
            for t, q in self.unnamed.pop(arm, ()):  # commands that came before any state
                if len(q) == len(names):
                    self.pending[(arm, "command")].append((names, t, q))
                    self.counts["command"] += 1
        t = stamp_or_now(msg)
        self.pending[(arm, kind)].append((names, t, msg.position))
        self.counts[kind] += 1
        if kind == "state":
            self.newest[arm] = (t, names, msg.position)

    def _on_array(self, arm: str, msg: Float64MultiArray) -> None:
        names = self.names.get(arm)
        if names is None:  # before the arm's first joint state: kept until it comes
            self.unnamed[arm].append((time.time(), msg.data))
            return
        if len(msg.data) != len(names):
            self.counts["malformed"] += 1
            return
        self.pending[(arm, "command")].append((names, time.time(), msg.data))
        self.counts["command"] += 1

    def _on_jpeg(self, cam: str, msg: CompressedImage) -> None:
        self.frames[cam].append((stamp_or_now(msg), msg.data))
        self.counts["frames"] += 1

    def _on_raw(self, cam: str, msg: Image) -> None:
        image = rgb(msg)
        if image is None:
            self.counts["frames_unsupported"] += 1
            return
        layout.log_image(self.rec, cam, image, stamp_or_now(msg))
        self.counts["frames"] += 1

    def _on_stage(self, msg: Int32) -> None:
        layout.log_task(self.rec, msg.data, None, time.time())

    def _on_success(self, msg: Bool) -> None:
        layout.log_task(self.rec, None, msg.data, time.time())

    # -- batches ------------------------------------------------------------------------------

    def flush(self) -> None:
        if not self.blueprint_sent and self.arms and all(a in self.names for a in self.arms):
            self.rec.send_blueprint(layout.blueprint(self.names, list(self.cameras),
                                                     robot=self.robot is not None))
            self.blueprint_sent = True
        pending, self.pending = self.pending, defaultdict(list)
        for (arm, kind), samples in pending.items():
            start = 0
            for i in range(1, len(samples) + 1):  # runs of one joint set
                if i == len(samples) or samples[i][0] != samples[start][0]:
                    run = samples[start:i]
                    layout.log_joint_columns(
                        self.rec, arm, run[0][0], np.array([s[1] for s in run]),
                        np.array([s[2] for s in run], dtype=np.float64), kind,
                    )  # fmt: skip
                    start = i
        if self.robot is not None and self.newest:
            newest, self.newest = self.newest, {}
            pose = {n: q for _, names, qs in newest.values()
                    for n, q in zip(names, qs, strict=True)}  # fmt: skip
            self.robot.pose(self.rec, pose, max(t for t, _, _ in newest.values()))
        frames, self.frames = self.frames, defaultdict(list)
        for cam, batch in frames.items():
            layout.log_jpeg_columns(self.rec, cam, np.array([t for t, _ in batch]),
                                    [d for _, d in batch])  # fmt: skip

    def destroy_node(self) -> None:
        self.flush()
        self.rec.flush(timeout_sec=5.0)
        if self.p["sink"] == "save":
            self.rec.disconnect()  # writes the file's footer
        self.get_logger().info(f"viewed {dict(self.counts)}")
        super().destroy_node()


def run_idle() -> bool:
    """Every thread of this process at SCHED_IDLE (threads started later inherit it from the
    thread that starts them): the viewer runs only on CPU time no other process wants, so on
    a busy host it falls behind (and loses its own samples), never the control loop or the
    recorder. False where refused (not Linux, or no rights)."""
    try:
        for task in os.listdir("/proc/self/task"):
            os.sched_setscheduler(int(task), os.SCHED_IDLE, os.sched_param(0))
        return True
    except (AttributeError, OSError):
        return False


def main(args: list[str] | None = None) -> None:
    init(args)
    node = ViewerNode()
    if node.get_parameter("idle").value and not run_idle():
        node.get_logger().warning("SCHED_IDLE refused: running at normal priority")
    spin_nodes([node], executor=EventsExecutor())


if __name__ == "__main__":
    main()
