"""What the optimizer step is scheduled and averaged by: the learning rate of each step and the
EMA of the weights (what validates and gets exported)."""

from __future__ import annotations

import copy
import math

import torch

from apprentice.learning.checkpoint import Policy
from apprentice.learning.train_config import DEFAULTS, TrainConfig


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then constant (ACT) or cosine decay to 0 at cfg.steps (Diffusion)."""
    d = DEFAULTS[(cfg.policy, cfg.preset)]
    assert cfg.lr is not None and cfg.steps is not None
    warmup = min(d.warmup_steps, cfg.steps // 10)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    if d.schedule == "cosine":
        progress = (step - warmup) / max(1, cfg.steps - warmup)
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return cfg.lr


class Ema:
    """Exponential moving average of the weights; it is what validates and gets exported.
    Early on the decay is min(decay, (1 + t) / (10 + t)), so the random init fades fast."""

    def __init__(self, policy: Policy, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(policy).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, policy: Policy, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for e, p in zip(self.model.parameters(), policy.parameters(), strict=True):
            e.lerp_(p.detach(), 1.0 - d)
        for e, b in zip(self.model.buffers(), policy.buffers(), strict=True):
            e.copy_(b)
