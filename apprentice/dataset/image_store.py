"""How a training cache keeps its arrays on disk, and each camera's frames: raw or JPEG.

Every file of a cache is a flat array that `dataset.json` "arrays" describes (file, dtype,
shape); `ArrayWriter` appends one, `open_array` maps it read-only after checking its size.
The camera frames, (F_n, 3, H, W) uint8 RGB per camera n, are kept by one of two stores
(`dataset.json` "image_store"; a cache written before it existed has none: raw):

    raw   camera_<n>.u8           (F_n, 3, H, W)  served zero-copy from the page cache
    jpeg  camera_<n>.jpeg         (B,)            each frame's JPEG data, back to back
          camera_<n>_offsets.u64  (F_n + 1,)      frame f is bytes offsets[f] .. offsets[f+1]
          camera_<n>_crc32.u32    (F_n,)          CRC-32 of each frame's bytes
          camera_<n>_header.jpeg  (L,)            the tables all frames share ("tables": "shared")

A JPEG file of a 96x128 frame is ~1.6 KB, and 625 bytes of it are the same in every frame:
the headers up to the scan (JFIF, quantization and Huffman tables, frame and scan headers; the
standard tables at one quality and size) and the end marker. A store with "tables": "shared"
(every cache written since 2026-12-07) keeps that header once per camera, its CRC-32 in its
"arrays" entry, and per frame only the entropy-coded scan; a read puts header + scan + end
marker back together, byte for byte the file OpenCV wrote. A store without "tables" keeps
whole files.

JPEG costs a decode per frame read and a second loss (colour at half resolution, 4:2:0, as
in LeRobot's yuv420p videos), and saves 15-50x. Measured (bench/image_store.py: the demo's 50
insertion episodes, 22,164 grid frames; ACT samples, batch 8, 0 workers; three runs on a
2-core host at load 1-5, hence the ranges; LeRobot's loader: 225 samples/s on the transfer
cube demos), per grid frame, the whole cache:

    96x128    raw 22.3 KB, 9,500-18,900 samples/s; JPEG q90 1.27 KB with shared tables
              (1.64 KB as whole files), 1.54x LeRobot's AV1 dataset of the same episodes
              (0.82 KB per frame, measured by the bench), 2,600-6,300 samples/s (0.27-0.35x
              raw, 12-28x LeRobot), PSNR 37 dB
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
bit in a JPEG usually still decodes, into wrong pixels) and must decode to (H, W, 3); the
shared header is checked against its CRC-32 when the store is opened. (Behind a good header,
libjpeg decodes any scan bytes into some image, with a warning: the CRC is what catches them.)
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


def new_store(choice: str, hw: tuple[int, int], quality: int) -> dict[str, Any]:
    """dataset.json's "image_store" for a cache this version writes (`resolve_store`)."""
    if resolve_store(choice, hw) == "jpeg":
        return {"kind": "jpeg", "quality": quality, "tables": "shared"}
    return {"kind": "raw"}


def store_of(meta: dict[str, Any], meta_path: Path) -> dict[str, Any]:
    """dataset.json's "image_store" ({"kind": "raw"} for a cache written before it existed)."""
    store = meta.get("image_store", {"kind": "raw"})
    if (not isinstance(store, dict) or store.get("kind") not in STORES
            or store.get("tables", "shared") != "shared"):  # fmt: skip
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


_SOI, _SOS, _EOI = b"\xff\xd8", 0xDA, b"\xff\xd9"


def scan_start(jpeg: bytes) -> int:
    """Where the entropy-coded scan of a baseline JPEG file begins: the length of its headers,
    SOI through the SOS segment (markers walked by their lengths). ValueError if `jpeg` is not
    a JPEG file whose headers are whole."""
    if jpeg[:2] != _SOI:
        raise ValueError("not a JPEG file (no SOI marker)")
    i = 2
    while i + 4 <= len(jpeg) and jpeg[i] == 0xFF:
        marker, length = jpeg[i + 1], int.from_bytes(jpeg[i + 2 : i + 4], "big")
        i += 2 + length
        if marker == _SOS:
            if i > len(jpeg):
                break
            return i
    raise ValueError(f"JPEG headers end at byte {i} of {len(jpeg)} without a scan (SOS)")


