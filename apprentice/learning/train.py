"""Training ACT / Diffusion Policy from a dataset cache (or episode bags), and exporting a run.

    result = train(TrainConfig(policy="act", data="caches/pick", out="runs/pick", preset="cpu"))
    card = export_run("runs/pick")               # → runs/pick/policy/ (ONNX + policy card)

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
import difflib
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, Sampler, Subset
from tqdm import tqdm

from apprentice.dataset import DatasetCache, DatasetConfig, build_cache, find_episodes, is_cache
from apprentice.dataset.bag import EpisodeBag
from apprentice.dataset.config import infer_config
from apprentice.dataset.samples import ActSamples, DiffusionSamples, policy_batch
from apprentice.errors import UserPathError, UserValueError
from apprentice.learning.backbone import (
    CONVERT_COMMAND,
    IMAGENET_URL,
    TORCHVISION_WIDTH,
    load_torchvision_weights,
)
from apprentice.learning.checkpoint import (
    POLICIES,
    Policy,
    PolicyConfig,
    config_to_json,
    load_policy,
    save_policy,
)
from apprentice.learning.export import export_onnx

RUN_FORMAT = "apprentice.train_run/1"
RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"
LAST = Path("checkpoints") / "last"
Preset = Literal["paper", "cpu"]


@dataclass(frozen=True)
class OptimDefaults:
    lr: float
    weight_decay: float
    betas: tuple[float, float]
    batch_size: int
    warmup_steps: int
    schedule: Literal["constant", "cosine"]
    steps: int


# The papers' settings; the CPU presets train small models from scratch, which takes a
# larger learning rate for ACT and a smaller batch for Diffusion Policy. (ACT CPU preset at
# 2e-4 with warm-up and cosine decay: lower validation loss, 0.025 vs 0.028 after 6000 steps,
# but 1/10 vs 6/10 in closed loop on the transfer cube, so the constant rate stays.)
DEFAULTS: dict[tuple[str, str], OptimDefaults] = {
    ("act", "paper"): OptimDefaults(1e-5, 1e-4, (0.9, 0.999), 8, 0, "constant", 100_000),
    ("act", "cpu"): OptimDefaults(1e-4, 1e-4, (0.9, 0.999), 8, 0, "constant", 6_000),
    ("diffusion", "paper"): OptimDefaults(1e-4, 1e-6, (0.95, 0.999), 64, 500, "cosine", 100_000),
    ("diffusion", "cpu"): OptimDefaults(1e-4, 1e-6, (0.95, 0.999), 8, 100, "cosine", 5_000),
}


@dataclass(frozen=True)
class TrainConfig:
    policy: str  # "act" | "diffusion"
    data: str  # a dataset cache, or a folder of episode bags (cached into <out>/dataset)
    out: str  # the run folder
    preset: Preset = "paper"
    steps: int | None = None  # total optimizer steps (a resumed run continues to this)
    batch_size: int | None = None  # per process
    lr: float | None = None
    weight_decay: float | None = None
    ema_decay: float | None = None  # e.g. 0.999; None: no EMA
    grad_clip: float = 10.0
    seed: int = 0
    val_every: int = 500
    val_batches: int = 8
    log_every: int = 10
    checkpoint_every: int = 1000
    num_workers: int | None = None  # DataLoader workers; None: 0 on CPU, 4 on CUDA
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    amp: bool = True  # bf16 autocast on CUDA; CPU always trains in float32
    backbone_weights: str | None = None  # torchvision ResNet-18 as safetensors (backbone.py)
    dataset_config: str | None = None  # YAML (dataset/config.py) when `data` holds bags
    policy_overrides: dict[str, Any] = field(default_factory=dict)  # policy config fields

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise UserValueError(f"policy must be one of {sorted(POLICIES)}, got {self.policy!r}")
        if self.preset not in ("paper", "cpu"):
            raise UserValueError(f"preset must be 'paper' or 'cpu', got {self.preset!r}")
        for name in ("steps", "batch_size", "val_every", "log_every", "checkpoint_every"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserValueError(f"{name} must be >= 1, got {value}")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise UserValueError(f"ema_decay must be in (0, 1), got {self.ema_decay}")

    def resolved(self) -> TrainConfig:
        """None hyper-parameters replaced by the preset's defaults."""
        d = DEFAULTS[(self.policy, self.preset)]
        return dataclasses.replace(
            self,
            steps=self.steps or d.steps,
            batch_size=self.batch_size or d.batch_size,
            lr=self.lr if self.lr is not None else d.lr,
            weight_decay=self.weight_decay if self.weight_decay is not None else d.weight_decay,
        )


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    step: int
    train_loss: float
    val_loss: float | None


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


