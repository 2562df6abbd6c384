"""The LeRobot side of bench/vs_lerobot.py: one measurement per process, one JSON line out.
Runs in the LeRobot venv (scripts/lerobot_venv.sh) and imports only lerobot, torch and numpy.

    .venv-lerobot/bin/python bench/vs_lerobot_worker.py make-policy --dataset D --out P
    .venv-lerobot/bin/python bench/vs_lerobot_worker.py train --dataset D --policy P --steps N
    .venv-lerobot/bin/python bench/vs_lerobot_worker.py load  --dataset D --workers K
    .venv-lerobot/bin/python bench/vs_lerobot_worker.py infer --dataset D --policy P

Each mode does what lerobot 0.6.1 does itself:
- make-policy: `make_policy` from the dataset's meta with ACTConfig's defaults (but
  `pretrained_backbone_weights=None`: random init, offline, as on apprentice's side; and
  `--n-decoder-layers`), saved with `save_pretrained` beside its pre/post processors
  (`make_pre_post_processors` with the dataset's stats), as a checkpoint of lerobot-train holds;
- train: lerobot-train's data path and `update_policy` step without Accelerate (on one CPU
  process Accelerate adds nothing: no autocast, a plain backward, torch's grad-norm clip):
  LeRobotDataset with `resolve_delta_timestamps`, its `EpisodeAwareSampler` (shuffled), a
  DataLoader of batch 8, `preprocessor(batch)`, `policy.forward`, backward, clip 10, the
  optimizer of ACT's training preset (AdamW, `get_optim_params`), `zero_grad`;
- load: the same dataset and DataLoader (ACT samples: 100 actions), with lerobot-train's
  worker settings (spawn, prefetch 4, persistent) when --workers > 0;
- infer: the checkpoint reloaded (`from_pretrained`, processors from the folder), eval mode,
  batch 1: preprocessor → `predict_action_chunk` (under no_grad) → postprocessor; median.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import lerobot
import numpy as np
import torch
from lerobot.configs.train import TrainPipelineConfig
from lerobot.datasets import EpisodeAwareSampler, LeRobotDataset, LeRobotDatasetMetadata
from lerobot.datasets.factory import resolve_delta_timestamps
from lerobot.policies import make_policy, make_pre_post_processors
from lerobot.policies.act.configuration_act import ACTConfig
from lerobot.policies.act.modeling_act import ACTPolicy
from vs_lerobot_common import (  # bench/, beside this file
    children_peak_rss_mb,
    median_s,
    memory,
    time_batches,
)

REPO = "local/vs_lerobot"


def _dataset(root: str, delta_timestamps: dict | None) -> LeRobotDataset:
    return LeRobotDataset(REPO, root=root, delta_timestamps=delta_timestamps)


def _loader(ds: LeRobotDataset, workers: int, batch_size: int = 8) -> torch.utils.data.DataLoader:
    """lerobot-train's DataLoader (its TrainPipelineConfig defaults for the worker options)."""
    train = TrainPipelineConfig.__dataclass_fields__
    sampler = EpisodeAwareSampler(
        ds.meta.episodes["dataset_from_index"], ds.meta.episodes["dataset_to_index"],
        episode_indices_to_use=ds.episodes, shuffle=True, seed=0,
        absolute_to_relative_idx=ds.absolute_to_relative_idx,
    )  # fmt: skip
    on = workers > 0
    return torch.utils.data.DataLoader(
        ds, num_workers=workers, batch_size=batch_size, shuffle=False, sampler=sampler,
        pin_memory=False, drop_last=False,
        prefetch_factor=train["prefetch_factor"].default if on else None,
        persistent_workers=train["persistent_workers"].default and on,
        multiprocessing_context=train["dataloader_multiprocessing_context"].default if on else None,
    )  # fmt: skip


def _endless(loader):
    while True:
        yield from loader


def make_policy_mode(a: argparse.Namespace) -> dict:
    meta = LeRobotDatasetMetadata(REPO, root=a.dataset)
    torch.manual_seed(0)
    cfg = ACTConfig(pretrained_backbone_weights=None, device="cpu",
                    n_decoder_layers=a.n_decoder_layers)  # fmt: skip
    policy = make_policy(cfg, ds_meta=meta)
    pre, post = make_pre_post_processors(policy.config, dataset_stats=meta.stats)
    policy.save_pretrained(a.out)
    pre.save_pretrained(a.out)
    post.save_pretrained(a.out)
    return {"params": sum(p.numel() for p in policy.parameters()),
            "n_decoder_layers": cfg.n_decoder_layers, "dim_model": cfg.dim_model}  # fmt: skip


