"""Replay a recorded episode in simulation and measure how closely the sim reproduces it.

python -m apprentice_ros.replay BAG [--speed 1.0] [--graph sim_aloha] [--seed N]
                                    [--video out.mp4] [--camera top] [--out DIR] [--domain N]

Starts the sim robot graph (GraphRunner) with the episode's scene and seed (custom_data of the
bag; --seed when the bag has none or to try another), waits until the arms and the camera are
up, then publishes the recorded /<arm>/commands at their recorded times / speed from a
dedicated thread on absolute deadlines. Meanwhile it records what the sim does the way the
recorder does (raw wire bytes, receive times) into DIR/bag: /<arm>/commands, /<arm>/joint_states,
/sim/success; and the camera's frames into a video. Finally it reports, per joint, the RMS and
max error between the recorded and the replayed joint states (apprentice.replay), whether
/sim/success became true, and writes DIR/report.json. Exit code 0 when the replay ran.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import rclpy
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Float64MultiArray

from apprentice.errors import run_command
from apprentice.graph import Graph, GraphRunner, load_graph
from apprentice.recording import EpisodeWriter
from apprentice.replay import (
    BOOL,
    FLOAT64_ARRAY,
    JOINT_STATE,
    SUCCESS_TOPIC,
    Episode,
    PlaybackStats,
    episode_seed,
    episode_tracking_error,
    open_video,
    play,
    read_episode,
    schedule,
    sim_overrides,
)
from apprentice.transport import isolated_domain_id, ros_env
from apprentice_ros.arm_driver import JOINT_QOS
from apprentice_ros.conversions import from_time, image_to_array
from apprentice_ros.runtime import init

# Like the recorder: a chunk write can stall a callback for ~15 ms; the queue absorbs it.
RECORD_QOS = QoSProfile(depth=100)
# 2 s of 30 Hz frames: a frame waits for the video encoder instead of being replaced by the next
# (depth 5 lost 17 of 121 frames on a loaded CI host)
VIDEO_QOS = QoSProfile(depth=60)


class ReplayNode(Node):
    """Publishes commands; records the sim's answer while `recording` is set."""

    def __init__(
        self,
        arms: list[str],
        watched: list[str],
        camera: str | None,
        writer: EpisodeWriter,
        video,
    ) -> None:
        """arms: those to command; watched: those whose joint states to record."""
        super().__init__("replay")
        self.recording = threading.Event()
        self.writer = writer
        self.video = video
        self.seen: set[str] = set()  # topics heard from at least once
        self.watched = watched
        self._pubs = {
            arm: self.create_publisher(Float64MultiArray, f"/{arm}/commands", JOINT_QOS)
            for arm in arms
        }
        topics = [(f"/{arm}/commands", FLOAT64_ARRAY, Float64MultiArray) for arm in arms]
        topics += [(f"/{arm}/joint_states", JOINT_STATE, JointState) for arm in watched]
        topics.append((SUCCESS_TOPIC, BOOL, Bool))
        for name, msgtype, cls in topics:
            writer.add_topic(name, msgtype)
            self.create_subscription(cls, name, self._record(name), RECORD_QOS, raw=True)
        self.camera_topic = f"/cameras/{camera}/image_raw" if camera else None
        if self.camera_topic:
            # Its own group: encoding a frame must not hold up the joint-state callbacks.
            self.create_subscription(
                Image,
                self.camera_topic,
                self._on_image,
                VIDEO_QOS,
                callback_group=MutuallyExclusiveCallbackGroup(),
            )

    def _record(self, topic: str):
        def on_raw(data: bytes) -> None:
            self.seen.add(topic)
            if self.recording.is_set():
                self.writer.write(topic, data, log_time_ns=time.time_ns())

        return on_raw

    def _on_image(self, msg: Image) -> None:
        self.seen.add(self.camera_topic)
        if self.recording.is_set():
            self.video.write(image_to_array(msg), from_time(msg.header.stamp))

    def publish(self, arm: str, values) -> None:
        self._pubs[arm].publish(Float64MultiArray(data=values.tolist()))

    def missing(self) -> list[str]:
        """What is not up yet: arm drivers not subscribed to their commands, topics not heard."""
        out = [
            f"/{a}/commands (no subscriber)"
            for a, p in self._pubs.items()
            if not p.get_subscription_count()
        ]
        wanted = [f"/{a}/joint_states" for a in self.watched] + [SUCCESS_TOPIC]
        if self.camera_topic:
            wanted.append(self.camera_topic)
        return out + [t for t in wanted if t not in self.seen]


