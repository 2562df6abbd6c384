"""Scripted demonstrators for the simulated scenes (the ACT paper's recipe, joint space): ALOHA's
transfer cube and insertion, and the SO-100's cube lift.

ACT scripts its simulated demonstrations as end-effector waypoints per arm (time, position,
orientation, gripper), interpolates them linearly at the control rate, and replays the resulting
joint trajectory. Here the waypoints go through IK on the scene's own MuJoCo model (warm-started
tick to tick), so a demonstration is exactly what a leader arm stream carries: joint targets
over time (per ViperX arm 6 joints + the gripper's finger position in m; the SO-100 5 joints +
its jaw angle in rad). The script knows the initial object poses the way ACT's does: the sim
samples them from `default_rng(seed)`, and so do we.

Two departures from ACT's script, both because a joint-space replay on the stock physics drops
objects without them (each finger touches an object in a single point, so a jerk makes it
slide or pivot in the grasp): segments follow straight lines with a quintic ease in time (no
velocity jumps at waypoints), and every pose is yawed to point away from the arm's waist axis
(`radial`), which keeps the wrist out of its forearm_roll/wrist_rotate singularity.

Frames: the end-effector point is the scene's `ee_body` + `ee_offset` (between the finger tips
of a ViperX gripper). A gripper orientation is a rotation matrix whose columns are the finger
axis (approach), the axis the fingers close along, and their cross product; the scene's
`ee_axes` say where those lie in the ee body (the ViperX's gripper_link: its own x, y, z).

The SO-100 (5 joints) grasps from straight above, the wrist roll squaring its jaws to the
cube (`top_down_frame`); its script passes through the approach waypoint like the transfer
cube's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import mujoco
import numpy as np

from apprentice.sim.ik import IKResult
from apprentice.sim.scenes import ArmDef, SceneDef, get_scene, sample_object_positions
from apprentice.sim.tasks import TaskStatus
from apprentice.sim.world import MujocoWorld, load_model

CONTROL_HZ = 50.0  # ACT's control rate: 400 steps = 8 s
GRIP_OPEN = 0.057  # m, ViperX finger slide fully open
GRIP_CLOSED = 0.021  # m, fully closed: commanded while holding, so the fingers squeeze
TABLE_Z = 0.0  # m, table top (objects settle at half their height)
PITCH_DOWN = np.deg2rad(60.0)  # ACT's pick pitch: fingers 60° below horizontal


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


@dataclass(frozen=True)
class ArmPlan:
    """One arm's joint trajectory at the control rate, with the IK residual of every tick."""

    joint_names: tuple[str, ...]
    targets: np.ndarray  # (N, 7) joints (rad) + gripper (m), tick k at t = k / rate
    position_error: np.ndarray  # (N,) m
    rotation_error: np.ndarray  # (N,) rad
    converged: np.ndarray  # (N,) bool


@dataclass(frozen=True)
class Scene:
    """What a script may know at t = 0: the model, home poses, initial object positions."""

    defn: SceneDef
    model: mujoco.MjModel
    objects: dict[str, np.ndarray]  # body -> (3,) resting position, m
    home: dict[str, tuple[np.ndarray, np.ndarray]]  # arm -> (ee point, gripper frame) at home
    ik: dict[str, PoseIK] = field(repr=False)

    def start(self, arm: str) -> Waypoint:
        """The first waypoint: where the arm rests at reset, gripper included."""
        position, rotation = self.home[arm]
        gripper = next(a for a in self.defn.arms if a.name == arm).home[-1]
        return Waypoint(0.0, position, rotation, gripper)


def _rest_height(model: mujoco.MjModel, body: str) -> float:
    """Height of a body's origin above the table when its box geoms lie flat on it (m)."""
    bid = model.body(body).id
    lows = [
        model.geom_pos[g][2] - model.geom_size[g][2]
        for g in range(model.ngeom)
        if model.geom_bodyid[g] == bid and model.geom_type[g] == mujoco.mjtGeom.mjGEOM_BOX
    ]
    return TABLE_Z - min(lows)


def _scene(defn: SceneDef, seed: int) -> Scene:
    model = load_model(defn)
    # The same draw as MujocoWorld.reset(seed); objects are dropped from `z` and settle flat.
    drawn = sample_object_positions(defn, np.random.default_rng(seed))
    objects = {
        o.body: np.array([p[0], p[1], _rest_height(model, o.body)])
        for o, p in zip(defn.objects, drawn, strict=True)
    }
    ik = {a.name: PoseIK(model, a) for a in defn.arms}
    home = {a.name: ik[a.name].forward(np.array(a.home[:-1])) for a in defn.arms}
    return Scene(defn, model, objects, home, ik)


