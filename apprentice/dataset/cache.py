"""The training cache: control-rate arrays in raw numpy memory-mapped files + `dataset.json`.

    <cache>/
      dataset.json        written last: config, names, episodes (+ split), stats, array shapes,
                          image store, data_index_hash. A folder without it is not a cache.
      stamps.f64          (T,)            grid time of each frame, s since the epoch
      state.f32           (T, S)          raw units (rad, m), columns = state_names
      action.f32          (T, A)          raw units, columns = action_names
      frame_index.i64     (T, N)          row of camera n's frame shown at each grid time
      camera_<n>.*        (F_n, 3, H, W)  RGB, resized; each recorded frame stored once, raw
                                          (camera_<n>.u8) or as JPEG files (image_store.py)

Why memory maps, not zarr: a sample is a handful of contiguous slices, served zero-copy from
the page cache with no decompression and no extra dependency; every DataLoader worker maps the
files itself. Small frames (96x128: 37 KB) stay raw for the same reason; large ones are JPEG
(a decode per frame read, 15-50x less disk and page cache; `image_store.py` says when and
why). `images()` is the one read path for either. Frames are stored once per recorded frame
and shared by the grid steps that show them (at 50 Hz over a 30 Hz camera, ~1.7 steps each).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from apprentice.dataset.image_store import (
    JpegFrames,
    RawFrames,
    open_array,
    open_frames,
    store_of,
)
from apprentice.learning.normalize import NormMode, NormStats

CACHE_FORMAT = "apprentice.dataset_cache/1"
META_FILE = "dataset.json"
Split = Literal["train", "val", "all"]


@dataclass(frozen=True)
class EpisodeRecord:
    episode_id: str
    bag: str  # the bag folder it was built from
    start: int  # first frame (row) in the arrays
    length: int  # frames
    split: Literal["train", "val"]
    task: str
    mcap_sha256: str
    # the simulated scene's seed (the bag's custom_data "seed"); None for a recording without
    # one (a person teleoperating) and in caches built before the builder kept it
    seed: int | None = None

    @property
    def stop(self) -> int:
        return self.start + self.length


def is_cache(path: str | Path) -> bool:
    return (Path(path) / META_FILE).is_file()


class DatasetCache:
    """Read access to a built cache. Arrays are opened lazily and never pickled, so a copy sent
    to a DataLoader worker process maps the files itself."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        meta_path = self.root / META_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(f"{self.root} is not a dataset cache (no {META_FILE})")
        self.meta: dict[str, Any] = json.loads(meta_path.read_text())
        if self.meta.get("format") != CACHE_FORMAT:
            raise ValueError(f"{meta_path}: not a {CACHE_FORMAT} file")
        self.episodes = [EpisodeRecord(**e) for e in self.meta["episodes"]]
        self._store = store_of(self.meta, meta_path)
        self.image_store: str = self._store["kind"]  # "raw" | "jpeg"
        self._maps: dict[str, np.memmap] = {}
        self._frames: list[RawFrames | JpegFrames] = []  # per camera, opened on first read

    # -- description -------------------------------------------------------------------------
    @property
    def state_names(self) -> list[str]:
        return list(self.meta["state_names"])

    @property
    def action_names(self) -> list[str]:
        return list(self.meta["action_names"])

    @property
    def camera_names(self) -> list[str]:
        return [c["name"] for c in self.meta["cameras"]]

    @property
    def image_hw(self) -> tuple[int, int]:
        h, w = self.meta["image_hw"]
        return int(h), int(w)

    @property
    def control_rate_hz(self) -> float:
        return float(self.meta["control_rate_hz"])

    @property
    def data_index_hash(self) -> str:
        return str(self.meta["data_index_hash"])

    @property
    def n_frames(self) -> int:
        return int(self.meta["n_frames"])

    def stats(self, key: Literal["state", "action"], mode: NormMode) -> NormStats:
        """Normalization stats fitted on the TRAIN episodes' frames."""
        return NormStats.from_json(self.meta["stats"][key][mode])

    def split_episodes(self, split: Split) -> list[EpisodeRecord]:
        return [e for e in self.episodes if split == "all" or e.split == split]

    def scene_seeds(self) -> list[int] | None:
        """The scene seeds of every episode (both splits: a validation episode's scene was seen
        too), sorted; an eval on them would measure recall. From the records, or for a cache
        built before they kept the seed, from each bag's custom_data where the bag is still
        there (so incomplete when some bags are gone). None when no episode's seed is known
        (recordings of a person, not of a seeded scene)."""
        from apprentice.dataset.bag import EpisodeBag

        seeds = set()
        for e in self.episodes:
            seed = e.seed
            if seed is None and Path(e.bag).is_dir():
                try:
                    seed = EpisodeBag(e.bag).custom_data.get("seed")
                except (OSError, ValueError):  # moved, damaged: its seed is unknown
                    seed = None
            if seed is not None:
                seeds.add(int(seed))
        return sorted(seeds) if seeds else None

    # -- arrays ------------------------------------------------------------------------------
    def array(self, name: str) -> np.memmap:
        """A read-only map of one array file (see the module docstring)."""
        if name not in self._maps:
            if name not in self.meta["arrays"]:
                raise KeyError(
                    f"{self.root}: no array {name!r} (it has {sorted(self.meta['arrays'])}; "
                    "camera frames are read with images())"
                )
            self._maps[name] = open_array(self.root, self.meta["arrays"][name])
        return self._maps[name]

    @property
    def stamps(self) -> np.memmap:
        return self.array("stamps")

    @property
    def state(self) -> np.memmap:
        return self.array("state")

    @property
    def action(self) -> np.memmap:
        return self.array("action")

    def images(self, frames: np.ndarray) -> np.ndarray:
        """Camera images at grid frames (...,) → (..., N, 3, H, W) uint8 RGB, whatever the store
        (JPEG frames are decoded here, each distinct frame of the call once)."""
        frames = np.asarray(frames)
        index = self.array("frame_index")[frames.reshape(-1)]  # (M, N)
        if not self._frames:
            self._frames = [open_frames(self.root, self._store, self.meta, i, self.image_hw)
                            for i in range(index.shape[1])]  # fmt: skip
        per_camera = [cam.read(index[:, i]) for i, cam in enumerate(self._frames)]  # (M, 3, H, W)
        return np.stack(per_camera, axis=1).reshape(*frames.shape, index.shape[1], 3,
                                                    *self.image_hw)  # fmt: skip

    def __getstate__(self) -> dict[str, Any]:
        # maps and stores are reopened in the receiving process (a DataLoader worker)
        return {**self.__dict__, "_maps": {}, "_frames": []}
