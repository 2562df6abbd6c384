"""recover(): a writer killed mid-episode, and files cut or corrupted at chosen bytes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from cdr_samples import CAMERAS, JOINTS, TS, image, joint_state, tree_sha256
from mcap.exceptions import McapError
from mcap.reader import make_reader
from rosbags.rosbag2 import Reader

from apprentice.recording import (
    EpisodeWriter,
    WriterConfig,
    header_stamp_ns,
    needs_recovery,
    recover,
)

HERE = Path(__file__).parent
T0 = 1_763_900_000_000_000_000


def _small_episode(bag: Path, n: int, clock=None, config: WriterConfig | None = None) -> None:
    rng = np.random.default_rng(len(bag.name) + n)
    kwargs = {"monotonic": clock} if clock else {}
    with EpisodeWriter(bag, task="wipe table", config=config, **kwargs) as w:
        w.add_topic(JOINTS[0], "sensor_msgs/msg/JointState")
        w.add_topic(CAMERAS[0], "sensor_msgs/msg/Image")
        for k in range(n):
            if clock:
                clock.t = k * 0.01
            w.write(JOINTS[0], joint_state(T0 + k * 5_000_000, rng.normal(size=6)), T0 + k)
            if k % 5 == 0:
                pixels = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
                w.write(CAMERAS[0], image(T0 + k * 5_000_000, pixels), T0 + k)


def test_kill_9_mid_episode_then_recover(tmp_path: Path) -> None:
    root = tmp_path / "dataset"
    for name in ("episode_0000", "episode_0001"):
        _small_episode(root / name, 200)
    before = {name: tree_sha256(root / name) for name in ("episode_0000", "episode_0001")}

    bag = root / "episode_0002"
    child = subprocess.Popen(
        [sys.executable, str(HERE / "writer_process.py"), str(bag), "30"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        ready = child.stdout.readline()
        assert ready.startswith("ready "), ready
        time.sleep(2.5)  # s of recording at real rates
    finally:
        os.kill(child.pid, signal.SIGKILL)
        out, _ = child.communicate(timeout=10)
    assert child.returncode == -signal.SIGKILL
    progress = [tuple(map(int, line.split())) for line in out.splitlines()]  # (log_ns, written)
    assert progress and "not killed" not in out
    last_log, last_written = progress[-1]

    assert not (bag / "metadata.yaml").exists()
    assert needs_recovery(bag)
    with pytest.raises(FileNotFoundError):  # rosbags: no metadata.yaml
        Reader(bag)
    with open(bag / "episode_0002_0.mcap", "rb") as f, pytest.raises(McapError):
        make_reader(f).get_summary()  # mcap's indexed reader: no footer

    report = recover(bag)
    assert report.partial_path == bag / "episode_0002_0.mcap.partial"
    assert report.partial_path.exists()
    assert not needs_recovery(bag)
    # Everything accepted up to 1 s before the last progress line is back; nothing is invented
    # (the writer may have accepted one more camera tick after its last line: 5 messages).
    floor = max((n for log, n in progress if log <= last_log - 1_000_000_000), default=0)
    assert floor <= report.messages <= last_written + 5
    assert report.messages >= 0.5 * last_written  # 2.5 s recorded, at most ~1 s lost
    assert report.bytes_dropped >= 0 and report.stop_reason != "footer"
    print(
        f"\nkilled after {last_written} messages ({(last_log - progress[0][0]) * 1e-9:.2f} s);"
        f" recovered {report.messages} in {report.chunks} chunks,"
        f" lost {last_written - report.messages}"
        f" ({report.bytes_dropped / 1e6:.1f} MB torn tail: {report.stop_reason})"
    )

    with Reader(bag) as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
        assert sum(counts.values()) == report.messages == reader.message_count
        stamps: dict[str, list[int]] = {t: [] for t in counts}
        for conn, _, raw in reader.messages():
            stamps[conn.topic].append(header_stamp_ns(raw))
        last = TS.deserialize_cdr(raw, conn.msgtype)
        assert last.header.frame_id in ("base", "camera")
    # no holes: per stream, stamps are t0 + k * period for k = 0..n-1
    for topic, st in stamps.items():
        period = 33_333_333 if topic in CAMERAS else 5_000_000
        k = (np.array(sorted(st)) - st[0]) // period
        assert np.array_equal(k, np.arange(len(st))), topic
        assert len(st) > 0
    meta = yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert meta["custom_data"]["task"] == "stack blocks"
    assert meta["custom_data"]["recovered_from"] == "episode_0002_0.mcap.partial"
    assert meta["message_count"] == report.messages
    with open(report.summary.mcap_path, "rb") as f:
        assert make_reader(f).get_summary().statistics.message_count == report.messages

    after = {name: tree_sha256(root / name) for name in ("episode_0000", "episode_0001")}
    assert after == before
    assert not needs_recovery(root / "episode_0000")


def _chunk_layout(mcap: Path) -> list[tuple[int, int, int, int]]:
    """(chunk start, chunk end, end of its message indexes, messages) per chunk."""
    with open(mcap, "rb") as f:
        summary = make_reader(f).get_summary()
    out = []
    for ci in sorted(summary.chunk_indexes, key=lambda c: c.chunk_start_offset):
        end = ci.chunk_start_offset + ci.chunk_length
        with open(mcap, "rb") as f:
            reader = make_reader(f)
            n = sum(
                1
                for _, _, m in reader.iter_messages(log_time_order=False)
                if ci.message_start_time <= m.log_time <= ci.message_end_time
            )
        out.append((ci.chunk_start_offset, end, end + ci.message_index_length, n))
    return out


@pytest.fixture
def closed_bag(tmp_path: Path, clock) -> Path:
    bag = tmp_path / "src" / "episode_0000"
    # small chunks by size, and a clock advancing 10 ms a message: many chunks
    _small_episode(bag, 300, clock, WriterConfig(chunk_bytes=3000, max_chunk_age_s=0.3))
    return bag


def _crashed_copy(src: Path, dst: Path, cut: int, flip: int | None = None) -> Path:
    """What a crash leaves: the first `cut` bytes of the MCAP, no metadata.yaml."""
    dst.mkdir(parents=True)
    data = bytearray((src / f"{src.name}_0.mcap").read_bytes()[:cut])
    if flip is not None:
        data[flip] ^= 0xFF
    (dst / f"{dst.name}_0.mcap").write_bytes(data)
    return dst


def test_recover_keeps_exactly_the_chunks_before_the_cut(tmp_path: Path, closed_bag: Path) -> None:
    layout = _chunk_layout(closed_bag / f"{closed_bag.name}_0.mcap")
    assert len(layout) >= 6
    assert sum(c[3] for c in layout) == 360  # 300 joint states + 60 images
    k = 4
    start, end, index_end, _ = layout[k]
    want = sum(c[3] for c in layout[:k])
    cases = {
        "mid_chunk": (start + (end - start) // 2, want),
        "chunk_without_its_index": (end, want + layout[k][3]),
        "mid_message_index": (end + (index_end - end) // 2, want + layout[k][3]),
        "one_byte_short": (end - 1, want),
    }
    for name, (cut, expected) in cases.items():
        bag = _crashed_copy(closed_bag, tmp_path / name / "episode_0000", cut)
        report = recover(bag)
        assert report.messages == expected, name
        assert report.bytes_read + report.bytes_dropped == cut
        with Reader(bag) as reader:
            assert reader.message_count == expected, name


def test_recover_stops_at_a_corrupt_chunk(tmp_path: Path, closed_bag: Path) -> None:
    layout = _chunk_layout(closed_bag / f"{closed_bag.name}_0.mcap")
    start, end, _, _ = layout[3]
    bag = _crashed_copy(
        closed_bag, tmp_path / "crc" / "episode_0000", layout[5][1], flip=end - 3
    )  # a byte inside chunk 3's compressed payload
    report = recover(bag)
    assert report.messages == sum(c[3] for c in layout[:3])
    assert report.bytes_read == layout[2][2]
    assert "crc" in report.stop_reason.lower() or "zstd" in report.stop_reason.lower()


def test_recover_a_complete_file_without_metadata_and_rerun(tmp_path: Path, closed_bag) -> None:
    """Killed between finishing the MCAP and writing metadata.yaml: nothing is lost. A recovery
    that is itself interrupted is redone from the .partial file."""
    bag = tmp_path / "episode_0000"
    shutil.copytree(closed_bag, bag)
    (bag / "metadata.yaml").unlink()
    report = recover(bag)
    assert report.messages == 360 and report.stop_reason == "footer"
    assert report.bytes_dropped == 0

    with pytest.raises(ValueError, match="nothing to recover"):
        recover(bag)
    # interrupted second run: output half written, no metadata.yaml, the .partial still there
    (bag / "metadata.yaml").unlink()
    mcap = bag / "episode_0000_0.mcap"
    mcap.write_bytes(mcap.read_bytes()[:1000])
    assert recover(bag).messages == 360
    assert sorted(p.name for p in bag.iterdir()) == [
        "episode_0000_0.mcap",
        "episode_0000_0.mcap.partial",
        "metadata.yaml",
    ]


def test_recover_with_no_complete_chunk_gives_an_empty_valid_bag(
    tmp_path: Path, closed_bag: Path
) -> None:
    layout = _chunk_layout(closed_bag / f"{closed_bag.name}_0.mcap")
    bag = _crashed_copy(closed_bag, tmp_path / "early" / "episode_0000", layout[0][0] + 10)
    report = recover(bag)
    assert report.messages == 0
    with Reader(bag) as reader:
        assert reader.message_count == 0
        assert {c.topic for c in reader.connections} == {JOINTS[0], CAMERAS[0]}
