"""The cache's image stores: raw and JPEG caches built from the same real bags read the same
images (within JPEG loss) through `DatasetCache.images`; a cache from before the store was
recorded still loads; a damaged JPEG store is an error naming the file and the frame; a cache
sent to a DataLoader worker reopens its store there."""

from __future__ import annotations

import dataclasses
import json
import shutil
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from torch.utils.data import DataLoader, Subset, default_collate

from apprentice.dataset import DatasetCache, DatasetConfig, EpisodeBag, build_cache, infer_config
from apprentice.dataset.image_store import CorruptCacheError, resolve_store, scan_start
from apprentice.dataset.samples import ActSamples
from apprentice.dataset.synthetic import SyntheticEpisode, write_episode

torch.set_num_threads(1)  # other processes share this machine's two cores
HW = (48, 64)


@pytest.fixture(scope="module")
def bags(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bags")
    for i in range(3):
        write_episode(root / f"ep{i}", SyntheticEpisode(duration_s=1.0), seed=i)
    return root


def _config(bags: Path, **kw) -> DatasetConfig:
    return infer_config(EpisodeBag(bags / "ep0").topics, image_hw=HW, **kw)


@pytest.fixture(scope="module")
def raw(bags, tmp_path_factory) -> DatasetCache:
    out = tmp_path_factory.mktemp("raw") / "cache"
    return build_cache(bags, _config(bags, image_store="raw"), out, progress=False)


@pytest.fixture(scope="module")
def jpeg(bags, tmp_path_factory) -> DatasetCache:
    out = tmp_path_factory.mktemp("jpeg") / "cache"
    return build_cache(bags, _config(bags, image_store="jpeg"), out, progress=False)


def test_jpeg_cache_reads_like_the_raw_one(raw, jpeg) -> None:
    assert raw.image_store == "raw" and jpeg.image_store == "jpeg"
    assert jpeg.meta["image_store"] == {"kind": "jpeg", "quality": 90, "tables": "shared"}
    assert jpeg.meta["config"]["image_store"] == "jpeg"
    for name in ("stamps", "state", "action", "frame_index"):
        np.testing.assert_array_equal(np.asarray(jpeg.array(name)), np.asarray(raw.array(name)))
    frames = np.arange(raw.n_frames)
    a, b = raw.images(frames), jpeg.images(frames)  # (T, 1, 3, H, W)
    assert b.shape == a.shape == (raw.n_frames, 1, 3, *HW) and b.dtype == np.uint8
    err = np.abs(a.astype(np.float32) - b.astype(np.float32))  # (T, 1, 3, H, W)
    luma = np.abs(np.tensordot(a.astype(np.float32) - b, [0.299, 0.587, 0.114], ([2], [0])))
    # quality 90, colour at half resolution (4:2:0): brightness within a few levels (measured:
    # p99 5.2, max 13.7); colour differs by more only at the square's saturated edges
    assert np.percentile(luma, 99) < 8 and luma.max() < 24, (np.percentile(luma, 99), luma.max())
    assert err.mean() < 2.0, err.mean()  # measured 1.27
    channel_means = a.mean(axis=(0, 1, 3, 4)), b.mean(axis=(0, 1, 3, 4))  # (3,) each
    np.testing.assert_allclose(*channel_means, atol=1.0)
    # RGB, not BGR: the square is (230, 180, 40)
    assert channel_means[0][0] > channel_means[0][2] + 5
    # any leading shape, repeated frames decoded once and equal
    grid = np.array([[0, 5], [5, raw.n_frames - 1]])
    np.testing.assert_array_equal(jpeg.images(grid), b[grid])
    whole = sum((jpeg.root / s["file"]).stat().st_size for s in jpeg.meta["arrays"].values())
    assert whole < 0.5 * (raw.root / "camera_0.u8").stat().st_size
    assert jpeg.data_index_hash != raw.data_index_hash  # other pixels, other data


def test_auto_chooses_by_frame_size(bags, tmp_path) -> None:
    assert resolve_store("auto", (96, 128)) == "raw" and resolve_store("auto", (480, 640)) == "jpeg"
    assert resolve_store("jpeg", (32, 32)) == "jpeg"
    cache = build_cache(bags, _config(bags), tmp_path / "auto", progress=False)
    assert cache.image_store == "raw" and cache.meta["config"]["image_store"] == "raw"
    with pytest.raises(ValueError, match="image_store must be one of"):
        _config(bags, image_store="png")
    with pytest.raises(ValueError, match="jpeg_quality must be an integer 1-100"):
        _config(bags, jpeg_quality=0)


def test_cache_written_before_the_store_loads_as_raw(raw, tmp_path) -> None:
    old = Path(shutil.copytree(raw.root, tmp_path / "old"))
    meta = json.loads((old / "dataset.json").read_text())
    del meta["image_store"], meta["config"]["image_store"], meta["config"]["jpeg_quality"]
    (old / "dataset.json").write_text(json.dumps(meta))
    cache = DatasetCache(old)
    assert cache.image_store == "raw"
    np.testing.assert_array_equal(cache.images(np.arange(9)), raw.images(np.arange(9)))
    DatasetConfig.from_json(cache.meta["config"])  # the old config still parses


def _whole_files(jpeg: DatasetCache) -> list[bytes]:
    """Camera 0's frames as the JPEG files they were cut from: shared header + scan + EOI."""
    root, arrays = jpeg.root, jpeg.meta["arrays"]
    header = (root / arrays["camera_0_header"]["file"]).read_bytes()
    blob = (root / "camera_0.jpeg").read_bytes()
    off = np.fromfile(root / "camera_0_offsets.u64", dtype=np.uint64).astype(int)
    return [header + blob[a:b] + b"\xff\xd9" for a, b in zip(off[:-1], off[1:], strict=True)]


def test_shared_tables_rebuild_opencvs_files_byte_for_byte(raw, jpeg) -> None:
    """The store keeps each frame's scan once and the ~620 header bytes once per camera; the
    file a read decodes is, byte for byte, the one OpenCV writes for the raw cache's pixels."""
    files = _whole_files(jpeg)
    header_len = scan_start(files[0])
    pixels = np.asarray(raw.array("camera_0"))  # (F, 3, H, W) RGB: the same source pixels
    assert header_len > 500 and len(files) == pixels.shape[0]  # each camera frame once
    blob = (jpeg.root / "camera_0.jpeg").stat().st_size
    assert blob == sum(len(f) for f in files) - len(files) * (header_len + 2)
    for f in (0, 7, len(files) - 1):
        bgr = np.ascontiguousarray(pixels[f][::-1].transpose(1, 2, 0))
        ok, opencv = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok and opencv.tobytes() == files[f]


def _as_whole_files(jpeg: DatasetCache, root: Path) -> tuple[Path, dict]:
    """A copy of `jpeg` as written before the tables were shared (no "tables": whole files)."""
    root = Path(shutil.copytree(jpeg.root, root))
    files = _whole_files(jpeg)
    (root / "camera_0.jpeg").write_bytes(b"".join(files))
    np.cumsum([0] + [len(f) for f in files]).astype(np.uint64).tofile(root / "camera_0_offsets.u64")
    np.array([zlib.crc32(f) for f in files], np.uint32).tofile(root / "camera_0_crc32.u32")
    meta = json.loads((root / "dataset.json").read_text())
    del meta["image_store"]["tables"], meta["arrays"]["camera_0_header"]
    meta["arrays"]["camera_0_jpeg"]["shape"] = [sum(len(f) for f in files)]
    (root / "dataset.json").write_text(json.dumps(meta))
    return root, meta


def test_store_of_whole_files_still_reads(jpeg, tmp_path) -> None:
    old, meta = _as_whole_files(jpeg, tmp_path / "whole")
    frames = np.arange(jpeg.n_frames)
    np.testing.assert_array_equal(DatasetCache(old).images(frames), jpeg.images(frames))
    meta["image_store"]["tables"] = "per-frame"  # a store kind from a later version
    (old / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(CorruptCacheError, match="image_store .* is not one this version reads"):
        DatasetCache(old)


@pytest.fixture
def damaged(jpeg, tmp_path) -> tuple[Path, np.ndarray]:
    """A copy of the JPEG cache and its camera 0 offsets."""
    root = Path(shutil.copytree(jpeg.root, tmp_path / "damaged"))
    return root, np.fromfile(root / "camera_0_offsets.u64", dtype=np.uint64)


def _read_all(root: Path) -> None:
    cache = DatasetCache(root)
    cache.images(np.arange(cache.n_frames))


def test_truncated_blob_names_the_frame_cut(damaged) -> None:
    root, off = damaged
    blob = root / "camera_0.jpeg"
    cut = int(off[7]) + 10  # inside frame 7
    blob.write_bytes(blob.read_bytes()[:cut])
    with pytest.raises(CorruptCacheError, match=rf"camera_0\.jpeg: {cut} bytes, cut in frame 7 "):
        _read_all(root)


def test_offsets_out_of_order_name_the_frame(damaged) -> None:
    root, off = damaged
    off[4], off[5] = off[5], off[4]
    off.tofile(root / "camera_0_offsets.u64")
    with pytest.raises(CorruptCacheError, match=r"camera_0_offsets\.u64: frame 4 spans bytes"):
        _read_all(root)


def test_offsets_past_the_blob_name_the_frame(damaged) -> None:
    root, off = damaged
    n = off.shape[0] - 1
    off[-1] += 1000
    off.tofile(root / "camera_0_offsets.u64")
    with pytest.raises(CorruptCacheError, match=rf"camera_0_offsets\.u64: frame {n - 1} spans "):
        _read_all(root)


def test_flipped_bit_fails_the_frame_crc(damaged) -> None:
    root, off = damaged
    data = bytearray((root / "camera_0.jpeg").read_bytes())
    data[int(off[13]) - 20] ^= 0x10  # in frame 12's entropy-coded data: it would still decode
    (root / "camera_0.jpeg").write_bytes(bytes(data))
    cache = DatasetCache(root)
    cache.images(np.arange(5))  # the other frames read
    with pytest.raises(CorruptCacheError, match=r"camera_0\.jpeg: frame 12 \(bytes \d+\.\.\d+\) "
                       "fails its CRC-32"):  # fmt: skip
        _read_all(root)


def test_damaged_shared_header_is_refused_on_opening(damaged) -> None:
    """One flipped bit in a quantization table would change every frame: refused by name."""
    root, _ = damaged
    header = bytearray((root / "camera_0_header.jpeg").read_bytes())
    header[30] ^= 0x01  # in the first DQT table
    (root / "camera_0_header.jpeg").write_bytes(bytes(header))
    with pytest.raises(CorruptCacheError, match=r"camera_0_header\.jpeg: the JPEG header all "
                       "frames share fails its CRC-32"):  # fmt: skip
        _read_all(root)


def test_frame_that_does_not_decode_names_it(jpeg, tmp_path) -> None:
    """Garbage with a matching CRC (written so by a broken writer) still fails, by name, where
    each frame is a whole file. (Behind a shared header, libjpeg decodes any scan bytes into
    some image with a warning: there the CRC is the check.)"""
    root, _ = _as_whole_files(jpeg, tmp_path / "whole")
    off = np.fromfile(root / "camera_0_offsets.u64", dtype=np.uint64)
    a, b = int(off[20]), int(off[21])
    data = bytearray((root / "camera_0.jpeg").read_bytes())
    data[a:b] = bytes(b - a)  # zeros: no JPEG header
    (root / "camera_0.jpeg").write_bytes(bytes(data))
    crc = np.fromfile(root / "camera_0_crc32.u32", dtype=np.uint32)
    crc[20] = zlib.crc32(bytes(b - a))
    crc.tofile(root / "camera_0_crc32.u32")
    with pytest.raises(CorruptCacheError, match=r"camera_0\.jpeg: frame 20 .*decodes to nothing"):
        _read_all(root)


def test_truncated_raw_frames_name_the_file(raw, tmp_path) -> None:
    root = Path(shutil.copytree(raw.root, tmp_path / "cut"))
    frames = root / "camera_0.u8"
    frames.write_bytes(frames.read_bytes()[:-100])
    with pytest.raises(CorruptCacheError, match=r"camera_0\.u8: \d+ bytes, dataset\.json says"):
        _read_all(root)


def test_a_worker_reopens_the_store(jpeg) -> None:
    jpeg.images(np.arange(3))  # open the store here: it must not travel with the cache
    state = jpeg.__getstate__()  # what a spawned worker receives (below, for real)
    assert state["_frames"] == [] and state["_maps"] == {}
    ds = ActSamples(jpeg, "all", chunk_size=5)
    idx = [0, 7, len(ds) - 1]
    direct = default_collate([ds[i] for i in idx])
    loader = DataLoader(Subset(ds, idx), batch_size=3, num_workers=1,
                        multiprocessing_context="spawn")  # fmt: skip
    (batch,) = list(loader)
    for key in direct:
        assert torch.equal(batch[key], direct[key])


def test_config_yaml_takes_the_store(bags, tmp_path) -> None:
    cfg = dataclasses.replace(_config(bags), image_store="jpeg", jpeg_quality=80)
    data = {k: v for k, v in cfg.to_json().items() if k not in ("image_store", "jpeg_quality")}
    path = tmp_path / "dataset.yaml"
    path.write_text(yaml.safe_dump(data | {"image_store": "jpeg", "jpeg_quality": 80}))
    assert DatasetConfig.from_yaml(path) == cfg
    path.write_text(yaml.safe_dump(data | {"image_store": "webp"}))
    with pytest.raises(ValueError, match=r"dataset\.yaml: image_store must be one of"):
        DatasetConfig.from_yaml(path)
