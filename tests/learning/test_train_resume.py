"""Resume: a run interrupted at a checkpoint and resumed continues the step count and repeats
the losses of an uninterrupted run (same batches, same RNG, same optimizer and EMA state)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from tiny_training import TINY

from apprentice.learning.train import StepBatches, resume_config, train
from apprentice.learning.train_config import TrainConfig
from apprentice.learning.train_report import read_metrics


def test_resume_drops_metrics_logged_after_the_checkpoint(cache, tmp_path) -> None:
    """A job that dies between logging and checkpointing leaves metrics past its checkpoint;
    the resumed run replaces them instead of doubling them."""
    cfg = TrainConfig(
        policy="act", data=str(cache.root), out=str(tmp_path / "run"), preset="cpu", steps=3,
        batch_size=2, log_every=1, val_every=100, policy_overrides=TINY["act"],
    )  # fmt: skip
    train(cfg, until=2, progress=False)
    with open(tmp_path / "run/metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 3, "loss": -1.0}) + "\n")  # the lost tail
    result = train(resume_config(tmp_path / "run"), resume=True, progress=False)
    assert result.step == 3
    rows = read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[-1]["loss"] > 0
    with pytest.raises(FileExistsError):
        train(cfg, progress=False)  # an existing run is never overwritten silently


def test_a_copied_run_resumes_in_the_copy(cache, tmp_path) -> None:
    cfg = TrainConfig(
        policy="act", data=str(cache.root), out=str(tmp_path / "run"), preset="cpu", steps=3,
        batch_size=2, log_every=1, val_every=100, policy_overrides=TINY["act"],
    )  # fmt: skip
    train(cfg, until=2, progress=False)
    shutil.copytree(tmp_path / "run", tmp_path / "copy")
    result = train(resume_config(tmp_path / "copy"), resume=True, progress=False)
    assert result.step == 3
    assert [r["step"] for r in read_metrics(tmp_path / "copy")] == [1, 2, 3]
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == [1, 2]  # the original untouched
    state = json.loads((tmp_path / "run/checkpoints/last/state.json").read_text())
    assert state["step"] == 2


def test_step_batches_depend_only_on_seed_and_step() -> None:
    whole = list(StepBatches(10, 4, seed=1, start=0, stop=6))
    assert list(StepBatches(10, 4, seed=1, start=3, stop=6)) == whole[3:]
    flat = np.concatenate(whole[:5])  # 20 draws = exactly two passes over 10 samples
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10))
    # two ranks split the global batch of 2 x 4
    r0 = list(StepBatches(10, 4, seed=1, start=0, stop=3, rank=0, world=2))
    r1 = list(StepBatches(10, 4, seed=1, start=0, stop=3, rank=1, world=2))
    single = list(StepBatches(10, 8, seed=1, start=0, stop=3))
    assert [a + b for a, b in zip(r0, r1, strict=True)] == single


def test_ctrl_c_checkpoints_the_step_and_resume_continues(cache, tmp_path) -> None:
    """`apprentice train` stopped by SIGINT between checkpoints: it finishes the step, saves it,
    says how to continue (one line, no traceback) and exits 130, so the demo's stages stop too;
    `--resume` goes on from that step."""
    run = tmp_path / "run"
    sets = [f"--set={k}={list(v) if isinstance(v, tuple) else v}" for k, v in TINY["act"].items()]
    cmd = [sys.executable, "-m", "apprentice", "train", "--policy", "act", "--preset", "cpu",
           "--data", str(cache.root), "--out", str(run), "--steps", "100000", "--batch-size", "2",
           "--log-every", "1", "--val-every", "100000", "--checkpoint-every", "100000",
           "--threads", "1", "--no-progress", *sets]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = run / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err and "stopped at step" in err, err
    step = json.loads((run / "checkpoints/last/state.json").read_text())["step"]
    assert f"stopped at step {step} " in err and step >= 3
    resumed = subprocess.run(
        [sys.executable, "-m", "apprentice", "train", "--out", str(run), "--resume", "--steps",
         str(step + 2), "--threads", "1", "--no-progress"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert [r["step"] for r in read_metrics(run)][-3:] == [step, step + 1, step + 2]