class JpegWriter:
    """Writes one camera's frames as JPEG scans after one shared header (module docstring)."""

    def __init__(self, root: Path, camera: int, hw: tuple[int, int], quality: int):
        name = f"camera_{camera}"
        self._root, self._hw, self._params = root, hw, [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
        self._blob = ArrayWriter(root, f"{name}_jpeg", "uint8", (), file=f"{name}.jpeg")
        self._offsets = ArrayWriter(root, f"{name}_offsets", "uint64", ())
        self._crc = ArrayWriter(root, f"{name}_crc32", "uint32", ())
        self._header_name, self._header = f"{name}_header", b""
        self._offsets.append(np.zeros(1))
        self.rows = 0

    def _scan(self, jpeg: bytes) -> bytes:
        """The frame's scan, after checking its header is the shared one (the first frame's)."""
        start = scan_start(jpeg)
        if not self._header:
            self._header = jpeg[:start]
        if jpeg[:start] != self._header or jpeg[-2:] != _EOI:
            raise ValueError(
                f"{self._blob.file}: frame {self.rows}'s JPEG headers differ from frame 0's; "
                "a shared-table store needs one encoder, quality and size"
            )
        return jpeg[start:-2]

    def append(self, frames: np.ndarray) -> None:
        if frames.shape[1:] != (3, *self._hw):
            raise ValueError(f"{self._blob.file}: frames {frames.shape[1:]} != {(3, *self._hw)}")
        ends, crcs = [], []
        for rgb in frames:
            bgr = np.ascontiguousarray(rgb[::-1].transpose(1, 2, 0))  # (H, W, 3)
            ok, jpeg = cv2.imencode(".jpg", bgr, self._params)
            if not ok:
                raise ValueError(f"{self._blob.file}: OpenCV could not encode frame {self.rows}")
            scan = self._scan(jpeg.tobytes())
            self._blob.append(np.frombuffer(scan, dtype=np.uint8))
            ends.append(self._blob.rows)
            crcs.append(zlib.crc32(scan))
            self.rows += 1
        self._offsets.append(np.asarray(ends, dtype=np.uint64))
        self._crc.append(np.asarray(crcs, dtype=np.uint32))

    def close(self) -> dict[str, dict[str, Any]]:
        arrays = {w.name: w.close() for w in (self._blob, self._offsets, self._crc)}
        header = ArrayWriter(self._root, self._header_name, "uint8", (),
                             file=f"{self._header_name}.jpeg")  # fmt: skip
        header.append(np.frombuffer(self._header, dtype=np.uint8))
        return arrays | {header.name: header.close() | {"crc32": zlib.crc32(self._header)}}


def frame_writer(
    store: dict[str, Any], root: Path, camera: int, hw: tuple[int, int]
) -> FrameWriter:
    if store["kind"] == "jpeg":
        if store.get("tables") != "shared":
            raise ValueError(f"this version writes JPEG stores with shared tables, not {store}")
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

    def __init__(
        self, root: Path, arrays: dict[str, Any], camera: int, hw: tuple[int, int], shared: bool
    ):
        name = f"camera_{camera}"
        spec = arrays[f"{name}_jpeg"]
        # frame f's file: header + stored bytes + tail (whole files when tables are not shared)
        self._header, self._tail = np.zeros(0, np.uint8), np.zeros(0, np.uint8)
        if shared:
            if f"{name}_header" not in arrays:
                raise CorruptCacheError(
                    f"{root}: dataset.json lists no {name}_header for its shared-table JPEG "
                    "store: rebuild the cache"
                )
            self._header = self._open_header(root, arrays[f"{name}_header"])
            self._tail = np.frombuffer(_EOI, dtype=np.uint8)
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

    @staticmethod
    def _open_header(root: Path, spec: dict[str, Any]) -> np.ndarray:
        header = np.array(open_array(root, spec))  # (L,) a copy: it is joined to every frame
        problem = ""
        if zlib.crc32(header) != spec.get("crc32"):
            problem = "fails its CRC-32"
        else:
            try:
                if scan_start(header.tobytes()) != header.shape[0]:
                    problem = "is not JPEG headers ending at the scan"
            except ValueError as e:
                problem = str(e)
        if problem:
            raise CorruptCacheError(
                f"{root / spec['file']}: the JPEG header all frames share {problem}: the file "
                "was damaged: rebuild the cache"
            )
        return header

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
        if self._header.size:
            data = np.concatenate((self._header, data, self._tail))
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
        return JpegFrames(root, meta["arrays"], camera, hw, store.get("tables") == "shared")
    return RawFrames(open_array(root, meta["arrays"][f"camera_{camera}"]))
