"""An eval episode (a folder `apprentice eval` wrote) drawn in the shared layout
(`apprentice.viz.layout`): what the policy predicted at each inference beside what the arm did.

From rollouts/episode_NNN.npz (`apprentice_ros.eval_session.save_rollout`):
  <arm>_joints_t, <arm>_joints           joints/<arm>/<joint>/state (header stamps)
  <arm>_commands_t, <arm>_commands       joints/<arm>/<joint>/command (arrival times: forward
                                         commands carry no stamp)
  <arm>_chunk_t, <arm>_chunks,           joints/<arm>/<joint>/chunk: every inference's chunk,
  <arm>_chunk_offsets                    point k at its observation stamp + offsets[k], drawn
                                         as points (consecutive chunks overlap in time: a line
                                         would join predictions of different inferences)
  success_t/success, stage_t/stage       task/success, task/stage (arrival times)
  <cam>_frames_t                         the video's frame times
From videos/episode_NNN.avi (or .mp4): cameras/eval, each frame re-encoded as JPEG at its
stamp. The 3D robot: the scene results.json names, posed by the joint states.

Older eval folders lack some keys; what is missing is said (`say`) and left out, never
invented: no chunks; task success at the episode's last joint state (the row's result);
frames without stamps spread over the joint states' time span at the video's rate (said).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rerun as rr

from apprentice.errors import UserPathError, UserValueError
from apprentice.viz import layout

CAMERA = "eval"  # cameras/eval: the episode's video (the policy's camera, enlarged to watch)


@dataclass
class RolloutView:
    episode: int
    arms: dict[str, tuple[str, ...]]
    cameras: list[str]
    scene: str | None
    # rows logged per entity kind: "<arm>/state", "<arm>/command", "<arm>/chunk" (per joint),
    # "cameras/eval", "task/success", "task/stage"
    counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def eval_rows(folder: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(per-episode rows, results) of an eval folder: results.json, else the session's
    episodes.json (a run that stopped early has only that)."""
    results_file, episodes_file = folder / "results.json", folder / "episodes.json"
    if results_file.exists():
        results = json.loads(results_file.read_text())
        return list(results.get("rows", [])), results
    if episodes_file.exists():
        return list(json.loads(episodes_file.read_text())), {}
    raise UserPathError(f"{folder}: not an eval folder (no results.json or episodes.json)")


def find_row(rows: list[dict[str, Any]], episode: int | dict[str, Any], folder: Path) -> dict:
    if isinstance(episode, dict):
        return episode
    for row in rows:
        if row.get("episode") == episode:
            return row
    have = ", ".join(str(r.get("episode")) for r in rows) or "none"
    raise UserValueError(f"{folder}: no episode {episode} (episodes: {have})")


def _file(folder: Path, sub: str, name: str, suffixes: tuple[str, ...], row_path: Any) -> Path:
    """The episode's file in the folder (moved folders keep working), else the row's path."""
    for suffix in suffixes:
        path = folder / sub / f"{name}{suffix}"
        if path.exists():
            return path
    if row_path and Path(row_path).exists():
        return Path(row_path)
    raise UserPathError(f"{folder / sub / name}{suffixes[0]}: no such file")


def _arms(z: Any, results: dict[str, Any]) -> list[str]:
    found = [k[: -len("_joints_t")] for k in z.files if k.endswith("_joints_t")]
    order = (results.get("policy_params") or {}).get("arms") or []
    return [a for a in order if a in found] + sorted(a for a in found if a not in order)


