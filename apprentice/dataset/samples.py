"""torch Datasets over a cache: ACT samples and Diffusion Policy samples.

Every frame of every episode of the split is a sample anchor t. Windows that reach past an
episode's ends repeat the edge frame (the robot holds still) and are flagged in
`action_is_pad`; a window never crosses into another episode. Values are raw (rad, m): the
policies normalize with the stats they carry. Images stay uint8 (3x less to copy to a GPU
than float32); `policy_batch` turns a collated batch into the policies' inputs on a device.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from apprentice.dataset.cache import DatasetCache, Split


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

    def window(self, i: int, first: int, length: int) -> tuple[np.ndarray, np.ndarray]:
        """Frames anchor+first .. anchor+first+length-1 clamped to the episode → (frames (L,),
        is_pad (L,) true where clamped)."""
        t, lo, hi = int(self.anchors[i]), int(self.lo[i]), int(self.hi[i])
        raw = t + first + np.arange(length)  # (L,)
        frames = np.clip(raw, lo, hi - 1)
        return frames, frames != raw


class ActSamples(_Windows):
    """{"state": (S,), "images": (N, 3, H, W) uint8, "action": (K, A), "action_is_pad": (K,)}:
    the observation at t and the chunk of actions t .. t+K-1."""

    def __init__(self, cache: DatasetCache | str | Path, split: Split, chunk_size: int):
        super().__init__(cache, split)
        self.chunk_size = chunk_size

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        t = int(self.anchors[i])
        frames, pad = self.window(i, 0, self.chunk_size)
        c = self.cache
        return {
            "state": torch.from_numpy(np.array(c.state[t])),  # (S,)
            "images": torch.from_numpy(c.images(np.asarray(t))),  # (N, 3, H, W)
            "action": torch.from_numpy(np.array(c.action[frames])),  # (K, A)
            "action_is_pad": torch.from_numpy(pad),  # (K,)
        }


class DiffusionSamples(_Windows):
    """{"state": (To, S), "images": (To, N, 3, H, W) uint8, "action": (Tp, A),
    "action_is_pad": (Tp,), "obs_is_pad": (To,)}: observations t-To+1 .. t and actions
    t-To+1 .. t-To+Tp (the paper's indexing: the horizon starts at the oldest observation)."""

    def __init__(
        self,
        cache: DatasetCache | str | Path,
        split: Split,
        n_obs_steps: int = 2,
        horizon: int = 16,
    ):
        super().__init__(cache, split)
        self.n_obs_steps, self.horizon = n_obs_steps, horizon

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        to = self.n_obs_steps
        obs, obs_pad = self.window(i, 1 - to, to)
        act, act_pad = self.window(i, 1 - to, self.horizon)
        c = self.cache
        return {
            "state": torch.from_numpy(np.array(c.state[obs])),  # (To, S)
            "images": torch.from_numpy(c.images(obs)),  # (To, N, 3, H, W)
            "action": torch.from_numpy(np.array(c.action[act])),  # (Tp, A)
            "action_is_pad": torch.from_numpy(act_pad),  # (Tp,)
            "obs_is_pad": torch.from_numpy(obs_pad),  # (To,)
        }


def policy_batch(
    batch: dict[str, torch.Tensor], device: torch.device | str
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Collated samples → (obs {"state", "images" float in [0, 1]}, action, action_is_pad) on
    `device`, as `compute_loss` takes them."""
    non_blocking = torch.device(device).type == "cuda"
    images = batch["images"].to(device, non_blocking=non_blocking).float().div_(255.0)
    obs = {"state": batch["state"].to(device, non_blocking=non_blocking), "images": images}
    action = batch["action"].to(device, non_blocking=non_blocking)
    return obs, action, batch["action_is_pad"].to(device, non_blocking=non_blocking)
