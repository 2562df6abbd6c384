"""Training ACT / Diffusion Policy from a dataset cache (or episode bags): the loop. Config,
data, model, the step loop, checkpoints; the pieces live beside it.

    result = train(TrainConfig(policy="act", data="caches/pick", out="runs/pick", preset="cpu"))

Beside it, imported here and never importing this module:
    train_config.py       TrainConfig, TrainResult, the presets' DEFAULTS, make_policy_config,
                          the run folder's file names
    train_data.py         the cache (or bags → cache), StepBatches, the train and validation
                          loaders, TimedBatches (the time the loop waits for data)
    train_dist.py         ranks (torchrun), the device, the DDP-wrapped loss, cross-rank means
    train_optim.py        lr_at (the schedule), Ema
    train_run.py          run.json, resume_config, metrics.jsonl's trim on resume
    train_checkpoint.py   checkpoints/last: save_checkpoint, load_checkpoint
    train_report.py       validate, plot_losses, plot_samples, read_metrics, and export_run
                          (runs/pick → runs/pick/policy/, ONNX + policy card)

Run folder:
    run.json              the resolved TrainConfig, the policy config, the dataset's names,
                          cameras, control rate and data-index hash (what export needs)
    metrics.jsonl         one JSON line per logged step: train loss terms, lr, grad norm,
                          data_wait (share of the wall time since the previous line spent
                          waiting for the loader), val loss
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
float32, or with `cpu_bf16` (`--cpu-bf16`) in bf16 autocast on a CPU that computes bf16
natively (AVX512-BF16, AMX; 2.0-2.2x the float32 steps/s at the paper's ACT sizes, loss curves
compared in docs/BENCHMARKS.md; refused elsewhere, where torch emulates bf16).

Multi-GPU: the same command under `torchrun --nproc-per-node N`; each process takes
`batch_size` samples of a global batch of N·batch_size (DistributedDataParallel, NCCL on
CUDA, gloo on CPU); rank 0 validates, plots and writes checkpoints.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from apprentice.dataset.samples import policy_batch
from apprentice.learning.backbone import load_torchvision_weights
from apprentice.learning.checkpoint import POLICIES
from apprentice.learning.train_checkpoint import StopRequest, load_checkpoint, save_checkpoint
from apprentice.learning.train_config import (
    DEFAULTS,
    LAST,
    METRICS_FILE,
    TrainConfig,
    TrainResult,
    autocast,
    backbone_notice,
    make_policy_config,
    uses_bf16,
)
from apprentice.learning.train_data import (
    StepBatches,
    TimedBatches,
    open_data,
    train_loader,
    val_loader,
)
from apprentice.learning.train_dist import (
    check_replicas_agree,
    init_distributed,
    loss_module,
    mean_over_ranks,
    resolve_device,
)
from apprentice.learning.train_optim import Ema, lr_at
from apprentice.learning.train_report import plot_losses, plot_samples, validate
from apprentice.learning.train_run import resume_config, trim_metrics, write_run_json

__all__ = ["Ema", "StepBatches", "TrainConfig", "TrainResult", "lr_at", "resume_config", "train"]


def train(
    cfg: TrainConfig, *, resume: bool = False, until: int | None = None, progress: bool = True
) -> TrainResult:
    """Trains to cfg.steps. resume=True continues `checkpoints/last` of cfg.out (which must
    exist); without it, a run folder that already has a checkpoint is refused. `until` stops
    early at that step (a time-sliced job), checkpointed; the schedule still spans cfg.steps."""
    # -- config, processes, device -------------------------------------------------------------
    cfg = cfg.resolved()
    assert cfg.steps is not None and cfg.batch_size is not None
    stop = cfg.steps if until is None else min(until, cfg.steps)
    run_dir = Path(cfg.out)
    ckpt = run_dir / LAST
    if resume and not (ckpt / "state.json").exists():
        raise FileNotFoundError(f"{ckpt}: no checkpoint to resume from")
    if not resume and ckpt.exists():
        raise FileExistsError(f"{run_dir} already holds a run: resume it or choose another out")
    world = init_distributed(
        "cuda" if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
        else "cpu"
    )  # fmt: skip
    device = resolve_device(cfg.device, world)
    bf16 = uses_bf16(cfg, device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    if world.main:
        run_dir.mkdir(parents=True, exist_ok=True)
    world.barrier()
    cache = open_data(cfg, run_dir, world, progress and world.main)

    # -- model, EMA, optimizer -----------------------------------------------------------------
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

    # -- data ----------------------------------------------------------------------------------
    if world.main:
        write_run_json(run_dir, cfg, policy, cache, world.world)
        trim_metrics(run_dir / METRICS_FILE, start)
    loader = train_loader(cfg, cache, pcfg, start, stop, world, device)
    has_val = bool(cache.split_episodes("val"))
    val_batches = val_loader(cfg, cache, pcfg) if world.main else None
    if world.main and not has_val:
        tqdm.write("no validation episodes: validation loss is not computed")
    module = loss_module(policy, device, world)
    eval_policy = ema_model if ema_model is not None else policy

    # -- the step loop -------------------------------------------------------------------------
    bar = tqdm(total=cfg.steps, initial=start, desc=f"train {cfg.policy}", unit="step",
               disable=not (progress and world.main), dynamic_ncols=True)  # fmt: skip
    last_loss, last_val = math.nan, None
    done = start
    t_start = time.perf_counter()
    batches = TimedBatches(loader)
    with StopRequest(enabled=not world.enabled) as stop_request:
        for step, batch in enumerate(batches, start=start):
            lr = lr_at(step, cfg)
            for group in optim.param_groups:
                group["lr"] = lr
            obs, action, pad = policy_batch(batch, device)
            with autocast(device, bf16):
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
                info = mean_over_ranks(info, device, world)
                last_loss = info["loss"]
                row = {"step": done, **info, "lr": lr, "grad_norm": grad_norm,
                       "data_wait": round(batches.wait_fraction(), 4)}  # fmt: skip
                bar.set_postfix(loss=f"{last_loss:.4g}")
            if world.main and validating:
                assert val_batches is not None
                val = validate(eval_policy, val_batches, device, bf16)
                last_val = val["val_loss"]
                row = {"step": done, **row, **val}
                tqdm.write(f"step {done}: train loss {last_loss:.4g}, val loss {last_val:.4g}")
            if world.main and row:
                with open(run_dir / METRICS_FILE, "a") as f:
                    f.write(json.dumps(row) + "\n")
                if "val_loss" in row or done == stop:
                    plot_losses(run_dir / METRICS_FILE, run_dir / "loss.png")

            # -- checkpoint ----------------------------------------------------------------
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
        wall = time.perf_counter() - t_start
        tqdm.write(
            f"{cfg.policy}: {done - start} steps at {(done - start) / wall:.2f} steps/s on "
            f"{device}{' (bf16 autocast)' if bf16 else ''}, {batches.waited_s / wall:.0%} of "
            "the time waiting for data "
            f"({loader.num_workers} loader workers)"
        )
        plot_samples(eval_policy, cache, run_dir / "samples.png", device)
    if world.enabled:
        check_replicas_agree(policy, device)
    return TrainResult(run_dir, done, last_loss, last_val)
