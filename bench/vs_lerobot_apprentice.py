"""The apprentice side of bench/vs_lerobot.py: one measurement per process, one JSON line out.

    .venv/bin/python bench/vs_lerobot_apprentice.py train --cache C --policy P --steps N ...
    .venv/bin/python bench/vs_lerobot_apprentice.py load  --cache C --workers K --batches N
    .venv/bin/python bench/vs_lerobot_apprentice.py infer --cache C --policy P --repeats N

`--policy` is an apprentice checkpoint folder (checkpoint.py format) that the driver made by
importing LeRobot's randomly initialized ACT (`apprentice import-policy`'s conversion), so both
sides start from the same config and the same weights; `--policy cpu` is apprentice's ACT CPU
preset (random init), which LeRobot's ACT cannot express. What each mode times is what
`apprentice train` / the policy node do: the training loader of `train_data.train_loader`, the
step of `train.py` (policy_batch, compute_loss, clip_grad_norm_ 10, fused AdamW at the paper
preset's lr and weight decay), ONNX Runtime through `runtime.load_onnx_policy`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from vs_lerobot_common import (  # bench/, beside this file
    children_peak_rss_mb,
    median_s,
    memory,
    time_batches,
)

from apprentice.dataset import DatasetCache
from apprentice.dataset.samples import ActSamples, policy_batch
from apprentice.learning.checkpoint import build_policy, load_policy
from apprentice.learning.export import export_onnx
from apprentice.learning.runtime import load_onnx_policy
from apprentice.learning.train_config import (
    DEFAULTS,
    TrainConfig,
    autocast,
    cpu_has_bf16,
    make_policy_config,
)
from apprentice.learning.train_data import train_loader
from apprentice.learning.train_dist import Dist

CPU = torch.device("cpu")


def _policy(name: str, cache: DatasetCache):
    if name != "cpu":
        return load_policy(name)
    torch.manual_seed(0)
    pcfg = make_policy_config("act", "cpu", cache, {})
    policy = build_policy(pcfg)
    policy.normalizer.set_stats("state", cache.stats("state", pcfg.state_norm))
    policy.normalizer.set_stats("action", cache.stats("action", pcfg.action_norm))
    return policy


def _loader(cache: DatasetCache, chunk: int, workers: int, batches: int, out: str):
    """apprentice train's loader (batch 8, seed 0) for `batches` steps."""
    cfg = TrainConfig(policy="act", data=str(cache.root), out=out, preset="paper", batch_size=8,
                      num_workers=workers).resolved()  # fmt: skip
    pcfg = make_policy_config("act", "paper", cache, {"chunk_size": chunk})
    return train_loader(cfg, cache, pcfg, 0, batches, Dist(), CPU)


def train(a: argparse.Namespace, cache: DatasetCache) -> dict:
    """Steps/s in float32 and then, on a CPU with native bf16, with `--cpu-bf16`'s autocast
    (`bf16_rate`), the same model and optimizer going on."""
    policy = _policy(a.policy, cache).train()
    d = DEFAULTS[("act", "paper")]
    optim = torch.optim.AdamW(policy.parameters(), lr=d.lr, betas=d.betas,
                              weight_decay=d.weight_decay, fused=True)  # fmt: skip
    losses: dict[str, list[float]] = {"fp32": [], "bf16": []}

    def step(batch: dict, bf16: bool) -> None:
        obs, action, pad = policy_batch(batch, CPU)
        with autocast(CPU, bf16):
            loss, _ = policy.compute_loss(obs, action, pad)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 10.0)
        optim.step()
        losses["bf16" if bf16 else "fp32"].append(float(loss.detach()))

    def rate(bf16: bool) -> tuple[float, float]:
        batches = iter(_loader(cache, policy.cfg.chunk_size, a.workers, a.warmup + a.steps, a.tmp))
        for _ in range(a.warmup):
            step(next(batches), bf16)
        t0 = time.perf_counter()
        for batch in batches:  # the loader's time is in the step time, as in a training run
            step(batch, bf16)
        wall = time.perf_counter() - t0
        return a.steps / wall, wall

    fp32, wall = rate(False)
    out = {"rate": fp32, "unit": "steps/s", "timed_s": wall, "losses": losses,
           "params": sum(p.numel() for p in policy.parameters())}  # fmt: skip
    if cpu_has_bf16():
        out["bf16_rate"], out["bf16_timed_s"] = rate(True)
    return out


def load(a: argparse.Namespace, cache: DatasetCache) -> dict:
    batches = iter(_loader(cache, a.chunk, a.workers, 10**9, a.tmp))  # endless, lazily
    out = time_batches(batches, lambda b: int(b["state"].shape[0]), 2 + 4 * a.workers,
                       a.batches, a.seconds)  # fmt: skip
    return out | {"workers_peak_rss_mb": children_peak_rss_mb()}


def infer(a: argparse.Namespace, cache: DatasetCache) -> dict:
    policy = _policy(a.policy, cache).eval()
    folder = Path(a.tmp) / "onnx"
    export_onnx(
        policy, folder, joint_names=cache.action_names, camera_names=cache.camera_names,
        control_rate_hz=cache.control_rate_hz, data_index_hash=cache.data_index_hash,
    )  # fmt: skip
    runner = load_onnx_policy(folder, threads=a.threads)
    sample = ActSamples(cache, "all", policy.cfg.chunk_size)[[0]]  # a batch of one
    obs, _, _ = policy_batch(sample, CPU)  # images float in [0, 1]
    state, images = obs["state"].numpy(), obs["images"].numpy()
    onnx = median_s(lambda: runner.predict(state, images), a.repeats)
    eager = median_s(lambda: policy.predict_action(obs), a.repeats)
    diff = float(np.abs(runner.predict(state, images) - policy.predict_action(obs).numpy()).max())
    return {"rate": onnx * 1e3, "unit": "ms", "eager_ms": eager * 1e3, "onnx_vs_eager": diff,
            "onnxruntime": onnxruntime.__version__,
            "params": sum(p.numel() for p in policy.parameters())}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=("train", "load", "infer"))
    ap.add_argument("--cache", required=True)
    ap.add_argument("--policy", help="apprentice checkpoint folder, or 'cpu' (the CPU preset)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--batches", type=int, default=100, help="load: at least this many")
    ap.add_argument("--seconds", type=float, default=5.0, help="load: and at least this long")
    ap.add_argument("--chunk", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=20)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cache = DatasetCache(a.cache)
    with tempfile.TemporaryDirectory() as tmp:
        a.tmp = tmp
        out = {"train": train, "load": load, "infer": infer}[a.mode](a, cache)
    out |= {"side": "apprentice", "torch": torch.__version__, "threads": torch.get_num_threads(),
            **memory()}  # fmt: skip
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
