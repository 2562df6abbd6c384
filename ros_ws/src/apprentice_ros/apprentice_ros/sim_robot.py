"""The simulated robot: one MuJoCo world served by the same nodes as hardware.

One process hosts the world, an ArmDriverNode per arm (namespace /<arm>) and a CameraNode per
camera (namespace /cameras/<camera>) — they share the physics, so they share a process. A `sim`
node adds what only a simulator has:
  /sim/reset       std_srvs/Trigger   arms home, objects to the next seed's random pose;
                                      replies JSON {"scene": ..., "seed": ...}
  /sim/task_stage  std_msgs/Int32     task progress stage (10 Hz)
  /sim/success     std_msgs/Bool      True once the stage reaches the task's last one (10 Hz)
"""

from __future__ import annotations

import json

from rclpy.node import Node
from std_msgs.msg import Bool, Int32
from std_srvs.srv import Trigger

from apprentice.drivers.factory import SIM_MAX_VELOCITY
from apprentice.sim.world import MujocoWorld
from apprentice_ros.arm_driver import ArmDriverNode
from apprentice_ros.camera import CameraNode
from apprentice_ros.params import declare
from apprentice_ros.runtime import init, spin_nodes

DEFAULTS = {
    "scene": "aloha_transfer_cube",
    "seed": 0,
    "arms": ["all"],
    "joint_state_rate": 100.0,
    # rad/s (m/s for ALOHA's gripper), every joint of every arm: the arm drivers' velocity
    # limit (apprentice.drivers.factory.SIM_MAX_VELOCITY says why 10)
    "max_velocity": SIM_MAX_VELOCITY,
    "cameras": ["top"],
    "camera_rate": 30.0,
    "image_width": 320,
    "image_height": 240,
    # Lens per camera, "<camera>=<vertical field of view, degrees>"; a camera not named keeps
    # the scene's (ALOHA's top camera: 78°, its wrist cameras: 20°).
    "camera_fovy": [],
    "supersample": 1,  # k×k rendered pixels averaged per image pixel (1: aliased edges)
    "jpeg_quality": 90,
    "publish_raw": True,
    "publish_compressed": True,
}


class SimNode(Node):
    def __init__(self, world: MujocoWorld) -> None:
        super().__init__("sim")
        self.world = world
        self._stage = self.create_publisher(Int32, "~/task_stage", 10)
        self._success = self.create_publisher(Bool, "~/success", 10)
        self.create_service(Trigger, "~/reset", self._on_reset)
        self.create_timer(0.1, self._publish_status)

    def _publish_status(self) -> None:
        status = self.world.task_status()
        self._stage.publish(Int32(data=status.stage))
        self._success.publish(Bool(data=status.success))

    def _on_reset(self, _req: Trigger.Request, res: Trigger.Response) -> Trigger.Response:
        self.world.reset(self.world.seed + 1)
        res.success = True
        res.message = json.dumps({"scene": self.world.scene.name, "seed": self.world.seed})
        return res


def camera_fovys(
    cameras: list[str], entries: list[str] | None, known: tuple[str, ...]
) -> list[float | None]:
    """The camera_fovy parameter (["top=50", ...]) as one lens per camera (None: the scene's).
    An entry may name a scene camera this run does not render (replay renders a bag's
    cameras with its graph's lenses); a name the scene lacks is an error."""
    lens: dict[str, float] = {}
    for entry in entries or []:
        name, sep, value = str(entry).partition("=")
        try:
            fovy = float(value)
        except ValueError:
            fovy = float("nan")
        if not sep or not 0.0 < fovy < 180.0:
            raise ValueError(f"camera_fovy entry {entry!r}: want <camera>=<degrees in (0, 180)>")
        if name not in known:
            raise ValueError(f"camera_fovy names {name!r}; the scene's cameras: {known}")
        lens[name] = fovy
    return [lens.get(cam) for cam in cameras]


def main(args: list[str] | None = None) -> None:
    init(args)
    sim_node_params = Node("sim_robot_params")
    # any type (an empty list has no ROS type; 2.0 should do for 2): camera_fovys and the
    # camera check them
    p = declare(sim_node_params, DEFAULTS, dynamic=("camera_fovy", "supersample"))
    sim_node_params.destroy_node()

    world = MujocoWorld(p["scene"], seed=p["seed"])
    arms = world.arm_names if p["arms"] == ["all"] else p["arms"]
    nodes: list[Node] = [SimNode(world)]
    for arm in arms:
        nodes.append(
            ArmDriverNode(
                world.arm(arm),
                "arm_driver",
                namespace=arm,
                rate_hz=p["joint_state_rate"],
                max_velocity=p["max_velocity"],
            )
        )
    fovys = camera_fovys(p["cameras"], p["camera_fovy"], world.scene.cameras)
    for cam, fovy in zip(p["cameras"], fovys, strict=True):
        camera = world.camera(
            cam, p["image_width"], p["image_height"], p["camera_rate"], fovy, p["supersample"]
        )
        nodes.append(
            CameraNode(
                camera,
                "camera",
                namespace=f"cameras/{cam}",
                raw=p["publish_raw"],
                compressed=p["publish_compressed"],
                jpeg_quality=p["jpeg_quality"],
            )
        )
    world.start()
    spin_nodes(nodes, on_exit=world.stop)


if __name__ == "__main__":
    main()
