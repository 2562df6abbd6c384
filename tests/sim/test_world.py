"""The MuJoCo backend: scenes, randomization, tracking, cameras, task success, pacing."""

from __future__ import annotations

import time

import numpy as np
import pytest

from apprentice.robot_io import Camera
from apprentice.sim.ik import ArmIK
from apprentice.sim.scenes import SCENES
from apprentice.sim.world import MujocoArm, MujocoWorld


@pytest.mark.parametrize("scene", sorted(SCENES))
def test_scene_loads_at_500hz_with_arms_and_cameras(scene: str) -> None:
    world = MujocoWorld(scene, seed=0)
    assert world.model.opt.timestep <= 0.002
    for name in world.arm_names:
        spec = world.arm(name).spec
        q = world.arm(name).read().position
        assert np.all(q >= spec.lower - 1e-6) and np.all(q <= spec.upper + 1e-6)
    assert world.task_status().stage == 0 and not world.task_status().success
    with pytest.raises(ValueError, match="no camera"):
        world.camera("nope")


def test_objects_randomized_by_seed() -> None:
    a = MujocoWorld("aloha_insertion", seed=3)
    b = MujocoWorld("aloha_insertion", seed=3)
    c = MujocoWorld("aloha_insertion", seed=4)
    for body in ("peg", "socket"):
        np.testing.assert_array_equal(a.object_position(body), b.object_position(body))
        assert np.linalg.norm(a.object_position(body) - c.object_position(body)) > 1e-3
    a.reset(4)
    np.testing.assert_allclose(a.object_position("peg"), c.object_position("peg"))


@pytest.mark.parametrize("scene,arm", [("aloha_transfer_cube", "right"), ("so100_lift", "arm")])
def test_position_targets_tracked_within_002_rad_in_1s(scene: str, arm: str) -> None:
    world = MujocoWorld(scene, seed=0)
    a = world.arm(arm)
    q0 = a.read().position
    target = np.clip(q0 + 0.25 * np.sign(np.arange(q0.size) % 2 - 0.5), a.spec.lower, a.spec.upper)
    target[-1] = q0[-1]  # gripper stays
    a.write(target)
    world.step(int(1.0 / world.model.opt.timestep))
    err = np.abs(a.read().position - target)
    assert err.max() < 0.02, f"tracking error after 1 s: {np.round(err, 4)}"


def test_camera_renders_with_intrinsics_and_increasing_stamps() -> None:
    world = MujocoWorld("aloha_transfer_cube", seed=0)
    world.start()
    try:
        cam = world.camera("top", width=160, height=120, fps=30)
        assert isinstance(cam, Camera)
        frames = [cam.read() for _ in range(6)]
    finally:
        world.stop()
    for f in frames:
        assert f.image.shape == (120, 160, 3) and f.image.dtype == np.uint8
    assert frames[-1].image.std() > 5  # a scene, not a blank buffer
    stamps = np.array([f.stamp for f in frames])
    assert np.all(np.diff(stamps) > 0)
    assert abs(stamps[-1] - time.time()) < 0.5  # stamps are on the host clock
    k = cam.spec.k
    assert k[0, 0] == pytest.approx(k[1, 1]) and k[0, 2] == pytest.approx(79.5)


def _red_centroid_x(image: np.ndarray) -> tuple[float, float]:
    """(x centroid, area) of the red cube, weighted by how red each pixel is (0..1)."""
    rgb = image.astype(float)
    red = np.clip((rgb[..., 0] - rgb[..., 1]) / 200.0, 0.0, 1.0)  # the table and arms are grey
    xs = np.arange(image.shape[1])[None, :]
    return float((red * xs).sum() / red.sum()), float(red.sum())


def _render_cube_at(world: MujocoWorld, cam, xs: list[float]) -> list[np.ndarray]:
    box = world.model.body("box")
    adr = world.model.jnt_qposadr[box.jntadr[0]]
    images = []
    for x in xs:
        with world.lock:
            world.data.qpos[adr] = x
            world.data.qvel[:] = 0.0
        world.step(1)  # a new physics state for the camera to show
        images.append(cam.read().image)
    return images


