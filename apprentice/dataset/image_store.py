"""How a training cache keeps its arrays on disk, and each camera's frames: raw or JPEG.

Every file of a cache is a flat array that `dataset.json` "arrays" describes (file, dtype,
shape); `ArrayWriter` appends one, `open_array` maps it read-only after checking its size.
The camera frames, (F_n, 3, H, W) uint8 RGB per camera n, are kept by one of two stores
(`dataset.json` "image_store"; a cache written before it existed has none: raw):

    raw   camera_<n>.u8           (F_n, 3, H, W)  served zero-copy from the page cache
    jpeg  camera_<n>.jpeg         (B,)            each frame's JPEG file, back to back
          camera_<n>_offsets.u64  (F_n + 1,)      frame f is bytes offsets[f] .. offsets[f+1]
          camera_<n>_crc32.u32    (F_n,)          CRC-32 of each frame's bytes

JPEG costs a decode per frame read and a second loss (colour at half resolution, 4:2:0, as
in LeRobot's yuv420p videos), and saves 15-50x. Measured (bench/image_store.py: the demo's 50
insertion episodes, 22,164 grid frames; ACT samples, batch 8, 0 workers; two runs on a 2-core
host at load 4-5, hence the ranges; LeRobot's AV1 dataset of the demo: 0.72 KB per frame, its
loader 225 samples/s), per grid frame, the whole cache:

    96x128    raw 22.3 KB, 9,500-13,600 samples/s; JPEG q90 1.64 KB (2.3x AV1; q85 2.0x, q80
              1.31 KB 1.8x), 2,600-4,700 samples/s (0.27-0.35x raw, 12-21x LeRobot), PSNR 37 dB
    480x640   raw 553 KB, 2,900-6,000 samples/s (page-cached); JPEG q90 8.7 KB (upscaled 96x128
              renders; 11.9 KB on frames rendered at 480x640, decode 0.4-0.6 ms each),
              720-1,200 samples/s (0.20-0.25x raw)

"auto" chooses by frame size: raw up to AUTO_RAW_MAX_PIXELS, JPEG above. At the demo's
96x128 the loader is not what limits training either way (~11 steps/s, 90 ms a step; JPEG
would add 1-2 ms to it) and the raw cache is 0.5 GB, so it stays raw: the pixels the
closed-loop results were measured with, and no second loss that live frames never see. At
480x640 raw is 0.9 MB per stored frame per camera (~140 GB for 3 cameras x 100 episodes: out
of the page cache, read from disk), so JPEG.

A damaged JPEG store is a `CorruptCacheError` naming the file and the frame, never a
silently wrong image: offsets out of order or past the blob's end are refused when the store
is opened (once per process), and every frame read is checked against its CRC-32 (a flipped
bit in a JPEG usually still decodes, into wrong pixels) and must decode to (H, W, 3).
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from apprentice.dataset.mcap_checked import DatasetError

STORES = ("raw", "jpeg")
# the largest frame "auto" keeps raw: 128x160 (61 KB; 50 demo episodes ~0.8 GB per camera)
AUTO_RAW_MAX_PIXELS = 128 * 160
_SUFFIX = {"float64": "f64", "float32": "f32", "int64": "i64", "uint64": "u64",
           "uint32": "u32", "uint8": "u8"}  # fmt: skip


class CorruptCacheError(DatasetError):
    """A cache file that does not hold what dataset.json says: rebuild the cache."""


def resolve_store(choice: str, hw: tuple[int, int]) -> str:
    """The store a cache of (H, W) frames gets: the config's `choice` ("raw", "jpeg"), or for
    "auto" raw up to AUTO_RAW_MAX_PIXELS pixels per frame, JPEG above."""
    if choice == "auto":
        return "raw" if hw[0] * hw[1] <= AUTO_RAW_MAX_PIXELS else "jpeg"
    return choice


def store_of(meta: dict[str, Any], meta_path: Path) -> dict[str, Any]:
    """dataset.json's "image_store" ({"kind": "raw"} for a cache written before it existed)."""
    store = meta.get("image_store", {"kind": "raw"})
    if not isinstance(store, dict) or store.get("kind") not in STORES:
        raise CorruptCacheError(
            f"{meta_path}: image_store {store!r} is not one this version reads {STORES}"
        )
    return store


