"""Camera backends on the robot I/O contract (apprentice.robot_io.Camera): UVC and RealSense.

Every backend captures on its own thread, so a slow or stalled camera never blocks a reader of
another one; read() hands over the newest frame and counts the frames nobody read as dropped.
Vendor SDKs are imported only when their backend is opened.
"""

from __future__ import annotations

import importlib
import threading

from apprentice.robot_io import Camera, CameraSpec, Frame

# backend name → (module, camera class, config class); modules import their SDK, so they are
# imported only when that backend is opened.
BACKENDS = {
    "uvc": ("apprentice.cameras.uvc", "UvcCamera", "UvcConfig"),
    "realsense": ("apprentice.cameras.realsense", "RealSenseCamera", "RealSenseConfig"),
}


class LatestFrame:
    """A one-slot mailbox between a capture thread and one reader.

    The capture thread put()s every frame (seq counting up from 1); get() waits for a frame
    newer than the last one it returned and returns the newest. Frames overwritten before
    anyone read them are counted in `dropped`.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._frame: Frame | None = None
        self._last_seq = 0
        self._error: BaseException | None = None
        self.dropped = 0

    def put(self, frame: Frame) -> None:
        with self._cond:
            self._frame = frame
            self._cond.notify_all()

    def fail(self, error: BaseException) -> None:
        """The source ended or broke for good: readers get `error` once no frame is pending."""
        with self._cond:
            if self._error is None:  # the first reason is the real one
                self._error = error
            self._cond.notify_all()

    def _fresh(self) -> bool:
        return self._frame is not None and self._frame.seq > self._last_seq

    def get(self, timeout: float) -> Frame:
        with self._cond:
            if not self._cond.wait_for(lambda: self._fresh() or self._error, timeout):
                raise TimeoutError(f"no frame within {timeout} s")
            if not self._fresh():
                assert self._error is not None
                raise self._error
            frame = self._frame
            assert frame is not None
            self.dropped += frame.seq - self._last_seq - 1
            self._last_seq = frame.seq
            return frame


def open_camera(
    backend: str,
    device: str,
    name: str,
    width: int = 640,
    height: int = 480,
    fps: float = 30.0,
    calibration: CameraSpec | None = None,
    **options: object,
) -> Camera:
    """Opens a camera by backend name; `options` go to that backend's config (see its module).

    `calibration` (from a CameraInfo YAML) replaces the backend's own intrinsics; its image
    size must match width × height.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown camera backend {backend!r}; known: {', '.join(BACKENDS)}")
    module_name, camera_class, config_class = BACKENDS[backend]
    module = importlib.import_module(module_name)
    cfg = getattr(module, config_class)(device, name, width, height, fps, **options)
    return getattr(module, camera_class)(cfg, calibration)


class CapturedCamera:
    """What every threaded backend shares: a capture thread feeding a LatestFrame slot.

    Subclasses set `_spec`, start `_thread` (which put()s into `_slot` until `_stop` is set).
    """

    _spec: CameraSpec
    _slot: LatestFrame
    _stop: threading.Event
    _thread: threading.Thread

    @property
    def spec(self) -> CameraSpec:
        return self._spec

    @property
    def dropped(self) -> int:
        return self._slot.dropped

    def read(self, timeout: float = 1.0) -> Frame:
        """The newest frame, waiting up to `timeout` s for one newer than the last returned."""
        return self._slot.get(timeout)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)


def check_calibration(calibration: CameraSpec, name: str, width: int, height: int) -> CameraSpec:
    """The calibration renamed to this camera, after checking it was made at this image size."""
    if (calibration.width, calibration.height) != (width, height):
        raise ValueError(
            f"camera {name}: calibration is for {calibration.width}x{calibration.height}, "
            f"the camera delivers {width}x{height}"
        )
    return CameraSpec(
        name,
        width,
        height,
        calibration.fx,
        calibration.fy,
        calibration.cx,
        calibration.cy,
        calibration.distortion,
    )
