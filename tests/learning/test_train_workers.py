"""Training through DataLoader workers: the same batches, so the same losses, as in process
(the batch of a step depends on (seed, step) only), and the time spent waiting for data is
logged with each metrics line and said at the end."""

from __future__ import annotations

import numpy as np
import pytest

from apprentice.dataset import EpisodeBag, build_cache, infer_config
from apprentice.dataset.synthetic import SyntheticEpisode, write_episode
from apprentice.learning.train import train
from apprentice.learning.train_config import TrainConfig
from apprentice.learning.train_report import read_metrics

TINY_DP = dict(backbone_width=8, n_keypoints=8, image_feature_dim=16, down_dims=(16, 32),
               n_groups=4, kernel_size=3, step_embed_dim=16)  # fmt: skip


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("workers")
    for i in range(3):
        write_episode(root / "bags" / f"ep{i}", SyntheticEpisode(duration_s=1.0), seed=i)
    cfg = infer_config(EpisodeBag(root / "bags" / "ep0").topics, image_hw=(32, 40))
    return build_cache(root / "bags", cfg, root / "cache", progress=False)


def test_workers_train_the_same_run(cache, tmp_path, capsys) -> None:
    def run(out: str, workers: int) -> list[dict]:
        cfg = TrainConfig(
            policy="diffusion", data=str(cache.root), out=str(tmp_path / out), preset="cpu",
            steps=4, batch_size=3, log_every=1, val_every=2, val_batches=1, num_workers=workers,
            policy_overrides=TINY_DP,
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
