"""A LeRobot dataset (v3.0 or v2.1, a local folder) → one episode bag per episode, as the
recorder writes them, in a recording folder with `index.json`.

Per LeRobot episode `i`, bag `episode_{i:04d}` (rosbag2, MCAP) with, at every frame:
    /<arm>/joint_states       sensor_msgs/JointState  position = observation.state, name = its
                              feature names (flattened; `state_<k>` when it has none)
    /<arm>/joint_commands     sensor_msgs/JointState  position = action, name = its names
    /cameras/<cam>/image_raw  sensor_msgs/Image rgb8   per video or image feature
                              (`observation.images.<cam>`), decoded with PyAV
Header stamps (and log times) = EPOCH_NS + the frame's parquet `timestamp`, taken as the exact
frame_index / fps when within LeRobot's 1e-4 s of it (`lerobot_format.frame_time`). Bags carry
the quality gate's topic specs (nominal rate = fps), are judged like a recording, and listed in
`index.json`; custom_data keeps the task (an episode's tasks joined by " | ") and where the
episode came from (`lerobot_dataset`, `lerobot_episode_index`, `lerobot_codebase_version`).
`dataset.yaml` beside them is the dataset config that builds them at the dataset's own fps and
image size (`apprentice dataset build OUT --config OUT/dataset.yaml`).
Features other than state, action and RGB cameras (velocity, effort, depth, ...) are not
imported; the summary names them.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from rosbags.typesys import Stores, get_typestore

from apprentice.interop.lerobot_format import (
    ACTION,
    DEFAULT_FEATURES,
    STATE,
    EpisodeMeta,
    LeRobotFormatError,
    LeRobotLayout,
    camera_name,
    feature_names,
    frame_time,
)
from apprentice.interop.lerobot_video import VideoFrames
from apprentice.recording import DatasetIndex, EpisodeEntry, EpisodeWriter, WriterConfig
from apprentice.recording.recorder import QUALITY_TOPICS_KEY, judge

# Header stamps start here: 2023-11-14T22:13:20Z, a fixed time so that an import is
# reproducible byte for byte (LeRobot keeps no wall-clock time of its episodes).
EPOCH_NS = 1_700_000_000 * 1_000_000_000
JOINT_STATE = "sensor_msgs/msg/JointState"
IMAGE = "sensor_msgs/msg/Image"
_TS = get_typestore(Stores.ROS2_JAZZY)
_T = _TS.types


@dataclass
class ImportSummary:
    out: Path
    version: str
    fps: float
    episodes: int = 0
    frames: int = 0
    passed: int = 0
    cameras: list[str] = field(default_factory=list)
    state_names: tuple[str, ...] = ()
    action_names: tuple[str, ...] = ()
    not_imported: list[str] = field(default_factory=list)

    def describe(self) -> str:
        skipped = f"; not imported: {', '.join(self.not_imported)}" if self.not_imported else ""
        return (
            f"{self.out}: {self.episodes} episode bags ({self.passed} passed the quality gate), "
            f"{self.frames} frames at {self.fps:g} fps from LeRobot {self.version}; state "
            f"{list(self.state_names)}, action {list(self.action_names)}, cameras "
            f"{self.cameras}{skipped}"
        )


def _header(stamp_ns: int, frame_id: str):
    time = _T["builtin_interfaces/msg/Time"](
        sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000
    )
    return _T["std_msgs/msg/Header"](stamp=time, frame_id=frame_id)


def _joint_state(stamp_ns: int, frame_id: str, names: tuple[str, ...], q: np.ndarray) -> bytes:
    msg = _T[JOINT_STATE](
        header=_header(stamp_ns, frame_id), name=list(names), position=q,
        velocity=np.zeros(0), effort=np.zeros(0),
    )  # fmt: skip
    return bytes(_TS.serialize_cdr(msg, JOINT_STATE))


def _image(stamp_ns: int, frame_id: str, rgb: np.ndarray) -> bytes:
    h, w, _ = rgb.shape
    msg = _T[IMAGE](
        header=_header(stamp_ns, frame_id), height=h, width=w, encoding="rgb8", is_bigendian=0,
        step=3 * w, data=np.ascontiguousarray(rgb).reshape(-1),
    )  # fmt: skip
    return bytes(_TS.serialize_cdr(msg, IMAGE))


def _decode_image(data: bytes, where: str) -> np.ndarray:
    import cv2

    bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise LeRobotFormatError(f"{where}: an image that does not decode ({len(data)} bytes)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def import_lerobot(
    src: str | Path, out: str | Path, *, arm: str = "follower", progress: bool = True
) -> ImportSummary:
    """Writes the bags into `out` (a new or empty folder); see the module docstring."""
    layout = LeRobotLayout(src)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty")
    if not arm or "/" in arm:
        raise LeRobotFormatError(f"--arm must be a plain name, got {arm!r}")
    names = {k: feature_names(k, layout.features[k]) for k in (STATE, ACTION)}
    cams = {k: camera_name(k) for k in layout.camera_keys}
    if len(set(cams.values())) != len(cams):
        raise LeRobotFormatError(f"camera features map to the same name: {cams}")
    topics = {
        STATE: f"/{arm}/joint_states",
        ACTION: f"/{arm}/joint_commands",
        **{k: f"/cameras/{c}/image_raw" for k, c in cams.items()},
    }
    known = set(topics) | set(DEFAULT_FEATURES)
    summary = ImportSummary(
        out, layout.version, layout.fps, cameras=list(cams.values()),
        state_names=names[STATE], action_names=names[ACTION],
        not_imported=sorted(k for k in layout.features if k not in known),
    )  # fmt: skip
    specs = [
        [topics[STATE], layout.fps, "joint", True],
        [topics[ACTION], layout.fps, "joint", True],
    ]
    specs += [[topics[k], layout.fps, "camera", True] for k in cams]
    if not layout.episodes:
        raise LeRobotFormatError(f"{layout.root}: the dataset lists no episodes")
    index = DatasetIndex(out)
    tables: dict = {}
    for n, ep in enumerate(layout.episodes):
        if progress:
            print(f"[{n + 1}/{len(layout.episodes)}] episode {ep.index}: {ep.length} frames",
                  flush=True)  # fmt: skip
        bag_dir = out / f"episode_{ep.index:04d}"
        custom = {
            "lerobot_dataset": layout.root.resolve().name,
            "lerobot_episode_index": str(ep.index),
            "lerobot_codebase_version": layout.version,
            QUALITY_TOPICS_KEY: json.dumps(specs),
        }
        writer = EpisodeWriter(
            bag_dir, task=" | ".join(ep.tasks), custom_data=custom,
            config=WriterConfig(fsync_on_close=False),
        )  # fmt: skip
        try:
            for key, topic in topics.items():
                writer.add_topic(topic, JOINT_STATE if key in (STATE, ACTION) else IMAGE)
            _write_episode(layout, ep, tables, writer, topics, names, cams, arm)
        except BaseException:  # no half episode left beside the listed ones
            writer.close()
            shutil.rmtree(bag_dir, ignore_errors=True)
            raise
        closed = writer.close()
        assert closed is not None
        verdict = judge(closed)
        index.append(EpisodeEntry.from_episode(out, closed, verdict))
        summary.episodes += 1
        summary.frames += ep.length
        summary.passed += verdict.passed
    _write_dataset_config(out, layout, topics, cams)
    return summary


def _write_episode(
    layout: LeRobotLayout,
    ep: EpisodeMeta,
    tables: dict,
    writer: EpisodeWriter,
    topics: dict[str, str],
    names: dict[str, tuple[str, ...]],
    cams: dict[str, str],
    arm: str,
) -> None:
    rows = layout.frames(ep, tables)
    missing = [k for k in cams if k not in ep.videos and k not in rows]
    if missing:
        raise LeRobotFormatError(f"episode {ep.index}: no video or image data for {missing}")
    videos: dict[str, VideoFrames] = {}
    try:
        for k in cams:
            if k in ep.videos:
                videos[k] = VideoFrames(ep.videos[k].path, ep.videos[k].start_s, layout.fps)
        for k, (ts, fi) in enumerate(zip(rows["timestamp"], rows["frame_index"], strict=True)):
            t = frame_time(float(ts), int(fi), layout.fps)
            stamp = EPOCH_NS + round(t * 1e9)
            for key in (STATE, ACTION):
                cdr = _joint_state(stamp, arm, names[key], rows[key][k])
                writer.write(topics[key], cdr, log_time_ns=stamp)
            for key, cam in cams.items():
                if key in videos:
                    rgb = videos[key].at(t)
                else:
                    rgb = _decode_image(rows[key][k], f"{ep.data_path} {key} frame {fi}")
                writer.write(topics[key], _image(stamp, cam, rgb), log_time_ns=stamp)
    finally:
        for v in videos.values():
            v.close()


def _write_dataset_config(
    out: Path, layout: LeRobotLayout, topics: dict[str, str], cams: dict[str, str]
) -> None:
    """The config that builds the bags at the dataset's fps and its first camera's size; every
    stream's max age is 1.5 frame periods (each stream has a sample at every frame)."""
    age = round(1.5 / layout.fps, 6)
    first = next(iter(cams), None)
    hw = list(layout.features[first]["shape"][:2]) if first else [96, 128]
    if first and (layout.features[first].get("names") or [None])[0] == "channels":  # CHW
        hw = list(layout.features[first]["shape"][1:3])
    cfg = {
        "control_rate_hz": layout.fps,
        "image_hw": [int(v) for v in hw],
        "state": [{"topic": topics[STATE], "max_age_s": age}],
        "action": [{"topic": topics[ACTION], "max_age_s": age}],
        "cameras": [{"name": c, "topic": topics[k], "max_age_s": age} for k, c in cams.items()],
    }
    (out / "dataset.yaml").write_text(
        f"# {layout.root}: LeRobot {layout.version}, {layout.fps:g} fps\n"
        + yaml.safe_dump(cfg, sort_keys=False)
    )
