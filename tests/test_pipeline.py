"""The demo pipeline (apprentice.pipeline): stage reuse, demo selection, setup, the summary."""

from __future__ import annotations

import json
from pathlib import Path

from apprentice.dataset import DatasetConfig
from apprentice.eval_cli import sim_process
from apprentice.graph import load_graph
from apprentice.pipeline import (
    SCENES,
    DemoConfig,
    DemoSelection,
    Stage,
    dataset_config,
    demo_setup,
    demo_stages,
    drop_run_without_ema,
    link_successful,
    run_demo,
    set_aside_if_other_setup,
    stale_after,
)


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
    eval_cmd = demo_stages(tmp_path, cfg)[4].command
    assert eval_cmd[:2] == ["apprentice", "eval"] and "--seed0" in eval_cmd
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


def test_selection_summary_counts_many_flagged_episodes_by_kind() -> None:
    """100 flagged episodes once printed a 40 kB line: past three, findings are counted."""
    flagged = {
        f"episode_{i:04d}": "/left/joint_states: 45 of 871 messages lost (5.2% > 2.0%)"
        + ("; /cameras/top/image_raw: gap of 0.30 s (> 0.25 s) 6.49 s into the stream" * (i % 2))
        for i in range(40)
    }
    line = DemoSelection(55, 5, flagged).summary(100)
    assert line == (
        "55 of 100 demonstrations kept: 5 failed the task, 40 flagged by the quality gate "
        "(episode_0000, episode_0001, episode_0002 and 37 more; messages lost in 40, gaps in 20)"
    )


def test_dataset_config_feeds_only_what_the_robot_has() -> None:
    cfg = DatasetConfig.from_json(dataset_config((96, 128), SCENES["aloha_transfer_cube"]))
    assert cfg.image_hw == (96, 128)
    topics = [s.topic for s in (*cfg.state, *cfg.action, *cfg.cameras)]
    assert not any("leader" in t for t in topics)
    assert [s.topic for s in cfg.action] == ["/left/commands", "/right/commands"]


def test_the_so100_demo_records_trains_and_evaluates_on_its_own_graphs(tmp_path: Path) -> None:
    cfg = DemoConfig(scene="so100_lift")
    stages = {s.name: s.command for s in demo_stages(tmp_path, cfg)}
    assert stages["record"][stages["record"].index("--graph") + 1] == "record_sim_so100"
    assert stages["eval"][stages["eval"].index("--graph") + 1] == "eval_sim_so100"
    data = DatasetConfig.from_json(dataset_config(cfg.image_hw, cfg.demo_scene))
    assert [s.topic for s in data.state] == ["/arm/joint_states"]
    assert [s.topic for s in data.action] == ["/arm/commands"]
    assert [(c.name, c.topic) for c in data.cameras] == [("front", "/cameras/front/image_raw")]
    sims = demo_setup(cfg)["sim"]
    assert list(sims) == ["record_sim_so100", "eval_sim_so100"]
    assert {s["scene"] for s in sims.values()} == {"so100_lift"}
    # the default scene is unchanged
    aloha = {s.name: s.command for s in demo_stages(tmp_path, DemoConfig())}
    assert aloha["record"][aloha["record"].index("--graph") + 1] == "record_sim_aloha"
    assert aloha["eval"][aloha["eval"].index("--graph") + 1] == "eval_sim_aloha"


def test_each_demo_scene_names_the_arms_and_camera_its_graphs_have() -> None:
    for name, scene in SCENES.items():
        for graph in (scene.record_graph, scene.eval_graph):
            sim = sim_process(load_graph(graph)).parameters
            assert sim["scene"] == name, graph
            assert tuple(sim["arms"]) == scene.arms and sim["cameras"] == [scene.camera], graph
        # both graphs render the camera alike: a policy sees what it was trained on
        record, evaluate = demo_setup(DemoConfig(scene=name))["sim"].values()
        assert record == evaluate, name


def test_each_demo_scene_evaluates_longer_than_its_scripted_demonstration() -> None:
    from teleop.scripted import ScriptedDemo

    for name, scene in SCENES.items():
        lag = scene.eval_duration_s - ScriptedDemo(name, seed=1000).duration
        assert lag >= 2.0, (name, lag)  # a policy slower than the script can still finish
        cmd = demo_stages(Path("out"), DemoConfig(scene=name))[4].command
        assert float(cmd[cmd.index("--duration") + 1]) == scene.eval_duration_s


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


def test_the_demo_summary_gives_rates_with_intervals_and_stages(tmp_path: Path, capsys) -> None:
    """A folder where every stage is done: run_demo only prints the summary."""
    import argparse

    cfg = DemoConfig(steps=100)
    out = tmp_path / "demo"
    out.mkdir()
    (out / "setup.json").write_text(json.dumps(demo_setup(cfg)))
    (out / "demos_ok").mkdir()
    record = [{"episode": f"episode_{i:04d}", "seed": i + 1, "success": True} for i in range(50)]
    (out / "demos_ok" / "record.json").write_text(json.dumps(record))
    (out / "cache").mkdir()
    (out / "cache" / "dataset.json").write_text("{}")
    last = out / "run" / "checkpoints" / "last"
    (last / "ema").mkdir(parents=True)
    (last / "state.json").write_text(json.dumps({"step": 100}))
    (out / "run" / "policy").mkdir()
    (out / "run" / "policy" / "policy_card.json").write_text("{}")
    (out / "eval").mkdir()
    stages = [4] * 18 + [1, 2]  # 18 transferred, one touched, one lifted
    rows = [{"seed": 1000 + i, "success": s == 4, "max_stage": s} for i, s in enumerate(stages)]
    (out / "eval" / "results.json").write_text(json.dumps(
        {"policy_type": "act", "task": "transfer_cube", "rows": rows}))  # fmt: skip
    args = argparse.Namespace(scene="aloha_transfer_cube", out=str(out), fresh=False,
                              episodes=50, steps=100, eval_episodes=20, policy="act",
                              include_flagged=False)  # fmt: skip
    assert run_demo(args) == 0
    printed = capsys.readouterr().out
    assert "[5/5] eval: done already" in printed
    assert "scripted demonstrator  50/50 (100 %, 95 % interval 93–100 %)" in printed
    assert "act policy (closed loop)  18/20 (90 %, 95 % interval 70–97 %), 90 % of" in printed
    assert "touch 20/20 (100 %, 95 % interval 84–100 %); lift 19/20 (95 %" in printed
    assert "transfer 18/20 (90 %" in printed
