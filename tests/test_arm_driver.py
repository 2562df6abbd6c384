"""Command validation and the arm driver core, on a real simulated arm."""

from __future__ import annotations

import numpy as np
import pytest

from apprentice.arm_driver import ArmDriver, check_positions
from apprentice.robot_io import Arm, ArmSpec
from apprentice.sim.world import MujocoWorld


@pytest.fixture(scope="module")
def world() -> MujocoWorld:
    return MujocoWorld("so100_lift", seed=0)


def test_arm_spec_validation() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        ArmSpec(("a", "a"), np.zeros(2), np.ones(2))
    with pytest.raises(ValueError, match="shape"):
        ArmSpec(("a", "b"), np.zeros(3), np.ones(3))
    with pytest.raises(ValueError, match="below"):
        ArmSpec(("a",), np.ones(1), np.zeros(1))
    with pytest.raises(ValueError, match="finite"):
        ArmSpec(("a",), np.array([-np.inf]), np.ones(1))


def test_check_positions_reasons() -> None:
    spec = ArmSpec(("j1", "j2"), np.array([-1.0, -2.0]), np.array([1.0, 2.0]))
    assert check_positions(np.array([0.5, -1.5]), spec).accepted
    assert "wrong length" in check_positions(np.array([0.5]), spec).reason
    assert "non-finite value for j2" in check_positions(np.array([0.0, np.nan]), spec).reason
    assert "non-finite" in check_positions(np.array([np.inf, 0.0]), spec).reason
    v = check_positions(np.array([0.0, 2.5]), spec)
    assert not v.accepted and "j2=2.5000 not in" in v.reason
    assert check_positions(np.array([1.0 + 1e-9, -2.0 - 1e-9]), spec).accepted  # rounding
    assert not check_positions(np.array([1.0 + 1e-4, 0.0]), spec).accepted


def test_mujoco_arm_is_an_arm(world: MujocoWorld) -> None:
    arm = world.arm("arm")
    assert isinstance(arm, Arm)
    r = arm.read()
    assert r.position.shape == r.velocity.shape == r.effort.shape == (6,)
    assert arm.spec.joint_names[0] == "shoulder_pan"


def test_driver_rejects_bad_commands_and_holds(world: MujocoWorld) -> None:
    driver = ArmDriver(world.arm("arm"))
    start = driver.target
    spec = driver.spec
    bad = [
        np.full(6, np.nan),
        np.zeros(5),
        np.where(np.arange(6) == 0, spec.upper[0] + 0.1, start),
    ]
    for q in bad:
        assert not driver.command(q).accepted
    assert not driver.command_named(["no_such_joint"], [0.0]).accepted
    assert not driver.command_named(["gripper", "gripper"], [0.0, 0.1]).accepted
    assert driver.counts["rejected"] == 5 and driver.counts["accepted"] == 0
    np.testing.assert_array_equal(driver.target, start)
    world.step(250)
    assert np.max(np.abs(world.arm("arm").read().position - start)) < 0.02


def test_named_command_changes_only_named_joints(world: MujocoWorld) -> None:
    driver = ArmDriver(world.arm("arm"))
    before = driver.target
    assert driver.command_named(["wrist_roll"], [before[4] + 0.2]).accepted
    after = driver.target
    assert after[4] == pytest.approx(before[4] + 0.2)
    np.testing.assert_array_equal(np.delete(after, 4), np.delete(before, 4))
    assert driver.stats()["accepted"] == 1
