"""Messages ↔ numpy/core types, in one place."""

from __future__ import annotations

import cv2
import numpy as np
from builtin_interfaces.msg import Time
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, JointState

from apprentice.dataset.images import camera_info_record, compressed_to_input, raw_to_input
from apprentice.robot_io import CameraSpec, Frame, JointReading


def to_time(stamp: float) -> Time:
    sec = int(stamp)
    nanosec = int(round((stamp - sec) * 1e9))
    if nanosec >= 1_000_000_000:
        sec, nanosec = sec + 1, nanosec - 1_000_000_000
    return Time(sec=sec, nanosec=nanosec)


def from_time(t: Time) -> float:
    return t.sec + t.nanosec * 1e-9


def joint_state(reading: JointReading, names: tuple[str, ...]) -> JointState:
    msg = JointState()
    msg.header.stamp = to_time(reading.stamp)
    msg.name = list(names)
    msg.position = reading.position.tolist()
    if reading.velocity is not None:
        msg.velocity = reading.velocity.tolist()
    if reading.effort is not None:
        msg.effort = reading.effort.tolist()
    return msg


def image(frame: Frame, frame_id: str) -> Image:
    h, w = frame.image.shape[:2]
    msg = Image()
    msg.header.stamp = to_time(frame.stamp)
    msg.header.frame_id = frame_id
    msg.height, msg.width = h, w
    msg.encoding = "rgb8"
    msg.step = w * 3
    msg.data = np.ascontiguousarray(frame.image).tobytes()
    return msg


def compressed_image(frame: Frame, frame_id: str, quality: int) -> CompressedImage:
    ok, buf = cv2.imencode(
        ".jpg", cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    msg = CompressedImage()
    msg.header.stamp = to_time(frame.stamp)
    msg.header.frame_id = frame_id
    msg.format = "rgb8; jpeg compressed bgr8"  # the image_transport convention
    msg.data = buf.tobytes()
    return msg


def image_to_array(msg: Image) -> np.ndarray:
    if msg.encoding != "rgb8":
        raise ValueError(f"expected rgb8, got {msg.encoding}")
    return (
        np.frombuffer(bytes(msg.data), np.uint8)
        .reshape(msg.height, msg.step)[:, : msg.width * 3]
        .reshape(msg.height, msg.width, 3)
    )


def policy_image(
    msg: Image | CompressedImage, hw: tuple[int, int]
) -> tuple[np.ndarray, tuple[int, int]]:
    """A camera message → ((3, h, w) uint8 RGB at the policy's input size `hw`, (H, W) as
    sent), by the functions the dataset builder prepares recorded frames with: the same bytes
    give the same array offline and live. Raises ValueError for an undecodable image."""
    data = np.frombuffer(msg.data, np.uint8)  # no copy
    if isinstance(msg, CompressedImage):
        return compressed_to_input(data, hw)
    return raw_to_input(data, msg.height, msg.width, msg.encoding, msg.step, hw)


def camera_info_to_record(msg: CameraInfo) -> dict:
    """CameraInfo → the record a policy card's camera "source" holds. Raises ValueError."""
    return camera_info_record(msg.width, msg.height, msg.k, msg.d, msg.distortion_model)


def camera_info(spec: CameraSpec, stamp: float, frame_id: str) -> CameraInfo:
    msg = CameraInfo()
    msg.header.stamp = to_time(stamp)
    msg.header.frame_id = frame_id
    msg.width, msg.height = spec.width, spec.height
    msg.distortion_model = "plumb_bob"
    msg.d = list(spec.distortion)
    msg.k = spec.k.reshape(-1).tolist()
    msg.r = np.eye(3).reshape(-1).tolist()
    p = np.zeros((3, 4))
    p[:, :3] = spec.k
    msg.p = p.reshape(-1).tolist()
    return msg