@dataclass(frozen=True)
class Hold:
    """Where a held object's centre sits in the gripper frame (m), and how far below horizontal
    the fingers point (rad) when its long axis is level."""

    offset: tuple[float, float, float]
    pitch: float


def _holding(center: np.ndarray, hold: Hold, toward_x: float) -> tuple[np.ndarray, np.ndarray]:
    """End-effector point and gripper frame that put a held object's centre at `center`."""
    frame = pitched_frame(toward_x, hold.pitch)
    return center - frame @ np.array(hold.offset), frame


# The finger tips reach 5.4 cm past the ee point; objects are taken deep enough that the tips
# stay a few mm above the table at ACT's 60° pick pitch.
CUBE_GRASP = Hold((0.035, 0.0, 0.0), PITCH_DOWN)
PEG_GRASP = Hold((0.045, 0.0, 0.0), PITCH_DOWN)  # the 2 cm peg lies lower than the rest
SOCKET_GRASP = Hold((0.035, 0.0, 0.0), PITCH_DOWN)
# Where peg and socket sit once lifted and carried, measured (mean over seeds 0-11, stock scene
# physics): each finger touches in a single point, so the peg slides 4 mm toward the finger tips
# (std 0.9 mm) and pivots 1°. A teleoperator corrects for what they see; ACT's script carries
# its `lift_right = 0.00715` for the same reason.
PEG_CARRIED = Hold((0.0492, 0.0, -0.0004), np.deg2rad(59.2))
SOCKET_CARRIED = Hold((0.0365, 0.0, 0.0018), np.deg2rad(60.1))


def transfer_cube(scene: Scene) -> dict[str, list[Waypoint]]:
    """Right arm picks the cube, meets the left mid-air; left grasps, right lets go (8 s)."""
    meet = np.array([0.0, 0.5, 0.25])  # cube centre at the handover (ACT's meet point)
    pick, pick_frame = _holding(scene.objects["box"], CUBE_GRASP, -1.0)
    handover, _ = _holding(meet, CUBE_GRASP, -1.0)
    # Left: fingers level along +x, rolled 90° so they close on the cube's top and bottom faces
    # while the right fingers hold its sides; the cube 2.5 cm along the left fingers keeps
    # their wide roots clear of the right fingers.
    take_frame = gripper_frame(np.array([1.0, 0, 0]), np.array([0, 0, 1.0]))
    take = meet - 0.025 * take_frame[:, 0]
    open_, closed = GRIP_OPEN, GRIP_CLOSED
    right = [
        scene.start("right"),
        Waypoint(1.8, pick + [0, 0, 0.08], pick_frame, open_, through=True),  # above the cube
        Waypoint(2.6, pick, pick_frame, open_),  # down around it
        Waypoint(3.2, pick, pick_frame, closed),  # close
        Waypoint(3.6, pick + [0, 0, 0.04], pick_frame, closed, through=True),  # up off the table
        Waypoint(4.6, handover + [0.05, 0, 0], pick_frame, closed, through=True),
        Waypoint(5.0, handover, pick_frame, closed),  # at the meet point
        Waypoint(6.0, handover, pick_frame, closed),  # hold while the left closes
        Waypoint(6.4, handover, pick_frame, open_),  # let go
        Waypoint(7.2, handover + [0.1, 0, 0.02], pick_frame, open_),  # back off to the right
        Waypoint(8.0, handover + [0.1, 0, 0.02], pick_frame, open_),
    ]
    left = [
        scene.start("left"),
        Waypoint(2.0, take - [0.1, 0, 0], take_frame, open_),  # wait beside the meet point
        Waypoint(5.0, take - [0.1, 0, 0], take_frame, open_),
        Waypoint(5.4, take, take_frame, open_),  # slide the open fingers around the cube
        Waypoint(6.0, take, take_frame, closed),  # close
        Waypoint(6.6, take, take_frame, closed),  # hold while the right lets go
        Waypoint(7.4, take - [0.08, 0, 0], take_frame, closed),  # carry it off to the left
        Waypoint(8.0, take - [0.08, 0, 0], take_frame, closed),
    ]
    return {"left": left, "right": right}


