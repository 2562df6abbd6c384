"""End-effector waypoints and how the scripted demonstrators follow them (teleop.scripted).

A waypoint is a time, an end-effector point, a gripper frame and a gripper opening; segments
between waypoints are straight lines with a quintic ease in time (or pass through at the line's
velocity), rotations are slerped. PoseIK turns a pose into one arm's joints on the scene's own
MuJoCo model (damped least squares on the full 6-DoF pose, warm-started tick to tick).

Frames: a gripper orientation is a rotation matrix whose columns are the finger axis
(approach), the axis the fingers close along, and their cross product.
"""

from __future__ import annotations

from dataclasses import dataclass

import mujoco
import numpy as np

from apprentice.sim.ik import IKResult
from apprentice.sim.scenes import ArmDef


@dataclass(frozen=True)
class Waypoint:
    t: float  # s from episode start
    position: np.ndarray  # (3,) end-effector point in world, m
    rotation: np.ndarray  # (3, 3) gripper frame in world (columns: approach, closing, normal)
    gripper: float  # gripper joint: ViperX finger slide (m), SO-100 jaw angle (rad)
    # Pass through without stopping: the end effector keeps the velocity of the line from the
    # previous waypoint to the next one here. Otherwise every waypoint is a stop.
    through: bool = False


def gripper_frame(approach: np.ndarray, closing: np.ndarray) -> np.ndarray:
    """Rotation (3, 3) with the fingers along `approach`, closing along `closing` (made normal)."""
    x = np.asarray(approach, float) / np.linalg.norm(approach)
    y = np.asarray(closing, float) - x * (x @ closing)
    y /= np.linalg.norm(y)
    return np.column_stack([x, y, np.cross(x, y)])


def pitched_frame(toward_x: float, pitch: float) -> np.ndarray:
    """Fingers pointing along ±x (sign of `toward_x`), tilted `pitch` rad below horizontal,
    closing along world ±y (the ViperX's neutral closing axis, so no wrist roll is needed)."""
    s = np.sign(toward_x)
    return gripper_frame(np.array([s * np.cos(pitch), 0.0, -np.sin(pitch)]), np.array([0, s, 0]))


def rotation_error(target: np.ndarray, current: np.ndarray) -> np.ndarray:
    """Rotation vector (3,) in world coordinates taking `current` to `target` (rad)."""
    r = target @ current.T
    v = 0.5 * np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])  # sin·axis
    s, c = np.linalg.norm(v), 0.5 * (np.trace(r) - 1.0)
    if s < 1e-9:
        return np.zeros(3)  # identical (a 180° flip never happens with warm-started ticks)
    return v / s * np.arctan2(s, c)


def radial(rotation: np.ndarray, position: np.ndarray, base: np.ndarray) -> np.ndarray:
    """`rotation` turned about world z so its approach axis points away from the arm's waist
    axis, through `position`. Shoulder, elbow and wrist_angle all bend in that vertical plane,
    so such a pose needs no forearm roll; off it, near wrist_angle = 0, it needs a large one."""
    approach, away = rotation[:2, 0], position[:2] - base[:2]
    # Fingers (within 0.06°) vertical, or the point on the waist axis: any yaw will do. (The
    # SO-100's home pose points its jaws down but for 4e-6 of horizontal: that is no direction.)
    if np.linalg.norm(approach) < 1e-3 or np.linalg.norm(away) < 1e-6:
        return rotation
    yaw = np.arctan2(away[1], away[0]) - np.arctan2(approach[1], approach[0])
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ rotation


def _quat(rot: np.ndarray) -> np.ndarray:
    q = np.zeros(4)
    mujoco.mju_mat2Quat(q, rot.reshape(-1))
    return q


def slerp(r0: np.ndarray, r1: np.ndarray, s: float) -> np.ndarray:
    """Rotation a fraction `s` of the way from r0 to r1 along the shortest arc."""
    q0, q1 = _quat(r0), _quat(r1)
    if q0 @ q1 < 0:
        q1 = -q1
    angle = np.arccos(np.clip(q0 @ q1, -1.0, 1.0))
    if angle < 1e-9:
        q = q0
    else:
        q = (np.sin((1 - s) * angle) * q0 + np.sin(s * angle) * q1) / np.sin(angle)
    rot = np.zeros(9)
    mujoco.mju_quat2Mat(rot, q / np.linalg.norm(q))
    return rot.reshape(3, 3)


def _through_velocity(waypoints: list[Waypoint], i: int) -> np.ndarray:
    """End-effector velocity (3,) m/s at waypoint i: 0 at a stop, else the mean velocity from
    the previous waypoint to the next (Catmull-Rom)."""
    w = waypoints[i]
    if not w.through or i == 0 or i == len(waypoints) - 1:
        return np.zeros(3)
    a, b = waypoints[i - 1], waypoints[i + 1]
    return (b.position - a.position) / (b.t - a.t)


