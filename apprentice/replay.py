"""Replaying a recorded episode in simulation: the parts that need no ROS.

    episode = read_episode("data/demos/episode_0003")        # commands, joint states, cameras
    graph = load_graph("sim_aloha").with_parameters(sim_overrides(graph, episode, seed))
    stats = play(schedule(episode.commands), publish, speed=1.0, stop=stop)  # absolute deadlines
    errors = episode_tracking_error(episode, read_episode(replay_bag), speed=1.0)

Times, in s since the epoch: /<arm>/commands (Float64MultiArray, unstamped) by the bag's log
time, i.e. when the recorder received them, which is within a few ms of when the arm driver did;
JointState and Image by their header stamps. Both recordings are put on one timeline by
subtracting each one's first command time, so the original and its replay (recorded the same
way by the replay node) are compared sample for sample on the as-of grid of apprentice.resample.
"""

from __future__ import annotations

import importlib.util
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from apprentice.dataset.bag import EpisodeBag, JointSeries
from apprentice.dataset.config import BOOL, FLOAT64_ARRAY, IMAGE, JOINT_STATE
from apprentice.graph import Graph
from apprentice.resample import asof_indices, control_grid

SUCCESS_TOPIC = "/sim/success"

# One namespace segment: /left/joint_states is a follower, /leader/left/joint_states is not.
_COMMANDS = re.compile(r"^/([^/]+)/commands$")
_JOINTS = re.compile(r"^/([^/]+)/joint_states$")
_CAMERA = re.compile(r"^/cameras/([^/]+)/image_raw$")


# One stream: stamps (N,) s since the epoch, ascending; values (N, J); column names (JointState).
Series = JointSeries


@dataclass(frozen=True)
class Episode:
    path: Path
    custom_data: dict[str, str]
    commands: dict[str, Series]  # arm → /<arm>/commands, by log time
    joints: dict[str, Series]  # arm → /<arm>/joint_states positions, by header stamp
    cameras: dict[str, tuple[int, int]]  # name → (height, width) of /cameras/<name>/image_raw
    success: Series | None  # /sim/success (values (N, 1) of 0/1) when the bag has it

    @property
    def t0(self) -> float:
        """Time of the first command, s since the epoch: the origin of the episode timeline."""
        if not self.commands:
            raise ValueError(f"{self.path}: no /<arm>/commands recorded")
        return min(float(s.stamps[0]) for s in self.commands.values())

    @property
    def command_span(self) -> float:
        """s from the first command to the last."""
        return max(float(s.stamps[-1]) for s in self.commands.values()) - self.t0

    def succeeded(self) -> bool | None:
        """Whether /sim/success was true at any time from the first command on (None when
        the bag has no /sim/success)."""
        if self.success is None:
            return None
        after = self.success.stamps >= self.t0
        return bool(np.any(self.success.values[after, 0] > 0))


def read_episode(bag: str | Path) -> Episode:
    """The streams a replay needs from an episode bag (read, CRC-checked, by the dataset's
    reader); camera sizes from each first image."""
    eb = EpisodeBag(bag)
    recorded = {t: ty for t, ty in eb.topics.items() if eb.counts.get(t)}

    def named(pattern: re.Pattern[str], msgtype: str) -> dict[str, str]:  # name → topic
        return {m[1]: t for t, ty in recorded.items() if ty == msgtype and (m := pattern.match(t))}

    commands, joints = named(_COMMANDS, FLOAT64_ARRAY), named(_JOINTS, JOINT_STATE)
    success = [SUCCESS_TOPIC] if recorded.get(SUCCESS_TOPIC) == BOOL else []
    series, _ = eb.read([*commands.values(), *joints.values(), *success], [], (1, 1))
    return Episode(
        path=eb.path,
        custom_data=eb.custom_data,
        commands={arm: series[t] for arm, t in commands.items()},
        joints={arm: series[t] for arm, t in joints.items()},
        cameras={cam: eb.image_hw(t) for cam, t in named(_CAMERA, IMAGE).items()},
        success=series.get(SUCCESS_TOPIC),
    )


def episode_seed(custom_data: dict[str, str], flag: int | None) -> int:
    """The sim seed: the --seed flag when given (to replay on another seed), else the bag's."""
    if flag is not None:
        return flag
    if "seed" not in custom_data:
        raise ValueError("the episode's metadata (custom_data) has no 'seed': pass --seed")
    return int(custom_data["seed"])


def sim_overrides(graph: Graph, episode: Episode, seed: int) -> dict[str, object]:
    """Graph parameters that make the sim match the recording: scene and seed, the recorded
    cameras at the recorded size. Only parameters the graph declares are returned."""
    want: dict[str, object] = {"seed": seed}
    if "scene" in episode.custom_data:
        want["scene"] = episode.custom_data["scene"]
    if episode.cameras:
        want["cameras"] = sorted(episode.cameras)
        height, width = next(iter(episode.cameras.values()))
        want["image_width"], want["image_height"] = width, height
    declared = {k for p in graph.processes for k in p.parameters}
    return {k: v for k, v in want.items() if k in declared}


