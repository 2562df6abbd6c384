"""Processes and devices for training: one process (rank 0 of 1), or one per GPU (or CPU
process) under `torchrun`, kept in step by DistributedDataParallel (NCCL on CUDA, gloo on CPU).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from apprentice.learning.checkpoint import Policy


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def init_distributed(device: str) -> Dist:
    """This process's place: from torchrun's environment, else a world of one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def resolve_device(name: str, world: Dist) -> torch.device:
    """Device "auto" is CUDA when available, else CPU; on CUDA each rank takes its local GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device cuda requested but CUDA is not available")
        torch.cuda.set_device(world.local_rank)
        return torch.device("cuda", world.local_rank)
    return torch.device(name)


class LossModule(nn.Module):
    """compute_loss as forward, so DistributedDataParallel's gradient hooks see the call."""

    def __init__(self, policy: Policy):
        super().__init__()
        self.policy = policy

    def forward(
        self, obs: dict[str, torch.Tensor], action: torch.Tensor, action_is_pad: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        if self.policy.policy_type == "act":
            return self.policy.compute_loss(obs, action, action_is_pad)
        return self.policy.compute_loss(obs, action)  # DP regresses padded (held) steps too


def loss_module(policy: Policy, device: torch.device, world: Dist) -> nn.Module:
    """The module a step calls: the policy's loss, wrapped in DDP when there are several ranks."""
    module: nn.Module = LossModule(policy)
    if world.enabled:
        module = nn.parallel.DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None
        )
    return module


def mean_over_ranks(info: dict[str, float], device: torch.device, world: Dist) -> dict:
    if not world.enabled:
        return info
    keys = sorted(info)
    values = torch.tensor([info[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(values)
    return {k: float(v) / world.world for k, v in zip(keys, values.tolist(), strict=True)}


def check_replicas_agree(policy: Policy, device: torch.device) -> None:
    """DDP keeps replicas identical; a cheap end-of-run check that it did."""
    total = torch.stack([p.detach().double().sum() for p in policy.parameters()]).sum()
    spread = torch.stack([total, -total]).to(device)
    dist.all_reduce(spread, op=dist.ReduceOp.MAX)
    if float(spread[0] + spread[1]) > 1e-6 * max(1.0, abs(float(total))):
        raise RuntimeError("DDP replicas diverged: parameters differ between ranks")
