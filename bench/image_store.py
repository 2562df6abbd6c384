"""Raw vs JPEG frames in the training cache: bytes per frame, pixel error, ACT samples/s.

    .venv/bin/python bench/image_store.py [--bags runs/demo-insertion/demos] [--qualities 95 90 80]

1. 96x128 (the demo's size): caches built from the same episode bags (default: the demo's
   recorded insertion episodes), raw and JPEG at each of --qualities. Per cache: image bytes
   per grid frame (the unit of LeRobot's per-frame size: one video frame per dataset frame)
   and per stored frame (a recorded frame is stored once, shown at ~1.7 grid steps), the whole
   cache per grid frame, pixel error against raw (mean |diff|, PSNR), and ACT samples/s
   (ActSamples, chunk 50 as the demo, DataLoader batch 8, 0 workers, random indices; the
   median of --rounds rounds of --batches batches, raw and JPEG alternating). A size-only sweep
   encodes the raw cache's frames at more qualities: the quality a size goal needs.
2. 480x640: the same for the first --large-episodes bags, resized up. The bags hold 96x128
   renders, smoother than a 480x640 camera's frames, so JPEG is smaller on them than on real
   content. So --render-frames frames of the same scene are rendered at 480x640 by MuJoCo
   (the demo's 50° top camera, the first bag's seed and commands) and encoded at the same
   qualities: their bytes and decode time are what real 480x640 content costs.
3. LeRobot's size, on the same episodes: the 96x128 bags exported to a LeRobot v3.0 dataset
   by apprentice's exporter (AV1 at LeRobot's settings: crf 30, GOP 2, yuv420p), the whole
   folder (videos, parquet, meta) per frame: the size goal's reference (<= 2x).
Ratios: JPEG over raw in the same run; LeRobot's loader speed is the issue's measurement on
the demo's 50 transfer cube episodes (225 samples/s at 0 workers, 359 at 2).
Prints JSON. Numbers depend on the host's load: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader

from apprentice.dataset import DatasetCache, DatasetConfig, EpisodeBag, build_cache, find_episodes
from apprentice.dataset.image_store import scan_start
from apprentice.dataset.mcap_checked import DatasetError
from apprentice.dataset.samples import ActSamples

LEROBOT_SAMPLES_PER_S = 225.0  # the issue: LeRobot's loader, 0 workers
CHUNK = 50  # the demo's ACT chunk size


def _kb(n_bytes: float) -> float:
    return round(n_bytes / 1000, 3)


def _image_bytes(cache: DatasetCache) -> int:
    files = [s["file"] for k, s in cache.meta["arrays"].items() if k.startswith("camera_")]
    return sum((cache.root / f).stat().st_size for f in files)


def _cache_bytes(cache: DatasetCache) -> int:
    return sum(p.stat().st_size for p in cache.root.iterdir())


def _stored_frames(cache: DatasetCache) -> int:
    return int(np.asarray(cache.array("frame_index")).max()) + 1  # one camera


def _error(raw: DatasetCache, other: DatasetCache) -> dict:
    """Mean |diff| (levels) and PSNR (dB) of every grid frame's image against raw."""
    abs_sum, sq_sum, n = 0.0, 0.0, 0
    h, w = raw.image_hw
    chunk = max(1, 2**24 // (3 * h * w))  # frames per read: ~64 MB as float32
    for start in range(0, raw.n_frames, chunk):
        frames = np.arange(start, min(start + chunk, raw.n_frames))
        d = raw.images(frames).astype(np.float32) - other.images(frames).astype(np.float32)
        abs_sum += float(np.abs(d).sum())
        sq_sum += float((d * d).sum())
        n += d.size
    mse = sq_sum / n
    return {"mean_abs_levels": round(abs_sum / n, 3),
            "psnr_db": round(10 * np.log10(255**2 / mse), 2) if mse else None}  # fmt: skip


def _samples_per_s(cache: DatasetCache, batches: int, seed: int) -> float:
    ds = ActSamples(cache, "all", chunk_size=CHUNK)
    loader = DataLoader(ds, batch_size=8, shuffle=True, num_workers=0,
                        generator=torch.Generator().manual_seed(seed))  # fmt: skip
    it = iter(loader)
    for _ in range(5):
        next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    return 8 * batches / (time.perf_counter() - t0)


def _encode(frames_hwc_rgb: np.ndarray, quality: int) -> list[np.ndarray]:
    params = [cv2.IMWRITE_JPEG_QUALITY, quality]
    return [cv2.imencode(".jpg", np.ascontiguousarray(f[..., ::-1]), params)[1]
            for f in frames_hwc_rgb]  # fmt: skip


def _decode_ms(jpegs: list[np.ndarray]) -> float:
    t0 = time.perf_counter()
    for j in jpegs:
        cv2.imdecode(j, cv2.IMREAD_COLOR)
    return 1e3 * (time.perf_counter() - t0) / len(jpegs)


def _size_sweep(frames_hwc: np.ndarray, qualities: list[int], grid_per_stored: float) -> dict:
    """KB per stored and per grid frame as the store keeps them (the scan; the header each
    camera's frames share, ~620 bytes, once), and decode ms, of `frames` at each quality."""
    out = {}
    for q in qualities:
        jpegs = _encode(frames_hwc, q)
        per = float(np.mean([j.size - scan_start(j.tobytes()) - 2 for j in jpegs]))
        out[str(q)] = {
            "kb_per_stored_frame": _kb(per),
            "kb_per_grid_frame": _kb(per / grid_per_stored),
            "decode_ms": round(_decode_ms(jpegs), 3),
        }
    return out


def lerobot_size(bags: Path, cfg: DatasetConfig, hw: tuple[int, int], root: Path) -> dict:
    """The bags as a LeRobot v3.0 dataset (AV1): its whole folder's KB per frame."""
    from apprentice.interop.lerobot_export import export_lerobot

    t0 = time.perf_counter()
    out = export_lerobot(bags, root / "lerobot", config=cfg, image_hw=hw, progress=False)
    size = sum(p.stat().st_size for p in (root / "lerobot").rglob("*") if p.is_file())
    return {
        "frames": out.frames,
        "episodes": out.episodes,
        "mb": round(size / 1e6, 2),
        "kb_per_frame": _kb(size / out.frames),
        "export_s": round(time.perf_counter() - t0, 1),
    }


def bench_size(
    bags: list, cfg: DatasetConfig, hw: tuple[int, int], qualities: list[int], root: Path,
    batches: int, rounds: int, sweep: list[int], lerobot_kb: float,
) -> dict:  # fmt: skip
    caches = {}
    build_s = {}
    for name, store, q in [("raw", "raw", 95)] + [(f"jpeg{q}", "jpeg", q) for q in qualities]:
        c = dataclasses.replace(cfg, image_hw=hw, image_store=store, jpeg_quality=q)
        t0 = time.perf_counter()
        caches[name] = build_cache(bags, c, root / f"{hw[0]}x{hw[1]}_{name}", progress=False)
        build_s[name] = round(time.perf_counter() - t0, 1)
    raw = caches["raw"]
    grid, stored = raw.n_frames, _stored_frames(raw)
    rates: dict[str, list[float]] = {name: [] for name in caches}
    for r in range(rounds):  # alternate, so drift in the host's load hits every store alike
        for name, cache in caches.items():
            rates[name].append(_samples_per_s(cache, batches, seed=r))
    out: dict = {"image_hw": list(hw), "episodes": len(raw.episodes), "grid_frames": grid,
                 "stored_frames": stored, "caches": {}}  # fmt: skip
    raw_rate = statistics.median(rates["raw"])
    for name, cache in caches.items():
        rate = statistics.median(rates[name])
        image_bytes = _image_bytes(cache)
        row = {
            "kb_per_grid_frame": _kb(image_bytes / grid),
            "kb_per_stored_frame": _kb(image_bytes / stored),
            "cache_kb_per_grid_frame": _kb(_cache_bytes(cache) / grid),
            "cache_mb": round(_cache_bytes(cache) / 1e6, 2),
            "build_s": build_s[name],
            "act_samples_per_s": round(rate, 1),
            "samples_per_s_over_raw": round(rate / raw_rate, 3),
            "samples_per_s_over_lerobot_0_workers": round(rate / LEROBOT_SAMPLES_PER_S, 2),
            "cache_size_over_lerobot_av1": round(_cache_bytes(cache) / grid / 1000 / lerobot_kb,
                                                 2),
        }  # fmt: skip
        if name != "raw":
            row["size_over_raw"] = round(image_bytes / _image_bytes(raw), 4)
            row["error_vs_raw"] = _error(raw, cache)
        out["caches"][name] = row
    frames = np.asarray(raw.array("camera_0")).transpose(0, 2, 3, 1)  # (F, H, W, 3)
    step = max(1, frames.shape[0] // 600)  # <= 600 frames: enough for a mean size
    out["jpeg_sweep_of_raw_frames"] = sweep_out = _size_sweep(frames[::step], sweep, grid / stored)
    # the size goal: the whole cache <= 2x LeRobot's AV1 dataset (state, action, index included)
    other_kb = (
        out["caches"]["raw"]["cache_kb_per_grid_frame"] - out["caches"]["raw"]["kb_per_grid_frame"]
    )
    fits = [int(q) for q, r in sweep_out.items()
            if r["kb_per_grid_frame"] + other_kb <= 2 * lerobot_kb]  # fmt: skip
    out["highest_sweep_quality_within_2x_lerobot_av1"] = max(fits) if fits else None
    return out


def render_frames(bag_dir: Path, n: int, hw: tuple[int, int]) -> np.ndarray:
    """n frames (30 Hz) of the bag's scene and seed, its commands replayed → (n, H, W, 3)."""
    from apprentice.sim.world import MujocoWorld

    bag = EpisodeBag(bag_dir)
    scene, seed = bag.custom_data["scene"], int(bag.custom_data["seed"])
    world = MujocoWorld(scene, seed=seed)
    topics = [f"/{a}/commands" for a in world.arm_names]
    series, _ = bag.read(topics, [], hw)
    cam = world.camera("top", width=hw[1], height=hw[0], fps=1000.0, fovy=50.0)
    t0 = max(float(series[t].stamps[0]) for t in topics)
    steps = round(1 / 30 / world.model.opt.timestep)
    out = []
    for k in range(n):
        for arm, topic in zip(world.arm_names, topics, strict=True):
            s = series[topic]
            i = max(int(np.searchsorted(s.stamps, t0 + k / 30, side="right")) - 1, 0)
            world.arm(arm).write(s.values[i])
        world.step(steps)
        out.append(cam.read().image)
    cam.close()
    return np.stack(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bags", default="runs/demo-insertion/demos", help="recorded episode bags")
    p.add_argument("--config", help="dataset YAML (default: <bags>/../dataset.yaml)")
    p.add_argument("--qualities", type=int, nargs="+", default=[95, 90, 80], help="JPEG caches")
    p.add_argument("--sweep", type=int, nargs="+", default=[95, 90, 85, 80, 75, 70, 60, 50, 40],
                   help="qualities of the size-only sweep")  # fmt: skip
    p.add_argument("--large-episodes", type=int, default=3, help="bags built at 480x640")
    p.add_argument("--batches", type=int, default=150, help="batches of 8 per rate (96x128)")
    p.add_argument("--rounds", type=int, default=3, help="rounds per rate (median)")
    p.add_argument("--render-frames", type=int, default=150, help="480x640 frames rendered")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--size-only", action="store_true", help="96x128 only, one rate round")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    cv2.setNumThreads(1)
    bags = find_episodes(a.bags)
    cfg = DatasetConfig.from_yaml(a.config or Path(a.bags).parent / "dataset.yaml")
    result: dict = {"host_load_1min": os.getloadavg()[0], "lerobot_reference": {
        "samples_per_s_0_workers": 225, "samples_per_s_2_workers": 359}}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        result["lerobot_av1_96x128"] = ref = lerobot_size(Path(a.bags), cfg, (96, 128), Path(tmp))
    with tempfile.TemporaryDirectory() as tmp:
        result["96x128"] = bench_size(bags, cfg, (96, 128), a.qualities, Path(tmp), a.batches,
                                      1 if a.size_only else a.rounds, a.sweep,
                                      ref["kb_per_frame"])  # fmt: skip
    if a.size_only:
        print(json.dumps(result, indent=1))
        return
    with tempfile.TemporaryDirectory() as tmp:
        large = bench_size(bags[: a.large_episodes], cfg, (480, 640), a.qualities, Path(tmp),
                           max(a.batches // 4, 20), a.rounds, a.qualities,
                           ref["kb_per_frame"])  # fmt: skip
        large["note"] = "96x128 renders resized up: JPEG sizes are a lower bound, see rendered"
        result["480x640_upscaled"] = large
    if a.render_frames:
        frames = render_frames(bags[0].bag_dir, a.render_frames, (480, 640))
        grid_per_stored = large["grid_frames"] / large["stored_frames"]
        result["480x640_rendered"] = {
            "frames": len(frames), "raw_kb_per_stored_frame": _kb(frames[0].nbytes),
            "jpeg": _size_sweep(frames, a.qualities, grid_per_stored),
        }  # fmt: skip
    result["host_load_1min_after"] = os.getloadavg()[0]
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    try:
        main()
    except (DatasetError, FileNotFoundError) as e:  # a wrong --bags or --config: one line
        raise SystemExit(f"image_store: {e}") from None
