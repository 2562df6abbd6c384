"""Bad inputs are refused with an error naming the file and the topic at fault."""

from __future__ import annotations

import dataclasses
import os
import shutil

import pytest

from apprentice.dataset import (
    CameraStream,
    CorruptBagError,
    DatasetError,
    EpisodeBag,
    JointStream,
    build_cache,
    infer_config,
)
from apprentice.dataset.synthetic import SyntheticEpisode, write_episode

HW = (32, 48)
SPEC = SyntheticEpisode(duration_s=1.0)


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    root = tmp_path_factory.mktemp("good")
    for i in range(2):
        write_episode(root / f"ep{i}", SPEC, seed=i)
    return root


@pytest.fixture
def bags(good, tmp_path):
    """A fresh copy to damage."""
    root = tmp_path / "bags"
    shutil.copytree(good, root)
    return root


def _cfg(root):
    return infer_config(EpisodeBag(root / "ep0").topics, image_hw=HW)


def _build(root, cfg, tmp_path, **kw):
    return build_cache(root, cfg, tmp_path / "cache", progress=False, **kw)


def test_truncated_mcap(bags, tmp_path) -> None:
    cfg = _cfg(bags)
    mcap = bags / "ep1" / "ep1_0.mcap"
    os.truncate(mcap, mcap.stat().st_size * 6 // 10)
    with pytest.raises(DatasetError, match=r"ep1_0\.mcap: truncated or corrupt MCAP"):
        _build(bags, cfg, tmp_path)
    assert not (tmp_path / "cache").exists()  # nothing half-built is left behind


def test_corrupt_chunk_fails_crc(bags, tmp_path) -> None:
    cfg = _cfg(bags)
    mcap = bags / "ep1" / "ep1_0.mcap"
    data = bytearray(mcap.read_bytes())
    middle = len(data) // 2  # inside a chunk's payload; the summary at the end stays valid
    data[middle : middle + 16] = bytes(b ^ 0xFF for b in data[middle : middle + 16])
    mcap.write_bytes(bytes(data))
    with pytest.raises(
        CorruptBagError, match=r"ep1_0\.mcap: chunk at byte \d+: (CRCValidation|Zstd)Error"
    ):
        _build(bags, cfg, tmp_path)


def test_missing_topic(bags, tmp_path) -> None:
    cfg = dataclasses.replace(
        _cfg(bags), cameras=(CameraStream("wrist", "/cameras/wrist/image_raw"),)
    )
    with pytest.raises(
        DatasetError, match=r"ep0_0\.mcap: topic /cameras/wrist/image_raw was not recorded"
    ):
        _build(bags, cfg, tmp_path)


def test_wrong_message_type(bags, tmp_path) -> None:
    swapped = dataclasses.replace(
        _cfg(bags),
        state=(JointStream("/follower/commands"),),
        action=(JointStream("/follower/joint_states"),),
    )
    with pytest.raises(
        DatasetError,
        match=r"ep0_0\.mcap: topic /follower/commands has type std_msgs/msg/Float64MultiArray, "
        r"the dataset config needs sensor_msgs/msg/JointState",
    ):
        _build(bags, swapped, tmp_path)


def test_configured_joint_not_in_bag(bags, tmp_path) -> None:
    cfg = _cfg(bags)
    state = (JointStream("/follower/joint_states", joints=("shoulder_pan", "wrist_roll")),)
    with pytest.raises(DatasetError, match=r"/follower/joint_states: joint\(s\) \['wrist_roll'\]"):
        _build(bags, dataclasses.replace(cfg, state=state), tmp_path)


def test_episode_with_other_joint_names(bags, tmp_path) -> None:
    """The first episode fixes the joint names; a later one recorded on another arm fails."""
    cfg = _cfg(bags)
    other = dataclasses.replace(SPEC, joints=("pan", "lift", "elbow", "gripper"))
    write_episode(bags / "ep2", other, seed=2)
    with pytest.raises(DatasetError, match=r"ep2_0\.mcap: topic /follower/joint_states: joint\(s\) "
                       r"\['shoulder_pan', 'shoulder_lift', 'elbow_flex'\] not in"):  # fmt: skip
        _build(bags, cfg, tmp_path)
    # skip_bad leaves that episode out and says why
    cache = _build(bags, cfg, tmp_path, skip_bad=True)
    assert [e.episode_id for e in cache.episodes] == ["ep0", "ep1"]
    assert "ep2_0.mcap" in cache.meta["skipped"][0]


def test_unclosed_recording_points_to_recover(bags, tmp_path) -> None:
    (bags / "ep1" / "metadata.yaml").unlink()
    with pytest.raises(DatasetError, match=r"ep1: no metadata\.yaml .*recover\(\)"):
        _build(bags, _cfg(bags), tmp_path)


def test_stale_stream_names_topic_and_time(bags, tmp_path) -> None:
    """A camera at 30 Hz cannot be fresher than 33 ms: a 10 ms max age must be refused."""
    cfg = _cfg(bags)
    cam = dataclasses.replace(cfg.cameras[0], max_age_s=0.01)
    with pytest.raises(
        DatasetError, match=r"topic /cameras/top/image_raw is stale at t=.* > max_age_s 10 ms"
    ):
        _build(bags, dataclasses.replace(cfg, cameras=(cam,)), tmp_path)
