"""Dataset builder on real bags written by the recording core: cache contents, as-of
resampling checked against an independent reader, split by episode, stats, data-index hash."""

from __future__ import annotations

import dataclasses
import shutil

import cv2
import numpy as np
import pytest
from rosbags.rosbag2 import Reader
from rosbags.typesys import Stores, get_typestore

from apprentice.dataset import (
    DatasetCache,
    DatasetConfig,
    DatasetError,
    EpisodeBag,
    build_cache,
    infer_config,
)
from apprentice.dataset.builder import idle_start_steps
from apprentice.dataset.images import resize_chw
from apprentice.dataset.synthetic import SyntheticEpisode, write_episode
from apprentice.errors import UserError
from apprentice.learning.normalize import NormStats
from apprentice.learning.train_cli import main
from apprentice.resample import asof_indices, control_grid

TS = get_typestore(Stores.ROS2_JAZZY)
HW = (32, 48)


def _write_bags(root, n: int, spec: SyntheticEpisode) -> None:
    for i in range(n):
        write_episode(root / f"episode_{i:04d}", spec, seed=i)


@pytest.fixture(scope="module")
def raw_bags(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw_bags")
    _write_bags(root, 4, SyntheticEpisode(duration_s=1.5))
    return root


def _config(root) -> DatasetConfig:
    bag = EpisodeBag(next(p for p in sorted(root.iterdir()) if p.is_dir()))
    return infer_config(bag.topics, image_hw=HW, val_fraction=0.25)


def _read_independently(bag_dir):
    """{topic: (stamps s, decoded messages)} with rosbags' own reader, sorted by stamp."""
    out = {}
    with Reader(bag_dir) as reader:
        for conn, log_ns, raw in reader.messages():
            msg = TS.deserialize_cdr(raw, conn.msgtype)
            if hasattr(msg, "header"):
                stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
            else:
                stamp = log_ns * 1e-9
            out.setdefault(conn.topic, []).append((stamp, msg))
    return {
        t: (np.array([s for s, _ in v]), [m for _, m in v])
        for t, v in ((t, sorted(v, key=lambda x: x[0])) for t, v in out.items())
    }


def test_cache_from_bags_split_stats_and_shapes(raw_bags, tmp_path) -> None:
    cfg = _config(raw_bags)
    cache = build_cache(raw_bags, cfg, tmp_path / "cache", progress=False)
    assert [e.episode_id for e in cache.episodes] == [f"episode_{i:04d}" for i in range(4)]
    splits = [e.split for e in cache.episodes]
    assert splits.count("val") == 1 and splits.count("train") == 3  # by episode, 25 %
    assert cache.state_names == list(SyntheticEpisode().joints) == cache.action_names
    assert cache.camera_names == ["top"] and cache.image_hw == HW
    n = sum(e.length for e in cache.episodes)
    assert cache.n_frames == n and cache.state.shape == (n, 4) and cache.action.shape == (n, 4)
    assert cache.episodes[1].start == cache.episodes[0].stop  # contiguous, in order
    assert cache.images(np.arange(5)).shape == (5, 1, 3, *HW)
    # 1.5 s at 50 Hz on the overlap of all streams: ~74 grid steps per episode
    assert all(70 <= e.length <= 76 for e in cache.episodes)
    # stats are fitted on the train episodes only
    train_rows = np.concatenate(
        [cache.state[e.start : e.stop] for e in cache.split_episodes("train")]
    )
    for mode in ("mean_std", "min_max"):
        expected = NormStats.fit(train_rows, mode)
        got = cache.stats("state", mode)
        np.testing.assert_allclose(got.offset, expected.offset, rtol=1e-6)
        np.testing.assert_allclose(got.scale, expected.scale, rtol=1e-6)
    all_rows = np.asarray(cache.state)
    assert not np.allclose(cache.stats("state", "mean_std").offset, all_rows.mean(0), atol=1e-6)


@pytest.mark.parametrize("compressed", [False, True], ids=["raw_rgb8", "jpeg"])
def test_resampling_matches_asof_indices(tmp_path, compressed: bool) -> None:
    spec = SyntheticEpisode(duration_s=1.0, compressed=compressed)
    _write_bags(tmp_path / "bags", 2, spec)
    cfg = dataclasses.replace(_config(tmp_path / "bags"), val_fraction=0.0, trim_idle_start=False)
    cache = build_cache(tmp_path / "bags", cfg, tmp_path / "cache", progress=False)
    for ep in cache.episodes:
        streams = _read_independently(ep.bag)
        js, cmd = streams["/follower/joint_states"], streams["/follower/commands"]
        cam = streams[spec.camera_topic]
        start = max(js[0][0], cmd[0][0], cam[0][0])
        end = min(js[0][-1], cmd[0][-1], cam[0][-1])
        grid = control_grid(start, end, 50.0)
        np.testing.assert_array_equal(cache.stamps[ep.start : ep.stop], grid)
        i_js, ok_js = asof_indices(js[0], grid, 0.05)
        i_cmd, ok_cmd = asof_indices(cmd[0], grid, 0.1)
        i_cam, ok_cam = asof_indices(cam[0], grid, 0.1)
        assert ok_js.all() and ok_cmd.all() and ok_cam.all()
        state = np.array([js[1][i].position for i in i_js], dtype=np.float32)
        action = np.array([cmd[1][i].data for i in i_cmd], dtype=np.float32)
        np.testing.assert_array_equal(cache.state[ep.start : ep.stop], state)
        np.testing.assert_array_equal(cache.action[ep.start : ep.stop], action)
        for k in (0, len(grid) // 2, len(grid) - 1):
            msg = cam[1][i_cam[k]]
            if compressed:
                rgb = cv2.cvtColor(cv2.imdecode(msg.data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
            else:
                rgb = msg.data.reshape(msg.height, msg.width, 3)
            expected = resize_chw(rgb, HW)
            np.testing.assert_array_equal(cache.images(np.asarray(ep.start + k)), expected[None])
        # the commands lead the joints (lead_s = 0.1 s): the action is not the state
        assert (
            np.abs(cache.action[ep.start : ep.stop] - cache.state[ep.start : ep.stop]).max() > 0.01
        )


def test_data_index_hash_identifies_the_data(raw_bags, tmp_path) -> None:
    cfg = _config(raw_bags)
    a = build_cache(raw_bags, cfg, tmp_path / "a", progress=False)
    b = build_cache(raw_bags, cfg, tmp_path / "b", progress=False)
    assert a.data_index_hash == b.data_index_hash and a.data_index_hash.startswith("sha256:")
    c = build_cache(raw_bags, dataclasses.replace(cfg, control_rate_hz=25.0), tmp_path / "c",
                    progress=False)  # fmt: skip
    assert c.data_index_hash != a.data_index_hash
    changed = tmp_path / "changed"
    shutil.copytree(raw_bags, changed)
    shutil.rmtree(changed / "episode_0002")
    write_episode(changed / "episode_0002", SyntheticEpisode(duration_s=1.5), seed=99)
    d = build_cache(changed, cfg, tmp_path / "d", progress=False)
    assert d.data_index_hash != a.data_index_hash
    # a finished cache refuses to be overwritten silently; reopening reads the same
    with pytest.raises(FileExistsError):
        build_cache(raw_bags, cfg, tmp_path / "a", progress=False)
    assert DatasetCache(tmp_path / "a").data_index_hash == a.data_index_hash


def test_dataset_build_command(raw_bags, tmp_path, capsys) -> None:
    """`apprentice dataset build` with a YAML config (joint subset, own rate and size)."""
    (tmp_path / "ds.yaml").write_text(
        "control_rate_hz: 25\nimage_hw: [24, 32]\nval_fraction: 0.5\ntrim_idle_start: false\n"
        "state: [{topic: /follower/joint_states, joints: [gripper, shoulder_pan]}]\n"
        "action: [{topic: /follower/commands, joints: [gripper]}]\n"
        "cameras: [{name: overhead, topic: /cameras/top/image_raw}]\n"
    )
    args = ["dataset", "build", str(raw_bags), "--out", str(tmp_path / "c"), "--config",
            str(tmp_path / "ds.yaml")]  # fmt: skip
    assert main(args) == 0
    cache = DatasetCache(tmp_path / "c")
    assert cache.data_index_hash in capsys.readouterr().out
    assert cache.state_names == ["gripper", "shoulder_pan"] and cache.action_names == ["gripper"]
    assert cache.camera_names == ["overhead"] and cache.image_hw == (24, 32)
    assert [e.split for e in cache.episodes].count("val") == 2
    cfg = dataclasses.replace(_config(raw_bags), trim_idle_start=False)
    full = build_cache(raw_bags, cfg, tmp_path / "full", progress=False)
    # the gripper column, by name, at every second 50 Hz grid time (25 Hz, same start)
    ep, ep50 = cache.episodes[0], full.episodes[0]
    n = ep.length
    np.testing.assert_array_equal(
        cache.action[ep.start : ep.stop, 0], full.action[ep50.start : ep50.start + 2 * n : 2, 3]
    )


def test_idle_start_is_trimmed_to_the_last_still_frame(tmp_path) -> None:
    """An episode that waits 0.4 s at its start pose opens, in the cache, on the last grid
    step before the commands move; with trim_idle_start off it keeps the wait."""
    spec = SyntheticEpisode(duration_s=1.5, idle_s=0.4)
    _write_bags(tmp_path / "bags", 1, spec)
    base = dataclasses.replace(_config(tmp_path / "bags"), val_fraction=0.0)
    kept = build_cache(tmp_path / "bags", dataclasses.replace(base, trim_idle_start=False),
                       tmp_path / "kept", progress=False)  # fmt: skip
    trimmed = build_cache(tmp_path / "bags", base, tmp_path / "trimmed", progress=False)
    full, cut = kept.action[:], trimmed.action[:]
    n_cut = len(full) - len(cut)
    # the commands lead by 0.1 s, so they hold for ~0.3 s of the 50 Hz grid
    assert 12 <= n_cut <= 18, n_cut
    np.testing.assert_array_equal(cut, full[n_cut:])
    np.testing.assert_array_equal(trimmed.state[:], kept.state[n_cut:])
    np.testing.assert_array_equal(trimmed.stamps[:], kept.stamps[n_cut:])
    assert np.abs(cut[1] - cut[0]).max() > base.idle_threshold  # the next step moves
    assert np.abs(full[: n_cut + 1] - full[0]).max() <= base.idle_threshold
    # images follow the trim: the first cached frame is the one the grid's first step used
    np.testing.assert_array_equal(trimmed.images(np.asarray(0)), kept.images(np.asarray(n_cut)))
    assert idle_start_steps(np.zeros((5, 3)), 0.01) == 0  # never moves: nothing dropped


def test_dataset_build_leaves_out_flagged_episodes_and_says_so(raw_bags, tmp_path, capsys) -> None:
    """A recording's index.json: episodes the quality gate flagged are left out by default,
    each named with the gate's reasons; --include-flagged takes them."""
    from apprentice.recording import DatasetIndex
    from apprentice.recording.index import EpisodeEntry

    rec = tmp_path / "rec"
    shutil.copytree(raw_bags, rec)
    index = DatasetIndex(rec)
    lost = "/follower/joint_states: 2.6 % of messages lost"
    for i, bag in enumerate(sorted(p.name for p in rec.iterdir() if p.is_dir())):
        why = (lost,) if i == 1 else ()
        index.append(EpisodeEntry(bag, "", 0, 1.5, {}, not why, why, bag))
    base = ["dataset", "build", str(rec), "--image-hw", *map(str, HW), "--val-fraction", "0.25"]
    assert main([*base, "--out", str(tmp_path / "gated")]) == 0
    out = capsys.readouterr().out
    assert f"left out episode_0001: quality gate: {lost}" in out, out
    assert "1 flagged episode(s) left out; --include-flagged includes them" in out, out
    assert [e.episode_id for e in DatasetCache(tmp_path / "gated").episodes] == [
        "episode_0000", "episode_0002", "episode_0003"]  # fmt: skip
    assert main([*base, "--out", str(tmp_path / "all"), "--include-flagged"]) == 0
    assert "left out" not in capsys.readouterr().out
    assert len(DatasetCache(tmp_path / "all").episodes) == 4
    every = tmp_path / "every"  # all flagged: the error says so, not "no episodes"
    shutil.copytree(raw_bags, every)
    for bag in sorted(p.name for p in every.iterdir() if p.is_dir()):
        DatasetIndex(every).append(EpisodeEntry(bag, "", 0, 1.5, {}, False, (lost,), bag))
    with pytest.raises(DatasetError, match=r"all 4 kept episode\(s\) were flagged by the quality"):
        main(["dataset", "build", str(every), "--out", str(tmp_path / "none")])


def test_skip_bad_infers_the_config_from_the_first_bag_that_opens(raw_bags, tmp_path) -> None:
    rec = tmp_path / "rec"
    shutil.copytree(raw_bags, rec)
    meta = rec / "episode_0000" / "metadata.yaml"
    meta.write_bytes(meta.read_bytes().replace(b"rosbag2", b"rosbag\xff", 1))  # not UTF-8
    base = ["dataset", "build", str(rec), "--image-hw", *map(str, HW), "--val-fraction", "0.25"]
    with pytest.raises(DatasetError, match="episode_0000/metadata.yaml"):
        main([*base, "--out", str(tmp_path / "strict")])
    assert main([*base, "--out", str(tmp_path / "c"), "--skip-bad"]) == 0
    assert [e.episode_id for e in DatasetCache(tmp_path / "c").episodes] == [
        "episode_0001", "episode_0002", "episode_0003"]  # fmt: skip


def test_the_cli_builds_a_jpeg_cache_and_refuses_a_bad_quality(raw_bags, tmp_path) -> None:
    base = ["dataset", "build", str(raw_bags), "--image-hw", *map(str, HW)]
    assert main([*base, "--out", str(tmp_path / "j"), "--image-store", "jpeg",
                 "--jpeg-quality", "80"]) == 0  # fmt: skip
    cache = DatasetCache(tmp_path / "j")
    assert cache.image_store == "jpeg" and cache.meta["image_store"]["quality"] == 80
    with pytest.raises(UserError, match="jpeg_quality must be an integer 1-100, got 0"):
        main([*base, "--out", str(tmp_path / "bad"), "--jpeg-quality", "0"])
