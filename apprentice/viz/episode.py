"""An episode bag drawn in the shared layout (`apprentice.viz.layout`).

The bag is read once through the checked reader (`EpisodeBag.messages`: a damaged bag is a
one-line error, never a shorter picture). What each topic becomes:
  /<arm>/joint_states (JointState)            joints/<arm>/<joint>/state, and the 3D robot
  /leader/<arm>/joint_states                  joints/<arm>/<joint>/leader (the leader of <arm>)
  /<arm>/commands (Float64MultiArray)         joints/<arm>/<joint>/command, in joint_states order
  /<arm>/joint_commands (JointState)          joints/<arm>/<joint>/command, by name
  /cameras/<cam>/image_raw[/compressed]       cameras/<cam> (raw rgb8/bgr8/mono8, or JPEG as is)
  /sim/task_stage (Int32), /sim/success (Bool) task/stage, task/success
Times are the header stamps; topics without a header (commands, sim status) have the
recorder's receive time, as in the dataset builder. Leaders are paired by the one namespace
rule (ARCHITECTURE: the leader of follower F publishes /leader/F/joint_states); a bag does not
record the teleop graph. The quality gate (`apprentice.recording.quality.assess_bag`, the
topic specs the recorder stored in the bag) is run again and each finding is logged on
`quality`: at the gap it names, else at the episode's start. The 3D robot is the scene named
in the bag's custom_data (`scene`, written by the sim recorder); hardware bags have none.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rerun as rr
from rosbags.typesys import Stores, get_typestore

from apprentice.dataset.bag import EpisodeBag
from apprentice.dataset.mcap_checked import DatasetError
from apprentice.viz import layout

_TS = get_typestore(Stores.ROS2_JAZZY)
JOINT_STATE = "sensor_msgs/msg/JointState"
FLOAT64_ARRAY = "std_msgs/msg/Float64MultiArray"
IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"
BOOL = "std_msgs/msg/Bool"
INT32 = "std_msgs/msg/Int32"

_LEADER = re.compile(r"^/leader/(?P<arm>.+)/joint_states$")
_STATE = re.compile(r"^/(?P<arm>.+)/joint_states$")
_COMMANDS = re.compile(r"^/(?P<arm>.+)/(?P<kind>commands|joint_commands)$")
_CAMERA = re.compile(r"^/cameras/(?P<cam>[^/]+)/image_raw(?P<jpeg>/compressed)?$")
_GAP = re.compile(r"^(?P<topic>\S+): gap of .* s \(> .* s\) (?P<at>[0-9.]+) s into the stream")


@dataclass
class Route:
    """Where one topic goes: kind in state/leader/command/camera/stage/success."""

    kind: str
    name: str  # the arm or camera ('' for the task topics)
    stamped: bool  # header stamp (True) or receive time


@dataclass
class Series:
    """A topic's samples as read: stamps (N,) s, and per kind the values."""

    stamps: list[float] = field(default_factory=list)
    values: list = field(default_factory=list)  # (J,) arrays, image messages or scalars
    names: tuple[str, ...] | None = None  # JointState names (first message)


@dataclass
class EpisodeView:
    """What `log_bag` drew: topic → its messages, the arms' joints, the cameras, the scene
    (None: no 3D robot) and the topics it did not draw."""

    counts: dict[str, int]
    arms: dict[str, tuple[str, ...]]
    cameras: list[str]
    scene: str | None
    not_drawn: list[str]
    quality: list[str]
    stamps: dict[str, tuple[float, float]]  # topic → first, last time (s) as logged


def route(topic: str, msgtype: str) -> Route | None:
    """The layout entity kind of a bag topic, or None when the layout has no place for it."""
    if msgtype == JOINT_STATE and (m := _LEADER.match(topic)):
        return Route("leader", m["arm"], True)
    if msgtype == JOINT_STATE and (m := _STATE.match(topic)):
        return Route("state", m["arm"], True)
    if (m := _COMMANDS.match(topic)) and (
        (m["kind"] == "commands" and msgtype == FLOAT64_ARRAY)
        or (m["kind"] == "joint_commands" and msgtype == JOINT_STATE)
    ):
        return Route("command", m["arm"], msgtype == JOINT_STATE)
    if (m := _CAMERA.match(topic)) and msgtype == (COMPRESSED if m["jpeg"] else IMAGE):
        return Route("camera", m["cam"], True)
    if topic == "/sim/task_stage" and msgtype == INT32:
        return Route("stage", "", False)
    if topic == "/sim/success" and msgtype == BOOL:
        return Route("success", "", False)
    return None