def insertion(scene: Scene) -> dict[str, list[Waypoint]]:
    """Left grasps the socket, right the peg; both rise 5 mm, then lift, meet and the peg
    slides in (8.6 s). The finger tips rest on the table at the pick and close only once the
    arm rises: the slow 5 mm rise closes them before the lift (lifting at once, a stall there
    on a loaded host made teleop's catch-up lift fling the half-gripped peg)."""
    meet = np.array([0.0, 0.5, 0.15])
    # Peg and socket (12 cm each) overlap 3.5 cm at the end: the peg presses 1.5 cm past the
    # pin's end (at 1 cm, 2 of 100 seeds touched the pin and ended a hair off it).
    half_gap = 0.5 * (0.12 - 0.035)
    arms = {}
    for arm, body, side, grasp, carried in (
        ("right", "peg", 1.0, PEG_GRASP, PEG_CARRIED),
        ("left", "socket", -1.0, SOCKET_GRASP, SOCKET_CARRIED),
    ):
        pick, pick_frame = _holding(scene.objects[body], grasp, -side)
        lift = pick + [0, 0, 0.04]
        near, frame = _holding(meet + [side * (half_gap + 0.05), 0, 0], carried, -side)
        inserted, _ = _holding(meet + [side * half_gap, 0, 0], carried, -side)
        arms[arm] = [
            scene.start(arm),
            Waypoint(2.0, pick + [0, 0, 0.08], pick_frame, GRIP_OPEN),  # above the object
            Waypoint(2.8, pick, pick_frame, GRIP_OPEN),  # down around it
            Waypoint(3.4, pick, pick_frame, GRIP_CLOSED),  # close
            Waypoint(3.8, pick + [0, 0, 0.005], pick_frame, GRIP_CLOSED),  # free the tips
            Waypoint(4.0, pick + [0, 0, 0.005], pick_frame, GRIP_CLOSED),  # gripped
            Waypoint(4.4, lift, pick_frame, GRIP_CLOSED),  # straight up off the table
            Waypoint(5.6, near, frame, GRIP_CLOSED),  # axes level, 5 cm apart
            Waypoint(7.2, inserted, frame, GRIP_CLOSED),  # slide together
            Waypoint(8.6, inserted, frame, GRIP_CLOSED),
        ]
    return arms


# SO-100 jaw angles (rad). Open: the moving jaw's pads 4-6 cm from the fixed jaw's, room on
# both sides of a 2.5 cm cube. Closed: the jaw's lower limit, commanded while holding so the jaw
# squeezes (the servo's stall torque, 3.35 N·m in the scene, presses ~40 N at the pads).
SO_JAW_OPEN = 0.7
SO_JAW_CLOSED = -0.2
# The cube's centre from the ee point, in the gripper frame (approach, closing, normal), m:
# 2.2 cm further along the jaws, so the fixed jaw's tip stops 2-3 mm above the table (the arm
# sags ~1 mm; any deeper and the tip presses on the table), and its face 4 mm short of the
# fixed jaw's pads (the arm tracks to ~1 mm; closing then slides the cube 4 mm onto them).
SO_CUBE_GRASP = (0.022, -0.0005, 0.0)


def top_down_frame(base: np.ndarray, position: np.ndarray) -> np.ndarray:
    """Jaws pointing straight down, closing along whichever of the cube's face normals (±x,
    ±y: the scene never turns it) is nearest the jaw's closing axis with no wrist roll there,
    so |wrist_roll| ≤ 45°. The SO-100 has 5 joints: a pitched grasp keeps its jaws in the
    vertical plane through the pan axis, square to the cube's faces only where that plane is;
    pointing down, the roll can square them anywhere."""
    out = position[:2] - base[:2]
    natural = np.array([-out[1], out[0]])  # closing axis at roll 0: the plane's normal
    normals = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    closing = normals[np.argmax(normals @ natural)]
    return gripper_frame(np.array([0.0, 0.0, -1.0]), np.append(closing, 0.0))


