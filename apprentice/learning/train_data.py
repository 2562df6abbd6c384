"""The training loop's data: the cache it trains on, the batch of each step (`StepBatches`),
the train and validation loaders, and the time the loop spends waiting for them.

Loaders read a whole batch per `samples[batch]` (apprentice/dataset/samples.py), so each batch
crosses a worker's queue as ~5 batch tensors; workers stay alive, and on CUDA the batch is
pinned for an asynchronous copy.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from apprentice.dataset import DatasetCache, DatasetConfig, build_cache, find_episodes, is_cache
from apprentice.dataset.bag import EpisodeBag
from apprentice.dataset.config import infer_config
from apprentice.dataset.samples import batch_loader
from apprentice.learning.checkpoint import PolicyConfig
from apprentice.learning.train_config import TrainConfig, policy_samples, preset_image_hw
from apprentice.learning.train_dist import Dist


class StepBatches(Sampler[list[int]]):
    """Batches for steps [start, stop): the global batch of step t is entries t·G .. t·G+G-1 of
    an endless sequence of seeded permutations of the dataset (G = batch_size · world); rank r
    takes its r-th slice. Depends only on (seed, t): resuming at step t repeats the same data."""

    def __init__(
        self, n: int, batch_size: int, seed: int, start: int, stop: int, rank: int = 0,
        world: int = 1,
    ):  # fmt: skip
        if n < 1:
            raise ValueError("empty dataset")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.start, self.stop, self.rank, self.world = start, stop, rank, world

    def __len__(self) -> int:
        return max(self.stop - self.start, 0)

    def __iter__(self) -> Iterator[list[int]]:
        g = self.batch_size * self.world
        pos = self.start * g
        epoch, perm = -1, np.empty(0, dtype=np.int64)
        for _ in range(len(self)):
            batch: list[int] = []
            while len(batch) < g:
                e, offset = divmod(pos, self.n)
                if e != epoch:
                    epoch, perm = e, np.random.default_rng([self.seed, e]).permutation(self.n)
                take = min(g - len(batch), self.n - offset)
                batch.extend(perm[offset : offset + take].tolist())
                pos += take
            yield batch[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]


def open_data(cfg: TrainConfig, run_dir: Path, world: Dist, progress: bool) -> DatasetCache:
    """The cache: `cfg.data` itself, or <run>/dataset built from the bags in it."""
    if is_cache(cfg.data):
        return DatasetCache(cfg.data)
    cache_dir = run_dir / "dataset"
    if world.main and not is_cache(cache_dir):
        if cfg.dataset_config is not None:
            dcfg = DatasetConfig.from_yaml(cfg.dataset_config)
        else:
            first = EpisodeBag(find_episodes(cfg.data)[0].bag_dir)
            dcfg = infer_config(first.topics, image_hw=preset_image_hw(cfg.policy, cfg.preset))
        build_cache(cfg.data, dcfg, cache_dir, progress=progress)
    world.barrier()
    return DatasetCache(cache_dir)


def train_loader(
    cfg: TrainConfig, cache: DatasetCache, pcfg: PolicyConfig, start: int, stop: int, world: Dist,
    device: torch.device,
) -> DataLoader:  # fmt: skip
    """This rank's batches of steps [start, stop)."""
    assert cfg.batch_size is not None
    samples = policy_samples(cfg.policy, cache, "train", pcfg)
    batches = StepBatches(
        len(samples), cfg.batch_size, cfg.seed, start, stop, world.rank, world.world
    )
    workers = (
        cfg.num_workers if cfg.num_workers is not None else (4 if device.type == "cuda" else 0)
    )
    # An explicit generator: creating a loader iterator would otherwise draw from the global
    # RNG, and a resumed run creates one more iterator than an uninterrupted run.
    return batch_loader(
        samples, batches, num_workers=workers, pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(cfg.seed),
    )  # fmt: skip


def val_loader(cfg: TrainConfig, cache: DatasetCache, pcfg: PolicyConfig) -> DataLoader | None:
    """Fixed validation batches: up to val_batches·batch_size samples spread evenly."""
    if not cache.split_episodes("val"):
        return None
    val_ds = policy_samples(cfg.policy, cache, "val", pcfg)
    assert cfg.batch_size is not None
    n = min(len(val_ds), cfg.val_batches * cfg.batch_size)
    picks = np.unique(np.linspace(0, len(val_ds) - 1, n).astype(int)).tolist()
    batches = [picks[k : k + cfg.batch_size] for k in range(0, len(picks), cfg.batch_size)]
    return batch_loader(val_ds, batches, generator=torch.Generator().manual_seed(0))


class TimedBatches:
    """Iterates a loader and keeps the time spent blocked in `next` (waiting for data): a step
    loop that waits much is fed too slowly (more workers, a faster disk, a smaller image)."""

    def __init__(self, loader: Iterable[Any]):
        self._batches = iter(loader)
        self.waited_s = 0.0
        self._since = (time.perf_counter(), 0.0)  # (wall, waited) at the last `wait_fraction`

    def __iter__(self) -> TimedBatches:
        return self

    def __next__(self) -> Any:
        t0 = time.perf_counter()
        try:
            return next(self._batches)
        finally:
            self.waited_s += time.perf_counter() - t0

    def wait_fraction(self) -> float:
        """The share of wall time blocked on the loader since the previous call (or the start)."""
        now = time.perf_counter()
        wall, waited = now - self._since[0], self.waited_s - self._since[1]
        self._since = (now, self.waited_s)
        return waited / wall if wall > 0 else 0.0
