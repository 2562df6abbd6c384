"""What the live `--view` costs the recorder and the policy node's control loop.

Runs the same graph several times, alternately without and with the viewer process
(off, on, off, on, ...), each on its own isolated ROS_DOMAIN_ID and fresh processes:

  sim_robot   the simulated ALOHA (both arms' joint_states at 100 Hz, the top camera's JPEG
              and camera_info at 30 Hz, /sim at 10 Hz)
  reference   this script's publisher of two streams with known content: /bench/joint_states
              (7 joints, 100 Hz) and /cameras/bench/image_raw/compressed (a 640x480 JPEG,
              30 Hz), RELIABLE KEEP_LAST 10 / 5 like the drivers, stamped on exact grids
              (t0 + k / rate) and never skipping a slot (a late slot is published late)
  recorder    one episode of --seconds of all of them and of the policy's commands
  policy      the policy node at 100 Hz on the right arm (ACT CPU preset, random weights, as
              in bench/control_loop.py; SCHED_FIFO 50 and GIL switch interval 0.1 ms, its
              defaults there), output joint_state: /right/joint_commands, stamped per tick
  viewer      (on) apprentice_ros.viewer as `--view` adds it: every stream above, sink
              --sink (web: the gRPC + web server with nobody connected; save: an .rrd)

Reported per run:
  lost        the reference streams: slots of the grid between the first and last recorded
              stamp missing from the bag, round((last - first) * rate) + 1 - recorded; exact,
              since the publisher skips none. The sim's and the policy's streams are stamped on
              grids too (absolute-deadline ticks, the camera's sim-time grid) but skip slots
              when their host lags (stale physics, missed ticks, sim resyncs), so their missing
              slots are shown as context, not as recorder loss
  loop        the policy node's ~/stats period error p50/p99/max over its whole run, missed
              ticks, ticks over budget
  cpu         % of one core of the recorder, policy and viewer processes over the recording

    .venv/bin/python bench/bench_view_cost.py                       # 2 × (off, on), 30 s each
    .venv/bin/python bench/bench_view_cost.py --repeats 3 --seconds 60 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from control_loop import LOWER, UPPER, export_policy  # bench/, the script's own folder

from apprentice.graph import Graph, GraphRunner, ProcessSpec, load_graph, stop_processes
from apprentice.transport import isolated_domain_id, ros_env
from apprentice.viz.live import ViewOptions, free_port, with_viewer

RATE = 100.0  # Hz, the policy node's control rate
TOPICS = {  # recorded topic → (nominal Hz, role, type)
    "/left/joint_states": (100.0, "joint", "sensor_msgs/msg/JointState"),
    "/right/joint_states": (100.0, "joint", "sensor_msgs/msg/JointState"),
    "/right/joint_commands": (RATE, "other", "sensor_msgs/msg/JointState"),
    "/cameras/top/image_raw/compressed": (30.0, "camera", "sensor_msgs/msg/CompressedImage"),
    "/cameras/top/camera_info": (30.0, "other", "sensor_msgs/msg/CameraInfo"),
    "/bench/joint_states": (100.0, "joint", "sensor_msgs/msg/JointState"),
    "/cameras/bench/image_raw/compressed": (30.0, "camera", "sensor_msgs/msg/CompressedImage"),
}
REFERENCE = ("/bench/joint_states", "/cameras/bench/image_raw/compressed")


def graph(args: argparse.Namespace, policy_dir: Path, dataset: Path) -> Graph:
    sim = load_graph("record_sim_aloha").processes[0]
    sim_params = {**sim.parameters, "cameras": ["top"], "image_width": args.width,
                  "image_height": args.height, "supersample": args.supersample,
                  "publish_raw": False}  # fmt: skip
    recorder = ProcessSpec("recorder", "recorder", {
        "dataset_dir": str(dataset), "task": "bench",
        "topics": [f"{t}:{hz:g}:{role}:{typ}" for t, (hz, role, typ) in TOPICS.items()],
        "discover_timeout": 60.0,
    })  # fmt: skip
    policy = ProcessSpec("policy_node", "policy", {
        "policy_dir": str(policy_dir), "arms": ["right"], "cameras": ["top"],
        "image_transport": "compressed", "control_rate": RATE, "output": "joint_state",
        "execution": "ensemble", "joint_lower": LOWER, "joint_upper": UPPER,
        "max_velocity": [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.05], "max_accel": [10.0],
        "max_observation_age": 0.15, "safe_after": 2.0, "execution_provider": "cpu",
        "threads": 1, "realtime_priority": args.realtime_priority,
        "switch_interval": 0.0001, "startup_timeout": 120.0,
    })  # fmt: skip
    return Graph("bench_view_cost", (ProcessSpec("sim_robot", "sim_robot", sim_params),
                                     recorder, policy))  # fmt: skip


def publish_reference() -> None:
    """The reference streams (see the module doc), until SIGINT/SIGTERM."""
    import signal

    import cv2
    import rclpy
    from rclpy.node import Node
    from sensor_msgs.msg import CompressedImage, JointState

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    rclpy.init()
    node = Node("bench_reference")
    joints = node.create_publisher(JointState, "/bench/joint_states", 10)
    images = node.create_publisher(CompressedImage, "/cameras/bench/image_raw/compressed", 5)
    rng = np.random.default_rng(0)  # a gradient with sensor-like noise: a real JPEG's size
    frame = np.clip(np.linspace(0, 255, 640)[None, :, None] + rng.normal(0, 4, (480, 640, 3)),
                    0, 255).astype(np.uint8)  # fmt: skip
    jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    names = [f"bench_j{i}" for i in range(7)]
    t0 = float(np.ceil(time.time()))
    slots = {"joint": [100.0, 0], "image": [30.0, 0]}  # kind → [rate, next slot]
    while not stop:
        now = time.time()
        for kind, slot in slots.items():
            while t0 + slot[1] / slot[0] <= now:  # every slot, late ones too
                stamp = t0 + slot[1] / slot[0]
                if kind == "joint":
                    msg = JointState(name=names, position=[0.01 * slot[1]] * 7)
                else:
                    msg = CompressedImage(format="jpeg", data=jpeg)
                msg.header.stamp.sec = int(stamp)
                msg.header.stamp.nanosec = int(round((stamp - int(stamp)) * 1e9))
                (joints if kind == "joint" else images).publish(msg)
                slot[1] += 1
        nxt = min(t0 + k / rate for rate, k in slots.values())
        time.sleep(max(0.0, min(nxt - time.time(), 0.1)))
    node.destroy_node()
    rclpy.shutdown()


def cpu_s(pid: int) -> float:
    """user + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def missing_on_grid(stamps_ns: Sequence[int], hz: float) -> tuple[int, int]:
    """(recorded, missing slots of the stream's grid between its first and last stamp)."""
    t = np.sort(np.asarray(stamps_ns, dtype=np.int64))
    if t.size < 2:
        return int(t.size), 0
    slots = int(round((t[-1] - t[0]) * 1e-9 * hz)) + 1
    return int(t.size), slots - int(t.size)


