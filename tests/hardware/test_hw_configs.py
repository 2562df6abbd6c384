"""Robot configs and the graphs made from them (drive, record): arms, leaders, cameras."""

from __future__ import annotations

import copy
import importlib

import pytest
import yaml

from apprentice.drivers.factory import ROBOTS_DIR, BuiltArm, build_arm, load_robot
from apprentice.graph import load_graph
from apprentice.robot_graphs import load_setup
from apprentice_ros import arm_driver

HARDWARE_GRAPHS = ("so101", "koch", "aloha")
SIM_ALOHA_JOINTS = ("waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate")


def _check_declared(graph_name: str, proc) -> None:
    defaults = importlib.import_module(f"apprentice_ros.{proc.executable}").DEFAULTS
    unknown = set(proc.parameters) - set(defaults)
    assert not unknown, f"{graph_name}/{proc.label}: undeclared parameters {unknown}"
    for key, value in proc.parameters.items():  # ROS parameter types are fixed by defaults
        assert type(value) is type(defaults[key]), (graph_name, proc.label, key)


@pytest.mark.parametrize("name", HARDWARE_GRAPHS)
def test_drive_graphs_start_every_arm_and_camera_of_the_robot_config(name: str) -> None:
    graph = load_graph(name)
    arms = load_robot(name)
    setup = load_setup(name)
    drivers = [p for p in graph.processes if p.executable == "arm_driver"]
    cameras = [p for p in graph.processes if p.executable == "camera"]
    assert len(drivers) + len(cameras) == len(graph.processes)
    assert {p.parameters["arm"] for p in drivers} == set(arms)  # every arm, once
    assert [p.parameters["name"] for p in cameras] == [c.name for c in setup.cameras]
    assert len(setup.cameras) >= 2
    for proc in graph.processes:
        _check_declared(name, proc)
    for proc in drivers:
        p = proc.parameters
        cfg = arms[p["arm"]]
        assert p["backend"] == cfg.backend and p["backend"] in arm_driver.BACKENDS
        assert p["port"] == cfg.port and p["baudrate"] == cfg.baudrate == 1_000_000
        assert p["calibration_file"].endswith(f"{name}_{p['arm']}.yaml")  # the CLI's default
        # one namespace rule: followers under /<arm>, the leader of F under /leader/F
        leads = setup.leaders.get(p["arm"])
        assert p["namespace"] == (f"leader/{leads}" if leads else p["arm"])


@pytest.mark.parametrize("name", HARDWARE_GRAPHS)
def test_record_graphs_pair_every_leader_and_record_every_stream(name: str) -> None:
    graph = load_graph(f"record_{name}")
    setup = load_setup(name)
    for proc in graph.processes:
        _check_declared(f"record_{name}", proc)
    procs = {p.label: p for p in graph.processes}
    teleop, recorder = procs["teleop"].parameters, procs["recorder"].parameters
    assert sorted(teleop["pairs"]) == sorted(f"leader/{f}:{f}" for f in setup.followers)
    assert set(setup.leaders.values()) == set(setup.followers)  # every follower has a leader
    topics = [t.split(":")[0] for t in recorder["topics"]]
    for f in setup.followers:
        assert {f"/{f}/joint_states", f"/{f}/commands", f"/leader/{f}/joint_states"} <= set(topics)
    for cam in setup.cameras:
        assert f"/cameras/{cam.name}/image_raw/compressed" in topics
        assert f"/cameras/{cam.name}/camera_info" in topics
        assert procs[cam.name].parameters["publish_compressed"]
    # A leader drives its follower by joint name: the same names on both.
    for leader, follower in setup.leaders.items():
        assert setup.arms[leader].spec.joint_names == setup.arms[follower].spec.joint_names


def test_the_simulated_aloha_uses_the_same_leader_namespaces() -> None:
    teleop = next(p for p in load_graph("record_sim_aloha").processes if p.label == "teleop")
    assert teleop.parameters["pairs"] == ["leader/left:left", "leader/right:right"]
    setup = load_setup("aloha")
    assert {setup.namespace(a) for a in setup.leaders} == {"leader/left", "leader/right"}