@dataclass(frozen=True)
class Command:
    t: float  # s after the episode's first command, at speed 1
    arm: str
    values: np.ndarray  # (J,) joint order of /<arm>/joint_states


def schedule(commands: dict[str, Series]) -> list[Command]:
    """Every arm's commands merged into one list, in time order (ties by arm name)."""
    if not commands:
        return []
    t0 = min(float(s.stamps[0]) for s in commands.values())
    out = [
        Command(float(t) - t0, arm, v)
        for arm, s in commands.items()
        for t, v in zip(s.stamps, s.values, strict=True)
    ]
    out.sort(key=lambda c: (c.t, c.arm))
    return out


@dataclass
class PlaybackStats:
    published: int = 0
    late: int = 0  # commands published more than `late_after` past their deadline
    max_lateness_s: float = 0.0
    stopped: bool = False  # stop was set before the last command


def play(
    commands: list[Command],
    publish: Callable[[str, np.ndarray], None],
    speed: float,
    stop: threading.Event,
    *,
    clock: Callable[[], float] = time.monotonic,
    late_after: float = 0.005,
) -> PlaybackStats:
    """Calls publish(arm, values) for each command at its recorded time / speed, measured
    from now on absolute deadlines (no drift). A late command is published at once, not
    dropped: the recorded ones are what the robot got, in order."""
    if not speed > 0:
        raise ValueError(f"speed must be positive, got {speed}")
    stats = PlaybackStats()
    start = clock()
    for c in commands:
        deadline = start + c.t / speed
        if stop.wait(max(0.0, deadline - clock())):
            stats.stopped = True
            break
        publish(c.arm, c.values)
        lateness = clock() - deadline
        stats.published += 1
        stats.late += lateness > late_after
        stats.max_lateness_s = max(stats.max_lateness_s, lateness)
    return stats


@dataclass(frozen=True)
class TrackingError:
    """Replayed minus recorded joint positions on a common grid (rad; m for prismatic)."""

    names: tuple[str, ...]
    rms: np.ndarray  # (J,)
    max: np.ndarray  # (J,) of |error|
    samples: int  # grid points where both streams had a fresh sample
    span: tuple[float, float]  # s on the episode timeline (0 = first command)

    def as_dict(self) -> dict[str, object]:
        return {
            "samples": self.samples,
            "span_s": list(self.span),
            "joints": {
                n: {"rms": float(r), "max": float(m)}
                for n, r, m in zip(self.names, self.rms, self.max, strict=True)
            },
        }


def tracking_error(
    recorded: Series,
    replayed: Series,
    *,
    recorded_t0: float,
    replayed_t0: float,
    speed: float = 1.0,
    rate_hz: float = 100.0,
    max_age: float = 0.05,
) -> TrackingError:
    """Error of the replay against the recording, on a grid at rate_hz over the span both
    cover (from the first command on). Replay times are scaled by speed onto the recorded
    timeline. max_age (s, each stream in its own time) is the as-of freshness bound."""
    cols = [_column(replayed.names, n) for n in recorded.names] if recorded.names else None
    rep_values = replayed.values if cols is None else replayed.values[:, cols]  # (M, J)
    if rep_values.shape[1] != recorded.values.shape[1]:
        raise ValueError(
            f"recorded has {recorded.values.shape[1]} joints, replayed {rep_values.shape[1]}"
        )
    rec_t = recorded.stamps - recorded_t0
    rep_t = (replayed.stamps - replayed_t0) * speed
    start = max(0.0, float(rec_t[0]), float(rep_t[0]))
    end = min(float(rec_t[-1]), float(rep_t[-1]))
    grid = control_grid(start, end, rate_hz) if end >= start else np.zeros(0)
    i, ok_i = asof_indices(rec_t, grid, max_age)
    j, ok_j = asof_indices(rep_t, grid, max_age * speed)
    ok = ok_i & ok_j
    if not ok.any():
        raise ValueError("the recorded and replayed streams have no fresh samples in common")
    err = rep_values[j[ok]] - recorded.values[i[ok]]  # (Q, J)
    return TrackingError(
        names=recorded.names or tuple(f"joint_{k}" for k in range(err.shape[1])),
        rms=np.sqrt(np.mean(err**2, axis=0)),
        max=np.abs(err).max(axis=0),
        samples=int(ok.sum()),
        span=(float(grid[ok][0]), float(grid[ok][-1])),
    )