def wait_ready(node: ReplayNode, runner: GraphRunner, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while missing := node.missing():
        if runner.poll():
            raise RuntimeError(f"graph process(es) exited: {runner.poll()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"sim not ready after {timeout:g} s, waiting for {missing}")
        time.sleep(0.05)


def run_playback(node: ReplayNode, episode: Episode, speed: float) -> PlaybackStats:
    """Plays the commands on a thread of their own; Ctrl-C / SIGTERM stops it early."""
    stop = threading.Event()
    result: list[PlaybackStats] = []
    thread = threading.Thread(
        target=lambda: result.append(play(schedule(episode.commands), node.publish, speed, stop)),
        name="replay-commands",
    )
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.1)
    except KeyboardInterrupt:
        stop.set()
        thread.join()
    return result[0]


def _graph_param(graph: Graph, name: str, default):
    return next((p.parameters[name] for p in graph.processes if name in p.parameters), default)


def _replay_into(
    runner: GraphRunner,
    episode: Episode,
    arms: list[str],
    camera: str | None,
    writer: EpisodeWriter,
    video,
    a: argparse.Namespace,
) -> PlaybackStats:
    """The ROS part: wait for the sim, record a rest, play the commands, record the hold."""
    init([])
    node = ReplayNode(arms, sorted(set(arms) | set(episode.joints)), camera, writer, video)
    executor = MultiThreadedExecutor()
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, name="replay-spin")
    spinner.start()
    try:
        wait_ready(node, runner, a.ready_timeout)
        node.recording.set()
        time.sleep(a.settle)  # a stretch of rest before the first command, as when recording
        stats = run_playback(node, episode, a.speed)
        time.sleep(a.hold)  # the arms settle on the last command; the last /sim/success
        node.recording.clear()
        return stats
    finally:
        executor.shutdown()
        spinner.join()
        node.destroy_node()
        rclpy.shutdown()


def replay(a: argparse.Namespace) -> dict:
    episode = read_episode(a.bag)
    seed = episode_seed(episode.custom_data, a.seed)
    base = load_graph(a.graph)
    graph = base.with_parameters(sim_overrides(base, episode, seed))
    arms = sorted(episode.commands)
    camera = a.camera or (sorted(episode.cameras) or _graph_param(graph, "cameras", [None]))[0]
    fps = float(_graph_param(graph, "camera_rate", 30.0))
    out = Path(a.out or f"replays/{episode.path.name}-{datetime.now():%Y%m%d-%H%M%S}")
    scene = _graph_param(graph, "scene", "")
    n = sum(len(s.stamps) for s in episode.commands.values())
    print(
        f"replay: {episode.path} ({scene}, seed {seed}): {n} commands for {arms} over "
        f"{episode.command_span:.2f} s at speed {a.speed:g}; "
        f"graph {graph.name}; output in {out}",
        flush=True,
    )
    writer = EpisodeWriter(
        out / "bag",
        task=episode.custom_data.get("task", ""),
        custom_data={
            "replay_of": str(episode.path.resolve()),
            "scene": str(scene),
            "seed": str(seed),
            "speed": str(a.speed),
        },
    )
    video = open_video(a.video or out / "video.mp4", fps)
    runner = GraphRunner(graph, log_dir=out / "logs").start()
    try:
        stats = _replay_into(runner, episode, arms, camera, writer, video, a)
    finally:
        writer.close()
        frames = video.close()
        graph_code = runner.stop()
    replayed = read_episode(out / "bag")
    errors = episode_tracking_error(episode, replayed, a.speed)
    return {
        "episode": str(episode.path),
        "scene": scene,
        "seed": seed,
        "speed": a.speed,
        "commands": stats.published,
        "late_commands": stats.late,
        "max_lateness_ms": round(stats.max_lateness_s * 1e3, 3),
        "stopped_early": stats.stopped,
        "recorded_success": episode.succeeded()
        if episode.success is not None
        else episode.custom_data.get("success"),
        "replay_success": replayed.succeeded(),
        "replay_bag": str(out / "bag"),
        "replay_span_s": replayed.command_span,
        "video": {
            "path": str(video.path),
            "frames": frames,
            "fps": fps,
            "camera": camera,
            "first_stamp": video.first_stamp,  # capture stamps of its first and last frame, s
            "last_stamp": video.last_stamp,
        },
        "graph_exit_code": graph_code,
        "tracking_error": {arm: e.as_dict() for arm, e in errors.items()},
    }


