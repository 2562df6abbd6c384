"""Imitation-learning policies (ACT, Diffusion Policy): training in PyTorch, deployment in ONNX.

Importing this package does not import torch: the deployment side (`normalize`, `runtime`,
`diffusion.scheduler`) is numpy + onnxruntime only, so a robot computer needs no torch.
"""
