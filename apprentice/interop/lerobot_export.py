"""Episode bags → a LeRobot v3.0 dataset that `lerobot`'s `LeRobotDataset` loads and trains on.

Each episode goes through the dataset builder (`build_cache`, one episode at a time into a
temporary folder): the frames are what `apprentice dataset build` makes of it with the same
config (as-of resampled onto the control grid, cameras decoded and resized), at `fps` = the
control rate and, by default, the first camera's recorded size, but with its idle start kept
(a build of the re-imported bags drops the same frames; dropping them twice would drop more).
Then:
    observation.state   float32 (S,)  the config's state joints, names = their joint names
    action              float32 (A,)  the action joints
    observation.images.<camera>  video (H, W, 3), one MP4 stream per camera (AV1 by default)
    timestamp = frame_index / fps, episode_index, index, task_index (the bag's task label)
Files: data/chunk-000/file-000.parquet (a new file past 100 MB), videos/<key>/chunk-000/
file-000.mp4 (past 200 MB), meta/info.json, meta/stats.json, meta/tasks.parquet,
meta/episodes/chunk-000/file-000.parquet — the layout lerobot 0.6 writes (`lerobot_format`).
Stats: min, max, mean, std, count, q01..q99 per feature; images per channel in [0, 1] over up
to 100 frames per episode (LeRobot samples the same way), from pixel histograms (exact for
uint8, constant memory), on the whole dataset for stats.json.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from apprentice.dataset import DatasetConfig, DatasetError, EpisodeBag, build_cache, find_episodes
from apprentice.dataset.cache import DatasetCache
from apprentice.dataset.config import IMAGE, infer_config
from apprentice.interop.lerobot_format import (
    ACTION,
    CHUNKS_SIZE,
    DATA_FILE_MB,
    DATA_V30,
    DEFAULT_FEATURES,
    EPISODES_V30,
    STATE,
    TASKS_V30,
    V30,
    VIDEO_FILE_MB,
    VIDEO_V30,
    LeRobotFormatError,
)
from apprentice.interop.lerobot_video import (
    AV1_PRESET,
    CRF,
    GOP,
    PIX_FMT,
    VideoWriter,
    concat_videos,
)

QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
IMAGE_SAMPLES = 100  # frames per episode for image stats (LeRobot's sample_indices minimum)


@dataclass
class ExportSummary:
    out: Path
    episodes: int
    frames: int
    fps: float
    codec: str
    image_hw: tuple[int, int]
    cameras: list[str]
    state_names: list[str]
    action_names: list[str]

    def describe(self) -> str:
        return (
            f"{self.out}: LeRobot {V30}, {self.episodes} episodes, {self.frames} frames at "
            f"{self.fps:g} fps, state {self.state_names}, action {self.action_names}, cameras "
            f"{self.cameras} ({self.codec}, {self.image_hw[0]}x{self.image_hw[1]})"
        )


def stats_of(values: np.ndarray) -> dict[str, np.ndarray]:
    """LeRobot's statistics of (N, D) values over N: each (D,), count (1,)."""
    out = {
        "min": values.min(axis=0), "max": values.max(axis=0), "mean": values.mean(axis=0),
        "std": values.std(axis=0), "count": np.array([values.shape[0]]),
    }  # fmt: skip
    for q in QUANTILES:
        out[f"q{round(q * 100):02d}"] = np.quantile(values, q, axis=0)
    return out


