"""A recorder stand-in for the kill -9 test: writes 3 cameras 640x480 rgb8 @30 Hz and 2 joint
streams @200 Hz in real time into one episode until it is killed.

usage: python writer_process.py BAG_DIR SECONDS
Prints "ready <t0_ns>" once the bag is open, then "<log_ns> <messages written>" after every
camera tick, flushed, so the test knows what the writer had accepted when it died. Message k
of a stream carries header stamp t0 + k * period: holes are visible after recovery.
"""

from __future__ import annotations

import struct
import sys
import time
from pathlib import Path

import numpy as np
from cdr_samples import CAMERAS, JOINTS, image, joint_state

from apprentice.recording import EpisodeWriter

CAMERA_PERIOD_NS = 33_333_333
JOINT_PERIOD_NS = 5_000_000


def with_stamp(template: bytes, stamp_ns: int) -> bytearray:
    """The template CDR with its header stamp replaced (as a driver stamping frames would)."""
    buf = bytearray(template)
    struct.pack_into("<iI", buf, 4, stamp_ns // 1_000_000_000, stamp_ns % 1_000_000_000)
    return buf


def main() -> None:
    bag, seconds = Path(sys.argv[1]), float(sys.argv[2])
    rng = np.random.default_rng(7)
    frames = [image(0, rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)) for _ in CAMERAS]
    joints = [joint_state(0, rng.normal(size=6)) for _ in JOINTS]
    writer = EpisodeWriter(bag, task="stack blocks")
    for t in CAMERAS:
        writer.add_topic(t, "sensor_msgs/msg/Image")
    for t in JOINTS:
        writer.add_topic(t, "sensor_msgs/msg/JointState")
    t0 = time.time_ns()
    start = time.monotonic()
    print(f"ready {t0}", flush=True)
    written = 0
    tick = 0  # 600 Hz ticks: joints every 3rd, cameras every 20th
    while time.monotonic() - start < seconds:
        deadline = start + tick / 600
        delay = deadline - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        if tick % 3 == 0:
            k = tick // 3
            for t, data in zip(JOINTS, joints, strict=True):
                writer.write(t, with_stamp(data, t0 + k * JOINT_PERIOD_NS), time.time_ns())
                written += 1
        if tick % 20 == 0:
            k = tick // 20
            for t, data in zip(CAMERAS, frames, strict=True):
                writer.write(t, with_stamp(data, t0 + k * CAMERA_PERIOD_NS), time.time_ns())
                written += 1
            print(f"{time.time_ns()} {written}", flush=True)
        tick += 1
    print("not killed", flush=True)  # no close(): the test kills this process before


if __name__ == "__main__":
    main()
