"""ONNX export and the policy card that travels with it.

Output folder:
    policy.onnx        ACT: normalized state + images → normalized action chunk.
                       Diffusion: the denoiser ε̂ = f(noisy_actions, t, cond).
    obs_encoder.onnx   Diffusion only: normalized state + images history → cond. Split from the
                       denoiser so the image encoders run once per inference, not once per step.
    policy_card.json   everything a runtime needs besides the graphs (see `make_card`), and
                       "files": the SHA-256 and size of every file above that a runtime loads,
                       which every loader verifies before use (runtime.verify_files).

Exporter: the TorchScript-based `torch.onnx.export(dynamo=False)`. It writes one self-contained
file with no extra dependency (dynamo=True needs onnxscript and writes weights to a separate
`.onnx.data` file), and these models have no data-dependent control flow for it to miss. It is
deprecated upstream; its warning is silenced here. Every graph is checked with
`onnx.checker.check_model` before the card is written.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn
from torch.jit import TracerWarning

from apprentice.dataset.images import camera_info_record
from apprentice.learning.act.model import ActPolicy
from apprentice.learning.checkpoint import Policy, config_to_json
from apprentice.learning.diffusion.model import DiffusionPolicy
from apprentice.learning.runtime import CARD_FILE, CARD_FORMAT, file_record

POLICY_FILE = "policy.onnx"
OBS_ENCODER_FILE = "obs_encoder.onnx"
OPSET = 17


class _ObsEncoderGraph(nn.Module):
    """Exposes `DiffusionPolicy.encode_obs` as `forward` for tracing."""

    def __init__(self, policy: DiffusionPolicy):
        super().__init__()
        self.policy = policy

    def forward(self, state: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        return self.policy.encode_obs(state, images)


def _export_graph(
    module: nn.Module,
    example: tuple[torch.Tensor, ...],
    path: Path,
    input_names: list[str],
    output_names: list[str],
) -> None:
    batch_axes = {name: {0: "batch"} for name in input_names + output_names}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        # group_norm's batch-size sanity check reads a traced shape as a Python bool; the
        # check is not part of the graph. Warnings from our own modules still show.
        warnings.filterwarnings("ignore", category=TracerWarning, module="torch.nn.functional")
        torch.onnx.export(
            module,
            example,
            str(path),
            dynamo=False,
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=batch_axes,
            opset_version=OPSET,
        )
    onnx.checker.check_model(str(path))


def _external_data(path: Path) -> list[str]:
    """The files a graph keeps its weights in besides itself (ONNX external data; none from
    this exporter unless a graph passes 2 GB), relative to its folder."""
    model = onnx.load(str(path), load_external_data=False)
    return sorted({
        entry.value
        for tensor in model.graph.initializer
        if tensor.data_location == onnx.TensorProto.EXTERNAL
        for entry in tensor.external_data
        if entry.key == "location"
    })  # fmt: skip


def _io(names: list[str], shapes: list[tuple[int, ...]], dtype: str = "float32") -> dict:
    return {n: {"shape": ["batch", *s], "dtype": dtype} for n, s in zip(names, shapes, strict=True)}


def make_card(
    policy: Policy,
    *,
    joint_names: list[str],
    camera_names: list[str],
    control_rate_hz: float,
    data_index_hash: str,
    state_names: list[str] | None = None,
    camera_sources: dict[str, dict[str, Any]] | None = None,
    train_seeds: Sequence[int] | None = None,
) -> dict[str, Any]:
    """The policy card. Validates names against the config.

    camera_sources: per camera name, the camera as trained (its CameraInfo as the dataset
    recorded it, `apprentice.dataset.images.camera_info_record`); it becomes the camera's
    "source" in the card, which the policy node checks the live camera's lens against.
    train_seeds: the simulated scenes' seeds of the training data (`DatasetCache.scene_seeds`);
    `apprentice eval` refuses to evaluate on them. Absent from the card when None."""
    cfg = policy.cfg
    state_names = list(joint_names if state_names is None else state_names)
    if len(joint_names) != cfg.action_dim:
        raise ValueError(f"{len(joint_names)} joint names for action_dim {cfg.action_dim}")
    if len(state_names) != cfg.state_dim:
        raise ValueError(f"{len(state_names)} state names for state_dim {cfg.state_dim}")
    if len(camera_names) != cfg.n_cameras or len(set(camera_names)) != cfg.n_cameras:
        raise ValueError(f"need {cfg.n_cameras} distinct camera names, got {camera_names}")
    if not control_rate_hz > 0:
        raise ValueError(f"control_rate_hz must be > 0, got {control_rate_hz}")
    if not isinstance(data_index_hash, str) or not data_index_hash:
        raise ValueError("data_index_hash must be a non-empty string")
    sources = {k: v for k, v in (camera_sources or {}).items() if v is not None}
    unknown = sorted(set(sources) - set(camera_names))
    if unknown:
        raise ValueError(f"camera_sources for unknown cameras {unknown}")
    for name, src in sources.items():
        try:
            sources[name] = camera_info_record(**src)
        except (TypeError, ValueError) as e:
            raise ValueError(f"camera {name}: source {src!r} is not a CameraInfo record") from e
    h, w = cfg.image_hw
    n, s, a = cfg.n_cameras, cfg.state_dim, cfg.action_dim
    card: dict[str, Any] = {
        "format": CARD_FORMAT,
        "policy_type": policy.policy_type,
        "joint_names": list(joint_names),
        "state_names": state_names,
        # height x width: the policy's input; source: the camera it was trained on (absent
        # when the dataset did not record its camera_info)
        "cameras": [
            {"name": c, "height": h, "width": w} | ({"source": sources[c]} if c in sources else {})
            for c in camera_names
        ],
        "image_encoding": "float32 RGB, channels first, in [0, 1], resized to height x width",
        "normalization": {
            "where": "outside the graphs: feed normalized state, read normalized actions",
            "formula": "x_norm = (x - offset) / scale",
            "state": policy.normalizer.stats("state").to_json(),
            "action": policy.normalizer.stats("action").to_json(),
        },
        "control_rate_hz": float(control_rate_hz),
        "data_index_hash": data_index_hash,
        "config": config_to_json(cfg),
        "onnx_opset": OPSET,
        "torch_version": torch.__version__,
    }
    if train_seeds is not None:
        card["train_seeds"] = sorted({int(s) for s in train_seeds})
    if isinstance(policy, ActPolicy):
        card |= {
            "chunk_size": cfg.chunk_size,
            "n_obs_steps": 1,
            "action_horizon": cfg.chunk_size,  # how many to run is the chunk executor's choice
            "action_start": 0,
            "diffusion": None,
            "graphs": {
                "policy": {
                    "file": POLICY_FILE,
                    "inputs": _io(["state", "images"], [(s,), (n, 3, h, w)]),
                    "outputs": _io(["actions"], [(cfg.chunk_size, a)]),
                }
            },
        }
    else:
        to, tp = cfg.n_obs_steps, cfg.horizon
        card |= {
            "chunk_size": tp,
            "n_obs_steps": to,
            "action_horizon": cfg.n_action_steps,
            "action_start": to - 1,  # executable actions are chunk[start : start + horizon]
            "diffusion": {
                "beta_schedule": cfg.beta_schedule,
                "prediction_type": cfg.prediction_type,
                "num_train_timesteps": cfg.num_train_timesteps,
                "num_inference_steps": cfg.num_inference_steps,
                "sampler": "ddim",
                "timestep_spacing": "leading",
                "eta": 0.0,
                "set_alpha_to_one": True,
                "clip_sample_range": cfg.clip_sample_range,
                **policy.schedule.to_json(),
            },
            "graphs": {
                "obs_encoder": {
                    "file": OBS_ENCODER_FILE,
                    "inputs": _io(["state", "images"], [(to, s), (to, n, 3, h, w)]),
                    "outputs": _io(["cond"], [(policy.cond_dim,)]),
                },
                "policy": {
                    "file": POLICY_FILE,
                    "inputs": {
                        **_io(["noisy_actions"], [(tp, a)]),
                        **_io(["t"], [()], "int64"),
                        **_io(["cond"], [(policy.cond_dim,)]),
                    },
                    "outputs": _io(["eps"], [(tp, a)]),
                },
            },
        }
    return card


def export_onnx(
    policy: Policy,
    out_dir: str | Path,
    *,
    joint_names: list[str],
    camera_names: list[str],
    control_rate_hz: float,
    data_index_hash: str,
    state_names: list[str] | None = None,
    camera_sources: dict[str, dict[str, Any]] | None = None,
    train_seeds: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Writes the graph(s) and `policy_card.json` into `out_dir`; returns the card, whose
    "files" holds each written file's {"sha256", "bytes"}.

    `data_index_hash` identifies the training data (e.g. the dataset index's hash), so a
    deployed policy can be traced back to the episodes it learned from.
    """
    card = make_card(
        policy,
        joint_names=joint_names,
        camera_names=camera_names,
        control_rate_hz=control_rate_hz,
        data_index_hash=data_index_hash,
        state_names=state_names,
        camera_sources=camera_sources,
        train_seeds=train_seeds,
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = policy.cfg
    was_training = policy.training
    policy.eval()  # dropout off, center crop: the graph is the inference path
    try:
        h, w = cfg.image_hw
        if isinstance(policy, ActPolicy):
            example = (torch.zeros(2, cfg.state_dim), torch.rand(2, cfg.n_cameras, 3, h, w))
            _export_graph(policy, example, out_dir / POLICY_FILE, ["state", "images"], ["actions"])
        else:
            to = cfg.n_obs_steps
            state = torch.zeros(2, to, cfg.state_dim)
            images = torch.rand(2, to, cfg.n_cameras, 3, h, w)
            encoder = _ObsEncoderGraph(policy)
            _export_graph(
                encoder, (state, images), out_dir / OBS_ENCODER_FILE, ["state", "images"], ["cond"]
            )
            example = (
                torch.zeros(2, cfg.horizon, cfg.action_dim),
                torch.tensor([0, cfg.num_train_timesteps - 1]),
                torch.zeros(2, policy.cond_dim),
            )
            _export_graph(
                policy, example, out_dir / POLICY_FILE, ["noisy_actions", "t", "cond"], ["eps"]
            )
    finally:
        policy.train(was_training)
    graph_files = sorted({g["file"] for g in card["graphs"].values()})
    names = sorted({*graph_files, *(f for g in graph_files for f in _external_data(out_dir / g))})
    card["files"] = {name: file_record(out_dir / name) for name in names}
    (out_dir / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
    return card
