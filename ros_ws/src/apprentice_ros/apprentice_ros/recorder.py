"""Recorder node: serialized messages → one rosbag2 MCAP bag per episode.

Parameters: dataset_dir, task, discover_timeout, and topics, each "NAME:NOMINAL_HZ:ROLE[:TYPE]"
(role camera|joint|other; TYPE like sensor_msgs/msg/JointState). Without TYPE the recorder waits
for a publisher to learn it; with TYPE a topic that has no publisher yet (a leader that starts
later) is subscribed RELIABLE, and the quality gate flags it if nothing arrives.
Services (std_srvs/Trigger, JSON replies):
  ~/start    begin an episode          ~/stop     close it, keep it, judge its quality
  ~/discard  stop (or take the last kept episode) and delete its bag
  ~/status   recording or not, the episode and its length, messages seen per topic, and
             per topic those stamped more than 0.5 s after they arrived (future_stamps: kept,
             logged at once then every 5 s, and the episode's quality verdict flags them)
Subscriptions are raw (the wire CDR bytes go to disk untouched: no deserialize/re-serialize).
QoS: each topic's publishers are looked up first; the subscription is RELIABLE when they all
are and BEST_EFFORT when any is (a RELIABLE reader would not match a BEST_EFFORT writer and the
stream would be silently missing), VOLATILE, KEEP_LAST max(100, 2 s of the nominal rate): the
queue absorbs a stalled callback (rclpy takes one message per ready subscription per wait, so a
200 Hz stream falls behind first). Chunks are compressed and written on the bag's writer thread,
not in callbacks. The process spins rclpy's EventsExecutor (under the recording bench a
do-nothing subscriber took ~10 % of a core with it, 25.6 % with the SingleThreadedExecutor).
SIGINT/SIGTERM finish the running episode cleanly.
"""

from __future__ import annotations

import importlib
import json
import math
import time

import yaml
from rclpy.experimental import EventsExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from std_srvs.srv import Trigger

from apprentice.recording import STAMPED_TYPES, TopicSpec, WriterConfig
from apprentice.recording.recorder import RecordedTopic, Recorder
from apprentice_ros.params import declare
from apprentice_ros.runtime import init, spin_nodes

QUEUE_S = 2.0  # s of messages a subscription queue holds at the topic's nominal rate
MIN_DEPTH = 100

DEFAULTS = {
    "dataset_dir": "data/demos",
    "task": "demo",
    "topics": ["/left/joint_states:100:joint"],
    "discover_timeout": 30.0,
    # JSON object of strings saved into the next episode's metadata (custom_data), e.g. the
    # sim scene and seed; set per episode through the parameter services before ~/start.
    "episode_info": "",
}


def message_class(type_name: str):
    """'sensor_msgs/msg/JointState' → the generated class."""
    pkg, _, name = type_name.rpartition("/")
    return getattr(importlib.import_module(pkg.replace("/", ".")), name)


def queue_depth(nominal_hz: float) -> int:
    """KEEP_LAST depth: at least MIN_DEPTH, and QUEUE_S seconds of the nominal rate."""
    return max(MIN_DEPTH, math.ceil(QUEUE_S * nominal_hz))


def parse_topic(spec: str) -> tuple[str, float, str, str]:
    parts = spec.split(":")
    if len(parts) not in (3, 4):
        raise ValueError(f"topic must be NAME:NOMINAL_HZ:ROLE[:TYPE], got {spec!r}")
    return parts[0], float(parts[1]), parts[2], parts[3] if len(parts) == 4 else ""


def _duration(d) -> dict[str, int]:
    sec, nsec = divmod(int(d.nanoseconds), 1_000_000_000)
    return {"sec": sec, "nsec": nsec}


def _rosbag2_qos(q) -> dict:
    """A publisher's QoS as rosbag2 writes it into metadata.yaml (offered_qos_profiles)."""
    return {
        "history": int(q.history),
        "depth": int(q.depth),
        "reliability": int(q.reliability),
        "durability": int(q.durability),
        "deadline": _duration(q.deadline),
        "lifespan": _duration(q.lifespan),
        "liveliness": int(q.liveliness),
        "liveliness_lease_duration": _duration(q.liveliness_lease_duration),
        "avoid_ros_namespace_conventions": bool(q.avoid_ros_namespace_conventions),
    }


