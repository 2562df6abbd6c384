"""Camera messages → RGB pixels → the policy's input size. Pure functions (numpy + OpenCV), so
a policy node prepares live frames exactly as the dataset builder prepared recorded ones: both
call `raw_to_input` / `compressed_to_input` with the message's fields."""

from __future__ import annotations

import math

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


def raw_to_input(
    data: np.ndarray, height: int, width: int, encoding: str, step: int, hw: tuple[int, int]
) -> tuple[np.ndarray, tuple[int, int]]:
    """sensor_msgs/Image fields → ((3, h, w) uint8 at the policy's size `hw`, (H, W) as sent)."""
    return resize_chw(decode_raw(data, height, width, encoding, step), hw), (height, width)


def compressed_to_input(
    data: np.ndarray, hw: tuple[int, int]
) -> tuple[np.ndarray, tuple[int, int]]:
    """sensor_msgs/CompressedImage data → ((3, h, w) uint8 at `hw`, (H, W) as sent)."""
    rgb = decode_compressed(data)
    return resize_chw(rgb, hw), (rgb.shape[0], rgb.shape[1])


def camera_info_record(width: int, height: int, k, d, distortion_model: str) -> dict[str, object]:
    """sensor_msgs/CameraInfo fields → the record a dataset cache and a policy card keep of the
    camera ("source": the camera as trained): {"width", "height", "k": 9 floats (row-major
    3x3, pixels at width x height), "d": [...], "distortion_model"}."""
    k = [float(v) for v in k]
    if len(k) != 9 or not all(math.isfinite(v) for v in k) or not (k[0] > 0 and k[4] > 0):
        raise ValueError(f"camera_info K must be 9 finite values with fx, fy > 0, got {k}")
    if not (int(width) > 0 and int(height) > 0):
        raise ValueError(f"camera_info size must be positive, got {width}x{height}")
    return {
        "width": int(width),
        "height": int(height),
        "k": k,
        "d": [float(v) for v in d],
        "distortion_model": str(distortion_model),
    }