def test_lens_zooms_and_supersampling_gives_sub_pixel_position() -> None:
    """A narrower fovy magnifies (area × (tan(78°/2)/tan(50°/2))² ≈ 3) and changes fx; with
    4×4 supersampling, a cube moved by quarter pixels moves its image centroid by quarter
    pixels (measured 0.22-0.29 px), with 2×2 by 0.06-0.45 px; rendered aliased, the image
    moves in jumps (up to 0.84 px) or not at all."""
    # Physics stepped here, not paced on a thread: the cube is spawned above the table and
    # must have settled (a falling cube also moves in the image), whatever the host's speed.
    world = MujocoWorld("aloha_transfer_cube", seed=0)
    world.step(1000)  # 2 s
    x0 = float(world.object_position("box")[0])
    wide = world.camera("top", 128, 96, fps=200)
    (img_wide,) = _render_cube_at(world, wide, [x0])
    sharp = world.camera("top", 128, 96, fps=200, fovy=50.0)
    smooth = world.camera("top", 128, 96, fps=200, fovy=50.0, supersample=4)
    pixel_m = 2 * 0.75 * np.tan(np.deg2rad(25.0)) / 96  # m per pixel near the cube top
    xs = [x0 + i * 0.25 * pixel_m for i in range(9)]  # 0 .. 2 px in quarter pixels
    sharp_imgs = _render_cube_at(world, sharp, xs)
    smooth_imgs = _render_cube_at(world, smooth, xs)
    half_imgs = _render_cube_at(world, world.camera("top", 128, 96, 200, 50.0, 2), xs)
    # Each reader keeps its own lens: a new default reader still sees the scene's 78°, and the
    # 50° reader renders as before after it.
    wide_again = world.camera("top", 128, 96, fps=200)
    (img_wide_again,) = _render_cube_at(world, wide_again, [x0])
    (sharp_again,) = _render_cube_at(world, sharp, [xs[0]])
    assert wide_again.spec.fx == pytest.approx(wide.spec.fx)
    assert np.array_equal(img_wide_again, img_wide) and np.array_equal(sharp_again, sharp_imgs[0])
    k_wide, k_zoom = wide.spec.fx, smooth.spec.fx
    assert k_wide == pytest.approx(0.5 * 96 / np.tan(np.deg2rad(78.0) / 2))
    assert k_zoom == pytest.approx(0.5 * 96 / np.tan(np.deg2rad(50.0) / 2))
    area_ratio = _red_centroid_x(smooth_imgs[0])[1] / _red_centroid_x(img_wide)[1]
    assert 2.2 < area_ratio < 4.0, area_ratio
    assert smooth_imgs[0].shape == (96, 128, 3) and smooth_imgs[0].dtype == np.uint8
    cx_smooth = np.array([_red_centroid_x(i)[0] for i in smooth_imgs])
    cx_sharp = np.array([_red_centroid_x(i)[0] for i in sharp_imgs])
    cx_half = np.array([_red_centroid_x(i)[0] for i in half_imgs])
    steps = np.diff(cx_smooth)
    print("centroids, 4x4:", np.round(cx_smooth, 3), "2x2:", np.round(cx_half, 3),
          "aliased:", np.round(cx_sharp, 3))  # fmt: skip
    # quarter-pixel moves, each seen (within a factor ~2), the same way round
    assert np.all(np.abs(steps) > 0.08) and (np.all(steps > 0) or np.all(steps < 0)), steps
    assert abs(abs(cx_smooth[-1] - cx_smooth[0]) - 2.0) < 0.6, cx_smooth
    # 2x2 (the graphs'): coarser, yet every quarter-pixel move still shows, the same way round
    half_steps = np.diff(cx_half) * np.sign(steps[0])
    assert np.all(half_steps > 0.03) and abs(half_steps.sum() - 2.0) < 0.6, cx_half
    # aliased: the centroid stays put, then jumps (by about a column of the cube at once)
    assert np.abs(np.diff(cx_sharp)).max() > 1.5 * np.abs(steps).max(), (cx_sharp, cx_smooth)


def test_supersample_must_be_a_whole_number() -> None:
    world = MujocoWorld("aloha_transfer_cube", seed=0)
    assert world.camera("top", 128, 96, supersample=2.0).supersample == 2  # a YAML float
    for bad in (2.5, "2", True, 0):
        with pytest.raises(ValueError):
            world.camera("top", 128, 96, supersample=bad)


def test_realtime_pacing() -> None:
    world = MujocoWorld("so100_lift", seed=0)
    t0 = world.sim_time
    world.start()
    time.sleep(1.0)
    world.stop()
    assert 0.85 < world.sim_time - t0 < 1.1