class RecorderNode(Node):
    def __init__(self) -> None:
        super().__init__("recorder")
        p = declare(self, DEFAULTS)
        self.task = p["task"]
        wanted = [parse_topic(s) for s in p["topics"]]
        found = self._discover(
            [name for name, _, _, typ in wanted if not typ], p["discover_timeout"]
        )
        found |= self._discover([name for name, _, _, typ in wanted if typ], 2.0, required=False)
        topics = []
        for name, hz, role, given_type in wanted:
            if name in found:
                msgtype, qos, qos_yaml = found[name]
                if given_type and given_type != msgtype:
                    raise RuntimeError(f"{name} is {msgtype}, not {given_type}")
            else:
                msgtype, qos, qos_yaml = given_type, QoSProfile(depth=MIN_DEPTH), None
                self.get_logger().warning(f"{name}: no publisher yet, subscribing RELIABLE")
            qos.depth = queue_depth(hz)
            stamped = msgtype in STAMPED_TYPES
            topics.append(RecordedTopic(TopicSpec(name, hz, role, stamped), msgtype, qos_yaml))
            self.create_subscription(
                message_class(msgtype), name, self._on_message(name), qos, raw=True
            )
            self.get_logger().info(
                f"recording {name} [{msgtype}] {qos.reliability.name} depth {qos.depth}"
            )
        # Chunks close at least every 0.25 s: a kill -9 loses the open chunk, and the issue's
        # bound is 1 s including delivery lag on a loaded host.
        self.core = Recorder(p["dataset_dir"], topics, writer=WriterConfig(max_chunk_age_s=0.25))
        self.create_service(Trigger, "~/start", self._on_start)
        self.create_service(Trigger, "~/stop", self._on_stop)
        self.create_service(Trigger, "~/discard", self._on_discard)
        self.create_service(Trigger, "~/status", self._on_status)
        self.create_timer(0.1, self._every_100ms)

    def _discover(self, names: list[str], timeout: float, required: bool = True) -> dict:
        deadline = time.monotonic() + timeout
        found: dict[str, tuple[str, QoSProfile, str]] = {}
        while True:
            for name in names:
                infos = self.get_publishers_info_by_topic(name)
                if infos and name not in found:
                    found[name] = self._qos_for(infos)
            if len(found) == len(names) or (not required and time.monotonic() > deadline):
                return found
            if time.monotonic() > deadline:
                missing = sorted(set(names) - set(found))
                raise RuntimeError(f"no publisher for {missing} after {timeout:g} s")
            time.sleep(0.1)

    @staticmethod
    def _qos_for(infos) -> tuple[str, QoSProfile, str]:
        types = {i.topic_type for i in infos}
        if len(types) != 1:
            raise RuntimeError(f"publishers disagree on the type: {sorted(types)}")
        best_effort = any(i.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT for i in infos)
        qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=MIN_DEPTH,  # raised to the topic's rate by the caller
            reliability=ReliabilityPolicy.BEST_EFFORT
            if best_effort
            else ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.VOLATILE,
        )
        offered = [_rosbag2_qos(i.qos_profile) for i in infos]
        return types.pop(), qos, yaml.safe_dump(offered)

    def _every_100ms(self) -> None:
        self.core.flush_if_due()  # a quiet stream still reaches the disk
        report = self.core.stamp_report(time.monotonic())
        if report is not None:
            self.get_logger().warning(report)  # rate-limited by the core

    def _on_message(self, topic: str):
        def on_raw(data: bytes) -> None:  # runs once spinning starts, after __init__
            self.core.on_message(topic, data)

        return on_raw

    def _reply(self, res: Trigger.Response, ok: bool, **info) -> Trigger.Response:
        res.success = ok
        res.message = json.dumps(info)
        return res

    def _on_start(self, _req, res):
        info = self.get_parameter("episode_info").value
        try:
            extra = {str(k): str(v) for k, v in json.loads(info).items()} if info else {}
            episode = self.core.start(self.task, custom_data=extra)
        except (ValueError, AttributeError) as exc:
            return self._reply(res, False, error=f"episode_info must be a JSON object: {exc}")
        except RuntimeError as exc:
            return self._reply(res, False, error=str(exc))
        self.get_logger().info(f"episode {episode} started (task: {self.task}) {extra}")
        return self._reply(res, True, episode=episode)

    def _on_stop(self, _req, res):
        try:
            entry, verdict = self.core.stop()
        except RuntimeError as exc:
            return self._reply(res, False, error=str(exc))
        # (rclpy refuses one call site logging at two severities: two calls)
        if verdict.passed:
            self.get_logger().info(f"episode {entry.episode_id} kept: quality ok")
        else:
            self.get_logger().warning(
                f"episode {entry.episode_id} kept, FLAGGED: {verdict.reasons}"
            )
        return self._reply(
            res,
            True,
            episode=entry.episode_id,
            passed=verdict.passed,
            reasons=list(verdict.reasons),
            duration_s=entry.duration_s,
            counts=entry.topic_counts,
        )

    def _on_discard(self, _req, res):
        try:
            episode = self.core.discard()
        except RuntimeError as exc:
            return self._reply(res, False, error=str(exc))
        self.get_logger().info(f"episode {episode} discarded")
        return self._reply(res, True, episode=episode)

    def _on_status(self, _req, res):
        return self._reply(res, True, **self.core.status())

    def destroy_node(self) -> None:
        self.core.close()  # SIGINT / SIGTERM: finalize the running episode
        super().destroy_node()


def main(args: list[str] | None = None) -> None:
    init(args)
    # EventsExecutor: the recorder's load is hundreds of small callbacks a second, where the
    # SingleThreadedExecutor's Python wait loop costs as much CPU as the recording itself.
    spin_nodes([RecorderNode()], executor=EventsExecutor())


if __name__ == "__main__":
    main()
