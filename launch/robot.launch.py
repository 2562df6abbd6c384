"""ros2 launch apprentice_ros robot.launch.py graph:=<name or path>

Reads the same graph YAML as `apprentice graph run` (apprentice.graph), so the two launchers
cannot drift apart: a YAML path, a graph name looked up where `apprentice` finds its launch
folder (apprentice.resources: this folder in a checkout, apprentice/launch in a wheel), or a
robot graph made from a robot config (so101, record_so101). Needs the apprentice core importable
in ROS's Python (pip install -e <repo>, or the wheel).
"""

from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from apprentice.graph import load_graph
from launch import LaunchDescription


def _nodes(context):
    graph = load_graph(LaunchConfiguration("graph").perform(context))
    return [
        Node(
            package="apprentice_ros",
            executable=proc.executable,
            parameters=[proc.parameters],
            output="screen",
        )
        for proc in graph.processes
    ]


def generate_launch_description():
    return LaunchDescription(
        [
            DeclareLaunchArgument("graph", default_value="sim_aloha"),
            OpaqueFunction(function=_nodes),
        ]
    )
