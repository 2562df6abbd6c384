"""One camera's input to the policy node: its image callback and its camera_info.

The image callback turns each message into the policy's input right away ((3, h, w) uint8 at
the card's size, by `conversions.policy_image`: the dataset builder's decode and resize), so
the control and inference threads never decode; a frame that cannot be decoded is counted and
never fed (the policy's watchdog holds when frames stop). Its stamp is judged where it is fed
(Observations.push_frame: apprentice.stamps). The first camera_info is kept for
the start-up lens check (apprentice.policy_server.card.check_lens).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from apprentice_ros.conversions import camera_info_to_record, from_time, policy_image

# image_transport parameter → (message type, topic under /cameras/<cam>/)
TRANSPORTS: dict[str, tuple[type, str]] = {
    "raw": (Image, "image_raw"),
    "compressed": (CompressedImage, "image_raw/compressed"),
}


class CameraInput:
    def __init__(
        self,
        name: str,
        hw: tuple[int, int],
        push: Callable[[str, float, np.ndarray], None],
        warn: Callable[[str], None],
    ) -> None:
        self.name = name
        self.hw = hw  # (h, w): the card's input size
        self._push = push  # Observations.push_frame
        self._warn = warn
        self.source_hw: tuple[int, int] | None = None  # (H, W) of the first frame, as sent
        self.info: dict | None = None  # the first camera_info (images.camera_info_record)
        self.bad_frames = 0

    def on_image(self, msg: Image | CompressedImage) -> None:
        try:
            chw, source_hw = policy_image(msg, self.hw)
        except ValueError as exc:  # unsupported encoding, short data, corrupt JPEG
            self.bad_frames += 1
            self._warn(f"camera {self.name}: frame dropped: {exc}")
            return
        if self.source_hw is None:
            self.source_hw = source_hw
        self._push(self.name, from_time(msg.header.stamp), chw)

    def on_info(self, msg: CameraInfo) -> None:
        if self.info is not None:
            return
        try:
            self.info = camera_info_to_record(msg)
        except ValueError as exc:
            self._warn(f"camera {self.name}: unusable camera_info: {exc}")
