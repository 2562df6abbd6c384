"""How an episode is drawn in Rerun: the one layout shared by `apprentice view` (a bag or an
eval folder, offline) and the live `--view` subscriber.

Timeline `time` is the message's own header stamp in seconds, logged as a Rerun timestamp
(never the arrival time). Entity paths:

- `cameras/<cam>`                  rr.Image (rgb) or rr.EncodedImage (JPEG)
- `joints/<arm>/<joint>/state`     rr.Scalars, the follower's joint_states position
- `joints/<arm>/<joint>/command`   rr.Scalars, /<arm>/commands or joint_commands
- `joints/<arm>/<joint>/leader`    rr.Scalars, the leader paired with this follower
- `joints/<arm>/<joint>/chunk`     rr.Scalars styled as rr.SeriesPoints: every predicted chunk,
                                   point k at its own time (chunks overlap in time: a line
                                   would join predictions of different inferences)
- `task/stage`, `task/success`     rr.Scalars (success 0/1)
- `quality`                        rr.TextLog, the quality gate's findings
- `robot/...`                      the scene's MuJoCo model posed from the joint states (3D)

Every function takes the `rr.RecordingStream` to log to; nothing here uses the global
recording. Pure: rerun and numpy, no rclpy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import rerun as rr
import rerun.blueprint as rrb

TIMELINE = "time"
CAMERAS = "cameras"
JOINTS = "joints"
TASK = "task"
QUALITY = "quality"
ROBOT = "robot"
KINDS = ("state", "command", "leader", "chunk")
# Plot colours: what the arm did, what it was told, what the leader (the person) did, what
# the policy predicted.
COLORS = {
    "state": (31, 119, 180),
    "command": (255, 127, 14),
    "leader": (44, 160, 44),
    "chunk": (214, 39, 40),
}


def camera_path(cam: str) -> str:
    return f"{CAMERAS}/{cam}"


def joint_path(arm: str, joint: str, kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"joint series kind {kind!r} is not one of {', '.join(KINDS)}")
    return f"{JOINTS}/{arm}/{joint}/{kind}"


def set_time(rec: rr.RecordingStream, t: float) -> None:
    """Sets the `time` timeline to a header stamp `t` (seconds)."""
    rec.set_time(TIMELINE, timestamp=float(t))


def declare_joints(rec: rr.RecordingStream, arm: str, names: Sequence[str],
                   kinds: Sequence[str] = ("state", "command", "leader")) -> None:
    """Logs each series' colour and legend name once (static), so every view of the layout
    draws state, command and leader alike. Optional: the series show without it."""
    for joint in names:
        for kind in kinds:
            rec.log(joint_path(arm, joint, kind),
                    rr.SeriesLines(colors=[COLORS[kind]], names=[kind]), static=True)


def declare_chunks(rec: rr.RecordingStream, arm: str, names: Sequence[str],
                   marker_size: float = 1.5) -> None:
    """The `chunk` series as points (static), in the chunk colour."""
    for joint in names:
        rec.log(joint_path(arm, joint, "chunk"),
                rr.SeriesPoints(colors=[COLORS["chunk"]], names=["chunk"],
                                marker_sizes=[marker_size]), static=True)  # fmt: skip


def log_joints(rec: rr.RecordingStream, arm: str, names: Sequence[str],
               positions: Sequence[float] | np.ndarray, t: float, kind: str) -> None:
    """One sample of an arm's joints (rad, or the gripper's unit) at header stamp `t`."""
    positions = np.asarray(positions, dtype=np.float64).reshape(-1)
    if len(positions) != len(names):
        raise ValueError(f"{arm} {kind}: {len(positions)} positions for {len(names)} joints")
    set_time(rec, t)
    for joint, q in zip(names, positions, strict=True):
        rec.log(joint_path(arm, joint, kind), rr.Scalars(q))


def log_joint_columns(rec: rr.RecordingStream, arm: str, names: Sequence[str],
                      times: np.ndarray, positions: np.ndarray, kind: str) -> None:
    """A whole series at once: `times` (N,) header stamps in s, `positions` (N, J) in the
    order of `names`. The same entities as N calls of `log_joints`, sent as columns."""
    times = np.asarray(times, dtype=np.float64)
    positions = np.asarray(positions, dtype=np.float64)
    if positions.shape != (len(times), len(names)):
        raise ValueError(f"{arm} {kind}: positions {positions.shape} for {len(times)} stamps "
                         f"and {len(names)} joints")
    if len(times) == 0:
        return
    index = [rr.TimeColumn(TIMELINE, timestamp=times)]
    for j, joint in enumerate(names):
        rec.send_columns(joint_path(arm, joint, kind), indexes=index,
                         columns=rr.Scalars.columns(scalars=positions[:, j]))


def log_chunk(rec: rr.RecordingStream, arm: str, names: Sequence[str], t: float,
              chunk_times: np.ndarray, chunk: np.ndarray) -> None:
    """A policy's predicted chunk, inferred at stamp `t`: `chunk` (H, J) targets for the
    stamps `chunk_times` (H,). Each joint's prediction is logged on the `chunk` entity at the
    times it is for, so the plot draws it beside what the arm then did."""
    chunk = np.asarray(chunk, dtype=np.float64)
    chunk_times = np.asarray(chunk_times, dtype=np.float64)
    if chunk.shape != (len(chunk_times), len(names)):
        raise ValueError(f"{arm} chunk at {t}: shape {chunk.shape} for {len(chunk_times)} "
                         f"stamps and {len(names)} joints")
    log_joint_columns(rec, arm, names, chunk_times, chunk, "chunk")


def log_image(rec: rr.RecordingStream, cam: str, image: np.ndarray, t: float) -> None:
    """An rgb8 frame (H, W, 3), or a mono8 one (H, W), at its header stamp."""
    set_time(rec, t)
    rec.log(camera_path(cam), rr.Image(image, color_model="RGB" if image.ndim == 3 else "L"))


def log_jpeg(rec: rr.RecordingStream, cam: str, data: bytes, t: float) -> None:
    """A JPEG frame (sensor_msgs/CompressedImage data) at its header stamp, undecoded."""
    set_time(rec, t)
    rec.log(camera_path(cam), rr.EncodedImage(contents=bytes(data), media_type="image/jpeg"))


def log_jpeg_columns(rec: rr.RecordingStream, cam: str, times: np.ndarray,
                     frames: Sequence[bytes]) -> None:
    """Many JPEG frames at once (the same entities as `log_jpeg` per frame)."""
    if len(times) != len(frames):
        raise ValueError(f"{cam}: {len(frames)} frames for {len(times)} stamps")
    if len(frames) == 0:
        return
    rec.send_columns(
        camera_path(cam),
        indexes=[rr.TimeColumn(TIMELINE, timestamp=np.asarray(times, dtype=np.float64))],
        columns=rr.EncodedImage.columns(blob=[bytes(f) for f in frames],
                                        media_type=["image/jpeg"] * len(frames)))


def log_task(rec: rr.RecordingStream, stage: int | None, success: bool | None,
             t: float) -> None:
    """The task's stage and/or success (either may be None: each has its own topic)."""
    set_time(rec, t)
    if stage is not None:
        rec.log(f"{TASK}/stage", rr.Scalars(float(stage)))
    if success is not None:
        rec.log(f"{TASK}/success", rr.Scalars(1.0 if success else 0.0))