def make_policy_config(
    policy_type: str, preset: Preset, cache: DatasetCache, overrides: dict[str, Any]
) -> PolicyConfig:
    """The preset's config with the dataset's dimensions and image size."""
    config_cls = POLICIES[policy_type][0]
    s, a, n = len(cache.state_names), len(cache.action_names), len(cache.camera_names)
    if n < 1:
        raise ValueError(f"{cache.root}: the policies need at least one camera")
    base = config_cls.cpu_preset(s, a, n) if preset == "cpu" else config_cls(s, a, n)
    h, w = cache.image_hw
    changes: dict[str, Any] = {"image_hw": (h, w)}
    if policy_type == "diffusion":
        # The paper crops 84 of 96 pixels (87.5 %) at random while training.
        crop = (round(0.875 * h), round(0.875 * w))
        changes["crop_hw"] = crop if min(crop) >= 32 else None
    check_overrides(policy_type, overrides)
    try:
        return dataclasses.replace(base, **(changes | overrides))
    except ValueError as exc:  # the config's own checks (__post_init__)
        raise UserValueError(f"{policy_type} config: {exc}") from None


def backbone_notice(policy_type: str, pcfg: PolicyConfig, backbone_weights: str | None) -> str:
    """What a fresh run says on stderr about where its ResNet-18 starts: a WARNING for ACT at
    full width from random weights (the paper fine-tunes from ImageNet; with frozen BatchNorm
    at its initial identity a random trunk is not even normalized), a note otherwise."""
    if backbone_weights is not None:
        return f"backbone: torchvision ResNet-18 weights from {backbone_weights}"
    width = pcfg.backbone_width
    if width != TORCHVISION_WIDTH:
        return (f"note: backbone: random init (ResNet-18 at width {width}; torchvision's "
                f"ImageNet weights fit only backbone_width={TORCHVISION_WIDTH})")  # fmt: skip
    if policy_type == "act":
        return (
            "WARNING: backbone: ACT's ResNet-18 starts from RANDOM weights, not ImageNet as in "
            "the paper; convert torchvision's weights once "
            f"({CONVERT_COMMAND}, the .pth from {IMAGENET_URL}) and pass "
            "--backbone-weights resnet18.safetensors"
        )
    return "note: backbone: random init, as in the Diffusion Policy paper"


def check_overrides(policy_type: str, overrides: dict[str, Any]) -> None:
    """Refuses a key that is not a field of the policy's config, naming the nearest one."""
    names = [f.name for f in dataclasses.fields(POLICIES[policy_type][0])]
    for key in overrides:
        if key not in names:
            near = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {near[0]}?" if near else f"; fields: {', '.join(names)}"
            raise UserValueError(f"{policy_type} config has no field {key!r}{hint}")


def preset_image_hw(policy_type: str, preset: Preset) -> tuple[int, int]:
    """The image size a preset's policy is designed for (used when caching bags)."""
    config_cls = POLICIES[policy_type][0]
    cfg = config_cls.cpu_preset(1, 1) if preset == "cpu" else config_cls(1, 1)
    return cfg.image_hw


def _samples(policy_type: str, cache: DatasetCache, split: str, pcfg: PolicyConfig):
    if policy_type == "act":
        return ActSamples(cache, split, pcfg.chunk_size)
    return DiffusionSamples(cache, split, pcfg.n_obs_steps, pcfg.horizon)


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
# Checkpoints


def _optimizer_to_files(optim: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = optim.state_dict()
    tensors, scalars = {}, {}
    for pid, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "state_scalars": scalars}


