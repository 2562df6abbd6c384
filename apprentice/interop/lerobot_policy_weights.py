"""LeRobot ACT / Diffusion state dicts → apprentice's `ActPolicy` / `DiffusionPolicy` keys.

Every apprentice tensor comes from a named LeRobot tensor (renamed, sliced or permuted), or is
one of the few listed here that LeRobot does not have; every LeRobot tensor is consumed, or is a
buffer that apprentice derives itself (checked equal), or is normalization stats (read by
`lerobot_policy.py`). Anything else is an error that names the key: a checkpoint this mapping
does not understand must not be half-loaded.

ACT (`model.` prefix): nn.MultiheadAttention's packed `in_proj_weight` (3D, D) splits into
apprentice's q/k/v projections; `linear1/linear2` are `ff.0/ff.3`; `multihead_attn` is
`cross_attn`; the backbone keeps torchvision's names. LeRobot has no per-camera embedding:
apprentice's `camera_embed` is set to zeros, which makes the two graphs the same.

Diffusion (`diffusion.` prefix): the torchvision trunk is `backbone.0/1/4..7` (conv1, bn1,
layer1..4); one shared encoder (`use_separate_rgb_encoder_per_camera=false`) is copied into
each of apprentice's per-camera encoders. LeRobot orders each step's conditioning
[state, camera 0 .. N-1], apprentice [camera 0 .. N-1, state]: the conditioning only enters
the U-Net through the FiLM linears, whose input columns are permuted to match (exact).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import torch

from apprentice.errors import UserValueError

Tensors = dict[str, torch.Tensor]
# (LeRobot key, transform of the LeRobot tensor) per apprentice key; None: set here (zeros)
Source = tuple[str, Callable[[torch.Tensor], torch.Tensor]] | None

_SAME: Callable[[torch.Tensor], torch.Tensor] = lambda t: t  # noqa: E731
STATS_PREFIXES = ("normalize_inputs.", "normalize_targets.", "unnormalize_outputs.")


def _rows(part: int, d: int) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda t: t[part * d : (part + 1) * d]


def _act_layer(sub: str, d: int) -> tuple[str, Callable[[torch.Tensor], torch.Tensor]]:
    """An apprentice transformer-layer key suffix → LeRobot's suffix and transform."""
    m = re.fullmatch(r"(self_attn|cross_attn)\.([qkv])_proj\.(weight|bias)", sub)
    if m:
        attn = "multihead_attn" if m[1] == "cross_attn" else "self_attn"
        return f"{attn}.in_proj_{m[3]}", _rows("qkv".index(m[2]), d)
    sub = sub.replace("cross_attn.", "multihead_attn.")
    sub = re.sub(r"^ff\.0\.", "linear1.", sub)
    sub = re.sub(r"^ff\.3\.", "linear2.", sub)
    return sub, _SAME


_ACT_RENAMES = {
    "vae_state_proj.": "model.vae_encoder_robot_state_input_proj.",
    "vae_action_proj.": "model.vae_encoder_action_input_proj.",
    "latent_proj.": "model.vae_encoder_latent_output_proj.",
    "latent_out_proj.": "model.encoder_latent_input_proj.",
    "state_proj.": "model.encoder_robot_state_input_proj.",
    "input_proj.": "model.encoder_img_feat_input_proj.",
    "action_head.": "model.action_head.",
    "backbone.": "model.backbone.",
    "decoder.norm.": "model.decoder.norm.",
}


# apprentice's CVAE encoder, absent from a LeRobot ACT trained with use_vae=false
VAE_KEYS = ("cls_embed", "vae_state_proj.", "vae_action_proj.", "vae_encoder.", "latent_proj.")


def act_source(key: str, d_model: int, use_vae: bool = True) -> Source:
    """Where apprentice ACT's tensor `key` comes from in a LeRobot ACT state dict."""
    if not use_vae and key.startswith(VAE_KEYS):
        return None  # training-only: the deployed graph (z = 0) never reads them
    whole = {
        "cls_embed": ("model.vae_encoder_cls_embed.weight", lambda t: t.reshape(1, 1, -1)),
        "token_pos": ("model.encoder_1d_feature_pos_embed.weight", _SAME),
        "query_pos": ("model.decoder_pos_embed.weight", _SAME),
    }
    if key in whole:
        return whole[key]
    if key == "camera_embed":
        return None  # LeRobot gives every camera the same positional embedding
    m = re.fullmatch(r"(vae_encoder|encoder|decoder)\.layers\.(\d+)\.(.+)", key)
    if m:
        sub, fn = _act_layer(m[3], d_model)
        return f"model.{m[1]}.layers.{m[2]}.{sub}", fn
    for prefix, theirs in _ACT_RENAMES.items():
        if key.startswith(prefix):
            return theirs + key[len(prefix) :], _SAME
    raise KeyError(key)


# LeRobot buffers that apprentice computes from the config: key pattern → apprentice key
ACT_DERIVED = {r"model\.vae_encoder_pos_enc": "vae_pos"}
DIFFUSION_DERIVED = {
    r"diffusion\.rgb_encoder\.(\d+\.)?pool\.pos_grid": "image_encoders.0.pool.grid",
}
# BatchNorm's step counter: meaningless for frozen statistics
DROPPED = r".*\.num_batches_tracked"

_TRUNK = {"conv1": "0", "bn1": "1", "layer1": "4", "layer2": "5", "layer3": "6", "layer4": "7"}


