"""Message definitions (ros2msg text + RIHS01 type hash) for the schemas of recorded topics.

Taken from the ROS 2 Jazzy type store that ships with `rosbags`, so a bag can be written on a
machine without a ROS install; the hashes equal those of the Jazzy message packages.
"""

from __future__ import annotations

import struct
from functools import lru_cache

from rosbags.typesys import Stores, get_typestore

# Types whose CDR starts with a std_msgs/Header: int32 sec, uint32 nanosec right after the
# 4-byte encapsulation header (the first member needs no alignment padding).
STAMPED_TYPES = frozenset(
    {
        "sensor_msgs/msg/JointState",
        "sensor_msgs/msg/Image",
        "sensor_msgs/msg/CompressedImage",
        "sensor_msgs/msg/CameraInfo",
        "trajectory_msgs/msg/JointTrajectory",
    }
)

_STAMP_LE = struct.Struct("<iI")
_STAMP_BE = struct.Struct(">iI")


@lru_cache(maxsize=1)
def _typestore():  # building the store parses every Jazzy type once (~0.1 s): do it lazily
    return get_typestore(Stores.ROS2_JAZZY)


@lru_cache(maxsize=64)
def message_definition(msgtype: str) -> tuple[str, str]:
    """Returns (ros2msg definition text with dependencies, RIHS01 hash) of a Jazzy type.

    Raises KeyError for a type the Jazzy store does not know (pass the text explicitly then).
    """
    store = _typestore()
    if msgtype not in store.fielddefs:
        raise KeyError(f"{msgtype} is not a ROS 2 Jazzy type known to rosbags")
    text, _ = store.generate_msgdef(msgtype, ros_version=2)
    return text, store.hash_rihs01(msgtype)


def header_stamp_ns(cdr: bytes | bytearray | memoryview) -> int:
    """The header stamp (ns since epoch) of a CDR message whose first member is a std_msgs/Header.

    Reads 12 bytes: the encapsulation header (byte 1 odd = little endian) then sec, nanosec.
    """
    if len(cdr) < 12:
        raise ValueError(f"CDR message too short for a header stamp: {len(cdr)} bytes")
    layout = _STAMP_LE if cdr[1] & 1 else _STAMP_BE
    sec, nanosec = layout.unpack_from(cdr, 4)
    return sec * 1_000_000_000 + nanosec