def _reload(folder: str):
    policy = ACTPolicy.from_pretrained(folder)
    policy.config.device = "cpu"
    pre, post = make_pre_post_processors(policy.config, pretrained_path=folder)
    return policy, pre, post


def train_mode(a: argparse.Namespace) -> dict:
    policy, pre, _ = _reload(a.policy)
    policy.train()
    ds = _dataset(a.dataset, resolve_delta_timestamps(policy.config, LeRobotDatasetMetadata(
        REPO, root=a.dataset)))  # fmt: skip
    optim_cfg = policy.config.get_optimizer_preset()
    optimizer = optim_cfg.build(policy.get_optim_params())
    batches = _endless(_loader(ds, a.workers))
    losses = []

    def step() -> None:
        batch = next(batches)
        for key in ds.meta.camera_keys:  # as lerobot-train does (its video frames are float)
            if batch[key].dtype == torch.uint8:
                batch[key] = batch[key].to(dtype=torch.float32) / 255.0
        batch = pre(batch)
        loss, _ = policy.forward(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), optim_cfg.grad_clip_norm)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))

    for _ in range(a.warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    wall = time.perf_counter() - t0
    batches.close()
    return {"rate": a.steps / wall, "unit": "steps/s", "timed_s": wall, "losses": losses,
            "params": sum(p.numel() for p in policy.parameters()),
            "optimizer": type(optimizer).__name__, "grad_clip_norm": optim_cfg.grad_clip_norm,
            "lr": optim_cfg.lr, "weight_decay": optim_cfg.weight_decay}  # fmt: skip


def load_mode(a: argparse.Namespace) -> dict:
    meta = LeRobotDatasetMetadata(REPO, root=a.dataset)
    ds = _dataset(a.dataset, {"action": [k / meta.fps for k in range(a.chunk)]})
    batches = _endless(_loader(ds, a.workers))
    out = time_batches(batches, lambda b: int(b["observation.state"].shape[0]),
                       2 + 4 * a.workers, a.batches, a.seconds)  # fmt: skip
    return out | {"workers_peak_rss_mb": children_peak_rss_mb(),
                  "video_backend": ds._video_backend}  # fmt: skip


def infer_mode(a: argparse.Namespace) -> dict:
    policy, pre, post = _reload(a.policy)
    policy.eval()
    item = _dataset(a.dataset, None)[0]
    obs = {k: v[None] for k, v in item.items()
           if k.startswith("observation.") and isinstance(v, torch.Tensor)}  # fmt: skip

    def run() -> torch.Tensor:
        return post(policy.predict_action_chunk(pre(dict(obs))))

    with torch.no_grad():
        total = median_s(run, a.repeats)
        normalized = pre(dict(obs))
        bare = median_s(lambda: policy.predict_action_chunk(normalized), a.repeats)
        chunk = run()
    return {"rate": total * 1e3, "unit": "ms", "model_only_ms": bare * 1e3,
            "chunk_shape": list(chunk.shape), "finite": bool(torch.isfinite(chunk).all()),
            "params": sum(p.numel() for p in policy.parameters())}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=("make-policy", "train", "load", "infer"))
    ap.add_argument("--dataset", required=True, help="the LeRobot dataset folder")
    ap.add_argument("--policy", help="a LeRobot ACT checkpoint folder (make-policy's --out)")
    ap.add_argument("--out", help="make-policy: the checkpoint folder to write")
    ap.add_argument("--n-decoder-layers", type=int, default=ACTConfig.n_decoder_layers)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--batches", type=int, default=100, help="load: at least this many")
    ap.add_argument("--seconds", type=float, default=5.0, help="load: and at least this long")
    ap.add_argument("--chunk", type=int, default=ACTConfig.chunk_size)
    ap.add_argument("--repeats", type=int, default=20)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    modes = {"make-policy": make_policy_mode, "train": train_mode, "load": load_mode,
             "infer": infer_mode}  # fmt: skip
    out = modes[a.mode](a)
    out |= {"side": "lerobot", "lerobot": lerobot.__version__, "torch": torch.__version__,
            "numpy": np.__version__, "threads": torch.get_num_threads(), **memory()}  # fmt: skip
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