def so100_lift(scene: Scene) -> dict[str, list[Waypoint]]:
    """Above the cube, down around it, close, lift 8 cm, hold (5 s)."""
    cube = scene.objects["box"]
    frame = top_down_frame(scene.ik["arm"].base, cube)
    grasp = cube - frame @ np.array(SO_CUBE_GRASP)
    open_, closed = SO_JAW_OPEN, SO_JAW_CLOSED
    return {
        "arm": [
            scene.start("arm"),
            Waypoint(1.5, grasp + [0, 0, 0.06], frame, open_, through=True),  # above the cube
            Waypoint(2.2, grasp, frame, open_),  # down around it
            Waypoint(2.8, grasp, frame, closed),  # close
            Waypoint(3.8, grasp + [0, 0, 0.08], frame, closed),  # lift
            Waypoint(5.0, grasp + [0, 0, 0.08], frame, closed),  # hold
        ]
    }


SCRIPTS: dict[str, Callable[[Scene], dict[str, list[Waypoint]]]] = {
    "aloha_transfer_cube": transfer_cube,
    "aloha_insertion": insertion,
    "so100_lift": so100_lift,
}


class ScriptedDemo:
    """A scripted demonstration as joint targets over time per arm (a leader arm stream)."""

    def __init__(self, scene: str, seed: int, rate_hz: float = CONTROL_HZ) -> None:
        if scene not in SCRIPTS:
            raise ValueError(f"no scripted demo for {scene!r}; scripted: {', '.join(SCRIPTS)}")
        if rate_hz <= 0:
            raise ValueError("rate_hz must be positive")
        self.scene = scene
        self.seed = seed
        self.rate_hz = rate_hz
        self.context = _scene(get_scene(scene), seed)
        self.waypoints = SCRIPTS[scene](self.context)
        self.duration = max(w[-1].t for w in self.waypoints.values())
        self.plans = {arm: self._plan(arm, wps) for arm, wps in self.waypoints.items()}

    @property
    def joint_names(self) -> dict[str, tuple[str, ...]]:
        return {arm: plan.joint_names for arm, plan in self.plans.items()}

    @property
    def ik_converged(self) -> bool:
        return all(bool(p.converged.all()) for p in self.plans.values())

    def _plan(self, arm: str, waypoints: list[Waypoint]) -> ArmPlan:
        defn = next(a for a in self.context.defn.arms if a.name == arm)
        ik = self.context.ik[arm]
        n = int(round(self.duration * self.rate_hz)) + 1
        targets = np.empty((n, len(defn.joints)))
        pos_err, rot_err, ok = np.empty(n), np.empty(n), np.empty(n, bool)
        q = np.array(defn.home[:-1], dtype=float)
        for k in range(n):
            position, rotation, gripper = interpolate(waypoints, k / self.rate_hz)
            rotation = radial(rotation, position, ik.base)
            sol = ik.solve(position, rotation, q)  # warm start: the previous tick's answer
            q = sol.q
            targets[k] = np.append(q, gripper)
            pos_err[k], rot_err[k], ok[k] = sol.position_error, sol.axis_error, sol.converged
        return ArmPlan(defn.joints, targets, pos_err, rot_err, ok)

    def joint_targets(self, t: float) -> dict[str, np.ndarray]:
        """Joint targets (7,) per arm at time t (s), linear between control ticks, held after."""
        x = np.clip(t * self.rate_hz, 0.0, None)
        out = {}
        for arm, plan in self.plans.items():
            k = min(int(x), len(plan.targets) - 1)
            k1 = min(k + 1, len(plan.targets) - 1)
            s = x - k if k1 > k else 0.0
            out[arm] = (1 - s) * plan.targets[k] + s * plan.targets[k1]
        return out


@dataclass(frozen=True)
class ReplayResult:
    final: TaskStatus  # at the end of the episode
    max_stage: int  # highest stage reached at any control tick
    stages: np.ndarray  # (N,) stage after each control tick


def replay_headless(demo: ScriptedDemo, world: MujocoWorld | None = None) -> ReplayResult:
    """Replays a demo into a fresh world (or a given one, already reset) as a follower would:
    every control period, write each arm's joint targets, then step physics for that period."""
    world = world if world is not None else MujocoWorld(demo.scene, seed=demo.seed)
    period = 1.0 / demo.rate_hz
    substeps = int(round(period / world.model.opt.timestep))
    n = int(round(demo.duration * demo.rate_hz)) + 1
    stages = np.empty(n, dtype=int)
    for k in range(n):
        for arm, q in demo.joint_targets(k * period).items():
            world.arm(arm).write(q)
        world.step(substeps)
        stages[k] = world.task_status().stage
    return ReplayResult(world.task_status(), int(stages.max()), stages)
