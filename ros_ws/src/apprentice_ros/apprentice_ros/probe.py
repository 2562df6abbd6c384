"""An independent subscriber that reports what a robot graph publishes.

python -m apprentice_ros.probe --duration 10 [--json out.json] [TOPIC ...]

With no topics it waits for the graph to appear and takes every JointState, Image and
CompressedImage topic. For each topic: message count, rate over the header stamps, whether
stamps strictly increase, and latency (receive time − header stamp).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import rclpy
from rclpy.node import Node
from sensor_msgs.msg import CompressedImage, Image, JointState

from apprentice_ros.arm_driver import JOINT_QOS
from apprentice_ros.camera import IMAGE_QOS
from apprentice_ros.conversions import from_time

TYPES = {
    "sensor_msgs/msg/JointState": (JointState, JOINT_QOS),
    "sensor_msgs/msg/Image": (Image, IMAGE_QOS),
    "sensor_msgs/msg/CompressedImage": (CompressedImage, IMAGE_QOS),
}


class Probe(Node):
    def __init__(self) -> None:
        super().__init__("probe")
        self.stamps: dict[str, list[float]] = {}
        self.recv: dict[str, list[float]] = {}

    def _published(self) -> dict[str, list[str]]:
        return {
            t: ty
            for t, ty in self.get_topic_names_and_types()
            if self.count_publishers(t) > 0 and any(x in TYPES for x in ty)
        }

    def discover(self, wanted: list[str], timeout: float) -> list[str]:
        deadline = time.monotonic() + timeout
        found: list[str] = []
        types: dict[str, list[str]] = {}
        while time.monotonic() < deadline:
            types = self._published()
            if wanted:
                found = [t for t in wanted if t in types]
                if len(found) == len(wanted):
                    break
            else:
                if types:
                    time.sleep(1.0)  # let the rest of the graph appear
                    types = self._published()
                    found = list(types)
                    break
            rclpy.spin_once(self, timeout_sec=0.1)
        for topic in found:
            msg_type, qos = TYPES[next(x for x in types[topic] if x in TYPES)]
            self.stamps[topic], self.recv[topic] = [], []
            self.create_subscription(msg_type, topic, self._callback(topic), qos)
        return found

    def _callback(self, topic: str):
        stamps, recv = self.stamps[topic], self.recv[topic]

        def on_msg(msg) -> None:
            recv.append(time.time())
            stamps.append(from_time(msg.header.stamp))

        return on_msg

    def report(self, duration: float) -> dict[str, dict[str, float | int | bool]]:
        out = {}
        for topic, stamps in self.stamps.items():
            s = np.array(stamps)
            lat = np.array(self.recv[topic]) - s
            out[topic] = {
                "count": int(s.size),
                "rate_hz": float(s.size / duration),
                "stamp_rate_hz": float((s.size - 1) / (s[-1] - s[0])) if s.size > 1 else 0.0,
                "strictly_increasing": bool(np.all(np.diff(s) > 0)) if s.size > 1 else False,
                "latency_mean_ms": float(lat.mean() * 1e3) if s.size else float("nan"),
                "latency_p99_ms": float(np.percentile(lat, 99) * 1e3) if s.size else float("nan"),
            }
        return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ros_args = argv[argv.index("--ros-args") :] if "--ros-args" in argv else []
    own = argv[: len(argv) - len(ros_args)]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("topics", nargs="*")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds to measure")
    ap.add_argument("--discover-timeout", type=float, default=30.0)
    ap.add_argument("--warmup", type=float, default=1.0, help="seconds ignored at the start")
    ap.add_argument("--json", help="write the report here")
    a = ap.parse_args(own)
    rclpy.init(args=["probe", *ros_args])
    node = Probe()
    try:
        topics = node.discover(a.topics, a.discover_timeout)
        if not topics:
            print("probe: no topics found", file=sys.stderr)
            return 2
        end = time.monotonic() + a.warmup
        while time.monotonic() < end:
            rclpy.spin_once(node, timeout_sec=0.05)
        for topic in topics:
            node.stamps[topic].clear()
            node.recv[topic].clear()
        end = time.monotonic() + a.duration
        while time.monotonic() < end:
            rclpy.spin_once(node, timeout_sec=0.05)
        report = node.report(a.duration)
    finally:
        node.destroy_node()
        rclpy.shutdown()
    width = max(len(t) for t in report)
    print(f"{'topic':<{width}}  {'count':>6} {'rate Hz':>8} {'stamps↑':>8} {'lat ms':>7}")
    for topic, r in sorted(report.items()):
        print(
            f"{topic:<{width}}  {r['count']:>6} {r['rate_hz']:>8.1f} "
            f"{str(r['strictly_increasing']):>8} {r['latency_mean_ms']:>7.1f}"
        )
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
