"""UVC backend, fed by an MJPG .avi written here: the same capture thread, stamps and drop
accounting as with /dev/videoN (no camera on this machine; V4L2 paths are listed as undone).

Every file frame is a flat gray level (8 × its index), so a delivered image tells which file
frame it was even after JPEG.
"""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest

from apprentice.cameras import open_camera
from apprentice.cameras.uvc import UvcCamera, UvcConfig, v4l2_host_stamp
from apprentice.robot_io import Camera, CameraSpec

W, H, N_FRAMES = 320, 240, 30


def write_mjpg(path, n: int = N_FRAMES, width: int = W, height: int = H) -> None:
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (width, height))
    assert out.isOpened()
    for i in range(n):
        out.write(np.full((height, width, 3), 8 * i, np.uint8))
    out.release()


def file_index(image: np.ndarray) -> int:
    return int(round(float(image.mean()) / 8))


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    path = tmp_path_factory.mktemp("uvc") / "gray.avi"
    write_mjpg(path)
    return path


def test_rate_stamps_and_order_match_a_30fps_camera(video) -> None:
    cam = UvcCamera(UvcConfig(str(video), "top", W, H, 30.0))
    try:
        assert isinstance(cam, Camera) and cam.negotiated_fourcc == "MJPG"
        frames, returned = [], []
        for _ in range(45):  # 1.5 s, across the loop back to the file start
            frames.append(cam.read(timeout=1.0))
            returned.append(time.time())
    finally:
        cam.close()
    assert cam.stamp_source == "grab"
    stamps = np.array([f.stamp for f in frames])
    period = np.diff(stamps)
    assert np.all(period > 0)
    assert abs(period.mean() - 1 / 30) < 0.1 / 30, period.mean()
    # A grab stamp is one period before the grab returned, so before the reader got it.
    assert np.all(stamps < np.array(returned))
    assert np.all(np.array(returned) - stamps < 0.2)
    seqs = [f.seq for f in frames]
    assert all(b > a for a, b in zip(seqs, seqs[1:], strict=False))
    # The file plays in order and loops: each image is the file frame its seq says.
    assert [file_index(f.image) for f in frames] == [(s - 1) % N_FRAMES for s in seqs]
    assert frames[0].image.shape == (H, W, 3) and frames[0].image.dtype == np.uint8


def test_slow_reader_gets_the_newest_frame_and_drops_are_counted(video) -> None:
    cam = UvcCamera(UvcConfig(str(video), "top", W, H, 30.0))
    try:
        first = cam.read()
        before = cam.dropped
        time.sleep(0.3)  # ~9 frames come and go meanwhile
        late = cam.read(timeout=0.01)  # already there: no wait for a future frame
        after_late = cam.read(timeout=1.0)
    finally:
        cam.close()
    gap = late.seq - first.seq
    assert 6 <= gap <= 12, gap
    assert cam.dropped - before == gap - 1
    assert after_late.seq == late.seq + 1  # the next read waits for the next frame
    assert file_index(late.image) == (late.seq - 1) % N_FRAMES


def test_a_slow_camera_does_not_slow_another(video) -> None:
    slow = UvcCamera(UvcConfig(str(video), "slow", W, H, 4.0))
    fast = UvcCamera(UvcConfig(str(video), "fast", W, H, 30.0))
    slow_frames: list = []
    t = threading.Thread(target=lambda: slow_frames.extend(slow.read(2.0) for _ in range(4)))
    try:
        t.start()
        start = time.monotonic()
        n = sum(1 for _ in range(30) if fast.read(timeout=1.0))
        elapsed = time.monotonic() - start
        t.join()
    finally:
        slow.close()
        fast.close()
    assert n == 30 and elapsed < 1.3, elapsed  # 1.0 s nominal; 4 fps would take 7 s
    assert len(slow_frames) == 4
    assert np.diff([f.stamp for f in slow_frames]).mean() == pytest.approx(0.25, rel=0.1)


def test_end_of_file_without_loop_and_timeouts(tmp_path) -> None:
    path = tmp_path / "short.avi"
    write_mjpg(path, n=5)
    cam = UvcCamera(UvcConfig(str(path), "top", W, H, 60.0, loop=False))
    try:
        got = []
        with pytest.raises(EOFError):
            while True:
                got.append(cam.read(timeout=1.0))
    finally:
        cam.close()
    assert len(got) + cam.dropped == 5
    slow = UvcCamera(UvcConfig(str(path), "top", W, H, 1.0))
    try:
        slow.read(timeout=2.0)
        with pytest.raises(TimeoutError):
            slow.read(timeout=0.2)  # the next frame is a second away
    finally:
        slow.close()


def test_wrong_size_missing_file_and_calibration(video, tmp_path) -> None:
    with pytest.raises(ValueError, match="delivers 320x240"):
        UvcCamera(UvcConfig(str(video), "top", 640, 480, 30.0))
    with pytest.raises(FileNotFoundError):
        UvcCamera(UvcConfig(str(tmp_path / "none.avi"), "top", W, H, 30.0))
    calib = CameraSpec("bench", W, H, 250.5, 251.0, 161.0, 119.0, (0.1, -0.05, 0.0, 0.0, 0.0))
    cam = open_camera("uvc", str(video), "top", W, H, 30.0, calibration=calib)
    try:
        s = cam.spec
        assert s.name == "top" and (s.fx, s.fy, s.cx, s.cy) == (250.5, 251.0, 161.0, 119.0)
        assert s.distortion == calib.distortion
    finally:
        cam.close()
    nominal = UvcCamera(UvcConfig(str(video), "top", W, H, 30.0))
    try:
        assert not nominal.calibrated and nominal.spec.cx == (W - 1) / 2
    finally:
        nominal.close()
    with pytest.raises(ValueError, match="unknown camera backend"):
        open_camera("gige", str(video), "top")


def test_v4l2_buffer_stamps_move_to_the_host_clock() -> None:
    mono, wall = time.monotonic(), time.time()
    # A buffer stamped 21 ms ago on CLOCK_MONOTONIC is 21 ms ago on the host clock.
    stamp = v4l2_host_stamp((mono - 0.021) * 1e3, mono, wall)
    assert stamp == pytest.approx(wall - 0.021, abs=1e-6)
    # A file position (ms since the file start) or a stamp from the future is not trusted.
    assert v4l2_host_stamp(66.7, mono, wall) is None
    assert v4l2_host_stamp((mono + 0.5) * 1e3, mono, wall) is None
