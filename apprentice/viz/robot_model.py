"""A scene's MuJoCo model in Rerun, posed by recorded joint states.

`RobotModel.log_static` logs each visible geom once (static) under `robot/<body>/geom_<k>`:
meshes as rr.Mesh3D, boxes, spheres, cylinders, capsules and planes as their Rerun shapes,
placed in their body's frame. Each pose (`pose`, or `pose_columns` for a whole episode) sets
the recorded joints in qpos, runs mj_kinematics and logs every moving body's world pose as a
Transform3D on `robot/<body>` (MJCF body names' `/` written as `.`). Bodies fixed to the world
(table, arm bases) are posed once, statically.

Free bodies (the cube, the peg) are left out: the bags record no object pose, and an object
drawn where it started would be wrong as soon as it is picked up.

An ALOHA gripper is one joint on ROS and two mirrored finger slides in MJCF: each exposed
joint sets every MJCF joint of its actuators (`ArmDef.actuators`, with their signs).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import mujoco
import numpy as np
import rerun as rr

from apprentice.sim.scenes import SceneDef, get_scene
from apprentice.viz.layout import ROBOT, TIMELINE, set_time

# MuJoCo draws geom groups 0-2 by default; 3+ hold collision-only copies.
VISIBLE_GROUPS = 3
PLANE_HALF_M = 1.0  # an infinite plane is drawn as a 2 m square


def body_path(name: str) -> str:
    return f"{ROBOT}/{name.replace('/', '.')}"


def _quat_xyzw(wxyz: np.ndarray) -> np.ndarray:
    """MuJoCo's (w, x, y, z) → Rerun's (x, y, z, w), on the last axis."""
    return np.concatenate([wxyz[..., 1:], wxyz[..., :1]], axis=-1)


class RobotModel:
    """The model of `scene` (a name in apprentice.sim.scenes.SCENES, or a SceneDef)."""

    def __init__(self, scene: str | SceneDef, model: mujoco.MjModel | None = None) -> None:
        self.scene = get_scene(scene) if isinstance(scene, str) else scene
        if model is None:
            from apprentice.sim.world import load_model  # the simulator's own MJCF loading

            model = load_model(self.scene)
        self.model = model
        self.data = mujoco.MjData(model)
        m = model
        # exposed joint name → [(qpos address, sign)] of the MJCF joints it drives
        self.joints: dict[str, list[tuple[int, float]]] = {}
        for arm in self.scene.arms:
            for name, acts in zip(arm.joints, arm.actuators, strict=True):
                self.joints[name] = [(int(m.jnt_qposadr[m.joint(j).id]), s) for j, s in acts]
        self._kind = [self._body_kind(b) for b in range(m.nbody)]
        self.moving = [b for b in range(1, m.nbody) if self._kind[b] == "moving"]
        self.fixed = [b for b in range(1, m.nbody) if self._kind[b] == "fixed"]

    def _body_kind(self, body: int) -> str:
        """'fixed' to the world, 'moving' with the arms' joints, or 'free' (a loose object)."""
        m, kind = self.model, "fixed"
        while body > 0:
            for j in range(m.body_jntadr[body], m.body_jntadr[body] + m.body_jntnum[body]):
                if m.jnt_type[j] == mujoco.mjtJoint.mjJNT_FREE:
                    return "free"
                kind = "moving"
            body = int(m.body_parentid[body])
        return kind

    def body_name(self, body: int) -> str:
        return self.model.body(body).name or f"body_{body}"

    @property
    def body_paths(self) -> list[str]:
        """The entities of the drawn bodies (fixed and moving)."""
        return [body_path(self.body_name(b)) for b in self.fixed + self.moving]

    def log_static(self, rec: rr.RecordingStream) -> int:
        """Logs every visible geom of the fixed and moving bodies once, and the fixed bodies'
        poses; returns the number of geoms logged."""
        m, d = self.model, self.data
        mujoco.mj_resetData(m, d)
        mujoco.mj_kinematics(m, d)
        rec.log(ROBOT, rr.ViewCoordinates.RIGHT_HAND_Z_UP, static=True)
        n = 0
        for b in self.fixed + self.moving:
            path = body_path(self.body_name(b))
            if b in self.fixed:
                rec.log(path, rr.Transform3D(translation=d.xpos[b],
                                             quaternion=_quat_xyzw(d.xquat[b])), static=True)
            for k, g in enumerate(range(m.body_geomadr[b], m.body_geomadr[b] + m.body_geomnum[b])):
                shape = self._geom(g)
                if shape is None:
                    continue
                geom = f"{path}/geom_{k}"
                rec.log(geom, rr.Transform3D(translation=m.geom_pos[g],
                                             quaternion=_quat_xyzw(m.geom_quat[g])), static=True)
                rec.log(geom, shape, static=True)
                n += 1
        return n

    def _geom(self, g: int):
        """The Rerun shape of geom `g` in its own frame, or None when it is not drawn."""
        m = self.model
        if m.geom_group[g] >= VISIBLE_GROUPS or m.geom_rgba[g][3] == 0:
            return None
        mat = int(m.geom_matid[g])
        rgba = m.mat_rgba[mat] if mat >= 0 else m.geom_rgba[g]
        color = (np.clip(rgba, 0, 1) * 255).astype(np.uint8)
        size = m.geom_size[g]
        t = m.geom_type[g]
        if t == mujoco.mjtGeom.mjGEOM_MESH:
            mesh = int(m.geom_dataid[g])
            v0, nv = m.mesh_vertadr[mesh], m.mesh_vertnum[mesh]
            f0, nf = m.mesh_faceadr[mesh], m.mesh_facenum[mesh]
            return rr.Mesh3D(vertex_positions=m.mesh_vert[v0 : v0 + nv],
                             triangle_indices=m.mesh_face[f0 : f0 + nf],
                             albedo_factor=color)
        if t == mujoco.mjtGeom.mjGEOM_BOX:
            return rr.Boxes3D(half_sizes=[size], colors=[color], fill_mode="solid")
        if t == mujoco.mjtGeom.mjGEOM_SPHERE:
            return rr.Ellipsoids3D(half_sizes=[[size[0]] * 3], colors=[color],
                                   fill_mode="solid")
        if t == mujoco.mjtGeom.mjGEOM_ELLIPSOID:
            return rr.Ellipsoids3D(half_sizes=[size], colors=[color], fill_mode="solid")
        if t == mujoco.mjtGeom.mjGEOM_CYLINDER:  # size: radius, half length
            return rr.Cylinders3D(lengths=[2 * size[1]], radii=[size[0]], colors=[color],
                                  fill_mode="solid")
        if t == mujoco.mjtGeom.mjGEOM_CAPSULE:  # Rerun's capsule starts at the origin
            return rr.Capsules3D(lengths=[2 * size[1]], radii=[size[0]], colors=[color],
                                 translations=[[0, 0, -size[1]]])
        if t == mujoco.mjtGeom.mjGEOM_PLANE:
            half = [s if s > 0 else PLANE_HALF_M for s in size[:2]]
            return rr.Boxes3D(half_sizes=[[*half, 0.0005]], colors=[color], fill_mode="solid")
        return None  # height fields, SDFs: not in our scenes

    def _set(self, positions: Mapping[str, float]) -> None:
        qpos = self.data.qpos
        for name, q in positions.items():
            for adr, sign in self.joints.get(name, ()):
                qpos[adr] = sign * q

    def pose(self, rec: rr.RecordingStream, positions: Mapping[str, float], t: float) -> None:
        """One pose at stamp `t`: joints by their ROS name (others keep their last value; names
        the scene does not have are ignored, so a bag's extra joints do no harm)."""
        self._set(positions)
        mujoco.mj_kinematics(self.model, self.data)
        set_time(rec, t)
        d = self.data
        for b in self.moving:
            rec.log(body_path(self.body_name(b)),
                    rr.Transform3D(translation=d.xpos[b], quaternion=_quat_xyzw(d.xquat[b])))

    def pose_columns(self, rec: rr.RecordingStream, times: np.ndarray,
                     names: Sequence[str], positions: np.ndarray) -> None:
        """Many poses at once: `positions` (T, J) for joints `names` at stamps `times` (T,)."""
        times = np.asarray(times, dtype=np.float64)
        positions = np.asarray(positions, dtype=np.float64)
        if positions.shape != (len(times), len(names)):
            raise ValueError(f"robot poses: positions {positions.shape} for {len(times)} stamps "
                             f"and {len(names)} joints")
        if len(times) == 0 or not self.moving:
            return
        d = self.data
        xpos = np.empty((len(times), len(self.moving), 3))  # (T, B, 3) m, world frame
        xquat = np.empty((len(times), len(self.moving), 4))  # (T, B, 4) w, x, y, z
        for i, q in enumerate(positions):
            self._set(dict(zip(names, q, strict=True)))
            mujoco.mj_kinematics(self.model, d)
            xpos[i] = d.xpos[self.moving]
            xquat[i] = d.xquat[self.moving]
        index = [rr.TimeColumn(TIMELINE, timestamp=times)]
        for k, b in enumerate(self.moving):
            rec.send_columns(body_path(self.body_name(b)), indexes=index,
                             columns=rr.Transform3D.columns(translation=xpos[:, k],
                                                            quaternion=_quat_xyzw(xquat[:, k])))
