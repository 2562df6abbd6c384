"""Policy node: an exported policy folder (ONNX + policy card) drives the arms through the
safety layer (apprentice.policy_server). Wiring only: the runtime, chunking and safety are cores.

Start-up, in order, and nothing is published before the last step:
  1. load the folder (card complete, every file it lists matches its SHA-256, graphs load on
     the configured execution provider); a card without hashes (an older export) runs with a
     warning that the model is unverified
  2. wait for every arm's joint_states, every camera's first image (each with a usable stamp,
     see Stamps below) and, for each camera the card has a "source" (the camera it was
     trained on) for, its camera_info (`startup_timeout`)
  3. check card against robot: joint names (as the arms report them), camera names, control
     rate; joint limits must be given; the lens of each camera (policy_server.card.check_lens:
     normalized intrinsics and aspect ratio within 2 %; any resolution of the same lens is
     fine, frames are resized to the card's size). A lens mismatch, or no camera_info in time,
     refuses unless `allow_camera_mismatch` (then a warning); a card without "source" (an
     older export) runs with a warning that the lens cannot be checked
  4. one warm-up inference, then the control and inference threads start from the measured pose
Any failure: a clear error on the log, exit code 2, no command ever published.

Frames: any size, raw (any encoding apprentice.dataset.images decodes) or JPEG per
`image_transport`; each is decoded and resized to the card's input in the image callback
(camera_input.py), by the functions the dataset builder used, so the live input equals the
training input pixel for pixel and the control thread never decodes.

Stamps: a joint state or frame stamped more than `max_future_s` ahead of the host clock, or
not newer than its stream's last accepted one, is dropped, counted and logged (first at once,
then every 5 s per stream); it never blocks later messages (apprentice.stamps). The watchdog
(hold after `max_observation_age`, fault after `safe_after`) counts each stream's age from its
last accepted stamp and from that message's arrival on the monotonic clock, the larger: a
stream that stops trips it whatever it stamped. ~/stats "inputs" has per stream the counts,
ages and whether it is stale; "mode" is hold or fault while the inputs are.

Parameters (DEFAULTS below, with units; these are the ones a robot config sets):
  policy_dir              the exported folder (required)
  arms                    arm namespaces, in the card's joint order
  cameras                 camera names, in the card's camera order
  image_transport         raw | compressed
  allow_camera_mismatch   run despite a lens mismatch or a missing camera_info (warns)
  joint_lower/joint_upper position limits, card joint order (required); safe_pose optional
  control_rate, execution, output, max_velocity, max_accel, ...: the runtime and safety layer
  publish_chunks          publish each inference's chunk on /<arm>/predicted_chunk (below)

Topics:
  in   /<arm>/joint_states             sensor_msgs/JointState (per arm in `arms`)
  in   /cameras/<cam>/image_raw        sensor_msgs/Image (image_transport raw), or
       /cameras/<cam>/image_raw/compressed  sensor_msgs/CompressedImage (compressed)
  in   /cameras/<cam>/camera_info      sensor_msgs/CameraInfo (start-up only)
  in   `estop_topic` (/estop)          std_msgs/Bool: True latches the e-stop (False does not
                                       clear it: only the rearm service does)
  out  per `output`:
       forward      /<arm>/commands            std_msgs/Float64MultiArray (forward controller)
       joint_state  /<arm>/joint_commands      sensor_msgs/JointState, stamped with tick time
       trajectory   /<arm>/joint_trajectory    trajectory_msgs/JointTrajectory: this tick's
                                                command + the safe preview of the chunk ahead
  out  /<arm>/predicted_chunk          trajectory_msgs/JointTrajectory, once per inference
       (`publish_chunks`): the policy's raw chunk (joint units, before the safety layer),
       this arm's joints; header.stamp = the observation stamp the inference used, point k at
       time_from_start k / the card's rate. The executor places point k at the policy step
       nearest that stamp + k (at most half a step off) and drops the points already past;
       receding / rtc execute the first n_execute of them, ensemble averages every chunk
       covering a step. Written as CDR bytes (trajectory_cdr.py): no GIL-long conversion.
Services: ~/estop, ~/rearm (std_srvs/Trigger), ~/stats (Trigger: JSON counters and timings).
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import rclpy
from builtin_interfaces.msg import Duration
from rclpy.exceptions import ParameterUninitializedException
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile
from sensor_msgs.msg import CameraInfo, JointState
from std_msgs.msg import Bool, Float64MultiArray
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from apprentice.policy_server.adapters import open_policy
from apprentice.policy_server.card import (
    PolicyRefused,
    RobotConfig,
    check_lens,
    check_robot,
    unverified_warning,
)
from apprentice.policy_server.loop import Command, Observations, PolicyRuntime, RuntimeConfig
from apprentice.policy_server.safety import SafetyConfig
from apprentice.stamps import MAX_FUTURE_S
from apprentice_ros.camera_input import TRANSPORTS, CameraInput
from apprentice_ros.conversions import from_time, to_time
from apprentice_ros.params import declare
from apprentice_ros.runtime import init, spin_nodes
from apprentice_ros.trajectory_cdr import TrajectoryEncoder

JOINT_QOS = QoSProfile(depth=10)
IMAGE_QOS = QoSProfile(depth=5)
EXIT_REFUSED = 2

DEFAULTS = {
    "policy_dir": "",
    "arms": ["right"],  # namespaces: /<arm>/joint_states in, commands out; card order = arm order
    "cameras": ["top"],  # /cameras/<name>/..., in the card's camera order
    "image_transport": "raw",  # raw: image_raw (Image) | compressed: image_raw/compressed (JPEG)
    # true: a lens that differs from the card's, or no camera_info, warns instead of refusing
    "allow_camera_mismatch": False,
    "control_rate": 50.0,  # Hz, a whole multiple of the card's rate, at most 200
    "execution": "ensemble",  # ensemble | receding | rtc
    "n_execute": 0,  # receding / rtc: actions per chunk (0: the card's action_horizon)
    "ensemble_k": 0.01,
    "output": "forward",  # forward | joint_state | trajectory
    "trajectory_points": 10,
    "publish_chunks": True,  # /<arm>/predicted_chunk once per inference (eval rollouts, views)
    "max_observation_age": 0.1,  # s: as-of tolerance, and the watchdog's hold threshold
    # s a message's stamp may be ahead of the host clock; one further ahead is dropped and
    # counted per stream (apprentice.stamps: why 0.5 s). Must stay below safe_after.
    "max_future_s": MAX_FUTURE_S,
    "safe_after": 1.0,  # s without fresh observations before the latched safe state
    "ramp_time": 1.0,  # s to full speed after start / resume
    "max_velocity": [1.0],  # per joint (one value: all joints), rad/s (m/s for slides)
    "max_accel": [10.0],  # rad/s²
    "execution_provider": "auto",  # auto | cpu | cuda | tensorrt
    "threads": 1,  # onnxruntime intra-op threads
    "realtime_priority": 0,  # > 0: SCHED_FIFO priority of the control thread (needs rights)
    "switch_interval": 0.0001,  # s: GIL switch interval while the loop runs (how soon a busy
    # Python thread hands the GIL to the woken control thread)
    "startup_timeout": 10.0,  # s to wait for the robot's first messages
    "estop_topic": "/estop",
}
REQUIRED_ARRAYS = ("joint_lower", "joint_upper")  # position limits, rad / m, card joint order
OPTIONAL_ARRAYS = ("safe_pose",)  # where the safe state moves to; unset: hold in place


class _Output:
    def __init__(self, node: Node, arms: dict[str, tuple[str, ...]]) -> None:
        self.arms = arms
        spans, i = {}, 0
        for arm, names in arms.items():
            spans[arm] = slice(i, i + len(names))
            i += len(names)
        self.spans = spans

    def publish(self, cmd: Command) -> None: ...


class ForwardOutput(_Output):
    def __init__(self, node: Node, arms: dict[str, tuple[str, ...]]) -> None:
        super().__init__(node, arms)
        self.pubs = {a: node.create_publisher(Float64MultiArray, f"/{a}/commands", JOINT_QOS)
                     for a in arms}  # fmt: skip

    def publish(self, cmd: Command) -> None:
        for arm, pub in self.pubs.items():
            pub.publish(Float64MultiArray(data=cmd.position[self.spans[arm]].tolist()))


class JointStateOutput(_Output):
    def __init__(self, node: Node, arms: dict[str, tuple[str, ...]]) -> None:
        super().__init__(node, arms)
        self.pubs = {a: node.create_publisher(JointState, f"/{a}/joint_commands", JOINT_QOS)
                     for a in arms}  # fmt: skip

    def publish(self, cmd: Command) -> None:
        for arm, pub in self.pubs.items():
            msg = JointState(name=list(self.arms[arm]))
            msg.header.stamp = to_time(cmd.stamp)
            msg.position = cmd.position[self.spans[arm]].tolist()
            pub.publish(msg)


class TrajectoryOutput(_Output):
    """A time-stamped chunk for joint_trajectory_controller: it replaces the rest of the
    previous trajectory from header.stamp on, so each tick's message supersedes the last."""

    wants_plan = True

    def __init__(self, node: Node, arms: dict[str, tuple[str, ...]]) -> None:
        super().__init__(node, arms)
        self.pubs = {a: node.create_publisher(JointTrajectory, f"/{a}/joint_trajectory",
                                              JOINT_QOS) for a in arms}  # fmt: skip

    def publish(self, cmd: Command) -> None:
        points = [(cmd.stamp, cmd.position), *cmd.plan]
        for arm, pub in self.pubs.items():
            msg = JointTrajectory(joint_names=list(self.arms[arm]))
            msg.header.stamp = to_time(cmd.stamp)
            for t, q in points:
                dt = max(0.0, t - cmd.stamp)
                sec = int(dt)
                msg.points.append(JointTrajectoryPoint(
                    positions=q[self.spans[arm]].tolist(),
                    time_from_start=Duration(sec=sec, nanosec=int((dt - sec) * 1e9)),
                ))  # fmt: skip
            pub.publish(msg)