def read_bag(bag: EpisodeBag) -> tuple[dict[str, Route], dict[str, Series]]:
    """Every routed topic's samples, in one checked pass."""
    routes = {t: r for t, ty in bag.topics.items() if (r := route(t, ty)) is not None}
    series = {t: Series() for t in routes}
    topic = "none yet"
    try:
        for topic, msgtype, message in bag.messages(routes):
            r, s = routes[topic], series[topic]
            msg = _TS.deserialize_cdr(message.data, msgtype)
            if r.stamped:
                s.stamps.append(msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9)
            else:
                s.stamps.append(message.log_time * 1e-9)
            if msgtype == JOINT_STATE:
                names = tuple(msg.name)
                if s.names is None:
                    s.names = names
                elif names != s.names:
                    raise DatasetError(f"{bag.mcap_path}: {topic}: joint names changed within "
                                       f"the bag, {list(s.names)} then {list(names)}")
                s.values.append(np.asarray(msg.position, dtype=np.float64))
            elif msgtype == FLOAT64_ARRAY:
                s.values.append(np.asarray(msg.data, dtype=np.float64))
            elif msgtype in (IMAGE, COMPRESSED):
                s.values.append(msg)
            else:  # Bool, Int32
                s.values.append(msg.data)
    except DatasetError:
        raise
    except Exception as e:  # bad CDR
        raise DatasetError(f"{bag.mcap_path}: reading messages failed (last topic read: "
                           f"{topic}): {type(e).__name__}: {e}") from e
    return routes, series


def rgb(msg, topic: str) -> np.ndarray:
    """A sensor_msgs/Image as (H, W, 3) uint8 RGB, or (H, W) for mono8."""
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    channels = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}.get(msg.encoding)
    if channels is None:
        raise DatasetError(f"{topic}: image encoding {msg.encoding!r} is not drawn "
                           "(rgb8, bgr8, rgba8, bgra8, mono8 are)")
    rows = np.asarray(msg.data, dtype=np.uint8).reshape(h, step)[:, : w * channels]
    px = rows.reshape(h, w, channels)
    if msg.encoding == "mono8":
        return px[:, :, 0]
    if msg.encoding.startswith("bgr"):
        px = px[:, :, 2::-1]
    return np.ascontiguousarray(px[:, :, :3])


def _joint_names(bag: EpisodeBag, topic: str, s: Series, names: tuple[str, ...] | None,
                 say: Callable[[str], None]) -> tuple[str, ...] | None:
    """The follower joint names a leader's or a command's columns are drawn under."""
    width = len(s.values[0])
    if s.names is not None and names is not None and set(s.names) <= set(names):
        return s.names  # by name
    if names is not None and width == len(names):
        return names  # by position: Float64MultiArray, or a leader with other names
    if s.names is not None and names is None:
        return s.names  # no follower recorded: the topic's own names
    say(f"{topic}: {width} values, the follower has {len(names or ())} joints: not drawn")
    return None


def log_bag(rec: rr.RecordingStream, bag_dir: str | Path, max_fps: float = 30.0,
            say: Callable[[str], None] = print) -> EpisodeView:
    """Logs one episode bag in the layout (blueprint included). max_fps: the 3D robot's poses
    per second at most (0: one per joint state); every message of every topic is logged."""
    bag = EpisodeBag(bag_dir)
    routes, series = read_bag(bag)
    # arms: the followers' joint_states first, then arms known only from commands or leaders
    arms: dict[str, tuple[str, ...]] = {}
    for topic, r in routes.items():
        s = series[topic]
        if r.kind == "state" and s.values:
            arms[r.name] = s.names or ()
    view = EpisodeView(counts={t: bag.counts.get(t, 0) for t in routes}, arms={}, cameras=[],
                       scene=None, not_drawn=sorted(set(bag.topics) - set(routes)),
                       quality=[], stamps={})
    for topic, r in sorted(routes.items()):
        s = series[topic]
        if not s.values:
            continue
        t = np.asarray(s.stamps)
        view.stamps[topic] = (float(t.min()), float(t.max()))
        if r.kind in ("state", "leader", "command"):
            names = _joint_names(bag, topic, s, arms.get(r.name), say)
            if names is None:
                view.not_drawn.append(topic)
                continue
            arms.setdefault(r.name, names)
            values = np.stack(s.values)  # (N, J)
            layout.log_joint_columns(rec, r.name, names, t, values, r.kind)
        elif r.kind == "camera":
            view.cameras.append(r.name)
            for stamp, msg in zip(t, s.values, strict=True):
                if bag.topics[topic] == COMPRESSED:
                    layout.log_jpeg(rec, r.name, bytes(msg.data), stamp)
                else:
                    layout.log_image(rec, r.name, rgb(msg, topic), stamp)
        else:
            index = [rr.TimeColumn(layout.TIMELINE, timestamp=t)]
            values = np.asarray(s.values, dtype=np.float64)
            rec.send_columns(f"{layout.TASK}/{r.kind}", indexes=index,
                             columns=rr.Scalars.columns(scalars=values))
    for arm, names in arms.items():
        layout.declare_joints(rec, arm, names)
    view.arms = arms
    view.scene = _log_robot(rec, bag, routes, series, max_fps, say)
    view.quality = _log_quality(rec, bag, view, say)
    rec.send_blueprint(layout.blueprint(arms, view.cameras, robot=view.scene is not None))
    return view


