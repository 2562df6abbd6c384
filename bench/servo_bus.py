"""Servo bus read+write cycle time over the emulator (another process, a pty, 1 Mbaud pacing).

One cycle = ServoBusArm.write (one sync write of goals) + ServoBusArm.read (one sync read of
position, velocity and effort). Run: python bench/servo_bus.py [--cycles 2000]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

from apprentice.drivers.bus_arm import JointCalibration, ServoBusArm
from apprentice.drivers.dynamixel import XL330_M288
from apprentice.drivers.emulator import EmulatorProcess
from apprentice.drivers.feetech import STS3215
from apprentice.robot_io import ArmSpec

FAMILIES = {"dynamixel": XL330_M288, "feetech": STS3215()}


def measure(protocol: str, n_joints: int, cycles: int, baudrate: int) -> np.ndarray:
    ids = list(range(1, n_joints + 1))
    spec = ArmSpec(
        tuple(f"j{i}" for i in ids), np.full(n_joints, -math.pi), np.full(n_joints, math.pi)
    )
    with EmulatorProcess(protocol, ids, baudrate=baudrate) as emu:
        joints = [JointCalibration(i) for i in ids]
        with ServoBusArm(emu.port, FAMILIES[protocol], spec, joints) as arm:
            arm.set_torque(True)
            q = arm.read().position
            times = np.empty(cycles)
            for k in range(cycles + 50):  # 50 warm-up cycles
                target = q + 0.1 * math.sin(k / 50)
                t0 = time.perf_counter()
                arm.write(target)
                arm.read()
                if k >= 50:
                    times[k - 50] = time.perf_counter() - t0
            counts = arm.counters
            failed = counts["failed_transactions"] + counts["retries"]
    if failed:
        print(f"  ({protocol}, {n_joints} joints: {failed} retries/failures: {counts})")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=2000)
    parser.add_argument("--baud", type=int, default=1_000_000, help="emulator pacing; 0 = none")
    args = parser.parse_args()
    print(f"{'protocol':10} {'joints':>6} {'mean ms':>8} {'p50 ms':>7} {'p99 ms':>7} {'max Hz':>7}")
    for protocol in ("dynamixel", "feetech"):
        for n in (6, 14):
            t = measure(protocol, n, args.cycles, args.baud) * 1e3
            print(
                f"{protocol:10} {n:6d} {t.mean():8.3f} {np.percentile(t, 50):7.3f} "
                f"{np.percentile(t, 99):7.3f} {1e3 / t.mean():7.0f}"
            )


if __name__ == "__main__":
    main()
