"""Loads a dataset that `apprentice dataset export-lerobot` wrote with LeRobot's own
`LeRobotDataset` (its default video backend) and iterates it, as training would.

Runs in the LeRobot venv (scripts/lerobot_venv.sh), not the project's:

    HF_HUB_OFFLINE=1 .venv-lerobot/bin/python scripts/check_lerobot_load.py DATASET [--chunk 20]

Checks, each a failure (exit 1) naming what differs:
  - every frame loads (state, action, every camera decoded) with the shapes info.json gives;
  - state and action equal the parquet's columns, frame by frame (read with pyarrow);
  - decoded frames are in [0, 1] and not constant;
  - an ACT-style sample (`delta_timestamps`: the next `--chunk` actions) loads for every frame,
    with `action_is_pad` marking the steps past the episode's end;
  - a shuffled DataLoader pass over the whole dataset (batch 8);
  - `--train-steps N`: N optimizer steps of LeRobot's ACT on it, built the way `lerobot-train`
    builds it (`make_policy` from the dataset's meta, `make_pre_post_processors` with its
    stats, `delta_timestamps` from the policy config); the default ACT config but no ImageNet
    download (offline) and a chunk of `--chunk`. The loss must be finite and fall.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import lerobot
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from lerobot.datasets.lerobot_dataset import LeRobotDataset


def fail(message: str) -> int:
    print(f"check_lerobot_load: FAILED: {message}", file=sys.stderr)
    return 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dataset", type=Path, help="the exported LeRobot dataset folder")
    ap.add_argument("--chunk", type=int, default=20, help="actions per ACT-style sample")
    ap.add_argument("--train-steps", type=int, default=0, help="ACT training steps (0: none)")
    a = ap.parse_args()

    t0 = time.perf_counter()
    ds = LeRobotDataset("local/apprentice_export", root=a.dataset)
    meta = ds.meta
    print(f"lerobot {lerobot.__version__}, torch {torch.__version__}")
    print(f"{a.dataset}: codebase {meta.info.codebase_version}, {meta.total_episodes} episodes, "
          f"{meta.total_frames} frames at {meta.fps} fps, video backend {ds._video_backend} "
          f"(the default), cameras {meta.video_keys}, tasks {list(meta.tasks.index)}")  # fmt: skip
    table = pa.concat_tables(
        [pq.read_table(p) for p in sorted((a.dataset / "data").glob("*/*.parquet"))]
    )
    state = np.stack(table["observation.state"].to_numpy(zero_copy_only=False))
    action = np.stack(table["action"].to_numpy(zero_copy_only=False))
    if len(ds) != meta.total_frames or len(ds) != table.num_rows:
        return fail(f"{len(ds)} frames, info.json {meta.total_frames}, parquet {table.num_rows}")
    for i in range(len(ds)):
        item = ds[i]
        for key in meta.video_keys:
            img = item[key]
            h, w, c = meta.features[key]["shape"]
            if tuple(img.shape) != (c, h, w):
                return fail(f"frame {i} {key}: shape {tuple(img.shape)}, info.json {(c, h, w)}")
            if not (0 <= float(img.min()) and float(img.max()) <= 1 and float(img.std()) > 0):
                return fail(f"frame {i} {key}: values outside [0, 1] or constant")
        if not np.array_equal(item["observation.state"].numpy(), state[i]):
            return fail(f"frame {i}: observation.state differs from the parquet")
        if not np.array_equal(item["action"].numpy(), action[i]):
            return fail(f"frame {i}: action differs from the parquet")
    t1 = time.perf_counter()
    print(f"iterated {len(ds)} frames: state, action and {len(meta.video_keys)} camera(s) "
          f"each; {t1 - t0:.1f} s")  # fmt: skip

    deltas = {"action": [k / meta.fps for k in range(a.chunk)]}
    chunked = LeRobotDataset("local/apprentice_export", root=a.dataset, delta_timestamps=deltas)
    pads = 0
    for i in range(len(chunked)):
        item = chunked[i]
        if tuple(item["action"].shape) != (a.chunk, action.shape[1]):
            return fail(f"chunked frame {i}: action shape {tuple(item['action'].shape)}")
        pads += int(item["action_is_pad"].sum())
    lengths = [int(n) for n in meta.episodes["length"]]
    expected_pads = sum(sum(max(0, k + a.chunk - n) for k in range(n)) for n in lengths)
    if pads != expected_pads:
        return fail(f"action_is_pad marks {pads} steps, the episode ends imply {expected_pads}")
    print(f"ACT-style samples ({a.chunk} actions each): {len(chunked)} loaded, {pads} padded "
          "steps past the episode ends, as expected")  # fmt: skip

    loader = torch.utils.data.DataLoader(ds, batch_size=8, shuffle=True, num_workers=0)
    batches = 0
    for batch in loader:
        batches += 1
        if not torch.isfinite(batch["observation.state"]).all():
            return fail("a batch holds non-finite states")
    print(f"DataLoader: {batches} shuffled batches of 8; {time.perf_counter() - t1:.1f} s")
    if a.train_steps > 0:
        error = train(a.dataset, meta, a.chunk, a.train_steps)
        if error:
            return fail(error)
    print("check_lerobot_load: OK")
    return 0


def train(root: Path, meta, chunk: int, steps: int) -> str | None:
    """A few ACT steps as lerobot-train takes them; an error message, or None."""
    from lerobot.datasets.factory import resolve_delta_timestamps
    from lerobot.policies.act.configuration_act import ACTConfig
    from lerobot.policies.factory import make_policy, make_pre_post_processors

    torch.manual_seed(0)
    cfg = ACTConfig(pretrained_backbone_weights=None, chunk_size=chunk, n_action_steps=chunk,
                    device="cpu")  # fmt: skip
    ds = LeRobotDataset("local/apprentice_export", root=root,
                        delta_timestamps=resolve_delta_timestamps(cfg, meta))  # fmt: skip
    policy = make_policy(cfg, ds_meta=ds.meta)
    pre, _ = make_pre_post_processors(cfg, dataset_stats=ds.meta.stats)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-4)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, shuffle=True, num_workers=0)
    batch = pre(next(iter(loader)))  # one batch, fitted: the loss must fall
    losses = []
    t0 = time.perf_counter()
    for _ in range(steps):
        loss, _ = policy.forward(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    params = sum(p.numel() for p in policy.parameters())
    print(f"ACT ({params / 1e6:.1f} M parameters) trained {steps} steps on one batch of 4: "
          f"loss {losses[0]:.3f} → {losses[-1]:.3f}; {time.perf_counter() - t0:.1f} s")  # fmt: skip
    if not all(np.isfinite(losses)) or not losses[-1] < losses[0]:
        return f"ACT losses {losses}: not finite, or not falling"
    return None


if __name__ == "__main__":
    sys.exit(main())
