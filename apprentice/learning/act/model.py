"""ACT policy: CVAE over action chunks, ResNet-18 image tokens, DETR-style transformer.

Zhao et al. 2023, "Learning Fine-Grained Bimanual Manipulation with Low-Cost Hardware".
Deviations from the original code, each on purpose:
- the decoder's LAST layer output (after the final LayerNorm) feeds the action head, so all
  `n_decoder_layers` are used; the original repo effectively reads the first layer's output
  and leaves the other six untrained;
- a learned per-camera embedding is added to the image tokens' positional embedding (the
  original gives every camera the same 2D sine embedding, so cameras differ only by content);
- the L1 loss is a true mean over non-padded steps (the original divides by all steps).

Units: `forward`/`encode_latent` work in normalized units (see `normalize.py`);
`compute_loss`/`predict_action` take raw observations and actions.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from apprentice.learning.act.config import ActConfig
from apprentice.learning.backbone import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ResNet18,
    image_stats_tensors,
)
from apprentice.learning.normalizer_module import Normalizer


def sine_embedding_1d(n_positions: int, dim: int) -> torch.Tensor:
    """Transformer sinusoid table (Vaswani et al.), (n_positions, dim)."""
    pos = torch.arange(n_positions, dtype=torch.float64)[:, None]  # (P, 1)
    i = torch.arange(dim, dtype=torch.float64)[None, :]  # (1, D)
    angle = pos / torch.pow(10000.0, 2 * torch.div(i, 2, rounding_mode="floor") / dim)  # (P, D)
    table = torch.where(i.long() % 2 == 0, torch.sin(angle), torch.cos(angle))  # (P, D)
    return table.float()


def sine_embedding_2d(dim: int, height: int, width: int) -> torch.Tensor:
    """DETR's normalized 2D sine embedding: dim/2 channels for y then dim/2 for x, (H·W, dim)."""
    n_feats, eps, scale = dim // 2, 1e-6, 2 * math.pi
    y = torch.arange(1, height + 1, dtype=torch.float64)[:, None].expand(height, width)  # (H, W)
    x = torch.arange(1, width + 1, dtype=torch.float64)[None, :].expand(height, width)  # (H, W)
    y = y / (height + eps) * scale
    x = x / (width + eps) * scale
    k = torch.arange(n_feats, dtype=torch.float64)
    dim_t = 10000.0 ** (2 * torch.div(k, 2, rounding_mode="floor") / n_feats)  # (F,)
    pos_x = x[..., None] / dim_t  # (H, W, F)
    pos_y = y[..., None] / dim_t  # (H, W, F)
    pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=-1).flatten(2)
    pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=-1).flatten(2)
    return torch.cat((pos_y, pos_x), dim=-1).reshape(height * width, dim).float()  # (H·W, D)


