"""ros2 launch apprentice_ros robot.launch.py graph:=<name or path>

Reads the same graph YAML as `apprentice graph run` (apprentice.graph), so the two launchers
cannot drift apart. Needs the apprentice core importable in ROS's Python (pip install -e <repo>).
"""

from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from apprentice.graph import load_graph
from launch import LaunchDescription


def _nodes(context):
    graph_arg = LaunchConfiguration("graph").perform(context)
    path = Path(graph_arg)
    if not path.is_file():
        share = Path(get_package_share_directory("apprentice_ros"))
        path = share / "launch" / "graphs" / f"{graph_arg}.yaml"
    graph = load_graph(path)
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
