"""Arm driver node: any Arm backend on ROS 2.

Topics (relative: put the node in the arm's namespace, e.g. /left):
  joint_states    sensor_msgs/JointState      at `joint_state_rate`, stamps from the backend
  commands        std_msgs/Float64MultiArray  positions in joint order (ros2_control forward
                                              position controller style)
  joint_commands  sensor_msgs/JointState      positions by joint name (others keep their target)
Services:
  stats           std_srvs/Trigger           JSON counters: accepted, rejected, clamped,
                                             future_stamps, stamps_back, ...
  set_torque      std_srvs/SetBool           torque on (holding the present pose) or off
  rearm           std_srvs/Trigger           servo buses only: leave the safe state (torque
                                             stays off until set_torque)
A rejected command (NaN/inf, wrong length, unknown joint, outside limits) is logged with its
reason and counted; the arm keeps its last accepted target. An accepted command moves each joint
at most `max_velocity` × min(time since the last accepted command, 0.05 s) (apprentice.arm_driver;
`clamped` counts those cut short). A command or torque request the backend fails (bus fault,
safe state, goal write before set_torque after a rearm, torque-on refused for a servo error) is
counted in `command_errors`; the node stays up. A reading stamped more than 0.5 s ahead of the
host clock, or before the last one published, is not published (apprentice.arm_driver
`read_new`; counted in `future_stamps` / `stamps_back`, logged at once, then every 5 s). A
failure while starting (config, calibration, bus, the first read) is one line on stderr and a
non-zero exit.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import rclpy
from rclpy.node import Node
from rclpy.qos import QoSProfile
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray
from std_srvs.srv import SetBool, Trigger

from apprentice.arm_driver import ArmDriver, Verdict
from apprentice.drivers import factory
from apprentice.drivers.link import BusError
from apprentice.robot_io import Arm
from apprentice.timing import RateLoop
from apprentice_ros.conversions import joint_state
from apprentice_ros.params import declare
from apprentice_ros.runtime import init, spin_nodes

JOINT_QOS = QoSProfile(depth=10)  # RELIABLE, KEEP_LAST: a late subscriber gets the newest


class ArmDriverNode(Node):
    def __init__(
        self,
        arm: Arm,
        name: str,
        namespace: str = "",
        rate_hz: float = 100.0,
        diagnostics: Callable[[], dict[str, Any]] | None = None,
        rearm: Callable[[], None] | None = None,
        *,
        max_velocity: float | Sequence[float] | np.ndarray,
    ) -> None:
        super().__init__(name, namespace=namespace)
        self.core = ArmDriver(arm, max_velocity)
        self.rate_hz = rate_hz
        self._diagnostics = diagnostics
        self._rearm = rearm
        self.command_errors = 0
        self._pub = self.create_publisher(JointState, "joint_states", JOINT_QOS)
        self.create_subscription(Float64MultiArray, "commands", self._on_array, JOINT_QOS)
        self.create_subscription(JointState, "joint_commands", self._on_named, JOINT_QOS)
        self.create_service(Trigger, "stats", self._on_stats)
        self.create_service(SetBool, "set_torque", self._on_torque)
        if rearm is not None:
            self.create_service(Trigger, "rearm", self._on_rearm)
        self.read_errors = 0
        self._stop = threading.Event()
        self._loop = RateLoop(rate_hz, self._stop)
        self._thread = threading.Thread(target=self._publish_loop, name=f"{name}-states")
        self._thread.start()
        self.get_logger().info(
            f"driving {arm.spec.n_joints} joints {list(arm.spec.joint_names)} at {rate_hz:g} Hz"
        )

    def _publish_loop(self) -> None:
        names = self.core.spec.joint_names
        for _ in self._loop:
            try:
                reading = self.core.read_new()  # None: no new state, or a stamp dropped
            except Exception as exc:  # a bus fault must not kill the node
                self.read_errors += 1
                self.get_logger().error(f"read failed: {exc}", throttle_duration_sec=1.0)
                continue
            report = self.core.reading_report()
            if report is not None:
                self.get_logger().warning(report)  # rate-limited by the core
            if reading is not None:
                self._pub.publish(joint_state(reading, names))

    def _report(self, verdict: Verdict) -> None:
        if not verdict.accepted:
            self.get_logger().warning(
                f"command rejected: {verdict.reason}", throttle_duration_sec=1.0
            )

    def _guarded(self, what: str, fn: Callable[[], Any]) -> Exception | None:
        """Runs a backend call; a failure is logged and counted, never raised into the
        executor (which would end the process)."""
        try:
            fn()
        except Exception as exc:
            self.command_errors += 1
            self.get_logger().error(f"{what} failed: {exc}", throttle_duration_sec=1.0)
            return exc
        return None

    def _on_array(self, msg: Float64MultiArray) -> None:
        self._guarded("command", lambda: self._report(self.core.command(msg.data)))

    def _on_named(self, msg: JointState) -> None:
        self._guarded(
            "command",
            lambda: self._report(self.core.command_named(list(msg.name), list(msg.position))),
        )

    def _on_stats(self, _req: Trigger.Request, res: Trigger.Response) -> Trigger.Response:
        stats = self.core.stats()
        stats.update(
            read_errors=self.read_errors,
            missed_ticks=self._loop.missed,
            command_errors=self.command_errors,
        )
        if self._diagnostics is not None:
            stats.update(self._diagnostics())
        res.success = True
        res.message = json.dumps(stats)
        return res

    def _on_torque(self, req: SetBool.Request, res: SetBool.Response) -> SetBool.Response:
        error = self._guarded("set_torque", lambda: self.core.set_torque(req.data))
        res.success = error is None
        res.message = str(error) if error else ("torque on" if req.data else "torque off")
        return res

    def _on_rearm(self, _req: Trigger.Request, res: Trigger.Response) -> Trigger.Response:
        assert self._rearm is not None
        error = self._guarded("rearm", self._rearm)
        res.success = error is None
        res.message = str(error) if error else "rearmed; torque stays off until set_torque"
        return res

    def destroy_node(self) -> None:
        self._stop.set()
        self._thread.join()
        super().destroy_node()


BACKENDS = tuple(factory.BACKENDS)  # feetech, dynamixel, mujoco

# Parameter defaults (their types fix the ROS parameter types; the graph test checks them).
DEFAULTS = {
    "backend": "mujoco",
    "arm": "arm",  # the arm's name in the robot config / MuJoCo scene
    "namespace": "",  # "" = the arm's name; leaders: leader/<follower> (apprentice.robot_graphs)
    "joint_state_rate": 100.0,  # Hz
    "robot": "",  # servo buses: a config in launch/robots (so101, koch, aloha) or a YAML path
    "calibration_file": "",  # servo buses: YAML written by apprentice.calibration.arm_cli
    "port": "",  # servo buses: "" = the robot config's
    "baudrate": 0,  # servo buses: 0 = the robot config's
    "scene": "so100_lift",  # mujoco only
    "seed": 0,  # mujoco only
    # Joint velocity limit, units/s: one value (every joint) or one per joint; [] = the
    # backend's (robot config max_velocity, else the servo's no-load speed; MuJoCo: 10)
    "max_velocity": [],
    "bus_timeout": 0.01,  # servo buses: s to wait for a reply beyond its wire time
    "bus_retries": 2,  # servo buses: attempts after the first before a transaction fails
}


def main(args: list[str] | None = None) -> None:
    init(args)
    boot = Node("arm_driver_params")
    p = declare(boot, DEFAULTS, dynamic=("max_velocity",))  # 3 or 3.0 or a list
    boot.destroy_node()
    try:
        built = factory.build_arm(p)
    except (ValueError, FileNotFoundError, OSError, BusError) as exc:
        # A wrong config, a missing calibration, or servos that do not match it: no prompt,
        # no guess, a message and a non-zero exit.
        rclpy.shutdown()
        raise SystemExit(f"arm_driver {p['arm']}: {exc}") from None
    override = p["max_velocity"]
    try:
        node = ArmDriverNode(
            built.arm,
            "arm_driver",
            p["namespace"] or p["arm"],
            p["joint_state_rate"],
            diagnostics=built.diagnostics,
            rearm=built.rearm,
            max_velocity=built.max_velocity if override in ([], None) else override,
        )
    except (ValueError, OSError, BusError) as exc:
        # The first read failed, or a bad max_velocity: the same one line and exit.
        built.close()
        rclpy.shutdown()
        raise SystemExit(f"arm_driver {p['arm']}: {exc}") from None
    except BaseException:
        built.close()
        raise
    spin_nodes([node], on_exit=built.close)  # close: torque off on hardware


if __name__ == "__main__":
    main()