class ChunkOutput:
    """Each inference's chunk (H, J) split per arm onto /<arm>/predicted_chunk, as CDR bytes:
    a JointTrajectory object would hold the GIL for its C conversion inside publish."""

    def __init__(self, node: Node, arms: dict[str, tuple[str, ...]], horizon: int,
                 dt: float) -> None:  # fmt: skip
        self.parts, i = [], 0
        for arm, names in arms.items():
            pub = node.create_publisher(JointTrajectory, f"/{arm}/predicted_chunk", JOINT_QOS)
            encoder = TrajectoryEncoder(names, horizon, dt)
            self.parts.append((pub, slice(i, i + len(names)), encoder))
            i += len(names)

    def publish(self, stamp: float, chunk: np.ndarray) -> None:
        for pub, span, encoder in self.parts:
            pub.publish(encoder.encode(stamp, chunk[:, span]))


OUTPUTS: dict[str, type[_Output]] = {
    "forward": ForwardOutput,
    "joint_state": JointStateOutput,
    "trajectory": TrajectoryOutput,
}


class PolicyNode(Node):
    def __init__(self) -> None:
        super().__init__("policy")
        self.p = declare(self, DEFAULTS)
        for name in (*REQUIRED_ARRAYS, *OPTIONAL_ARRAYS):
            self.declare_parameter(name, Parameter.Type.DOUBLE_ARRAY)
        self.runtime: PolicyRuntime | None = None
        self._arm_names: dict[str, tuple[str, ...]] = {}
        self.inputs: dict[str, CameraInput] = {}  # the card's cameras that are configured
        self._info_cams: list[str] = []  # those the card has a source for: camera_info wanted

    def _array(self, name: str) -> np.ndarray | None:
        try:
            value = self.get_parameter(name).value
        except ParameterUninitializedException:
            return None
        return None if value is None else np.asarray(value, dtype=float)

    def setup(self) -> None:
        """Steps 1-4 of the module docstring; raises PolicyRefused."""
        p, log = self.p, self.get_logger()
        if p["output"] not in OUTPUTS:
            raise PolicyRefused(f"unknown output {p['output']!r}; known: {sorted(OUTPUTS)}")
        if not p["policy_dir"]:
            raise PolicyRefused("parameter policy_dir is required")
        if not p["switch_interval"] > 0:
            raise PolicyRefused(f"switch_interval must be > 0 s, got {p['switch_interval']}")
        if not 0 <= p["max_future_s"] < p["safe_after"]:
            raise PolicyRefused(
                f"max_future_s must be >= 0 and below safe_after ({p['safe_after']:g} s), "
                f"got {p['max_future_s']}"
            )
        if p["image_transport"] not in TRANSPORTS:
            raise PolicyRefused(
                f"unknown image_transport {p['image_transport']!r}; known: {sorted(TRANSPORTS)}"
            )
        policy = open_policy(p["policy_dir"], p["execution_provider"], p["threads"])
        log.info(
            f"policy {p['policy_dir']} ({policy.card['policy_type']}): execution provider "
            f"{policy.provider} (requested {p['execution_provider']})"
        )
        if warning := unverified_warning(policy.card):
            log.warning(f"policy {p['policy_dir']}: {warning}")
        self.obs = Observations(
            p["arms"], p["cameras"], p["max_observation_age"], p["max_future_s"], self._log
        )
        for arm in p["arms"]:
            self.create_subscription(
                JointState, f"/{arm}/joint_states", lambda m, a=arm: self._on_joints(a, m),
                JOINT_QOS,
            )  # fmt: skip
        card_cams = {c["name"]: c for c in policy.card["cameras"]}
        msg_type, suffix = TRANSPORTS[p["image_transport"]]
        info_subs = []
        for cam in p["cameras"]:
            if cam not in card_cams:
                continue  # check_robot names it
            hw = (int(card_cams[cam]["height"]), int(card_cams[cam]["width"]))
            cam_input = CameraInput(cam, hw, self.obs.push_frame, self._warn)
            self.inputs[cam] = cam_input
            self.create_subscription(
                msg_type, f"/cameras/{cam}/{suffix}", cam_input.on_image, IMAGE_QOS
            )
            if "source" in card_cams[cam]:
                self._info_cams.append(cam)
                info_subs.append(self.create_subscription(
                    CameraInfo, f"/cameras/{cam}/camera_info", cam_input.on_info, IMAGE_QOS
                ))  # fmt: skip
        self._wait_for_robot(p["startup_timeout"])
        for sub in info_subs:  # the lens is checked once, here
            self.destroy_subscription(sub)

        joint_names = tuple(n for arm in p["arms"] for n in self._arm_names[arm])
        robot = RobotConfig(joint_names, tuple(p["cameras"]), p["control_rate"])
        problems = check_robot(policy.card, robot)
        lens_problems = self._check_lenses(card_cams)
        if lens_problems and p["allow_camera_mismatch"]:
            for problem in lens_problems:
                log.warning(f"{problem} (allow_camera_mismatch: running anyway)")
        else:
            problems += lens_problems
        lower, upper = self._array("joint_lower"), self._array("joint_upper")
        if lower is None or upper is None:
            problems.append("joint_lower and joint_upper are required (the safety limits)")
        if problems:
            raise PolicyRefused("policy does not fit this robot:\n  - " + "\n  - ".join(problems))
        try:
            safety = SafetyConfig(
                lower=lower, upper=upper, max_velocity=np.asarray(p["max_velocity"]),
                max_accel=np.asarray(p["max_accel"]), period=1.0 / p["control_rate"],
                hold_after=p["max_observation_age"], safe_after=p["safe_after"],
                ramp_time=p["ramp_time"], safe_pose=self._array("safe_pose"),
            )  # fmt: skip
        except ValueError as exc:
            raise PolicyRefused(f"safety limits: {exc}") from exc
        if safety.lower.size != len(joint_names):
            raise PolicyRefused(f"{safety.lower.size} joint limits for {len(joint_names)} joints")

        # In the card's arm order (the `arms` parameter), never in the order the arms' first
        # joint states happened to arrive: that swapped left and right commands at random.
        arm_joints = {a: self._arm_names[a] for a in p["arms"]}
        output = OUTPUTS[p["output"]](self, arm_joints)
        chunks = None
        if p["publish_chunks"]:
            chunks = ChunkOutput(self, arm_joints, policy.horizon, policy.dt)
        cfg = RuntimeConfig(
            control_rate_hz=p["control_rate"], execution=p["execution"],
            n_execute=p["n_execute"], ensemble_k=p["ensemble_k"],
            realtime_priority=p["realtime_priority"], switch_interval=p["switch_interval"],
            plan_points=p["trajectory_points"] if getattr(output, "wants_plan", False) else 0,
        )  # fmt: skip
        try:
            self.runtime = PolicyRuntime(policy, self.obs, safety, cfg, output.publish, self._log,
                                         chunks.publish if chunks else None)  # fmt: skip
            took = self.runtime.warm_up()
        except Exception as exc:  # a graph that loads but does not run on these shapes
            raise PolicyRefused(f"warm-up inference failed: {exc}") from exc
        self.create_subscription(Bool, p["estop_topic"], self._on_estop_topic, 10)
        self.create_service(Trigger, "~/estop", self._on_estop)
        self.create_service(Trigger, "~/rearm", self._on_rearm)
        self.create_service(Trigger, "~/stats", self._on_stats)
        current = self.obs.joints_now()
        assert current is not None
        self.runtime.start(current)
        log.info(
            f"running {p['execution']} at {p['control_rate']:g} Hz on {len(joint_names)} joints, "
            f"cameras {p['cameras']}, output {p['output']}; warm-up inference {took * 1e3:.1f} ms"
        )

    def _wait_for_robot(self, timeout: float) -> None:
        """Until every arm and camera has sent a message with a usable stamp (one the stamp
        rule accepted: the watchdog starts from it) and every camera the card has a source for
        its camera_info; a missing camera_info is `_check_lenses`'s to report."""
        end = time.monotonic() + timeout
        while True:
            missing = [a for a in self.p["arms"] if a not in self._arm_names]
            missing += [c for c, i in self.inputs.items() if i.source_hw is None]
            unstamped = self.obs.never_accepted(self.p["arms"], list(self.inputs))
            infos = [c for c in self._info_cams if self.inputs[c].info is None]
            if not missing and not unstamped and not infos:
                return
            if time.monotonic() >= end:
                break
            rclpy.spin_once(self, timeout_sec=0.05)
        if missing:
            raise PolicyRefused(f"no message within {timeout:g} s from: {', '.join(missing)}")
        if unstamped:
            raise PolicyRefused(
                f"no message with a usable stamp within {timeout:g} s from: "
                f"{', '.join(unstamped)} (every one was dropped for its stamp: see above)"
            )

    def _check_lenses(self, card_cams: dict[str, dict]) -> list[str]:
        """Each camera's live camera_info against the card's source: the lens problems."""
        problems, log = [], self.get_logger()
        for cam, cam_input in self.inputs.items():
            h, w = cam_input.source_hw or (0, 0)
            size = f"{w}x{h} {self.p['image_transport']} → {cam_input.hw[1]}x{cam_input.hw[0]}"
            trained, live = card_cams[cam].get("source"), cam_input.info
            if trained is None:
                log.warning(
                    f"camera {cam} ({size}): the policy card does not say which camera it was "
                    "trained on (exported before cards carried intrinsics): the lens cannot be "
                    "checked"
                )
                continue
            if live is None:
                problems.append(
                    f"camera {cam}: no camera_info on /cameras/{cam}/camera_info within "
                    f"{self.p['startup_timeout']:g} s: the lens cannot be checked"
                )
                continue
            if (live["height"], live["width"]) != cam_input.source_hw:
                problems.append(
                    f"camera {cam}: camera_info describes {live['width']}x{live['height']} "
                    f"images, the camera sends {w}x{h}"
                )
            found = check_lens(cam, trained, live)
            problems += found
            if not found:
                log.info(f"camera {cam} ({size}): the lens the policy was trained with")
        return problems

    def _on_joints(self, arm: str, msg: JointState) -> None:
        names = tuple(msg.name)
        if arm not in self._arm_names:
            self._arm_names[arm] = names
        elif names != self._arm_names[arm] or len(msg.position) != len(names):
            return  # the robot changed under us: these states are not the ones checked
        self.obs.push_joints(arm, from_time(msg.header.stamp), np.asarray(msg.position))

    def _warn(self, text: str) -> None:
        self.get_logger().warning(text, throttle_duration_sec=1.0)

    def _log(self, level: str, text: str) -> None:
        """The cores' log. rclpy throttles per call site: "event" lines (mode changes, dropped
        inputs; rare or rate-limited by their core) have a site of their own, never throttled,
        so a burst of over-budget warnings cannot hide them."""
        log = self.get_logger()
        if level == "error":
            log.error(text, throttle_duration_sec=1.0)
        elif level == "info":
            log.info(text)
        elif level == "event":
            log.warning(text)
        else:
            log.warning(text, throttle_duration_sec=1.0)

    def _on_estop_topic(self, msg: Bool) -> None:
        if msg.data and self.runtime is not None:
            self.runtime.estop("e-stop topic")
            self.get_logger().warning("E-STOP (topic): holding until ~/rearm")

    def _on_estop(self, _req: Trigger.Request, res: Trigger.Response) -> Trigger.Response:
        assert self.runtime is not None
        self.runtime.estop("e-stop service")
        self.get_logger().warning("E-STOP (service): holding until ~/rearm")
        res.success, res.message = True, "e-stop latched"
        return res

    def _on_rearm(self, _req: Trigger.Request, res: Trigger.Response) -> Trigger.Response:
        assert self.runtime is not None
        self.runtime.rearm()
        self.get_logger().info("re-armed: resuming with a ramp")
        res.success, res.message = True, self.runtime.safety.mode
        return res

    def _on_stats(self, _req: Trigger.Request, res: Trigger.Response) -> Trigger.Response:
        assert self.runtime is not None
        stats = self.runtime.stats()
        stats.update(
            bad_frames=sum(i.bad_frames for i in self.inputs.values()),
            provider=self.runtime.policy.provider,
            torch_imported="torch" in sys.modules,  # the robot side must run without torch
            control_rate=self.p["control_rate"],
        )
        res.success, res.message = True, json.dumps(stats)
        return res

    def destroy_node(self) -> None:
        if self.runtime is not None:
            self.runtime.stop()
        super().destroy_node()


def main(args: list[str] | None = None) -> None:
    init(args)
    node = PolicyNode()
    try:
        node.setup()
    except PolicyRefused as exc:
        node.get_logger().fatal(f"refusing to start: {exc}")
        node.destroy_node()
        rclpy.shutdown()
        sys.exit(EXIT_REFUSED)
    except KeyboardInterrupt:
        node.destroy_node()
        rclpy.shutdown()
        return
    spin_nodes([node])


if __name__ == "__main__":
    main()
