"""Runs an exported policy folder with numpy + onnxruntime only (no torch on the robot side).

Raw observations in (joint units, images in [0, 1]), raw actions out; normalization and the
diffusion sampler happen here, from the policy card.

Nothing runs unverified when the card says what to expect: the card's "files" maps every file
of the folder that a runtime loads (the graphs, and any ONNX external data) to its SHA-256 and
size at export, and `verify_files` refuses a folder where any of them differs. A flipped bit in
a weight still loads and runs, only wrong (three bits: actions off by 0.2 normalized), so
nothing but the hash can catch it. A card without "files" (exported before cards carried them)
loads with a warning that the model is unverified, as a card without a camera "source" runs
with a warning that the lens cannot be checked.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from apprentice.errors import UserError
from apprentice.learning.diffusion.scheduler import NoiseSchedule, ddim_sample
from apprentice.learning.normalize import NormStats

CARD_FILE = "policy_card.json"
CARD_FORMAT = "apprentice.policy_card/1"
HASH_PREFIX = 12  # hex digits of a SHA-256 shown in messages
UNVERIFIED = (
    "UNVERIFIED MODEL: the policy card lists no file hashes (exported before cards carried "
    "them), so a corrupt or replaced graph would run unnoticed; export it again to verify it"
)


class PolicyRefused(UserError):
    """The policy must not run (here, or on this robot); the message says every reason."""


def file_record(path: str | Path) -> dict[str, Any]:
    """A card's "files" entry for one file: {"sha256": hex digest, "bytes": size}."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
            size += len(block)
    return {"sha256": digest.hexdigest(), "bytes": size}


def _valid_entry(entry: Any) -> bool:
    return (
        isinstance(entry, dict)
        and isinstance(entry.get("sha256"), str)
        and len(entry["sha256"]) == 64
        and all(c in "0123456789abcdef" for c in entry["sha256"])
        and isinstance(entry.get("bytes"), int)
        and entry["bytes"] >= 0
    )


def verify_files(card: dict[str, Any], directory: str | Path) -> bool:
    """Checks every file the card's "files" lists (SHA-256 and size) and that every graph
    file is listed. True: all verified. False: the card has no "files" (an older export;
    the caller warns with UNVERIFIED). Raises PolicyRefused, one line naming the file."""
    directory = Path(directory)
    if "files" not in card:
        return False
    files = card["files"]
    if not isinstance(files, dict) or not files:
        raise PolicyRefused(f"{directory}: the card's files must map file names to sha256, bytes")
    graph_files = sorted({str(g.get("file", "")) for g in card.get("graphs", {}).values()})
    unlisted = [name for name in graph_files if name not in files]
    if unlisted:
        raise PolicyRefused(
            f"{directory}: graph file(s) {', '.join(unlisted)} not listed in the card's files "
            "(the card was edited): the model cannot be verified"
        )
    for name, entry in files.items():
        if not _valid_entry(entry):
            raise PolicyRefused(f"{directory}: files[{name!r}] needs sha256 (64 hex) and bytes")
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise PolicyRefused(f"{directory}: files[{name!r}] is not inside the policy folder")
        path = directory / name
        if not path.is_file():
            raise PolicyRefused(f"{path}: listed in the policy card but missing")
        actual = file_record(path)
        if actual != entry:
            raise PolicyRefused(
                f"{path}: sha256 {entry['sha256'][:HASH_PREFIX]}... expected, the file has "
                f"{actual['sha256'][:HASH_PREFIX]}... ({actual['bytes']} bytes, "
                f"{entry['bytes']} expected): changed since export (corrupt or replaced)"
            )
    return True


