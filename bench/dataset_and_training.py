"""Dataset cache vs decoding bags, training steps/s, ONNX Runtime vs PyTorch eager latency.

    python bench/dataset_and_training.py [--threads 2] [--episodes 4] [--seconds 10]
                                         [--only loader|training|latency]

1. Writes synthetic episodes as real bags (recording core): 7 joints at 100 Hz, commands at
   50 Hz, one 480x640 JPEG camera at 30 Hz; builds a 50 Hz cache at the ACT CPU preset's
   96x128 (timed).
2. Samples/s for random ACT samples (state, image, 100-step action chunk): from the cache vs
   straight from the bags (indexed MCAP seek by time, CDR decode, JPEG decode, resize): the
   same as-of rule, no cache. Same sample content either way.
3. Loader samples/s, batch 8 of ACT samples (chunk 50): 0 and 2 DataLoader workers, each
   through the per-sample path (`ds[i]` per index, default_collate) and the batched path
   (`ds[batch]`, one read per array per batch: samples.batch_loader), the loader alone and
   feeding a consumer that idles 1 ms per batch (a GPU-bound step's stand-in); best and
   median of interleaved repeats. Then training steps/s of the ACT CPU preset on 0 and 2
   workers (batched) with the share of time spent waiting for data. On a 2-core machine the
   workers share the cores with the step and with whatever else runs.
4. Training steps/s of the ACT and Diffusion CPU presets, batch 8, from the cache through a
   DataLoader (forward, backward, AdamW step).
5. Batch-1 latency, PyTorch eager vs ONNX Runtime (runtime.py): ACT one forward pass;
   Diffusion the full inference (observation encoder + 10 DDIM steps).
Prints JSON; ratios are against the baseline measured in the same run. Medians.
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
from mcap.reader import SeekingReader
from rosbags.typesys import Stores, get_typestore
from torch.utils.data import DataLoader

from apprentice.dataset import DatasetCache, EpisodeBag, build_cache, infer_config
from apprentice.dataset.images import decode_compressed, resize_chw
from apprentice.dataset.samples import ActSamples, DiffusionSamples, batch_loader, policy_batch
from apprentice.dataset.synthetic import SyntheticEpisode, write_episode
from apprentice.learning.checkpoint import POLICIES
from apprentice.learning.export import export_onnx
from apprentice.learning.runtime import load_onnx_policy
from apprentice.learning.train_config import make_policy_config
from apprentice.learning.train_data import StepBatches, TimedBatches

TS = get_typestore(Stores.ROS2_JAZZY)
JOINTS = ("waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate", "gripper")


def _median_s(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


class BagSamples:
    """ACT samples decoded from the bags on every access (the no-cache baseline)."""

    def __init__(self, cache: DatasetCache, chunk: int):
        self.cache, self.chunk = cache, chunk
        cfg = cache.meta["config"]
        self.js, self.cmd = cfg["state"][0]["topic"], cfg["action"][0]["topic"]
        self.cam = cfg["cameras"][0]["topic"]

    def get(self, frame: int) -> dict[str, np.ndarray]:
        ep = next(e for e in self.cache.episodes if e.start <= frame < e.stop)
        t = float(self.cache.stamps[frame])
        dt = 1.0 / self.cache.control_rate_hz
        with open(EpisodeBag(ep.bag).mcap_path, "rb") as f:
            reader = SeekingReader(f, validate_crcs=True)

            def window(topic: str, lo: float, hi: float):
                return reader.iter_messages(
                    topics=[topic], starting_at=int(lo * 1e9), ending_before=int(hi * 1e9)
                )

            # log times trail the header stamps by a few ms: read a margin around the window
            states = [
                TS.deserialize_cdr(m.data, s.name) for s, _, m in window(self.js, t - 0.1, t + 0.1)
            ]
            state = max((m for m in states if _stamp(m) <= t), key=_stamp).position
            grid = t + dt * np.arange(self.chunk)
            cmds = [(m.log_time * 1e-9, TS.deserialize_cdr(m.data, s.name).data)
                    for s, _, m in window(self.cmd, t - 0.2, grid[-1] + 0.01)]  # fmt: skip
            stamps = np.array([c[0] for c in cmds])
            idx = np.clip(np.searchsorted(stamps, grid, side="right") - 1, 0, len(cmds) - 1)
            action = np.stack([cmds[i][1] for i in idx])
            frames = [
                TS.deserialize_cdr(m.data, s.name)
                for s, _, m in window(self.cam, t - 0.15, t + 0.05)
            ]
            msg = max((m for m in frames if _stamp(m) <= t), key=_stamp)
            image = resize_chw(decode_compressed(msg.data), self.cache.image_hw)
        return {"state": state, "images": image[None], "action": action}


def _stamp(msg) -> float:
    return msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9


def bench_data(root: Path, episodes: int, seconds: float) -> tuple[DatasetCache, dict]:
    spec = SyntheticEpisode(arm="left", joints=JOINTS, compressed=True, image_hw=(480, 640),
                            duration_s=seconds)  # fmt: skip
    t0 = time.perf_counter()
    for i in range(episodes):
        write_episode(root / "bags" / f"episode_{i:04d}", spec, seed=i)
    write_s = time.perf_counter() - t0
    cfg = infer_config(EpisodeBag(root / "bags" / "episode_0000").topics, image_hw=(96, 128))
    t0 = time.perf_counter()
    cache = build_cache(root / "bags", cfg, root / "cache", progress=False)
    build_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    ds = ActSamples(cache, "all", chunk_size=100)
    picks = rng.integers(0, len(ds), 2000)
    t0 = time.perf_counter()
    for i in picks:
        ds[int(i)]
    cache_rate = len(picks) / (time.perf_counter() - t0)
    bags = BagSamples(cache, 100)
    picks = rng.integers(0, cache.n_frames, 40)
    t0 = time.perf_counter()
    for i in picks:
        sample = bags.get(int(i))
    bag_rate = len(picks) / (time.perf_counter() - t0)
    # the baseline returns what the cache holds (same as-of rule)
    ref = ds[int(np.flatnonzero(ds.anchors == picks[-1])[0])]
    same_state = bool(np.allclose(ref["state"].numpy(), sample["state"], atol=1e-6))
    return cache, {
        "episodes": episodes, "seconds_each": seconds, "frames_50hz": cache.n_frames,
        "bag_write_s": round(write_s, 2), "cache_build_s": round(build_s, 2),
        "cache_build_frames_per_s": round(cache.n_frames / build_s, 1),
        "act_samples_per_s_cache": round(cache_rate, 1),
        "act_samples_per_s_from_bags": round(bag_rate, 1),
        "cache_speedup": round(cache_rate / bag_rate, 1),
        "baseline_state_matches_cache": same_state,
    }  # fmt: skip


def _loader(ds, batches: StepBatches, workers: int, batched: bool) -> DataLoader:
    gen = torch.Generator().manual_seed(0)
    if batched:
        return batch_loader(ds, batches, num_workers=workers, generator=gen)
    return DataLoader(ds, batch_sampler=batches, num_workers=workers, generator=gen)


def _samples_per_s(ds, workers: int, batched: bool, n_batches: int, step_s: float) -> float:
    """Samples/s of a loader whose consumer holds the main thread idle for step_s per batch
    (0: the loader alone; > 0: a stand-in for a step that waits on a GPU)."""
    warmup = 2 + 4 * workers  # worker start-up and the first prefetched batches are not timed
    loader = _loader(ds, StepBatches(len(ds), 8, 0, 0, warmup + n_batches), workers, batched)
    batches = iter(loader)
    for _ in range(warmup):
        next(batches)
    t0 = time.perf_counter()
    for _ in batches:
        if step_s:
            time.sleep(step_s)
    return 8 * n_batches / (time.perf_counter() - t0)


def _trainer(policy_type: str, cache: DatasetCache):
    """(policy config, policy, one training step on a batch) of a policy's CPU preset."""
    torch.manual_seed(0)
    pcfg = make_policy_config(policy_type, "cpu", cache, {})
    policy = POLICIES[policy_type][1](pcfg).train()
    policy.normalizer.set_stats("state", cache.stats("state", pcfg.state_norm))
    policy.normalizer.set_stats("action", cache.stats("action", pcfg.action_norm))
    optim = torch.optim.AdamW(policy.parameters(), lr=1e-4)

    def step(batch: dict) -> None:
        obs, action, pad = policy_batch(batch, "cpu")
        if policy_type == "act":
            loss, _ = policy.compute_loss(obs, action, pad)
        else:
            loss, _ = policy.compute_loss(obs, action)
        optim.zero_grad()
        loss.backward()
        optim.step()

    return pcfg, policy, step


