"""`apprentice import-policy`: a LeRobot ACT or Diffusion checkpoint → an apprentice run folder.

    apprentice import-policy outputs/train/act_so101/checkpoints/last/pretrained_model \\
        --out runs/act_so101 --dataset ~/datasets/so101_pick
    apprentice export runs/act_so101          # → runs/act_so101/policy (ONNX + card)

Checkpoint layouts read (JSON and safetensors only, nothing unpickled):
- lerobot 0.4 to 0.6: config.json, model.safetensors, and policy_preprocessor.json /
  policy_postprocessor.json whose normalizer steps name the safetensors files holding the
  statistics (tested on files lerobot 0.6.1 wrote; 0.4.0's source has the same files,
  formulas and module names);
- lerobot 0.3: config.json and model.safetensors with the statistics inside it
  (`normalize_inputs.buffer_<key with _>.<stat>`, `unnormalize_outputs.buffer_action.<stat>`,
  as lerobot 0.3.3's normalize.py names them; tested on a 0.6.1 checkpoint laid out so).
Older configs (no `input_features`) are refused.

LeRobot's normalization becomes apprentice's: state and action as `NormStats` (offset, scale
reproduce LeRobot's formulas, its eps included), images as the config's in-graph `image_stats`.
The weights go through `lerobot_policy_weights.py`, which names any key it cannot place.
The run folder holds run.json (no dataset cache: the names and rate come from the LeRobot
dataset's meta/info.json or the command line) and checkpoints/last/model.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from apprentice.errors import UserPathError, UserValueError
from apprentice.interop import lerobot_policy_weights as weights
from apprentice.learning.act.config import ActConfig
from apprentice.learning.checkpoint import (
    Policy,
    PolicyConfig,
    build_policy,
    config_to_json,
    save_policy,
)
from apprentice.learning.diffusion.config import DiffusionConfig
from apprentice.learning.normalize import NormStats
from apprentice.learning.train_config import LAST, RUN_FILE, RUN_FORMAT

STATE, ACTION, IMAGE_PREFIX = "observation.state", "action", "observation.images."
# the normalizer steps and the steps that do not change values (others are refused by name)
PASSIVE_STEPS = {"to_batch_processor", "device_processor", "rename_observations_processor"}
LEROBOT_EPS = 1e-8  # NormalizerProcessorStep's default (and lerobot <= 0.3's constant)


@dataclass
class LeRobotCheckpoint:
    config: dict[str, Any]
    tensors: dict[str, torch.Tensor]  # model.safetensors
    stats: dict[str, dict[str, np.ndarray]]  # feature key → stat name → array
    out_stats: dict[str, dict[str, np.ndarray]]  # the unnormalizer's (action)
    norm_map: dict[str, str]  # "STATE" / "VISUAL" / "ACTION" → "MEAN_STD" / ...
    eps: float
    layout: str
    sha256: str
    normalized: set[str] | None = None  # inputs the normalizer step covers (None: all)
    notes: list[str] = field(default_factory=list)


def _json(path: Path) -> Any:
    if not path.is_file():
        raise UserPathError(f"{path}: no such file (not a LeRobot policy checkpoint folder?)")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserValueError(f"{path}: not JSON ({exc})") from None


def _safetensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise UserPathError(f"{path}: no such file (not a LeRobot policy checkpoint folder?)")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise UserValueError(f"{path}: not a safetensors file ({exc})") from None


def _flat_stats(tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, np.ndarray]]:
    out: dict[str, dict[str, np.ndarray]] = {}
    for flat, tensor in tensors.items():
        key, stat = flat.rsplit(".", 1)
        out.setdefault(key, {})[stat] = tensor.double().numpy()
    return out


def _processor_step(src: Path, file: str, name: str) -> tuple[dict, dict]:
    """The `name` step's config and stats of a processor pipeline JSON; other steps must not
    change values."""
    pipeline = _json(src / file)
    found = None
    for step in pipeline.get("steps", []) if isinstance(pipeline, dict) else []:
        reg = step.get("registry_name")
        if reg == name:
            found = step
        elif reg == "rename_observations_processor" and step.get("config", {}).get("rename_map"):
            raise UserValueError(f"{src / file}: a rename_map is not supported")
        elif reg not in PASSIVE_STEPS | {"normalizer_processor", "unnormalizer_processor"}:
            raise UserValueError(f"{src / file}: unsupported processor step {reg!r}")
    if found is None:
        raise UserValueError(f"{src / file}: no {name} step")
    stats = _flat_stats(_safetensors(src / found["state_file"])) if "state_file" in found else {}
    return found.get("config", {}), stats


def read_checkpoint(src: str | Path) -> LeRobotCheckpoint:
    """Reads either layout (see the module docstring); a wrong folder is a UserError."""
    src = Path(src)
    if not src.is_dir():
        raise UserPathError(f"{src}: no such folder")
    config = _json(src / "config.json")
    if not isinstance(config, dict) or config.get("type") not in ("act", "diffusion"):
        kind = config.get("type") if isinstance(config, dict) else None
        raise UserValueError(
            f"{src / 'config.json'}: policy type {kind!r}; import-policy reads act and diffusion"
        )
    model_file = src / "model.safetensors"
    tensors = _safetensors(model_file)
    digest = hashlib.sha256(model_file.read_bytes()).hexdigest()
    norm_map = {k: str(v) for k, v in (config.get("normalization_mapping") or {}).items()}
    if (src / "policy_preprocessor.json").exists():
        pre, stats = _processor_step(src, "policy_preprocessor.json", "normalizer_processor")
        post, out_stats = _processor_step(
            src, "policy_postprocessor.json", "unnormalizer_processor"
        )
        norm_map = {k: str(v) for k, v in pre.get("norm_map", norm_map).items()}
        post_map = {k: str(v) for k, v in post.get("norm_map", norm_map).items()}
        if post_map.get("ACTION") != norm_map.get("ACTION"):
            raise UserValueError(f"{src}: pre- and postprocessor normalize actions differently")
        eps = float(pre.get("eps", LEROBOT_EPS))
        layout = "lerobot>=0.4 (policy_preprocessor.json / policy_postprocessor.json)"
        normalized = set(pre.get("features") or config.get("input_features") or {})
        if pre.get("normalize_observation_keys") is not None:
            normalized &= set(pre["normalize_observation_keys"])
    elif any(k.startswith(weights.STATS_PREFIXES) for k in tensors):
        stats = _old_stats(tensors, "normalize_inputs.")
        out_stats = _old_stats(tensors, "unnormalize_outputs.")
        eps, normalized = LEROBOT_EPS, None
        layout = "lerobot<=0.3 (statistics inside model.safetensors)"
    else:
        raise UserValueError(
            f"{src}: no policy_preprocessor.json and no statistics in model.safetensors"
        )
    return LeRobotCheckpoint(
        config, tensors, stats, out_stats, norm_map, eps, layout, digest, normalized
    )


def _old_stats(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, dict[str, np.ndarray]]:
    """lerobot <= 0.3: `<prefix>buffer_<key with _ for .>.<stat>`, keyed back by that name."""
    flat = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    return {k.removeprefix("buffer_"): v for k, v in _flat_stats(flat).items()}


def _stats_for(ck: LeRobotCheckpoint, key: str, output: bool) -> dict[str, np.ndarray] | None:
    table = ck.out_stats if output else ck.stats
    return table.get(key, table.get(key.replace(".", "_")))


def _affine(
    ck: LeRobotCheckpoint, key: str, kind: str, output: bool
) -> tuple[str, np.ndarray, np.ndarray]:
    """LeRobot's (un)normalization of one feature as (apprentice mode, offset, scale) with
    x_norm = (x - offset) / scale; the feature's shape is kept (images: (3, 1, 1))."""
    mode = ck.norm_map.get(kind, "IDENTITY")
    if not output and ck.normalized is not None and key not in ck.normalized:
        mode = "IDENTITY"  # the preprocessor leaves this input as it is
    st = _stats_for(ck, key, output)
    if mode == "IDENTITY" or st is None:
        if mode != "IDENTITY":
            ck.notes.append(f"{key}: no statistics in the checkpoint, used unnormalized")
        return "mean_std", np.array(0.0), np.array(1.0)
    names = {"MEAN_STD": ("mean", "std"), "MIN_MAX": ("min", "max"),
             "QUANTILES": ("q01", "q99"), "QUANTILE10": ("q10", "q90")}.get(mode)  # fmt: skip
    if names is None:
        raise UserValueError(f"{key}: normalization mode {mode} is not supported")
    if any(n not in st for n in names):
        raise UserValueError(
            f"{key}: {mode} needs statistics {names}, the checkpoint has {list(st)}"
        )
    a, b = st[names[0]], st[names[1]]
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise UserValueError(f"{key}: {mode} statistics are not finite (never computed?)")
    # LeRobot normalizes with (x - mean) / (std + eps) and unnormalizes with x·std + mean;
    # min-max: 0.4+ replaces a zero span by eps both ways, <= 0.3 adds eps when normalizing.
    # A zero scale left (a joint that never moved) is floored to eps: the same to eps·|x_norm|.
    if mode == "MEAN_STD":
        return "mean_std", a, np.maximum(b if output else b + ck.eps, ck.eps)
    span = b - a
    if ck.layout.startswith("lerobot<=0.3") and not output:
        span = span + ck.eps
    span = np.where(span == 0, ck.eps, span)
    return "min_max", a + span / 2, span / 2


