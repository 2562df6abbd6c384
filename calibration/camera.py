"""Camera calibration: intrinsics from ChArUco views, hand-eye, camera-to-arm latency.

Pure functions over images and poses (no ROS, no prompts); the CLI (camera_cli.py) collects
the inputs. Conventions: images RGB uint8; poses are 4×4 homogeneous transforms T_a_b that map
points from frame b to frame a (m); camera frames are OpenCV optical frames (x right, y down,
z forward). Results are written as ROS CameraInfo YAML (camera_calibration_parsers format),
which the camera node loads (`camera_info_file`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import yaml

from apprentice.robot_io import CameraSpec


@dataclass(frozen=True)
class CharucoBoard:
    """A ChArUco board: squares_x × squares_y chessboard squares with ArUco markers in the white
    ones. Measure the printed square and marker sides: print scaling changes them."""

    squares_x: int = 7
    squares_y: int = 5
    square_m: float = 0.030
    marker_m: float = 0.022
    dictionary: str = "DICT_5X5_100"

    def __post_init__(self) -> None:
        if self.squares_x < 3 or self.squares_y < 3:
            raise ValueError("a ChArUco board needs at least 3×3 squares")
        if not 0 < self.marker_m < self.square_m:
            raise ValueError("markers must be smaller than the squares they sit in")
        if not hasattr(cv2.aruco, self.dictionary):
            raise ValueError(f"unknown ArUco dictionary {self.dictionary!r}")
        n_markers = self.squares_x * self.squares_y // 2
        size = int(self.dictionary.rsplit("_", 1)[1])
        if n_markers > size:
            raise ValueError(f"{self.dictionary} has {size} markers, the board needs {n_markers}")

    def cv(self) -> cv2.aruco.CharucoBoard:
        d = cv2.aruco.getPredefinedDictionary(getattr(cv2.aruco, self.dictionary))
        return cv2.aruco.CharucoBoard(
            (self.squares_x, self.squares_y), self.square_m, self.marker_m, d
        )

    def image(self, px_per_square: int = 100, margin_px: int = 0) -> np.ndarray:
        """The board to print or texture, (H, W) uint8 gray; margin is white."""
        w, h = self.squares_x * px_per_square, self.squares_y * px_per_square
        inner = self.cv().generateImage((w, h), marginSize=0)
        return cv2.copyMakeBorder(inner, *[margin_px] * 4, cv2.BORDER_CONSTANT, value=255)


@dataclass(frozen=True)
class Corners:
    """ChArUco corners found in one image: board points (N, 3) m and their pixels (N, 2)."""

    object_points: np.ndarray
    image_points: np.ndarray


def detect(image: np.ndarray, board: CharucoBoard, min_corners: int = 6) -> Corners | None:
    """The board's inner corners in an RGB (or gray) image, or None with fewer than min_corners."""
    gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    cv_board = board.cv()
    corners, ids, _, _ = cv2.aruco.CharucoDetector(cv_board).detectBoard(gray)
    if ids is None or len(ids) < min_corners:
        return None
    obj, img = cv_board.matchImagePoints(corners, ids)
    return Corners(obj.reshape(-1, 3).astype(np.float64), img.reshape(-1, 2).astype(np.float64))


@dataclass(frozen=True)
class Intrinsics:
    spec: CameraSpec
    rms_px: float  # reprojection error over all corners
    used: tuple[int, ...]  # indices of the images the board was found in
    board_poses: tuple[np.ndarray, ...]  # T_cam_board (4, 4) per used image


