"""Scripted ALOHA demonstrators: IK plans, joint-space streams, headless replay success."""

from __future__ import annotations

import numpy as np
import pytest

from apprentice.sim.world import MujocoWorld
from apprentice.teleop.scripted import (
    CONTROL_HZ,
    GRIP_CLOSED,
    GRIP_OPEN,
    ReplayResult,
    ScriptedDemo,
    replay_headless,
)
from apprentice.teleop.waypoints import PoseIK, Waypoint, interpolate, pitched_frame, slerp

SEEDS = range(10)
TASKS = ("aloha_transfer_cube", "aloha_insertion")
_VX = ("waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate", "gripper")


@pytest.fixture(scope="module")
def episodes() -> dict[str, list[tuple[ScriptedDemo, ReplayResult, MujocoWorld]]]:
    """Every task planned and replayed once on seeds 0-9 (the slow part, shared by the tests)."""
    out: dict[str, list] = {}
    for scene in TASKS:
        out[scene] = []
        for seed in SEEDS:
            demo = ScriptedDemo(scene, seed)
            world = MujocoWorld(scene, seed=seed)
            out[scene].append((demo, replay_headless(demo, world), world))
    return out


def test_transfer_cube_succeeds_on_9_of_10_seeds(episodes) -> None:
    runs = episodes["aloha_transfer_cube"]
    ok = [r.final.success for _, r, _ in runs]
    assert sum(ok) >= 9, [(d.seed, r.final.label) for d, r, _ in runs]
    for (demo, result, world), success in zip(runs, ok, strict=True):
        if success:
            # Handed over, not just touched: the cube ends up carried off by the left arm,
            # left of the meet point (x = 0) and in the air.
            cube = world.object_position("box")
            assert cube[0] < -0.03 and cube[2] > 0.15, (demo.seed, cube)
            # Stages in order: nothing done at the start, lifted by the right before the left.
            first = {s: int(np.argmax(result.stages >= s)) for s in (2, 4)}
            assert result.stages[0] == 0 and first[2] < first[4]


def test_insertion_succeeds_on_9_of_10_seeds(episodes) -> None:
    runs = episodes["aloha_insertion"]
    ok = [r.final.success for _, r, _ in runs]
    assert sum(ok) >= 9, [(d.seed, r.final.label) for d, r, _ in runs]
    for demo, result, world in runs:
        assert result.stages[0] == 0
        if result.final.success:
            # Inserted mid-air: peg and socket both off the table, peg entered from the right.
            peg, socket = world.object_position("peg"), world.object_position("socket")
            assert peg[2] > 0.08 and socket[2] > 0.08, demo.seed
            assert 0.0 < peg[0] - socket[0] < 0.12, (peg, socket)


@pytest.mark.parametrize("scene", TASKS)
def test_plans_converge_stay_in_limits_and_move_smoothly(episodes, scene: str) -> None:
    for demo, _, world in episodes[scene]:
        assert demo.ik_converged
        for arm, plan in demo.plans.items():
            spec = world.arm(arm).spec
            assert plan.joint_names == spec.joint_names
            assert plan.converged.all()
            assert plan.position_error.max() < 1e-3 and plan.rotation_error.max() < 1e-2
            # IK converged at every waypoint itself (each one lies on a control tick).
            for wp in demo.waypoints[arm]:
                k = int(round(wp.t * demo.rate_hz))
                assert plan.converged[k]
                point, rot = demo.context.ik[arm].forward(plan.targets[k, :-1])
                np.testing.assert_allclose(point, wp.position, atol=1e-3)
            q = plan.targets
            assert q.shape == (int(round(demo.duration * CONTROL_HZ)) + 1, len(spec.joint_names))
            assert np.all(q >= spec.lower - 1e-9) and np.all(q <= spec.upper + 1e-9)
            step = np.abs(np.diff(q, axis=0))  # per 20 ms
            # 0.06 rad per tick = 3 rad/s, within a ViperX's servo speed; measured max 0.034.
            assert step[:, :-1].max() < 0.06, (demo.seed, arm, step[:, :-1].max())
            assert step[:, -1].max() < 0.005  # gripper, m: 0.25 m/s
            # Demos start where the robot is: the scene's home pose.
            np.testing.assert_allclose(q[0], world.arm(arm).defn.home, atol=2e-3)


def test_joint_targets_interpolate_between_ticks_and_hold_after_the_end() -> None:
    demo = ScriptedDemo("aloha_transfer_cube", seed=3)
    assert 7.5 <= demo.duration <= 8.5  # ACT's 400 steps at 50 Hz
    assert demo.joint_names == {
        "left": tuple(f"left_{j}" for j in _VX),
        "right": tuple(f"right_{j}" for j in _VX),
    }
    period = 1.0 / demo.rate_hz
    for arm, plan in demo.plans.items():
        k = 137
        a, b = demo.joint_targets(k * period)[arm], demo.joint_targets((k + 1) * period)[arm]
        np.testing.assert_allclose(a, plan.targets[k])
        mid = demo.joint_targets((k + 0.25) * period)[arm]
        np.testing.assert_allclose(mid, 0.75 * a + 0.25 * b)
        np.testing.assert_allclose(demo.joint_targets(demo.duration + 3.0)[arm], plan.targets[-1])
        np.testing.assert_allclose(demo.joint_targets(-1.0)[arm], plan.targets[0])
    # The right arm closes on the cube and opens again at the handover; the left closes last.
    grip = np.array([demo.joint_targets(t)["right"][-1] for t in np.arange(0, 8, 0.1)])
    assert grip.min() == pytest.approx(GRIP_CLOSED) and grip[-1] == pytest.approx(GRIP_OPEN)
    assert demo.joint_targets(demo.duration)["left"][-1] == pytest.approx(GRIP_CLOSED)


