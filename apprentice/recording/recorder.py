"""Episode control for the recorder node: start / stop-and-keep / discard, one bag per episode.

The node hands every received message (wire CDR bytes, receive time) to `on_message`; between
episodes messages are ignored. Stopping closes the bag, computes the quality verdict and adds
the episode to the dataset index; discarding deletes the bag and marks the entry discarded.
After a crash, `recover_dataset` (`apprentice recover`) brings every episode the index does not
list back into it, judged by the same rules.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from apprentice.errors import UserPathError
from apprentice.stamps import Throttle

from .episode import EpisodeSummary, EpisodeWriter, WriterConfig
from .index import DatasetIndex, EpisodeEntry
from .msgdefs import header_stamp_ns
from .quality import QualityConfig, QualityTracker, QualityVerdict, TopicSpec, assess_bag
from .recover import RecoveryReport, bag_file, closed_summary, needs_recovery, recover


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


# The verdict of an episode the recorder wrote no message of before it died: listed, so that
# the crash is seen and the folder is not offered for recovery again, and never trained on.
EMPTY_REASON = "empty: the recorder wrote no message before it stopped"


def judge(summary: EpisodeSummary, quality: QualityConfig | None = None) -> QualityVerdict:
    """The quality verdict of a closed or recovered bag, by the topic specs it carries."""
    if summary.message_count == 0:
        return QualityVerdict(False, (EMPTY_REASON,), 0.0)
    if QUALITY_TOPICS_KEY not in summary.custom_data:
        reason = f"not judged: no {QUALITY_TOPICS_KEY!r} in the bag (not written by a Recorder)"
        return QualityVerdict(False, (reason,), summary.duration_ns * 1e-9)
    return assess_bag(summary.bag_dir, topic_specs(summary.custom_data), quality)


def recover_into_index(
    bag_dir: Path, quality: QualityConfig | None = None
) -> tuple[EpisodeEntry, RecoveryReport | None]:
    """Recovers a killed episode, judges it with its own topic specs and lists it in the
    index of the dataset it belongs to (the bag's parent folder). A bag that is already
    closed (recovered by a run that died before listing it, or a recorder that died between
    closing and listing) is only judged and listed: the report is then None."""
    bag_dir = Path(bag_dir)
    report = recover(bag_dir) if needs_recovery(bag_dir) else None
    summary = report.summary if report is not None else closed_summary(bag_dir)
    entry = EpisodeEntry.from_episode(bag_dir.parent, summary, judge(summary, quality))
    DatasetIndex(bag_dir.parent).append(entry)
    return entry, report


def unfinished_episodes(root: Path) -> list[Path]:
    """The bag folders of a dataset that its index does not list: killed recordings, and
    bags closed (or recovered) by a process that died before listing them."""
    listed = {(root / e.bag).resolve() for e in DatasetIndex(root).list(include_discarded=True)}
    return [
        p
        for p in sorted(root.iterdir())
        if p.is_dir() and p.resolve() not in listed and bag_file(p) is not None
    ]


def recover_dataset(
    root: str | Path, out: Callable[[str], None] = print, quality: QualityConfig | None = None
) -> int:
    """`apprentice recover`: recovers and lists every unfinished episode of a dataset, one at
    a time, naming each; one that fails is reported with its file and the others go on.
    Returns the exit code: 0 when all were recovered (or there was nothing to do), else 1."""
    root = Path(root)
    if not root.is_dir():
        raise UserPathError(f"{root}: no such dataset folder")
    todo = unfinished_episodes(root)
    if not todo:
        out(f"{root}: nothing to recover")
        return 0
    failed = []
    for bag in todo:
        source = bag_file(bag)
        assert source is not None  # unfinished_episodes() keeps only folders with one
        out(f"recovering {bag.name} ({source.name}, {_size(source.stat().st_size)})...")
        try:
            entry, report = recover_into_index(bag, quality)
        except Exception as exc:  # a damaged bag must not stop the recovery of the next
            failed.append(bag.name)
            out(f"FAILED {bag.name}: {source}: {type(exc).__name__}: {exc}")
            continue
        verdict = "quality ok" if entry.passed else "FLAGGED: " + "; ".join(entry.reasons)
        how = "listed" if report is None else "recovered"
        torn = ""
        if report is not None and report.bytes_dropped:
            torn = f" ({_size(report.bytes_dropped)} torn tail left out)"
        out(
            f"{how} {entry.episode_id}: {entry.duration_s:.1f} s, "
            f"{sum(entry.topic_counts.values())} messages{torn}; {verdict}"
        )
    if failed:
        out(f"{len(failed)} of {len(todo)} episode(s) not recovered: {', '.join(failed)}")
        return 1
    return 0


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


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
        # per topic since start-up, recording or not: messages stamped more than
        # quality.max_future_s after they were received (a sensor clock ahead of the host,
        # apprentice.stamps). Still written, never dropped: the bag holds what was on the wire,
        # and the quality gate flags the episode.
        self.future_stamps = dict.fromkeys(self.topics, 0)
        self._future_report = Throttle()
        self._future_reported = 0
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
            "future_stamps": dict(self.future_stamps),
            "before_start": self.before_start,
            "nominal_hz": {name: t.spec.nominal_hz for name, t in self.topics.items()},
        }

    def stamp_report(self, now: float) -> str | None:
        """A log line when messages stamped ahead of their receive time came since the last
        line (the first at once, then at most every REPORT_EVERY_S; now: s, monotonic)."""
        total = sum(self.future_stamps.values())
        if total == self._future_reported or not self._future_report.due(now):
            return None
        self._future_reported = total
        topics = ", ".join(f"{t} {n}" for t, n in self.future_stamps.items() if n)
        return (
            f"messages stamped more than {self.quality.max_future_s:g} s after they were "
            f"received (a sensor clock ahead of the host; kept, the episode is flagged): {topics}"
        )

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
        t = time.time_ns() if log_time_ns is None else log_time_ns
        topic_def = self.topics.get(topic)
        stamp = None
        if topic_def is not None:
            self.seen[topic] += 1
            if topic_def.spec.stamped:
                stamp = header_stamp_ns(cdr)
                if stamp - t > self.quality.max_future_s * 1e9:
                    self.future_stamps[topic] += 1
        writer, tracker = self._writer, self._tracker
        if writer is None or tracker is None:
            return
        if stamp is not None and stamp < self._start_ns:
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
