"""DatasetIndex: real bags listed, discarded (deleted), and the JSON written atomically."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cdr_samples import CAMERAS, JOINTS, image, joint_state, tree_sha256

from apprentice.recording import (
    DatasetIndex,
    EpisodeEntry,
    EpisodeWriter,
    QualityTracker,
    TopicSpec,
)

T0 = 1_763_900_000_000_000_000  # ns
SPECS = [TopicSpec(JOINTS[0], 200.0, "joint"), TopicSpec(CAMERAS[0], 30.0, "camera")]


def _record(index: DatasetIndex, task: str, seconds: float, pause_camera: bool) -> EpisodeEntry:
    """Records a small real episode into the dataset and lists it, as the recorder will."""
    bag = index.root / index.next_episode_id()
    tracker = QualityTracker(SPECS)
    with EpisodeWriter(bag, task=task) as w:
        w.add_topic(JOINTS[0], "sensor_msgs/msg/JointState")
        w.add_topic(CAMERAS[0], "sensor_msgs/msg/Image")
        for k in range(int(seconds * 200)):
            stamp = T0 + k * 5_000_000
            msgs = [(JOINTS[0], joint_state(stamp, np.full(6, k * 0.01)))]
            if k % 6 == 3 and not (pause_camera and 200 <= k < 400):
                msgs.append((CAMERAS[0], image(stamp, np.zeros((8, 8, 3), np.uint8))))
            for topic, data in msgs:
                w.write(topic, data, stamp + 2_000_000)
                tracker.observe(topic, data, stamp + 2_000_000)
    entry = EpisodeEntry.from_episode(index.root, w.close(), tracker.verdict())
    index.append(entry)
    return entry


def test_append_list_discard(tmp_path: Path) -> None:
    index = DatasetIndex(tmp_path / "data")
    a = _record(index, "pick cube", 2.0, pause_camera=False)
    b = _record(index, "pick cube", 3.0, pause_camera=True)
    c = _record(index, "open drawer", 2.0, pause_camera=False)
    assert [e.episode_id for e in index.list()] == ["episode_0000", "episode_0001", "episode_0002"]
    assert a.passed and c.passed and not b.passed
    assert any("gap of" in r for r in b.reasons)
    assert a.topic_counts == {JOINTS[0]: 400, CAMERAS[0]: 67}
    assert a.duration_s == pytest.approx(399 * 0.005)
    assert a.start_time_ns == T0 + 2_000_000
    assert a.start_time_iso.startswith("2025-11-23T")
    assert a.bag == "episode_0000" and a.task == "pick cube" and not a.recovered

    doc = json.loads((index.root / "index.json").read_text())
    assert doc["format"] == "apprentice-dataset-index" and len(doc["episodes"]) == 3
    assert index.get("episode_0001") == b  # survives the JSON round trip, tuples included

    keep_a, keep_c = tree_sha256(index.root / a.bag), tree_sha256(index.root / c.bag)
    gone = index.discard("episode_0001", note="camera froze")
    assert gone.status == "discarded" and gone.note == "camera froze"
    assert not (index.root / "episode_0001").exists()
    assert [e.episode_id for e in index.list()] == ["episode_0000", "episode_0002"]
    assert len(index.list(include_discarded=True)) == 3
    assert tree_sha256(index.root / a.bag) == keep_a
    assert tree_sha256(index.root / c.bag) == keep_c
    assert index.discard("episode_0001").status == "discarded"  # idempotent
    # a discarded id is not reused
    assert index.next_episode_id() == "episode_0003"
    leftovers = [p.name for p in index.root.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_refuses_duplicates_unknown_ids_and_bags_outside(tmp_path: Path) -> None:
    index = DatasetIndex(tmp_path / "data")
    entry = _record(index, "t", 1.5, pause_camera=False)
    with pytest.raises(ValueError, match="already"):
        index.append(entry)
    with pytest.raises(KeyError):
        index.discard("episode_0042")
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "keep.txt").write_text("x")
    rogue = EpisodeEntry(
        episode_id="rogue",
        task="t",
        start_time_ns=T0,
        duration_s=1.0,
        topic_counts={},
        passed=True,
        reasons=(),
        bag="../precious",
    )
    with pytest.raises(ValueError, match="not inside"):
        index.append(rogue)
    assert (outside / "keep.txt").exists()
    (index.root / "index.json").write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match="apprentice-dataset-index"):
        index.list()


_APPEND = """
import sys
from apprentice.recording import DatasetIndex, EpisodeEntry
index = DatasetIndex(sys.argv[1])
for k in range(25):
    index.append(EpisodeEntry(
        episode_id=f"{sys.argv[2]}_{k}", task="t", start_time_ns=k, duration_s=1.0,
        topic_counts={"/a": k}, passed=True, reasons=(), bag=f"{sys.argv[2]}_{k}",
    ))
"""


def test_two_processes_appending_lose_nothing(tmp_path: Path) -> None:
    root = tmp_path / "data"
    procs = [subprocess.Popen([sys.executable, "-c", _APPEND, str(root), name]) for name in "ab"]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    ids = {e.episode_id for e in DatasetIndex(root).list()}
    assert ids == {f"{n}_{k}" for n in "ab" for k in range(25)}
