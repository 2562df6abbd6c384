"""A tiny randomly initialized ACT exported to ONNX, for tests of the machinery around policies
(policy node, eval): it runs in milliseconds and does not solve any task. Importable from every
test folder (tests/ is on sys.path through tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from apprentice.learning.act.config import ActConfig
from apprentice.learning.act.model import ActPolicy
from apprentice.learning.export import export_onnx
from apprentice.learning.normalize import NormStats


def export_tiny_act(
    folder: Path,
    joints: Sequence[str],
    home: np.ndarray,
    cameras: Sequence[str],
    image_hw: tuple[int, int],
    action_offset: np.ndarray | None = None,
    spread: float = 0.05,
    rate_hz: float = 50.0,
    intrinsics: dict[str, dict] | None = None,
    train_seeds: Sequence[int] | None = None,
) -> Path:
    """Exports into `folder`. Normalization stats are fitted to samples around `home` (state,
    spread 2×) and `home + action_offset` (actions), so outputs land near there. intrinsics:
    per camera the camera it was "trained" on, as the card's "source" ({"width", "height",
    "k", "d", "distortion_model"}; apprentice.dataset.images.camera_info_record). train_seeds:
    the scene seeds the card says it was trained on."""
    torch.manual_seed(0)
    n = len(joints)
    cfg = ActConfig(
        state_dim=n, action_dim=n, n_cameras=len(cameras), image_hw=image_hw, chunk_size=20,
        d_model=32, n_heads=4, dim_feedforward=64, n_encoder_layers=1, n_decoder_layers=1,
        n_vae_encoder_layers=1, latent_dim=8, dropout=0.0, backbone_width=8,
        backbone_norm="group_norm",
    )  # fmt: skip
    policy = ActPolicy(cfg)
    rng = np.random.default_rng(0)
    offset = np.zeros(n) if action_offset is None else np.asarray(action_offset)
    state = home + 2 * spread * rng.standard_normal((200, n))
    action = home + offset + spread * rng.standard_normal((200, n))
    policy.normalizer.set_stats("state", NormStats.fit(state, "mean_std"))
    policy.normalizer.set_stats("action", NormStats.fit(action, "mean_std"))
    export_onnx(policy, folder, joint_names=list(joints), camera_names=list(cameras),
                control_rate_hz=rate_hz, data_index_hash="sha256:test",
                camera_sources=intrinsics, train_seeds=train_seeds)  # fmt: skip
    return folder


def flip_weight_bits(path: Path, bits: int = 3) -> None:
    """Flips one bit in each of `bits` float32 weights spread over the largest initializer of
    the ONNX file at `path`, in place: bit rot. The file stays a valid model that loads and
    runs, only wrong, which nothing but a hash of the file can tell."""
    import onnx

    model = onnx.load(str(path))
    raw = max((t.raw_data for t in model.graph.initializer), key=len)
    data = bytearray(path.read_bytes())
    start = data.find(raw)  # initializers are serialized verbatim
    assert start >= 0 and len(raw) >= 4 * bits, path
    for i in range(bits):
        weight = start + 4 * (i * len(raw) // (4 * bits))
        data[weight + 2] ^= 0x40  # little-endian float32: mantissa bit 22, up to half the value
    path.write_bytes(bytes(data))
