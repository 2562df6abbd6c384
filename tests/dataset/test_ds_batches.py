"""Batched reads (`samples[[i, j, ...]]`): the same tensors as stacking the samples one by one,
at episode edges too, for both policies' samples, in process and through DataLoader workers."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
import torch

from apprentice.dataset import EpisodeBag, build_cache, infer_config
from apprentice.dataset.samples import ActSamples, DiffusionSamples, batch_loader
from apprentice.dataset.synthetic import SyntheticEpisode, write_episode
from apprentice.learning.train_data import StepBatches, TimedBatches

torch.set_num_threads(1)  # other processes share this machine's two cores


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("batches")
    for i in range(3):
        write_episode(root / "bags" / f"ep{i}", SyntheticEpisode(duration_s=1.0), seed=i)
    cfg = infer_config(EpisodeBag(root / "bags" / "ep0").topics, image_hw=(24, 32))
    return build_cache(root / "bags", cfg, root / "cache", progress=False)


def _reference(ds, i: int) -> dict[str, np.ndarray]:
    """One sample written out from the cache arrays (the per-sample rule, independently)."""
    c, t, lo, hi = ds.cache, int(ds.anchors[i]), int(ds.lo[i]), int(ds.hi[i])

    def frames(first: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        raw = [t + first + k for k in range(n)]
        clamped = [min(max(f, lo), hi - 1) for f in raw]
        return np.array(clamped), np.array([f != r for f, r in zip(clamped, raw, strict=True)])

    if isinstance(ds, ActSamples):
        act, pad = frames(0, ds.chunk_size)
        return {"state": c.state[t], "images": c.images(np.asarray(t)), "action": c.action[act],
                "action_is_pad": pad}  # fmt: skip
    obs, obs_pad = frames(1 - ds.n_obs_steps, ds.n_obs_steps)
    act, act_pad = frames(1 - ds.n_obs_steps, ds.horizon)
    return {"state": c.state[obs], "images": np.stack([c.images(np.asarray(f)) for f in obs]),
            "action": c.action[act], "action_is_pad": act_pad, "obs_is_pad": obs_pad}  # fmt: skip


def _samples(cache, kind: str):
    if kind == "act":
        return ActSamples(cache, "all", chunk_size=20)
    return DiffusionSamples(cache, "all", n_obs_steps=3, horizon=12)


def _edges_and_random(ds, n: int, seed: int) -> list[int]:
    """Anchors at and next to every episode's first and last frame, and random ones, shuffled
    (a batch is not sorted), with a repeat."""
    starts = np.flatnonzero(ds.anchors == ds.lo)
    ends = np.flatnonzero(ds.anchors == ds.hi - 1)
    rng = np.random.default_rng(seed)
    picks = np.concatenate([starts, starts + 1, ends, ends - 1, rng.integers(0, len(ds), n)])
    picks = rng.permutation(picks).tolist()
    return picks + picks[:1]


@pytest.mark.parametrize("kind", ["act", "diffusion"])
def test_a_batch_is_the_stacked_samples(cache, kind: str) -> None:
    ds = _samples(cache, kind)
    picks = _edges_and_random(ds, 20, seed=1)
    with warnings.catch_warnings():  # a tensor over a read-only memory map would warn
        warnings.simplefilter("error")
        batch = ds[picks]
        singles = [ds[i] for i in picks]
    assert set(batch) == set(singles[0])
    for key, value in batch.items():
        assert value.shape == (len(picks), *singles[0][key].shape), key
        assert value.dtype == singles[0][key].dtype, key
        assert torch.equal(value, torch.stack([s[key] for s in singles])), key
        want = np.stack([_reference(ds, i)[key] for i in picks])
        np.testing.assert_array_equal(value.numpy(), want, err_msg=key)
        assert value.dtype == torch.from_numpy(want).dtype, key
    assert bool(batch["action_is_pad"].any()) and not bool(batch["action_is_pad"].all())
    if kind == "diffusion":
        assert bool(batch["obs_is_pad"].any())  # anchors at episode starts pad the history


@pytest.mark.parametrize("kind", ["act", "diffusion"])
def test_worker_batches_equal_in_process_batches(cache, kind: str) -> None:
    """Each batch crosses the worker queue whole, in one buffer: what arrives is samples[batch]."""
    ds = _samples(cache, kind)
    steps = StepBatches(len(ds), 8, seed=3, start=0, stop=6)
    loader = batch_loader(ds, steps, num_workers=2, generator=torch.Generator().manual_seed(0))
    got = list(loader)
    assert len(got) == 6
    for batch, picks in zip(got, steps, strict=True):
        direct = ds[picks]
        assert set(batch) == set(direct)
        for key in direct:
            assert torch.equal(batch[key], direct[key]), key
        # one shared-memory buffer per batch, not one per key
        assert len({v.untyped_storage().data_ptr() for v in batch.values()}) == 1


def test_timed_batches_measure_the_wait() -> None:
    def slow():
        for k in range(5):
            time.sleep(0.02)
            yield k

    waiting = TimedBatches(slow())
    assert list(waiting) == list(range(5))
    assert waiting.waited_s >= 0.09 and waiting.wait_fraction() > 0.8  # nothing else to do
    fed = TimedBatches(range(5))
    for _ in fed:
        time.sleep(0.02)  # the step's compute
    assert fed.wait_fraction() < 0.1
    time.sleep(0.02)
    assert fed.wait_fraction() == 0.0  # since the previous call: no waiting at all