def open_session(
    path: Path, threads: int, providers: list[str] | None = None
) -> ort.InferenceSession:
    """An onnxruntime session with the runtime's CPU settings (CPU provider unless given)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Idle worker threads would otherwise spin after each run, taking CPU from the drivers and
    # camera pipelines that share the robot computer (measured: it slows torch beside it ~10x).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(
        str(path), options, providers=providers or ["CPUExecutionProvider"]
    )


class _OnnxRunner:
    def __init__(self, directory: Path, card: dict[str, Any], threads: int):
        self.card = card
        self.directory = directory
        self.threads = threads
        self.state_stats = NormStats.from_json(card["normalization"]["state"])
        self.action_stats = NormStats.from_json(card["normalization"]["action"])

    def _graph(self, name: str) -> ort.InferenceSession:
        return open_session(self.directory / self.card["graphs"][name]["file"], self.threads)


class ActOnnxRunner(_OnnxRunner):
    def __init__(self, directory: Path, card: dict[str, Any], threads: int = 1):
        super().__init__(directory, card, threads)
        self.session = self._graph("policy")

    def run_normalized(self, state: np.ndarray, images: np.ndarray) -> np.ndarray:
        """The bare graph: normalized state (B, S), images (B, N, 3, H, W) → (B, K, A)."""
        feeds = {"state": state.astype(np.float32), "images": images.astype(np.float32)}
        return self.session.run(["actions"], feeds)[0]

    def predict(self, state: np.ndarray, images: np.ndarray) -> np.ndarray:
        """Raw state (B, S), images (B, N, 3, H, W) in [0, 1] → raw action chunk (B, K, A)."""
        chunk = self.run_normalized(self.state_stats.normalize(state), images)  # (B, K, A)
        return self.action_stats.unnormalize(chunk)


class DiffusionOnnxRunner(_OnnxRunner):
    def __init__(self, directory: Path, card: dict[str, Any], threads: int = 1):
        super().__init__(directory, card, threads)
        self.encoder = self._graph("obs_encoder")
        self.denoiser = self._graph("policy")
        diffusion = card["diffusion"]
        self.schedule = NoiseSchedule(np.asarray(diffusion["betas"]))
        self.num_inference_steps = int(diffusion["num_inference_steps"])
        self.clip_range = float(diffusion["clip_sample_range"])

    def encode(self, state: np.ndarray, images: np.ndarray) -> np.ndarray:
        """Normalized state (B, To, S), images (B, To, N, 3, H, W) → cond (B, G)."""
        feeds = {"state": state.astype(np.float32), "images": images.astype(np.float32)}
        return self.encoder.run(["cond"], feeds)[0]

    def denoise(self, x: np.ndarray, t: int, cond: np.ndarray) -> np.ndarray:
        """ε̂ for x_t (B, Tp, A) at integer step t."""
        feeds = {
            "noisy_actions": x.astype(np.float32),
            "t": np.full(x.shape[0], t, dtype=np.int64),
            "cond": cond,
        }
        return self.denoiser.run(["eps"], feeds)[0]

    def sample(self, cond: np.ndarray, noise: np.ndarray) -> np.ndarray:
        """numpy DDIM from x_T = noise (B, Tp, A) → normalized actions (B, Tp, A)."""

        def denoise(x: np.ndarray, t: int) -> np.ndarray:
            return self.denoise(x, t, cond)

        x_t = noise.astype(np.float32)
        return ddim_sample(denoise, x_t, self.schedule, self.num_inference_steps, self.clip_range)

    def predict(
        self, state: np.ndarray, images: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        """Raw state history (B, To, S), images (B, To, N, 3, H, W) in [0, 1]
        → the executable raw actions (B, Ta, A)."""
        cond = self.encode(self.state_stats.normalize(state), images)  # (B, G)
        tp, a = self.card["chunk_size"], len(self.card["joint_names"])
        noise = rng.standard_normal((cond.shape[0], tp, a), dtype=np.float32)  # (B, Tp, A)
        chunk = self.action_stats.unnormalize(self.sample(cond, noise))  # (B, Tp, A)
        start = self.card["action_start"]
        return chunk[:, start : start + self.card["action_horizon"]]  # (B, Ta, A)


RUNNERS: dict[str, type[ActOnnxRunner] | type[DiffusionOnnxRunner]] = {
    "act": ActOnnxRunner,
    "diffusion": DiffusionOnnxRunner,
}


def load_onnx_policy(
    directory: str | Path, threads: int = 1
) -> ActOnnxRunner | DiffusionOnnxRunner:
    """Opens an exported folder by its card's policy type, after `verify_files` (raises
    PolicyRefused on a changed file; warns when the card lists none). `threads`: onnxruntime
    intra-op."""
    directory = Path(directory)
    card = json.loads((directory / CARD_FILE).read_text())
    if card.get("format") != CARD_FORMAT:
        raise ValueError(f"{directory / CARD_FILE}: not an apprentice policy card")
    if card["policy_type"] not in RUNNERS:
        raise ValueError(f"no runtime for policy type {card['policy_type']!r}")
    if not verify_files(card, directory):
        warnings.warn(f"{directory}: {UNVERIFIED}", stacklevel=2)
    return RUNNERS[card["policy_type"]](directory, card, threads)
