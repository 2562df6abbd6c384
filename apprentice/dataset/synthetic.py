"""Synthetic demonstration episodes written as real bags by the recording core, for tests,
benchmarks and trying the pipeline without a robot.

One arm follows smooth joint trajectories; the commands (the action) lead the measured joints
by `lead_s`, like a follower tracking a leader; a camera sees a bright square whose position
follows the first two joints, so the images carry information about the state. Stamps have
jitter and the recorder's log times lag them, as on a real machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from rosbags.typesys import Stores, get_typestore

from apprentice.recording import EpisodeWriter, WriterConfig

_TS = get_typestore(Stores.ROS2_JAZZY)
_T = _TS.types


@dataclass(frozen=True)
class SyntheticEpisode:
    arm: str = "follower"  # topics /<arm>/joint_states, /<arm>/commands
    joints: tuple[str, ...] = ("shoulder_pan", "shoulder_lift", "elbow_flex", "gripper")
    camera: str = "top"  # topic /cameras/<camera>/image_raw[/compressed]
    compressed: bool = False  # JPEG CompressedImage instead of raw rgb8 Image
    image_hw: tuple[int, int] = (48, 64)  # (H, W) as recorded
    duration_s: float = 2.0
    joint_rate_hz: float = 100.0
    command_rate_hz: float = 50.0
    camera_rate_hz: float = 30.0
    lead_s: float = 0.1  # commands lead the measured positions by this (s)
    idle_s: float = 0.0  # the arm waits at its start pose this long before moving (s)
    start_time_s: float = 1.7e9  # s since the epoch
    # Set: /cameras/<camera>/camera_info with every frame (same stamp), focal length camera_fx
    # px, principal point centred, no distortion, for images of camera_info_hw (default: the
    # recorded size); from the episode's middle on, fx camera_fx_late if that is set (a camera
    # whose calibration changed mid-episode).
    camera_fx: float | None = None
    camera_info_hw: tuple[int, int] | None = None
    camera_fx_late: float | None = None

    @property
    def topics(self) -> dict[str, str]:
        image = "sensor_msgs/msg/CompressedImage" if self.compressed else "sensor_msgs/msg/Image"
        return {
            f"/{self.arm}/joint_states": "sensor_msgs/msg/JointState",
            f"/{self.arm}/commands": "std_msgs/msg/Float64MultiArray",
            self.camera_topic: image,
        } | ({self.info_topic: "sensor_msgs/msg/CameraInfo"} if self.camera_fx else {})

    @property
    def info_topic(self) -> str:
        return f"/cameras/{self.camera}/camera_info"

    @property
    def camera_topic(self) -> str:
        suffix = "/compressed" if self.compressed else ""
        return f"/cameras/{self.camera}/image_raw{suffix}"


def trajectory(t: np.ndarray, n_joints: int, seed: int) -> np.ndarray:
    """Joint positions (rad) at times t (s from the episode start) → (len(t), n_joints)."""
    rng = np.random.default_rng(seed)
    freq = rng.uniform(0.2, 0.6, n_joints)  # Hz
    phase = rng.uniform(0, 2 * np.pi, n_joints)
    amp = rng.uniform(0.3, 1.0, n_joints)
    return amp * np.sin(2 * np.pi * freq * t[:, None] + phase)


def render(q: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 RGB: a square at a position set by q[0], q[1] (both in [-1, 1])."""
    h, w = hw
    img = np.full((h, w, 3), 30, dtype=np.uint8)
    cx = int((0.5 + 0.4 * np.clip(q[0], -1, 1)) * (w - 1))
    cy = int((0.5 + 0.4 * np.clip(q[1], -1, 1)) * (h - 1))
    r = max(2, min(h, w) // 8)
    img[max(cy - r, 0) : cy + r, max(cx - r, 0) : cx + r] = (230, 180, 40)
    return img


def _header(stamp_ns: int, frame: str):
    time = _T["builtin_interfaces/msg/Time"](
        sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000
    )
    return _T["std_msgs/msg/Header"](stamp=time, frame_id=frame)


def _stamps(spec: SyntheticEpisode, rate_hz: float, rng: np.random.Generator) -> np.ndarray:
    """Sample times (s from start) at rate_hz with ±10 % of a period of jitter."""
    n = int(spec.duration_s * rate_hz)
    return np.arange(n) / rate_hz + rng.uniform(-0.1, 0.1, n) / rate_hz + 0.1 / rate_hz


def _camera_info(header, hw: tuple[int, int], fx: float):
    h, w = hw
    k = np.array([fx, 0.0, (w - 1) / 2, 0.0, fx, (h - 1) / 2, 0.0, 0.0, 1.0])
    p = np.zeros(12)
    p[[0, 2, 5, 6, 10]] = k[[0, 2, 4, 5, 8]]
    roi = _T["sensor_msgs/msg/RegionOfInterest"](
        x_offset=0, y_offset=0, height=0, width=0, do_rectify=False
    )
    return _T["sensor_msgs/msg/CameraInfo"](
        header=header, height=h, width=w, distortion_model="plumb_bob", d=np.zeros(5), k=k,
        r=np.eye(3).reshape(-1), p=p, binning_x=0, binning_y=0, roi=roi,
    )  # fmt: skip


def write_episode(
    bag_dir: str | Path,
    spec: SyntheticEpisode = SyntheticEpisode(),
    seed: int = 0,
    config: WriterConfig | None = None,
) -> Path:
    """Writes one episode bag with `apprentice.recording.EpisodeWriter`; returns its folder.
    config: how chunks are cut (default: the recorder's, without fsync)."""
    rng = np.random.default_rng(seed + 1000)
    t0_ns = int(spec.start_time_s * 1e9)
    messages: list[tuple[int, str, bytes]] = []  # (log time ns, topic, cdr)
    js_topic, cmd_topic = f"/{spec.arm}/joint_states", f"/{spec.arm}/commands"
    n = len(spec.joints)

    def traj(t: np.ndarray) -> np.ndarray:  # held at the start pose for the first idle_s
        return trajectory(np.maximum(t - spec.idle_s, 0.0), n, seed)

    def add(topic: str, stamp_s: float, msg, msgtype: str) -> None:
        latency = rng.uniform(0.0005, 0.003)  # s, sensor → recorder
        cdr = bytes(_TS.serialize_cdr(msg, msgtype))
        messages.append((t0_ns + int((stamp_s + latency) * 1e9), topic, cdr))

    ts = _stamps(spec, spec.joint_rate_hz, rng)
    for t, q in zip(ts, traj(ts), strict=True):
        msg = _T["sensor_msgs/msg/JointState"](
            header=_header(t0_ns + int(t * 1e9), spec.arm), name=list(spec.joints),
            position=q, velocity=np.zeros(0), effort=np.zeros(0),
        )  # fmt: skip
        add(js_topic, t, msg, "sensor_msgs/msg/JointState")
    ts = _stamps(spec, spec.command_rate_hz, rng)
    for t, q in zip(ts, traj(ts + spec.lead_s), strict=True):
        layout = _T["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0)
        add(cmd_topic, t, _T["std_msgs/msg/Float64MultiArray"](layout=layout, data=q),
            "std_msgs/msg/Float64MultiArray")  # fmt: skip
    ts = _stamps(spec, spec.camera_rate_hz, rng)
    h, w = spec.image_hw
    for i, (t, q) in enumerate(zip(ts, traj(ts), strict=True)):
        rgb = render(q, spec.image_hw)
        header = _header(t0_ns + int(t * 1e9), spec.camera)
        if spec.camera_fx is not None:
            late = spec.camera_fx_late is not None and i >= len(ts) // 2
            fx = spec.camera_fx_late if late else spec.camera_fx
            add(spec.info_topic, t, _camera_info(header, spec.camera_info_hw or (h, w), fx),
                "sensor_msgs/msg/CameraInfo")  # fmt: skip
        if spec.compressed:
            ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            assert ok
            msg = _T["sensor_msgs/msg/CompressedImage"](
                header=header, format="jpeg", data=jpeg.reshape(-1)
            )
            add(spec.camera_topic, t, msg, "sensor_msgs/msg/CompressedImage")
        else:
            msg = _T["sensor_msgs/msg/Image"](
                header=header, height=h, width=w, encoding="rgb8", is_bigendian=0, step=3 * w,
                data=rgb.reshape(-1),
            )  # fmt: skip
            add(spec.camera_topic, t, msg, "sensor_msgs/msg/Image")

    bag_dir = Path(bag_dir)
    # No fsync: these are throwaway episodes, and tests write many.
    config = config or WriterConfig(fsync_on_close=False)
    with EpisodeWriter(bag_dir, task="synthetic", config=config) as writer:
        for topic, msgtype in spec.topics.items():
            writer.add_topic(topic, msgtype)
        for log_ns, topic, cdr in sorted(messages, key=lambda m: m[0]):
            writer.write(topic, cdr, log_time_ns=log_ns)
    return bag_dir