def bag_stamps(dataset: Path) -> dict[str, list[int]]:
    from apprentice.dataset.bag import EpisodeBag
    from apprentice.recording.msgdefs import header_stamp_ns

    (bag_dir,) = [p for p in dataset.iterdir() if p.is_dir() and p.name.startswith("episode")]
    out: dict[str, list[int]] = {t: [] for t in TOPICS}
    for topic, _type, message in EpisodeBag(bag_dir).messages(list(TOPICS)):
        out[topic].append(header_stamp_ns(message.data))  # the wire CDR's header stamp
    return out


class Ros:
    """This process's rclpy node: service calls to the graph."""

    def __init__(self) -> None:
        import rclpy
        from rclpy.node import Node

        rclpy.init()
        self.rclpy = rclpy
        self.node = Node("bench_view_cost")

    def call(self, service: str, timeout: float = 30.0) -> dict[str, Any]:
        from std_srvs.srv import Trigger

        cli = self.node.create_client(Trigger, service)
        try:
            if not cli.wait_for_service(timeout_sec=timeout):
                raise RuntimeError(f"{service} is not available")
            fut = cli.call_async(Trigger.Request())
            self.rclpy.spin_until_future_complete(self.node, fut, timeout_sec=timeout)
            res = fut.result()
            if res is None or not res.success:
                raise RuntimeError(f"{service}: {res}")
            return json.loads(res.message) if res.message.startswith("{") else {}
        finally:
            self.node.destroy_client(cli)

    def close(self) -> None:
        self.node.destroy_node()
        self.rclpy.shutdown()


