"""Camera calibration on images rendered by MuJoCo, where the truth is known exactly.

The scene: a ChArUco board texture on a thin box (a mocap body), a "wrist" camera on a mocap
"gripper" body at a known offset, and a fixed "scene" camera. Both cameras have a known fovy,
so fx = fy = 0.5 H / tan(fovy / 2).
"""

from __future__ import annotations

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import yaml

# Offscreen GL before mujoco loads (tests/conftest.py sets MUJOCO_GL; PyOpenGL must agree).
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

import mujoco  # noqa: E402

from apprentice.calibration.camera import (  # noqa: E402
    CharucoBoard,
    board_pose,
    calibrate_intrinsics,
    estimate_latency,
    eye_in_hand,
    eye_to_hand,
    read_camera_info,
    read_transform,
    rotation_angle,
    write_camera_info,
)
from apprentice.robot_io import CameraSpec  # noqa: E402

W, H, FOVY = 640, 480, 50.0
F_TRUE = 0.5 * H / np.tan(np.deg2rad(FOVY) / 2)  # px
BOARD = CharucoBoard(7, 5, 0.04, 0.03)
# MuJoCo cameras look along -z with y up; OpenCV optical frames look along +z with y down.
MJ_TO_CV = np.diag([1.0, -1.0, -1.0])
# The wrist camera in the gripper frame (MuJoCo camera frame): 3 cm forward, 6 cm up, tilted.
WRIST_POS = np.array([0.03, -0.01, 0.06])
WRIST_EULER_DEG = (12.0, -8.0, 20.0)  # MJCF euler, xyz
SCENE_CAM_POS = np.array([0.35, -0.25, 0.55])
# The board held by the gripper (eye to hand): 5 cm below it, turned 90° about z.
HELD_BOARD = np.array([[0, -1, 0, 0.0], [1, 0, 0, 0.0], [0, 0, 1, -0.05], [0, 0, 0, 1]])


def pose(pos: np.ndarray, rot: np.ndarray) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = rot, pos
    return T


