"""torch Datasets over a cache: ACT samples and Diffusion Policy samples.

Every frame of every episode of the split is a sample anchor t. Windows that reach past an
episode's ends repeat the edge frame (the robot holds still) and are flagged in
`action_is_pad`; a window never crosses into another episode. Values are raw (rad, m): the
policies normalize with the stats they carry. Images stay uint8 (3x less to copy to a GPU
than float32); `policy_batch` turns a batch into the policies' inputs on a device.

An index is one sample (`ds[i]`) or a whole batch (`ds[[i, j, ...]]`: every tensor gains a
leading batch dimension, equal to stacking the samples). The batch form reads each array with
one fancy index per batch instead of a few small reads and tensors per sample and a collate:
5x the samples/s in one process (bench/dataset_and_training.py). `batch_loader` is a
DataLoader over it (a batch sampler given as `sampler=`, `batch_size=None`: torch's bulk
loading mode) whose workers send each batch as one shared-memory buffer.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from apprentice.dataset.cache import DatasetCache, Split

Index = int | Sequence[int] | np.ndarray


class _Windows(Dataset):
    """Anchors (every frame of the split) and clamped index windows around them."""

    def __init__(self, cache: DatasetCache | str | Path, split: Split):
        self.cache = cache if isinstance(cache, DatasetCache) else DatasetCache(cache)
        episodes = self.cache.split_episodes(split)
        if not episodes:
            raise ValueError(f"{self.cache.root}: no {split} episodes")
        self.anchors = np.concatenate([np.arange(e.start, e.stop) for e in episodes])  # (M,)
        # first and one-past-last frame of each anchor's episode
        self.lo = np.concatenate([np.full(e.length, e.start) for e in episodes])
        self.hi = np.concatenate([np.full(e.length, e.stop) for e in episodes])

    def __len__(self) -> int:
        return int(self.anchors.shape[0])

    def window(self, i: np.ndarray, first: int, length: int) -> tuple[np.ndarray, np.ndarray]:
        """Frames anchor+first .. anchor+first+length-1 clamped to the episode, for sample
        indices i (...,) → (frames (..., L), is_pad (..., L) true where clamped)."""
        t, lo, hi = self.anchors[i][..., None], self.lo[i][..., None], self.hi[i][..., None]
        raw = t + first + np.arange(length)  # (..., L)
        frames = np.clip(raw, lo, hi - 1)
        return frames, frames != raw


def _indices(i: Index) -> np.ndarray:
    """A sample index → () int64, a batch of them → (B,) int64."""
    return np.asarray(i, dtype=np.int64)


def _copy(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(a))  # a copy: a row of a memory map is a view of the file


class ActSamples(_Windows):
    """{"state": (S,), "images": (N, 3, H, W) uint8, "action": (K, A), "action_is_pad": (K,)}:
    the observation at t and the chunk of actions t .. t+K-1 (with a leading (B,) for a batch)."""

    def __init__(self, cache: DatasetCache | str | Path, split: Split, chunk_size: int):
        super().__init__(cache, split)
        self.chunk_size = chunk_size

    def __getitem__(self, i: Index) -> dict[str, torch.Tensor]:
        i = _indices(i)
        t = self.anchors[i]  # () or (B,)
        frames, pad = self.window(i, 0, self.chunk_size)
        c = self.cache
        return {
            "state": _copy(c.state[t]),  # (S,)
            "images": torch.from_numpy(c.images(t)),  # (N, 3, H, W)
            "action": _copy(c.action[frames]),  # (K, A)
            "action_is_pad": torch.from_numpy(pad),  # (K,)
        }


class DiffusionSamples(_Windows):
    """{"state": (To, S), "images": (To, N, 3, H, W) uint8, "action": (Tp, A),
    "action_is_pad": (Tp,), "obs_is_pad": (To,)} (with a leading (B,) for a batch):
    observations t-To+1 .. t and actions t-To+1 .. t-To+Tp (the paper's indexing: the horizon
    starts at the oldest observation)."""

    def __init__(
        self,
        cache: DatasetCache | str | Path,
        split: Split,
        n_obs_steps: int = 2,
        horizon: int = 16,
    ):
        super().__init__(cache, split)
        self.n_obs_steps, self.horizon = n_obs_steps, horizon

    def __getitem__(self, i: Index) -> dict[str, torch.Tensor]:
        i = _indices(i)
        to = self.n_obs_steps
        obs, obs_pad = self.window(i, 1 - to, to)
        act, act_pad = self.window(i, 1 - to, self.horizon)
        c = self.cache
        return {
            "state": _copy(c.state[obs]),  # (To, S)
            "images": torch.from_numpy(c.images(obs)),  # (To, N, 3, H, W)
            "action": _copy(c.action[act]),  # (Tp, A)
            "action_is_pad": torch.from_numpy(act_pad),  # (Tp,)
            "obs_is_pad": torch.from_numpy(obs_pad),  # (To,)
        }


def batch_loader(
    samples: Dataset, batches: Sampler[list[int]] | Sequence[list[int]], *, num_workers: int = 0,
    pin_memory: bool = False, generator: torch.Generator | None = None,
) -> DataLoader:  # fmt: skip
    """A DataLoader that reads each batch of index lists with one `samples[batch]` (see the
    module docstring). In worker processes the batch's tensors are moved into one buffer
    (`one_storage`). Workers stay alive between passes of the loader."""
    return DataLoader(
        samples, sampler=batches, batch_size=None, num_workers=num_workers,
        collate_fn=one_storage if num_workers > 0 else None, pin_memory=pin_memory,
        persistent_workers=num_workers > 0, generator=generator,
    )  # fmt: skip


def one_storage(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same tensors as views of one buffer (each at a 64-byte aligned offset). A worker
    sends a tensor to the main process as a shared-memory file whose descriptor goes through
    a socket handshake, once per storage: one file per batch instead of one per key (4-5)."""
    offsets, total = [], 0
    for t in batch.values():
        offsets.append(total)
        total += -(-t.numel() * t.element_size() // 64) * 64
    buffer = torch.empty(total, dtype=torch.uint8)
    out = {}
    for (key, t), offset in zip(batch.items(), offsets, strict=True):
        nbytes = t.numel() * t.element_size()
        out[key] = buffer[offset : offset + nbytes].view(t.dtype).view(t.shape)
        out[key].copy_(t)
    return out


def policy_batch(
    batch: dict[str, torch.Tensor], device: torch.device | str
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """A batch → (obs {"state", "images" float in [0, 1]}, action, action_is_pad) on `device`,
    as `compute_loss` takes them."""
    non_blocking = torch.device(device).type == "cuda"
    images = batch["images"].to(device, non_blocking=non_blocking).float().div_(255.0)
    obs = {"state": batch["state"].to(device, non_blocking=non_blocking), "images": images}
    action = batch["action"].to(device, non_blocking=non_blocking)
    return obs, action, batch["action_is_pad"].to(device, non_blocking=non_blocking)
