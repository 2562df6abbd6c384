"""ament_python package: `colcon build` on a ROS install, `pip install -e` without one."""

from pathlib import Path

from setuptools import setup

package = "apprentice_ros"
# Every executable is a module of the same name with a main(): the graph runner
# (apprentice.graph) starts `python -m apprentice_ros.<executable>`, ros2 launch the script.
executables = [
    "arm_driver",
    "camera",
    "sim_robot",
    "teleop",
    "policy_node",
    "recorder",
    "record_session",
    "probe",
    "viewer",
]

repo = Path(__file__).resolve().parents[3]
# robot.launch.py for `ros2 launch`; it reads graphs through apprentice.graph (the core finds
# its own launch folder), so no graph is copied here.
launch_files = sorted(str(p) for p in (repo / "launch").glob("*.launch.py"))

setup(
    name=package,
    version="0.1.0",
    packages=[package],
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{package}"]),
        (f"share/{package}", ["package.xml"]),
        (f"share/{package}/launch", launch_files),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    entry_points={
        "console_scripts": [f"{name} = {package}.{name}:main" for name in executables],
    },
)
