"""The quality gate of a recorded episode: rates, gaps, loss and camera/joint skew per topic.

Times come from the header stamps the sensors gave (read straight from the CDR, 12 bytes, no
deserialisation), not from when the recorder received them; topics without a header use the
log (receive) time. A message stamped more than `max_future_s` after it was received (a sensor
clock ahead of the host: apprentice.stamps) is counted and fails the gate, and its stamp is
left out of the rates, gaps and skews (one +30 s stamp would read as a 30 s gap). A
`QualityTracker` is fed while recording (O(1) per message) or from a bag afterwards
(`assess_bag`); `verdict()` checks it against a `QualityConfig`.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from apprentice.stamps import MAX_FUTURE_S

from .msgdefs import header_stamp_ns

Role = Literal["camera", "joint", "other"]
_NS = 1e-9  # s per ns


@dataclass(frozen=True)
class TopicSpec:
    """A topic the gate checks. stamped: its first member is a std_msgs/Header."""

    name: str
    nominal_hz: float
    role: Role = "other"
    stamped: bool = True

    def __post_init__(self) -> None:
        if not self.nominal_hz > 0:
            raise ValueError(f"{self.name}: nominal_hz must be positive, got {self.nominal_hz}")
        if self.role not in ("camera", "joint", "other"):
            raise ValueError(f"{self.name}: role must be camera, joint or other: {self.role!r}")


@dataclass(frozen=True)
class QualityConfig:
    """Thresholds; an episode passes when it breaks none."""

    min_duration_s: float = 1.0
    min_rate_fraction: float = 0.9  # achieved rate / nominal rate, per topic
    gap_periods: float = 2.0  # an interval longer than this many nominal periods is a gap
    max_gap_s: float = 0.25  # a longer gap in any topic fails (a teleop move is ~1 s)
    max_lost_fraction: float = 0.02  # messages lost in transport / expected, per topic
    max_recorder_drops: int = 0  # messages the recorder itself dropped (queue full, late)
    # A stream starting this much later or ending this much earlier than the episode fails.
    max_edge_s: float = 0.5
    # Largest distance (s) from a camera frame's stamp to the nearest stamp of a joint stream
    # (at 200 Hz a healthy stream is within 2.5 ms) and of another camera (unsynchronised
    # 30 Hz cameras are within half a period, 17 ms).
    max_camera_joint_skew_s: float = 0.02
    max_camera_camera_skew_s: float = 0.04
    # A header stamp this much later than the message's receive time is a clock fault.
    max_future_s: float = MAX_FUTURE_S

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value < 0:
                raise ValueError(f"{name} must not be negative, got {value}")
        if not 0 < self.min_rate_fraction <= 1:
            raise ValueError(f"min_rate_fraction must be in (0, 1], got {self.min_rate_fraction}")


@dataclass(frozen=True)
class TopicQuality:
    topic: str
    role: Role
    count: int
    nominal_hz: float
    achieved_hz: float  # (count - 1) / stamp span
    expected: int  # messages at the nominal rate over the stamp span
    lost: int  # sequence gaps where publishers gave numbers, else expected - count
    gaps: int  # intervals longer than gap_periods nominal periods
    longest_gap_s: float
    longest_gap_at_s: float  # where it starts, s after the topic's first stamp
    zero_stamps: int  # header stamps left at 0 by the publisher
    first_log_ns: int
    last_log_ns: int
    future_stamps: int = 0  # stamped more than max_future_s after their receive time


@dataclass(frozen=True)
class QualityVerdict:
    passed: bool
    reasons: tuple[str, ...]  # human-readable, one per broken threshold
    duration_s: float
    topics: dict[str, TopicQuality] = field(default_factory=dict)
    skews_s: dict[str, float] = field(default_factory=dict)  # "camera ~ other": max skew
    recorder_drops: int = 0

    def to_dict(self) -> dict:
        return {
            "passed": self.passed,
            "reasons": list(self.reasons),
            "duration_s": self.duration_s,
            "recorder_drops": self.recorder_drops,
            "skews_s": dict(self.skews_s),
            "topics": {name: asdict(t) for name, t in self.topics.items()},
        }


class _Series:
    def __init__(self, spec: TopicSpec) -> None:
        self.spec = spec
        self.stamps = array("q")  # ns: header stamp, or log time for unstamped topics
        self.log_times = array("q")  # ns
        self.seq_lost = 0
        self.last_seq: int | None = None
        self.has_seq = False


class QualityTracker:
    """Collects per-message times of the topics in `specs`; others are ignored."""

    def __init__(self, specs: Iterable[TopicSpec]) -> None:
        self._series = {s.name: _Series(s) for s in specs}
        if not self._series:
            raise ValueError("a quality tracker needs at least one topic")

    def observe(
        self,
        topic: str,
        cdr: bytes | bytearray | memoryview,
        log_time_ns: int,
        publisher_seq: int | None = None,
    ) -> None:
        """One received message. publisher_seq: the publisher's sequence number, where the
        transport exposes it (counts losses exactly instead of estimating them)."""
        s = self._series.get(topic)
        if s is None:
            return
        s.stamps.append(header_stamp_ns(cdr) if s.spec.stamped else log_time_ns)
        s.log_times.append(log_time_ns)
        if publisher_seq is not None:
            if s.last_seq is not None and publisher_seq > s.last_seq + 1:
                s.seq_lost += publisher_seq - s.last_seq - 1
            s.last_seq = publisher_seq
            s.has_seq = True

    def verdict(
        self, config: QualityConfig | None = None, recorder_drops: int = 0
    ) -> QualityVerdict:
        cfg = config or QualityConfig()
        reasons: list[str] = []
        seen = [s for s in self._series.values() if len(s.stamps)]
        for s in self._series.values():
            if not len(s.stamps):
                reasons.append(f"{s.spec.name}: no messages")
        if not seen:
            return QualityVerdict(False, tuple(reasons), 0.0, recorder_drops=recorder_drops)
        start = min(min(s.log_times) for s in seen)  # ns; messages may come out of order
        end = max(max(s.log_times) for s in seen)
        duration = (end - start) * _NS
        if duration < cfg.min_duration_s:
            reasons.append(f"episode lasts {duration:.2f} s < {cfg.min_duration_s} s")
        if recorder_drops > cfg.max_recorder_drops:
            reasons.append(
                f"recorder dropped {recorder_drops} messages (> {cfg.max_recorder_drops})"
            )

        topics: dict[str, TopicQuality] = {}
        stamps: dict[str, np.ndarray] = {}
        for s in seen:
            q, st = _topic_quality(s, cfg)
            topics[q.topic] = q
            stamps[q.topic] = st
            reasons += _topic_reasons(q, cfg, start, end)

        roles = {s.spec.name: s.spec.role for s in seen}
        skews = _skews(stamps, roles)
        for (cam, other), skew in skews.items():
            limit = (
                cfg.max_camera_camera_skew_s
                if roles[other] == "camera"
                else cfg.max_camera_joint_skew_s
            )
            if skew > limit:
                reasons.append(f"{cam} ~ {other}: max skew {skew:.3f} s > {limit} s")
        return QualityVerdict(
            passed=not reasons,
            reasons=tuple(reasons),
            duration_s=duration,
            topics=topics,
            skews_s={f"{a} ~ {b}": v for (a, b), v in skews.items()},
            recorder_drops=recorder_drops,
        )


def assess_bag(
    bag_dir: str | Path,
    specs: Sequence[TopicSpec],
    config: QualityConfig | None = None,
    recorder_drops: int = 0,
) -> QualityVerdict:
    """Runs the gate over a finished (or recovered) bag, read by the one checked bag reader:
    a bag that does not hold what its summary and metadata.yaml say (cut, torn, a chunk lost)
    fails the gate with that as its reason."""
    # imported here: the reader decodes images (OpenCV), which a recorder does not need to start
    from apprentice.dataset.bag import DatasetError, EpisodeBag

    tracker = QualityTracker(specs)
    try:
        for topic, _, message in EpisodeBag(bag_dir).messages([s.name for s in specs]):
            tracker.observe(topic, message.data, message.log_time)
    except DatasetError as e:
        return QualityVerdict(False, (f"unreadable bag: {e}",), 0.0, recorder_drops=recorder_drops)
    return tracker.verdict(config, recorder_drops)


def _topic_quality(s: _Series, cfg: QualityConfig) -> tuple[TopicQuality, np.ndarray]:
    spec = s.spec
    stamps = np.frombuffer(s.stamps, dtype=np.int64)  # (M,) ns, receive order
    future = np.zeros(len(stamps), dtype=bool)
    if spec.stamped:
        future = stamps - np.frombuffer(s.log_times, dtype=np.int64) > cfg.max_future_s * 1e9
    # (N,) ns: the sane stamps; if none is, the receive times stand in (the gate fails anyway)
    st = np.sort(stamps[~future] if not future.all() else np.frombuffer(s.log_times, np.int64))
    n = len(st)
    span_ns = int(st[-1] - st[0])
    period_ns = 1e9 / spec.nominal_hz
    dt = np.diff(st)  # (N-1,) ns
    is_gap = dt > cfg.gap_periods * period_ns
    longest = int(dt.max()) if n > 1 else 0
    at = int(st[int(dt.argmax())] - st[0]) if n > 1 else 0
    expected = round(span_ns / period_ns) + 1
    lost = s.seq_lost if s.has_seq else max(0, expected - n)
    q = TopicQuality(
        topic=spec.name,
        role=spec.role,
        count=len(stamps),
        nominal_hz=spec.nominal_hz,
        achieved_hz=(n - 1) / (span_ns * _NS) if span_ns > 0 else 0.0,
        expected=expected,
        lost=lost,
        gaps=int(is_gap.sum()),
        longest_gap_s=longest * _NS,
        longest_gap_at_s=at * _NS,
        zero_stamps=int((st == 0).sum()) if spec.stamped else 0,
        first_log_ns=min(s.log_times),
        last_log_ns=max(s.log_times),
        future_stamps=int(future.sum()),
    )
    return q, st


def _topic_reasons(q: TopicQuality, cfg: QualityConfig, start: int, end: int) -> list[str]:
    out = []
    if q.zero_stamps:
        out.append(f"{q.topic}: {q.zero_stamps} messages with a zero header stamp")
    if q.future_stamps:
        out.append(
            f"{q.topic}: {q.future_stamps} messages stamped more than {cfg.max_future_s:g} s "
            "after they were received (a sensor clock ahead of the host)"
        )
    if q.achieved_hz < cfg.min_rate_fraction * q.nominal_hz:
        out.append(
            f"{q.topic}: rate {q.achieved_hz:.1f} Hz < {cfg.min_rate_fraction:.0%} "
            f"of {q.nominal_hz:g} Hz"
        )
    if q.longest_gap_s > cfg.max_gap_s:
        out.append(
            f"{q.topic}: gap of {q.longest_gap_s:.2f} s (> {cfg.max_gap_s} s) "
            f"{q.longest_gap_at_s:.2f} s into the stream; {q.gaps} gaps in all"
        )
    if q.expected and q.lost / q.expected > cfg.max_lost_fraction:
        out.append(
            f"{q.topic}: {q.lost} of {q.expected} messages lost "
            f"({q.lost / q.expected:.1%} > {cfg.max_lost_fraction:.1%})"
        )
    late = (q.first_log_ns - start) * _NS
    early = (end - q.last_log_ns) * _NS
    if late > cfg.max_edge_s:
        out.append(f"{q.topic}: starts {late:.2f} s after the episode")
    if early > cfg.max_edge_s:
        out.append(f"{q.topic}: ends {early:.2f} s before the episode")
    return out


def _skews(stamps: dict[str, np.ndarray], roles: dict[str, Role]) -> dict[tuple[str, str], float]:
    """For each camera and each other camera or joint stream: the largest distance (s) from a
    camera frame's stamp to the nearest stamp of the other stream, over the time both streams
    run (a stream starting late is the edge check's business, not a skew) — unless most frames
    lie outside the other stream's span: then the clocks disagree and every frame counts."""
    out: dict[tuple[str, str], float] = {}
    cameras = [t for t, r in roles.items() if r == "camera"]
    others = [t for t, r in roles.items() if r in ("camera", "joint")]
    for cam in cameras:
        c = stamps[cam]  # (N,) ns, sorted
        for other in others:
            if other == cam:
                continue
            o = stamps[other]  # (M,) ns, sorted
            c = stamps[cam]
            inside = c[(c >= o[0]) & (c <= o[-1])]
            if len(inside) * 2 >= len(c):
                c = inside
            i = np.clip(np.searchsorted(o, c), 1, len(o) - 1) if len(o) > 1 else np.zeros_like(c)
            nearest = np.minimum(np.abs(c - o[i]), np.abs(c - o[np.maximum(i - 1, 0)]))
            out[(cam, other)] = float(nearest.max()) * _NS
    return out
