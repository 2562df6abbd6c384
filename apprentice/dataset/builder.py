"""Episode bags → the training cache (`cache.py`): resampled, decoded, resized, split, hashed.

Per episode:
  1. open the bag (metadata.yaml + MCAP summary, whose message counts must agree; a
     truncated file is refused here) and check every configured topic: recorded, of an
     accepted type, not empty;
  2. decode the topics in one checked pass (`bag.py`: each chunk against its index and CRC,
     each topic's count against the summary: a bag that reads short is an error, never a
     smaller dataset); check joint names, and each camera's camera_info (when recorded:
     constant within the episode, and the same in every episode; it goes into the cache
     metadata and the policy card as the camera's "source");
  3. build the control grid from the latest first stamp to the earliest last stamp over all
     streams (`control_grid`), so every stream has started and none has ended;
  4. take each stream's as-of sample at every grid time (`asof_indices`, the rule the policy
     node uses live); a sample older than the stream's max_age_s is an error naming the
     topic and the time, never a silently held value;
  5. append the rows to the cache files (the frames raw or as JPEG: `image_store.py`).
Then: the train/val split by episode, normalization stats on the train frames, and the
data-index hash (sha256 over the resolved config, the split and every MCAP file's sha256;
it goes into the policy card).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from apprentice.dataset.bag import DatasetError, EpisodeBag, ImageSeries, JointSeries
from apprentice.dataset.cache import CACHE_FORMAT, META_FILE, DatasetCache, EpisodeRecord
from apprentice.dataset.config import (
    ACTION_TYPES,
    CAMERA_TYPES,
    FLOAT64_ARRAY,
    JOINT_STATE,
    STATE_TYPES,
    DatasetConfig,
    JointStream,
)
from apprentice.dataset.image_store import (
    ArrayWriter,
    FrameWriter,
    frame_writer,
    new_store,
    open_array,
)
from apprentice.learning.normalize import NORM_MODES, NormStats
from apprentice.resample import asof_indices, control_grid


@dataclass(frozen=True)
class EpisodeSource:
    episode_id: str
    bag_dir: Path


def find_episodes(path: str | Path, *, include_failed: bool = False) -> list[EpisodeSource]:
    """The episode bags under `path`: the path itself when it is a bag; the kept episodes of a
    recording's `index.json` (those that passed the quality gate unless include_failed); else
    every sub-folder holding a bag, sorted by name."""
    path = Path(path)
    if not path.is_dir():
        raise DatasetError(f"{path}: no such folder")
    if (path / "metadata.yaml").exists() or any(path.glob("*.mcap")):
        return [EpisodeSource(path.name, path)]
    if (path / "index.json").exists():
        from apprentice.recording import DatasetIndex

        entries = DatasetIndex(path).list()
        chosen = [
            EpisodeSource(e.episode_id, path / e.bag) for e in entries if e.passed or include_failed
        ]
        if entries and not chosen:  # say why, not "no episodes"
            raise DatasetError(
                f"{path}: all {len(entries)} kept episode(s) were flagged by the quality gate "
                f"(index.json says why); --include-flagged builds from them"
            )
        return chosen
    found = [
        EpisodeSource(d.name, d)
        for d in sorted(path.iterdir())
        if d.is_dir() and ((d / "metadata.yaml").exists() or any(d.glob("*.mcap*")))
    ]
    if not found:
        raise DatasetError(f"{path}: no episode bags found (folders with metadata.yaml + .mcap)")
    return found


@dataclass
class _Episode:
    stamps: np.ndarray  # (T,) grid, s
    state: np.ndarray  # (T, S)
    action: np.ndarray  # (T, A)
    frames: list[np.ndarray]  # per camera (F_n, 3, H, W), only the frames the grid uses
    frame_index: np.ndarray  # (T, N) into `frames`, per camera
    task: str
    sha256: str
    sources: list[dict | None]  # per camera: its camera_info record, None if not recorded
    seed: int | None  # the simulated scene's seed (custom_data); None for a person's demo


def _seed(bag: EpisodeBag) -> int | None:
    seed = str(bag.custom_data.get("seed", ""))
    return int(seed) if seed.lstrip("-").isdigit() else None


def _select(
    bag: EpisodeBag, spec: JointStream, series: JointSeries, names: tuple[str, ...]
) -> np.ndarray:
    """Columns of `series` for the configured joints, by name → (N, J)."""
    assert spec.joints is not None
    missing = [j for j in spec.joints if j not in names]
    if missing:
        raise DatasetError(
            f"{bag.mcap_path}: topic {spec.topic}: joint(s) {missing} not in its joint names "
            f"{list(names)}"
        )
    return series.values[:, [names.index(j) for j in spec.joints]]


def _resample(
    bag: EpisodeBag, topic: str, stamps: np.ndarray, grid: np.ndarray, max_age_s: float
) -> np.ndarray:
    idx, valid = asof_indices(stamps, grid, max_age_s)
    if not valid.all():
        k = int(np.argmin(valid))
        age = grid[k] - stamps[idx[k]] if idx[k] >= 0 else math.inf
        raise DatasetError(
            f"{bag.mcap_path}: topic {topic} is stale at t={grid[k] - grid[0]:.3f} s into the "
            f"episode: newest sample {age * 1e3:.1f} ms old > max_age_s {max_age_s * 1e3:.0f} ms "
            "(a gap in the recording: raise max_age_s for this topic or discard the episode)"
        )
    return idx


def _read_episode(
    source: EpisodeSource, cfg: DatasetConfig, joints: dict[str, tuple[str, ...] | None]
) -> _Episode:
    """One bag → grid-aligned arrays. `joints` maps topic → configured names; entries that are
    None are filled from this bag (the first episode fixes them for the rest)."""
    bag = EpisodeBag(source.bag_dir)
    types = {s.topic: bag.require(s.topic, STATE_TYPES) for s in cfg.state}
    types |= {s.topic: bag.require(s.topic, ACTION_TYPES) for s in cfg.action}
    for c in cfg.cameras:
        bag.require(c.topic, CAMERA_TYPES)
    # Float64MultiArray actions take their joint names from a JointState topic.
    name_sources = {
        s.topic: s.default_names_from for s in cfg.action if types[s.topic] == FLOAT64_ARRAY
    }
    for src in name_sources.values():
        types.setdefault(src, bag.require(src, (JOINT_STATE,)))
    series, images = bag.read(list(types), [c.topic for c in cfg.cameras], cfg.image_hw)

    def names_of(topic: str) -> tuple[str, ...]:
        s = series[topic]
        names = s.names if s.names is not None else series[name_sources[topic]].names
        assert names is not None
        if s.values.shape[1] != len(names):
            raise DatasetError(
                f"{bag.mcap_path}: topic {topic} has {s.values.shape[1]} values per message but "
                f"{name_sources[topic]} names {len(names)} joints {list(names)}"
            )
        return names

    streams = [*cfg.state, *cfg.action]
    for spec in streams:
        if joints[spec.topic] is None:
            joints[spec.topic] = names_of(spec.topic)
    resolved = cfg.with_joints({t: n for t, n in joints.items() if n is not None})
    all_stamps = [series[s.topic].stamps for s in streams] + [i.stamps for i in images.values()]
    start = max(float(s[0]) for s in all_stamps)
    end = min(float(s[-1]) for s in all_stamps)
    grid = control_grid(start, end, cfg.control_rate_hz)  # (T,)
    if grid.size < 2:
        raise DatasetError(
            f"{bag.mcap_path}: the streams overlap for {max(end - start, 0.0):.3f} s, "
            "less than two control steps"
        )

    def rows(specs: tuple[JointStream, ...]) -> np.ndarray:
        cols = []
        for spec in specs:
            s = series[spec.topic]
            idx = _resample(bag, spec.topic, s.stamps, grid, spec.max_age_s)
            cols.append(_select(bag, spec, s, names_of(spec.topic))[idx])  # (T, J)
        return np.concatenate(cols, axis=1)

    state, action = rows(resolved.state), rows(resolved.action)
    cam_idx = [
        _resample(bag, cam.topic, images[cam.topic].stamps, grid, cam.max_age_s)
        for cam in cfg.cameras
    ]
    first = idle_start_steps(action, cfg.idle_threshold) if cfg.trim_idle_start else 0
    grid, state, action = grid[first:], state[first:], action[first:]
    frames, frame_index = [], []
    for cam, idx in zip(cfg.cameras, cam_idx, strict=True):
        img: ImageSeries = images[cam.topic]
        used, inverse = np.unique(idx[first:], return_inverse=True)  # each recorded frame once
        frames.append(img.frames[used])
        frame_index.append(inverse)
    return _Episode(
        stamps=grid,
        state=state,
        action=action,
        frames=frames,
        frame_index=np.stack(frame_index, axis=1) if frame_index else np.zeros((grid.size, 0)),
        task=bag.task,
        sha256=bag.sha256(),
        sources=[images[cam.topic].info for cam in cfg.cameras],
        seed=_seed(bag),
    )


def _check_sources(
    cfg: DatasetConfig, source: EpisodeSource, ep: _Episode, first: tuple[str, list[dict | None]]
) -> None:
    """Every episode's cameras must be the ones of the first (same camera_info, or none
    recorded in both): a policy learns one lens per camera."""
    first_id, sources = first
    for cam, seen, mine in zip(cfg.cameras, sources, ep.sources, strict=True):
        if mine != seen:
            raise DatasetError(
                f"episode {source.episode_id}: camera {cam.name} ({cam.info_topic}) is "
                f"{_describe(mine)}, episode {first_id} {_describe(seen)}; build one dataset "
                "per camera calibration"
            )


def _describe(info: dict | None) -> str:
    if info is None:
        return "without camera_info"
    k = info["k"]
    return (
        f"{info['width']}x{info['height']} fx {k[0]:.2f} fy {k[4]:.2f} cx {k[2]:.2f} "
        f"cy {k[5]:.2f} d {info['d']}"
    )


def idle_start_steps(action: np.ndarray, threshold: float) -> int:
    """Grid steps before the motion starts, less one: the episode then opens on the last still
    frame. A demonstration that waits at its start pose (the recorder starts before the
    operator moves) teaches a policy that, at the start pose, the next actions are "wait": it
    sees the same frame and state at every step of the wait, so executing chunks it waits
    forever, and temporal ensembling turns the wait into a slow, late start. 0 when the
    actions never leave their first value by more than `threshold` (rad or m, any joint)."""
    moved = np.flatnonzero(np.abs(action - action[0]).max(axis=1) > threshold)  # (M,)
    return max(int(moved[0]) - 1, 0) if moved.size else 0


def _split(n: int, val_fraction: float, seed: int) -> list[str]:
    """'train'/'val' per episode: a seeded shuffle, at least one val episode when there are
    two or more and val_fraction > 0, at least one train episode."""
    n_val = min(round(val_fraction * n), n - 1)
    if val_fraction > 0 and n >= 2:
        n_val = max(n_val, 1)
    val = set(np.random.default_rng(seed).permutation(n)[:n_val].tolist())
    return ["val" if i in val else "train" for i in range(n)]


def build_cache(
    sources: str | Path | list[EpisodeSource],
    config: DatasetConfig,
    out: str | Path,
    *,
    overwrite: bool = False,
    skip_bad: bool = False,
    progress: bool = True,
) -> DatasetCache:
    """Builds the cache into `out` (written to a temporary folder, then renamed into place).

    skip_bad: an episode that fails (truncated, missing topic, stale stream, ...) is reported
    and left out instead of stopping the build."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists (pass overwrite=True to rebuild it)")
    episodes = find_episodes(sources) if isinstance(sources, str | Path) else list(sources)
    if not episodes:
        raise DatasetError("no episodes to build a dataset from")
    tmp = out.with_name(f".{out.name}.building-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        meta = _build_into(tmp, episodes, config, skip_bad=skip_bad, progress=progress)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")  # last: marks complete
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return DatasetCache(out)


