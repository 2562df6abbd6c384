"""Real CDR for the recorded message types (serialised with rosbags' Jazzy type store) and
small helpers shared by the recording tests and their writer subprocess."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from rosbags.typesys import Stores, get_typestore

TS = get_typestore(Stores.ROS2_JAZZY)
T = TS.types
F64 = np.float64

CAMERAS = ("/cam_high/image_raw", "/cam_wrist/image_raw", "/cam_low/image_raw")
JOINTS = ("/leader/joint_states", "/follower/joint_states")
QOS_YAML = """\
- history: keep_last
  depth: 10
  reliability: reliable
  durability: volatile
  deadline: {sec: 9223372036, nsec: 854775807}
  lifespan: {sec: 9223372036, nsec: 854775807}
  liveliness: automatic
  liveliness_lease_duration: {sec: 9223372036, nsec: 854775807}
  avoid_ros_namespace_conventions: false
"""


def header(stamp_ns: int, frame: str = "base"):
    return T["std_msgs/msg/Header"](
        stamp=T["builtin_interfaces/msg/Time"](
            sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000
        ),
        frame_id=frame,
    )


def cdr(msg, msgtype: str, little_endian: bool = True) -> bytes:
    return bytes(TS.serialize_cdr(msg, msgtype, little_endian=little_endian))


def joint_state(stamp_ns: int, q: np.ndarray, with_velocity: bool = True) -> bytes:
    empty = np.zeros(0, dtype=F64)
    msg = T["sensor_msgs/msg/JointState"](
        header=header(stamp_ns),
        name=[f"joint_{i}" for i in range(len(q))],
        position=np.asarray(q, dtype=F64),
        velocity=np.asarray(q, dtype=F64) * 0.5 if with_velocity else empty,
        effort=empty,
    )
    return cdr(msg, "sensor_msgs/msg/JointState")


def image(stamp_ns: int, pixels: np.ndarray) -> bytes:
    h, w, _ = pixels.shape
    msg = T["sensor_msgs/msg/Image"](
        header=header(stamp_ns, "camera"),
        height=h,
        width=w,
        encoding="rgb8",
        is_bigendian=0,
        step=w * 3,
        data=pixels.reshape(-1),
    )
    return cdr(msg, "sensor_msgs/msg/Image")


def compressed_image(stamp_ns: int, payload: bytes) -> bytes:
    msg = T["sensor_msgs/msg/CompressedImage"](
        header=header(stamp_ns, "camera"),
        format="jpeg",
        data=np.frombuffer(payload, dtype=np.uint8),
    )
    return cdr(msg, "sensor_msgs/msg/CompressedImage")


def camera_info(stamp_ns: int) -> bytes:
    msg = T["sensor_msgs/msg/CameraInfo"](
        header=header(stamp_ns, "camera"),
        height=480,
        width=640,
        distortion_model="plumb_bob",
        d=np.array([0.1, -0.05, 0.0, 0.0, 0.0], dtype=F64),
        k=np.array([500, 0, 320, 0, 500, 240, 0, 0, 1], dtype=F64),
        r=np.eye(3, dtype=F64).reshape(-1),
        p=np.array([500, 0, 320, 0, 0, 500, 240, 0, 0, 0, 1, 0], dtype=F64),
        binning_x=0,
        binning_y=0,
        roi=T["sensor_msgs/msg/RegionOfInterest"](
            x_offset=0, y_offset=0, height=0, width=0, do_rectify=False
        ),
    )
    return cdr(msg, "sensor_msgs/msg/CameraInfo")


def float_array(values: np.ndarray) -> bytes:
    msg = T["std_msgs/msg/Float64MultiArray"](
        layout=T["std_msgs/msg/MultiArrayLayout"](
            dim=[T["std_msgs/msg/MultiArrayDimension"](label="x", size=len(values), stride=1)],
            data_offset=0,
        ),
        data=np.asarray(values, dtype=F64),
    )
    return cdr(msg, "std_msgs/msg/Float64MultiArray")


def joint_trajectory(stamp_ns: int, q: np.ndarray) -> bytes:
    point = T["trajectory_msgs/msg/JointTrajectoryPoint"](
        positions=np.asarray(q, dtype=F64),
        velocities=np.zeros(0, dtype=F64),
        accelerations=np.zeros(0, dtype=F64),
        effort=np.zeros(0, dtype=F64),
        time_from_start=T["builtin_interfaces/msg/Duration"](sec=0, nanosec=20_000_000),
    )
    msg = T["trajectory_msgs/msg/JointTrajectory"](
        header=header(stamp_ns),
        joint_names=[f"joint_{i}" for i in range(len(q))],
        points=[point],
    )
    return cdr(msg, "trajectory_msgs/msg/JointTrajectory")


def tree_sha256(root: Path) -> dict[str, str]:
    """sha256 of every file under root, by relative path."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }
