"""Test-run setup: an isolated ROS 2 domain and the shared-memory transport for every process.

The variables are set in this process's environment before anything imports rclpy, so the
in-test rclpy nodes and every child process (graphs, probes) share one private domain.
"""

from __future__ import annotations

import os

from apprentice.transport import isolated_domain_id, ros_env

if "APPRENTICE_TEST_DOMAIN" not in os.environ:  # xdist workers / re-imports keep the first one
    os.environ["APPRENTICE_TEST_DOMAIN"] = str(isolated_domain_id())
os.environ.update(ros_env(domain_id=int(os.environ["APPRENTICE_TEST_DOMAIN"])))
os.environ.setdefault("MUJOCO_GL", "egl")


def pytest_report_header(config) -> str:
    return (
        f"ROS_DOMAIN_ID={os.environ['ROS_DOMAIN_ID']} "
        f"FASTRTPS_DEFAULT_PROFILES_FILE={os.environ.get('FASTRTPS_DEFAULT_PROFILES_FILE')} "
        f"MUJOCO_GL={os.environ['MUJOCO_GL']}"
    )
