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

from apprentice.dataset import EpisodeBag
from apprentice.recording import (
    DatasetIndex,
    EpisodeWriter,
    TopicSpec,
    WriterConfig,
    header_stamp_ns,
    needs_recovery,
    recover,
)
from apprentice.recording.recorder import (
    EMPTY_REASON,
    RecordedTopic,
    Recorder,
    recover_dataset,
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


# --- apprentice recover: a dataset's unfinished episodes, whatever a crash left of them ---


def _recorded_bag(root: Path, n: int, config: WriterConfig | None = None) -> Path:
    """A closed episode written by a real Recorder (its custom_data carries the gate's topic
    specs) with n joint states at 100 Hz and a camera at 20 Hz."""
    rec = Recorder(
        root,
        [
            RecordedTopic(TopicSpec(JOINTS[0], 100.0, "joint"), "sensor_msgs/msg/JointState"),
            RecordedTopic(TopicSpec(CAMERAS[0], 20.0, "camera"), "sensor_msgs/msg/Image"),
        ],
        writer=config,
    )
    episode = rec.start("fold towel")
    rng = np.random.default_rng(n)
    t0 = time.time_ns()
    for k in range(n):
        t = t0 + k * 10_000_000
        rec.on_message(JOINTS[0], joint_state(t, rng.normal(size=6)), t)
        if k % 5 == 0:
            pixels = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
            rec.on_message(CAMERAS[0], image(t, pixels), t)
    rec.stop()
    return root / episode


def _layout_ends(mcap: Path) -> list[tuple[str, int]]:
    """(record type, offset of its end) for the records of the file's data section."""
    from mcap.stream_reader import StreamReader

    with open(mcap, "rb") as f:
        return [(type(r).__name__, f.tell()) for r in StreamReader(f, emit_chunks=True).records]


@pytest.mark.parametrize("cut", [0, 1, 100, 300])
def test_recover_a_partial_file_shorter_than_its_first_message(tmp_path: Path, cut: int) -> None:
    """What a recorder killed within its first milliseconds leaves: nothing, part of the magic,
    the header and part of the episode's metadata record, the metadata record but no schema."""
    src = _recorded_bag(tmp_path / "src", 50)
    ends = dict(reversed(_layout_ends(src / f"{src.name}_0.mcap")))  # first end per type
    assert ends["Header"] < 100 < ends["Metadata"] < 300 < ends["Schema"]
    root = tmp_path / "dataset"
    _recorded_bag(root, 50)  # episode_0000: finished and listed, left alone
    bag = _crashed_copy(src, root / "episode_0001", cut)

    lines: list[str] = []
    assert recover_dataset(root, out=lines.append) == 0
    assert lines[0] == f"recovering episode_0001 (episode_0001_0.mcap, {cut} B)...", lines
    assert lines[1].startswith("recovered episode_0001: 0.0 s, 0 messages"), lines
    assert lines[1].endswith(f"FLAGGED: {EMPTY_REASON}"), lines
    assert len(lines) == 2

    entry = DatasetIndex(root).get("episode_0001")
    assert not entry.passed and entry.reasons == (EMPTY_REASON,) and entry.recovered
    assert entry.task == ("fold towel" if cut >= ends["Metadata"] else "")
    assert (bag / "metadata.yaml").exists() and not needs_recovery(bag)
    assert (bag / "episode_0001_0.mcap.partial").stat().st_size == cut  # kept as it was
    with Reader(bag) as reader:  # a valid, empty bag
        assert reader.message_count == 0
    lines.clear()
    assert recover_dataset(root, out=lines.append) == 0
    assert lines == [f"{root}: nothing to recover"]
    assert [e.episode_id for e in DatasetIndex(root).list()] == ["episode_0000", "episode_0001"]


def test_recover_two_crashed_episodes_past_a_damaged_one(tmp_path: Path) -> None:
    """Each unfinished episode is named and recovered; one that cannot be is reported with its
    file and the next one still recovered; the exit code says that one failed."""
    config = WriterConfig(chunk_bytes=3000)  # many chunks
    src = _recorded_bag(tmp_path / "src", 300, config)
    layout = _chunk_layout(src / f"{src.name}_0.mcap")
    assert len(layout) >= 6
    root = tmp_path / "dataset"
    _recorded_bag(root, 150)  # episode_0000, finished
    cuts = {"episode_0001": layout[2][0] + 50, "episode_0003": layout[4][1]}
    for name, cut in cuts.items():
        _crashed_copy(src, root / name, cut)
    bad = root / "episode_0002"  # an MCAP that is not a ROS 2 bag: recover refuses it
    bad.mkdir()
    data = (src / f"{src.name}_0.mcap").read_bytes()
    (bad / "episode_0002_0.mcap").write_bytes(data.replace(b"ros2", b"json", 1)[:5000])

    lines: list[str] = []
    assert recover_dataset(root, out=lines.append) == 1
    text = "\n".join(lines)
    assert lines[0].startswith("recovering episode_0001 (episode_0001_0.mcap, "), text
    assert lines[1].startswith("recovered episode_0001: "), text
    assert lines[2] == "recovering episode_0002 (episode_0002_0.mcap, 5.0 kB)...", text
    assert lines[3].startswith("FAILED episode_0002: ") and "not a ROS 2 MCAP" in lines[3], text
    assert str(bad / "episode_0002_0.mcap") in lines[3], text
    assert lines[4].startswith("recovering episode_0003 "), text
    assert lines[5].startswith("recovered episode_0003: "), text
    assert lines[6] == "1 of 3 episode(s) not recovered: episode_0002", text

    index = {e.episode_id: e for e in DatasetIndex(root).list()}
    assert sorted(index) == ["episode_0000", "episode_0001", "episode_0003"]
    want = {"episode_0001": sum(c[3] for c in layout[:2]), "episode_0003": sum(
        c[3] for c in layout[:5])}  # fmt: skip
    for name, messages in want.items():
        assert index[name].recovered and sum(index[name].topic_counts.values()) == messages
        assert index[name].task == "fold towel"
        assert not needs_recovery(root / name)
        with Reader(root / name) as reader:
            assert reader.message_count == messages
        assert EpisodeBag(root / name).counts[JOINTS[0]] > 0  # the dataset builder's reader
    # The damaged one is offered again (and fails again) until someone deals with it.
    lines.clear()
    assert recover_dataset(root, out=lines.append) == 1
    assert [ln.split(" (")[0] for ln in lines[:1]] == ["recovering episode_0002"], lines
    shutil.rmtree(bad)
    lines.clear()
    assert recover_dataset(root, out=lines.append) == 0
    assert lines == [f"{root}: nothing to recover"]


def test_recover_lists_an_episode_recovered_but_never_listed(tmp_path: Path) -> None:
    """A recovery that died after rewriting the bag, before the index: the next run lists it.
    So does a recorder that died between closing an episode and listing it."""
    src = _recorded_bag(tmp_path / "src", 200)
    root = tmp_path / "dataset"
    half = (src / "episode_0000_0.mcap").stat().st_size // 2
    crashed = _crashed_copy(src, root / "episode_0000", half)
    recover(crashed)  # metadata.yaml written, index not
    shutil.copytree(src, root / "episode_0001")  # closed, never listed
    lines: list[str] = []
    assert recover_dataset(root, out=lines.append) == 0
    assert lines[1].startswith("listed episode_0000: "), lines
    assert lines[3].startswith("listed episode_0001: 2.0 s, 240 messages; "), lines
    index = {e.episode_id: e for e in DatasetIndex(root).list()}
    assert index["episode_0000"].recovered and not index["episode_0001"].recovered
    assert recover_dataset(root, out=lines.append) == 0
    assert lines[-1] == f"{root}: nothing to recover"