class ArrayWriter:
    """Appends rows to one raw array file; `close` returns its "arrays" entry."""

    def __init__(
        self,
        root: Path,
        name: str,
        dtype: str,
        row_shape: tuple[int, ...],
        file: str | None = None,
    ):
        self.name, self.file = name, file or f"{name}.{_SUFFIX[dtype]}"
        self.dtype, self.row_shape, self.rows = np.dtype(dtype), row_shape, 0
        self._f = open(root / self.file, "wb")  # closed in close()

    def append(self, data: np.ndarray) -> None:
        data = np.ascontiguousarray(data, dtype=self.dtype)
        if data.shape[1:] != self.row_shape:
            raise ValueError(f"{self.file}: row shape {data.shape[1:]} != {self.row_shape}")
        self._f.write(memoryview(data).cast("B"))
        self.rows += data.shape[0]

    def close(self) -> dict[str, Any]:
        self._f.close()
        return {"file": self.file, "dtype": self.dtype.name, "shape": [self.rows, *self.row_shape]}


def open_array(root: Path, spec: dict[str, Any]) -> np.memmap:
    """A read-only map of the array `spec` ("arrays" entry) describes; a file of another size
    (cut short, or replaced) is a CorruptCacheError naming it."""
    path, shape, dtype = root / spec["file"], tuple(spec["shape"]), np.dtype(spec["dtype"])
    expected = int(np.prod(shape)) * dtype.itemsize
    size = path.stat().st_size
    if size != expected:
        raise CorruptCacheError(
            f"{path}: {size} bytes, dataset.json says {expected} ({dtype.name} {list(shape)}); "
            "the file was cut short or replaced: rebuild the cache"
        )
    return np.memmap(path, dtype=dtype, mode="r", shape=shape)


# -- writing ---------------------------------------------------------------------------------
class FrameWriter(Protocol):
    @property
    def rows(self) -> int: ...  # frames written so far

    def append(self, frames: np.ndarray) -> None: ...  # (F, 3, H, W) uint8 RGB
    def close(self) -> dict[str, dict[str, Any]]: ...  # "arrays" entries


class RawWriter:
    def __init__(self, root: Path, camera: int, hw: tuple[int, int]):
        self._frames = ArrayWriter(root, f"camera_{camera}", "uint8", (3, *hw))

    @property
    def rows(self) -> int:
        return self._frames.rows

    def append(self, frames: np.ndarray) -> None:
        self._frames.append(frames)

    def close(self) -> dict[str, dict[str, Any]]:
        return {self._frames.name: self._frames.close()}


