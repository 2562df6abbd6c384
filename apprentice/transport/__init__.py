"""Process environment for ROS 2 children that move camera images between processes.

No rclpy here: this only builds the environment a launcher, a bench or a test hands to the
processes it starts. The middleware reads these variables once, when the child's first rclpy
context starts, so they must be in the child's environment before it runs.

Measured on the 2-core development machine (docs/BENCHMARKS.md, "Camera transport"): 640x480
rgb8 at 30 Hz, RELIABLE, arrives complete either way, and the shared-memory profile cuts the
latency several-fold against Fast DDS's default UDP transport.
"""

from __future__ import annotations

import fcntl
import os
import random
from collections.abc import Mapping
from pathlib import Path

# Fast DDS XML profile: SHM transport (16 MiB segment, 4 MiB messages) plus UDPv4, as the
# default participant profile. Shipped as package data (pyproject.toml: transport/*.xml).
SHM_PROFILE: Path = Path(__file__).resolve().parent / "fastdds_shm.xml"

# Fast DDS ports are 7400 + 250 * domain + offsets, so domains above 232 overflow the port range.
_MAX_DOMAIN_ID = 232


_held_domains: list[int] = []  # lock file descriptors, held until this process exits


def isolated_domain_id() -> int:
    """A ROS_DOMAIN_ID in 120..200 that no other run on this host holds, for one test or bench.

    Far from 0 (the default every ROS install uses) so runs do not see a robot's traffic, and
    reserved with a lock file (released when this process exits) so two runs sharing the host
    never share a domain (LOCALHOST discovery alone does not separate them). Child processes
    inherit the domain through the environment, not the lock.
    """
    candidates = list(range(120, 201))
    random.shuffle(candidates)
    for domain in candidates:
        fd = os.open(f"/tmp/apprentice-ros-domain-{domain}.lock", os.O_CREAT | os.O_RDWR, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        _held_domains.append(fd)
        return domain
    raise RuntimeError("every ROS domain in 120..200 is held by another run on this host")


def ros_env(
    domain_id: int | None = None,
    shm: bool = True,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Returns a copy of `base` (default: os.environ) set up for rclpy children.

    domain_id: ROS_DOMAIN_ID to set; None keeps the one in `base` (if any).
    shm: load the shared-memory Fast DDS profile; False removes an inherited profile so the
        children run on Fast DDS's default transports (the UDP baseline).
    """
    env = dict(os.environ if base is None else base)
    # The profile is read by Fast DDS itself, and only by rmw_fastrtps_cpp: pin that RMW so a
    # user's RMW_IMPLEMENTATION=rmw_cyclonedds_cpp cannot silently ignore it.
    env["RMW_IMPLEMENTATION"] = "rmw_fastrtps_cpp"
    if shm:
        env["FASTRTPS_DEFAULT_PROFILES_FILE"] = str(SHM_PROFILE)
    else:
        env.pop("FASTRTPS_DEFAULT_PROFILES_FILE", None)
    # Discovery only on this host (Jazzy's replacement for ROS_LOCALHOST_ONLY): camera traffic
    # never leaves the machine, and other machines on the LAN cannot join a test's graph.
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    if domain_id is not None:
        if not 0 <= domain_id <= _MAX_DOMAIN_ID:
            raise ValueError(f"ROS_DOMAIN_ID must be in 0..{_MAX_DOMAIN_ID}, got {domain_id}")
        # Separates graphs that share the host: each test or bench run picks its own.
        env["ROS_DOMAIN_ID"] = str(domain_id)
    return env
