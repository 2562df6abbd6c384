"""Reading one episode bag (rosbag2, MCAP storage) into timestamped arrays, with clear errors.

What is read is what the bag says it holds, or a `CorruptBagError` naming the file (a
`DatasetError`: `build_cache(skip_bad=True)` leaves the episode out and says why):
  - metadata.yaml is UTF-8 YAML, and its per-topic message counts equal the MCAP summary's
    (Statistics channel_message_counts);
  - the MCAP has its summary (a cut tail loses it) and, where the footer carries a summary
    CRC, matches it: the chunk index and the counts are then what the writer wrote;
  - every chunk is read where its chunk index says, its record header must agree with the
    index (a zeroed header would read as an empty chunk), and it is decompressed and
    CRC-checked;
  - `EpisodeBag.messages`, the one pass every reader uses (the dataset builder, replay, the
    quality gate), counts each topic's messages and, at the end, compares them with the
    summary: a bag that reads without an error but short is refused, never a smaller dataset.
The MCAP layer (summary, chunk index, CRCs) is `apprentice.dataset.mcap_checked`.
Messages are decoded with the rosbags Jazzy type store. Stamps, in s since the epoch:
  JointState, Image, CompressedImage: the header stamp, i.e. the time the sensor gave (the
      driver's read time, the camera's capture time);
  Float64MultiArray, Bool (no header): the bag's log time, i.e. when the recorder received it.
A camera's CameraInfo (`<camera>/camera_info`, when recorded) becomes its `ImageSeries.info`:
every message of the episode must agree, and describe the images' size.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from mcap.records import Message
from rosbags.typesys import Stores, get_typestore

from apprentice.dataset.config import (
    BOOL,
    CAMERA_INFO,
    COMPRESSED_IMAGE,
    FLOAT64_ARRAY,
    IMAGE,
    JOINT_STATE,
    camera_info_topic,
)
from apprentice.dataset.images import camera_info_record, compressed_to_input, raw_to_input
from apprentice.dataset.mcap_checked import (
    CheckedMcap,
    CorruptBagError,
    DatasetError,
    load_metadata,
    metadata_counts,
    one_line,
    read_summary,
    summary_counts,
)

_TYPESTORE = get_typestore(Stores.ROS2_JAZZY)
__all__ = ["CorruptBagError", "DatasetError", "EpisodeBag", "ImageSeries", "JointSeries"]


@dataclass
class JointSeries:
    """One joint (or other numeric) topic: stamps (N,) s, ascending; values (N, J); names of the
    J columns (None for a Float64MultiArray, whose names come from another topic; a Bool is one
    column of 0/1)."""

    stamps: np.ndarray
    values: np.ndarray
    names: tuple[str, ...] | None = None


@dataclass
class ImageSeries:
    """One camera topic: stamps (N,) s, ascending; frames (N, 3, H, W) uint8 RGB, resized."""

    stamps: np.ndarray
    frames: np.ndarray
    source_hw: tuple[int, int]  # size as recorded
    # the camera's CameraInfo (images.camera_info_record), None when it was not recorded
    info: dict | None = None


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class EpisodeBag:
    """A finished episode bag folder: `metadata.yaml` + one `.mcap`."""

    def __init__(self, bag_dir: str | Path):
        self.path = Path(bag_dir)
        if not self.path.is_dir():
            raise DatasetError(f"{self.path}: not a bag folder")
        meta_path = self.path / "metadata.yaml"
        mcaps = sorted(self.path.glob("*.mcap"))
        if not meta_path.exists():
            raise DatasetError(
                f"{self.path}: no metadata.yaml (the recording was not closed); repair it with "
                "apprentice.recording.recover() or discard the episode"
            )
        info = load_metadata(meta_path)
        if info.get("storage_identifier") != "mcap":
            raise DatasetError(
                f"{meta_path}: storage {info.get('storage_identifier')!r}, need mcap"
            )
        listed_files = info.get("relative_file_paths")
        files = (
            [self.path / f for f in listed_files if isinstance(f, str)]
            if isinstance(listed_files, list)
            else []
        )
        if len(files) != 1 or not files[0].exists():
            raise DatasetError(
                f"{self.path}: expected the one .mcap that metadata.yaml lists "
                f"({listed_files}), found {[m.name for m in mcaps]}"
            )
        self.mcap_path = files[0]
        custom = info.get("custom_data") or {}
        if not isinstance(custom, dict):
            raise CorruptBagError(f"{meta_path}: custom_data is not a map: {custom!r}")
        self.custom_data: dict[str, str] = dict(custom)
        listed = metadata_counts(meta_path, info)
        with open(self.mcap_path, "rb") as f:
            summary = read_summary(f, self.mcap_path)
        if summary is None:
            raise CorruptBagError(
                f"{self.mcap_path}: MCAP without a summary section, metadata.yaml says it holds "
                f"{sum(listed.values())} messages"
            )
        if summary.statistics is None:
            raise CorruptBagError(
                f"{self.mcap_path}: the MCAP summary has no Statistics record: its message "
                "counts cannot be checked"
            )
        self._summary = summary
        schemas = summary.schemas
        self.topics: dict[str, str] = {
            ch.topic: schemas[ch.schema_id].name if ch.schema_id in schemas else ""
            for ch in summary.channels.values()
        }
        # messages per topic as the summary counts them, checked against metadata.yaml here and
        # against what a pass reads in messages()
        self.counts: dict[str, int] = summary_counts(self.mcap_path, summary)
        for topic in sorted(set(self.counts) | set(listed)):
            if self.counts.get(topic, 0) != listed.get(topic, 0):
                raise CorruptBagError(
                    f"{self.mcap_path}: {topic}: the MCAP summary counts "
                    f"{self.counts.get(topic, 0)} messages, {meta_path} says "
                    f"{listed.get(topic, 0)}"
                )

    @property
    def task(self) -> str:
        return self.custom_data.get("task", "")

    def sha256(self) -> str:
        return file_sha256(self.mcap_path)

    def require(self, topic: str, allowed_types: tuple[str, ...]) -> str:
        """The topic's type, checked: recorded, of an allowed type, with messages."""
        if topic not in self.topics:
            raise DatasetError(
                f"{self.mcap_path}: topic {topic} was not recorded (topics: {sorted(self.topics)})"
            )
        msgtype = self.topics[topic]
        if msgtype not in allowed_types:
            raise DatasetError(
                f"{self.mcap_path}: topic {topic} has type {msgtype}, the dataset config "
                f"needs {' or '.join(allowed_types)}"
            )
        if self.counts.get(topic, 0) == 0:
            raise DatasetError(f"{self.mcap_path}: topic {topic} has no messages")
        return msgtype

    def messages(self, topics: Iterable[str] | None = None) -> Iterator[tuple[str, str, Message]]:
        """(topic, type, message) of `topics` (all when None) in log-time order (ties in file
        order), every chunk checked against its index and its CRC. A damaged chunk raises
        CorruptBagError when it is reached; a pass read to its end raises it when a topic's
        count differs from the summary's."""
        summary = self._summary
        names = None if topics is None else set(topics)
        wanted = {cid for cid, ch in summary.channels.items() if names is None or ch.topic in names}
        read = dict.fromkeys(wanted, 0)  # channel id → messages read
        for message in CheckedMcap(self.mcap_path, summary).messages(wanted, read):
            yield self._typed(message)
        totals: dict[str, int] = {}
        for cid, n in read.items():
            topic = summary.channels[cid].topic
            totals[topic] = totals.get(topic, 0) + n
        wrong = [
            f"{topic}: read {n} messages, the bag's summary says {self.counts[topic]}"
            for topic, n in sorted(totals.items())
            if n != self.counts[topic]
        ]
        if wrong:
            raise CorruptBagError(f"{self.mcap_path}: {'; '.join(wrong)}")

    def _typed(self, message: Message) -> tuple[str, str, Message]:
        channel = self._summary.channels[message.channel_id]
        schema = self._summary.schemas.get(channel.schema_id)
        return channel.topic, schema.name if schema else "", message

    def read(
        self,
        joint_topics: list[str],
        camera_topics: list[str],
        image_hw: tuple[int, int],
    ) -> tuple[dict[str, JointSeries], dict[str, ImageSeries]]:
        """Decodes the given topics (types checked by `require` first) in one checked pass
        (`messages`): joint topics (JointState, Float64MultiArray, Bool) into series, cameras
        into frames resized to `image_hw` (with their camera_info, when recorded)."""
        infos = {
            camera_info_topic(t): t
            for t in camera_topics
            if self.topics.get(camera_info_topic(t)) == CAMERA_INFO
        }
        wanted = set(joint_topics) | set(camera_topics)
        stamps: dict[str, list[float]] = {t: [] for t in wanted}
        values: dict[str, list[np.ndarray]] = {t: [] for t in wanted}
        names: dict[str, tuple[str, ...] | None] = dict.fromkeys(joint_topics)
        source_hw: dict[str, tuple[int, int]] = {}
        info: dict[str, dict] = {}  # camera topic → its first camera_info
        topic = "none yet"
        try:
            for topic, msgtype, message in self.messages(wanted | set(infos)):
                msg = _TYPESTORE.deserialize_cdr(message.data, msgtype)
                if topic in infos:
                    self._camera_info(topic, msg, info.setdefault(infos[topic], {}))
                    continue
                if msgtype in (FLOAT64_ARRAY, BOOL):
                    stamps[topic].append(message.log_time * 1e-9)
                    values[topic].append(np.asarray(msg.data, dtype=np.float64).reshape(-1))
                    continue
                stamp = msg.header.stamp
                stamps[topic].append(stamp.sec + stamp.nanosec * 1e-9)
                if msgtype == JOINT_STATE:
                    values[topic].append(self._joint_positions(topic, msg, names))
                elif msgtype == IMAGE:
                    chw, source_hw[topic] = raw_to_input(
                        msg.data, msg.height, msg.width, msg.encoding, msg.step, image_hw
                    )
                    values[topic].append(chw)
                elif msgtype == COMPRESSED_IMAGE:
                    chw, source_hw[topic] = compressed_to_input(msg.data, image_hw)
                    values[topic].append(chw)
                else:
                    raise DatasetError(f"{self.mcap_path}: topic {topic}: cannot decode {msgtype}")
        except DatasetError:
            raise
        except Exception as e:  # bad CDR, undecodable image
            raise DatasetError(
                f"{self.mcap_path}: reading messages failed (last topic read: {topic}): "
                f"{type(e).__name__}: {one_line(e)}"
            ) from e
        joints: dict[str, JointSeries] = {}
        for t in joint_topics:
            order = _stable_order(stamps[t])
            width = {v.shape[0] for v in values[t]}
            if len(width) != 1:
                raise DatasetError(
                    f"{self.mcap_path}: topic {t}: messages of different lengths {sorted(width)}"
                )
            arr = np.stack(values[t])[order]  # (N, J)
            if not np.all(np.isfinite(arr)):
                raise DatasetError(f"{self.mcap_path}: topic {t}: non-finite joint values")
            joints[t] = JointSeries(np.asarray(stamps[t])[order], arr, names[t])
        cameras: dict[str, ImageSeries] = {}
        for t in camera_topics:
            order = _stable_order(stamps[t])
            frames = np.stack(values[t])[order]  # (N, 3, H, W)
            lens = info.get(t) or None
            if lens is not None and (lens["height"], lens["width"]) != tuple(source_hw[t]):
                raise DatasetError(
                    f"{self.mcap_path}: {camera_info_topic(t)} describes "
                    f"{lens['width']}x{lens['height']} images, {t} has "
                    f"{source_hw[t][1]}x{source_hw[t][0]}"
                )
            cameras[t] = ImageSeries(np.asarray(stamps[t])[order], frames, source_hw[t], lens)
        return joints, cameras

    def _camera_info(self, topic: str, msg, first: dict) -> None:
        """Checks one CameraInfo message against the topic's first (`first`, filled here)."""
        record = camera_info_record(msg.width, msg.height, msg.k, msg.d, msg.distortion_model)
        if not first:
            first.update(record)
        elif record != first:
            raise DatasetError(
                f"{self.mcap_path}: {topic} changed within the episode: {first} then {record} "
                "(a camera must keep one calibration through an episode)"
            )

    def image_hw(self, topic: str) -> tuple[int, int]:
        """(height, width) of the first message of a sensor_msgs/Image topic."""
        self.require(topic, (IMAGE,))
        for _, _, message in self.messages([topic]):
            msg = _TYPESTORE.deserialize_cdr(message.data, IMAGE)
            return int(msg.height), int(msg.width)
        raise DatasetError(f"{self.mcap_path}: topic {topic} has no messages")

    def _joint_positions(
        self, topic: str, msg, names: dict[str, tuple[str, ...] | None]
    ) -> np.ndarray:
        msg_names = tuple(msg.name)
        known = names[topic]
        if known is None:
            if len(set(msg_names)) != len(msg_names):
                raise DatasetError(f"{self.mcap_path}: topic {topic}: repeated joint names")
            names[topic] = msg_names
        elif msg_names != known:
            raise DatasetError(
                f"{self.mcap_path}: topic {topic}: joint names changed within the bag, "
                f"{list(known)} then {list(msg_names)}"
            )
        position = np.asarray(msg.position, dtype=np.float64)
        if position.shape != (len(msg_names),):
            raise DatasetError(
                f"{self.mcap_path}: topic {topic}: {len(msg_names)} names but "
                f"{position.shape[0]} positions"
            )
        return position


def _stable_order(stamps: list[float]) -> np.ndarray:
    """Messages come in log-time order; header stamps may be slightly out of it (callbacks on
    several threads). The as-of rule needs them sorted by stamp."""
    return np.argsort(np.asarray(stamps), kind="stable")