def look_at(eye: np.ndarray, target: np.ndarray, roll: float) -> np.ndarray:
    """An OpenCV camera pose T_world_cam at `eye` looking at `target`, rolled (rad)."""
    z = (target - eye) / np.linalg.norm(target - eye)
    x = np.cross(z, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    c, s = np.cos(roll), np.sin(roll)
    r = np.column_stack([x, y, z]) @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    return pose(eye, r)


class Scene:
    def __init__(self) -> None:
        ok, png = cv2.imencode(".png", BOARD.image(px_per_square=120))
        assert ok
        hx = BOARD.squares_x * BOARD.square_m / 2
        hy = BOARD.squares_y * BOARD.square_m / 2
        ex, ey, ez = WRIST_EULER_DEG
        # The scene camera looks at the origin; MJCF wants its MuJoCo x and y axes.
        cv = look_at(SCENE_CAM_POS, np.zeros(3), 0.0)[:3, :3] @ MJ_TO_CV
        xyaxes = " ".join(f"{v:.9f}" for v in np.r_[cv[:, 0], cv[:, 1]])
        xml = f"""
<mujoco>
  <compiler angle="degree"/>
  <visual>
    <headlight ambient="1 1 1" diffuse="0 0 0" specular="0 0 0"/>
    <global offwidth="{W}" offheight="{H}"/>
  </visual>
  <asset>
    <texture name="board" type="2d" file="board.png"/>
    <material name="board" texture="board" specular="0" shininess="0"/>
    <material name="white" rgba="1 1 1 1" specular="0" shininess="0"/>
  </asset>
  <worldbody>
    <body name="board" mocap="true">
      <geom type="box" size="{hx} {hy} 0.002" material="board"/>
      <geom type="box" size="{hx + 0.04} {hy + 0.04} 0.001" pos="0 0 -0.002" material="white"/>
    </body>
    <body name="gripper" mocap="true" pos="0 0 0.5">
      <camera name="wrist" pos="{" ".join(map(str, WRIST_POS))}" euler="{ex} {ey} {ez}"
              fovy="{FOVY}"/>
    </body>
    <camera name="scene" pos="{" ".join(map(str, SCENE_CAM_POS))}" xyaxes="{xyaxes}"
            fovy="{FOVY}"/>
  </worldbody>
</mujoco>"""
        self.model = mujoco.MjModel.from_xml_string(xml, {"board.png": png.tobytes()})
        self.data = mujoco.MjData(self.model)
        self.renderer = mujoco.Renderer(self.model, H, W)
        self.small = mujoco.Renderer(self.model, H // 2, W // 2)  # for the many latency frames
        mujoco.mj_forward(self.model, self.data)
        m, d = self.model, self.data
        # Truths, read back from the compiled model (the MJCF euler → matrix is MuJoCo's).
        wrist = m.camera("wrist")
        self.gripper_cam = pose(wrist.pos.copy(), quat_to_mat(wrist.quat) @ MJ_TO_CV)
        self.base_scene_cam = pose(
            d.cam("scene").xpos.copy(), d.cam("scene").xmat.reshape(3, 3) @ MJ_TO_CV
        )

    def set_pose(self, body: str, T: np.ndarray) -> None:
        mocap = self.model.body(body).mocapid[0]
        self.data.mocap_pos[mocap] = T[:3, 3]
        q = np.empty(4)
        mujoco.mju_mat2Quat(q, T[:3, :3].ravel())
        self.data.mocap_quat[mocap] = q
        mujoco.mj_forward(self.model, self.data)

    def render(self, camera: str, small: bool = False) -> np.ndarray:
        renderer = self.small if small else self.renderer
        renderer.update_scene(self.data, camera=camera)
        return renderer.render()


def quat_to_mat(q: np.ndarray) -> np.ndarray:
    r = np.empty(9)
    mujoco.mju_quat2Mat(r, np.asarray(q, dtype=np.float64))
    return r.reshape(3, 3)


@pytest.fixture(scope="module")
def scene() -> Scene:
    return Scene()


@pytest.fixture(scope="module")
def wrist_views(scene: Scene):
    """15+ views of the static board from the wrist camera: (images, T_base_gripper list)."""
    rng = np.random.default_rng(3)
    scene.set_pose("board", np.eye(4))
    images, grippers = [], []
    while len(images) < 16:
        tilt, azim = np.deg2rad(rng.uniform(5, 40)), rng.uniform(0, 2 * np.pi)
        direction = np.array(
            [np.sin(tilt) * np.cos(azim), np.sin(tilt) * np.sin(azim), np.cos(tilt)]
        )
        eye = direction * rng.uniform(0.35, 0.55)
        target = np.r_[rng.uniform(-0.06, 0.06, 2), 0.0]
        base_cam = look_at(eye, target, rng.uniform(-0.6, 0.6))
        base_gripper = base_cam @ np.linalg.inv(scene.gripper_cam)
        scene.set_pose("gripper", base_gripper)
        images.append(scene.render("wrist"))
        grippers.append(base_gripper)
    return images, grippers


def test_intrinsics_focal_within_1_percent(wrist_views) -> None:
    images, _ = wrist_views
    result = calibrate_intrinsics(images, BOARD, "wrist")
    s = result.spec
    assert len(result.used) >= 14, f"board found in only {len(result.used)} views"
    assert abs(s.fx - F_TRUE) / F_TRUE < 0.01, (s.fx, F_TRUE)
    assert abs(s.fy - F_TRUE) / F_TRUE < 0.01, (s.fy, F_TRUE)
    assert abs(s.cx - (W - 1) / 2) < 3 and abs(s.cy - (H - 1) / 2) < 3, (s.cx, s.cy)
    assert result.rms_px < 0.5
    assert np.abs(s.distortion[:2]).max() < 0.05  # the renderer has no lens distortion


def _board_poses(images, spec: CameraSpec) -> tuple[list[int], list[np.ndarray]]:
    poses = [board_pose(im, BOARD, spec) for im in images]
    keep = [i for i, p in enumerate(poses) if p is not None]
    return keep, [poses[i] for i in keep]


def test_eye_in_hand_recovers_wrist_camera_within_5mm_1deg(scene: Scene, wrist_views) -> None:
    images, grippers = wrist_views
    spec = calibrate_intrinsics(images, BOARD, "wrist").spec
    keep, cam_board = _board_poses(images, spec)
    result = eye_in_hand([grippers[i] for i in keep], cam_board)
    X, truth = result.transform, scene.gripper_cam
    err_mm = np.linalg.norm(X[:3, 3] - truth[:3, 3]) * 1e3
    err_deg = np.degrees(rotation_angle(truth[:3, :3].T @ X[:3, :3]))
    assert err_mm < 5.0 and err_deg < 1.0, (err_mm, err_deg)
    assert result.residual_mm < 5.0 and result.residual_deg < 1.0, result


def test_eye_to_hand_recovers_scene_camera_within_5mm_1deg(scene: Scene) -> None:
    rng = np.random.default_rng(5)
    images, grippers = [], []
    for _ in range(15):
        # The gripper holds the board facing the scene camera, varied by ±25° and ±8 cm.
        centre = np.r_[rng.uniform(-0.08, 0.08, 2), rng.uniform(0.0, 0.1)]
        face = look_at(scene.base_scene_cam[:3, 3], centre, 0.0)[:3, :3] @ np.diag([1, -1, -1])
        wobble = cv2.Rodrigues(rng.uniform(-0.45, 0.45, 3))[0]
        base_board = pose(centre, face @ wobble)
        base_gripper = base_board @ np.linalg.inv(HELD_BOARD)
        scene.set_pose("gripper", base_gripper)
        scene.set_pose("board", base_board)
        images.append(scene.render("scene"))
        grippers.append(base_gripper)
    spec = CameraSpec("scene", W, H, F_TRUE, F_TRUE, (W - 1) / 2, (H - 1) / 2)
    keep, cam_board = _board_poses(images, spec)
    assert len(keep) >= 12
    result = eye_to_hand([grippers[i] for i in keep], cam_board)
    X, truth = result.transform, scene.base_scene_cam
    err_mm = np.linalg.norm(X[:3, 3] - truth[:3, 3]) * 1e3
    err_deg = np.degrees(rotation_angle(truth[:3, :3].T @ X[:3, :3]))
    assert err_mm < 5.0 and err_deg < 1.0, (err_mm, err_deg)


def test_latency_found_by_correlating_joint_and_image_motion(scene: Scene) -> None:
    """The board slides along x driven by a 'joint'; frames show the state LAG s before their
    stamps. The estimate must find LAG from the joint log and the stamped frames alone."""
    lag, fps, seconds = 0.070, 30.0, 3.0
    rng = np.random.default_rng(11)
    freqs, phases = rng.uniform(0.3, 1.6, 4), rng.uniform(0, 2 * np.pi, 4)

    def joint(t: np.ndarray) -> np.ndarray:  # m, an irregular back-and-forth with pauses
        return 0.04 * np.sum(np.sin(np.outer(t, freqs) + phases), axis=1) / 2

    joint_t = np.arange(-0.5, seconds + 0.5, 0.01)  # 100 Hz joint_states
    frame_t = np.arange(0.0, seconds, 1 / fps) + rng.normal(0, 0.002, int(seconds * fps))
    scene.set_pose("gripper", pose(np.array([0, 0, 2.0]), np.eye(3)))  # out of the way
    frames = []
    for x in joint(frame_t - lag):
        scene.set_pose("board", pose(np.array([x, 0, 0]), np.eye(3)))
        frames.append(scene.render("scene", small=True))
    est = estimate_latency(joint_t, joint(joint_t)[:, None], frame_t, frames)
    assert abs(est.offset_s - lag) < 0.010, est
    assert est.correlation > 0.8, est


def test_cli_writes_camera_info_and_hand_eye_that_load_back(
    scene: Scene, wrist_views, tmp_path
) -> None:
    images, grippers = wrist_views
    folder = tmp_path / "views"
    folder.mkdir()
    for i, im in enumerate(images):
        cv2.imwrite(str(folder / f"{i:03d}.png"), cv2.cvtColor(im, cv2.COLOR_RGB2BGR))
    (folder / "poses.yaml").write_text(
        yaml.safe_dump({f"{i:03d}.png": g.tolist() for i, g in enumerate(grippers)})
    )
    board = ["--squares", "7x5", "--square-mm", "40", "--marker-mm", "30"]
    info = tmp_path / "wrist.yaml"
    cli = [sys.executable, "-m", "apprentice.calibration.camera_cli"]
    run = subprocess.run(
        [
            *cli,
            "intrinsics",
            *sorted(map(str, folder.glob("*.png"))),
            *board,
            "--name",
            "wrist",
            "--out",
            str(info),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ,
    )
    assert run.returncode == 0, run.stderr
    spec = read_camera_info(info)
    assert spec.name == "wrist" and (spec.width, spec.height) == (W, H)
    assert abs(spec.fx - F_TRUE) / F_TRUE < 0.01
    hand_eye = tmp_path / "hand_eye.yaml"
    run = subprocess.run(
        [
            *cli,
            "hand-eye",
            str(folder),
            *board,
            "--camera-info",
            str(info),
            "--eye-in-hand",
            "--out",
            str(hand_eye),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ,
    )
    assert run.returncode == 0, run.stderr
    X = read_transform(hand_eye)
    assert np.linalg.norm(X[:3, 3] - scene.gripper_cam[:3, 3]) < 0.005


def test_camera_info_yaml_round_trip_is_exact(tmp_path) -> None:
    spec = CameraSpec(
        "top", 1280, 720, 911.25, 910.5, 640.125, 359.75, (0.1, -0.2, 1e-3, 2e-4, 0.0)
    )
    path = tmp_path / "top.yaml"
    write_camera_info(path, spec)
    doc = yaml.safe_load(path.read_text())
    assert doc["distortion_model"] == "plumb_bob" and doc["projection_matrix"]["cols"] == 4
    assert read_camera_info(path) == spec
