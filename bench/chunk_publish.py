"""What publishing the predicted chunk costs the policy node (/<arm>/predicted_chunk, once per
inference): the time per inference, and whether a 100 Hz control thread beside it notices.

For each chunk shape (H points × J joints, split over the arms as the node does):
  encode           TrajectoryEncoder.encode alone (numpy CDR), per arm
  publish (CDR)    the node's ChunkOutput.publish: encode + publisher.publish(bytes), all arms
  publish (msg)    the same as a JointTrajectory object (rclpy converts it in C, GIL held)
with a subscriber in another process (as the eval session), on an isolated ROS_DOMAIN_ID and
the project's shared-memory transport. The ratio is (inference + publish) / inference, with
inference the ACT CPU preset's ONNX forward (bench/control_loop.py's policy).

Then a thread sleeping to 100 Hz deadlines (apprentice.timing.RateLoop, GIL switch interval
0.1 ms as in the node) runs while the main thread publishes one chunk per period: its
lateness p50 / p99 with no publishing, CDR publishing and message publishing.

    .venv/bin/python bench/chunk_publish.py [--n 2000] [--seconds 10] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from apprentice.transport import isolated_domain_id, ros_env

SHAPES = {  # name: (H, joints per arm)
    "tiny ACT, 1 arm (tests)": (20, (7,)),
    "demo ACT chunk 50, 2 arms": (50, (7, 7)),
    "paper ACT chunk 100, 2 arms": (100, (7, 7)),
}
DT = 0.02  # s between points (a 50 Hz policy)

SUBSCRIBER = """
import sys, rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from trajectory_msgs.msg import JointTrajectory
rclpy.init()
node = Node("chunk_bench_sub")
n = [0]
for arm in sys.argv[1:]:
    node.create_subscription(JointTrajectory, f"/{arm}/predicted_chunk",
                             lambda m: n.__setitem__(0, n[0] + 1), 100)
print("ready", flush=True)
try:
    while rclpy.ok():
        rclpy.spin_once(node, timeout_sec=0.1)
except (KeyboardInterrupt, ExternalShutdownException):
    pass
"""


def _us(x: list[float]) -> dict[str, float]:
    a = np.asarray(x) * 1e6
    p50, p99 = np.percentile(a, [50, 99])
    return {"n": int(a.size), "p50_us": round(float(p50), 1), "p99_us": round(float(p99), 1)}


class _Node:
    def __init__(self, node) -> None:  # the parts of rclpy.Node that ChunkOutput uses
        self.node = node

    def create_publisher(self, *args):
        return self.node.create_publisher(*args)


def inference_s(n: int) -> float:
    """p50 of the ACT CPU preset's ONNX forward on zeros, 1 thread (the node's default)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from control_loop import export_policy

    from apprentice.policy_server.adapters import open_policy

    folder = Path(tempfile.mkdtemp(prefix="bench-chunk-")) / "act"
    export_policy(folder)
    policy = open_policy(folder, "cpu", 1)
    card = policy.card
    cam = card["cameras"][0]
    images = np.zeros((1, 1, 3, cam["height"], cam["width"]), dtype=np.float32)
    state = np.zeros((1, len(card["state_names"])))
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        policy.predict(state, images)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def as_messages(output, stamp: float, chunk: np.ndarray) -> None:
    """What ChunkOutput.publish would cost with JointTrajectory objects."""
    from builtin_interfaces.msg import Duration
    from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

    for pub, span, encoder in output.parts:
        msg = JointTrajectory(joint_names=list(encoder.names))
        msg.header.stamp.sec = int(stamp)
        for k in range(len(chunk)):
            sec, nanosec = divmod(int(round(k * encoder.dt * 1e9)), 10**9)
            msg.points.append(JointTrajectoryPoint(
                positions=chunk[k, span].tolist(),
                time_from_start=Duration(sec=sec, nanosec=nanosec),
            ))  # fmt: skip
        pub.publish(msg)


