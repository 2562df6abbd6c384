"""Quality gate: header stamps from real CDR, gaps, loss, skew, and the verdict's reasons."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cdr_samples import CAMERAS, JOINTS, T, cdr, float_array, header, image, joint_state

from apprentice.recording import (
    EpisodeWriter,
    QualityConfig,
    QualityTracker,
    TopicSpec,
    assess_bag,
    header_stamp_ns,
)

T0 = 1_763_900_000_000_000_000  # ns
SPECS = [TopicSpec(t, 30.0, "camera") for t in CAMERAS[:2]] + [
    TopicSpec(t, 200.0, "joint") for t in JOINTS
]
PIXELS = np.zeros((4, 4, 3), dtype=np.uint8)  # the gate reads only the header


def _stream(
    seconds: float = 3.0,
    pause: tuple[str, float, float] | None = None,
    drop_every: dict[str, int] | None = None,
    stamp_offset_ns: dict[str, int] | None = None,
    rng: np.random.Generator | None = None,
) -> list[tuple[str, bytes, int]]:
    """(topic, cdr, log time) in receive order; cameras start at 5 and 11 ms (unsynchronised),
    receive times lag stamps by 1..15 ms of jitter. pause = (topic, from s, to s): nothing
    published in between."""
    rng = rng or np.random.default_rng(0)
    out = []
    for spec in SPECS:
        period = 1e9 / spec.nominal_hz
        start = {CAMERAS[0]: 5e6, CAMERAS[1]: 11e6}.get(spec.name, 0)
        for k in range(int(seconds * spec.nominal_hz)):
            stamp = int(T0 + start + k * period)
            if pause and pause[0] == spec.name and pause[1] <= (stamp - T0) * 1e-9 < pause[2]:
                continue
            if drop_every and spec.name in drop_every and k % drop_every[spec.name] == 7:
                continue
            stamp_out = stamp + (stamp_offset_ns or {}).get(spec.name, 0)
            data = (
                image(stamp_out, PIXELS)
                if spec.role == "camera"
                else joint_state(stamp_out, np.zeros(6))
            )
            out.append((spec.name, data, stamp + int(rng.integers(1_000_000, 15_000_000))))
    out.sort(key=lambda m: m[2])
    return out


def _track(msgs, specs=SPECS) -> QualityTracker:
    tracker = QualityTracker(specs)
    for topic, data, log in msgs:
        tracker.observe(topic, data, log)
    return tracker


def test_a_clean_episode_passes() -> None:
    v = _track(_stream()).verdict()
    assert v.passed, v.reasons
    assert v.reasons == ()
    for spec in SPECS:
        q = v.topics[spec.name]
        assert q.achieved_hz == pytest.approx(spec.nominal_hz, rel=1e-3)
        assert q.gaps == 0 and q.lost == 0
    # joints at 200 Hz: every camera frame has a joint stamp within 2.5 ms
    assert max(s for k, s in v.skews_s.items() if "joint" in k) <= 0.0025 + 1e-9
    # the two cameras are 6 ms apart
    assert v.skews_s[f"{CAMERAS[0]} ~ {CAMERAS[1]}"] == pytest.approx(0.006, abs=1e-6)


def test_a_camera_paused_for_one_second_fails() -> None:
    v = _track(_stream(pause=(CAMERAS[1], 1.0, 2.0))).verdict()
    assert not v.passed
    q = v.topics[CAMERAS[1]]
    assert q.gaps == 1
    assert q.longest_gap_s == pytest.approx(1.0 + 1 / 30, abs=1e-3)
    assert q.longest_gap_at_s == pytest.approx(29 / 30, abs=2e-3)
    assert q.lost == 30  # expected at 30 Hz over the span minus received
    text = "\n".join(v.reasons)
    assert f"{CAMERAS[1]}: gap of 1.03 s" in text
    assert f"{CAMERAS[1]}: 30 of 90 messages lost" in text
    assert f"{CAMERAS[0]} ~ {CAMERAS[1]}: max skew" in text  # frames of cam 0 lack a partner
    assert not any(r.startswith(CAMERAS[0] + ":") or r.startswith(JOINTS[0]) for r in v.reasons)


def test_header_stamps_are_used_not_receive_times() -> None:
    """Receive times bunched up (a stalled executor) while stamps are regular: passes. Stamps
    in another clock (a camera's boot time), receive times fine: fails on skew."""
    msgs = _stream()
    bunched = [(t, d, (log // 200_000_000) * 200_000_000) for t, d, log in msgs]  # 5 Hz bursts
    assert _track(bunched).verdict().passed

    offset = _stream(stamp_offset_ns={CAMERAS[0]: -3_000_000_000})
    v = _track(offset).verdict()
    assert not v.passed
    assert v.skews_s[f"{CAMERAS[0]} ~ {JOINTS[0]}"] > 1.0
    assert any(f"{CAMERAS[0]} ~ {JOINTS[0]}: max skew" in r for r in v.reasons)


def test_transport_loss_estimated_and_counted_from_sequence_numbers() -> None:
    msgs = _stream(drop_every={JOINTS[1]: 10})  # 10 % of one joint stream lost
    v = _track(msgs).verdict()
    assert v.topics[JOINTS[1]].lost == 60
    assert any(r.startswith(f"{JOINTS[1]}: 60 of 600 messages lost") for r in v.reasons)

    tracker = QualityTracker([TopicSpec(JOINTS[0], 200.0, "joint")])
    seqs = [s for s in range(700) if s not in (100, 101, 102, 400)]
    for seq in seqs:  # received 1 ms after stamping
        stamp = T0 + seq * 5_000_000
        tracker.observe(JOINTS[0], joint_state(stamp, np.zeros(6)), stamp + 1_000_000, seq)
    q = tracker.verdict().topics[JOINTS[0]]
    assert q.lost == 4 and q.gaps == 1  # 3 in a row make a gap (> 2 periods), 1 does not


def test_recorder_drops_short_episode_missing_and_late_streams_fail() -> None:
    msgs = _stream()
    v = _track(msgs).verdict(recorder_drops=3)
    assert v.reasons == ("recorder dropped 3 messages (> 0)",)
    assert _track(msgs).verdict(QualityConfig(max_recorder_drops=5), recorder_drops=3).passed

    short = _stream(seconds=0.5)
    assert "episode lasts" in _track(short).verdict().reasons[0]

    no_joint1 = [m for m in msgs if m[0] != JOINTS[1]]
    assert f"{JOINTS[1]}: no messages" in _track(no_joint1).verdict().reasons

    late = [m for m in msgs if not (m[0] == JOINTS[0] and m[2] < T0 + 1_000_000_000)]
    reasons = _track(late).verdict().reasons
    starts = [r for r in reasons if r.startswith(f"{JOINTS[0]}: starts ")]
    assert len(starts) == 1, reasons
    assert float(starts[0].split()[2]) == pytest.approx(1.0, abs=0.03)


def test_unstamped_topics_use_the_log_time() -> None:
    spec = TopicSpec("/policy/action", 50.0, "other", stamped=False)
    tracker = QualityTracker([spec])
    for k in range(100):
        tracker.observe(spec.name, float_array(np.zeros(3)), T0 + k * 20_000_000)
    q = tracker.verdict().topics[spec.name]
    assert q.achieved_hz == pytest.approx(50.0) and q.zero_stamps == 0


def test_zero_header_stamps_are_reported() -> None:
    tracker = QualityTracker([TopicSpec(JOINTS[0], 200.0, "joint")])
    for k in range(400):
        tracker.observe(JOINTS[0], joint_state(0, np.zeros(6)), T0 + k * 5_000_000)
    v = tracker.verdict()
    assert f"{JOINTS[0]}: 400 messages with a zero header stamp" in v.reasons


def test_stamps_ahead_of_their_receive_time_are_counted_and_left_out_of_the_timing() -> None:
    """One frame stamped +30 s: reported as such, not as a 30 s gap or a lost rate; the bunched
    receive times of a stalled executor (stamps up to 0.2 s ahead of them) still pass."""
    msgs = _stream()
    k = next(i for i, m in enumerate(msgs) if m[0] == CAMERAS[0] and m[2] > T0 + 1_500_000_000)
    topic, _, log = msgs[k]
    msgs[k] = (topic, image(log + 30_000_000_000, PIXELS), log)
    v = _track(msgs).verdict()
    q = v.topics[CAMERAS[0]]
    assert q.future_stamps == 1 and q.count == 90 and q.gaps == 0
    assert v.reasons == (
        f"{CAMERAS[0]}: 1 messages stamped more than 0.5 s after they were received "
        "(a sensor clock ahead of the host)",
    )
    assert v.skews_s[f"{CAMERAS[0]} ~ {JOINTS[0]}"] < 0.01
    bunched = [(t, d, (log // 200_000_000) * 200_000_000) for t, d, log in _stream()]
    assert all(q.future_stamps == 0 for q in _track(bunched).verdict().topics.values())
    assert _track(msgs).verdict(QualityConfig(max_future_s=40.0)).topics[CAMERAS[0]].gaps == 1


def test_header_stamp_of_both_cdr_byte_orders() -> None:
    stamp = 1_763_900_123_456_789_012
    for little in (True, False):
        msg = T["sensor_msgs/msg/CompressedImage"](
            header=header(stamp), format="jpeg", data=np.zeros(3, dtype=np.uint8)
        )
        assert header_stamp_ns(cdr(msg, "sensor_msgs/msg/CompressedImage", little)) == stamp
    with pytest.raises(ValueError, match="too short"):
        header_stamp_ns(b"\x00\x01\x00\x00\x01")


def test_assess_bag_matches_the_online_tracker(tmp_path: Path) -> None:
    msgs = _stream(pause=(CAMERAS[0], 2.0, 2.5))
    with EpisodeWriter(tmp_path / "ep", task="t") as w:
        for spec in SPECS:
            w.add_topic(
                spec.name,
                "sensor_msgs/msg/Image" if spec.role == "camera" else "sensor_msgs/msg/JointState",
            )
        for topic, data, log in msgs:
            w.write(topic, data, log)
    online = _track(msgs).verdict()
    offline = assess_bag(tmp_path / "ep", SPECS)
    assert not offline.passed
    assert offline.to_dict() == online.to_dict()


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        QualityConfig(max_gap_s=-1)
    with pytest.raises(ValueError):
        QualityConfig(min_rate_fraction=1.5)
    with pytest.raises(ValueError):
        TopicSpec("/x", 0.0)
    with pytest.raises(ValueError):
        TopicSpec("/x", 10.0, "lidar")  # type: ignore[arg-type]


def test_skew_counts_only_the_time_both_streams_run() -> None:
    """A joint stream starting 0.3 s late (a leader arm joining) is no camera skew."""
    late = [
        (t, d, log) for t, d, log in _stream() if not (t == JOINTS[0] and log < T0 + 300_000_000)
    ]
    v = _track(late).verdict()
    assert v.skews_s[f"{CAMERAS[0]} ~ {JOINTS[0]}"] < 0.01
    assert not any("skew" in r for r in v.reasons)
