"""`cpu_bf16`: bf16 autocast on a CPU that computes bf16 natively. The same run in float32 and
in bf16 starts from the same loss (within bf16's precision, and not equal: autocast is on) and
follows the same curve; the weights it saves are not bf16. On a CPU without native bf16 it is
refused: torch would emulate bf16, slower than float32."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.torch import load_file
from tiny_training import TINY

from apprentice.errors import UserError
from apprentice.learning.train import train
from apprentice.learning.train_config import TrainConfig, cpu_has_bf16
from apprentice.learning.train_report import read_metrics

STEPS = 40


def _run(cache, out, bf16: bool) -> list[dict]:
    cfg = TrainConfig(
        policy="act", data=str(cache.root), out=str(out), preset="cpu", steps=STEPS,
        batch_size=4, log_every=1, val_every=STEPS, val_batches=2, cpu_bf16=bf16,
        policy_overrides=TINY["act"] | {"dropout": 0.0},
    )  # fmt: skip
    train(cfg, progress=False)
    return read_metrics(out)


def test_bf16_follows_the_float32_loss_curve(cache, tmp_path, capsys) -> None:
    if not cpu_has_bf16():
        with pytest.raises(UserError, match="this CPU has no native bf16"):
            _run(cache, tmp_path / "bf16", True)
        return
    fp32, bf16 = _run(cache, tmp_path / "fp32", False), _run(cache, tmp_path / "bf16", True)
    assert "(bf16 autocast)" in capsys.readouterr().out
    a = np.array([r["loss"] for r in fp32 if "loss" in r])  # (STEPS,)
    b = np.array([r["loss"] for r in bf16 if "loss" in r])
    assert a.shape == b.shape == (STEPS,)
    # step 1: same weights, same batch; bf16 keeps 8 bits of mantissa
    assert 0 < abs(b[0] - a[0]) < 0.02 * a[0], (a[0], b[0])
    # the curves: both fall, and a window's mean stays within 10 % of float32's
    assert a[-5:].mean() < 0.5 * a[:5].mean() and b[-5:].mean() < 0.5 * b[:5].mean(), (a, b)
    for k in range(0, STEPS, 10):
        assert abs(b[k : k + 10].mean() / a[k : k + 10].mean() - 1) < 0.10, (k, a, b)
    assert abs(bf16[-1]["val_loss"] / fp32[-1]["val_loss"] - 1) < 0.15
    weights = load_file(tmp_path / "bf16" / "checkpoints" / "last" / "model" / "model.safetensors")
    dtypes = {str(t.dtype) for t in weights.values()}
    assert "torch.float32" in dtypes and "torch.bfloat16" not in dtypes, dtypes
