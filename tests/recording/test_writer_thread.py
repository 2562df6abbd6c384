"""Chunks are compressed and written on the bag's writer thread: adaptive zstd, failures that
reach the caller, and the recorder counting what it could not write."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
from cdr_samples import CAMERAS, JOINTS, image, joint_state
from mcap.reader import make_reader

from apprentice.recording import EpisodeWriter, WriterConfig, mcap_file

T0 = 1_763_900_000_000_000_000  # ns since epoch
HERE = Path(__file__).parent


def _record(bag: Path, frames: list[np.ndarray]) -> list[bytes]:
    """One camera frame (640x480 rgb8, ~0.9 MiB) per 1 MiB chunk, joint states between."""
    cfg = WriterConfig(chunk_bytes=1 << 20)
    sent = []
    with EpisodeWriter(bag, task="t", config=cfg) as w:
        w.add_topic(CAMERAS[0], "sensor_msgs/msg/Image")
        w.add_topic(JOINTS[0], "sensor_msgs/msg/JointState")
        for k, pixels in enumerate(frames):
            stamp = T0 + k * 33_333_333
            for data, topic in (
                (joint_state(stamp, np.full(6, k / 10)), JOINTS[0]),
                (image(stamp, pixels), CAMERAS[0]),
            ):
                w.write(topic, data, stamp)
                sent.append(data)
    return sent


def _chunks_and_messages(bag: Path) -> tuple[list[str], list[bytes]]:
    with open(bag / f"{bag.name}_0.mcap", "rb") as f:
        reader = make_reader(f)
        compression = [c.compression for c in reader.get_summary().chunk_indexes]
        data = [m.data for _, _, m in reader.iter_messages(log_time_order=False)]
    return compression, data


def test_zstd_turns_off_for_noisy_frames_and_stays_on_for_smooth_ones(
    tmp_path: Path, monkeypatch
) -> None:
    # a 1 MiB page-cache window: the early chunks are dropped from the cache (and must still
    # read back) within these 15 MB bags
    monkeypatch.setattr(mcap_file, "CACHE_WINDOW", 1 << 20)
    rng = np.random.default_rng(3)
    noisy = [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(16)]
    yy, xx = np.mgrid[0:480, 0:640]
    smooth = [
        np.stack([xx % 256, yy % 256, np.full_like(xx, 8 * k)], axis=-1).astype(np.uint8)
        for k in range(16)
    ]
    sent_noisy = _record(tmp_path / "noisy", noisy)
    sent_smooth = _record(tmp_path / "smooth", smooth)

    compression, got = _chunks_and_messages(tmp_path / "noisy")
    assert got == sent_noisy  # byte-identical, whichever way each chunk was stored
    # probed first (8 MiB of chunks compressed, ratio ~1.0), then stored as is
    assert compression[0] == "zstd" and compression[-1] == ""
    assert compression.count("zstd") <= 10, compression

    compression, got = _chunks_and_messages(tmp_path / "smooth")
    assert got == sent_smooth
    assert set(compression) == {"zstd"}
    smooth_size = (tmp_path / "smooth" / "smooth_0.mcap").stat().st_size
    assert smooth_size < 0.5 * 16 * 640 * 480 * 3  # compression paid off, so it stayed


_FULL_DISK = """
import json, resource, signal, sys, time
from pathlib import Path
import numpy as np
from cdr_samples import CAMERAS, image
from apprentice.recording import TopicSpec, WriterConfig
from apprentice.recording.recorder import RecordedTopic, Recorder

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
rec = Recorder(
    Path(sys.argv[1]),
    [RecordedTopic(TopicSpec(CAMERAS[0], 30.0, "camera", True), "sensor_msgs/msg/Image")],
    writer=WriterConfig(chunk_bytes=1 << 18),
)
rec.start("t")
resource.setrlimit(resource.RLIMIT_FSIZE, (2_000_000, 2_000_000))  # a disk that fills up
frame = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
t0 = time.time_ns() + 10**9  # stamps after the episode's start
for k in range(60):  # 60 x 230 kB: far past the 2 MB the file may take
    rec.on_message(CAMERAS[0], image(t0 + k * 33_333_333, frame), t0 + k)
try:
    rec.stop()
    error = ""
except RuntimeError as exc:
    error = str(exc)
print(json.dumps({"dropped": rec.dropped, "error": error, "recording": rec.recording}))
"""


def test_a_failing_disk_is_counted_not_silently_skipped(tmp_path: Path) -> None:
    """The writer thread's error (EFBIG here, as ENOSPC on a full disk) reaches the caller:
    every later message counts as dropped by the recorder, and stop() reports the failure."""
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_FULL_DISK), str(tmp_path / "ds")],
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": f"{HERE}:{HERE.parent.parent}", "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert 0 < result["dropped"] < 60
    assert "writer thread failed" in result["error"]
    assert not result["recording"]
