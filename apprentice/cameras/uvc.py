"""UVC (USB video class) cameras through OpenCV's V4L2 backend, or a video file playing as one.

Format: MJPG is asked for before the size, because V4L2 picks the frame size per pixel format
and uncompressed YUYV needs 640×480×2×30 = 18 MB/s, more than a shared USB 2 bus delivers:
such cameras silently fall to 5-15 fps in YUYV at 640×480@30.

Stamps (seconds, host clock = time.time() base), decided on the first frame (`stamp_source`):
  "v4l2"  the driver's buffer timestamp (CAP_PROP_POS_MSEC on V4L2; uvcvideo stamps the
          first USB packet of the frame on CLOCK_MONOTONIC), moved to the host clock with
          the monotonic→wall offset sampled right after the grab;
  "grab"  where no such timestamp exists (a video file, a driver with another clock): the
          host time right after grab() returned minus one frame period, since grab() returns
          once the whole frame has arrived, about a period after its exposure began.

A video file path instead of a device plays the file (looping) paced to `fps` with the same
capture thread, stamp and drop logic: a camera for tests and for replaying a recording.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from apprentice.cameras import CapturedCamera, LatestFrame, check_calibration
from apprentice.robot_io import CameraSpec, Frame

log = logging.getLogger(__name__)

# A V4L2 buffer stamp converted to the host clock is trusted when it lies this close before
# "now" (s): older means another clock (or a file position), newer is impossible.
PLAUSIBLE_AGE_S = 1.0
REOPEN_DELAY_S = 0.5  # after a failed grab (unplugged camera) before trying the device again
NOMINAL_HFOV_DEG = 60.0  # intrinsics guess for an uncalibrated webcam (typical: 55-78°)


@dataclass(frozen=True)
class UvcConfig:
    device: str  # /dev/videoN, /dev/v4l/by-id/..., an index "0", or a video file path
    name: str = "camera"
    width: int = 640
    height: int = 480
    fps: float = 30.0
    fourcc: str = "MJPG"
    # Manual exposure in ms (V4L2 exposure_time_absolute, 100 µs units); None: auto exposure.
    # Fixed exposure also keeps cameras from lowering their frame rate in dim light.
    exposure_ms: float | None = None
    loop: bool = True  # video files only: start over at the end

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0 or self.fps <= 0:
            raise ValueError(f"camera {self.name}: width, height and fps must be positive")
        if len(self.fourcc) != 4:
            raise ValueError(f"camera {self.name}: fourcc must be 4 characters: {self.fourcc!r}")
        if self.exposure_ms is not None and self.exposure_ms <= 0:
            raise ValueError(f"camera {self.name}: exposure must be positive (ms)")

    @property
    def is_device(self) -> bool:
        return self.device.isdigit() or self.device.startswith("/dev/")


def v4l2_host_stamp(pos_msec: float, mono_now: float, wall_now: float) -> float | None:
    """A V4L2 buffer stamp (ms, CLOCK_MONOTONIC) on the host clock, or None if implausible."""
    age = mono_now - pos_msec / 1e3
    if not 0.0 <= age <= PLAUSIBLE_AGE_S:
        return None
    return wall_now - age


def fourcc_str(code: float) -> str:
    c = int(code)
    return "".join(chr((c >> (8 * i)) & 0xFF) for i in range(4))


def nominal_spec(name: str, width: int, height: int) -> CameraSpec:
    f = 0.5 * width / np.tan(np.deg2rad(NOMINAL_HFOV_DEG) / 2)
    return CameraSpec(name, width, height, f, f, (width - 1) / 2, (height - 1) / 2)


class UvcCamera(CapturedCamera):
    """A UVC camera (or video file) on apprentice.robot_io.Camera, captured on its own thread.

    Without `calibration` the intrinsics are a nominal 60° horizontal field of view guess.
    """

    def __init__(self, cfg: UvcConfig, calibration: CameraSpec | None = None) -> None:
        self.cfg = cfg
        self._spec = (
            nominal_spec(cfg.name, cfg.width, cfg.height)
            if calibration is None
            else check_calibration(calibration, cfg.name, cfg.width, cfg.height)
        )
        self.calibrated = calibration is not None
        self.stamp_source: str | None = None  # "v4l2" or "grab", set by the first frame
        self.negotiated_fourcc = ""
        self.grab_failures = 0
        self._slot = LatestFrame()
        self._stop = threading.Event()
        cap = self._open()  # raises here, in the caller, if the camera is absent
        self._thread = threading.Thread(
            target=self._capture, args=(cap,), name=f"uvc-{cfg.name}", daemon=True
        )
        self._thread.start()

    def _open(self) -> cv2.VideoCapture:
        c = self.cfg
        if c.is_device:
            cap = cv2.VideoCapture(int(c.device) if c.device.isdigit() else c.device, cv2.CAP_V4L2)
        else:
            if not Path(c.device).is_file():
                raise FileNotFoundError(f"camera {c.name}: no video file or device {c.device}")
            cap = cv2.VideoCapture(c.device, cv2.CAP_FFMPEG)
        if not cap.isOpened():
            raise OSError(f"camera {c.name}: cannot open {c.device}")
        if c.is_device:
            self._configure(cap)
        else:
            self.negotiated_fourcc = fourcc_str(cap.get(cv2.CAP_PROP_FOURCC))
        size = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
        if size != (c.width, c.height):
            cap.release()
            raise ValueError(
                f"camera {c.name}: {c.device} delivers {size[0]}x{size[1]}, "
                f"asked for {c.width}x{c.height}"
            )
        return cap

    def _configure(self, cap: cv2.VideoCapture) -> None:
        c = self.cfg
        # Order matters on V4L2: the pixel format first, then the size it offers, then the rate.
        cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*c.fourcc))
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, c.width)
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, c.height)
        cap.set(cv2.CAP_PROP_FPS, c.fps)
        if c.exposure_ms is None:
            cap.set(cv2.CAP_PROP_AUTO_EXPOSURE, 3)  # V4L2_EXPOSURE_APERTURE_PRIORITY (auto)
        else:
            cap.set(cv2.CAP_PROP_AUTO_EXPOSURE, 1)  # V4L2_EXPOSURE_MANUAL
            cap.set(cv2.CAP_PROP_EXPOSURE, c.exposure_ms * 10.0)  # 100 µs units
        self.negotiated_fourcc = fourcc_str(cap.get(cv2.CAP_PROP_FOURCC))
        fps = cap.get(cv2.CAP_PROP_FPS)
        if self.negotiated_fourcc != c.fourcc:
            log.warning(
                "camera %s: asked for %s, the driver chose %r (bandwidth may limit the rate)",
                c.name,
                c.fourcc,
                self.negotiated_fourcc,
            )
        if fps > 0 and abs(fps - c.fps) > 0.5:
            log.warning("camera %s: asked for %g fps, the driver set %g", c.name, c.fps, fps)

    def _capture(self, opened: cv2.VideoCapture) -> None:
        c = self.cfg
        period = 1.0 / c.fps
        cap: cv2.VideoCapture | None = opened
        seq = 0
        deadline = time.monotonic()  # video files: pace to the camera rate
        while not self._stop.is_set():
            if cap is None:  # lost the device: try again until it comes back or we stop
                if self._stop.wait(REOPEN_DELAY_S):
                    break
                try:
                    cap = self._open()
                except (OSError, ValueError) as exc:
                    log.warning("camera %s: reopen failed: %s", c.name, exc)
                continue
            if not c.is_device:
                deadline = max(deadline + period, time.monotonic() - period)
                if self._stop.wait(max(0.0, deadline - time.monotonic())):
                    break
            ok = cap.grab()
            wall, mono = time.time(), time.monotonic()
            if not ok and not c.is_device and c.loop:
                cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                ok = cap.grab()
                wall, mono = time.time(), time.monotonic()
            if not ok:
                if not c.is_device:
                    self._slot.fail(EOFError(f"camera {c.name}: end of {c.device}"))
                    break
                self.grab_failures += 1
                log.warning("camera %s: grab failed, reopening %s", c.name, c.device)
                cap.release()
                cap = None
                continue
            ok, bgr = cap.retrieve()
            if not ok or bgr is None or bgr.shape[:2] != (c.height, c.width):
                self.grab_failures += 1
                continue
            stamp = self._stamp(cap, wall, mono, period)
            seq += 1
            self._slot.put(Frame(stamp, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), seq))
        if cap is not None:
            cap.release()
        self._slot.fail(EOFError(f"camera {c.name}: closed"))

    def _stamp(self, cap: cv2.VideoCapture, wall: float, mono: float, period: float) -> float:
        if self.stamp_source is None:
            driver = v4l2_host_stamp(cap.get(cv2.CAP_PROP_POS_MSEC), mono, wall)
            self.stamp_source = "v4l2" if self.cfg.is_device and driver is not None else "grab"
            log.info("camera %s: stamps from %s", self.cfg.name, self.stamp_source)
        if self.stamp_source == "v4l2":
            driver = v4l2_host_stamp(cap.get(cv2.CAP_PROP_POS_MSEC), mono, wall)
            if driver is not None:
                return driver
            # A stray implausible buffer stamp: the grab-time estimate, within a few ms of it.
        return wall - period
