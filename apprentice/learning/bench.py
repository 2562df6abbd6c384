"""CPU measurements of the CPU presets (a tool, not a test):

    python -m apprentice.learning.bench --threads 2

Prints JSON: ACT batch-1 latency, eager vs onnxruntime; Diffusion Policy batch-1 latency of the
numpy-DDIM runtime; training steps/s of both presets at batch 8, and of ACT with torch's own
dropout and the per-parameter AdamW (the baseline for ours). Medians over repeats.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from apprentice.learning.act.config import ActConfig
from apprentice.learning.act.model import ActPolicy, Dropout
from apprentice.learning.checkpoint import Policy
from apprentice.learning.diffusion.config import DiffusionConfig
from apprentice.learning.diffusion.model import DiffusionPolicy
from apprentice.learning.export import export_onnx
from apprentice.learning.runtime import load_onnx_policy

JOINTS = [f"joint_{i}" for i in range(6)]


def _median_ms(fn: Callable[[], object], repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def _train_steps_per_s(
    policy: Policy,
    obs: dict[str, torch.Tensor],
    actions: torch.Tensor,
    steps: int,
    fused: bool = True,  # as apprentice.learning.train
) -> float:
    optim = torch.optim.AdamW(policy.parameters(), lr=1e-4, fused=fused)
    policy.train()

    def step() -> None:
        loss, _ = policy.compute_loss(obs, actions)
        optim.zero_grad()
        loss.backward()
        optim.step()

    return 1e3 / _median_ms(step, steps, warmup=2)


def run(threads: int, repeats: int) -> dict[str, object]:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    out: dict[str, object] = {"threads": threads, "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        act_cfg = ActConfig.cpu_preset(6, 6, n_cameras=1)
        act = ActPolicy(act_cfg).eval()
        h, w = act_cfg.image_hw
        state, images = torch.randn(1, 6), torch.rand(1, 1, 3, h, w)
        export_onnx(act, Path(tmp, "act"), joint_names=JOINTS, camera_names=["cam"],
                    control_rate_hz=30.0, data_index_hash="bench")  # fmt: skip
        with torch.no_grad():
            eager_ms = _median_ms(lambda: act(state, images), repeats)
            eager_out = act(state, images).numpy()
        runner = load_onnx_policy(Path(tmp, "act"), threads=threads)
        diff = np.abs(runner.run_normalized(state.numpy(), images.numpy()) - eager_out)
        ort_ms = _median_ms(lambda: runner.run_normalized(state.numpy(), images.numpy()), repeats)
        out["act_cpu_preset"] = {
            "params_M": round(sum(p.numel() for p in act.parameters()) / 1e6, 2),
            "image_hw": list(act_cfg.image_hw),
            "batch1_eager_ms": round(eager_ms, 2),
            "batch1_onnxruntime_ms": round(ort_ms, 2),
            "max_abs_diff": float(diff.max()),
        }
        obs = {"state": torch.randn(8, 6), "images": torch.rand(8, 1, 3, h, w)}
        train = _train_steps_per_s(act, obs, torch.randn(8, act_cfg.chunk_size, 6), repeats)
        out["act_cpu_preset"]["train_steps_per_s_batch8"] = round(train, 2)
        # the baseline: torch's own dropout and the per-parameter (unfused) AdamW
        for module in list(act.modules()):
            for name, child in list(module.named_children()):
                if isinstance(child, Dropout):
                    setattr(module, name, torch.nn.Dropout(child.p))
        base = _train_steps_per_s(act, obs, torch.randn(8, act_cfg.chunk_size, 6), repeats, False)
        out["act_cpu_preset"]["train_steps_per_s_batch8_baseline"] = round(base, 2)

        dp_cfg = DiffusionConfig.cpu_preset(6, 6, n_cameras=1)
        dp = DiffusionPolicy(dp_cfg).eval()
        to, (h, w) = dp_cfg.n_obs_steps, dp_cfg.image_hw
        export_onnx(dp, Path(tmp, "dp"), joint_names=JOINTS, camera_names=["cam"],
                    control_rate_hz=10.0, data_index_hash="bench")  # fmt: skip
        dp_runner = load_onnx_policy(Path(tmp, "dp"), threads=threads)
        rng = np.random.default_rng(0)
        state_np, images_np = np.zeros((1, to, 6)), rng.random((1, to, 1, 3, h, w))
        dp_ms = _median_ms(lambda: dp_runner.predict(state_np, images_np, rng), repeats)
        obs = {"state": torch.randn(8, to, 6), "images": torch.rand(8, to, 1, 3, h, w)}
        train = _train_steps_per_s(dp, obs, torch.randn(8, dp_cfg.horizon, 6), repeats)
        out["diffusion_cpu_preset"] = {
            "params_M": round(sum(p.numel() for p in dp.parameters()) / 1e6, 2),
            "image_hw": list(dp_cfg.image_hw),
            "batch1_onnxruntime_ddim10_ms": round(dp_ms, 2),
            "train_steps_per_s_batch8": round(train, 2),
        }
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch and onnxruntime threads")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    print(json.dumps(run(args.threads, args.repeats), indent=2))


if __name__ == "__main__":
    main()
