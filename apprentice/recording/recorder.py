"""Episode control for the recorder node: start / stop-and-keep / discard, one bag per episode.

The node hands every received message (wire CDR bytes, receive time) to `on_message`; between
episodes messages are ignored. Stopping closes the bag, computes the quality verdict and adds
the episode to the dataset index; discarding deletes the bag and marks the entry discarded.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .episode import EpisodeWriter, WriterConfig
from .index import DatasetIndex, EpisodeEntry
from .msgdefs import header_stamp_ns
from .quality import QualityConfig, QualityTracker, QualityVerdict, TopicSpec, assess_bag
from .recover import recover


@dataclass(frozen=True)
class RecordedTopic:
    spec: TopicSpec
    msgtype: str  # e.g. sensor_msgs/msg/JointState
    qos_yaml: str | None = None  # offered QoS of the publishers, rosbag2 YAML


QUALITY_TOPICS_KEY = "quality_topics"


def topic_specs(custom_data: dict[str, str]) -> list[TopicSpec]:
    """The quality gate's topic specs a Recorder stored in an episode's custom_data."""
    if QUALITY_TOPICS_KEY not in custom_data:
        raise ValueError(f"custom_data has no {QUALITY_TOPICS_KEY!r} (not written by a Recorder)")
    return [
        TopicSpec(n, hz, role, stamped)
        for n, hz, role, stamped in json.loads(custom_data[QUALITY_TOPICS_KEY])
    ]


def recover_into_index(bag_dir: Path, quality: QualityConfig | None = None) -> EpisodeEntry:
    """Recovers a killed episode, judges it with its own topic specs and lists it in the
    index of the dataset it belongs to (the bag's parent folder)."""
    report = recover(bag_dir)
    summary = report.summary
    verdict = assess_bag(bag_dir, topic_specs(summary.custom_data), quality)
    entry = EpisodeEntry.from_episode(bag_dir.parent, summary, verdict)
    DatasetIndex(bag_dir.parent).append(entry)
    return entry


class Recorder:
    def __init__(
        self,
        dataset: str | Path,
        topics: list[RecordedTopic],
        quality: QualityConfig | None = None,
        writer: WriterConfig | None = None,
    ) -> None:
        self.root = Path(dataset)
        self.index = DatasetIndex(self.root)
        self.topics = {t.spec.name: t for t in topics}
        self.quality = quality or QualityConfig()
        self.writer_config = writer
        self._lock = threading.Lock()
        self._writer: EpisodeWriter | None = None
        self._tracker: QualityTracker | None = None
        self._start_ns = 0
        self.before_start = 0  # stamped messages of the episode's past, still queued at start
        # messages received during the episode that the recorder could not write (the bag's
        # writer failed, e.g. disk full): counted into the verdict, never silently skipped
        self.dropped = 0
        # messages received per topic since start-up, recording or not: live rates for the
        # operator (a stream that is silent before an episode starts will be silent in it)
        self.seen = dict.fromkeys(self.topics, 0)

    @property
    def recording(self) -> bool:
        return self._writer is not None

    def status(self) -> dict[str, object]:
        """What an operator watches: the running episode, its length, every stream's count."""
        writer = self._writer
        return {
            "recording": writer is not None,
            "episode": writer.bag_dir.name if writer is not None else None,
            "elapsed_s": (time.time_ns() - self._start_ns) * 1e-9 if writer is not None else 0.0,
            "seen": dict(self.seen),
            "nominal_hz": {name: t.spec.nominal_hz for name, t in self.topics.items()},
        }

    def start(self, task: str, custom_data: dict[str, str] | None = None) -> str:
        with self._lock:
            if self._writer is not None:
                raise RuntimeError(f"already recording {self._writer.bag_dir.name}")
            episode = self.index.next_episode_id()
            # The gate's topic specs travel in the bag (written at its start), so a recovered
            # bag is judged by the same rules as a finished one.
            specs = [
                [t.spec.name, t.spec.nominal_hz, t.spec.role, t.spec.stamped]
                for t in self.topics.values()
            ]
            data = {**(custom_data or {}), QUALITY_TOPICS_KEY: json.dumps(specs)}
            writer = EpisodeWriter(
                self.root / episode, task=task, custom_data=data, config=self.writer_config
            )
            for t in self.topics.values():
                writer.add_topic(t.spec.name, t.msgtype, t.qos_yaml)
            self._tracker = QualityTracker([t.spec for t in self.topics.values()])
            self.dropped = self.before_start = 0
            self._start_ns = time.time_ns()
            self._writer = writer
            return episode

    def on_message(self, topic: str, cdr: bytes, log_time_ns: int | None = None) -> None:
        if topic in self.seen:
            self.seen[topic] += 1
        writer, tracker = self._writer, self._tracker
        if writer is None or tracker is None:
            return
        t = time.time_ns() if log_time_ns is None else log_time_ns
        topic_def = self.topics.get(topic)
        if (
            topic_def is not None
            and topic_def.spec.stamped
            and header_stamp_ns(cdr) < self._start_ns
        ):
            # Sensed before the episode began (it waited in a subscription queue): it belongs
            # to no episode, so the bag holds exactly what happened between start and stop.
            self.before_start += 1
            return
        try:
            writer.write(topic, cdr, t)
        except RuntimeError:
            if not writer.closed:  # the writer failed: this message is lost to the bag
                self.dropped += 1
            # else closed under us by stop(): the message belongs to no episode
            return
        tracker.observe(topic, cdr, t)

    def flush_if_due(self) -> None:
        writer = self._writer
        if writer is not None and not writer.closed:
            writer.flush_if_due()

    def stop(self) -> tuple[EpisodeEntry, QualityVerdict]:
        """Closes the episode and lists it in the index with its quality verdict."""
        with self._lock:
            writer, tracker = self._writer, self._tracker
            if writer is None or tracker is None:
                raise RuntimeError("not recording")
            self._writer = self._tracker = None
            summary = writer.close()
            assert summary is not None  # not on a signal path: close() completes here
            verdict = tracker.verdict(self.quality, recorder_drops=self.dropped)
            entry = EpisodeEntry.from_episode(self.root, summary, verdict)
            self.index.append(entry)
            return entry, verdict

    def discard(self, note: str = "discarded by the operator") -> str:
        """Stops the current episode (or takes the last kept one) and deletes its bag."""
        if self.recording:
            entry, _ = self.stop()
        else:
            kept = self.index.list()
            if not kept:
                raise RuntimeError("nothing to discard")
            entry = kept[-1]
        self.index.discard(entry.episode_id, note)
        return entry.episode_id

    def close(self) -> None:
        """Finalizes a running episode (SIGINT/SIGTERM path): nothing recorded is lost."""
        if self.recording:
            self.stop()