def log_quality(rec: rr.RecordingStream, text: str, t: float, level: str = "WARN") -> None:
    """One finding of the quality gate, at the time it refers to (the episode's start for a
    whole-episode finding)."""
    set_time(rec, t)
    rec.log(QUALITY, rr.TextLog(text, level=level))


def blueprint(arms: Mapping[str, Sequence[str]] | Sequence[str],
              cameras: Sequence[str], robot: bool = True) -> rrb.Blueprint:
    """The default screen: cameras and the 3D robot on the left; on the right one tab per
    arm (a plot per joint: state, command, leader, chunk), the task and the quality log.
    `arms` maps arm → joint names (a plot per joint) or lists arm names (a plot per arm)."""
    left: list = [rrb.Spatial2DView(origin=camera_path(c), name=c) for c in cameras]
    if robot:
        left.append(rrb.Spatial3DView(origin=ROBOT, name="robot"))
    tabs = []
    for arm in arms:
        joints = arms[arm] if isinstance(arms, Mapping) else ()
        if joints:
            tabs.append(rrb.Grid(*[rrb.TimeSeriesView(origin=f"{JOINTS}/{arm}/{j}", name=j)
                                   for j in joints], name=arm))
        else:
            tabs.append(rrb.TimeSeriesView(origin=f"{JOINTS}/{arm}", name=arm))
    right = [rrb.Tabs(*tabs)] if tabs else []
    right.append(rrb.Horizontal(rrb.TimeSeriesView(origin=TASK, name="task"),
                                rrb.TextLogView(origin=QUALITY, name="quality")))
    columns = []
    if left:
        columns.append(rrb.Vertical(*left))
    columns.append(rrb.Vertical(*right, row_shares=[3, 1] if tabs else None))
    return rrb.Blueprint(rrb.Horizontal(*columns, column_shares=[1, 2] if left else None),
                         collapse_panels=False)
