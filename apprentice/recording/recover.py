"""Recovery of an episode bag whose writer died (kill -9, power cut, OOM) before close().

Such a bag has an MCAP without summary or footer and no metadata.yaml, so rosbags, ros2 bag
and mcap's indexed reader refuse it. Every chunk the writer closed is complete on disk (the
writer closes a chunk at least every 0.5 s), only the chunk open at the crash is lost or torn.

The step, as `recover(bag_dir)` does it:
  1. rename `<name>.mcap` to `<name>.mcap.partial` (kept aside, never modified);
  2. stream-read the partial file record by record: schemas, channels, the episode's metadata
     record (task label and custom_data), then each chunk, decompressed and CRC-checked;
     reading stops at the first torn or corrupt record, which is the tail the crash cut;
  3. write every message from the complete chunks, unchanged (CDR bytes, log and publish
     times), into a fresh `<name>.mcap` with the normal writer, which adds the summary,
     footer and metadata.yaml (custom_data gains `recovered_from`).
Running it again after it was itself interrupted starts over from the `.partial` file.
A file cut anywhere, even before its header (0 bytes), gives a valid bag: empty when no chunk
was complete, without a task label when the episode's metadata record was cut.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml
from mcap.exceptions import EndOfFile
from mcap.records import Channel, Chunk, Header, Message, Metadata, Schema
from mcap.stream_reader import StreamReader, breakup_chunk

from .episode import (
    EPISODE_METADATA_NAME,
    METADATA_FILE,
    EpisodeSummary,
    EpisodeWriter,
    WriterConfig,
)
from .mcap_file import MAGIC

PARTIAL_SUFFIX = ".partial"


@dataclass(frozen=True)
class RecoveryReport:
    partial_path: Path  # the original file, kept aside
    messages: int  # messages recovered
    chunks: int  # complete chunks read
    bytes_read: int  # bytes of the partial file up to the end of the last complete record
    bytes_dropped: int  # bytes after it: the torn tail
    stop_reason: str  # "footer" for a file that was complete, else the error at the tail
    summary: EpisodeSummary  # of the rewritten bag


def closed_summary(bag_dir: str | Path) -> EpisodeSummary:
    """The summary of a closed bag, read back from its metadata.yaml."""
    bag_dir = Path(bag_dir)
    path = bag_dir / METADATA_FILE
    try:
        info = yaml.safe_load(path.read_text("utf-8"))["rosbag2_bagfile_information"]
    except (UnicodeDecodeError, yaml.YAMLError, TypeError, KeyError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"{path}: not a rosbag2 metadata file ({reason})") from None
    return EpisodeSummary(
        bag_dir=bag_dir,
        mcap_path=bag_dir / info["relative_file_paths"][0],
        start_time_ns=info["starting_time"]["nanoseconds_since_epoch"],
        duration_ns=info["duration"]["nanoseconds"],
        message_count=info["message_count"],
        topic_counts={
            t["topic_metadata"]["name"]: t["message_count"]
            for t in info["topics_with_message_count"]
        },
        custom_data={str(k): str(v) for k, v in (info.get("custom_data") or {}).items()},
    )


def bag_file(bag_dir: str | Path) -> Path | None:
    """The file a recovery starts from: the `.partial` of an interrupted recovery, else the
    bag's one `.mcap` (None when there is neither, or several)."""
    bag_dir = Path(bag_dir)
    partials = sorted(bag_dir.glob(f"*.mcap{PARTIAL_SUFFIX}"))
    if partials:
        return partials[0]
    mcaps = list(bag_dir.glob("*.mcap"))
    return mcaps[0] if len(mcaps) == 1 else None