def read_video(path: Path) -> tuple[list[bytes], float]:
    """(each frame as JPEG bytes, the container's frame rate)."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise UserPathError(f"{path}: OpenCV cannot read this video")
    fps = float(cap.get(cv2.CAP_PROP_FPS)) or 30.0
    frames = []
    try:
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            ok, jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])
            frames.append(jpeg.tobytes())
    finally:
        cap.release()
    return frames, fps


def log_rollout(rec: rr.RecordingStream, eval_folder: str | Path,
                episode: int | dict[str, Any], max_fps: float = 30.0,
                say: Callable[[str], None] = print) -> RolloutView:  # fmt: skip
    """Logs one eval episode (its index, or its row of results.json) in the layout, blueprint
    included. max_fps: the 3D robot's poses per second at most."""
    folder = Path(eval_folder)
    rows, results = eval_rows(folder)
    row = find_row(rows, episode, folder)
    index = int(row["episode"])
    name = f"episode_{index:03d}"
    npz = _file(folder, "rollouts", name, (".npz",), row.get("rollout"))
    view = RolloutView(index, {}, [], None)

    def note(text: str) -> None:
        view.notes.append(text)
        say(f"{name}: {text}")

    with np.load(npz) as z:
        data = {k: z[k] for k in z.files}
        arms = _arms(z, results)
    if not arms:
        raise UserValueError(f"{npz}: no <arm>_joints_t arrays: not an eval rollout")
    states = []
    for arm in arms:
        names = tuple(str(n) for n in data[f"{arm}_names"])
        view.arms[arm] = names
        for kind, key in (("state", "joints"), ("command", "commands")):
            t, q = data[f"{arm}_{key}_t"], data[f"{arm}_{key}"]
            layout.log_joint_columns(rec, arm, names, t, q, kind)
            view.counts[f"{arm}/{kind}"] = len(t)
        states.append((names, data[f"{arm}_joints_t"], data[f"{arm}_joints"]))
        layout.declare_joints(rec, arm, names, ("state", "command"))
        if f"{arm}_chunks" in data:
            _log_chunks(rec, arm, names, data, view)
        else:
            note(f"{arm}: no predicted chunks in the rollout (recorded before they were kept)")
    joint_t = np.concatenate([s[1] for s in states])
    span = (float(joint_t.min()), float(joint_t.max())) if joint_t.size else (0.0, 0.0)
    _log_task(rec, data, row, span, view, note)
    _log_video(rec, folder, name, row, data, span, view, note)
    if scene := results.get("scene"):
        from apprentice.viz.episode import log_robot

        view.scene = log_robot(rec, scene, states, max_fps, say)
    else:
        note("results.json names no scene: no 3D robot")
    rec.send_blueprint(layout.blueprint(view.arms, view.cameras, robot=view.scene is not None))
    return view


def _log_chunks(rec: rr.RecordingStream, arm: str, names: tuple[str, ...],
                data: dict[str, np.ndarray], view: RolloutView) -> None:  # fmt: skip
    stamps, chunks = data[f"{arm}_chunk_t"], data[f"{arm}_chunks"]  # (C,), (C, H, J)
    offsets = data[f"{arm}_chunk_offsets"]  # (H,)
    if chunks.shape != (len(stamps), len(offsets), len(names)):
        raise UserValueError(f"{arm}: chunks {chunks.shape} for {len(stamps)} stamps, "
                             f"{len(offsets)} offsets, {len(names)} joints")  # fmt: skip
    times = (stamps[:, None] + offsets[None, :]).reshape(-1)  # (C·H,)
    layout.log_joint_columns(rec, arm, names, times, chunks.reshape(-1, len(names)), "chunk")
    layout.declare_chunks(rec, arm, names)  # points, not a line: chunks overlap in time
    view.counts[f"{arm}/chunk"] = len(times)


def _log_task(rec: rr.RecordingStream, data: dict[str, np.ndarray], row: dict[str, Any],
              span: tuple[float, float], view: RolloutView,
              note: Callable[[str], None]) -> None:  # fmt: skip
    if "success_t" in data:
        for key in ("success", "stage"):
            t, v = data[f"{key}_t"], data[key].astype(np.float64)
            if len(t):
                rec.send_columns(f"{layout.TASK}/{key}",
                                 indexes=[rr.TimeColumn(layout.TIMELINE, timestamp=t)],
                                 columns=rr.Scalars.columns(scalars=v))  # fmt: skip
            view.counts[f"task/{key}"] = len(t)
        return
    note("no task messages in the rollout: the row's success and stage at its last joint state")
    layout.log_task(rec, row.get("max_stage"), bool(row.get("success")), span[1])
    view.counts["task/success"] = view.counts["task/stage"] = 1


def _log_video(rec: rr.RecordingStream, folder: Path, name: str, row: dict[str, Any],
               data: dict[str, np.ndarray], span: tuple[float, float], view: RolloutView,
               note: Callable[[str], None]) -> None:  # fmt: skip
    try:
        path = _file(folder, "videos", name, (".avi", ".mp4"), row.get("video"))
    except UserPathError as exc:
        note(f"no video: {exc}")
        return
    frames, fps = read_video(path)
    stamps = next((v for k, v in data.items() if k.endswith("_frames_t")), None)
    if stamps is None or len(stamps) != len(frames):
        have = "no frame stamps" if stamps is None else f"{len(stamps)} frame stamps"
        note(f"{path.name}: {len(frames)} frames, {have}: frames placed at {fps:g} fps from "
             "the first joint state (times estimated)")  # fmt: skip
        stamps = span[0] + np.arange(len(frames)) / fps
    layout.log_jpeg_columns(rec, CAMERA, stamps, frames)
    view.cameras.append(CAMERA)
    view.counts[layout.camera_path(CAMERA)] = len(frames)