def interpolate(waypoints: list[Waypoint], t: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Position, rotation (slerp) and gripper (linear) at time t; held past the ends.

    Between two stops the position follows the straight line with a quintic ease in time (no
    velocity jumps). A segment that starts or ends at a pass-through waypoint is a cubic
    Hermite curve with that waypoint's velocity (velocity stays continuous, the arm does not
    stop). Stops matter to a learned policy: where the whole scene stands still for a moment,
    its observation cannot say whether the next action is "go on" or "wait", and it stalls."""
    if t <= waypoints[0].t:
        w = waypoints[0]
        return w.position, w.rotation, w.gripper
    for i, (a, b) in enumerate(zip(waypoints, waypoints[1:], strict=False)):
        if t <= b.t:
            dt = b.t - a.t
            u = (t - a.t) / dt
            s = u * u * u * (10.0 + u * (6.0 * u - 15.0))  # quintic ease: no velocity jumps
            if a.through or b.through:
                va, vb = _through_velocity(waypoints, i), _through_velocity(waypoints, i + 1)
                h00, h10 = 2 * u**3 - 3 * u**2 + 1, u**3 - 2 * u**2 + u
                h01, h11 = -2 * u**3 + 3 * u**2, u**3 - u**2
                position = h00 * a.position + h10 * dt * va + h01 * b.position + h11 * dt * vb
            else:
                position = a.position + s * (b.position - a.position)
            gripper = a.gripper + s * (b.gripper - a.gripper)
            return position, slerp(a.rotation, b.rotation, s), gripper
    w = waypoints[-1]
    return w.position, w.rotation, w.gripper


class PoseIK:
    """Damped least-squares IK on the full 6-DoF pose of one arm's end-effector point.

    apprentice.sim.ik.ArmIK constrains a point + one axis (5 DoF); a handover needs the wrist
    roll too (which way the fingers close), so this one matches the whole rotation. A weak pull
    of the roll joints toward their rest value picks the branch at the wrist singularity
    (wrist_angle = 0, where forearm_roll and wrist_rotate line up): without it a path through
    the singularity can spin both rolls half a turn in opposite directions within a tick.
    """

    def __init__(self, model: mujoco.MjModel, arm: ArmDef, rest_weight: float = 0.01):
        self.model = model
        self.data = mujoco.MjData(model)
        self.body = model.body(arm.ee_body).id
        self.offset = np.array(arm.ee_offset, dtype=float)
        self.axes = np.array(arm.ee_axes, dtype=float).T  # (3, 3) gripper frame in body frame
        joints = [model.joint(j).id for j in arm.mjcf_joints[:-1]]  # last is the gripper
        self.qadr = np.array([model.jnt_qposadr[j] for j in joints])
        self.dofs = np.array([model.jnt_dofadr[j] for j in joints])
        self.lower = np.array([model.jnt_range[j][0] for j in joints])
        self.upper = np.array([model.jnt_range[j][1] for j in joints])
        self.rest = np.array(arm.home[: len(joints)], dtype=float)
        # m per rad, weak against task rows of ~0.3 m/rad: it only decides where the task
        # leaves the roll free; solve() then drops it to remove the bias it leaves elsewhere.
        roll = np.array(["forearm_roll" in j for j in arm.joints[: len(joints)]])
        self.rest_weights = rest_weight * roll
        self.forward(self.rest)
        self.base = self.data.xanchor[joints[0]].copy()  # on the waist axis, m

    def forward(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """End-effector point (3,) and gripper frame (3, 3) in world coordinates."""
        self.data.qpos[self.qadr] = q
        mujoco.mj_kinematics(self.model, self.data)
        mujoco.mj_comPos(self.model, self.data)  # mj_jac needs the com-based frames
        rot = self.data.xmat[self.body].reshape(3, 3)
        return self.data.xpos[self.body] + rot @ self.offset, rot @ self.axes

    def solve(
        self,
        position: np.ndarray,
        rotation: np.ndarray,
        q0: np.ndarray,
        iters: int = 100,
        damping: float = 1e-4,
        rot_weight: float = 0.2,  # m per rad: how much a radian of rotation counts against a metre
        max_step: float = 0.2,  # rad per iteration, keeps far jumps on a smooth path
    ) -> IKResult:
        q = np.clip(np.asarray(q0, float).copy(), self.lower, self.upper)
        jacp = np.zeros((3, self.model.nv))
        jacr = np.zeros((3, self.model.nv))
        # First with the pull to rest (picks the branch), then without it (removes its bias).
        for w in (np.diag(self.rest_weights), np.zeros((0, q.size))):
            for _ in range(iters):
                point, rot = self.forward(q)
                mujoco.mj_jac(self.model, self.data, jacp, jacr, point, self.body)
                jac = np.vstack([jacp[:, self.dofs], rot_weight * jacr[:, self.dofs], w])
                err = np.concatenate(
                    [
                        position - point,
                        rot_weight * rotation_error(rotation, rot),
                        w @ (self.rest - q),
                    ]
                )
                step = np.linalg.solve(jac.T @ jac + damping * np.eye(q.size), jac.T @ err)
                step *= min(1.0, max_step / max(np.abs(step).max(), 1e-12))
                q = np.clip(q + step, self.lower, self.upper)
                if np.abs(step).max() < 1e-7:
                    break
        point, rot = self.forward(q)
        pos_err = float(np.linalg.norm(position - point))
        rot_err = float(np.linalg.norm(rotation_error(rotation, rot)))
        return IKResult(q, pos_err, rot_err, pos_err < 1e-3 and rot_err < 1e-2)
