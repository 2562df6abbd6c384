"""Inverse kinematics on a MuJoCo model: damped least squares on a point and an approach axis.

Used by scripted demonstrators and physics tests to turn end-effector waypoints into joint
targets; it works on a private MjData, never on the live simulation.
"""

from __future__ import annotations

from dataclasses import dataclass

import mujoco
import numpy as np

from apprentice.sim.scenes import ArmDef


@dataclass(frozen=True)
class IKResult:
    q: np.ndarray  # (J_arm,) joint positions for the arm's non-gripper joints
    position_error: float  # m
    axis_error: float  # rad
    converged: bool


class ArmIK:
    """IK for one arm's joints (the gripper excluded) toward an end-effector point + axis."""

    def __init__(self, model: mujoco.MjModel, arm: ArmDef, approach_axis: tuple[float, ...]):
        self.model = model
        self.data = mujoco.MjData(model)
        self.body = model.body(arm.ee_body).id
        self.offset = np.array(arm.ee_offset, dtype=float)
        self.axis_local = np.asarray(approach_axis, dtype=float)  # in the ee body frame
        joints = [model.joint(j).id for j in arm.mjcf_joints[:-1]]  # last is the gripper
        self.qadr = np.array([model.jnt_qposadr[j] for j in joints])
        self.dofs = np.array([model.jnt_dofadr[j] for j in joints])
        self.lower = np.array([model.jnt_range[j][0] for j in joints])
        self.upper = np.array([model.jnt_range[j][1] for j in joints])

    def forward(
        self, q: np.ndarray, qpos: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """End-effector point (3,) and approach axis (3,) in world coordinates."""
        d = self.data
        if qpos is not None:
            d.qpos[:] = qpos
        d.qpos[self.qadr] = q
        mujoco.mj_kinematics(self.model, d)
        mujoco.mj_comPos(self.model, d)
        rot = d.xmat[self.body].reshape(3, 3)
        return d.xpos[self.body] + rot @ self.offset, rot @ self.axis_local

    def solve(
        self,
        target: np.ndarray,
        direction: np.ndarray,
        q0: np.ndarray,
        qpos: np.ndarray | None = None,
        iters: int = 200,
        damping: float = 1e-3,
        axis_weight: float = 0.3,  # m per rad: how much a radian of tilt counts against a metre
    ) -> IKResult:
        direction = np.asarray(direction, float) / np.linalg.norm(direction)
        q = np.clip(np.asarray(q0, float).copy(), self.lower, self.upper)
        jacp = np.zeros((3, self.model.nv))
        jacr = np.zeros((3, self.model.nv))
        for _ in range(iters):
            point, axis = self.forward(q, qpos)
            e_pos = target - point
            e_rot = np.cross(axis, direction)  # rotation (axis·angle) that aligns axis with dir
            if np.linalg.norm(e_pos) < 1e-4 and np.linalg.norm(e_rot) < 1e-3:
                break
            mujoco.mj_jac(self.model, self.data, jacp, jacr, point, self.body)
            jac = np.vstack([jacp[:, self.dofs], axis_weight * jacr[:, self.dofs]])  # (6, J)
            err = np.concatenate([e_pos, axis_weight * e_rot])  # (6,)
            step = jac.T @ np.linalg.solve(jac @ jac.T + damping * np.eye(6), err)
            q = np.clip(q + step, self.lower, self.upper)
        point, axis = self.forward(q, qpos)
        pos_err = float(np.linalg.norm(target - point))
        ang_err = float(np.arccos(np.clip(axis @ direction, -1.0, 1.0)))
        return IKResult(q, pos_err, ang_err, pos_err < 5e-3 and ang_err < 0.1)