def pose_times(stamps: np.ndarray, max_fps: float) -> np.ndarray:
    """Sorted `stamps` thinned to the first of each 1/max_fps s slot (slots counted from the
    first stamp): max_fps poses a second where the stamps come faster, every stamp where not."""
    stamps = np.unique(stamps)
    if max_fps <= 0 or len(stamps) == 0:
        return stamps
    slot = np.floor((stamps - stamps[0]) * max_fps)
    return stamps[np.r_[True, slot[1:] != slot[:-1]]]


def _log_robot(rec: rr.RecordingStream, bag: EpisodeBag, routes: dict[str, Route],
               series: dict[str, Series], max_fps: float, say: Callable[[str], None]
               ) -> str | None:
    """The scene the bag names, posed by every follower's joint states."""
    scene = bag.custom_data.get("scene")
    if not scene:
        say("the bag names no scene (custom_data 'scene'): no 3D robot")
        return None
    states = [(s.names or (), np.asarray(s.stamps), np.stack(s.values))
              for t, r in routes.items() if r.kind == "state" and (s := series[t]).values]
    return log_robot(rec, scene, states, max_fps, say)


def log_robot(rec: rr.RecordingStream, scene: str,
              states: list[tuple[tuple[str, ...], np.ndarray, np.ndarray]], max_fps: float,
              say: Callable[[str], None] = print) -> str | None:
    """The scene's model (static), posed at most max_fps times a second by the arms' joint
    states: per arm (joint names, stamps (N,) s, positions (N, J)), each arm as of each pose
    time (an arm not yet heard from holds its first sample). Returns the scene, or None when
    it is not a scene of apprentice.sim (no 3D robot, said)."""
    from apprentice.sim.scenes import SCENES
    from apprentice.viz.robot_model import RobotModel

    if scene not in SCENES:
        say(f"scene {scene!r} is not one of {', '.join(sorted(SCENES))}: no 3D robot")
        return None
    model = RobotModel(scene)
    model.log_static(rec)
    states = [s for s in states if len(s[1])]
    if not states:
        say("no joint states: the 3D robot stays at the model's rest pose")
        return scene
    times = pose_times(np.concatenate([t for _, t, _ in states]), max_fps)
    names: list[str] = []
    columns = []
    for arm_names, t, q in states:
        order = np.argsort(t, kind="stable")
        t, q = t[order], q[order]  # (N,), (N, J)
        i = np.clip(np.searchsorted(t, times, side="right") - 1, 0, len(t) - 1)  # as of
        names += list(arm_names)
        columns.append(q[i])
    model.pose_columns(rec, times, names, np.concatenate(columns, axis=1))
    return scene


def _log_quality(rec: rr.RecordingStream, bag: EpisodeBag, view: EpisodeView,
                 say: Callable[[str], None]) -> list[str]:
    """The quality gate run on the bag; each finding at the time it refers to."""
    from apprentice.recording.quality import assess_bag
    from apprentice.recording.recorder import QUALITY_TOPICS_KEY, topic_specs

    start = min((a for a, _ in view.stamps.values()), default=0.0)
    if QUALITY_TOPICS_KEY not in bag.custom_data:
        text = f"not judged: the bag has no {QUALITY_TOPICS_KEY!r} (not written by a recorder)"
        layout.log_quality(rec, text, start, level="INFO")
        say(f"quality: {text}")
        return [text]
    verdict = assess_bag(bag.path, topic_specs(bag.custom_data))
    if verdict.passed:
        text = f"passed: {verdict.duration_s:.2f} s, {len(verdict.topics)} topics"
        layout.log_quality(rec, text, start, level="INFO")
        return [text]
    for reason in verdict.reasons:
        at = start
        if (m := _GAP.match(reason)) and m["topic"] in view.stamps:
            at = view.stamps[m["topic"]][0] + float(m["at"])
        layout.log_quality(rec, reason, at)
    shown = verdict.reasons[:3]
    more = len(verdict.reasons) - len(shown)
    say(f"quality: {len(verdict.reasons)} finding(s), on the timeline as `quality`: "
        + "; ".join(shown) + (f"; … {more} more" if more else ""))
    return list(verdict.reasons)
