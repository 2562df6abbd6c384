"""Each camera's camera_info, recorded beside its images, goes into the cache metadata (and from
there into the policy card as the camera's "source"); it must not change within an episode nor
between episodes, and must describe the recorded images."""

from __future__ import annotations

import pytest

from apprentice.dataset import DatasetConfig, DatasetError, build_cache
from apprentice.dataset.config import CameraStream, JointStream, camera_info_topic
from apprentice.dataset.synthetic import SyntheticEpisode, write_episode

HW = (24, 32)
FX = 55.4  # px at the recorded 48x64
CONFIG = DatasetConfig(
    state=(JointStream("/follower/joint_states"),),
    action=(JointStream("/follower/commands", max_age_s=0.1),),
    cameras=(CameraStream("top", "/cameras/top/image_raw/compressed"),),
    image_hw=HW,
    val_fraction=0.0,
)


def _bags(root, *specs: SyntheticEpisode):
    for i, spec in enumerate(specs):
        write_episode(root / f"ep{i}", spec, seed=i)
    return root


def _spec(**kw) -> SyntheticEpisode:
    return SyntheticEpisode(duration_s=0.6, compressed=True, **kw)


def test_info_topic_is_the_image_topics_sibling() -> None:
    for topic in ("/cameras/top/image_raw", "/cameras/top/image_raw/compressed"):
        assert camera_info_topic(topic) == "/cameras/top/camera_info"


def test_camera_info_goes_into_the_cache_metadata(tmp_path) -> None:
    bags = _bags(tmp_path / "bags", _spec(camera_fx=FX), _spec(camera_fx=FX))
    cache = build_cache(bags, CONFIG, tmp_path / "cache", progress=False)
    (cam,) = cache.meta["cameras"]
    assert (cam["name"], cam["height"], cam["width"]) == ("top", *HW)  # the policy input
    assert cam["source"] == {  # the camera as recorded
        "width": 64, "height": 48, "k": [FX, 0.0, 31.5, 0.0, FX, 23.5, 0.0, 0.0, 1.0],
        "d": [0.0] * 5, "distortion_model": "plumb_bob",
    }  # fmt: skip
    # without camera_info: no source, as before
    plain = build_cache(_bags(tmp_path / "plain", _spec()), CONFIG, tmp_path / "c2", progress=False)
    assert "source" not in plain.meta["cameras"][0]


def test_episodes_with_another_lens_are_refused_or_skipped(tmp_path) -> None:
    bags = _bags(
        tmp_path / "bags", _spec(camera_fx=FX), _spec(camera_fx=FX * 1.3), _spec(camera_fx=FX)
    )
    with pytest.raises(DatasetError, match=r"episode ep1: camera top .* fx 72\.02.*episode ep0"):
        build_cache(bags, CONFIG, tmp_path / "cache", progress=False)
    cache = build_cache(bags, CONFIG, tmp_path / "cache", skip_bad=True, progress=False)
    assert [e.episode_id for e in cache.episodes] == ["ep0", "ep2"]
    assert "ep1" in cache.meta["skipped"][0]
    mixed = _bags(tmp_path / "mixed", _spec(camera_fx=FX), _spec())
    with pytest.raises(DatasetError, match="ep1: camera top .* without camera_info"):
        build_cache(mixed, CONFIG, tmp_path / "c2", progress=False)


def test_camera_info_that_changes_or_does_not_fit_the_images_is_refused(tmp_path) -> None:
    changed = _bags(tmp_path / "changed", _spec(camera_fx=FX, camera_fx_late=FX * 1.1))
    with pytest.raises(DatasetError, match="camera_info changed within the episode"):
        build_cache(changed, CONFIG, tmp_path / "c1", progress=False)
    other_size = _bags(tmp_path / "size", _spec(camera_fx=FX, camera_info_hw=(480, 640)))
    with pytest.raises(DatasetError, match="describes 640x480 images, .* has 64x48"):
        build_cache(other_size, CONFIG, tmp_path / "c2", progress=False)