def episode_tracking_error(
    recorded: Episode, replayed: Episode, speed: float = 1.0, **kwargs: float
) -> dict[str, TrackingError]:
    """tracking_error for every arm whose joint states both bags hold."""
    return {
        arm: tracking_error(
            recorded.joints[arm],
            replayed.joints[arm],
            recorded_t0=recorded.t0,
            replayed_t0=replayed.t0,
            speed=speed,
            **kwargs,
        )
        for arm in sorted(set(recorded.joints) & set(replayed.joints))
    }


def _column(names: tuple[str, ...], name: str) -> int:
    try:
        return names.index(name)
    except ValueError:
        raise ValueError(f"the replay has no joint {name!r} (it has {list(names)})") from None


# --- video -------------------------------------------------------------------------------


class _StampSpan:
    """The capture stamps of the first and last frame written (s), None before any."""

    first_stamp: float | None = None
    last_stamp: float | None = None

    def _note(self, stamp: float) -> None:
        if self.first_stamp is None:
            self.first_stamp = stamp
        self.last_stamp = stamp
        self.frames += 1


class PyAVVideo(_StampSpan):
    """H.264 (libx264, else MPEG-4 Part 2) through PyAV. Frames keep their capture stamps as
    presentation times (ms), so skipped renders show as pauses, not as a faster video."""

    suffixes = (".mp4", ".mkv", ".mov")

    def __init__(self, path: str | Path, fps: float) -> None:
        import av

        self.path = Path(path)
        self.frames = 0
        self._av = av
        self._fps = fps
        self._container = None
        self._stream = None
        self._t0: float | None = None
        self._last_pts = -1

    def write(self, rgb: np.ndarray, stamp: float) -> None:
        """rgb: (H, W, 3) uint8; stamp: capture time, s."""
        rgb = rgb[: rgb.shape[0] & ~1, : rgb.shape[1] & ~1]  # yuv420p needs even sizes
        if self._container is None:
            self._open(rgb.shape[1], rgb.shape[0])
            self._t0 = stamp
        frame = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        pts = max(round((stamp - self._t0) * 1000), self._last_pts + 1)  # strictly increasing
        frame.pts, frame.time_base = pts, Fraction(1, 1000)
        self._last_pts = pts
        self._container.mux(self._stream.encode(frame))
        self._note(stamp)

    def _open(self, width: int, height: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._container = self._av.open(str(self.path), "w")
        codec = "libx264" if "libx264" in self._av.codecs_available else "mpeg4"
        options = {"preset": "ultrafast"} if codec == "libx264" else {}
        stream = self._container.add_stream(
            codec, rate=Fraction(self._fps).limit_denominator(1000), options=options
        )
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        self._stream = stream

    def close(self) -> int:
        if self._container is not None:
            self._container.mux(self._stream.encode(None))  # flush the encoder
            self._container.close()
            self._container = None
        return self.frames


class OpenCVVideo(_StampSpan):
    """Motion-JPEG in AVI through OpenCV (no PyAV needed). Constant frame rate: stamps are not
    kept, so frames the sim skipped shorten the video."""

    suffixes = (".avi",)

    def __init__(self, path: str | Path, fps: float) -> None:
        import cv2

        self.path = Path(path)
        self.frames = 0
        self._cv2 = cv2
        self._fps = fps
        self._writer = None

    def write(self, rgb: np.ndarray, stamp: float) -> None:
        """rgb: (H, W, 3) uint8; stamp: capture time, s (kept as the span, not per frame)."""
        cv2 = self._cv2
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            size = (rgb.shape[1], rgb.shape[0])
            self._writer = cv2.VideoWriter(
                str(self.path), cv2.VideoWriter_fourcc(*"MJPG"), self._fps, size
            )
            if not self._writer.isOpened():
                raise RuntimeError(f"OpenCV cannot write {self.path}")
        self._writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        self._note(stamp)

    def close(self) -> int:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        return self.frames


VIDEO_BACKENDS: dict[str, type[PyAVVideo] | type[OpenCVVideo]] = {
    "pyav": PyAVVideo,
    "opencv": OpenCVVideo,
}


def open_video(path: str | Path, fps: float, backend: str = "auto") -> PyAVVideo | OpenCVVideo:
    """A video writer. auto: the first backend that writes the path's suffix, PyAV first when
    installed (out.avi → OpenCV MJPG); when none does, the suffix is changed to the chosen
    backend's (out.mp4 → out.avi without PyAV). The writer's .path says where it went."""
    path = Path(path)
    if backend == "auto":
        usable = [n for n in VIDEO_BACKENDS if n != "pyav" or importlib.util.find_spec("av")]
        fits = [n for n in usable if path.suffix.lower() in VIDEO_BACKENDS[n].suffixes]
        backend = (fits or usable)[0]
    cls = VIDEO_BACKENDS[backend]
    if path.suffix.lower() not in cls.suffixes:
        path = path.with_suffix(cls.suffixes[0])
    return cls(path, fps)
