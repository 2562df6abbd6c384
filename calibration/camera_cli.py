"""Camera calibration from the command line.

python -m apprentice.calibration.camera_cli board --out board.png        # print it, measure it
python -m apprentice.calibration.camera_cli capture --device /dev/video0 --out views/
python -m apprentice.calibration.camera_cli intrinsics views/*.png --out top.yaml
python -m apprentice.calibration.camera_cli hand-eye views/ --camera-info top.yaml --eye-in-hand

hand-eye reads views/poses.yaml: image file name → T_base_gripper (4×4 list, m) from the arm's
forward kinematics at the moment of that image. The outputs load back: top.yaml is the camera
node's `camera_info_file`; the hand-eye YAML holds translation, quaternion (x, y, z, w), matrix.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
import yaml

from apprentice.calibration.camera import (
    CharucoBoard,
    board_pose,
    calibrate_intrinsics,
    detect,
    eye_in_hand,
    eye_to_hand,
    read_camera_info,
    write_camera_info,
    write_transform,
)
from apprentice.errors import UserPathError, UserValueError, run_command


def _board(a: argparse.Namespace) -> CharucoBoard:
    sx, _, sy = a.squares.partition("x")
    return CharucoBoard(int(sx), int(sy), a.square_mm / 1e3, a.marker_mm / 1e3, a.dictionary)


def _load(path: Path) -> np.ndarray:
    if not path.is_file():  # before OpenCV, which warns on stderr and returns None
        raise UserPathError(f"{path}: no such image file")
    bgr = cv2.imread(str(path))
    if bgr is None:
        raise UserValueError(f"{path}: not an image OpenCV can read")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def cmd_board(a: argparse.Namespace) -> int:
    board = _board(a)
    cv2.imwrite(str(a.out), board.image(a.px_per_square, a.margin_px))
    print(
        f"wrote {a.out}: {board.squares_x}x{board.squares_y} squares of {a.square_mm:g} mm, "
        f"markers {a.marker_mm:g} mm ({board.dictionary}). Print at 100 %, then measure a "
        "square and pass the measured size."
    )
    return 0


def cmd_capture(a: argparse.Namespace) -> int:
    from apprentice.cameras import open_camera

    board = _board(a)
    a.out.mkdir(parents=True, exist_ok=True)
    cam = open_camera(a.backend, a.device, "calib", a.width, a.height, a.fps)
    saved = len(list(a.out.glob("*.png")))
    print("Enter: save a view (tilt the board 20-40°, cover the corners); q + Enter: stop")
    try:
        while input().strip().lower() != "q":
            image = cam.read(timeout=2.0).image
            found = detect(image, board)
            n = 0 if found is None else len(found.object_points)
            if n < 8:
                print(f"board not found well enough ({n} corners): not saved")
                continue
            path = a.out / f"{saved:03d}.png"
            cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            saved += 1
            print(f"saved {path} ({n} corners); {saved} views")
    finally:
        cam.close()
    return 0


def cmd_intrinsics(a: argparse.Namespace) -> int:
    images = [_load(p) for p in a.images]
    result = calibrate_intrinsics(images, _board(a), a.name)
    s = result.spec
    print(f"board found in {len(result.used)}/{len(images)} images; RMS {result.rms_px:.3f} px")
    print(f"fx {s.fx:.2f} fy {s.fy:.2f} cx {s.cx:.2f} cy {s.cy:.2f} px; d {list(s.distortion)}")
    write_camera_info(a.out, s)
    print(f"wrote {a.out}")
    return 0


def cmd_hand_eye(a: argparse.Namespace) -> int:
    poses = yaml.safe_load((a.folder / "poses.yaml").read_text())
    spec = read_camera_info(a.camera_info)
    board = _board(a)
    grippers, targets = [], []
    for name, T in sorted(poses.items()):
        found = board_pose(_load(a.folder / name), board, spec)
        if found is None:
            print(f"{name}: board not found, skipped")
            continue
        grippers.append(np.asarray(T, dtype=np.float64))
        targets.append(found)
    solve, parent = (eye_in_hand, "gripper") if a.eye_in_hand else (eye_to_hand, "base")
    result = solve(grippers, targets)
    print(
        f"{len(grippers)} views; T_{parent}_camera translation {result.transform[:3, 3]} m; "
        f"consistency {result.residual_mm:.2f} mm / {result.residual_deg:.3f} deg RMS"
    )
    write_transform(
        a.out,
        result.transform,
        parent,
        f"{spec.name}_optical_frame",
        residual_mm=result.residual_mm,
        residual_deg=result.residual_deg,
    )
    print(f"wrote {a.out}")
    return 0


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="apprentice calibrate-camera",
                                 description=__doc__.splitlines()[0])  # fmt: skip
    board = argparse.ArgumentParser(add_help=False)
    board.add_argument("--squares", default="7x5", help="chessboard squares, XxY")
    board.add_argument("--square-mm", type=float, default=30.0, help="measured square side")
    board.add_argument("--marker-mm", type=float, default=22.0, help="measured marker side")
    board.add_argument("--dictionary", default="DICT_5X5_100", help="ArUco dictionary")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("board", parents=[board], help="write the board image to print")
    p.add_argument("--px-per-square", type=int, default=200, help="image pixels per square")
    p.add_argument("--margin-px", type=int, default=100, help="white border, pixels")
    p.add_argument("--out", type=Path, default=Path("charuco_board.png"), help="PNG to write")
    p.set_defaults(run=cmd_board)

    p = sub.add_parser("capture", parents=[board], help="save views from a live camera")
    p.add_argument("--backend", default="uvc", help="camera backend: uvc or realsense")
    p.add_argument("--device", default="/dev/video0", help="UVC device or RealSense serial")
    p.add_argument("--width", type=int, default=640, help="pixels")
    p.add_argument("--height", type=int, default=480, help="pixels")
    p.add_argument("--fps", type=float, default=30.0, help="frames per second")
    p.add_argument("--out", type=Path, default=Path("calibration_views"), help="views folder")
    p.set_defaults(run=cmd_capture)

    p = sub.add_parser("intrinsics", parents=[board], help="images → CameraInfo YAML")
    p.add_argument("images", nargs="+", type=Path, help="views of the board (image files)")
    p.add_argument("--name", default="camera", help="camera name written into the YAML")
    p.add_argument("--out", type=Path, default=Path("camera_info.yaml"), help="YAML to write")
    p.set_defaults(run=cmd_intrinsics)

    p = sub.add_parser("hand-eye", parents=[board], help="images + arm poses → camera pose")
    p.add_argument("folder", type=Path, help="images and poses.yaml")
    p.add_argument("--camera-info", type=Path, required=True, help="the camera's intrinsics YAML")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--eye-in-hand", action="store_true", help="camera on the arm")
    mode.add_argument("--eye-to-hand", action="store_true", help="camera fixed, board held")
    p.add_argument("--out", type=Path, default=Path("hand_eye.yaml"), help="YAML to write")
    p.set_defaults(run=cmd_hand_eye)
    return ap


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    # bad input data: a message, not a traceback
    return run_command(a.run, a, also=(ValueError,), prog="apprentice calibrate-camera")


if __name__ == "__main__":
    sys.exit(main())