def _unet_sub(sub: str) -> str:
    """An apprentice residual-block suffix → LeRobot's."""
    sub = re.sub(r"^block1\.", "conv1.block.", sub)
    sub = re.sub(r"^block2\.", "conv2.block.", sub)
    sub = re.sub(r"^film\.", "cond_encoder.", sub)
    return re.sub(r"^residual\.", "residual_conv.", sub)


def diffusion_source(
    key: str, shared_encoder: bool, cond_perm: torch.Tensor, step_dim: int
) -> Source:
    """Where apprentice Diffusion's tensor `key` comes from in a LeRobot Diffusion state dict.
    `cond_perm[j]`: the LeRobot global-conditioning column of apprentice's column j."""
    m = re.fullmatch(r"image_encoders\.(\d+)\.(.+)", key)
    if m:
        enc = "diffusion.rgb_encoder." + ("" if shared_encoder else f"{m[1]}.")
        sub = m[2]
        t = re.fullmatch(r"backbone\.(conv1|bn1|layer\d)\.(.+)", sub)
        if t:
            return f"{enc}backbone.{_TRUNK[t[1]]}.{t[2]}", _SAME
        if sub.startswith("pool.proj."):
            return f"{enc}pool.nets.{sub[len('pool.proj.') :]}", _SAME
        if sub.startswith("out."):
            return enc + sub, _SAME
        raise KeyError(key)
    u = "diffusion.unet."
    m = re.fullmatch(r"unet\.step_mlp\.([02])\.(.+)", key)
    if m:
        return f"{u}diffusion_step_encoder.{int(m[1]) + 1}.{m[2]}", _SAME
    m = re.fullmatch(r"unet\.(down|up)\.(\d+)\.2\.(.+)", key)
    if m:
        return f"{u}{m[1]}_modules.{m[2]}.2.{m[3]}", _SAME
    m = re.fullmatch(r"unet\.(down|up|mid)\.(\d+\.\d+|\d+)\.(.+)", key)
    if m:
        sub = _unet_sub(m[3])
        fn = _SAME
        if sub == "cond_encoder.1.weight":
            columns = torch.cat((torch.arange(step_dim), step_dim + cond_perm))
            fn = lambda w: w[:, columns]  # noqa: E731
        return f"{u}{m[1]}_modules.{m[2]}.{sub}", fn
    m = re.fullmatch(r"unet\.final\.0\.([01])\.(.+)", key)
    if m:
        return f"{u}final_conv.0.block.{m[1]}.{m[2]}", _SAME
    m = re.fullmatch(r"unet\.final\.1\.(.+)", key)
    if m:
        return f"{u}final_conv.1.{m[1]}", _SAME
    raise KeyError(key)


def cond_permutation(
    n_obs_steps: int, n_cameras: int, feat_dim: int, state_dim: int
) -> torch.Tensor:
    """apprentice's per-step [cam 0 .. N-1 (F each), state (S)] → LeRobot's [state, cams]:
    the LeRobot column of each apprentice global-conditioning column, (To·(N·F + S),)."""
    per_step = n_cameras * feat_dim + state_dim
    within = torch.cat(
        (state_dim + torch.arange(n_cameras * feat_dim), torch.arange(state_dim))
    )  # (P,)
    return torch.cat([t * per_step + within for t in range(n_obs_steps)])


def map_state_dict(
    theirs: Mapping[str, torch.Tensor],
    own: Mapping[str, torch.Tensor],
    source: Callable[[str], Source],
    derived: Mapping[str, str],
    own_buffers: Mapping[str, torch.Tensor],
    where: str,
) -> Tensors:
    """apprentice's state dict (keys of `own`, normalizer excluded) filled from `theirs`.
    Raises UserValueError naming the first keys that are missing, unmapped or misshapen;
    `derived` LeRobot buffers must equal apprentice's own (`own_buffers`)."""
    out: Tensors = {}
    used: set[str] = set()
    missing: list[str] = []
    for key, want in own.items():
        if key.startswith("normalizer."):
            continue
        try:
            src = source(key)
        except KeyError:
            raise UserValueError(
                f"{where}: no LeRobot source for apprentice weight {key}"
            ) from None
        if src is None:
            out[key] = torch.zeros_like(want)
            continue
        name, fn = src
        if name not in theirs:
            missing.append(name)
            continue
        used.add(name)
        got = fn(theirs[name].to(torch.float32))
        if tuple(got.shape) != tuple(want.shape):
            raise UserValueError(
                f"{where}: {name} has shape {tuple(theirs[name].shape)}, which does not fit "
                f"apprentice's {key} {tuple(want.shape)}"
            )
        out[key] = got.contiguous()
    if missing:
        raise UserValueError(f"{where}: missing weight(s) {_names(sorted(set(missing)))}")
    unmapped = []
    for name, tensor in theirs.items():
        if name in used or re.fullmatch(DROPPED, name) or name.startswith(STATS_PREFIXES):
            continue
        mine = next((k for pat, k in derived.items() if re.fullmatch(pat, name)), None)
        if mine is None:
            unmapped.append(name)
            continue
        ref = own_buffers[mine]
        if tensor.numel() != ref.numel() or not torch.allclose(
            tensor.reshape(ref.shape).float(), ref.float(), atol=1e-5
        ):
            raise UserValueError(f"{where}: buffer {name} differs from apprentice's {mine}")
    if unmapped:
        raise UserValueError(f"{where}: unmapped weight(s) {_names(sorted(unmapped))}")
    return out


def _names(keys: list[str], most: int = 4) -> str:
    more = f" and {len(keys) - most} more" if len(keys) > most else ""
    return ", ".join(keys[:most]) + more