def _optimizer_from_files(tensors: dict[str, torch.Tensor], data: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    for pid, values in data["state_scalars"].items():
        state.setdefault(int(pid), {}).update(values)
    return {"state": state, "param_groups": data["param_groups"]}


def _rng_tensors() -> dict[str, torch.Tensor]:
    out = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        out |= {f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
    return out


def _set_rng(tensors: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("cuda.")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])


def _save_checkpoint(
    run_dir: Path, step: int, policy: Policy, ema: Ema | None, optim: torch.optim.Optimizer,
    world: _Dist,
) -> None:  # fmt: skip
    """Writes checkpoints/.last.tmp, then swaps it in for checkpoints/last."""
    final, tmp = run_dir / LAST, run_dir / "checkpoints" / ".last.tmp"
    if world.main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    world.barrier()
    save_file(_rng_tensors(), str(tmp / f"rng.rank{world.rank}.safetensors"))
    world.barrier()
    if world.main:
        save_policy(policy, tmp / "model")
        if ema is not None:
            save_policy(ema.model, tmp / "ema")
        tensors, scalars = _optimizer_to_files(optim)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        state = {"step": step, "world_size": world.world, "optimizer": scalars}
        (tmp / "state.json").write_text(json.dumps(state, indent=1) + "\n")
        old = run_dir / "checkpoints" / ".last.old"
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    world.barrier()


# ---------------------------------------------------------------------------------------------
# Validation and plots


def _autocast(device: torch.device, amp: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda")


@torch.no_grad()
def validate(
    policy: Policy, batches: DataLoader, device: torch.device, amp: bool
) -> dict[str, float]:
    """Mean loss terms over fixed validation batches, deterministic: ACT in eval mode uses
    z = mu; Diffusion draws its noise and timesteps from a generator seeded the same each
    time. The global RNG (that training uses) is not touched."""
    was_training = policy.training
    policy.eval()
    gen = torch.Generator(device=device).manual_seed(1234)
    totals: dict[str, float] = {}
    count = 0
    for batch in batches:
        obs, action, pad = policy_batch(batch, device)
        with _autocast(device, amp):
            if policy.policy_type == "act":
                _, info = policy.compute_loss(obs, action, pad)
            else:
                noise = torch.randn(action.shape, generator=gen, device=device)
                t = torch.randint(
                    0, policy.cfg.num_train_timesteps, (action.shape[0],), generator=gen,
                    device=device,
                )  # fmt: skip
                _, info = policy.compute_loss(obs, action, noise=noise, timesteps=t)
        b = action.shape[0]
        for k, v in info.items():
            totals[k] = totals.get(k, 0.0) + v * b
        count += b
    policy.train(was_training)
    return {f"val_{k}": v / count for k, v in totals.items()}


def plot_losses(metrics_path: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line]
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        steps, loss = np.array(train).T
        ax.plot(steps, loss, color="tab:blue", alpha=0.3, lw=0.8, label="train")
        k = max(1, len(loss) // 50)
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1 :], smooth, color="tab:blue", lw=1.5, label=f"train (mean of {k})")
    if val:
        steps, loss = np.array(val).T
        ax.plot(steps, loss, "o-", color="tab:orange", ms=3, label="validation")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)


