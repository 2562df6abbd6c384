"""Command validation and the arm driver core, on a real simulated arm."""

from __future__ import annotations

import numpy as np
import pytest

from apprentice.arm_driver import MAX_STEP_TIME, ArmDriver, check_positions, velocity_limits
from apprentice.robot_io import Arm, ArmSpec, JointReading
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
    driver = ArmDriver(world.arm("arm"), max_velocity=10.0)
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


class Clock:
    """A hand-set clock for the velocity rule (s)."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_named_command_changes_only_named_joints(world: MujocoWorld) -> None:
    clock = Clock()
    driver = ArmDriver(world.arm("arm"), max_velocity=10.0, clock=clock)
    clock.t += 1.0  # a step of up to 10 rad/s × 0.05 s
    before = driver.target
    assert driver.command_named(["wrist_roll"], [before[4] + 0.2]).accepted
    after = driver.target
    assert after[4] == pytest.approx(before[4] + 0.2)
    np.testing.assert_array_equal(np.delete(after, 4), np.delete(before, 4))
    assert driver.stats()["accepted"] == 1


def test_each_command_moves_at_most_max_velocity_times_the_capped_interval(
    world: MujocoWorld,
) -> None:
    clock = Clock()
    limits = np.array([2.0, 1.0, 1.0, 1.0, 1.0, 0.5])
    driver = ArmDriver(world.arm("arm"), max_velocity=limits, clock=clock)
    spec, start = driver.spec, driver.target
    far = np.where(start - spec.lower > spec.upper - start, spec.lower, spec.upper)  # ≥ 1 rad
    direction = np.sign(far - start)
    expected = start.copy()
    # (seconds since the previous accepted command, the step each joint may take)
    for dt, allowed in [(10.0, MAX_STEP_TIME), (0.01, 0.01), (0.0, 0.0), (0.03, 0.03)]:
        clock.t += dt
        assert driver.command(far).accepted
        expected = expected + direction * limits * allowed
        np.testing.assert_allclose(driver.target, expected, atol=1e-12)
    assert driver.stats()["clamped"] == 4 and driver.stats()["accepted"] == 4
    # A step within the limit goes through as asked and is not counted.
    clock.t += 0.02
    small = expected + direction * limits * 0.01
    assert driver.command(small).accepted
    np.testing.assert_array_equal(driver.target, small)
    assert driver.stats()["clamped"] == 4
    # A rejected command does not count as the previous one: its time does not shorten a step.
    clock.t += 0.02
    assert not driver.command(np.full(6, np.nan)).accepted
    clock.t += 0.02
    assert driver.command(far).accepted
    np.testing.assert_allclose(driver.target, small + direction * limits * 0.04, atol=1e-12)


def test_velocity_limits_one_value_or_one_per_joint() -> None:
    np.testing.assert_array_equal(velocity_limits(3.0, 3), [3.0, 3.0, 3.0])
    np.testing.assert_array_equal(velocity_limits([3], 2), [3.0, 3.0])
    np.testing.assert_array_equal(velocity_limits([1, 2], 2), [1.0, 2.0])
    for bad in ([1.0, 2.0], [0.0], [-1.0], [np.inf], [np.nan], []):
        with pytest.raises(ValueError, match="max_velocity"):
            velocity_limits(bad, 3)


class StampedArm:
    """An Arm whose readings carry the stamps a test sets (the rest of the contract: no-ops)."""

    spec = ArmSpec(("j",), np.array([-1.0]), np.array([1.0]))

    def __init__(self, stamp: float) -> None:
        self.stamp = stamp

    def read(self) -> JointReading:
        return JointReading(self.stamp, np.zeros(1))

    def write(self, position: np.ndarray) -> None: ...

    def set_torque(self, enabled: bool) -> None: ...

    def close(self) -> None: ...


def test_readings_stamped_ahead_of_the_host_clock_are_dropped_and_never_block() -> None:
    host, mono = Clock(), Clock()
    host.t = 1_763_900_000.0
    arm = StampedArm(host.t)
    driver = ArmDriver(arm, max_velocity=1.0, clock=mono, host_clock=host)
    assert driver.read_new() is not None
    assert driver.read_new() is None  # the same stamp: no new state, not an error
    arm.stamp = host.t + 30.0  # a backend stamp 30 s ahead
    assert driver.read_new() is None
    assert driver.reading_report() == (
        "joint_states: dropped 1 stamped more than 0.5 s ahead of the host clock "
        "(latest +30.000 s) (1 future, 0 out of order in all)"
    )
    for _ in range(3):  # the correct readings after it are published
        host.t += 0.01
        mono.t += 0.01
        arm.stamp = host.t
        reading = driver.read_new()
        assert reading is not None and reading.stamp == host.t
    arm.stamp = host.t - 1.0  # the host clock stepped back: counted, not published
    assert driver.read_new() is None
    assert driver.reading_report() is None  # within 5 s of the last line
    stats = driver.stats()
    assert (stats["skipped_stale"], stats["future_stamps"], stats["stamps_back"]) == (1, 1, 1)