class JpegWriter:
    def __init__(self, root: Path, camera: int, hw: tuple[int, int], quality: int):
        name = f"camera_{camera}"
        self._hw, self._params = hw, [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
        self._blob = ArrayWriter(root, f"{name}_jpeg", "uint8", (), file=f"{name}.jpeg")
        self._offsets = ArrayWriter(root, f"{name}_offsets", "uint64", ())
        self._crc = ArrayWriter(root, f"{name}_crc32", "uint32", ())
        self._offsets.append(np.zeros(1))
        self.rows = 0

    def append(self, frames: np.ndarray) -> None:
        if frames.shape[1:] != (3, *self._hw):
            raise ValueError(f"{self._blob.file}: frames {frames.shape[1:]} != {(3, *self._hw)}")
        ends, crcs = [], []
        for rgb in frames:
            bgr = np.ascontiguousarray(rgb[::-1].transpose(1, 2, 0))  # (H, W, 3)
            ok, jpeg = cv2.imencode(".jpg", bgr, self._params)
            if not ok:
                raise ValueError(f"{self._blob.file}: OpenCV could not encode frame {self.rows}")
            self._blob.append(jpeg.reshape(-1))
            ends.append(self._blob.rows)
            crcs.append(zlib.crc32(jpeg))
            self.rows += 1
        self._offsets.append(np.asarray(ends, dtype=np.uint64))
        self._crc.append(np.asarray(crcs, dtype=np.uint32))

    def close(self) -> dict[str, dict[str, Any]]:
        return {w.name: w.close() for w in (self._blob, self._offsets, self._crc)}


def frame_writer(
    store: dict[str, Any], root: Path, camera: int, hw: tuple[int, int]
) -> FrameWriter:
    if store["kind"] == "jpeg":
        return JpegWriter(root, camera, hw, store["quality"])
    return RawWriter(root, camera, hw)


# -- reading ---------------------------------------------------------------------------------
class RawFrames:
    def __init__(self, frames: np.memmap):
        self._frames = frames  # (F, 3, H, W)

    def read(self, rows: np.ndarray) -> np.ndarray:
        """Frames `rows` (M,) → (M, 3, H, W) uint8."""
        return self._frames[rows]


class JpegFrames:
    """One camera's JPEG store, its index checked on opening (see the module docstring)."""

    def __init__(self, root: Path, arrays: dict[str, Any], camera: int, hw: tuple[int, int]):
        name = f"camera_{camera}"
        spec = arrays[f"{name}_jpeg"]
        self.path, self._hw = root / spec["file"], hw
        self._offsets = np.asarray(open_array(root, arrays[f"{name}_offsets"]), dtype=np.int64)
        self._crc = np.asarray(open_array(root, arrays[f"{name}_crc32"]))
        index = root / arrays[f"{name}_offsets"]["file"]
        off, n, blob_bytes = self._offsets, self._crc.shape[0], int(spec["shape"][0])
        if off.shape[0] != n + 1:
            raise CorruptCacheError(
                f"{index}: {off.shape[0]} offsets for {n} frames, expected {n + 1}: "
                "rebuild the cache"
            )
        # frame f is bytes off[f] .. off[f+1]: the first starts at 0, each is longer than 0,
        # the last ends at the blob's end
        bad = np.flatnonzero(off[1:] <= off[:-1])
        f = 0 if off[0] != 0 else int(bad[0]) if bad.size else n - 1
        if off[0] != 0 or bad.size or off[-1] != blob_bytes:
            raise CorruptCacheError(
                f"{index}: frame {f} spans bytes {off[f]}..{off[f + 1]}, out of the blob's "
                f"0..{blob_bytes} or out of order: rebuild the cache"
            )
        size = self.path.stat().st_size
        if size < off[-1]:
            f = int(np.flatnonzero(off[1:] > size)[0])
            raise CorruptCacheError(
                f"{self.path}: {size} bytes, cut in frame {f} of {n} (bytes {off[f]}..{off[f + 1]})"
                ": rebuild the cache"
            )
        self._blob = open_array(root, spec)

    def read(self, rows: np.ndarray) -> np.ndarray:
        """Frames `rows` (M,) → (M, 3, H, W) uint8 RGB; each distinct frame decoded once."""
        unique, inverse = np.unique(rows, return_inverse=True)
        out = np.empty((unique.shape[0], 3, *self._hw), dtype=np.uint8)  # (U, 3, H, W)
        for k, f in enumerate(unique.tolist()):
            out[k] = self._decode(f).transpose(2, 0, 1)[::-1]  # BGR (H, W, 3) → RGB (3, H, W)
        return out if unique.shape[0] == rows.shape[0] and (unique == rows).all() else out[inverse]

    def _decode(self, f: int) -> np.ndarray:
        if not 0 <= f < self._crc.shape[0]:
            raise IndexError(f"{self.path}: frame {f} of {self._crc.shape[0]}")
        a, b = int(self._offsets[f]), int(self._offsets[f + 1])
        data = np.asarray(self._blob[a:b])
        if zlib.crc32(data) != int(self._crc[f]):
            raise CorruptCacheError(
                f"{self.path}: frame {f} (bytes {a}..{b}) fails its CRC-32: the file was "
                "damaged: rebuild the cache"
            )
        bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
        if bgr is None or bgr.shape != (*self._hw, 3):
            got = "nothing" if bgr is None else f"{bgr.shape}"
            raise CorruptCacheError(
                f"{self.path}: frame {f} (bytes {a}..{b}) decodes to {got}, not "
                f"{(*self._hw, 3)}: rebuild the cache"
            )
        return bgr


def open_frames(
    root: Path, store: dict[str, Any], meta: dict[str, Any], camera: int, hw: tuple[int, int]
) -> RawFrames | JpegFrames:
    """Camera `camera`'s frames in `store` (`store_of`)."""
    if store["kind"] == "jpeg":
        return JpegFrames(root, meta["arrays"], camera, hw)
    return RawFrames(open_array(root, meta["arrays"][f"camera_{camera}"]))