def wait_for(what: str, check, timeout: float, logs: Path) -> None:
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            raise RuntimeError(f"{what} did not happen within {timeout:g} s; logs in {logs}")
        time.sleep(0.5)


def one_run(args: argparse.Namespace, ros: Ros, policy_dir: Path, folder: Path,
            view: bool) -> dict[str, Any]:
    dataset, logs = folder / "dataset", folder / "logs"
    g = graph(args, policy_dir, dataset)
    if view:
        save = str(folder / "view.rrd") if args.sink == "save" else ""
        g = with_viewer(g, ViewOptions(args.sink, save, free_port(), free_port()))
        *procs, v = g.processes  # the viewer shows the reference streams too
        v = ProcessSpec(v.executable, v.label, {
            **v.parameters, "arms": [*v.parameters["arms"], "bench"],
            "cameras": [*v.parameters["cameras"], "bench:compressed"]}, v.optional)  # fmt: skip
        g = Graph(g.name, (*procs, v))
    load_before = os.getloadavg()
    logs.mkdir(parents=True)
    with open(logs / "reference.log", "wb") as out:
        reference = subprocess.Popen([sys.executable, __file__, "--publish-reference"],
                                     stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    runner = GraphRunner(g, log_dir=logs).start()
    pids = {spec.label: proc.pid for spec, proc in runner.procs}
    pids["reference"] = reference.pid
    try:
        def policy_running() -> bool:
            if runner.poll():
                raise RuntimeError(f"a process died: {runner.poll()}; logs in {logs}")
            return (logs / "policy.log").exists() and "running ensemble" in (
                logs / "policy.log").read_text(errors="replace")  # fmt: skip

        wait_for("the policy node's start", policy_running, 300, logs)
        if view:
            wait_for("the viewer's start", lambda: "viewing" in (logs / "viewer.log").read_text(
                errors="replace"), 120, logs)  # fmt: skip
        time.sleep(args.settle)
        arms0 = {a: ros.call(f"/{a}/stats") for a in ("left", "right")}
        pol0 = ros.call("/policy/stats")
        cpu0 = {label: cpu_s(pid) for label, pid in pids.items()}
        ros.call("/recorder/start")
        t0 = time.monotonic()
        time.sleep(args.seconds)
        stop = ros.call("/recorder/stop")
        wall = time.monotonic() - t0
        cpu1 = {label: cpu_s(pid) for label, pid in pids.items()}
        pol1 = ros.call("/policy/stats")
        arms1 = {a: ros.call(f"/{a}/stats") for a in ("left", "right")}
        status = ros.call("/recorder/status")
        died = runner.poll()
    finally:
        runner.stop(timeout=15.0)
        stop_processes([reference], timeout=5.0)
    if died:
        raise RuntimeError(f"a process died during the run: {died}; logs in {logs}")
    stamps = bag_stamps(dataset)
    skipped = {"/right/joint_commands": pol1["missed_ticks"] - pol0["missed_ticks"]}
    for arm in ("left", "right"):
        skipped[f"/{arm}/joint_states"] = sum(
            arms1[arm][k] - arms0[arm][k] for k in ("missed_ticks", "skipped_stale")
        )
    topics = {}
    for topic, (hz, _role, _typ) in TOPICS.items():
        recorded, missing = missing_on_grid(stamps[topic], hz)
        skips = skipped.get(topic)
        topics[topic] = {
            "recorded": recorded, "bag_count": stop["counts"].get(topic), "missing": missing,
            "publisher_skipped": skips, "lost": missing if topic in REFERENCE else None,
        }  # fmt: skip
    return {
        "view": view,
        "sink": args.sink if view else None,
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "seconds": wall,
        "topics": topics,
        "quality_passed": stop["passed"],
        "quality_reasons": stop["reasons"],
        "before_start": status.get("before_start"),
        "period_error_s": pol1["period_error_s"],
        "lateness_s": pol1["lateness_s"],
        "ticks": pol1["ticks"],
        "missed_ticks": pol1["missed_ticks"],
        "over_budget": pol1["over_budget"],
        "realtime": pol1["realtime"],
        "inference_s": pol1["inference_s"],
        "cpu_percent": {k: 100.0 * (cpu1[k] - cpu0[k]) / wall for k in cpu0},
    }


def summary_line(r: dict[str, Any]) -> str:
    pe = r["period_error_s"]
    lost = {t: f"{v['lost']} of {v['recorded'] + v['lost']}"
            for t, v in r["topics"].items() if t in REFERENCE}  # fmt: skip
    skips = {t: f"{v['missing']} ({v['publisher_skipped']} skipped by the publisher)"
             for t, v in r["topics"].items() if t not in REFERENCE}  # fmt: skip
    cpu = ", ".join(f"{k} {v:.1f}%" for k, v in r["cpu_percent"].items())
    return (f"view {'on ' if r['view'] else 'off'} load {r['load_before'][0]:.2f}: period "
            f"error p50 {pe['p50'] * 1e3:.3f} p99 {pe['p99'] * 1e3:.3f} max "
            f"{pe['max'] * 1e3:.3f} ms, missed {r['missed_ticks']}, over budget "
            f"{r['over_budget']}; recorder lost {lost}; cpu {cpu}; other streams' missing "
            f"slots {skips}")  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0, help="recorded per run (s)")
    ap.add_argument("--repeats", type=int, default=2, help="(off, on) pairs")
    ap.add_argument("--settle", type=float, default=3.0, help="s between start-up and recording")
    ap.add_argument("--sink", choices=["web", "save"], default="web",
                    help="the viewer's stream: web server (nobody connected) or an .rrd")
    ap.add_argument("--width", type=int, default=128, help="sim camera image width (px)")
    ap.add_argument("--height", type=int, default=96, help="sim camera image height (px)")
    ap.add_argument("--supersample", type=int, default=1, help="sim render supersampling")
    ap.add_argument("--realtime-priority", type=int, default=50,
                    help="SCHED_FIFO priority of the policy's control thread (0: off)")
    ap.add_argument("--json", type=Path, help="write every run's results here")
    ap.add_argument("--publish-reference", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.publish_reference:  # the child process started by one_run
        publish_reference()
        return

    os.environ.update(ros_env(domain_id=isolated_domain_id()))
    os.environ.setdefault("MUJOCO_GL", "egl")
    tmp = Path(tempfile.mkdtemp(prefix="bench-view-"))
    policy_dir = tmp / "act"
    export_policy(policy_dir)
    ros = Ros()
    runs = []
    try:
        for i in range(2 * args.repeats):
            r = one_run(args, ros, policy_dir, tmp / f"run{i}", view=bool(i % 2))
            runs.append(r)
            print(summary_line(r), flush=True)
            if args.json:
                args.json.write_text(json.dumps(runs, indent=2) + "\n")
    finally:
        ros.close()
    print(f"runs in {tmp}")


if __name__ == "__main__":
    main()