def _timed(n: int, fn, *args) -> dict[str, float]:
    """fn(*args[:-1], time.time(), args[-1]) n times, 1 ms apart: p50 / p99 µs."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn(*args[:-1], time.time(), args[-1])
        times.append(time.perf_counter() - t0)
        time.sleep(0.001)
    return _us(times)


def _control(stop: threading.Event, late: list[float]) -> None:
    from apprentice.timing import RateLoop

    for deadline in RateLoop(100.0, stop):
        late.append(time.monotonic() - deadline)


def publish_costs(node, n: int) -> dict[str, dict]:
    from apprentice_ros.policy_node import ChunkOutput
    from apprentice_ros.trajectory_cdr import TrajectoryEncoder

    out = {}
    rng = np.random.default_rng(0)
    for name, (h, per_arm) in SHAPES.items():
        arms = {f"bench{i}": tuple(f"bench{i}_j{k}" for k in range(j))
                for i, j in enumerate(per_arm)}  # fmt: skip
        chunk = rng.standard_normal((h, sum(per_arm)))
        output = ChunkOutput(_Node(node), arms, h, DT)
        encoder = TrajectoryEncoder(arms["bench0"], h, DT)

        time.sleep(1.0)  # discovery: the subscriber matches
        first = chunk[:, : len(arms["bench0"])]
        out[name] = {
            "encode": _timed(n, encoder.encode, first),
            "publish_cdr": _timed(n, output.publish, chunk),
            "publish_msg": _timed(n, as_messages, output, chunk),
        }
        for pub, _, _ in output.parts:
            node.destroy_publisher(pub)
    return out


def loop_lateness(node, seconds: float) -> dict[str, dict]:
    """A 100 Hz RateLoop thread's lateness while the main thread publishes 2-arm chunk-100
    messages once per period, per way of publishing."""
    from apprentice_ros.policy_node import ChunkOutput

    arms = {f"bench{i}": tuple(f"bench{i}_j{k}" for k in range(7)) for i in range(2)}
    output = ChunkOutput(_Node(node), arms, 100, DT)
    chunk = np.random.default_rng(1).standard_normal((100, 14))
    results = {}
    old = sys.getswitchinterval()
    sys.setswitchinterval(0.0001)
    try:
        for label in ("none", "publish_cdr", "publish_msg"):
            stop = threading.Event()
            late: list[float] = []
            thread = threading.Thread(target=_control, args=(stop, late), daemon=True)
            thread.start()
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                if label == "publish_cdr":
                    output.publish(time.time(), chunk)
                elif label == "publish_msg":
                    as_messages(output, time.time(), chunk)
                time.sleep(0.01)
            stop.set()
            thread.join()
            results[label] = _us(late)
    finally:
        sys.setswitchinterval(old)
    return results


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="publishes per shape and way")
    ap.add_argument("--seconds", type=float, default=10.0, help="per lateness condition")
    ap.add_argument("--json", type=Path, help="write the results here")
    a = ap.parse_args(argv)
    os.environ.update(ros_env(domain_id=isolated_domain_id()))
    import rclpy
    from rclpy.node import Node

    arms = sorted({f"bench{i}" for _, per_arm in SHAPES.values() for i in range(len(per_arm))})
    sub = subprocess.Popen([sys.executable, "-c", SUBSCRIBER, *arms], stdout=subprocess.PIPE,
                           text=True)  # fmt: skip
    assert sub.stdout is not None and sub.stdout.readline().strip() == "ready"
    rclpy.init()
    node = Node("chunk_bench")
    try:
        infer = inference_s(200)
        costs = publish_costs(node, a.n)
        lateness = loop_lateness(node, a.seconds)
    finally:
        node.destroy_node()
        rclpy.shutdown()
        sub.send_signal(signal.SIGINT)
        sub.wait(10)
    print(f"ACT CPU preset inference p50 {infer * 1e3:.2f} ms (1 thread)")
    for name, row in costs.items():
        cdr = row["publish_cdr"]["p50_us"] * 1e-6
        print(f"{name}: encode p50 {row['encode']['p50_us']} / p99 {row['encode']['p99_us']} µs; "
              f"publish CDR p50 {row['publish_cdr']['p50_us']} / p99 "
              f"{row['publish_cdr']['p99_us']} µs; as messages p50 "
              f"{row['publish_msg']['p50_us']} / p99 {row['publish_msg']['p99_us']} µs; "
              f"inference + publish / inference = {(infer + cdr) / infer:.4f}")  # fmt: skip
    for label, row in lateness.items():
        print(f"100 Hz loop lateness, {label}: p50 {row['p50_us']} / p99 {row['p99_us']} µs")
    if a.json:
        a.json.write_text(json.dumps({"inference_s": infer, "costs": costs,
                                      "lateness": lateness}, indent=2) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
