"""One rosbag2 bag (MCAP storage, metadata format 9) per recorded episode.

The recorder node hands over the wire CDR bytes it received (raw subscriptions) and the
receive time; this core writes them unchanged, so whatever `ros2 bag`, rosbags or mcap read
back is byte-identical to what was on the wire.

    with EpisodeWriter(root / "episode_0007", task="pick red cube") as w:
        w.add_topic("/follower/joint_states", "sensor_msgs/msg/JointState", qos_yaml)
        w.write("/follower/joint_states", cdr, log_time_ns=time.time_ns())
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import yaml

from .mcap_file import McapFileWriter
from .msgdefs import message_definition

ROSBAG2_VERSION = 9  # rosbag2 metadata format of Jazzy
METADATA_FILE = "metadata.yaml"
# An MCAP Metadata record written when the episode opens, so that a recovery after a crash
# still knows the task label and the rest of custom_data.
EPISODE_METADATA_NAME = "apprentice_episode"
LIBRARY = "apprentice-recording/1"


@dataclass(frozen=True)
class WriterConfig:
    """How chunks are cut and compressed."""

    # Close a chunk past this many uncompressed bytes: ~50 ms of 3 cameras at 640x480 rgb8
    # 30 Hz, small enough to compress in a few ms, large enough to amortise the index records.
    chunk_bytes: int = 4 * 1024 * 1024
    # ... and at least this often (s, monotonic clock): bounds what a kill -9 loses when only
    # slow streams are recorded (joint states alone take ~30 s to fill 4 MiB).
    max_chunk_age_s: float = 0.5
    # zstd level, None for uncompressed chunks. zstd rather than lz4: on noisy raw images
    # lz4.frame ran at ~385 MB/s for no gain, while zstd skips incompressible blocks fast and
    # still halves smooth (sim) images; ros2 bag's MCAP presets use zstd too. Level -3: 3
    # cameras 640x480 rgb8 @30 Hz + 2 joint streams @200 Hz (83 MB/s) cost 7-15 % of a core
    # here (ratio 1.0 noisy .. 1.9 smooth); level 1 cost 16-25 % for ratio 1.09 .. 2.4. A bag
    # whose first 8 MiB of chunks shrink less than 1.05x stores the rest uncompressed (noisy
    # frames, JPEG); chunk CRCs stay either way. Compression runs on the file's writer thread.
    zstd_level: int | None = -3
    # fsync the bag on close (the episode is on disk when close() returns). A closed chunk is
    # in the page cache a few ms later (written by the writer thread), which is what survives
    # a kill -9.
    fsync_on_close: bool = True
    ros_distro: str = "jazzy"

    def __post_init__(self) -> None:
        if self.chunk_bytes <= 0:
            raise ValueError(f"chunk_bytes must be positive, got {self.chunk_bytes}")
        if not self.max_chunk_age_s > 0:
            raise ValueError(f"max_chunk_age_s must be positive, got {self.max_chunk_age_s}")
        if self.zstd_level is not None and not -7 <= self.zstd_level <= 22:
            raise ValueError(f"zstd_level must be in -7..22 or None, got {self.zstd_level}")


@dataclass(frozen=True)
class EpisodeSummary:
    """What close() wrote: the numbers that also went into metadata.yaml."""

    bag_dir: Path
    mcap_path: Path
    start_time_ns: int  # first log time, ns since epoch (0 when empty)
    duration_ns: int  # last minus first log time
    message_count: int
    topic_counts: dict[str, int]
    custom_data: dict[str, str]


@dataclass
class _Topic:
    channel_id: int
    msgtype: str
    type_hash: str
    qos: list = field(default_factory=list)  # parsed offered_qos_profiles (v9: a list of maps)
    count: int = 0


def parse_qos_profiles(qos_profiles_yaml: str | None) -> list:
    """Parses rosbag2's offered_qos_profiles YAML (a list of QoS maps); None or '' -> []."""
    if not qos_profiles_yaml:
        return []
    profiles = yaml.safe_load(qos_profiles_yaml)
    if profiles is None:
        return []
    if not isinstance(profiles, list) or not all(isinstance(p, dict) for p in profiles):
        raise ValueError(f"offered_qos_profiles must be a YAML list of maps: {qos_profiles_yaml!r}")
    return profiles


