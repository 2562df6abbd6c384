"""Episode bags → a training cache → torch samples.

    cfg = DatasetConfig.from_yaml("dataset.yaml")          # which topics, rates, image size
    cache = build_cache("recordings/", cfg, "caches/pick")  # resample, decode, split, stats, hash
    ds = ActSamples(cache, "train", chunk_size=100)         # or DiffusionSamples (samples.py)

Importing this package does not import torch (`samples.py` does).
"""

from apprentice.dataset.bag import CorruptBagError, DatasetError, EpisodeBag
from apprentice.dataset.builder import EpisodeSource, build_cache, find_episodes
from apprentice.dataset.cache import DatasetCache, EpisodeRecord, is_cache
from apprentice.dataset.config import CameraStream, DatasetConfig, JointStream, infer_config

__all__ = [
    "CameraStream",
    "CorruptBagError",
    "DatasetCache",
    "DatasetConfig",
    "DatasetError",
    "EpisodeBag",
    "EpisodeRecord",
    "EpisodeSource",
    "JointStream",
    "build_cache",
    "find_episodes",
    "infer_config",
    "is_cache",
]