def test_demo_is_a_function_of_scene_and_seed() -> None:
    a = ScriptedDemo("aloha_insertion", seed=5)
    b = ScriptedDemo("aloha_insertion", seed=5)
    c = ScriptedDemo("aloha_insertion", seed=6)
    for arm in ("left", "right"):
        np.testing.assert_array_equal(a.plans[arm].targets, b.plans[arm].targets)
        assert np.abs(a.plans[arm].targets - c.plans[arm].targets).max() > 0.01
    # The script knows where the sim put the objects, as ACT's reads the initial box pose.
    world = MujocoWorld("aloha_insertion", seed=5)
    for body in ("peg", "socket"):
        np.testing.assert_allclose(a.context.objects[body][:2], world.object_position(body)[:2])
    with pytest.raises(ValueError, match="no scripted demo"):
        ScriptedDemo("no_such_scene", seed=0)


def test_pose_ik_recovers_reachable_poses() -> None:
    world = MujocoWorld("aloha_transfer_cube", seed=0)
    rng = np.random.default_rng(0)
    for name in ("left", "right"):
        arm = world.arm(name)
        ik = PoseIK(world.model, arm.defn)
        home = np.array(arm.defn.home[:-1])
        for _ in range(10):
            q_true = np.clip(home + rng.uniform(-0.4, 0.4, home.size), ik.lower, ik.upper)
            point, rot = ik.forward(q_true)
            sol = ik.solve(point, rot, home)
            assert sol.converged, (sol.position_error, sol.axis_error)
            p2, r2 = ik.forward(sol.q)
            np.testing.assert_allclose(p2, point, atol=1e-3)
            np.testing.assert_allclose(r2, rot, atol=2e-2)
        # An unreachable point (2 m away) is reported, not silently accepted.
        far = ik.solve(np.array([0.0, 2.5, 0.3]), pitched_frame(1.0, 0.5), home)
        assert not far.converged and far.position_error > 1.0


def test_interpolation_is_linear_in_position_and_slerps_rotation() -> None:
    r0, r1 = pitched_frame(1.0, 0.0), pitched_frame(1.0, np.pi / 2)
    half = slerp(r0, r1, 0.5)
    np.testing.assert_allclose(half, pitched_frame(1.0, np.pi / 4), atol=1e-9)
    np.testing.assert_allclose(half @ half.T, np.eye(3), atol=1e-9)
    wps = [
        Waypoint(1.0, np.zeros(3), r0, GRIP_OPEN),
        Waypoint(3.0, np.array([0.2, 0.0, 0.0]), r1, GRIP_CLOSED),
    ]
    p, r, g = interpolate(wps, 2.0)  # halfway in time is halfway along the (eased) segment
    np.testing.assert_allclose(p, [0.1, 0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(r, half, atol=1e-9)
    assert g == pytest.approx(0.5 * (GRIP_OPEN + GRIP_CLOSED))
    # Held before the first and after the last waypoint; eased: slow near the waypoints.
    assert interpolate(wps, 0.0)[2] == GRIP_OPEN and interpolate(wps, 9.0)[2] == GRIP_CLOSED
    early = interpolate(wps, 1.1)[0][0]
    assert 0 < early < 0.2 * 0.05


def test_pass_through_waypoints_keep_moving_and_stops_stop() -> None:
    r = pitched_frame(1.0, 0.0)
    a, b, c = np.zeros(3), np.array([0.2, 0.0, 0.0]), np.array([0.2, 0.0, -0.1])

    def speed(wps: list[Waypoint], t: float, h: float = 1e-4) -> float:
        step = interpolate(wps, t + h)[0] - interpolate(wps, t - h)[0]
        return float(np.linalg.norm(step) / (2 * h))

    stop = [Waypoint(0.0, a, r, GRIP_OPEN), Waypoint(1.0, b, r, GRIP_OPEN),
            Waypoint(2.0, c, r, GRIP_OPEN)]  # fmt: skip
    through = [stop[0], Waypoint(1.0, b, r, GRIP_OPEN, through=True), stop[2]]
    assert speed(stop, 1.0) < 1e-3  # the quintic ease stops at every waypoint
    v = speed(through, 1.0)
    assert v == pytest.approx(np.linalg.norm(c - a) / 2.0, rel=1e-3)  # Catmull-Rom velocity
    assert speed(through, 1.0 - 1e-3) == pytest.approx(v, rel=0.02)  # continuous across it
    assert speed(through, 1.0 + 1e-3) == pytest.approx(v, rel=0.02)
    for wps in (stop, through):  # the waypoints themselves are reached, the ends are stops
        np.testing.assert_allclose(interpolate(wps, 1.0)[0], b, atol=1e-12)
        assert speed(wps, 0.0 + 1e-3) < 0.01 and speed(wps, 2.0 - 1e-3) < 0.01


def test_scripted_transfer_has_no_full_stop_before_the_grasp() -> None:
    """Between the start and the grasp, some joint of the right arm is always moving (the
    pass-through approach waypoint): the scene is never still for a learned policy to stall."""
    demo = ScriptedDemo("aloha_transfer_cube", seed=3)
    right = demo.plans["right"].targets[:, :-1]  # (T, 6) at 50 Hz
    speed = np.abs(np.diff(right, axis=0)).max(axis=1) * demo.rate_hz  # rad/s
    t = np.arange(len(speed)) / demo.rate_hz
    moving = speed[(t > 0.3) & (t < 2.4)]
    assert moving.min() > 0.02, moving.min()
