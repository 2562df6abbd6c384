"""Training through DataLoader workers: the same batches, so the same losses, as in process
(the batch of a step depends on (seed, step) only), and the time spent waiting for data is
logged with each metrics line and said at the end."""

from __future__ import annotations

import numpy as np
from tiny_training import TINY

from apprentice.learning.train import train
from apprentice.learning.train_config import TrainConfig
from apprentice.learning.train_report import read_metrics


def test_workers_train_the_same_run(cache, tmp_path, capsys) -> None:
    def run(out: str, workers: int) -> list[dict]:
        cfg = TrainConfig(
            policy="diffusion", data=str(cache.root), out=str(tmp_path / out), preset="cpu",
            steps=4, batch_size=3, log_every=1, val_every=2, val_batches=1, num_workers=workers,
            policy_overrides=TINY["diffusion"],
        )  # fmt: skip
        train(cfg, progress=False)
        return read_metrics(tmp_path / out)

    in_process, workers = run("w0", 0), run("w2", 2)
    np.testing.assert_allclose([r["loss"] for r in workers], [r["loss"] for r in in_process],
                               rtol=1e-6)  # fmt: skip
    np.testing.assert_allclose(workers[-1]["val_loss"], in_process[-1]["val_loss"], rtol=1e-6)
    assert all(0.0 <= r["data_wait"] <= 1.0 for r in workers + in_process)
    out = capsys.readouterr().out  # tqdm.write: stdout
    assert "(0 loader workers)" in out and "(2 loader workers)" in out, out
    assert "of the time waiting for data" in out
