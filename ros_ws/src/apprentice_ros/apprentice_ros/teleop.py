"""Teleop node: leader arm joint states → follower arm commands, at a fixed rate.

For each pair "LEADER_NS:FOLLOWER_NS" in `pairs`:
  in   /LEADER_NS/joint_states    sensor_msgs/JointState  (any arm driver: a torque-off leader
                                                          arm, or the scripted demonstrator)
  in   /FOLLOWER_NS/joint_states  sensor_msgs/JointState  (for the smooth start)
  out  /FOLLOWER_NS/commands      std_msgs/Float64MultiArray, at `rate_hz`
Service ~/stats (std_srvs/Trigger): JSON counters per pair.
A leader state older than `max_leader_age` is not followed (the follower holds); after a
leader outage longer than `restart_after` s the smooth start runs again. A joint state stamped
more than `max_future_s` ahead of the host clock, or not newer than the last accepted one of
its topic, is dropped, counted (~/stats: "leader" / "follower" per pair) and logged (first at
once, then every 5 s); it never blocks the states after it (apprentice.stamps).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import yaml
from rclpy.node import Node
from rclpy.qos import QoSProfile
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray
from std_srvs.srv import Trigger

from apprentice.resample import AsOfBuffer
from apprentice.stamps import ACCEPTED, MAX_FUTURE_S, StampGate
from apprentice.teleop.follower import Teleop, TeleopConfig
from apprentice.timing import RateLoop
from apprentice_ros.conversions import from_time
from apprentice_ros.params import declare
from apprentice_ros.runtime import init, spin_nodes

QOS = QoSProfile(depth=10)

DEFAULTS = {
    "pairs": ["leader/left:left", "leader/right:right"],
    "rate_hz": 50.0,
    "max_step": 0.1,
    "ramp_time": 2.0,
    "max_leader_age": 0.1,
    "restart_after": 0.5,
    "max_future_s": MAX_FUTURE_S,  # s a stamp may be ahead of the host clock (apprentice.stamps)
    "mapping_file": "",  # YAML: {FOLLOWER_NS: {maps: [...], lower: [...], upper: [...]}}
}


@dataclass
class Pair:
    leader: str
    follower: str
    leader_buf: AsOfBuffer[np.ndarray]
    follower_buf: AsOfBuffer[np.ndarray]
    pub: object
    overrides: dict = field(default_factory=dict)
    leader_gate: StampGate = field(default_factory=StampGate)
    follower_gate: StampGate = field(default_factory=StampGate)
    teleop: Teleop | None = None
    stale_since: float | None = None
    counts: dict[str, int] = field(default_factory=lambda: {"published": 0, "stale_ticks": 0})


class TeleopNode(Node):
    def __init__(self) -> None:
        super().__init__("teleop")
        p = declare(self, DEFAULTS)
        self.p = p
        mapping = yaml.safe_load(open(p["mapping_file"])) if p["mapping_file"] else {}
        self.pairs: list[Pair] = []
        for spec in p["pairs"]:
            leader, sep, follower = spec.partition(":")
            if not sep or not leader or not follower:
                raise ValueError(f"pair must be LEADER_NS:FOLLOWER_NS, got {spec!r}")
            pair = Pair(
                leader.strip("/"),
                follower.strip("/"),
                AsOfBuffer(p["max_leader_age"]),
                AsOfBuffer(1.0),
                self.create_publisher(Float64MultiArray, f"/{follower.strip('/')}/commands", QOS),
                overrides=(mapping or {}).get(follower.strip("/"), {}),
                leader_gate=StampGate(p["max_future_s"]),
                follower_gate=StampGate(p["max_future_s"]),
            )
            for ns, buf, gate in (
                (pair.leader, pair.leader_buf, pair.leader_gate),
                (pair.follower, pair.follower_buf, pair.follower_gate),
            ):
                topic = f"/{ns}/joint_states"
                self.create_subscription(JointState, topic, self._store(topic, buf, gate), QOS)
            self.pairs.append(pair)
        self.create_service(Trigger, "~/stats", self._on_stats)
        self._stop = threading.Event()
        self._loop = RateLoop(p["rate_hz"], self._stop)
        self._thread = threading.Thread(target=self._run, name="teleop-loop")
        self._thread.start()
        self.get_logger().info(
            f"teleop at {p['rate_hz']:g} Hz: "
            + ", ".join(f"/{x.leader} → /{x.follower}" for x in self.pairs)
        )

    def _store(self, topic: str, buf: AsOfBuffer[np.ndarray], gate: StampGate):
        def on_msg(msg: JointState) -> None:
            stamp, received = from_time(msg.header.stamp), time.monotonic()
            if gate.admit(stamp, time.time(), received) == ACCEPTED:
                buf.push(stamp, np.array(msg.position))
            report = gate.report(topic, received)
            if report is not None:
                self.get_logger().warning(report)  # rate-limited by the gate

        return on_msg

    def _config(self, pair: Pair, n: int) -> TeleopConfig:
        keys = ("rate_hz", "max_step", "ramp_time", "max_leader_age")
        return TeleopConfig.from_dict(n, {**{k: self.p[k] for k in keys}, **pair.overrides})

    def _run(self) -> None:
        for _ in self._loop:
            now = time.time()
            for pair in self.pairs:
                self._tick(pair, now)

    def _tick(self, pair: Pair, now: float) -> None:
        leader = pair.leader_buf.at(now)
        if leader is None:
            pair.counts["stale_ticks"] += 1
            pair.stale_since = pair.stale_since or now
            if now - pair.stale_since > self.p["restart_after"]:
                pair.teleop = None  # ease in again when the leader returns
            return
        pair.stale_since = None
        if pair.teleop is None:
            follower = pair.follower_buf.latest()
            if follower is None:
                return
            pair.teleop = Teleop(self._config(pair, len(follower[1])))
            pair.teleop.start(follower[1], now)
        cmd = pair.teleop.step(leader[1], now)
        pair.pub.publish(Float64MultiArray(data=cmd.tolist()))
        pair.counts["published"] += 1

    def _on_stats(self, _req: Trigger.Request, res: Trigger.Response) -> Trigger.Response:
        res.success = True
        now = time.monotonic()
        res.message = json.dumps(
            {
                f"/{x.leader}->/{x.follower}": x.counts
                | {"leader": x.leader_gate.stats(now), "follower": x.follower_gate.stats(now)}
                for x in self.pairs
            }
            | {"missed_ticks": self._loop.missed}
        )
        return res

    def destroy_node(self) -> None:
        self._stop.set()
        self._thread.join()
        super().destroy_node()


def main(args: list[str] | None = None) -> None:
    init(args)
    spin_nodes([TeleopNode()])


if __name__ == "__main__":
    main()