def _features(ck: LeRobotCheckpoint) -> tuple[int, int, list[str], tuple[int, int]]:
    """(state dim, action dim, camera keys, image (H, W)); refuses inputs apprentice lacks."""
    if "input_features" not in ck.config:  # lerobot <= 0.2: input_shapes, ...
        raise UserValueError("config.json has no input_features: a lerobot <= 0.2 checkpoint?")
    inputs = ck.config.get("input_features") or {}
    outputs = ck.config.get("output_features") or {}
    if STATE not in inputs:
        raise UserValueError("the policy has no observation.state input; apprentice needs one")
    # cameras are VISUAL features: observation.images.<name>, or one observation.image
    extra = [k for k in inputs if k != STATE and inputs[k].get("type") != "VISUAL"]
    if extra:
        raise UserValueError(f"unsupported policy input(s) {extra}")
    cams = [k for k in inputs if inputs[k].get("type") == "VISUAL"]
    if not cams:
        raise UserValueError("the policy has no camera input; apprentice's policies need one")
    shapes = {tuple(inputs[k]["shape"]) for k in cams}
    if len(shapes) != 1 or len(next(iter(shapes))) != 3 or next(iter(shapes))[0] != 3:
        raise UserValueError(f"cameras must all be (3, H, W) of one size, got {sorted(shapes)}")
    if list(outputs) != [ACTION]:
        raise UserValueError(f"policy outputs {list(outputs)}, apprentice expects [action]")
    _, h, w = next(iter(shapes))
    return int(inputs[STATE]["shape"][0]), int(outputs[ACTION]["shape"][0]), cams, (h, w)