def bench_loader(cache: DatasetCache, n_batches: int, train_steps: int, repeats: int) -> dict:
    ds = ActSamples(cache, "train", chunk_size=50)
    out: dict = {}
    for step_ms in (0, 1):
        runs: dict[str, list[float]] = {}
        for _ in range(repeats):  # interleaved, so drifting load from elsewhere hits all alike
            for w in (0, 2):
                for path in ("per_sample", "batched"):
                    rate = _samples_per_s(ds, w, path == "batched", n_batches, step_ms / 1e3)
                    runs.setdefault(f"{path}_{w}_workers", []).append(rate)
        best = {k: max(v) for k, v in runs.items()}  # the least disturbed of the repeats
        out[f"act_samples_per_s_batch8_step_{step_ms}ms"] = {
            "best": {k: round(v, 1) for k, v in best.items()},
            "median": {k: round(statistics.median(v), 1) for k, v in runs.items()},
            "ratios_of_best": {
                "batched_over_per_sample_0_workers": round(
                    best["batched_0_workers"] / best["per_sample_0_workers"], 2),
                "batched_over_per_sample_2_workers": round(
                    best["batched_2_workers"] / best["per_sample_2_workers"], 2),
                "per_sample_2_over_0_workers": round(
                    best["per_sample_2_workers"] / best["per_sample_0_workers"], 2),
                "batched_2_over_0_workers": round(
                    best["batched_2_workers"] / best["batched_0_workers"], 2),
            },
        }  # fmt: skip
    # the batched loader feeding a real step (ACT CPU preset, batch 8)
    pcfg, _, step = _trainer("act", cache)
    ds = ActSamples(cache, "train", pcfg.chunk_size)
    runs: dict[int, list[tuple[float, float]]] = {0: [], 2: []}
    for _ in range(repeats):
        for workers in (0, 2):
            warmup = 2 + 2 * workers
            steps = StepBatches(len(ds), 8, 0, 0, warmup + train_steps)
            batches = TimedBatches(_loader(ds, steps, workers, batched=True))
            for _ in range(warmup):
                step(next(batches))
            batches.wait_fraction()
            t0 = time.perf_counter()
            for batch in batches:
                step(batch)
            rate = train_steps / (time.perf_counter() - t0)
            runs[workers].append((rate, batches.wait_fraction()))
    training: dict = {
        f"{w}_workers": {"best_steps_per_s": round(max(r for r, _ in v), 2),
                         "data_wait_median": round(statistics.median(f for _, f in v), 4)}
        for w, v in runs.items()
    }  # fmt: skip
    training["best_steps_2_over_0_workers"] = round(
        training["2_workers"]["best_steps_per_s"] / training["0_workers"]["best_steps_per_s"], 2
    )
    out["act_cpu_preset_training_batched"] = training
    return out