class Dropout(nn.Module):
    """nn.Dropout with a cheaper mask on CPU. torch's CPU bernoulli_ costs ~6 ns per element
    (a fifth of an ACT CPU-preset training step); here each element's keep/drop comes from one
    byte of a 64-bit random word (2.5 vs 0.5 ms for 400k elements), so p is rounded to 1/256.
    Elsewhere (CUDA) it is F.dropout. Identity in eval mode, like nn.Dropout."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self.cut = round(256 * p)  # a byte below this drops its element
        self.scale = 1.0 / (1.0 - self.cut / 256) if self.cut < 256 else 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, True)
        n = x.numel()
        words = torch.randint(-(2**63), 2**63 - 1, ((n + 7) // 8,), dtype=torch.int64)
        keep = words.view(torch.uint8)[:n].view(x.shape) >= self.cut
        return x * keep * self.scale


class Attention(nn.Module):
    """Multi-head attention written out (batch first) so it exports to plain ONNX ops."""

    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.dropout = Dropout(dropout)

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_pad: torch.Tensor | None = None
    ) -> torch.Tensor:
        b, lq, d = q.shape
        h = self.n_heads
        q = self.q_proj(q).reshape(b, lq, h, d // h).transpose(1, 2)  # (B, h, Lq, d/h)
        k = self.k_proj(k).reshape(b, -1, h, d // h).transpose(1, 2)  # (B, h, Lk, d/h)
        v = self.v_proj(v).reshape(b, -1, h, d // h).transpose(1, 2)  # (B, h, Lk, d/h)
        att = (q @ k.transpose(-2, -1)) * (d // h) ** -0.5  # (B, h, Lq, Lk)
        if key_pad is not None:
            att = att.masked_fill(key_pad[:, None, None, :], float("-inf"))  # pad: (B, Lk)
        att = self.dropout(att.softmax(dim=-1))  # (B, h, Lq, Lk)
        y = (att @ v).transpose(1, 2).reshape(b, lq, d)  # (B, Lq, D)
        return self.out_proj(y)


class FeedForward(nn.Sequential):
    def __init__(self, d_model: int, dim_ff: int, dropout: float):
        super().__init__(
            nn.Linear(d_model, dim_ff), nn.ReLU(), Dropout(dropout), nn.Linear(dim_ff, d_model)
        )


class EncoderLayer(nn.Module):
    """Post-norm DETR encoder layer: the positional embedding is added to queries and keys."""

    def __init__(self, d_model: int, n_heads: int, dim_ff: int, dropout: float):
        super().__init__()
        self.self_attn = Attention(d_model, n_heads, dropout)
        self.ff = FeedForward(d_model, dim_ff, dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.drop1 = Dropout(dropout)
        self.drop2 = Dropout(dropout)

    def forward(
        self, x: torch.Tensor, pos: torch.Tensor, key_pad: torch.Tensor | None = None
    ) -> torch.Tensor:
        qk = x + pos  # (B, L, D)
        x = self.norm1(x + self.drop1(self.self_attn(qk, qk, x, key_pad)))  # (B, L, D)
        return self.norm2(x + self.drop2(self.ff(x)))  # (B, L, D)


class DecoderLayer(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dim_ff: int, dropout: float):
        super().__init__()
        self.self_attn = Attention(d_model, n_heads, dropout)
        self.cross_attn = Attention(d_model, n_heads, dropout)
        self.ff = FeedForward(d_model, dim_ff, dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.drop1 = Dropout(dropout)
        self.drop2 = Dropout(dropout)
        self.drop3 = Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        query_pos: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
    ) -> torch.Tensor:
        qk = x + query_pos  # (B, K, D)
        x = self.norm1(x + self.drop1(self.self_attn(qk, qk, x)))  # (B, K, D)
        attended = self.cross_attn(x + query_pos, memory + memory_pos, memory)  # (B, K, D)
        x = self.norm2(x + self.drop2(attended))  # (B, K, D)
        return self.norm3(x + self.drop3(self.ff(x)))  # (B, K, D)


class Encoder(nn.Module):
    def __init__(self, cfg: ActConfig, n_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(
            EncoderLayer(cfg.d_model, cfg.n_heads, cfg.dim_feedforward, cfg.dropout)
            for _ in range(n_layers)
        )

    def forward(
        self, x: torch.Tensor, pos: torch.Tensor, key_pad: torch.Tensor | None = None
    ) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, pos, key_pad)  # (B, L, D)
        return x


class Decoder(nn.Module):
    def __init__(self, cfg: ActConfig):
        super().__init__()
        self.layers = nn.ModuleList(
            DecoderLayer(cfg.d_model, cfg.n_heads, cfg.dim_feedforward, cfg.dropout)
            for _ in range(cfg.n_decoder_layers)
        )
        self.norm = nn.LayerNorm(cfg.d_model)

    def forward(
        self,
        x: torch.Tensor,
        query_pos: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
    ) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, query_pos, memory, memory_pos)  # (B, K, D)
        return self.norm(x)  # every layer contributes; see the module docstring


class ActPolicy(nn.Module):
    policy_type: ClassVar[str] = "act"

    def __init__(self, cfg: ActConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.normalizer = Normalizer(
            {"state": (cfg.state_dim, cfg.state_norm), "action": (cfg.action_dim, cfg.action_norm)}
        )
        # Image path: shared ResNet over cameras, 1x1 projection to d_model tokens.
        self.backbone = ResNet18(cfg.backbone_width, cfg.backbone_norm, cfg.backbone_stride)
        imagenet = (IMAGENET_MEAN, IMAGENET_STD)
        mean, std = image_stats_tensors(cfg.image_stats, cfg.n_cameras, imagenet)
        self.register_buffer("image_mean", mean, False)  # (N, 3, 1, 1)
        self.register_buffer("image_std", std, False)  # (N, 3, 1, 1)
        self.input_proj = nn.Conv2d(self.backbone.out_channels, d, 1)
        fh, fw = ResNet18.feature_hw(*cfg.image_hw, cfg.backbone_stride)
        self.register_buffer("image_pos", sine_embedding_2d(d, fh, fw), False)  # (fh·fw, D)
        self.camera_embed = nn.Parameter(torch.zeros(cfg.n_cameras, d))
        # CVAE encoder over [CLS, state, a_1..a_k] (training only).
        self.cls_embed = nn.Parameter(torch.randn(1, 1, d))
        self.vae_state_proj = nn.Linear(cfg.state_dim, d)
        self.vae_action_proj = nn.Linear(cfg.action_dim, d)
        self.vae_encoder = Encoder(cfg, cfg.n_vae_encoder_layers)
        self.register_buffer("vae_pos", sine_embedding_1d(cfg.chunk_size + 2, d), False)
        self.latent_proj = nn.Linear(d, 2 * cfg.latent_dim)  # → (mu, log var)
        # Policy: encoder over [z, state, image tokens], decoder with one query per step.
        self.latent_out_proj = nn.Linear(cfg.latent_dim, d)
        self.state_proj = nn.Linear(cfg.state_dim, d)
        self.token_pos = nn.Parameter(torch.randn(2, d))  # learned pos of the z and state tokens
        self.encoder = Encoder(cfg, cfg.n_encoder_layers)
        self.decoder = Decoder(cfg)
        self.query_pos = nn.Parameter(torch.randn(cfg.chunk_size, d))
        self.action_head = nn.Linear(d, cfg.action_dim)
        for module in (self.vae_encoder, self.encoder, self.decoder):
            for p in module.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)  # DETR's transformer init

    def encode_latent(
        self, state: torch.Tensor, actions: torch.Tensor, action_is_pad: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """CVAE posterior q(z | state, chunk): normalized (B, S), (B, K, A) → mu, logvar (B, Z)."""
        b = state.shape[0]
        tokens = torch.cat(
            (
                self.cls_embed.expand(b, 1, -1),  # (B, 1, D)
                self.vae_state_proj(state)[:, None],  # (B, 1, D)
                self.vae_action_proj(actions),  # (B, K, D)
            ),
            dim=1,
        )  # (B, K+2, D)
        key_pad = None
        if action_is_pad is not None:
            key_pad = F.pad(action_is_pad, (2, 0), value=False)  # (B, K+2): CLS, state never pad
        out = self.vae_encoder(tokens, self.vae_pos[None], key_pad)  # (B, K+2, D)
        mu, logvar = self.latent_proj(out[:, 0]).chunk(2, dim=-1)  # (B, Z) each
        return mu, logvar

    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """(B, N, 3, H, W) in [0, 1] → (B, N·fh·fw, D)."""
        b, n = images.shape[:2]
        x = ((images - self.image_mean) / self.image_std).flatten(0, 1)  # (B·N, 3, H, W)
        feats = self.input_proj(self.backbone(x))  # (B·N, D, fh, fw)
        tokens = feats.flatten(2).transpose(1, 2)  # (B·N, fh·fw, D)
        return tokens.reshape(b, n * tokens.shape[1], -1)  # (B, N·fh·fw, D)

    def decode(self, state: torch.Tensor, images: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """p(chunk | obs, z): normalized state (B, S), images (B, N, 3, H, W), z (B, Z)
        → normalized actions (B, K, A)."""
        b = state.shape[0]
        src = torch.cat(
            (
                self.latent_out_proj(z)[:, None],  # (B, 1, D)
                self.state_proj(state)[:, None],  # (B, 1, D)
                self.image_tokens(images),  # (B, L, D)
            ),
            dim=1,
        )  # (B, L+2, D)
        image_pos = (self.image_pos[None] + self.camera_embed[:, None]).flatten(0, 1)  # (L, D)
        pos = torch.cat((self.token_pos, image_pos), dim=0)[None]  # (1, L+2, D)
        memory = self.encoder(src, pos)  # (B, L+2, D)
        queries = state.new_zeros(b, self.cfg.chunk_size, self.cfg.d_model)
        out = self.decoder(queries, self.query_pos[None], memory, pos)  # (B, K, D)
        return self.action_head(out)  # (B, K, A)

    def forward(self, state: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """The deployed graph: normalized state (B, S), images (B, N, 3, H, W) in [0, 1]
        → normalized actions (B, K, A), with the prior mean z = 0."""
        z = state.new_zeros(state.shape[0], self.cfg.latent_dim)  # (B, Z)
        return self.decode(state, images, z)

    def compute_loss(
        self,
        obs: dict[str, torch.Tensor],
        actions: torch.Tensor,
        action_is_pad: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Raw obs {"state": (B, S), "images": (B, N, 3, H, W)}, raw actions (B, K, A), pad mask
        (B, K) true past the episode end → L1 + kl_weight·KL. In eval mode z = mu (no sampling),
        which makes the loss deterministic for validation."""
        state = self.normalizer.normalize("state", obs["state"])  # (B, S)
        target = self.normalizer.normalize("action", actions)  # (B, K, A)
        mu, logvar = self.encode_latent(state, target, action_is_pad)  # (B, Z) each
        z = mu + (0.5 * logvar).exp() * torch.randn_like(mu) if self.training else mu  # (B, Z)
        pred = self.decode(state, obs["images"], z)  # (B, K, A)
        err = (pred - target).abs()  # (B, K, A)
        if action_is_pad is None:
            l1 = err.mean()
        else:
            valid = (~action_is_pad)[..., None].to(err.dtype)  # (B, K, 1)
            l1 = (err * valid).sum() / (valid.sum() * err.shape[-1]).clamp_min(1.0)
        kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp())).sum(dim=-1).mean()  # sum Z, mean B
        loss = l1 + self.cfg.kl_weight * kl
        return loss, {
            "l1": float(l1.detach()),
            "kl": float(kl.detach()),
            "loss": float(loss.detach()),
        }

    @torch.no_grad()
    def predict_action(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Raw obs → raw action chunk (B, K, A) in the joints' units."""
        state = self.normalizer.normalize("state", obs["state"])  # (B, S)
        return self.normalizer.unnormalize("action", self(state, obs["images"]))  # (B, K, A)