def pixel_histogram(frames: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 → (3, 256) counts per channel and value (the image stats' input:
    exact for uint8, and summed over episodes in constant memory)."""
    return np.stack([np.bincount(frames[..., c].reshape(-1), minlength=256) for c in range(3)])


def image_stats(histogram: np.ndarray, n_frames: int) -> dict[str, np.ndarray]:
    """Per channel, in [0, 1], shaped (3, 1, 1) as LeRobot keeps them; count = frames. The
    quantiles are the lowest value whose share of pixels at or below reaches q."""
    values = np.arange(256) / 255.0
    total = histogram.sum(axis=1, keepdims=True)  # (3, 1)
    mean = (histogram * values).sum(axis=1, keepdims=True) / total  # (3, 1)
    var = (histogram * (values - mean) ** 2).sum(axis=1) / total[:, 0]
    seen = histogram > 0
    out = {
        "min": values[seen.argmax(axis=1)], "max": values[255 - seen[:, ::-1].argmax(axis=1)],
        "mean": mean[:, 0], "std": np.sqrt(var),
    }  # fmt: skip
    share = np.cumsum(histogram, axis=1) / total  # (3, 256)
    for q in QUANTILES:
        out[f"q{round(q * 100):02d}"] = values[(share >= q).argmax(axis=1)]
    stats = {k: v.reshape(3, 1, 1) for k, v in out.items()}
    return stats | {"count": np.array([n_frames])}


def _recorded_hw(bag: EpisodeBag, topic: str) -> tuple[int, int]:
    if bag.topics.get(topic) == IMAGE:
        return bag.image_hw(topic)
    # a CompressedImage: read one frame at its own size
    from rosbags.typesys import Stores, get_typestore

    from apprentice.dataset.images import decode_compressed

    store = get_typestore(Stores.ROS2_JAZZY)
    for _, msgtype, message in bag.messages([topic]):
        rgb = decode_compressed(store.deserialize_cdr(message.data, msgtype).data)
        return rgb.shape[0], rgb.shape[1]
    raise DatasetError(f"{bag.mcap_path}: topic {topic} has no messages")


class _Files:
    """Rolls data parquet files and per-camera video files at LeRobot's size limits. Each
    episode's video is encoded into a file of its own, and a video file is their stream-copy
    concatenation (`concat_videos`), as LeRobot makes its files."""

    def __init__(self, root: Path, keys: list[str], fps: float, hw: tuple[int, int], codec: str):
        self.root, self.keys, self.fps, self.hw, self.codec = root, keys, fps, hw, codec
        self.data_at = (0, 0)  # (chunk, file)
        self.data_rows: list[dict] = []
        self.data_bytes = 0
        self.video_at = dict.fromkeys(keys, (0, 0))
        self.parts: dict[str, list[Path]] = {k: [] for k in keys}  # episodes of the open file
        self.frames = dict.fromkeys(keys, 0)  # frames in the open file
        self.videos: dict[str, VideoWriter] = {}
        self._episodes = 0

    @staticmethod
    def _next(at: tuple[int, int]) -> tuple[int, int]:
        chunk, file = at
        return (chunk + 1, 0) if file + 1 >= CHUNKS_SIZE else (chunk, file + 1)

    def _seal(self, key: str) -> None:
        """Concatenates the open file's episode videos into it."""
        if self.parts[key]:
            chunk, file = self.video_at[key]
            path = self.root / VIDEO_V30.format(video_key=key, chunk_index=chunk, file_index=file)
            concat_videos(self.parts[key], path)
            for part in self.parts[key]:
                part.unlink()
        self.parts[key], self.frames[key] = [], 0

    def start_episode(self) -> dict:
        """Where the next episode goes; rolls a file that is past its size limit first."""
        if self.data_bytes >= DATA_FILE_MB * 1e6:
            self.flush_data()
            self.data_at = self._next(self.data_at)
        where: dict = {"data/chunk_index": self.data_at[0], "data/file_index": self.data_at[1]}
        for key in self.keys:
            if sum(p.stat().st_size for p in self.parts[key]) >= VIDEO_FILE_MB * 1e6:
                self._seal(key)
                self.video_at[key] = self._next(self.video_at[key])
            part = self.root / ".episodes" / key / f"{self._episodes:06d}.mp4"
            self.videos[key] = VideoWriter(part, self.fps, self.hw, self.codec)
            chunk, file = self.video_at[key]
            where |= {f"videos/{key}/chunk_index": chunk, f"videos/{key}/file_index": file,
                      f"videos/{key}/from_timestamp": self.frames[key] / self.fps}  # fmt: skip
        self._episodes += 1
        return where

    def end_episode(self, where: dict) -> None:
        for key in self.keys:
            writer = self.videos.pop(key)
            writer.close()
            self.parts[key].append(writer.path)
            self.frames[key] += writer.frames
            where[f"videos/{key}/to_timestamp"] = self.frames[key] / self.fps

    def flush_data(self) -> None:
        if self.data_rows:
            chunk, file = self.data_at
            _write_data(self.root / DATA_V30.format(chunk_index=chunk, file_index=file),
                        self.data_rows)  # fmt: skip
        self.data_rows, self.data_bytes = [], 0

    def close(self) -> None:
        self.flush_data()
        for writer in self.videos.values():  # an episode that failed half way
            writer.close()
        for key in self.keys:
            self._seal(key)
        shutil.rmtree(self.root / ".episodes", ignore_errors=True)


def export_lerobot(
    source: str | Path,
    out: str | Path,
    *,
    config: DatasetConfig | None = None,
    fps: float | None = None,
    codec: str = "av1",
    image_hw: tuple[int, int] | None = None,
    robot_type: str = "",
    include_flagged: bool = False,
    progress: bool = True,
) -> ExportSummary:
    """Writes the LeRobot dataset into `out` (must not exist); see the module docstring."""
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists")
    episodes = find_episodes(source, include_failed=include_flagged)
    first = EpisodeBag(episodes[0].bag_dir)
    cfg = config or infer_config(first.topics)
    if fps is not None:
        cfg = replace(cfg, control_rate_hz=fps)
    if not cfg.cameras:
        raise LeRobotFormatError("the dataset config has no camera: nothing for the videos")
    hw = tuple(image_hw) if image_hw else _recorded_hw(first, cfg.cameras[0].topic)
    if hw[0] % 2 or hw[1] % 2:
        raise LeRobotFormatError(f"image size {hw[0]}x{hw[1]}: yuv420p video needs even sizes")
    # The whole episode: `apprentice dataset build` of a re-import drops the same idle start.
    # Raw frames: the video is the one lossy step (a JPEG store would add another).
    cfg = replace(cfg, image_hw=hw, val_fraction=0.0, trim_idle_start=False, image_store="raw")
    keys = [f"observation.images.{c.name}" for c in cfg.cameras]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        summary = _export(episodes, cfg, tmp, keys, codec, robot_type, progress)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    summary.out = out
    return summary


def _downsample(frames: np.ndarray) -> np.ndarray:
    """LeRobot's image-stats pixels of (n, H, W, 3): every k-th pixel when a side is 300 or
    more (k = side / 150); the frames are up to IMAGE_SAMPLES evenly spaced ones."""
    h, w = frames.shape[1:3]
    step = int(max(h, w) / 150) if max(h, w) >= 300 else 1
    return frames[:, ::step, ::step]


def _export(
    episodes: list,
    cfg: DatasetConfig,
    root: Path,
    keys: list[str],
    codec: str,
    robot_type: str,
    progress: bool,
) -> ExportSummary:
    fps = cfg.control_rate_hz
    if fps != round(fps):
        raise LeRobotFormatError(f"fps {fps:g}: LeRobot datasets have a whole number of fps")
    files = _Files(root, keys, fps, cfg.image_hw, codec)
    tasks: dict[str, int] = {}
    ep_rows: list[dict] = []
    data: list[dict[str, np.ndarray]] = []  # per episode: its parquet columns
    pixels = {k: np.zeros((3, 256), dtype=np.int64) for k in keys}  # image-stats histograms
    sampled = 0
    names: tuple[list[str], list[str]] | None = None
    total = 0
    try:
        for n, source in enumerate(episodes):
            if progress:
                print(f"[{n + 1}/{len(episodes)}] {source.episode_id}", flush=True)
            with tempfile.TemporaryDirectory(dir=root) as tmp:
                cache = build_cache([source], cfg, Path(tmp) / "cache", progress=False)
                if names is None:
                    names = (cache.state_names, cache.action_names)
                elif names != (cache.state_names, cache.action_names):
                    raise LeRobotFormatError(
                        f"episode {source.episode_id}: joints {cache.state_names} / "
                        f"{cache.action_names}, the first episode's {names[0]} / {names[1]}"
                    )
                task = cache.episodes[0].task
                task_index = tasks.setdefault(task, len(tasks))
                row, histograms = _write_episode(files, cache, n, total, task_index, keys)
            row["tasks"] = [task]
            ep_rows.append(row)
            data.append(row.pop("_data"))
            for key in keys:
                pixels[key] += histograms[key]
            total += row["length"]
            sampled += min(row["length"], IMAGE_SAMPLES)
    finally:
        files.close()
    assert names is not None
    features = _features(cfg, keys, names, fps, codec)
    stats = _dataset_stats(data, pixels, sampled)
    _write_meta(root, features, stats, ep_rows, tasks, fps, robot_type)
    return ExportSummary(
        root, len(ep_rows), total, fps, codec, cfg.image_hw, [c.name for c in cfg.cameras],
        names[0], names[1],
    )  # fmt: skip


def _write_episode(
    files: _Files, cache: DatasetCache, episode: int, start: int, task_index: int, keys: list[str]
) -> tuple[dict, dict[str, np.ndarray]]:
    """One cached episode → rows, video frames and its episode-meta row; returns the row and
    per camera the pixel histogram of its image-stats frames."""
    t = cache.n_frames
    where = files.start_episode()
    frame_index = np.asarray(cache.array("frame_index"))  # (T, N)
    sample = np.round(np.linspace(0, t - 1, min(t, IMAGE_SAMPLES))).astype(int)
    histograms = {}  # per camera: (3, 256) over the frames image stats are taken on
    for i, key in enumerate(keys):
        camera = cache.array(f"camera_{i}")  # (F, 3, H, W), read frame by frame
        for k in range(t):
            files.videos[key].add(camera[frame_index[k, i]].transpose(1, 2, 0))
        frames = _downsample(camera[frame_index[sample, i]].transpose(0, 2, 3, 1))
        histograms[key] = pixel_histogram(frames)
    files.end_episode(where)
    state = np.asarray(cache.state, dtype=np.float32)
    action = np.asarray(cache.action, dtype=np.float32)
    data = {
        STATE: state, ACTION: action,
        "timestamp": (np.arange(t) / files.fps).astype(np.float32),
        "frame_index": np.arange(t, dtype=np.int64),
        "episode_index": np.full(t, episode, dtype=np.int64),
        "index": np.arange(start, start + t, dtype=np.int64),
        "task_index": np.full(t, task_index, dtype=np.int64),
    }  # fmt: skip
    files.data_rows.append(data)
    files.data_bytes += sum(v.nbytes for v in data.values())
    row = {"episode_index": episode, "length": t, **where,
           "dataset_from_index": start, "dataset_to_index": start + t}  # fmt: skip
    for key, values in data.items():
        column = values if values.ndim == 2 else values[:, None].astype(np.float64)
        for stat, value in stats_of(column).items():
            row[f"stats/{key}/{stat}"] = value.tolist()
    for key in keys:
        for stat, value in image_stats(histograms[key], len(sample)).items():
            row[f"stats/{key}/{stat}"] = value.tolist()
    row["_data"] = data
    return row, histograms


def _features(
    cfg: DatasetConfig, keys: list[str], names: tuple[list[str], list[str]], fps: float, codec: str
) -> dict:
    h, w = cfg.image_hw
    features: dict = {
        STATE: {"dtype": "float32", "shape": [len(names[0])], "names": list(names[0])},
        ACTION: {"dtype": "float32", "shape": [len(names[1])], "names": list(names[1])},
    }
    for key in keys:  # the info block lerobot 0.6.1 writes for its own encoder settings
        info = {
            "video.height": h, "video.width": w, "video.codec": codec,
            "video.pix_fmt": PIX_FMT, "video.fps": int(fps), "video.channels": 3,
            "has_audio": False, "video.g": GOP, "video.crf": CRF,
        } | ({"video.preset": AV1_PRESET} if codec == "av1" else {}) | {
            "video.fast_decode": 0, "video.video_backend": "pyav", "video.extra_options": {},
            "is_depth_map": False,
        }  # fmt: skip
        features[key] = {
            "dtype": "video", "shape": [h, w, 3], "names": ["height", "width", "channels"],
            "info": info,
        }  # fmt: skip
    features |= {k: dict(v) for k, v in DEFAULT_FEATURES.items()}
    return features


def _dataset_stats(
    data: list[dict[str, np.ndarray]], pixels: dict[str, np.ndarray], n_frames: int
) -> dict:
    """stats.json: every feature over the whole dataset."""
    stats = {}
    for key in data[0]:
        v = np.concatenate([d[key] for d in data]).astype(np.float64)
        stats[key] = stats_of(v if v.ndim == 2 else v[:, None])
    for key, histogram in pixels.items():
        stats[key] = image_stats(histogram, n_frames)
    return stats


def _write_data(path: Path, episodes: list[dict[str, np.ndarray]]) -> None:
    """One data parquet file: vectors as fixed-size float32 lists (what LeRobot's `datasets`
    features make of them), one row group per episode as LeRobot writes them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = None
    try:
        for data in episodes:
            columns = {}
            for key, v in data.items():
                if v.ndim == 2:
                    flat = pa.array(v.reshape(-1), type=pa.float32())
                    columns[key] = pa.FixedSizeListArray.from_arrays(flat, v.shape[1])
                else:
                    columns[key] = pa.array(v)
            table = pa.table(columns)
            table = table.replace_schema_metadata({"huggingface": _hf_features(data)})
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema, compression="snappy")
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()


def _hf_features(data: dict[str, np.ndarray]) -> str:
    """The `huggingface` schema metadata LeRobot's data files carry (its `datasets` features)."""
    features = {}
    for key, v in data.items():
        value = {"dtype": v.dtype.name if v.ndim == 1 else "float32", "_type": "Value"}
        features[key] = value if v.ndim == 1 else {
            "feature": value, "length": v.shape[1], "_type": "List"}  # fmt: skip
    return json.dumps({"info": {"features": features}})


def _json_stats(stats: dict[str, dict[str, np.ndarray]]) -> dict:
    return {k: {s: np.asarray(v).tolist() for s, v in st.items()} for k, st in stats.items()}


def _write_meta(
    root: Path, features: dict, stats: dict, ep_rows: list[dict], tasks: dict[str, int],
    fps: float, robot_type: str,
) -> None:  # fmt: skip
    import pyarrow as pa
    import pyarrow.parquet as pq

    meta = root / "meta"
    meta.mkdir(parents=True, exist_ok=True)
    total = sum(r["length"] for r in ep_rows)
    info = {
        "codebase_version": V30, "robot_type": robot_type or None,
        "total_episodes": len(ep_rows), "total_frames": total, "total_tasks": len(tasks),
        "chunks_size": CHUNKS_SIZE, "data_files_size_in_mb": DATA_FILE_MB,
        "video_files_size_in_mb": VIDEO_FILE_MB, "fps": int(fps),
        "splits": {"train": f"0:{len(ep_rows)}"}, "data_path": DATA_V30, "video_path": VIDEO_V30,
        "features": features,
    }  # fmt: skip
    (meta / "info.json").write_text(json.dumps(info, indent=4) + "\n")
    (meta / "stats.json").write_text(json.dumps(_json_stats(stats), indent=4) + "\n")
    task_table = pa.table(
        {
            "task_index": pa.array(list(tasks.values()), type=pa.int64()),
            "task": pa.array(list(tasks)),
        }  # fmt: skip
    )
    # pandas' index column, as LeRobot's `tasks.to_parquet` writes it (read back by pandas)
    pandas_meta = {
        "index_columns": ["task"], "column_indexes": [], "columns": [
            {"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
             "numpy_type": "int64", "metadata": None},
            {"name": "task", "field_name": "task", "pandas_type": "unicode",
             "numpy_type": "object", "metadata": None},
        ], "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.3.3",
    }  # fmt: skip
    task_table = task_table.replace_schema_metadata({"pandas": json.dumps(pandas_meta)})
    pq.write_table(task_table, root / TASKS_V30)
    rows = [r | {"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0} for r in ep_rows]
    path = root / EPISODES_V30.format(chunk_index=0, file_index=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