def test_overrides_scope_to_one_process() -> None:
    g = load_graph("record_so101").with_parameters(
        {"follower.port": "/dev/ttyUSB7", "front.device": "/tmp/v.avi", "dataset_dir": "d"}
    )
    procs = {p.label: p.parameters for p in g.processes}
    assert procs["follower"]["port"] == "/dev/ttyUSB7" and procs["leader"]["port"] == "/dev/ttyACM1"
    assert procs["front"]["device"] == "/tmp/v.avi" and procs["wrist"]["device"] == "/dev/video2"
    assert procs["recorder"]["dataset_dir"] == "d"
    with pytest.raises(ValueError, match="no process labelled 'folower'"):
        load_graph("record_so101").with_parameters({"folower.port": "x"})
    with pytest.raises(ValueError, match="process follower has no parameter"):
        load_graph("record_so101").with_parameters({"follower.device": "x"})


def test_bad_robot_configs_are_refused_clearly(tmp_path) -> None:
    base = yaml.safe_load((ROBOTS_DIR / "so101.yaml").read_text())
    cases = [
        (lambda d: d["arms"]["leader"].update(leads="middle"), "not a follower arm"),
        (lambda d: d["cameras"]["front"].update(backend="gopro"), "backend 'gopro'"),
        (lambda d: d["cameras"]["front"].pop("fps"), "missing or malformed field"),
        (lambda d: d["cameras"].update(follower=d["cameras"]["front"]), "used by an arm and"),
    ]
    for i, (change, message) in enumerate(cases):
        doc = copy.deepcopy(base)
        change(doc)
        path = tmp_path / f"bad{i}.yaml"
        path.write_text(yaml.safe_dump(doc))
        with pytest.raises(ValueError, match=message):
            load_setup(path)
    with pytest.raises(FileNotFoundError, match="no graph file"):
        load_graph("record_nope")


def test_robot_configs_have_the_expected_servos() -> None:
    so101, koch, aloha = (load_robot(n) for n in HARDWARE_GRAPHS)
    for cfg in so101.values():
        assert [j.servo_id for j in cfg.joints] == [1, 2, 3, 4, 5, 6]
        assert {j.model for j in cfg.joints} == {"STS3215"}
        assert cfg.joints[-1].gripper is not None
    assert [j.model for j in koch["follower"].joints] == ["XL430-W250"] * 3 + ["XL330-M288"] * 3
    assert {j.model for j in koch["leader"].joints} == {"XL330-M077"}
    assert set(aloha) == {"left", "right", "left_leader", "right_leader"}
    for arm, cfg in aloha.items():
        side = arm.split("_")[0]
        assert cfg.spec.joint_names == tuple(f"{side}_{j}" for j in SIM_ALOHA_JOINTS) + (
            f"{side}_gripper",
        )
        assert cfg.backend == "dynamixel" and {j.model[:5] for j in cfg.joints} <= {
            "XM430",
            "XL430",
        }
    # followers hold their pose from the start; leaders are moved by hand
    for arms in (so101, koch):
        assert arms["follower"].torque_on_start and not arms["leader"].torque_on_start


def test_every_robot_config_loads() -> None:
    names = sorted(p.stem for p in ROBOTS_DIR.glob("*.yaml"))
    assert set(HARDWARE_GRAPHS) <= set(names)
    for name in names:
        assert load_robot(name)


def test_bad_configs_are_refused_clearly(tmp_path) -> None:
    with pytest.raises(ValueError, match="unknown backend"):
        build_arm({"backend": "can_bus", "arm": "x"})
    with pytest.raises(ValueError, match="no calibration_file"):
        build_arm({"backend": "feetech", "robot": "so101", "arm": "follower"})
    with pytest.raises(ValueError, match="is a feetech bus, not dynamixel"):
        build_arm({"backend": "dynamixel", "robot": "so101", "arm": "follower"})
    with pytest.raises(ValueError, match="no arm 'middle'"):
        build_arm({"backend": "feetech", "robot": "so101", "arm": "middle"})
    with pytest.raises(FileNotFoundError, match="no robot config"):
        build_arm({"backend": "feetech", "robot": "so102", "arm": "follower"})
    mixed = tmp_path / "mixed.yaml"
    mixed.write_text(
        "arms:\n  a:\n    backend: feetech\n    joints:\n"
        "      - {name: j1, id: 1, model: STS3215}\n      - {name: j2, id: 2, model: XL330-M288}\n"
    )
    with pytest.raises(ValueError, match="one bus speaks one protocol"):
        load_robot(mixed)


def test_mujoco_backend_builds_through_the_same_registry() -> None:
    built = build_arm({"backend": "mujoco", "scene": "so100_lift", "arm": "arm", "seed": 0})
    try:
        assert isinstance(built, BuiltArm) and built.rearm is None
        assert built.arm.spec.joint_names[0] == "shoulder_pan"
        assert built.arm.read().position.shape == (6,)
    finally:
        built.close()
