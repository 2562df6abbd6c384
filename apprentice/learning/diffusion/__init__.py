"""Diffusion Policy, CNN variant (Chi et al. 2023)."""
