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

from apprentice.sim.scenes import SceneDef, get_scene, sample_object_positions
from apprentice.sim.tasks import TaskStatus
from apprentice.sim.world import MujocoWorld, load_model
from apprentice.teleop.waypoints import (
    PoseIK,
    Waypoint,
    gripper_frame,
    interpolate,
    pitched_frame,
    radial,
)

CONTROL_HZ = 50.0  # ACT's control rate: 400 steps = 8 s
GRIP_OPEN = 0.057  # m, ViperX finger slide fully open
GRIP_CLOSED = 0.021  # m, fully closed: commanded while holding, so the fingers squeeze
TABLE_Z = 0.0  # m, table top (objects settle at half their height)
PITCH_DOWN = np.deg2rad(60.0)  # ACT's pick pitch: fingers 60° below horizontal


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


def _so100_pick(scene: Scene) -> tuple[np.ndarray, np.ndarray, list[Waypoint]]:
    """The SO-100's grasp of the cube from straight above: (gripper frame, grasp point, the
    waypoints from the start pose to the closed jaw at 2.8 s)."""
    cube = scene.objects["box"]
    frame = top_down_frame(scene.ik["arm"].base, cube)
    grasp = cube - frame @ np.array(SO_CUBE_GRASP)
    return (
        frame,
        grasp,
        [
            scene.start("arm"),
            Waypoint(1.5, grasp + [0, 0, 0.06], frame, SO_JAW_OPEN, through=True),  # above the cube
            Waypoint(2.2, grasp, frame, SO_JAW_OPEN),  # down around it
            Waypoint(2.8, grasp, frame, SO_JAW_CLOSED),  # close
        ],
    )


def so100_lift(scene: Scene) -> dict[str, list[Waypoint]]:
    """Above the cube, down around it, close, lift 8 cm, hold (5 s)."""
    frame, grasp, pick = _so100_pick(scene)
    return {
        "arm": [
            *pick,
            Waypoint(3.8, grasp + [0, 0, 0.08], frame, SO_JAW_CLOSED),  # lift
            Waypoint(5.0, grasp + [0, 0, 0.08], frame, SO_JAW_CLOSED),  # hold
        ]
    }


def so100_pick_place(scene: Scene) -> dict[str, list[Waypoint]]:
    """The lift's grasp, then over the target square, down until the cube nearly rests on the
    table, open, back up (7 s)."""
    frame, grasp, pick = _so100_pick(scene)
    # the cube's centre over the square's, its bottom 3 mm above the table
    drop_at = np.array([*scene.objects["target"][:2], 0.0125 + 0.003])
    place_frame = top_down_frame(scene.ik["arm"].base, drop_at)
    place = drop_at - place_frame @ np.array(SO_CUBE_GRASP)
    closed, open_ = SO_JAW_CLOSED, SO_JAW_OPEN
    return {
        "arm": [
            *pick,
            Waypoint(3.6, grasp + [0, 0, 0.06], frame, closed, through=True),  # lift
            Waypoint(4.6, place + [0, 0, 0.06], place_frame, closed, through=True),  # over it
            Waypoint(5.3, place, place_frame, closed),  # down
            Waypoint(5.8, place, place_frame, open_),  # let go
            Waypoint(7.0, place + [0, 0, 0.07], place_frame, open_),  # up and away
        ]
    }


SCRIPTS: dict[str, Callable[[Scene], dict[str, list[Waypoint]]]] = {
    "aloha_transfer_cube": transfer_cube,
    "aloha_insertion": insertion,
    "so100_lift": so100_lift,
    "so100_pick_place": so100_pick_place,
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
