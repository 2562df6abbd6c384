"""The on-disk layout of a LeRobot dataset, format v3.0 and v2.1 (v2.0 reads as v2.1), read
with pyarrow; the names and paths `lerobot_export` writes.

v3.0 (lerobot 0.4-0.6) — many episodes per file:
    meta/info.json                               codebase_version, fps, features, path templates
    meta/stats.json                              per feature: min max mean std count q01..q99
    meta/tasks.parquet                           task (the index) → task_index
    meta/episodes/chunk-000/file-000.parquet     per episode: length, tasks, its rows
                                                 (data/chunk_index, data/file_index,
                                                 dataset_from_index, dataset_to_index), per
                                                 video key videos/<key>/{chunk_index,file_index,
                                                 from_timestamp,to_timestamp}, stats/<feature>/..
    data/chunk-000/file-000.parquet              one row per frame: the features + timestamp,
                                                 frame_index, episode_index, index, task_index
    videos/<key>/chunk-000/file-000.mp4          the episodes' frames back to back; an episode's
                                                 frame at `timestamp` is at from_timestamp +
                                                 timestamp in the file
v2.1 (lerobot 2.x datasets, codebase <= 0.3) — one file per episode:
    meta/info.json, meta/episodes.jsonl ({episode_index, tasks, length}), meta/tasks.jsonl,
    meta/episodes_stats.jsonl, data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet,
    videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4 (starts at 0)
Feature `names` come as a list, a list holding one list, or a map holding one list
({"motors": [...]}, older ALOHA datasets); `feature_names` flattens them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from apprentice.errors import UserValueError

V30, V21 = "v3.0", "v2.1"
READABLE = ("v2.0", V21, V30)
INFO = "meta/info.json"
STATS = "meta/stats.json"
TASKS_V30 = "meta/tasks.parquet"
EPISODES_V30 = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
DATA_V30 = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_V30 = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
CHUNKS_SIZE = 1000  # files per chunk folder (lerobot's DEFAULT_CHUNK_SIZE)
DATA_FILE_MB = 100  # lerobot's DEFAULT_DATA_FILE_SIZE_IN_MB
VIDEO_FILE_MB = 200  # lerobot's DEFAULT_VIDEO_FILE_SIZE_IN_MB
# Columns every LeRobot frame has besides its features (lerobot's DEFAULT_FEATURES).
DEFAULT_FEATURES = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}
STATE, ACTION = "observation.state", "action"


class LeRobotFormatError(UserValueError):
    """A LeRobot dataset that is not there, not readable, or not what its meta says."""


@dataclass(frozen=True)
class VideoSpan:
    """Where one episode's frames of one camera are: `path`, from `start_s` (s, file time)."""

    path: Path
    start_s: float


@dataclass(frozen=True)
class EpisodeMeta:
    index: int
    tasks: tuple[str, ...]
    length: int  # frames
    data_path: Path  # the parquet file holding its rows (filtered by episode_index)
    videos: dict[str, VideoSpan]  # video key → span


def camera_name(key: str) -> str:
    """`observation.images.top` → `top`; `observation.image` → `image`."""
    return key.removeprefix("observation.images.").removeprefix("observation.")


def feature_names(key: str, feature: dict) -> tuple[str, ...]:
    """The names of a vector feature's entries, flattened; `key_<i>` when it has none."""
    size = int(np.prod(feature.get("shape") or [1]))
    names = feature.get("names")
    if isinstance(names, dict) and len(names) == 1:
        names = next(iter(names.values()))
    if isinstance(names, list) and len(names) == 1 and isinstance(names[0], list):
        names = names[0]
    if not (
        isinstance(names, list) and len(names) == size and all(isinstance(n, str) for n in names)
    ):
        names = [f"{key.rsplit('.', 1)[-1]}_{i}" for i in range(size)]
    seen: dict[str, int] = {}
    unique = []
    for n in names:  # a repeated name (["gripper", "gripper"]) gets its position appended
        unique.append(n if n not in seen else f"{n}_{len(unique)}")
        seen[n] = 1
    return tuple(unique)


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise LeRobotFormatError(f"{path}: missing (not a LeRobot dataset folder?)") from None
    except (OSError, ValueError) as e:
        raise LeRobotFormatError(f"{path}: unreadable JSON: {e}") from e


