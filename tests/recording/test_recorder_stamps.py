"""The recorder core and stamps: a message stamped ahead of its receive time is written (the bag
holds what was on the wire), counted, reported and flags the episode; the "sensed before the
episode's start" rule still leaves out only the episode's past."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from cdr_samples import CAMERAS, image

from apprentice.recording import TopicSpec
from apprentice.recording.recorder import RecordedTopic, Recorder

PIXELS = np.zeros((4, 4, 3), dtype=np.uint8)


def test_a_future_stamped_frame_is_kept_counted_and_flags_the_episode(tmp_path: Path) -> None:
    cam = CAMERAS[0]
    rec = Recorder(
        tmp_path / "ds",
        [RecordedTopic(TopicSpec(cam, 30.0, "camera", True), "sensor_msgs/msg/Image")],
    )
    rec.start("t")
    t0 = time.time_ns()
    rec.on_message(cam, image(t0 - 10**9, PIXELS), t0)  # queued from before the start
    for k in range(60):  # 2 s at 30 Hz, received 2 ms after stamping
        stamp = t0 + 10**7 + k * 33_333_333
        bad = k == 30
        rec.on_message(cam, image(stamp + 30 * 10**9 if bad else stamp, PIXELS), stamp + 2 * 10**6)
    status = rec.status()
    assert status["future_stamps"] == {cam: 1} and status["before_start"] == 1
    line = rec.stamp_report(100.0)
    assert line is not None and f"{cam} 1" in line and "kept, the episode is flagged" in line
    assert rec.stamp_report(101.0) is None  # nothing new
    entry, verdict = rec.stop()
    assert entry.topic_counts == {cam: 60}  # written, not dropped; the past one left out
    assert verdict.topics[cam].future_stamps == 1 and verdict.topics[cam].gaps == 0
    assert verdict.reasons == (
        f"{cam}: 1 messages stamped more than 0.5 s after they were received "
        "(a sensor clock ahead of the host)",
    )
