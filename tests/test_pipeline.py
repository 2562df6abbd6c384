"""The pure parts of apprentice.pipeline: results, stage reuse, episode artifacts."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from apprentice.dataset import DatasetConfig
from apprentice.graph import load_graph
from apprentice.pipeline import (
    DemoConfig,
    Stage,
    dataset_config,
    demo_setup,
    demo_stages,
    drop_run_without_ema,
    format_table,
    link_successful,
    parse_record_rows,
    plot_joints,
    policy_arms,
    set_aside_if_other_setup,
    sim_process,
    stale_after,
    summarize,
    write_video,
)
from apprentice.sim.scenes import get_scene


def test_summarize_counts_successes_and_stages() -> None:
    rows = [
        {"success": True, "success_at_end": True, "max_stage": 4},
        {"success": True, "success_at_end": False, "max_stage": 4},
        {"success": False, "success_at_end": False, "max_stage": 1},
        {"success": False, "success_at_end": False, "max_stage": 2, "sim_stalled": True},
    ]
    s = summarize(rows)
    assert (s["episodes"], s["successes"]) == (4, 2)
    assert s["success_rate"] == pytest.approx(0.5)
    assert s["success_rate_at_end"] == pytest.approx(0.25)
    assert s["mean_max_stage"] == pytest.approx(2.75)
    assert s["sim_stalled"] == 1
    assert summarize([])["success_rate"] is None
    # rows of `apprentice record` have no stages: only the rate
    assert summarize([{"success": True}, {"success": False}, {"success": True}]) == {
        "episodes": 3, "successes": 2, "success_rate": pytest.approx(2 / 3)
    }  # fmt: skip


def test_format_table_aligns_columns_and_leaves_missing_cells_empty() -> None:
    rows = [
        {"episode": 0, "success": True, "inference_ms": 12.5},
        {"episode": 10, "success": False},
    ]
    lines = format_table(rows).splitlines()
    assert lines[0].split() == ["episode", "success", "inference_ms"]
    assert lines[1].split() == ["0", "True", "12.5"] and lines[2].split() == ["10", "False"]
    # every column starts at the same offset in every line
    starts = [lines[0].index("success"), lines[0].index("inference_ms")]
    assert lines[1][starts[0] : starts[0] + 4] == "True" and lines[1][starts[1] :] == "12.5"
    assert format_table(rows, ["success"]).splitlines() == ["success", "True", "False"]


def test_parse_record_rows_reads_only_episode_lines() -> None:
    text = (
        "record: graph record_sim_aloha on ROS_DOMAIN_ID=130\n"
        '[1/2] {"episode": "episode_0000", "seed": 1, "success": true}\n'
        "some log line [x/y] {}\n"
        '[2/2] {"episode": "episode_0001", "seed": 2, "success": false}\n'
        "success 1/2; quality ok 0/2\n"
    )
    rows = parse_record_rows(text)
    assert [(r["episode"], r["success"]) for r in rows] == [
        ("episode_0000", True), ("episode_0001", False)
    ]  # fmt: skip


def _stage(name: str, done: bool) -> Stage:
    return Stage(name, lambda: done, [name], Path(f"{name}.log"))


def test_stale_after_reruns_from_the_first_unfinished_stage() -> None:
    flags = [True, True, False, True, True]
    assert stale_after([_stage(str(i), d) for i, d in enumerate(flags)]) == [
        False, False, True, True, True
    ]  # fmt: skip
    assert stale_after([_stage("a", True), _stage("b", True)]) == [False, False]
    assert stale_after([_stage("a", False), _stage("b", True)]) == [True, True]


def test_demo_stages_reuse_what_the_output_folder_holds(tmp_path: Path) -> None:
    cfg = DemoConfig(steps=100)
    names = [s.name for s in demo_stages(tmp_path, cfg)]
    assert names == ["record", "dataset", "train", "export", "eval"]
    train_cmd = demo_stages(tmp_path, cfg)[2].command
    assert train_cmd[train_cmd.index("--ema") + 1] == "0.999"  # exported from the weights' EMA
    assert stale_after(demo_stages(tmp_path, cfg)) == [True] * 5

    (tmp_path / "demos_ok").mkdir()
    (tmp_path / "demos_ok" / "record.json").write_text("[]")
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "dataset.json").write_text("{}")
    assert stale_after(demo_stages(tmp_path, cfg)) == [False, False, True, True, True]

    # a training run stopped half way is resumed, not restarted
    state = tmp_path / "run" / "checkpoints" / "last" / "state.json"
    state.parent.mkdir(parents=True)
    state.write_text(json.dumps({"step": 40}))
    train = {s.name: s for s in demo_stages(tmp_path, cfg)}["train"]
    assert not train.done() and "--resume" in train.command
    state.write_text(json.dumps({"step": 100}))
    (tmp_path / "run" / "policy").mkdir()
    (tmp_path / "run" / "policy" / "policy_card.json").write_text("{}")
    assert stale_after(demo_stages(tmp_path, cfg)) == [False, False, False, False, True]


def test_link_successful_keeps_successful_demos_that_passed_the_quality_gate(
    tmp_path: Path,
) -> None:
    demos = tmp_path / "demos"
    for name in ("episode_0000", "episode_0001", "episode_0002", "episode_0004"):
        (demos / name).mkdir(parents=True)
        (demos / name / "metadata.yaml").write_text(name)
    lost = "/left/joint_states: 2.6 % lost"
    rows = [
        {"episode": "episode_0000", "success": True, "quality": "ok"},
        {"episode": "episode_0001", "success": False, "quality": "ok"},
        {"episode": "episode_0002", "success": True},  # an older log: no verdict
        {"episode": "episode_0003", "success": True},  # in the log, but no bag was kept
        {"episode": "episode_0004", "success": True, "quality": lost},
    ]
    chosen = link_successful(demos, rows, tmp_path / "ok")
    assert (chosen.kept, chosen.unsuccessful, chosen.flagged) == (2, 1, {"episode_0004": lost})
    kept = sorted(p.name for p in (tmp_path / "ok").iterdir())
    assert kept == ["episode_0000", "episode_0002"]
    assert (tmp_path / "ok" / "episode_0002" / "metadata.yaml").read_text() == "episode_0002"
    assert chosen.summary(len(rows)) == (
        "2 of 5 demonstrations kept: 1 failed the task, 1 flagged by the quality gate "
        f"(episode_0004: {lost})"
    )
    assert link_successful(demos, rows, tmp_path / "ok", include_flagged=True).kept == 3
    assert link_successful(demos, rows[1:2], tmp_path / "ok").kept == 0  # rebuilt, not appended
    assert list((tmp_path / "ok").iterdir()) == []


def test_dataset_config_feeds_only_what_the_robot_has() -> None:
    cfg = DatasetConfig.from_json(dataset_config((96, 128)))
    assert cfg.image_hw == (96, 128)
    topics = [s.topic for s in (*cfg.state, *cfg.action, *cfg.cameras)]
    assert not any("leader" in t for t in topics)
    assert [s.topic for s in cfg.action] == ["/left/commands", "/right/commands"]


def test_policy_arms_follow_the_card_joint_order() -> None:
    arms = {a.name: list(a.joints) for a in get_scene("aloha_transfer_cube").arms}
    assert policy_arms({"joint_names": arms["left"] + arms["right"]},
                       "aloha_transfer_cube") == ["left", "right"]  # fmt: skip
    assert policy_arms({"joint_names": arms["right"]}, "aloha_transfer_cube") == ["right"]
    with pytest.raises(ValueError, match="not whole arms"):
        policy_arms({"joint_names": arms["left"][:3]}, "aloha_transfer_cube")


def test_write_video_keeps_every_frame_enlarged(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    frames = [np.full((48, 64, 3), 10 * i, np.uint8) for i in range(12)]
    frames[5] = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    path = write_video(frames, tmp_path / "v" / "ep.avi", fps=30.0)
    cap = cv2.VideoCapture(str(path))
    read = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        read.append(frame)
    cap.release()
    assert len(read) == 12
    assert read[0].shape == (240, 320, 3)  # 48 → 240 rows: 5x, nearest pixel
    # grey levels survive MJPEG within a few counts
    assert abs(float(read[7].mean()) - 70) < 4 and abs(float(read[2].mean()) - 20) < 4
    with pytest.raises(ValueError):
        write_video([], tmp_path / "empty.avi", fps=30.0)


def test_plot_joints_writes_a_png(tmp_path: Path) -> None:
    t = np.linspace(0, 2, 50)
    meas = [(1000 + s, np.array([np.sin(s), np.cos(s)])) for s in t]
    cmds = [(1000 + s, np.array([np.sin(s), 0.5])) for s in t[::2]]
    path = plot_joints({"right": (["a", "b"], meas, cmds), "left": (["c", "d"], [], [])},
                       tmp_path / "p.png", title="ep")  # fmt: skip
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    img = cv2.imread(str(path))
    assert img.shape[0] > img.shape[1] / 2  # two panels stacked


def test_a_demo_run_without_an_ema_is_trained_again(tmp_path: Path) -> None:
    last = tmp_path / "run" / "checkpoints" / "last"
    last.mkdir(parents=True)
    (last / "state.json").write_text(json.dumps({"step": 6000}))
    (last / "ema").mkdir()
    assert not drop_run_without_ema(tmp_path / "run") and last.exists()  # has one: resumed
    (last / "ema").rmdir()
    assert drop_run_without_ema(tmp_path / "run") and not (tmp_path / "run").exists()
    assert not drop_run_without_ema(tmp_path / "run")  # nothing there: nothing to do


def test_record_and_eval_graphs_show_the_policy_the_same_camera() -> None:
    sims = demo_setup(DemoConfig())["sim"]
    record, evaluate = sims.values()
    assert record == evaluate, sims  # lens, supersampling, scene, cameras
    assert record["camera_fovy"] == ["top=50"] and record["supersample"] == 2
    replay = sim_process(load_graph("sim_aloha")).parameters  # `apprentice replay` renders here
    assert {k: replay.get(k) for k in ("camera_fovy", "supersample")} == {
        k: record[k] for k in ("camera_fovy", "supersample")
    }


def test_a_demo_folder_made_with_other_cameras_is_set_aside(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    setup = demo_setup(DemoConfig())
    assert set_aside_if_other_setup(out, setup) is None  # nothing there yet
    out.mkdir()
    assert set_aside_if_other_setup(out, setup) is None  # empty: nothing to lose
    (out / "demos").mkdir()  # made by a version that did not write its setup down
    aside = set_aside_if_other_setup(out, setup)
    assert aside is not None and (aside / "demos").is_dir() and not out.exists()
    out.mkdir()
    (out / "setup.json").write_text(json.dumps(setup))
    (out / "demos").mkdir()
    assert set_aside_if_other_setup(out, setup) is None and (out / "demos").is_dir()
    other = {**setup, "sim": {k: {**v, "camera_fovy": [78.0]} for k, v in setup["sim"].items()}}
    (out / "setup.json").write_text(json.dumps(other))
    aside2 = set_aside_if_other_setup(out, setup)
    assert aside2 is not None and aside2 != aside and (aside2 / "demos").is_dir()
    out.mkdir()
    (out / "setup.json").write_text('{"image_hw": [96,')  # cut short (a crash while writing)
    assert set_aside_if_other_setup(out, setup) is not None and not out.exists()


def test_eval_of_a_corrupt_policy_is_one_line(tmp_path: Path) -> None:
    """Three flipped bits in the weights load and run; the card's SHA-256 refuses them."""
    import subprocess
    import sys

    from tiny_act import export_tiny_act, flip_weight_bits

    folder = export_tiny_act(tmp_path / "policy", ["j0", "j1"], np.zeros(2), ["top"], (32, 40))
    flip_weight_bits(folder / "policy.onnx")
    out = subprocess.run([sys.executable, "-m", "apprentice", "eval", "--policy", str(folder),
                          "--out", str(tmp_path / "eval")], capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert f"apprentice: error: {folder / 'policy.onnx'}: sha256 " in out.stderr, out.stderr
    assert "changed since export" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert not (tmp_path / "eval").exists()  # refused before anything ran