def print_report(r: dict) -> None:
    print(
        f"commands {r['commands']} (late > 5 ms: {r['late_commands']}, "
        f"max {r['max_lateness_ms']:.1f} ms); video {r['video']['path']} "
        f"({r['video']['frames']} frames); success: recorded {r['recorded_success']}, "
        f"replayed {r['replay_success']}"
    )
    print(f"{'joint':28} {'rms':>9} {'max':>9}   (rad; m for prismatic fingers)")
    for arm, e in r["tracking_error"].items():
        for name, v in e["joints"].items():
            print(f"{name:28} {v['rms']:9.4f} {v['max']:9.4f}")
        print(f"  ({arm}: {e['samples']} samples over {e['span_s'][0]:.2f}-{e['span_s'][1]:.2f} s)")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="apprentice replay", description=__doc__.splitlines()[0])
    ap.add_argument("bag", help="an episode bag folder (metadata.yaml + .mcap)")
    ap.add_argument("--speed", type=float, default=1.0, help="time scale: 2 plays twice as fast")
    ap.add_argument("--graph", default="sim_aloha", help="sim graph name or YAML path")
    ap.add_argument("--seed", type=int, help="sim seed (default: the bag's custom_data seed)")
    ap.add_argument("--video", help="video file (default: OUT/video.mp4, .avi without PyAV)")
    ap.add_argument("--camera", help="camera to film (default: the bag's first camera)")
    ap.add_argument("--out", help="output folder (default: replays/<episode>-<time>)")
    ap.add_argument("--json", help="also write the report here")
    ap.add_argument("--settle", type=float, default=0.5, help="s recorded before the first command")
    ap.add_argument("--hold", type=float, default=0.5, help="s recorded after the last command")
    ap.add_argument("--ready-timeout", type=float, default=60.0, help="s to wait for the sim")
    ap.add_argument(
        "--domain",
        type=int,
        help="ROS_DOMAIN_ID for the sim and this node (default: a random free one, so that a "
        "replay never commands a robot running on the usual domain)",
    )
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    a = ap.parse_args(argv)
    if not a.speed > 0:
        ap.error("--speed must be positive")
    # Before anything starts a ROS context: this process and the graph it starts share it.
    domain = a.domain if a.domain is not None else isolated_domain_id()
    os.environ.update(ros_env(domain_id=domain))
    print(f"replay: ROS_DOMAIN_ID={domain}", flush=True)
    # The command thread, waking from its sleep, waits for the GIL while the executor threads
    # run Python (~350 messages/s here) for up to the switch interval: 5 ms by default, more
    # than the 5 ms lateness we count; 1 ms bounds that wait.
    sys.setswitchinterval(0.001)
    try:  # a missing bag, --out in use, a sim that does not start: one line, exit 2
        return run_command(_replay_and_report, a, also=(ValueError, RuntimeError, OSError),
                           prog="apprentice replay")  # fmt: skip
    except KeyboardInterrupt:
        return 130


def _replay_and_report(a: argparse.Namespace) -> int:
    report = replay(a)
    text = json.dumps(report, indent=1)
    Path(report["replay_bag"]).parent.joinpath("report.json").write_text(text)
    if a.json:
        Path(a.json).write_text(text)
    print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