def _require(cfg: dict[str, Any], key: str, allowed: tuple[Any, ...]) -> None:
    if cfg.get(key) not in allowed:
        raise UserValueError(f"{key}={cfg.get(key)!r} is not supported (supported: {allowed})")


def _act_config(ck: LeRobotCheckpoint, common: dict[str, Any]) -> ActConfig:
    c = ck.config
    _require(c, "vision_backbone", ("resnet18",))
    _require(c, "pre_norm", (False,))
    _require(c, "feedforward_activation", ("relu",))
    _require(c, "replace_final_stride_with_dilation", (False, 0))
    if not c.get("use_vae", True):
        ck.notes.append("trained without the VAE (use_vae=false): its weights are zeros here, "
                        "the exported graph does not use them")  # fmt: skip
    if c.get("temporal_ensemble_coeff") is not None:
        ck.notes.append(
            f"LeRobot ran it with temporal ensembling (coeff {c['temporal_ensemble_coeff']}); "
            "choose the policy node's chunk executor to match"
        )
    return ActConfig(
        **common, chunk_size=c["chunk_size"], d_model=c["dim_model"], n_heads=c["n_heads"],
        dim_feedforward=c["dim_feedforward"], n_encoder_layers=c["n_encoder_layers"],
        n_decoder_layers=c["n_decoder_layers"], n_vae_encoder_layers=c["n_vae_encoder_layers"],
        latent_dim=c["latent_dim"], dropout=c["dropout"], kl_weight=c["kl_weight"],
        backbone_width=64, backbone_norm="frozen_bn", backbone_stride=32,
    )  # fmt: skip