def calibrate_intrinsics(
    images: Sequence[np.ndarray],
    board: CharucoBoard,
    name: str = "camera",
    min_corners: int = 8,
    flags: int = cv2.CALIB_FIX_K3,
) -> Intrinsics:
    """Pinhole + plumb_bob intrinsics from views of the board.

    k3 is fixed by default: webcam lenses rarely need it and it overfits with few views. Views
    should tilt the board (±20-40°) and cover the image corners; fronto-parallel views alone
    cannot separate focal length from distance.
    """
    if not images:
        raise ValueError("no images")
    h, w = images[0].shape[:2]
    found = [(i, detect(im, board, min_corners)) for i, im in enumerate(images)]
    views = [(i, c) for i, c in found if c is not None]
    if len(views) < 4:
        raise ValueError(f"the board was found in {len(views)} of {len(images)} images; need 4+")
    obj = [c.object_points.astype(np.float32) for _, c in views]
    img = [c.image_points.astype(np.float32) for _, c in views]
    rms, k, dist, rvecs, tvecs = cv2.calibrateCamera(obj, img, (w, h), None, None, flags=flags)
    spec = CameraSpec(
        name, w, h, k[0, 0], k[1, 1], k[0, 2], k[1, 2], tuple(float(x) for x in dist.ravel()[:5])
    )
    poses = tuple(to_matrix(r, t) for r, t in zip(rvecs, tvecs, strict=True))
    return Intrinsics(spec, float(rms), tuple(i for i, _ in views), poses)


def to_matrix(rvec: np.ndarray, tvec: np.ndarray) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = cv2.Rodrigues(np.asarray(rvec, dtype=np.float64))[0]
    T[:3, 3] = np.asarray(tvec, dtype=np.float64).ravel()
    return T


def board_pose(
    image: np.ndarray, board: CharucoBoard, spec: CameraSpec, min_corners: int = 6
) -> np.ndarray | None:
    """T_cam_board (4, 4) from one image with known intrinsics, or None if the board is not seen."""
    c = detect(image, board, min_corners)
    if c is None:
        return None
    ok, rvec, tvec = cv2.solvePnP(
        c.object_points, c.image_points, spec.k, np.asarray(spec.distortion, dtype=np.float64)
    )
    return to_matrix(rvec, tvec) if ok else None


@dataclass(frozen=True)
class HandEye:
    transform: np.ndarray  # (4, 4): T_gripper_cam (eye in hand) or T_base_cam (eye to hand)
    # Spread of the pose that should be constant (the board in the base frame, eye in hand;
    # the board in the gripper frame, eye to hand) over the views: RMS mm and deg.
    residual_mm: float
    residual_deg: float


