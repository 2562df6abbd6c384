"""Normalization stats as torch buffers, so they are saved in the same safetensors file as the
weights (keys `normalizer.<name>_offset`, `normalizer.<name>_scale`)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from apprentice.learning.normalize import NormMode, NormStats


class Normalizer(nn.Module):
    """x_norm = (x - offset) / scale per named feature; modes come from the policy config."""

    def __init__(self, features: dict[str, tuple[int, NormMode]]):
        super().__init__()
        self.modes: dict[str, NormMode] = {}
        for name, (dim, mode) in features.items():
            identity = NormStats.identity(dim, mode)  # validates the mode
            self.modes[name] = mode
            self.register_buffer(f"{name}_offset", torch.zeros(dim, dtype=torch.float64))
            self.register_buffer(f"{name}_scale", torch.ones(dim, dtype=torch.float64))
            self.set_stats(name, identity)

    def set_stats(self, name: str, stats: NormStats) -> None:
        if stats.mode != self.modes[name]:
            raise ValueError(f"{name}: config says {self.modes[name]}, stats are {stats.mode}")
        offset = getattr(self, f"{name}_offset")
        if stats.dim != offset.shape[0]:
            raise ValueError(f"{name}: expected {offset.shape[0]} dims, stats have {stats.dim}")
        offset.copy_(torch.tensor(stats.offset))
        getattr(self, f"{name}_scale").copy_(torch.tensor(stats.scale))

    def stats(self, name: str) -> NormStats:
        offset = getattr(self, f"{name}_offset").cpu().numpy()
        scale = getattr(self, f"{name}_scale").cpu().numpy()
        return NormStats(self.modes[name], np.array(offset), np.array(scale))

    def normalize(self, name: str, x: torch.Tensor) -> torch.Tensor:
        # Stats stay float64 (exact round trip to the card); the result takes x's dtype.
        offset = getattr(self, f"{name}_offset").to(x.dtype)
        return (x - offset) / getattr(self, f"{name}_scale").to(x.dtype)

    def unnormalize(self, name: str, x: torch.Tensor) -> torch.Tensor:
        scale = getattr(self, f"{name}_scale").to(x.dtype)
        return x * scale + getattr(self, f"{name}_offset").to(x.dtype)