def _diffusion_config(ck: LeRobotCheckpoint, common: dict[str, Any]) -> DiffusionConfig:
    c = ck.config
    _require(c, "vision_backbone", ("resnet18",))
    _require(c, "resize_shape", (None,))
    _require(c, "use_film_scale_modulation", (True,))
    _require(c, "clip_sample", (True,))
    _require(c, "prediction_type", ("epsilon",))
    _require(c, "beta_schedule", ("squaredcos_cap_v2",))
    _require(c, "n_groups", (8,))  # LeRobot's final conv block always has 8 groups
    crop = tuple(c["crop_shape"]) if c.get("crop_shape") else None
    if crop is not None:
        for size, cut in zip(common["image_hw"], crop, strict=True):
            if round((size - cut) / 2) != (size - cut) // 2:  # torchvision rounds, we floor
                raise UserValueError(f"center crop {crop} of {common['image_hw']} is off by one")
    steps = c.get("num_inference_steps") or c["num_train_timesteps"]
    if c.get("noise_scheduler_type") != "DDIM":
        ck.notes.append(
            f"LeRobot samples with {c.get('noise_scheduler_type')}; the export samples the same "
            f"denoiser with DDIM, {steps} steps"
        )
    return DiffusionConfig(
        **common, crop_hw=crop, n_obs_steps=c["n_obs_steps"], horizon=c["horizon"],
        n_action_steps=c["n_action_steps"], backbone_width=64,
        n_keypoints=c["spatial_softmax_num_keypoints"],
        image_feature_dim=2 * c["spatial_softmax_num_keypoints"], down_dims=tuple(c["down_dims"]),
        kernel_size=c["kernel_size"], n_groups=c["n_groups"],
        step_embed_dim=c["diffusion_step_embed_dim"],
        num_train_timesteps=c["num_train_timesteps"], num_inference_steps=steps,
        beta_schedule=c["beta_schedule"], prediction_type=c["prediction_type"],
        clip_sample_range=c["clip_sample_range"],
        backbone_norm="group_norm" if c.get("use_group_norm") else "frozen_bn",
        image_feature_relu=True,
    )  # fmt: skip


def to_policy(ck: LeRobotCheckpoint, where: str = "model.safetensors") -> tuple[Policy, list[str]]:
    """The apprentice policy equal to the checkpoint, in eval mode; and its camera names."""
    s, a, cams, hw = _features(ck)
    state_mode, state_off, state_scale = _affine(ck, STATE, "STATE", False)
    action_mode, action_off, action_scale = _affine(ck, ACTION, "ACTION", True)
    image_stats = []
    for key in cams:
        _, off, scale = _affine(ck, key, "VISUAL", False)
        off, scale = np.broadcast_to(off, (3, 1, 1)), np.broadcast_to(scale, (3, 1, 1))
        image_stats.append((tuple(off.reshape(3).tolist()), tuple(scale.reshape(3).tolist())))
    common = dict(
        state_dim=s, action_dim=a, n_cameras=len(cams), image_hw=hw, state_norm=state_mode,
        action_norm=action_mode, image_stats=tuple(image_stats),
    )  # fmt: skip
    try:
        cfg: PolicyConfig = (_act_config if ck.config["type"] == "act" else _diffusion_config)(
            ck, common
        )
    except KeyError as exc:
        raise UserValueError(f"config.json: no {exc.args[0]!r}") from None
    except ValueError as exc:  # apprentice's own config validation
        raise UserValueError(f"config.json: {exc}") from None
    policy = build_policy(cfg)
    own, buffers = policy.state_dict(), dict(policy.named_buffers())
    if isinstance(cfg, ActConfig):
        state = weights.map_state_dict(
            ck.tensors, own,
            lambda k: weights.act_source(k, cfg.d_model, ck.config.get("use_vae", True)),
            weights.ACT_DERIVED, buffers, where,
        )  # fmt: skip
    else:
        shared = not ck.config.get("use_separate_rgb_encoder_per_camera", True)
        perm = weights.cond_permutation(cfg.n_obs_steps, cfg.n_cameras, cfg.image_feature_dim, s)
        state = weights.map_state_dict(
            ck.tensors, own,
            lambda k: weights.diffusion_source(k, shared, perm, cfg.step_embed_dim),
            weights.DIFFUSION_DERIVED, buffers, where,
        )  # fmt: skip
    state |= {k: v for k, v in own.items() if k.startswith("normalizer.")}
    policy.load_state_dict(state, strict=True)
    for name, mode, off, scale, dim in (
        ("state", state_mode, state_off, state_scale, s),
        ("action", action_mode, action_off, action_scale, a),
    ):
        stats = NormStats(mode, np.broadcast_to(off, (dim,)), np.broadcast_to(scale, (dim,)))
        policy.normalizer.set_stats(name, stats)
    return policy.eval(), [k.removeprefix(IMAGE_PREFIX).removeprefix("observation.") for k in cams]