def _split(poses: Sequence[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    return [p[:3, :3] for p in poses], [p[:3, 3:4] for p in poses]


def _spread(poses: list[np.ndarray]) -> tuple[float, float]:
    t = np.array([p[:3, 3] for p in poses])
    mm = float(np.sqrt(np.mean(np.sum((t - t.mean(0)) ** 2, axis=1))) * 1e3)
    ref = poses[0][:3, :3]
    deg = [np.degrees(rotation_angle(ref.T @ p[:3, :3])) for p in poses[1:]]
    return mm, float(np.sqrt(np.mean(np.square(deg)))) if deg else 0.0


def rotation_angle(r: np.ndarray) -> float:
    """Angle (rad) of a rotation matrix."""
    return float(np.arccos(np.clip((np.trace(r) - 1) / 2, -1.0, 1.0)))


def _check(base_gripper: Sequence[np.ndarray], cam_target: Sequence[np.ndarray]) -> None:
    if len(base_gripper) != len(cam_target):
        raise ValueError(f"{len(base_gripper)} gripper poses but {len(cam_target)} board poses")
    if len(base_gripper) < 3:
        raise ValueError("hand-eye needs 3+ poses (10+ with varied rotation axes to be accurate)")


def eye_in_hand(
    base_gripper: Sequence[np.ndarray],
    cam_target: Sequence[np.ndarray],
    method: int = cv2.CALIB_HAND_EYE_PARK,
) -> HandEye:
    """T_gripper_cam for a camera on the arm, from arm poses T_base_gripper (forward kinematics)
    and board poses T_cam_target seen at the same moments, the board staying put."""
    _check(base_gripper, cam_target)
    r, t = cv2.calibrateHandEye(*_split(base_gripper), *_split(cam_target), method=method)
    X = np.eye(4)
    X[:3, :3], X[:3, 3] = r, t.ravel()
    mm, deg = _spread([bg @ X @ ct for bg, ct in zip(base_gripper, cam_target, strict=True)])
    return HandEye(X, mm, deg)


def eye_to_hand(
    base_gripper: Sequence[np.ndarray],
    cam_target: Sequence[np.ndarray],
    method: int = cv2.CALIB_HAND_EYE_PARK,
) -> HandEye:
    """T_base_cam for a camera fixed in the scene, from arm poses T_base_gripper and poses
    T_cam_target of a board held by the gripper."""
    _check(base_gripper, cam_target)
    # The same solver with the gripper poses inverted (T_gripper_base) yields T_base_cam.
    gripper_base = [np.linalg.inv(p) for p in base_gripper]
    r, t = cv2.calibrateHandEye(*_split(gripper_base), *_split(cam_target), method=method)
    X = np.eye(4)
    X[:3, :3], X[:3, 3] = r, t.ravel()
    mm, deg = _spread([gb @ X @ ct for gb, ct in zip(gripper_base, cam_target, strict=True)])
    return HandEye(X, mm, deg)


@dataclass(frozen=True)
class Latency:
    # Image content stamped t shows the arm as it was at t - offset_s: subtract offset_s from
    # the camera's stamps (positive: the camera stamps late, e.g. transfer time not removed).
    offset_s: float
    correlation: float  # Pearson r at the peak; below ~0.5 the motion was not informative


def image_motion(frames: Sequence[np.ndarray], size: tuple[int, int] = (160, 120)) -> np.ndarray:
    """Mean absolute gray-level change between consecutive frames (N-1,), a speed proxy."""
    small = [
        cv2.resize(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY), size, interpolation=cv2.INTER_AREA)
        for f in frames
    ]
    return np.array(
        [
            np.mean(np.abs(b.astype(np.float32) - a.astype(np.float32)))
            for a, b in zip(small, small[1:], strict=False)
        ]
    )


def estimate_latency(
    joint_t: np.ndarray,
    joint_q: np.ndarray,
    frame_t: np.ndarray,
    frames: Sequence[np.ndarray],
    max_offset_s: float = 0.3,
    step_s: float = 0.001,
) -> Latency:
    """Offset between camera stamps and joint-state stamps, by cross-correlating motion.

    joint_t (M,) s and joint_q (M, J) from joint_states; frame_t (N,) s the image stamps.
    Record 5-20 s of one joint moving back and forth in view with changing speed (pauses
    included): image motion between consecutive frames is correlated with the joint
    displacement over the same interval shifted by each candidate offset; the best offset
    is refined between grid steps with a parabola.
    """
    joint_t = np.asarray(joint_t, dtype=np.float64)
    q = np.asarray(joint_q, dtype=np.float64).reshape(len(joint_t), -1)
    frame_t = np.asarray(frame_t, dtype=np.float64)
    if len(frame_t) != len(frames) or len(frames) < 10:
        raise ValueError("need 10+ frames, one stamp each")
    motion = image_motion(frames)  # (N-1,)
    t0, t1 = frame_t[:-1], frame_t[1:]
    offsets = np.arange(-max_offset_s, max_offset_s + step_s / 2, step_s)
    # Only intervals whose shifted joint samples exist for every offset take part.
    keep = (t0 - max_offset_s >= joint_t[0]) & (t1 + max_offset_s <= joint_t[-1])
    if keep.sum() < 8:
        raise ValueError("joint states must cover the frames by max_offset_s on both sides")
    m = motion[keep]
    scores = np.empty(len(offsets))
    for k, off in enumerate(offsets):
        q0 = np.stack([np.interp(t0[keep] - off, joint_t, q[:, j]) for j in range(q.shape[1])], 1)
        q1 = np.stack([np.interp(t1[keep] - off, joint_t, q[:, j]) for j in range(q.shape[1])], 1)
        speed = np.abs(q1 - q0).sum(axis=1)
        scores[k] = np.corrcoef(m, speed)[0, 1] if speed.std() > 0 else -1.0
    best = int(np.argmax(scores))
    off = offsets[best]
    if 0 < best < len(offsets) - 1:
        a, b, c = scores[best - 1 : best + 2]
        denom = a - 2 * b + c
        if denom < 0:
            off += 0.5 * (a - c) / denom * step_s
    return Latency(float(off), float(scores[best]))


# ---- CameraInfo YAML (ROS camera_calibration_parsers format) --------------------------------


def _matrix(rows: int, cols: int, data: np.ndarray) -> dict:
    return {"rows": rows, "cols": cols, "data": [float(x) for x in np.ravel(data)]}


def write_camera_info(path: str | Path, spec: CameraSpec) -> None:
    p = np.zeros((3, 4))
    p[:, :3] = spec.k  # monocular, images not rectified: P = [K | 0]
    doc = {
        "image_width": spec.width,
        "image_height": spec.height,
        "camera_name": spec.name,
        "camera_matrix": _matrix(3, 3, spec.k),
        "distortion_model": "plumb_bob",
        "distortion_coefficients": _matrix(1, len(spec.distortion), np.array(spec.distortion)),
        "rectification_matrix": _matrix(3, 3, np.eye(3)),
        "projection_matrix": _matrix(3, 4, p),
    }
    Path(path).write_text(yaml.safe_dump(doc, sort_keys=False, default_flow_style=None))


def read_camera_info(path: str | Path) -> CameraSpec:
    doc = yaml.safe_load(Path(path).read_text())
    try:
        model = doc.get("distortion_model", "plumb_bob")
        if model != "plumb_bob":
            raise ValueError(f"{path}: distortion model {model!r}; only plumb_bob is supported")
        k = np.asarray(doc["camera_matrix"]["data"], dtype=np.float64).reshape(3, 3)
        d = doc.get("distortion_coefficients", {}).get("data", [0.0] * 5)
        return CameraSpec(
            str(doc.get("camera_name", "camera")),
            int(doc["image_width"]),
            int(doc["image_height"]),
            float(k[0, 0]),
            float(k[1, 1]),
            float(k[0, 2]),
            float(k[1, 2]),
            tuple(float(x) for x in d),
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path}: not a CameraInfo YAML ({exc!r})") from exc


def quaternion_xyzw(r: np.ndarray) -> np.ndarray:
    """Unit quaternion (x, y, z, w) of a rotation matrix (ROS order)."""
    w = np.sqrt(max(0.0, 1 + r[0, 0] + r[1, 1] + r[2, 2])) / 2
    x = np.copysign(np.sqrt(max(0.0, 1 + r[0, 0] - r[1, 1] - r[2, 2])) / 2, r[2, 1] - r[1, 2])
    y = np.copysign(np.sqrt(max(0.0, 1 - r[0, 0] + r[1, 1] - r[2, 2])) / 2, r[0, 2] - r[2, 0])
    z = np.copysign(np.sqrt(max(0.0, 1 - r[0, 0] - r[1, 1] + r[2, 2])) / 2, r[1, 0] - r[0, 1])
    q = np.array([x, y, z, w])
    return q / np.linalg.norm(q)


def write_transform(
    path: str | Path, T: np.ndarray, parent: str, child: str, **info: float
) -> None:
    """A hand-eye result: T_parent_child as translation (m) + quaternion (x, y, z, w) + matrix."""
    doc = {
        "parent_frame": parent,
        "child_frame": child,
        "translation": [float(x) for x in T[:3, 3]],
        "rotation_xyzw": [float(x) for x in quaternion_xyzw(T[:3, :3])],
        "matrix": [[float(x) for x in row] for row in T],
        **{k: float(v) for k, v in info.items()},
    }
    Path(path).write_text(yaml.safe_dump(doc, sort_keys=False, default_flow_style=None))


def read_transform(path: str | Path) -> np.ndarray:
    doc = yaml.safe_load(Path(path).read_text())
    T = np.asarray(doc["matrix"], dtype=np.float64)
    if T.shape != (4, 4):
        raise ValueError(f"{path}: matrix must be 4×4")
    return T
