"""NormStats: fitting, round trips, JSON, and the torch buffers that carry them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from apprentice.learning.normalize import MIN_SCALE, NormStats
from apprentice.learning.normalizer_module import Normalizer


def test_mean_std_fit_standardizes() -> None:
    rng = np.random.default_rng(0)
    data = rng.normal([0.5, -2.0, 10.0], [0.1, 3.0, 0.5], size=(4000, 3))
    stats = NormStats.fit(data, "mean_std")
    z = stats.normalize(data)
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=0), 1.0, atol=1e-5)
    np.testing.assert_allclose(stats.unnormalize(z), data, atol=1e-5)  # float32 in between


def test_min_max_fit_maps_the_range_to_unit_interval() -> None:
    rng = np.random.default_rng(1)
    data = rng.uniform([-3.0, 0.0], [1.0, 0.02], size=(1000, 2))  # (N, 2)
    stats = NormStats.fit(data[None], "min_max")  # leading axes are all pooled
    z = stats.normalize(data)
    np.testing.assert_allclose(z.min(axis=0), -1.0, atol=1e-6)
    np.testing.assert_allclose(z.max(axis=0), 1.0, atol=1e-6)


def test_constant_dimension_gets_the_scale_floor() -> None:
    data = np.column_stack([np.linspace(0, 1, 50), np.full(50, 0.3)])  # a gripper held still
    for mode in ("mean_std", "min_max"):
        stats = NormStats.fit(data, mode)
        assert stats.scale[1] == MIN_SCALE
        assert np.all(np.isfinite(stats.normalize(data)))


def test_json_round_trip_is_exact() -> None:
    stats = NormStats.fit(np.random.default_rng(2).normal(size=(100, 5)), "mean_std")
    back = NormStats.from_json(json.loads(json.dumps(stats.to_json())))
    assert back.mode == stats.mode
    np.testing.assert_array_equal(back.offset, stats.offset)
    np.testing.assert_array_equal(back.scale, stats.scale)


def test_invalid_stats_are_rejected() -> None:
    with pytest.raises(ValueError):
        NormStats("zscore", np.zeros(2), np.ones(2))
    with pytest.raises(ValueError):
        NormStats("mean_std", np.zeros(2), np.array([1.0, 0.0]))
    with pytest.raises(ValueError):
        NormStats("mean_std", np.zeros(2), np.ones(3))
    with pytest.raises(ValueError):
        NormStats.fit(np.zeros((0, 3)), "min_max")


def test_torch_normalizer_matches_numpy_and_checks_mode_and_size() -> None:
    stats = NormStats.fit(np.random.default_rng(3).normal(2.0, 4.0, size=(300, 3)), "min_max")
    module = Normalizer({"state": (3, "min_max")})
    module.set_stats("state", stats)
    x = np.random.default_rng(4).normal(size=(7, 3))
    ours = module.normalize("state", torch.from_numpy(x).float()).numpy()
    np.testing.assert_allclose(ours, stats.normalize(x), atol=1e-6)
    back = module.unnormalize("state", torch.from_numpy(stats.normalize(x))).numpy()
    np.testing.assert_allclose(back, stats.unnormalize(stats.normalize(x)), atol=1e-5)
    np.testing.assert_array_equal(module.stats("state").offset, stats.offset)
    with pytest.raises(ValueError):
        module.set_stats("state", NormStats.identity(3, "mean_std"))
    with pytest.raises(ValueError):
        module.set_stats("state", NormStats.identity(4, "min_max"))