def dataset_names(dataset: str | Path) -> dict[str, Any]:
    """Joint names, state names and fps from a LeRobot dataset's meta/info.json."""
    info = _json(Path(dataset) / "meta" / "info.json")
    feats = info.get("features", {}) if isinstance(info, dict) else {}

    def names(key: str) -> list[str] | None:
        n = feats.get(key, {}).get("names")
        if isinstance(n, dict) and len(n) == 1:  # v2.x: {"motors": [...]}
            n = next(iter(n.values()))
        return [str(v) for v in n] if isinstance(n, list) else None

    return {"joint_names": names(ACTION), "state_names": names(STATE), "rate": info.get("fps")}


def import_policy(
    src: str | Path,
    out: str | Path,
    *,
    joint_names: list[str],
    state_names: list[str] | None,
    control_rate_hz: float,
    camera_names: list[str] | None = None,
) -> dict[str, Any]:
    """Writes the run folder `out` (run.json + checkpoints/last/model); returns run.json."""
    out = Path(out)
    if (out / RUN_FILE).exists():
        raise UserValueError(f"{out}: already a run folder; choose another --out")
    ck = read_checkpoint(src)
    policy, cams = to_policy(ck, str(Path(src) / "model.safetensors"))
    cfg = policy.cfg
    state_names = list(joint_names) if state_names is None else list(state_names)
    if len(joint_names) != cfg.action_dim or len(state_names) != cfg.state_dim:
        raise UserValueError(
            f"the policy has {cfg.action_dim} actions and {cfg.state_dim} state values; "
            f"got {len(joint_names)} joint names and {len(state_names)} state names"
        )
    cams = list(camera_names) if camera_names else cams
    if len(cams) != cfg.n_cameras:
        raise UserValueError(f"the policy has {cfg.n_cameras} cameras, got names {cams}")
    if not control_rate_hz > 0:
        raise UserValueError(f"the control rate must be > 0 Hz, got {control_rate_hz}")
    save_policy(policy, out / LAST / "model")
    run = {
        "format": RUN_FORMAT,
        "policy_type": policy.policy_type,
        "policy_config": config_to_json(cfg),
        "imported_from": {
            "source": str(Path(src).resolve()), "lerobot_type": ck.config["type"],
            "layout": ck.layout, "model_sha256": ck.sha256, "notes": ck.notes,
        },
        "dataset": {
            "cache": None, "data_index_hash": f"lerobot-checkpoint:sha256:{ck.sha256}",
            "state_names": state_names, "action_names": list(joint_names),
            "cameras": [{"name": c} for c in cams], "control_rate_hz": float(control_rate_hz),
        },
    }  # fmt: skip
    (out / RUN_FILE).write_text(json.dumps(run, indent=1) + "\n")
    return run
