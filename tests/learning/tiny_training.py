"""Tiny policy overrides that train in a second, for the training-loop tests."""

from __future__ import annotations

TINY = {
    "act": dict(d_model=32, n_heads=4, dim_feedforward=64, n_encoder_layers=1,
                n_decoder_layers=1, n_vae_encoder_layers=1, latent_dim=8, chunk_size=8,
                backbone_width=8),
    "diffusion": dict(backbone_width=8, n_keypoints=8, image_feature_dim=16,
                      down_dims=(16, 32), n_groups=4, kernel_size=3, step_embed_dim=16),
}  # fmt: skip