@torch.no_grad()
def plot_samples(
    policy: Policy, cache: DatasetCache, png: Path, device: torch.device, max_points: int = 60
) -> None:
    """Recorded actions of one validation episode (lines) against the policy's first predicted
    action at up to max_points frames (dots), and three whole predicted chunks (thin lines)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    split = "val" if cache.split_episodes("val") else "train"
    episode = cache.split_episodes(split)[0]
    samples = _samples(policy.policy_type, cache, split, policy.cfg)
    picks = np.unique(
        np.linspace(0, episode.length - 1, min(max_points, episode.length)).astype(int)
    )
    batch = torch.utils.data.default_collate([samples[int(i)] for i in picks])
    obs, _, _ = policy_batch(batch, device)
    was_training = policy.training
    policy.eval()
    if policy.policy_type == "act":
        chunks = policy.predict_action(obs)  # (M, K, A), step 0 = frame t
    else:
        gen = torch.Generator(device=device).manual_seed(0)
        chunks = policy.predict_action(obs, generator=gen)  # (M, Ta, A), step 0 = frame t
    policy.train(was_training)
    chunks = chunks.float().cpu().numpy()
    rate = cache.control_rate_hz
    truth = np.asarray(cache.action[episode.start : episode.stop])  # (T, A)
    names = cache.action_names
    n = min(len(names), 8)
    fig, axes = plt.subplots(n, 1, figsize=(8, 1.6 * n + 0.6), dpi=100, sharex=True, squeeze=False)
    t = np.arange(episode.length) / rate
    for j, ax in enumerate(axes[:, 0]):
        ax.plot(t, truth[:, j], color="black", lw=1.2, label="recorded")
        ax.plot(picks / rate, chunks[:, 0, j], ".", color="tab:red", ms=4, label="predicted")
        for k in picks[[0, len(picks) // 2, -1]]:
            row = int(np.searchsorted(picks, k))
            steps = np.arange(chunks.shape[1])
            ax.plot((k + steps) / rate, chunks[row, :, j], color="tab:red", alpha=0.4, lw=0.8)
        ax.set_ylabel(names[j], fontsize=8)
        ax.grid(alpha=0.3)
    axes[0, 0].set_title(f"{policy.policy_type}: episode {episode.episode_id} ({split})")
    axes[0, 0].legend(fontsize=7, loc="upper right")
    axes[-1, 0].set_xlabel("time (s)")
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)


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
    start = 0
    if resume:
        state = json.loads((ckpt / "state.json").read_text())
        start = int(state["step"])
        policy.load_state_dict(load_policy(ckpt / "model").state_dict())
        if ema is not None:
            ema.model.load_state_dict(load_policy(ckpt / "ema").state_dict())
    policy.to(device).train()
    if ema is not None:
        ema.model.to(device)
    # fused: one update over all parameters instead of a loop per tensor (with the ACT model's
    # byte-mask dropout: 1.34x the steps/s of the ACT CPU preset, docs/BENCHMARKS.md)
    optim = torch.optim.AdamW(
        policy.parameters(), lr=cfg.lr, betas=d.betas, weight_decay=cfg.weight_decay, fused=True
    )
    if resume:
        tensors = load_file(str(ckpt / "optimizer.safetensors"), device=str(device))
        optim.load_state_dict(_optimizer_from_files(tensors, state["optimizer"]))
        rng_file = ckpt / f"rng.rank{world.rank}.safetensors"
        if rng_file.exists():
            _set_rng(load_file(str(rng_file)))
        else:  # resumed with more processes than saved: fresh, distinct streams
            torch.manual_seed(cfg.seed + 7919 * (start + 1) + world.rank)
    else:
        torch.manual_seed(cfg.seed + world.rank)  # distinct noise per rank

    if world.main:
        _write_run_json(run_dir, cfg, policy, cache, world)
        _trim_metrics(run_dir / METRICS_FILE, start)
    train_ds = _samples(cfg.policy, cache, "train", pcfg)
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
    eval_policy = ema.model if ema is not None else policy
    bar = tqdm(total=cfg.steps, initial=start, desc=f"train {cfg.policy}", unit="step",
               disable=not (progress and world.main), dynamic_ncols=True)  # fmt: skip
    last_loss, last_val = math.nan, None
    done = start
    t_start = time.perf_counter()
    for step, batch in enumerate(loader, start=start):
        lr = lr_at(step, cfg)
        for group in optim.param_groups:
            group["lr"] = lr
        obs, action, pad = policy_batch(batch, device)
        with _autocast(device, cfg.amp):
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
        if done % cfg.checkpoint_every == 0 or done == stop:
            _save_checkpoint(run_dir, done, policy, ema, optim, world)
        bar.update(1)
    bar.close()
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
    val_ds = _samples(cfg.policy, cache, "val", pcfg)
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


# ---------------------------------------------------------------------------------------------
# Export


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def export_run(
    run_dir: str | Path,
    out: str | Path | None = None,
    weights: Literal["auto", "ema", "model"] = "auto",
) -> tuple[dict[str, Any], float]:
    """Exports the run's last checkpoint to `out` (default <run>/policy) with
    `apprentice.learning.export`; returns (the policy card, max |ONNX - PyTorch| on a cached
    validation sample, normalized units). weights "auto": the EMA weights when the run kept
    them."""
    from apprentice.learning.runtime import load_onnx_policy

    run_dir = Path(run_dir)
    if not (run_dir / RUN_FILE).is_file():
        raise FileNotFoundError(f"{run_dir}: no {RUN_FILE}, not a training run folder")
    try:
        run = json.loads((run_dir / RUN_FILE).read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{run_dir / RUN_FILE}: not JSON ({exc})") from None
    if not isinstance(run, dict) or run.get("format") != RUN_FORMAT:
        raise ValueError(f"{run_dir / RUN_FILE}: not a {RUN_FORMAT} file")
    ckpt = run_dir / LAST
    if weights == "auto":
        weights = "ema" if (ckpt / "ema").exists() else "model"
    if not (ckpt / weights).exists():
        raise FileNotFoundError(f"{ckpt / weights}: no such checkpoint weights")
    policy = load_policy(ckpt / weights)
    data = run["dataset"]
    out = Path(out) if out is not None else run_dir / "policy"
    cache = DatasetCache(data["cache"])
    card = export_onnx(
        policy,
        out,
        joint_names=data["action_names"],
        state_names=data["state_names"],
        camera_names=[c["name"] for c in data["cameras"]],
        control_rate_hz=data["control_rate_hz"],
        data_index_hash=data["data_index_hash"],
        camera_sources={c["name"]: c.get("source") for c in data["cameras"]},
        train_seeds=cache.scene_seeds(),  # scenes an eval must not reuse
    )
    runner = load_onnx_policy(out)
    split = "val" if cache.split_episodes("val") else "train"
    sample = torch.utils.data.default_collate(
        [_samples(policy.policy_type, cache, split, policy.cfg)[0]]
    )
    obs, _, _ = policy_batch(sample, "cpu")
    state = policy.normalizer.normalize("state", obs["state"])
    with torch.no_grad():
        if policy.policy_type == "act":
            eager = policy(state, obs["images"]).numpy()
            onnx_out = runner.run_normalized(state.numpy(), obs["images"].numpy())
        else:
            eager = policy.encode_obs(state, obs["images"]).numpy()
            onnx_out = runner.encode(state.numpy(), obs["images"].numpy())
    return card, float(np.abs(eager - onnx_out).max())
