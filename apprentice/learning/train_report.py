"""What a training run yields besides its checkpoint, and how to read it back:

    validate(policy, batches, device, bf16)      → {"val_loss": …, "val_<term>": …}
    plot_losses(run/"metrics.jsonl", run/"loss.png")
    plot_samples(policy, cache, run/"samples.png", device)
    read_metrics("runs/pick")                    → the rows of metrics.jsonl
    card, diff = export_run("runs/pick")         → runs/pick/policy/ (ONNX + policy card)

Validation and plots draw from their own seeded generators, never from the global RNG that
training uses, so they do not change a run's losses (train.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader

from apprentice.dataset import DatasetCache
from apprentice.dataset.samples import policy_batch
from apprentice.learning.checkpoint import Policy, load_policy
from apprentice.learning.export import export_onnx
from apprentice.learning.train_config import (
    LAST,
    METRICS_FILE,
    RUN_FILE,
    RUN_FORMAT,
    autocast,
    policy_samples,
)


@torch.no_grad()
def validate(
    policy: Policy, batches: DataLoader, device: torch.device, bf16: bool
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
        with autocast(device, bf16):
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
    samples = policy_samples(policy.policy_type, cache, split, policy.cfg)
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


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line]


# ---------------------------------------------------------------------------------------------
# Export


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
    # an imported policy (apprentice import-policy) has no cache: checked on a seeded probe
    cache = DatasetCache(data["cache"]) if data.get("cache") is not None else None
    card = export_onnx(
        policy,
        out,
        joint_names=data["action_names"],
        state_names=data["state_names"],
        camera_names=[c["name"] for c in data["cameras"]],
        control_rate_hz=data["control_rate_hz"],
        data_index_hash=data["data_index_hash"],
        camera_sources={c["name"]: c.get("source") for c in data["cameras"]},
        train_seeds=cache.scene_seeds() if cache else None,  # scenes an eval must not reuse
    )
    runner = load_onnx_policy(out)
    if cache is None:
        obs = _probe_obs(policy)
    else:
        split = "val" if cache.split_episodes("val") else "train"
        sample = torch.utils.data.default_collate(
            [policy_samples(policy.policy_type, cache, split, policy.cfg)[0]]
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


def _probe_obs(policy: Policy) -> dict[str, torch.Tensor]:
    """One seeded observation of the policy's input shapes: raw state around the
    normalization's offset, images in [0, 1]."""
    cfg, gen = policy.cfg, torch.Generator().manual_seed(0)
    steps = (cfg.n_obs_steps,) if policy.policy_type == "diffusion" else ()
    stats = policy.normalizer.stats("state")
    z = torch.randn(1, *steps, cfg.state_dim, generator=gen, dtype=torch.float64)
    state = (z * torch.tensor(stats.scale) + torch.tensor(stats.offset)).float()
    images = torch.rand(1, *steps, cfg.n_cameras, 3, *cfg.image_hw, generator=gen)
    return {"state": state, "images": images}
