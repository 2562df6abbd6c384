"""torch samples over a cache: ACT chunks and Diffusion windows, padded at episode ends,
never crossing episodes, identical through DataLoader worker processes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from apprentice.dataset import EpisodeBag, build_cache, infer_config
from apprentice.dataset.samples import ActSamples, DiffusionSamples, policy_batch
from apprentice.dataset.synthetic import SyntheticEpisode, write_episode

torch.set_num_threads(1)  # other processes share this machine's two cores


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("samples")
    for i in range(3):
        write_episode(root / "bags" / f"ep{i}", SyntheticEpisode(duration_s=1.0), seed=i)
    cfg = infer_config(EpisodeBag(root / "bags" / "ep0").topics, image_hw=(32, 48))
    return build_cache(root / "bags", cfg, root / "cache", progress=False)


def test_act_chunks_pad_at_episode_end(cache) -> None:
    k = 10
    ds = ActSamples(cache, "train", chunk_size=k)
    train = cache.split_episodes("train")
    assert len(ds) == sum(e.length for e in train)
    ep = train[0]
    for t in (ep.start, ep.start + 5, ep.stop - 4, ep.stop - 1):
        i = int(np.flatnonzero(ds.anchors == t)[0])
        s = ds[i]
        n_real = min(k, ep.stop - t)
        np.testing.assert_array_equal(s["state"].numpy(), cache.state[t])
        np.testing.assert_array_equal(s["images"].numpy(), cache.images(np.asarray(t)))
        np.testing.assert_array_equal(s["action"][:n_real].numpy(), cache.action[t : t + n_real])
        # past the end: the last action repeated (hold still), flagged as padding
        np.testing.assert_array_equal(
            s["action"][n_real:].numpy(), np.repeat(cache.action[ep.stop - 1][None], k - n_real, 0)
        )
        assert s["action_is_pad"].tolist() == [False] * n_real + [True] * (k - n_real)
    obs, action, pad = policy_batch(torch.utils.data.default_collate([ds[0], ds[1]]), "cpu")
    assert obs["images"].dtype == torch.float32 and 0.0 <= float(obs["images"].min())
    assert float(obs["images"].max()) <= 1.0 and action.shape == (2, k, 4) and pad.shape == (2, k)


def test_diffusion_windows(cache) -> None:
    ds = DiffusionSamples(cache, "train", n_obs_steps=2, horizon=16)
    ep = cache.split_episodes("train")[1]
    first = int(np.flatnonzero(ds.anchors == ep.start)[0])
    s = ds[first]
    assert s["state"].shape == (2, 4) and s["images"].shape == (2, 1, 3, 32, 48)
    assert s["action"].shape == (16, 4)
    # the observation before the episode start is the first frame again, flagged
    assert s["obs_is_pad"].tolist() == [True, False]
    np.testing.assert_array_equal(s["state"].numpy(), cache.state[[ep.start, ep.start]])
    # the horizon starts at the oldest observation (t - 1, clamped to the start)
    np.testing.assert_array_equal(s["action"][1:].numpy(), cache.action[ep.start : ep.start + 15])
    assert s["action_is_pad"].tolist() == [True] + [False] * 15
    # at the last frame: history inside the episode, future padded with the last action
    last = int(np.flatnonzero(ds.anchors == ep.stop - 1)[0])
    s = ds[last]
    np.testing.assert_array_equal(s["state"].numpy(), cache.state[ep.stop - 2 : ep.stop])
    assert s["action_is_pad"].tolist() == [False, False] + [True] * 14
    np.testing.assert_array_equal(
        s["action"][2:].numpy(), np.repeat(cache.action[ep.stop - 1][None], 14, 0)
    )


def test_worker_processes_read_the_same(cache) -> None:
    """Memory maps are reopened in each worker (they are not pickled with the dataset)."""
    ds = ActSamples(cache, "val", chunk_size=5)
    idx = [0, 7, len(ds) - 1]
    direct = torch.utils.data.default_collate([ds[i] for i in idx])
    loader = DataLoader(torch.utils.data.Subset(ds, idx), batch_size=3, num_workers=1,
                        multiprocessing_context="spawn")  # fmt: skip
    (batch,) = list(loader)
    for key in direct:
        assert torch.equal(batch[key], direct[key])