def needs_recovery(bag_dir: str | Path) -> bool:
    """True when the bag has no metadata.yaml or its MCAP does not end with the magic."""
    bag_dir = Path(bag_dir)
    if not (bag_dir / METADATA_FILE).exists():
        return True
    mcaps = list(bag_dir.glob("*.mcap"))
    if len(mcaps) != 1:
        return True
    with open(mcaps[0], "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() < 2 * len(MAGIC):
            return True
        f.seek(-len(MAGIC), os.SEEK_END)
        return f.read() != MAGIC


def recover(bag_dir: str | Path, *, config: WriterConfig | None = None) -> RecoveryReport:
    """Rewrites the complete chunks of a crashed episode bag into a valid bag (see module doc)."""
    bag_dir = Path(bag_dir)
    if (bag_dir / METADATA_FILE).exists():
        raise ValueError(f"{bag_dir} has a metadata.yaml: it was closed, nothing to recover")
    partials = list(bag_dir.glob(f"*.mcap{PARTIAL_SUFFIX}"))
    if partials:  # an earlier recovery was interrupted: its output is incomplete, redo it
        partial = partials[0]
        for stale in bag_dir.glob("*.mcap"):
            stale.unlink()
    else:
        mcaps = list(bag_dir.glob("*.mcap"))
        if len(mcaps) != 1:
            raise FileNotFoundError(f"expected one .mcap in {bag_dir}, found {len(mcaps)}")
        partial = mcaps[0].with_name(mcaps[0].name + PARTIAL_SUFFIX)
        os.replace(mcaps[0], partial)
    return _rewrite(bag_dir, partial, config or WriterConfig())


class _Rewriter:
    """Feeds records of the partial file into a new EpisodeWriter, created on first need so
    that the episode's metadata record (written first) is known by then."""

    def __init__(self, bag_dir: Path, partial: Path, config: WriterConfig) -> None:
        self.bag_dir, self.partial, self.config = bag_dir, partial, config
        self.schemas: dict[int, Schema] = {}
        self.topics: dict[int, str] = {}  # channel id -> topic
        self.custom: dict[str, str] = {}
        self._out: EpisodeWriter | None = None
        self.messages = 0

    def record(self, rec: object) -> None:
        if isinstance(rec, Schema):
            self.schemas[rec.id] = rec
        elif isinstance(rec, Metadata) and rec.name == EPISODE_METADATA_NAME:
            self.custom = dict(rec.metadata)
        elif isinstance(rec, Channel) and rec.id not in self.topics:  # summary repeats them
            schema = self.schemas[rec.schema_id]
            self.writer().add_topic(
                rec.topic,
                schema.name,
                rec.metadata.get("offered_qos_profiles") or None,
                msgdef=schema.data.decode(),
                type_hash=rec.metadata.get("topic_type_hash", ""),
            )
            self.topics[rec.id] = rec.topic
        elif isinstance(rec, Message):
            self.writer().write(
                self.topics[rec.channel_id], rec.data, rec.log_time, rec.publish_time
            )
            self.messages += 1

    def writer(self) -> EpisodeWriter:
        if self._out is None:
            custom = dict(self.custom)
            task = custom.pop("task", "")
            custom["recovered_from"] = self.partial.name
            self._out = EpisodeWriter(
                self.bag_dir, task=task, custom_data=custom, config=self.config
            )
        return self._out


def _rewrite(bag_dir: Path, partial: Path, config: WriterConfig) -> RecoveryReport:
    out = _Rewriter(bag_dir, partial, config)
    chunks = 0
    bytes_read = 0
    stop_reason = ""
    with open(partial, "rb") as f:
        records = StreamReader(f, emit_chunks=True).records
        while True:
            # Any failure from here on is the torn tail of the file: stop and keep what
            # came before it, reporting why.
            try:
                rec = next(records)
                inner = breakup_chunk(rec, validate_crc=True) if isinstance(rec, Chunk) else [rec]
            except StopIteration:  # the footer and the closing magic were read
                stop_reason = "footer"
                bytes_read = f.tell()
                break
            except EndOfFile:
                stop_reason = "end of file without footer"
                break
            except Exception as exc:
                stop_reason = f"{type(exc).__name__}: {exc}"
                break
            if isinstance(rec, Header) and rec.profile != "ros2":
                raise ValueError(f"{partial} is not a ROS 2 MCAP (profile {rec.profile!r})")
            for r in inner:
                out.record(r)
            chunks += isinstance(rec, Chunk)
            bytes_read = f.tell()
        size = os.fstat(f.fileno()).st_size
    summary = out.writer().close()
    assert summary is not None  # not called from inside write(): close() does not defer
    return RecoveryReport(
        partial_path=partial,
        messages=out.messages,
        chunks=chunks,
        bytes_read=bytes_read,
        bytes_dropped=size - bytes_read,
        stop_reason=stop_reason,
        summary=summary,
    )
