"""Training ACT / Diffusion Policy from a dataset cache (or episode bags): the loop, the batch
of each step (`StepBatches`), the EMA weights, the learning-rate schedule and the plumbing
for several processes.

    result = train(TrainConfig(policy="act", data="caches/pick", out="runs/pick", preset="cpu"))

Beside it, imported here and never importing this module:
    train_config.py       TrainConfig, TrainResult, the presets' DEFAULTS, make_policy_config,
                          the run folder's file names
    train_checkpoint.py   checkpoints/last: save_checkpoint, load_checkpoint
    train_report.py       validate, plot_losses, plot_samples, read_metrics, and export_run
                          (runs/pick → runs/pick/policy/, ONNX + policy card)

Run folder:
    run.json              the resolved TrainConfig, the policy config, the dataset's names,
                          cameras, control rate and data-index hash (what export needs)
    metrics.jsonl         one JSON line per logged step: train loss terms, lr, val loss
    loss.png              train (raw and smoothed) and validation loss curves
    samples.png           predicted vs recorded actions over a validation episode (at the end)
    dataset/              the cache, when --data was a folder of bags
    checkpoints/last/     model/ and ema/ (checkpoint.py format: config.json + safetensors),
                          optimizer.safetensors (moment tensors) + state.json (step, optimizer
                          scalars), rng.rank<r>.safetensors (torch RNG states). Nothing pickled.

Resume is exact on CPU: the batch drawn at step t depends only on (seed, t) (`StepBatches`),
the torch RNG state (dropout, CVAE noise, diffusion noise and crops) is restored, validation
and plots use their own generators, so a resumed run repeats the losses of an uninterrupted
one. (CUDA kernels are not bitwise deterministic; there it matches closely, not exactly.)

Devices: CUDA when available (bf16 autocast, no loss scaling needed for bf16), else CPU in
float32. Multi-GPU: the same command under `torchrun --nproc-per-node N`; each process takes
`batch_size` samples of a global batch of N·batch_size (DistributedDataParallel, NCCL on
CUDA, gloo on CPU); rank 0 validates, plots and writes checkpoints.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Sampler, Subset
from tqdm import tqdm

from apprentice.dataset import DatasetCache, DatasetConfig, build_cache, find_episodes, is_cache
from apprentice.dataset.bag import EpisodeBag
from apprentice.dataset.config import infer_config
from apprentice.dataset.samples import policy_batch
from apprentice.errors import UserPathError, UserValueError
from apprentice.learning.backbone import load_torchvision_weights
from apprentice.learning.checkpoint import POLICIES, Policy, PolicyConfig, config_to_json
from apprentice.learning.train_checkpoint import StopRequest, load_checkpoint, save_checkpoint
from apprentice.learning.train_config import (
    DEFAULTS,
    LAST,
    METRICS_FILE,
    RUN_FILE,
    RUN_FORMAT,
    TrainConfig,
    TrainResult,
    autocast,
    backbone_notice,
    make_policy_config,
    policy_samples,
    preset_image_hw,
)
from apprentice.learning.train_report import plot_losses, plot_samples, validate

__all__ = ["Ema", "StepBatches", "TrainConfig", "TrainResult", "lr_at", "resume_config", "train"]


# ---------------------------------------------------------------------------------------------
# Pieces


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


class _LossModule(nn.Module):
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


# ---------------------------------------------------------------------------------------------
# Distributed


@dataclass(frozen=True)
class _Dist:
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


def _init_distributed(device: str) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return _Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
    return _Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


# ---------------------------------------------------------------------------------------------
# Training


def _resolve_device(name: str, world: _Dist) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device cuda requested but CUDA is not available")
        torch.cuda.set_device(world.local_rank)
        return torch.device("cuda", world.local_rank)
    return torch.device(name)


def _open_data(cfg: TrainConfig, run_dir: Path, world: _Dist, progress: bool) -> DatasetCache:
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


def _load_run_config(run_dir: Path) -> TrainConfig:
    path = run_dir / RUN_FILE
    if not path.is_file():
        raise UserPathError(f"{run_dir}: no {RUN_FILE}, not a training run folder")
    try:
        run = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserValueError(f"{path}: not JSON ({exc})") from None
    if not isinstance(run, dict) or run.get("format") != RUN_FORMAT:
        raise UserValueError(f"{path}: not a {RUN_FORMAT} file")
    try:
        return TrainConfig(**run["train_config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise UserValueError(f"{path}: no valid train_config ({exc})") from None


def resume_config(run_dir: str | Path, **changes: Any) -> TrainConfig:
    """The saved config of a run, with `changes` (e.g. steps=, num_workers=, device=). The run
    continues in `run_dir`, wherever it was first trained (a copied or moved run folder)."""
    changes = {"out": str(run_dir), **changes}
    return dataclasses.replace(_load_run_config(Path(run_dir)), **changes)


def train(
    cfg: TrainConfig, *, resume: bool = False, until: int | None = None, progress: bool = True
) -> TrainResult:
    """Trains to cfg.steps. resume=True continues `checkpoints/last` of cfg.out (which must
    exist); without it, a run folder that already has a checkpoint is refused. `until` stops
    early at that step (a time-sliced job), checkpointed; the schedule still spans cfg.steps."""
    cfg = cfg.resolved()
    assert cfg.steps is not None and cfg.batch_size is not None
    stop = cfg.steps if until is None else min(until, cfg.steps)
    run_dir = Path(cfg.out)
    ckpt = run_dir / LAST
    if resume and not (ckpt / "state.json").exists():
        raise FileNotFoundError(f"{ckpt}: no checkpoint to resume from")
    if not resume and ckpt.exists():
        raise FileExistsError(f"{run_dir} already holds a run: resume it or choose another out")
    world = _init_distributed(
        "cuda" if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
        else "cpu"
    )  # fmt: skip
    device = _resolve_device(cfg.device, world)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    if world.main:
        run_dir.mkdir(parents=True, exist_ok=True)
    world.barrier()
    cache = _open_data(cfg, run_dir, world, progress and world.main)

    torch.manual_seed(cfg.seed)  # same initial weights on every rank (DDP broadcasts anyway)
    pcfg = make_policy_config(cfg.policy, cfg.preset, cache, cfg.policy_overrides)
    policy = POLICIES[cfg.policy][1](pcfg)
    policy.normalizer.set_stats("state", cache.stats("state", pcfg.state_norm))
    policy.normalizer.set_stats("action", cache.stats("action", pcfg.action_norm))
    if not resume:  # a resumed run's backbone is in its checkpoint (the file may be gone)
        if cfg.backbone_weights is not None:
            backbones = [policy.backbone] if cfg.policy == "act" else [
                enc.backbone for enc in policy.image_encoders
            ]  # fmt: skip
            for backbone in backbones:
                load_torchvision_weights(backbone, cfg.backbone_weights)
        if world.main:
            print(backbone_notice(cfg.policy, pcfg, cfg.backbone_weights), file=sys.stderr,
                  flush=True)  # fmt: skip
    d = DEFAULTS[(cfg.policy, cfg.preset)]
    ema = Ema(policy, cfg.ema_decay) if cfg.ema_decay is not None else None
    policy.to(device).train()
    ema_model = ema.model.to(device) if ema is not None else None
    # fused: one update over all parameters instead of a loop per tensor (with the ACT model's
    # byte-mask dropout: 1.34x the steps/s of the ACT CPU preset, docs/BENCHMARKS.md)
    optim = torch.optim.AdamW(
        policy.parameters(), lr=cfg.lr, betas=d.betas, weight_decay=cfg.weight_decay, fused=True
    )
    start = 0
    if resume:  # weights, EMA, optimizer and this rank's RNG state
        start = load_checkpoint(ckpt, policy, ema_model, optim, device, world.rank, cfg.seed)
    else:
        torch.manual_seed(cfg.seed + world.rank)  # distinct noise per rank

    if world.main:
        _write_run_json(run_dir, cfg, policy, cache, world)
        _trim_metrics(run_dir / METRICS_FILE, start)
    train_ds = policy_samples(cfg.policy, cache, "train", pcfg)
    workers = (
        cfg.num_workers if cfg.num_workers is not None else (4 if device.type == "cuda" else 0)
    )
    # An explicit generator: creating a loader iterator would otherwise draw from the global
    # RNG, and a resumed run creates one more iterator than an uninterrupted run.
    loader = DataLoader(
        train_ds,
        batch_sampler=StepBatches(
            len(train_ds), cfg.batch_size, cfg.seed, start, stop, world.rank, world.world
        ),  # fmt: skip
        num_workers=workers,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    has_val = bool(cache.split_episodes("val"))
    val_loader = _val_loader(cfg, cache, pcfg) if world.main else None
    if world.main and not has_val:
        tqdm.write("no validation episodes: validation loss is not computed")
    module: nn.Module = _LossModule(policy)
    if world.enabled:
        module = nn.parallel.DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None
        )
    eval_policy = ema_model if ema_model is not None else policy
    bar = tqdm(total=cfg.steps, initial=start, desc=f"train {cfg.policy}", unit="step",
               disable=not (progress and world.main), dynamic_ncols=True)  # fmt: skip
    last_loss, last_val = math.nan, None
    done = start
    t_start = time.perf_counter()
    with StopRequest(enabled=not world.enabled) as stop_request:
        for step, batch in enumerate(loader, start=start):
            lr = lr_at(step, cfg)
            for group in optim.param_groups:
                group["lr"] = lr
            obs, action, pad = policy_batch(batch, device)
            with autocast(device, cfg.amp):
                loss, info = module(obs, action, pad)
            optim.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = float(nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip))
            optim.step()
            if ema is not None:
                ema.update(policy, step)
            done = step + 1
            row: dict[str, Any] = {}
            # the same decision on every rank (val episodes are the same everywhere)
            validating = has_val and (done % cfg.val_every == 0 or done == stop)
            if done % cfg.log_every == 0 or done == stop or validating:
                info = _mean_over_ranks(info, device, world)
                last_loss = info["loss"]
                row = {"step": done, **info, "lr": lr, "grad_norm": grad_norm}
                bar.set_postfix(loss=f"{last_loss:.4g}")
            if world.main and validating:
                assert val_loader is not None
                val = validate(eval_policy, val_loader, device, cfg.amp)
                last_val = val["val_loss"]
                row = {"step": done, **row, **val}
                tqdm.write(f"step {done}: train loss {last_loss:.4g}, val loss {last_val:.4g}")
            if world.main and row:
                with open(run_dir / METRICS_FILE, "a") as f:
                    f.write(json.dumps(row) + "\n")
                if "val_loss" in row or done == stop:
                    plot_losses(run_dir / METRICS_FILE, run_dir / "loss.png")
            stopping = stop_request.signal is not None  # Ctrl-C: this step is done; save, stop
            if done % cfg.checkpoint_every == 0 or done == stop or stopping:
                save_checkpoint(
                    run_dir, done, policy, ema_model, optim, world.rank, world.world, world.barrier
                )
            bar.update(1)
            if stopping:
                break
    bar.close()
    if stop_request.signal is not None:
        return TrainResult(run_dir, done, last_loss, last_val, interrupted=True)
    if world.main and done > start:
        rate = len(loader) / (time.perf_counter() - t_start)
        tqdm.write(f"{cfg.policy}: {len(loader)} steps at {rate:.2f} steps/s on {device}")
        plot_samples(eval_policy, cache, run_dir / "samples.png", device)
    if world.enabled:
        _check_replicas_agree(policy, device)
    return TrainResult(run_dir, done, last_loss, last_val)


def _mean_over_ranks(info: dict[str, float], device: torch.device, world: _Dist) -> dict:
    if not world.enabled:
        return info
    keys = sorted(info)
    values = torch.tensor([info[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(values)
    return {k: float(v) / world.world for k, v in zip(keys, values.tolist(), strict=True)}


def _check_replicas_agree(policy: Policy, device: torch.device) -> None:
    """DDP keeps replicas identical; a cheap end-of-run check that it did."""
    total = torch.stack([p.detach().double().sum() for p in policy.parameters()]).sum()
    spread = torch.stack([total, -total]).to(device)
    dist.all_reduce(spread, op=dist.ReduceOp.MAX)
    if float(spread[0] + spread[1]) > 1e-6 * max(1.0, abs(float(total))):
        raise RuntimeError("DDP replicas diverged: parameters differ between ranks")


def _val_loader(cfg: TrainConfig, cache: DatasetCache, pcfg: PolicyConfig) -> DataLoader | None:
    """Fixed validation batches: up to val_batches·batch_size samples spread evenly."""
    if not cache.split_episodes("val"):
        return None
    val_ds = policy_samples(cfg.policy, cache, "val", pcfg)
    assert cfg.batch_size is not None
    n = min(len(val_ds), cfg.val_batches * cfg.batch_size)
    picks = np.unique(np.linspace(0, len(val_ds) - 1, n).astype(int)).tolist()
    return DataLoader(
        Subset(val_ds, picks), batch_size=cfg.batch_size, shuffle=False,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip


def _write_run_json(
    run_dir: Path, cfg: TrainConfig, policy: Policy, cache: DatasetCache, world: _Dist
) -> None:
    run = {
        "format": RUN_FORMAT,
        "train_config": dataclasses.asdict(cfg),
        "policy_type": policy.policy_type,
        "policy_config": config_to_json(policy.cfg),
        "world_size": world.world,
        "dataset": {
            "cache": str(cache.root.resolve()),
            "data_index_hash": cache.data_index_hash,
            "state_names": cache.state_names,
            "action_names": cache.action_names,
            "cameras": cache.meta["cameras"],
            "control_rate_hz": cache.control_rate_hz,
            "episodes": {
                s: [e.episode_id for e in cache.split_episodes(s)] for s in ("train", "val")
            },
        },
    }
    (run_dir / RUN_FILE).write_text(json.dumps(run, indent=1) + "\n")


def _trim_metrics(path: Path, step: int) -> None:
    """Drops lines logged after the checkpoint being resumed (the interrupted run's tail)."""
    if not path.exists():
        return
    rows = [line for line in path.read_text().splitlines() if line]
    kept = [line for line in rows if json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in kept))
