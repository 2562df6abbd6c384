"""Robot configs and the hardware graphs that run arm_driver on them."""

from __future__ import annotations

import pytest

from apprentice.drivers.factory import ROBOTS_DIR, BuiltArm, build_arm, load_robot
from apprentice.graph import load_graph
from apprentice_ros import arm_driver

HARDWARE_GRAPHS = ("so101", "koch", "aloha")
SIM_ALOHA_JOINTS = ("waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate")


@pytest.mark.parametrize("name", HARDWARE_GRAPHS)
def test_graph_parameters_are_declared_by_arm_driver_and_name_real_arms(name: str) -> None:
    graph = load_graph(name)
    arms = load_robot(name)
    assert {p.parameters["arm"] for p in graph.processes} == set(arms)  # every arm, once
    for proc in graph.processes:
        assert proc.executable == "arm_driver"
        unknown = set(proc.parameters) - set(arm_driver.DEFAULTS)
        assert not unknown, f"{name}: undeclared parameters {unknown}"
        for key, value in proc.parameters.items():  # ROS parameter types are fixed by defaults
            assert type(value) is type(arm_driver.DEFAULTS[key]), (name, key)
        p = proc.parameters
        cfg = arms[p["arm"]]
        assert p["backend"] == cfg.backend and p["backend"] in arm_driver.BACKENDS
        assert p["port"] == cfg.port and p["baudrate"] == cfg.baudrate == 1_000_000
        assert p["calibration_file"].endswith(f"{name}_{p['arm']}.yaml")  # the CLI's default


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