def _build_into(
    root: Path, episodes: list[EpisodeSource], cfg: DatasetConfig, *, skip_bad: bool, progress: bool
) -> dict:
    h, w = cfg.image_hw
    joints: dict[str, tuple[str, ...] | None] = {
        s.topic: s.joints for s in (*cfg.state, *cfg.action)
    }
    files: dict[str, ArrayWriter] = {}
    store = new_store(cfg.image_store, cfg.image_hw, cfg.jpeg_quality)
    cameras: list[FrameWriter] = []
    records: list[dict] = []
    skipped: list[str] = []
    first: tuple[str, list[dict | None]] | None = None  # (episode, its cameras' camera_info)
    start = 0
    bar = tqdm(episodes, desc="reading bags", unit="episode", disable=not progress)
    for source in bar:
        try:
            ep = _read_episode(source, cfg, joints)
            if first is None:
                first = (source.episode_id, ep.sources)
            _check_sources(cfg, source, ep, first)
        except DatasetError as e:
            if not skip_bad:
                raise
            skipped.append(str(e))
            tqdm.write(f"skipped {source.episode_id}: {e}")
            continue
        if not files:
            files = {
                "stamps": ArrayWriter(root, "stamps", "float64", ()),
                "state": ArrayWriter(root, "state", "float32", ep.state.shape[1:]),
                "action": ArrayWriter(root, "action", "float32", ep.action.shape[1:]),
                "frame_index": ArrayWriter(root, "frame_index", "int64", (len(cfg.cameras),)),
            }
            cameras = [frame_writer(store, root, i, (h, w)) for i in range(len(cfg.cameras))]
        offsets = [cam.rows for cam in cameras]
        files["stamps"].append(ep.stamps)
        files["state"].append(ep.state)
        files["action"].append(ep.action)
        files["frame_index"].append(ep.frame_index + np.asarray(offsets, dtype=np.int64))
        for cam, frames in zip(cameras, ep.frames, strict=True):
            cam.append(frames)
        n = ep.stamps.shape[0]
        records.append(
            {"episode_id": source.episode_id, "bag": str(source.bag_dir.resolve()), "start": start,
             "length": n, "task": ep.task, "mcap_sha256": ep.sha256, "seed": ep.seed}
        )  # fmt: skip
        start += n
    if not records or first is None:
        raise DatasetError(f"every episode was refused ({len(skipped)}; each is named above)")
    arrays = {name: f.close() for name, f in files.items()}
    for cam in cameras:
        arrays |= cam.close()
    for rec, split in zip(
        records, _split(len(records), cfg.val_fraction, cfg.split_seed), strict=True
    ):
        rec["split"] = split
    resolved = cfg.with_joints({t: n for t, n in joints.items() if n is not None})
    resolved = dataclasses.replace(resolved, image_store=store["kind"])  # "auto" resolved
    state_names = [j for s in resolved.state for j in s.joints or ()]
    action_names = [j for s in resolved.action for j in s.joints or ()]
    if len(set(action_names)) != len(action_names) or len(set(state_names)) != len(state_names):
        raise DatasetError(
            f"joint names must be unique across topics (the policy card maps them back): "
            f"state {state_names}, action {action_names}"
        )
    identity = {
        "format": CACHE_FORMAT,
        "config": resolved.to_json(),
        "episodes": [(r["episode_id"], r["mcap_sha256"], r["split"]) for r in records],
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    meta = {
        "format": CACHE_FORMAT,
        "config": resolved.to_json(),
        "state_names": state_names,
        "action_names": action_names,
        "cameras": [
            {"name": c.name, "topic": c.topic, "height": h, "width": w}
            | ({"source": src} if src is not None else {})
            for c, src in zip(cfg.cameras, first[1], strict=True)
        ],
        "image_hw": [h, w],
        "control_rate_hz": cfg.control_rate_hz,
        "n_frames": start,
        "arrays": arrays,
        "image_store": store,
        "episodes": records,
        "skipped": skipped,
        "data_index_hash": f"sha256:{digest}",
    }
    meta["stats"] = _fit_stats(root, meta)
    return meta


def _fit_stats(root: Path, meta: dict) -> dict:
    """Both normalization modes for state and action, on the train episodes' frames."""
    train = [EpisodeRecord(**r) for r in meta["episodes"] if r["split"] == "train"]
    stats = {}
    for key in ("state", "action"):
        data = open_array(root, meta["arrays"][key])
        rows = np.concatenate([data[e.start : e.stop] for e in train])  # (T_train, D)
        stats[key] = {mode: NormStats.fit(rows, mode).to_json() for mode in NORM_MODES}
    return stats
