"""LeRobot's MP4 videos with PyAV: decode an episode's frames at its timestamps, encode frames,
join episode videos into one file.

Decoding converts each frame to RGB with FFmpeg's swscale (`to_ndarray(format="rgb24")`), as
LeRobot's own decoders do; a frame is taken when its presentation time is within half a frame
period of the one asked for (LeRobot itself asks for 1e-4 s: the files it writes hold frames at
exactly k / fps). Encoding uses LeRobot's defaults: SVT-AV1 (`libsvtav1`), yuv420p, a keyframe
every 2 frames (g=2: its loader seeks to any frame), crf 30; or H.264 (`libx264`) with the same
settings.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import numpy as np

from apprentice.interop.lerobot_format import LeRobotFormatError

CODECS = {"av1": "libsvtav1", "h264": "libx264"}
CRF = 30
GOP = 2
AV1_PRESET = 12  # lerobot's LIBSVTAV1_DEFAULT_PRESET (SVT-AV1 4.x maps it to 11)
PIX_FMT = "yuv420p"


class VideoFrames:
    """The frames of one video file from `start_s` on, asked for in increasing time."""

    def __init__(self, path: Path, start_s: float, fps: float) -> None:
        import av

        self.path = path
        self._tol = 0.5 / fps
        if not path.is_file():
            raise LeRobotFormatError(f"{path}: missing")
        try:
            self._container = av.open(str(path))
            stream = self._container.streams.video[0]
            if start_s > 0:  # to the keyframe at or before it (g=2 in LeRobot's files)
                self._container.seek(int(start_s / stream.time_base), stream=stream)
            self._frames = self._container.decode(stream)
        except (av.error.FFmpegError, IndexError) as e:
            raise LeRobotFormatError(f"{path}: not a readable video: {e}") from e
        self._start = start_s
        self._current = None  # (time, frame)

    def at(self, t: float) -> np.ndarray:
        """(H, W, 3) uint8 RGB: the frame at `start_s + t` (s), within half a frame period."""
        import av

        target = self._start + t
        try:
            while self._current is None or self._current[0] < target - self._tol:
                frame = next(self._frames)
                self._current = (float(frame.time), frame)
        except StopIteration:
            raise LeRobotFormatError(
                f"{self.path}: the video ends before {target:.4f} s (a frame the parquet lists)"
            ) from None
        except av.error.FFmpegError as e:
            raise LeRobotFormatError(
                f"{self.path}: decoding failed near {target:.3f} s: {e}"
            ) from e
        time, frame = self._current
        if abs(time - target) > self._tol:
            raise LeRobotFormatError(
                f"{self.path}: no frame at {target:.4f} s (the nearest is at {time:.4f} s)"
            )
        return frame.to_ndarray(format="rgb24")

    def close(self) -> None:
        self._container.close()


class VideoWriter:
    """Appends RGB frames to one MP4 at a fixed fps; `frames` counts them (pts = frame / fps).

    SVT-AV1 through FFmpeg hands back at most one packet per frame sent, so frames it has not
    finished pile up inside it (~50 after a few hundred frames when it keeps up); when the
    encoder's threads get little CPU the pile reaches its picture pool and `send_picture` waits
    forever (seen here: a hang within 1000 frames under load). So the stream is written in
    segments: once MAX_PENDING frames are pending, the segment's encoder is flushed and a new
    one starts (a keyframe; with GOP 2 every other frame is one anyway), and `close()` joins
    the segments without re-encoding (`concat_videos`). x264 returns packets in step and never
    needs it."""

    MAX_PENDING = 32

    def __init__(self, path: Path, fps: float, hw: tuple[int, int], codec: str) -> None:
        if codec not in CODECS:
            raise LeRobotFormatError(f"codec {codec!r}: one of {sorted(CODECS)}")
        # SVT-AV1 prints its configuration to stderr at every file; errors only (a user's
        # SVT_LOG wins)
        os.environ.setdefault("SVT_LOG", "1")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.fps, self.hw, self.codec = path, fps, hw, codec
        self.frames = 0
        self._segments: list[Path] = []
        self._container = None
        self._stream = None
        self._pending = 0  # frames sent to the open segment's encoder, not yet back as packets

    def _open_segment(self) -> None:
        import av

        segment = self.path.with_name(f".{self.path.stem}.{len(self._segments):04d}.mp4")
        self._segments.append(segment)
        self._container = av.open(str(segment), mode="w")
        options = {"g": str(GOP), "crf": str(CRF)}
        if self.codec == "av1":
            options["preset"] = str(AV1_PRESET)
        rate = Fraction(self.fps).limit_denominator(1001)
        self._stream = self._container.add_stream(CODECS[self.codec], rate=rate, options=options)
        self._stream.pix_fmt = PIX_FMT
        self._stream.height, self._stream.width = self.hw
        self._first = self.frames

    def _close_segment(self) -> None:
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        self._container = self._stream = None
        self._pending = 0

    def add(self, rgb: np.ndarray) -> None:
        import av

        if self._container is None:
            self._open_segment()
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame.pts = self.frames - self._first
        packets = self._stream.encode(frame)
        for packet in packets:
            self._container.mux(packet)
        self.frames += 1
        self._pending += 1 - len(packets)
        if self._pending >= self.MAX_PENDING:
            self._close_segment()

    def close(self) -> None:
        if self._container is not None:
            self._close_segment()
        if len(self._segments) == 1:
            self._segments[0].replace(self.path)
        elif self._segments:
            concat_videos(self._segments, self.path)
            for segment in self._segments:
                segment.unlink()
        self._segments = []


def concat_videos(parts: list[Path], out: Path) -> None:
    """Joins MP4 files of one stream into `out` without re-encoding, each part's timestamps
    after the previous part's duration: FFmpeg's concat demuxer, as LeRobot joins its episode
    videos (`concatenate_video_files`), moov atom first (faststart)."""
    import av

    out.parent.mkdir(parents=True, exist_ok=True)
    listing = out.with_name(f".{out.name}.ffconcat")
    listing.write_text("ffconcat version 1.0\n" + "".join(f"file '{p.resolve()}'\n" for p in parts))
    try:
        with (
            av.open(str(listing), format="concat", options={"safe": "0"}) as src,
            av.open(str(out), mode="w", options={"movflags": "faststart"}) as dst,
        ):
            template = src.streams.video[0]
            stream = dst.add_stream_from_template(template=template, opaque=True)
            stream.time_base = template.time_base
            for packet in src.demux(template):
                if packet.dts is None:  # the demuxer's flush packet
                    continue
                packet.stream = stream
                dst.mux(packet)
    finally:
        listing.unlink(missing_ok=True)
