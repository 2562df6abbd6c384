"""Offline and live frames are the same arrays: the recorded bytes of each camera message, read
by the dataset builder (EpisodeBag) and fed to the policy node's image callback (CameraInput,
after rclpy deserializes them as it does off the wire), give np.array_equal inputs, raw and
JPEG, from a 640x480 camera to a 96x128 policy."""

from __future__ import annotations

import numpy as np
import pytest
from mcap.reader import SeekingReader
from rclpy.serialization import deserialize_message
from sensor_msgs.msg import CompressedImage, Image

from apprentice.dataset import EpisodeBag
from apprentice.dataset.synthetic import SyntheticEpisode, write_episode
from apprentice_ros.camera_input import CameraInput

CARD_HW = (96, 128)  # the policy's input
CAMERA_HW = (480, 640)  # what the camera sends


def _live(bag: EpisodeBag, topic: str, msg_type: type) -> tuple[list[np.ndarray], CameraInput]:
    """Every recorded message of `topic`, in stamp order, through the node's image callback."""
    pushed: list[tuple[float, np.ndarray]] = []
    camera = CameraInput("top", CARD_HW, lambda _c, t, img: pushed.append((t, img)), print)
    with open(bag.mcap_path, "rb") as f:
        for _, _, message in SeekingReader(f).iter_messages(topics=[topic]):
            camera.on_image(deserialize_message(message.data, msg_type))
    assert camera.bad_frames == 0 and camera.source_hw == CAMERA_HW
    pushed.sort(key=lambda p: p[0])
    return [img for _, img in pushed], camera


@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "jpeg"])
def test_builder_and_node_prepare_identical_arrays(tmp_path, compressed: bool) -> None:
    spec = SyntheticEpisode(duration_s=0.4, compressed=compressed, image_hw=CAMERA_HW)
    bag = EpisodeBag(write_episode(tmp_path / "ep", spec))
    _, images = bag.read([], [spec.camera_topic], CARD_HW)
    offline = images[spec.camera_topic].frames  # (N, 3, 96, 128) uint8
    live, _ = _live(bag, spec.camera_topic, CompressedImage if compressed else Image)
    assert len(live) == len(offline) >= 10
    assert offline.shape[1:] == (3, *CARD_HW) and offline.dtype == np.uint8
    for a, b in zip(offline, live, strict=True):
        assert b.dtype == np.uint8 and np.array_equal(a, b)
    assert len({a.tobytes() for a in offline}) > 1  # the frames differ: a real comparison


def test_other_encodings_and_bad_frames(tmp_path) -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (*CAMERA_HW, 3), dtype=np.uint8)
    pushed: list[np.ndarray] = []
    camera = CameraInput("top", CARD_HW, lambda _c, _t, img: pushed.append(img), print)
    h, w = CAMERA_HW
    camera.on_image(Image(height=h, width=w, encoding="rgb8", step=3 * w, data=rgb.tobytes()))
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    padded = np.zeros((h, 4 * w + 8), np.uint8)  # bgra8 with row padding
    padded[:, : 4 * w] = np.dstack([bgr, np.full((h, w), 255, np.uint8)]).reshape(h, -1)
    camera.on_image(Image(height=h, width=w, encoding="bgr8", step=3 * w, data=bgr.tobytes()))
    camera.on_image(
        Image(height=h, width=w, encoding="bgra8", step=4 * w + 8, data=padded.tobytes())
    )
    assert len(pushed) == 3 and all(np.array_equal(pushed[0], p) for p in pushed[1:])
    camera.on_image(Image(height=h, width=w, encoding="yuv422", step=2 * w, data=bytes(2 * h * w)))
    camera.on_image(CompressedImage(format="jpeg", data=b"not a jpeg"))
    assert camera.bad_frames == 2 and len(pushed) == 3  # counted, never fed