class EpisodeWriter:
    """Writes one episode bag: `<bag_dir>/<name>_0.mcap` and, on close, `metadata.yaml`.

    Thread-safe. close() is idempotent and safe on a signal-handler path: called from a handler
    that interrupted write(), flush_if_due() or close() on the same thread, it returns None at
    once and the interrupted call closes the bag when it ends, instead of deadlocking on the
    writer's lock.
    """

    def __init__(
        self,
        bag_dir: str | Path,
        *,
        task: str,
        custom_data: Mapping[str, str] | None = None,
        config: WriterConfig | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config or WriterConfig()
        self.bag_dir = Path(bag_dir)
        self.custom_data = {"task": task, **dict(custom_data or {})}
        for key, value in self.custom_data.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise ValueError(f"custom_data must map str to str, got {key!r}: {value!r}")
        self.bag_dir.mkdir(parents=True, exist_ok=True)
        if (self.bag_dir / METADATA_FILE).exists():
            raise FileExistsError(f"{self.bag_dir} already holds a finished bag")
        self.mcap_path = self.bag_dir / f"{self.bag_dir.name}_0.mcap"
        self._file = McapFileWriter(
            self.mcap_path, profile="ros2", library=LIBRARY, zstd_level=self.config.zstd_level
        )
        self._file.add_metadata(EPISODE_METADATA_NAME, self.custom_data)
        self._monotonic = monotonic
        self._topics: dict[str, _Topic] = {}
        self._schema_ids: dict[str, int] = {}
        self._chunk_opened_at: float | None = None  # s, monotonic
        self._lock = threading.Lock()
        self._local = threading.local()  # .busy: this thread holds the lock
        self._close_requested = False
        self._summary: EpisodeSummary | None = None

    @property
    def closed(self) -> bool:
        return self._summary is not None

    @property
    def topic_counts(self) -> dict[str, int]:
        return {name: t.count for name, t in self._topics.items()}

    def add_topic(
        self,
        name: str,
        msgtype: str,
        qos_profiles_yaml: str | None = None,
        *,
        msgdef: str | None = None,
        type_hash: str = "",
    ) -> None:
        """Declares a topic. The schema text comes from the Jazzy type store unless msgdef
        (ros2msg text with its dependencies) is given for a type the store does not know."""
        qos = parse_qos_profiles(qos_profiles_yaml)
        if msgdef is None:
            msgdef, type_hash = message_definition(msgtype)
        with self._guard():
            self._check_open()
            if name in self._topics:
                raise ValueError(f"topic {name} already added")
            schema_id = self._schema_ids.get(msgtype)
            if schema_id is None:
                schema_id = self._file.add_schema(msgtype, "ros2msg", msgdef.encode())
                self._schema_ids[msgtype] = schema_id
            channel_id = self._file.add_channel(
                name,
                "cdr",
                schema_id,
                {
                    # rosbag2 keeps the publishers' QoS in the channel as a YAML string.
                    "offered_qos_profiles": yaml.safe_dump(qos, sort_keys=False) if qos else "",
                    "topic_type_hash": type_hash,
                },
            )
            self._topics[name] = _Topic(channel_id, msgtype, type_hash, qos)

    def write(
        self,
        topic: str,
        cdr: bytes | bytearray | memoryview,
        log_time_ns: int,
        publish_time_ns: int | None = None,
    ) -> None:
        """Appends one message: CDR bytes as received (with the 4-byte encapsulation header),
        log time = receive time (ns since epoch), publish time = send time when known."""
        with self._guard():
            self._check_open()
            t = self._topics.get(topic)
            if t is None:
                raise ValueError(f"unknown topic {topic}: add_topic() it first")
            publish = log_time_ns if publish_time_ns is None else publish_time_ns
            self._file.add_message(t.channel_id, t.count, log_time_ns, publish, cdr)
            t.count += 1
            now = self._monotonic()
            if self._chunk_opened_at is None:
                self._chunk_opened_at = now
            if (
                self._file.open_chunk_bytes >= self.config.chunk_bytes
                or now - self._chunk_opened_at >= self.config.max_chunk_age_s
            ):
                self._close_chunk()

    def flush_if_due(self) -> bool:
        """Closes the open chunk if it is older than max_chunk_age_s; for a periodic timer,
        so that a stream going quiet still reaches the disk. Returns whether it wrote one."""
        with self._guard():
            if self.closed or self._chunk_opened_at is None:
                return False
            if self._monotonic() - self._chunk_opened_at < self.config.max_chunk_age_s:
                return False
            self._close_chunk()
            return True

    def close(self) -> EpisodeSummary | None:
        """Finishes the MCAP and writes metadata.yaml. Idempotent: later calls return the
        same summary. Returns None only when deferred (see the class docstring)."""
        if getattr(self._local, "busy", False):
            self._close_requested = True
            return None
        with self._guard():
            if self._summary is None:
                self._summary = self._finish()
            return self._summary

    def __enter__(self) -> EpisodeWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Holds the lock, marking this thread busy so that a signal handler's close() on it
        defers instead of waiting for a lock its own thread holds; then honours that close."""
        self._local.busy = True
        try:
            with self._lock:
                yield
        finally:
            self._local.busy = False
            if self._close_requested and self._summary is None:
                self._close_requested = False  # one attempt: a failing close must not recurse
                self.close()

    def _check_open(self) -> None:
        if self._summary is not None:
            raise RuntimeError(f"episode {self.bag_dir} is closed")

    def _close_chunk(self) -> None:
        self._file.close_chunk()
        self._chunk_opened_at = None

    def _finish(self) -> EpisodeSummary:
        self._close_chunk()
        start, end = self._file.time_range_ns
        summary = EpisodeSummary(
            bag_dir=self.bag_dir,
            mcap_path=self.mcap_path,
            start_time_ns=start,
            duration_ns=end - start,
            message_count=self._file.message_count,
            topic_counts=self.topic_counts,
            custom_data=dict(self.custom_data),
        )
        info = self._bagfile_information(summary)
        # rosbag2's MCAP plugin stores the same information inside the file, so the MCAP
        # alone describes the bag.
        self._file.add_metadata(
            "rosbag2",
            {
                "serialized_metadata": yaml.safe_dump(info, sort_keys=False),
                "ROS_DISTRO": self.config.ros_distro,
            },
        )
        self._file.finish(fsync=self.config.fsync_on_close)
        text = yaml.safe_dump({"rosbag2_bagfile_information": info}, sort_keys=False)
        write_atomic(self.bag_dir / METADATA_FILE, text.encode(), fsync=self.config.fsync_on_close)
        return summary

    def _bagfile_information(self, s: EpisodeSummary) -> dict:
        name = self.mcap_path.name
        return {
            "version": ROSBAG2_VERSION,
            "storage_identifier": "mcap",
            "duration": {"nanoseconds": s.duration_ns},
            "starting_time": {"nanoseconds_since_epoch": s.start_time_ns},
            "message_count": s.message_count,
            "topics_with_message_count": [
                {
                    "topic_metadata": {
                        "name": topic,
                        "type": t.msgtype,
                        "serialization_format": "cdr",
                        "offered_qos_profiles": t.qos,
                        "type_description_hash": t.type_hash,
                    },
                    "message_count": t.count,
                }
                for topic, t in self._topics.items()
            ],
            "compression_format": "",
            "compression_mode": "",
            "relative_file_paths": [name],
            "files": [
                {
                    "path": name,
                    "starting_time": {"nanoseconds_since_epoch": s.start_time_ns},
                    "duration": {"nanoseconds": s.duration_ns},
                    "message_count": s.message_count,
                }
            ],
            "custom_data": dict(s.custom_data),
            "ros_distro": self.config.ros_distro,
        }


def write_atomic(path: Path, data: bytes, *, fsync: bool = True) -> None:
    """Writes a file so that readers see the old content or the new, never a torn one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if fsync:  # the rename itself is durable only once the directory is synced
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
