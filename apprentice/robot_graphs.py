"""A real robot's node graphs, made from its robot config (launch/robots/<robot>.yaml).

One robot config describes the hardware once: its arms (servo buses, joints; see
apprentice.drivers.factory), which leader arm drives which follower (`leads:`), and its cameras
(`cameras:`). The graphs a person runs on it are made from that description, so adding a camera
to the config adds it to recording and deployment alike:

    drive   every arm's driver (followers under /<arm>, leaders under /leader/<follower>)
            and every camera
    record  drive + teleop (leader → follower) + the recorder of every stream
    deploy  the followers' drivers, the cameras a policy uses, and the policy node

Leader namespaces follow one rule for every robot, the simulated ALOHA included:
the leader of follower `F` publishes `/leader/F/joint_states`, and teleop commands `/F/commands`.
`load_graph("record_so101")` (apprentice.graph) resolves these names, so `apprentice graph run`
and `ros2 launch ... graph:=record_so101` start the same processes as `apprentice record`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from apprentice.drivers.factory import ArmConfig, load_robot, robot_path
from apprentice.graph import Graph, ProcessSpec

KINDS = ("drive", "record")  # graphs made from the config alone; deploy needs a policy
SERVO_STATE_RATE_HZ = 100.0  # joint_states published per arm (the bus carries >= 200 Hz)
TELEOP_RATE_HZ = 50.0
CAMERA_BACKENDS = ("uvc", "realsense")


def leader_namespace(follower: str) -> str:
    return f"leader/{follower}"


def calibration_path(robot: str, arm: str) -> Path:
    """Where `apprentice calibrate-arm calibrate` writes an arm's calibration by default."""
    return Path.home() / ".apprentice" / "calibration" / f"{robot}_{arm}.yaml"


@dataclass(frozen=True)
class CameraEntry:
    """One camera of a robot config."""

    name: str
    backend: str  # uvc | realsense
    device: str  # uvc: /dev/videoN, /dev/v4l/by-id/..., or a video file; realsense: serial
    width: int
    height: int
    fps: float
    camera_info_file: str = ""  # CameraInfo YAML from `apprentice calibrate-camera`

    def __post_init__(self) -> None:
        if self.backend not in CAMERA_BACKENDS:
            raise ValueError(
                f"camera {self.name}: backend {self.backend!r} is not one of {CAMERA_BACKENDS}"
            )
        if self.width <= 0 or self.height <= 0 or not self.fps > 0:
            raise ValueError(f"camera {self.name}: size and fps must be positive")


@dataclass(frozen=True)
class RobotSetup:
    name: str
    source: Path  # the robot config file
    arms: dict[str, ArmConfig]
    leaders: dict[str, str]  # leader arm → the follower arm it drives
    cameras: tuple[CameraEntry, ...]

    @property
    def followers(self) -> tuple[str, ...]:
        return tuple(a for a in self.arms if a not in self.leaders)

    def namespace(self, arm: str) -> str:
        return leader_namespace(self.leaders[arm]) if arm in self.leaders else arm

    def camera(self, name: str) -> CameraEntry:
        for cam in self.cameras:
            if cam.name == name:
                return cam
        known = ", ".join(c.name for c in self.cameras) or "none"
        raise ValueError(f"robot {self.name} has no camera {name!r}; cameras: {known}")


