"""Multi-process training: the same command under torchrun, 2 CPU processes over gloo (the GPU
path uses NCCL; this machine has no GPU). DistributedDataParallel keeps the replicas equal
(train() checks that at the end); rank 0 alone writes the run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from apprentice.dataset import EpisodeBag, build_cache, infer_config
from apprentice.dataset.synthetic import SyntheticEpisode, write_episode
from apprentice.learning.train_report import read_metrics


def test_torchrun_two_processes_gloo(tmp_path) -> None:
    for i in range(3):
        write_episode(tmp_path / "bags" / f"ep{i}", SyntheticEpisode(duration_s=1.0), seed=i)
    cfg = infer_config(EpisodeBag(tmp_path / "bags" / "ep0").topics, image_hw=(32, 40))
    cache = build_cache(tmp_path / "bags", cfg, tmp_path / "cache", progress=False)
    run = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "apprentice.learning.train_cli", "train", "--policy", "act", "--data",
        str(cache.root), "--out", str(run), "--preset", "cpu", "--steps", "3", "--batch-size",
        "2", "--log-every", "1", "--val-every", "3", "--threads", "1", "--no-progress",
        "--set", "d_model=32", "--set", "n_heads=4", "--set", "dim_feedforward=64",
        "--set", "n_encoder_layers=1", "--set", "n_decoder_layers=1",
        "--set", "n_vae_encoder_layers=1", "--set", "chunk_size=8", "--set", "backbone_width=8",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert json.loads((run / "run.json").read_text())["world_size"] == 2
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3]  # rank 0 only: no duplicates
    state = json.loads((run / "checkpoints/last/state.json").read_text())
    assert state["step"] == 3 and state["world_size"] == 2
    # each rank saved its own RNG stream, so a resume continues both exactly
    assert sorted(p.name for p in (run / "checkpoints/last").glob("rng.*")) == [
        "rng.rank0.safetensors",
        "rng.rank1.safetensors",
    ]