def _jsonl(path: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]
    except FileNotFoundError:
        raise LeRobotFormatError(f"{path}: missing") from None
    except (OSError, ValueError) as e:
        raise LeRobotFormatError(f"{path}: unreadable JSON lines: {e}") from e


def read_parquet(path: Path, columns: list[str] | None = None):
    """A parquet file as a pyarrow Table; a missing or damaged file is a LeRobotFormatError."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.is_file():
        raise LeRobotFormatError(f"{path}: missing")
    try:
        return pq.read_table(path, columns=columns)
    except (OSError, pa.ArrowException) as e:
        raise LeRobotFormatError(f"{path}: not a readable parquet file: {e}") from e


class LeRobotLayout:
    """A local LeRobot dataset folder (as downloaded from the hub): its meta, read and checked."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise LeRobotFormatError(f"{self.root}: no such folder")
        self.info = _json(self.root / INFO)
        self.version = str(self.info.get("codebase_version", ""))
        if self.version not in READABLE:
            raise LeRobotFormatError(
                f"{self.root / INFO}: codebase_version {self.version!r}, readable: {READABLE}"
            )
        fps = self.info.get("fps")
        if not isinstance(fps, int | float) or not fps > 0:
            raise LeRobotFormatError(f"{self.root / INFO}: fps must be a positive number: {fps!r}")
        self.fps = float(fps)
        features = self.info.get("features")
        if not isinstance(features, dict) or not all(
            isinstance(f, dict) for f in features.values()
        ):
            raise LeRobotFormatError(f"{self.root / INFO}: no features map")
        self.features: dict[str, dict] = features
        for key in (STATE, ACTION):
            if key not in features:
                raise LeRobotFormatError(
                    f"{self.root / INFO}: no {key!r} feature (features: {sorted(features)})"
                )
        self.episodes = self._episodes_v30() if self.version == V30 else self._episodes_v21()

    @property
    def robot_type(self) -> str:
        return str(self.info.get("robot_type") or "")

    @property
    def camera_keys(self) -> list[str]:
        """Video and image features (RGB; depth maps are left out)."""
        return [
            k
            for k, f in self.features.items()
            if f.get("dtype") in ("video", "image")
            and not any(
                (f.get("info") or {}).get(k) for k in ("is_depth_map", "video.is_depth_map")
            )
        ]

    def _episodes_v30(self) -> list[EpisodeMeta]:
        import pyarrow as pa

        files = sorted((self.root / "meta/episodes").glob("chunk-*/file-*.parquet"))
        if not files:
            raise LeRobotFormatError(f"{self.root / 'meta/episodes'}: no episode parquet files")
        table = pa.concat_tables(
            [read_parquet(f) for f in files], promote_options="permissive"
        ).to_pylist()
        data_t = self.info.get("data_path", DATA_V30)
        video_t = self.info.get("video_path") or VIDEO_V30
        episodes = []
        for row in sorted(table, key=lambda r: r["episode_index"]):
            try:
                data = data_t.format(
                    chunk_index=row["data/chunk_index"], file_index=row["data/file_index"]
                )
                videos = {}
                for key in self.camera_keys:
                    if self.features[key]["dtype"] != "video":
                        continue
                    path = video_t.format(
                        video_key=key,
                        chunk_index=row[f"videos/{key}/chunk_index"],
                        file_index=row[f"videos/{key}/file_index"],
                    )
                    videos[key] = VideoSpan(
                        self.root / path, float(row[f"videos/{key}/from_timestamp"])
                    )
                episodes.append(
                    EpisodeMeta(
                        int(row["episode_index"]),
                        tuple(row.get("tasks") or ()),
                        int(row["length"]),
                        self.root / data,
                        videos,
                    )  # fmt: skip
                )
            except (KeyError, TypeError, ValueError) as e:
                raise LeRobotFormatError(
                    f"{files[0].parent.parent}: episode row without {e} ({sorted(row)[:8]}...)"
                ) from e
        return episodes

    def _episodes_v21(self) -> list[EpisodeMeta]:
        rows = _jsonl(self.root / "meta/episodes.jsonl")
        chunks = int(self.info.get("chunks_size") or CHUNKS_SIZE)
        data_t, video_t = self.info.get("data_path"), self.info.get("video_path")
        if not isinstance(data_t, str):
            raise LeRobotFormatError(f"{self.root / INFO}: no data_path")
        episodes = []
        for row in sorted(rows, key=lambda r: r.get("episode_index", -1)):
            try:
                ep = int(row["episode_index"])
                where = {"episode_chunk": ep // chunks, "episode_index": ep}
                videos = {
                    key: VideoSpan(self.root / video_t.format(video_key=key, **where), 0.0)
                    for key in self.camera_keys
                    if self.features[key]["dtype"] == "video" and isinstance(video_t, str)
                }
                episodes.append(
                    EpisodeMeta(
                        ep,
                        tuple(row.get("tasks") or ()),
                        int(row["length"]),
                        self.root / data_t.format(**where),
                        videos,
                    )  # fmt: skip
                )
            except (KeyError, TypeError, ValueError) as e:
                raise LeRobotFormatError(
                    f"{self.root / 'meta/episodes.jsonl'}: bad row {row!r}: {e}"
                ) from e
        return episodes

    def frames(self, ep: EpisodeMeta, table_cache: dict) -> dict[str, np.ndarray]:
        """The episode's rows, by frame_index: timestamp (T,) float64 s, state (T, S) and action
        (T, A) float64, and per image feature (stored in the parquet) its encoded bytes."""
        import pyarrow.compute as pc

        if ep.data_path not in table_cache:  # v3.0: many episodes share a file; keep the last
            table_cache.clear()
            table_cache[ep.data_path] = read_parquet(ep.data_path)
        table = table_cache[ep.data_path]
        needed = ["timestamp", "frame_index", "episode_index", STATE, ACTION]
        missing = [c for c in needed if c not in table.column_names]
        if missing:
            raise LeRobotFormatError(f"{ep.data_path}: no column(s) {missing}")
        rows = table.filter(pc.equal(table["episode_index"], ep.index))
        rows = rows.take(pc.sort_indices(rows["frame_index"]))
        if rows.num_rows != ep.length:
            raise LeRobotFormatError(
                f"{ep.data_path}: episode {ep.index} has {rows.num_rows} rows, the episode meta "
                f"says {ep.length}"
            )
        out = {"timestamp": rows["timestamp"].to_numpy().astype(np.float64)}
        out["frame_index"] = rows["frame_index"].to_numpy()
        for key in (STATE, ACTION):
            values = np.asarray(rows[key].to_pylist(), dtype=np.float64)  # (T, D)
            width = len(feature_names(key, self.features[key]))
            if values.ndim != 2 or values.shape[1] != width:
                raise LeRobotFormatError(
                    f"{ep.data_path}: {key} of episode {ep.index} has shape {values.shape}, "
                    f"info.json says {width} values per frame"
                )
            out[key] = values
        for key in self.camera_keys:
            if self.features[key]["dtype"] == "image":
                out[key] = np.array([cell["bytes"] for cell in rows[key].to_pylist()], dtype=object)
        if not np.all(np.diff(out["timestamp"]) > 0):
            raise LeRobotFormatError(
                f"{ep.data_path}: episode {ep.index}: timestamps do not increase"
            )
        return out


def frame_time(timestamp: float, frame_index: int, fps: float) -> float:
    """The time of a frame: LeRobot's `timestamp` is frame_index / fps stored as float32 (its
    loader checks them within 1e-4 s); when it is within that of the grid the exact grid time is
    taken (the float32 is up to ~1 us off at 10 s), else the timestamp as stored."""
    grid = frame_index / fps
    return grid if math.isclose(timestamp, grid, abs_tol=1e-4) else float(timestamp)