def load_setup(robot: str | os.PathLike[str]) -> RobotSetup:
    """The robot config's arms, leader pairs and cameras, checked against each other."""
    path = robot_path(robot)
    arms = load_robot(path)
    doc = yaml.safe_load(path.read_text())
    name = str(doc.get("name", path.stem))
    leaders = {}
    for arm, a in doc["arms"].items():
        follower = a.get("leads")
        if follower is None:
            continue
        if follower not in arms or follower == arm or "leads" in doc["arms"][follower]:
            raise ValueError(f"{path}: arm {arm} leads {follower!r}, which is not a follower arm")
        theirs, mine = arms[follower].spec.joint_names, arms[str(arm)].spec.joint_names
        if theirs != mine:
            # teleop copies by joint name: a leader must name its follower's joints
            raise ValueError(f"{path}: leader {arm}'s joints {mine} are not {follower}'s {theirs}")
        leaders[str(arm)] = str(follower)
    if len(set(leaders.values())) != len(leaders):
        raise ValueError(f"{path}: two leaders drive one follower: {leaders}")
    cameras = []
    for cam, c in (doc.get("cameras") or {}).items():
        try:
            cameras.append(
                CameraEntry(
                    name=str(cam),
                    backend=str(c["backend"]),
                    device=str(c.get("serial", c.get("device", ""))),
                    width=int(c["width"]),
                    height=int(c["height"]),
                    fps=float(c["fps"]),
                    camera_info_file=str(c.get("camera_info_file", "")),
                )
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{path}: camera {cam!r}: missing or malformed field {exc}") from exc
    clash = {c.name for c in cameras} & set(arms)
    if clash:
        raise ValueError(f"{path}: names used by an arm and a camera: {sorted(clash)}")
    return RobotSetup(name, path, arms, leaders, tuple(cameras))


def _robot_param(setup: RobotSetup, robot: str | os.PathLike[str]) -> str:
    """What the driver processes get as `robot`: the name when it is a shipped config."""
    return setup.name if str(robot) == setup.name else str(setup.source)


def arm_process(setup: RobotSetup, arm: str, robot: str) -> ProcessSpec:
    cfg = setup.arms[arm]
    return ProcessSpec(
        "arm_driver",
        arm,
        {
            "backend": cfg.backend,
            "robot": robot,
            "arm": arm,
            "namespace": setup.namespace(arm),
            "port": cfg.port,
            "baudrate": cfg.baudrate,
            "calibration_file": str(calibration_path(setup.name, arm)),
            "joint_state_rate": SERVO_STATE_RATE_HZ,
        },
    )


def camera_process(cam: CameraEntry, publish_raw: bool) -> ProcessSpec:
    return ProcessSpec(
        "camera",
        cam.name,
        {
            "backend": cam.backend,
            "device": cam.device,
            "name": cam.name,
            "width": cam.width,
            "height": cam.height,
            "fps": cam.fps,
            "camera_info_file": cam.camera_info_file,
            "publish_raw": publish_raw,
            "publish_compressed": True,
        },
    )


def recorder_topics(setup: RobotSetup) -> list[str]:
    """NAME:HZ:ROLE[:TYPE] for every stream of a recording: the followers' states and
    commands, the leaders' states, each camera's JPEG frames and its camera_info (the lens the
    policy will be checked against at deployment)."""
    joint_hz = f"{SERVO_STATE_RATE_HZ:g}"
    topics = []
    for follower in setup.followers:
        topics.append(f"/{follower}/joint_states:{joint_hz}:joint")
        topics.append(f"/{follower}/commands:{TELEOP_RATE_HZ:g}:other")
    for leader in setup.leaders:
        ns = setup.namespace(leader)
        topics.append(f"/{ns}/joint_states:{joint_hz}:joint:sensor_msgs/msg/JointState")
    for cam in setup.cameras:
        base = f"/cameras/{cam.name}"
        topics.append(f"{base}/image_raw/compressed:{cam.fps:g}:camera")
        topics.append(f"{base}/camera_info:{cam.fps:g}:other:sensor_msgs/msg/CameraInfo")
    return topics


def robot_graph(robot: str | os.PathLike[str], kind: str) -> Graph:
    """The `drive` or `record` graph of a robot config (a name in launch/robots or a path)."""
    if kind not in KINDS:
        raise ValueError(f"unknown graph kind {kind!r}; one of {KINDS}")
    setup = load_setup(robot)
    name = _robot_param(setup, robot)
    procs = [arm_process(setup, arm, name) for arm in setup.arms]
    # Recording keeps the JPEG stream only (what is written to the bag); raw frames would
    # cost a conversion and a copy per frame that nobody reads.
    procs += [camera_process(cam, publish_raw=kind == "drive") for cam in setup.cameras]
    if kind == "record":
        if not setup.leaders:
            raise ValueError(f"robot {setup.name}: no leader arm (`leads:`) to record with")
        pairs = [f"{setup.namespace(lead)}:{f}" for lead, f in setup.leaders.items()]
        procs.append(
            ProcessSpec(
                "teleop",
                "teleop",
                {"pairs": pairs, "rate_hz": TELEOP_RATE_HZ, "max_step": 0.1, "ramp_time": 2.0},
            )
        )
        procs.append(
            ProcessSpec(
                "recorder",
                "recorder",
                {
                    "dataset_dir": "data/demos",
                    "task": "demo",
                    "topics": recorder_topics(setup),
                    "discover_timeout": 30.0,
                },
            )
        )
    graph_name = setup.name if kind == "drive" else f"{kind}_{setup.name}"
    return Graph(graph_name, tuple(procs), setup.source)


def graph_by_name(name: str) -> Graph | None:
    """`so101` → the drive graph, `record_so101` → the record graph; None when `name` names
    no robot config."""
    kind, _, robot = name.partition("_")
    if kind not in KINDS or not robot:
        kind, robot = "drive", name
    try:
        robot_path(robot)
    except FileNotFoundError:
        return None
    return robot_graph(robot, kind)


def deploy_graph(
    robot: str | os.PathLike[str],
    card: dict[str, Any],
    policy_dir: str | os.PathLike[str],
    limits: dict[str, tuple[list[float], list[float]]],
) -> Graph:
    """Follower drivers, the policy's cameras and the policy node.

    `limits`: per follower arm its (lower, upper) joint limits, from its calibration (the
    ranges the arm was calibrated to, inside the config's outer bounds)."""
    setup = load_setup(robot)
    name = _robot_param(setup, robot)
    joint_arm = {j: arm for arm in setup.followers for j in setup.arms[arm].spec.joint_names}
    missing = [j for j in card["joint_names"] if j not in joint_arm]
    if missing:
        raise ValueError(
            f"the policy's joints {missing} are not joints of {setup.name}'s follower arms "
            f"{list(setup.followers)}"
        )
    arms = list(dict.fromkeys(joint_arm[j] for j in card["joint_names"]))  # the card's order
    cameras = [setup.camera(c["name"]) for c in card["cameras"]]
    procs = [arm_process(setup, arm, name) for arm in arms]
    procs += [camera_process(cam, publish_raw=False) for cam in cameras]
    lower = [v for arm in arms for v in limits[arm][0]]
    upper = [v for arm in arms for v in limits[arm][1]]
    procs.append(
        ProcessSpec(
            "policy_node",
            "policy",
            {
                "policy_dir": str(policy_dir),
                "arms": arms,
                "cameras": [c.name for c in cameras],
                "image_transport": "compressed",
                "allow_camera_mismatch": False,
                "control_rate": float(card["control_rate_hz"]),
                "joint_lower": lower,
                "joint_upper": upper,
                # the tunables a person sets on the command line (-p policy.KEY=VALUE); the
                # node's own defaults, listed so that a mistyped name is refused, not ignored
                "execution": "ensemble",
                "max_velocity": [1.0],  # rad/s (gripper: its units/s)
                "max_accel": [10.0],
                "execution_provider": "auto",
                "threads": 1,
                "realtime_priority": 0,
                "startup_timeout": 20.0,  # s: cameras (RealSense) take seconds to stream
            },
        )
    )
    return Graph(f"deploy_{setup.name}", tuple(procs), setup.source)
