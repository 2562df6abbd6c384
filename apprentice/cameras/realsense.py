"""Intel RealSense cameras through pyrealsense2: color, and depth aligned to color on request.

Stamps: librealsense's global time (option global_time_enabled) maps the camera's hardware
clock onto the host's system clock in ms, corrected for USB transfer jitter and drift, so
`get_timestamp()` in the global_time (or system_time) domain is the capture time on the host
clock; it is kept as the stamp (`stamp_source` "device"). A sensor without global time
reports its bare hardware clock: then the arrival time minus one frame period is used
(`stamp_source` "arrival").

A recording (.db3, as librealsense 2.59 writes them, or .bag) instead of a serial number plays
it back through the same pipeline, with the recorded stamps and pixels.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import numpy as np
import pyrealsense2 as rs

from apprentice.cameras import CapturedCamera, LatestFrame, check_calibration
from apprentice.robot_io import CameraSpec, Frame

log = logging.getLogger(__name__)

RECORDING_SUFFIXES = (".db3", ".bag")
HOST_CLOCK_DOMAINS = (rs.timestamp_domain.global_time, rs.timestamp_domain.system_time)


@dataclass(frozen=True)
class DepthFrame(Frame):
    """A color frame with the depth image aligned to it, pixel for pixel."""

    depth: np.ndarray  # (H, W) uint16, multiply by depth_scale for m; 0 = no depth
    depth_scale: float  # m per depth unit


@dataclass(frozen=True)
class RealSenseConfig:
    device: str = ""  # serial number; "" = the first camera; or a recording to play back
    name: str = "realsense"
    width: int = 640
    height: int = 480
    fps: float = 30.0
    depth: bool = False  # also stream depth (same size) and align it to color
    # Playback: pace frames by their stamps; False: as fast as the capture thread takes them
    # (none lost in the pipeline, though a slow reader still sees only the newest).
    real_time: bool = True
    loop: bool = False  # playback: start over at the end

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0 or self.fps <= 0:
            raise ValueError(f"camera {self.name}: width, height and fps must be positive")

    @property
    def is_recording(self) -> bool:
        return self.device.endswith(RECORDING_SUFFIXES)


def spec_from_intrinsics(name: str, intr: rs.intrinsics) -> CameraSpec:
    # RealSense color streams use Brown-Conrady (= OpenCV plumb_bob) or none (all zeros).
    return CameraSpec(
        name, intr.width, intr.height, intr.fx, intr.fy, intr.ppx, intr.ppy, tuple(intr.coeffs)
    )


class RealSenseCamera(CapturedCamera):
    """A RealSense color (+ aligned depth) camera on apprentice.robot_io.Camera.

    Intrinsics come from the device's factory calibration unless `calibration` is given.
    """

    def __init__(self, cfg: RealSenseConfig, calibration: CameraSpec | None = None) -> None:
        self.cfg = cfg
        self._pipeline = rs.pipeline()
        rs_cfg = rs.config()
        if cfg.is_recording:
            rs_cfg.enable_device_from_file(cfg.device, repeat_playback=cfg.loop)
        elif cfg.device:
            rs_cfg.enable_device(cfg.device)
        fps = round(cfg.fps)
        rs_cfg.enable_stream(rs.stream.color, cfg.width, cfg.height, rs.format.rgb8, fps)
        if cfg.depth:
            rs_cfg.enable_stream(rs.stream.depth, cfg.width, cfg.height, rs.format.z16, fps)
        # Settings go on the resolved device before streaming starts (start() reuses it): the
        # first frame then has global time, and switching playback pacing later re-seeks.
        resolved = rs_cfg.resolve(rs.pipeline_wrapper(self._pipeline))
        color = resolved.get_stream(rs.stream.color).as_video_stream_profile()
        own = spec_from_intrinsics(cfg.name, color.get_intrinsics())
        self._spec = (
            own
            if calibration is None
            else check_calibration(calibration, cfg.name, cfg.width, cfg.height)
        )
        device = resolved.get_device()
        self._playback = device.as_playback() if cfg.is_recording else None
        if self._playback is not None:
            self._playback.set_real_time(cfg.real_time)
        self.depth_scale = 0.0
        for sensor in device.query_sensors():
            if sensor.supports(rs.option.global_time_enabled):
                sensor.set_option(rs.option.global_time_enabled, 1.0)
            if cfg.depth and sensor.supports(rs.option.depth_units):
                self.depth_scale = sensor.get_option(rs.option.depth_units)
        self._pipeline.start(rs_cfg)
        serial = rs.camera_info.serial_number
        self.serial = device.get_info(serial) if device.supports(serial) else ""
        self.stamp_source: str | None = None  # "device" or "arrival", set by the first frame
        self.timeouts = 0
        # Frames the device numbered but the pipeline never handed over (USB loss, a playback
        # or syncer drop): gaps in the color frame numbers after the first frame.
        self.lost_upstream = 0
        # Framesets with color but no depth or depth but no color (the syncer gave up waiting
        # for the partner): counted (the camera node logs them), never delivered.
        self.unpaired = 0
        self._align = rs.align(rs.stream.color) if cfg.depth else None
        self._slot = LatestFrame()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._capture, name=f"rs-{cfg.name}", daemon=True)
        self._thread.start()

    def _capture(self) -> None:
        period = 1.0 / self.cfg.fps
        seq = 0
        last_number: int | None = None
        try:
            while not self._stop.is_set():
                ok, frames = self._pipeline.try_wait_for_frames(500)
                arrival = time.time()
                if not ok:
                    if self._ended():
                        self._slot.fail(EOFError(f"camera {self.cfg.name}: end of recording"))
                        return
                    self.timeouts += 1
                    continue
                if self._align is not None:
                    frames = self._align.process(frames)
                color = frames.get_color_frame()
                if not color:
                    self.unpaired += 1  # depth alone: depth is only delivered with its color
                    continue
                number = color.get_frame_number()
                if last_number is not None and number > last_number:
                    self.lost_upstream += number - last_number - 1
                last_number = number
                depth = frames.get_depth_frame() if self._align is not None else None
                if self._align is not None and not depth:
                    self.unpaired += 1
                    continue
                # Copies: librealsense recycles the frame's memory once the frame is released.
                image = np.asanyarray(color.get_data()).copy()  # (H, W, 3) uint8 RGB
                stamp = self._stamp(color, arrival, period)
                seq += 1
                if depth is None:
                    self._slot.put(Frame(stamp, image, seq))
                else:
                    d = np.asanyarray(depth.get_data()).copy()  # (H, W) uint16
                    self._slot.put(DepthFrame(stamp, image, seq, d, self.depth_scale))
        finally:
            self._pipeline.stop()
            self._slot.fail(EOFError(f"camera {self.cfg.name}: closed"))

    def _ended(self) -> bool:
        return (
            self._playback is not None
            and self._playback.current_status() == rs.playback_status.stopped
        )

    def _stamp(self, frame: rs.frame, arrival: float, period: float) -> float:
        on_host_clock = frame.get_frame_timestamp_domain() in HOST_CLOCK_DOMAINS
        if self.stamp_source is None:
            self.stamp_source = "device" if on_host_clock else "arrival"
            log.info("camera %s: stamps from %s", self.cfg.name, self.stamp_source)
        if on_host_clock:
            return frame.get_timestamp() / 1e3  # ms → s
        return arrival - period