def bench_training(cache: DatasetCache, steps: int) -> dict:
    out = {}
    for policy_type in ("act", "diffusion"):
        pcfg, policy, step = _trainer(policy_type, cache)
        ds = (ActSamples(cache, "train", pcfg.chunk_size) if policy_type == "act"
              else DiffusionSamples(cache, "train", pcfg.n_obs_steps, pcfg.horizon))  # fmt: skip
        times = []
        for k, batch in enumerate(batch_loader(ds, StepBatches(len(ds), 8, 0, 0, steps + 2))):
            t0 = time.perf_counter()
            step(batch)
            if k >= 2:  # warm-up
                times.append(time.perf_counter() - t0)
        out[f"{policy_type}_cpu_preset"] = {
            "params_M": round(sum(p.numel() for p in policy.parameters()) / 1e6, 2),
            "image_hw": list(pcfg.image_hw),
            "train_steps_per_s_batch8": round(1 / statistics.median(times), 2),
        }
    return out


def _latency(policy_type: str, cache: DatasetCache, root: Path, threads: int, repeats: int):
    torch.manual_seed(0)
    pcfg = make_policy_config(policy_type, "cpu", cache, {})
    policy = POLICIES[policy_type][1](pcfg).eval()
    folder = root / f"onnx_{policy_type}"
    export_onnx(
        policy, folder, joint_names=cache.action_names, camera_names=cache.camera_names,
        control_rate_hz=cache.control_rate_hz, data_index_hash=cache.data_index_hash,
    )  # fmt: skip
    runner = load_onnx_policy(folder, threads=threads)
    if policy_type == "act":
        sample = ActSamples(cache, "all", pcfg.chunk_size)[0]
    else:
        sample = DiffusionSamples(cache, "all", pcfg.n_obs_steps, pcfg.horizon)[0]
    obs, _, _ = policy_batch(torch.utils.data.default_collate([sample]), "cpu")
    state, images = obs["state"].numpy(), obs["images"].numpy()
    if policy_type == "act":
        eager = _median_s(lambda: policy.predict_action(obs), repeats)
        onnx = _median_s(lambda: runner.predict(state, images), repeats)
        what = f"one forward pass (chunk of {pcfg.chunk_size})"
    else:
        gen, rng = torch.Generator().manual_seed(0), np.random.default_rng(0)
        eager = _median_s(lambda: policy.predict_action(obs, generator=gen), repeats)
        onnx = _median_s(lambda: runner.predict(state, images, rng), repeats)
        what = f"encoder + {pcfg.num_inference_steps} DDIM steps"
    return {
        "what": what, "eager_ms": round(eager * 1e3, 2), "onnxruntime_ms": round(onnx * 1e3, 2),
        "eager_over_onnxruntime": round(eager / onnx, 2),
    }  # fmt: skip


def bench_latency(cache: DatasetCache, root: Path, threads: int, repeats: int) -> dict:
    return {f"{p}_batch1": _latency(p, cache, root, threads, repeats) for p in ("act", "diffusion")}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2, help="torch and onnxruntime threads")
    ap.add_argument("--episodes", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=10.0, help="per episode")
    ap.add_argument("--train-steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--loader-batches", type=int, default=300, help="timed batches per loader")
    ap.add_argument("--loader-repeats", type=int, default=3)
    ap.add_argument("--only", choices=("loader", "training", "latency"),
                    help="after the dataset part, run this part only")  # fmt: skip
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    result: dict = {"threads": a.threads, "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cache, result["dataset"] = bench_data(root, a.episodes, a.seconds)
        if a.only in (None, "loader"):
            result["loader"] = bench_loader(cache, a.loader_batches, a.train_steps,
                                            a.loader_repeats)  # fmt: skip
        if a.only in (None, "training"):
            result["training"] = bench_training(cache, a.train_steps)
        if a.only in (None, "latency"):
            result["latency"] = bench_latency(cache, root, a.threads, a.repeats)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
