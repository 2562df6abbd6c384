"""Camera messages → RGB pixels → the policy's input size. Pure functions (numpy + OpenCV), so
a policy node can prepare live frames exactly as the dataset builder prepared recorded ones."""

from __future__ import annotations

import cv2
import numpy as np

# sensor_msgs/Image encodings handled: channels and the conversion to RGB.
_RAW_ENCODINGS: dict[str, tuple[int, int | None]] = {
    "rgb8": (3, None),
    "bgr8": (3, cv2.COLOR_BGR2RGB),
    "rgba8": (4, cv2.COLOR_RGBA2RGB),
    "bgra8": (4, cv2.COLOR_BGRA2RGB),
    "mono8": (1, cv2.COLOR_GRAY2RGB),
}
RAW_ENCODINGS = tuple(_RAW_ENCODINGS)


def decode_raw(data: np.ndarray, height: int, width: int, encoding: str, step: int) -> np.ndarray:
    """sensor_msgs/Image fields → (H, W, 3) uint8 RGB. `step` is bytes per row (may be padded)."""
    if encoding not in _RAW_ENCODINGS:
        raise ValueError(f"unsupported image encoding {encoding!r}; supported: {RAW_ENCODINGS}")
    channels, conversion = _RAW_ENCODINGS[encoding]
    data = np.asarray(data, dtype=np.uint8)
    if step < width * channels or data.size < height * step:
        raise ValueError(
            f"image data of {data.size} bytes does not hold {height}x{width} {encoding} "
            f"with step {step}"
        )
    rows = data[: height * step].reshape(height, step)[:, : width * channels]  # drop row padding
    pixels = rows.reshape(height, width, channels)
    if conversion is None:
        return pixels
    return cv2.cvtColor(pixels, conversion)


def decode_compressed(data: np.ndarray) -> np.ndarray:
    """sensor_msgs/CompressedImage data (JPEG or PNG) → (H, W, 3) uint8 RGB."""
    bgr = cv2.imdecode(np.asarray(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"could not decode a {len(data)}-byte compressed image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def resize_chw(rgb: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 → (3, h, w) uint8, channels first as the policies take them.

    The whole frame is scaled to (h, w) (no crop: the aspect ratio may change; the policy card
    says so). INTER_AREA when shrinking (averages, no aliasing), linear when enlarging."""
    h, w = hw
    if rgb.shape[:2] != (h, w):
        shrink = rgb.shape[0] > h or rgb.shape[1] > w
        rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return np.ascontiguousarray(rgb.transpose(2, 0, 1))  # (3, h, w)