def _move(world: MujocoWorld, arm: MujocoArm, q_arm: np.ndarray, grip: float, seconds: float):
    """Linear joint-space interpolation at 50 Hz, like a teleop stream."""
    q0 = arm.read().position
    q1 = np.append(q_arm, grip)
    steps = int(seconds * 50)
    per_tick = int(0.02 / world.model.opt.timestep)
    for i in range(1, steps + 1):
        arm.write(q0 + (q1 - q0) * i / steps)
        world.step(per_tick)


def scripted_lift(world: MujocoWorld, arm_name: str, approach_axis, grip_open, grip_closed):
    """Above the cube, down, close, lift 8 cm: joint targets from IK on the model."""
    arm = world.arm(arm_name)
    ik = ArmIK(world.model, arm.defn, approach_axis)
    world.step(250)  # let the cube settle
    cube = world.object_position("box")
    down = np.array([0.0, 0.0, -1.0])
    q = arm.read().position[:-1]
    stages = []
    for dz, grip, seconds in (
        (0.10, grip_open, 1.0),
        (0.0, grip_open, 1.0),
        (0.0, grip_closed, 0.5),
        (0.08, grip_closed, 1.0),
    ):
        sol = ik.solve(cube + [0.0, 0.0, dz], down, q, world.data.qpos.copy())
        assert sol.converged, f"IK: {sol.position_error:.4f} m, {sol.axis_error:.3f} rad"
        q = sol.q
        _move(world, arm, q, grip, seconds)
        stages.append(world.task_status())
    return stages, world.object_position("box")[2] - cube[2]


@pytest.mark.parametrize("seed", [0, 1])
def test_success_flips_when_so100_lifts_the_cube(seed: int) -> None:
    world = MujocoWorld("so100_lift", seed=seed)
    stages, raised = scripted_lift(world, "arm", (0, -1, 0), 0.8, -0.2)
    assert not any(s.success for s in stages[:-1])
    assert stages[-1].success and stages[-1].label == "lifted"
    assert raised > 0.03


def test_transfer_cube_stage_reaches_lifted_with_right_arm() -> None:
    world = MujocoWorld("aloha_transfer_cube", seed=0)
    stages, raised = scripted_lift(world, "right", (1, 0, 0), 0.057, 0.021)
    assert stages[0].stage == 0
    assert stages[-1].label == "lifted" and not stages[-1].success  # not yet transferred
    assert raised > 0.02


def test_torque_off_makes_the_arm_limp() -> None:
    world = MujocoWorld("so100_lift", seed=0)
    arm = world.arm("arm")
    q0 = arm.read().position
    arm.set_torque(False)
    world.step(500)
    sagged = np.abs(arm.read().position - q0).max()
    arm.set_torque(True)
    arm.write(q0)
    world.step(500)
    assert sagged > 0.05  # gravity wins without torque
    assert np.abs(arm.read().position - q0).max() < 0.02


def test_divergence_starts_a_fresh_episode_and_time_keeps_going() -> None:
    world = MujocoWorld("so100_lift", seed=0)
    world.step(50)
    t = world.sim_time
    world.data.qpos[0] = np.nan  # what a blown-up simulation looks like to MuJoCo
    world.step(1)  # MuJoCo resets its data (time → 0); the world must not go back in time
    assert world.stats["divergences"] == 1
    assert world.sim_time > t
    assert np.all(np.isfinite(world.data.qpos))
    np.testing.assert_allclose(world.arm("arm").read().position, world.arm("arm").defn.home)


def test_resets_from_another_thread_never_stall_the_physics() -> None:
    """A /sim/reset arrives on the executor's thread while physics runs on its own: the
    pacing thread must not mistake the reset's moment of time 0 for a lag (it once slept
    for the whole elapsed sim time)."""
    import threading

    world = MujocoWorld("aloha_transfer_cube", seed=0)
    world.start()
    stop = threading.Event()

    def resetter() -> None:
        while not stop.is_set():
            world.reset(world.seed + 1)
            time.sleep(0.001)

    thread = threading.Thread(target=resetter)
    t0 = world.sim_time
    thread.start()
    time.sleep(3.0)
    stop.set()
    thread.join()
    world.stop()
    assert world.sim_time - t0 > 2.6
    assert world.stats["resyncs"] == 0
