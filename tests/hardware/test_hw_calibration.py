"""Arm calibration: the core's arithmetic, the round trip through emulated servos (offsets
written, reloaded, verified; a range across the encoder seam), and the CLI driven over a pipe."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from hw_setup import IDS, robot_file

from apprentice.calibration.arm import (
    REGISTERS,
    ArmCalibration,
    CalibrationMismatch,
    RangeRecorder,
    check_servos,
    compute_calibration,
    direction,
    open_bus,
    verify,
    wrap_delta,
    write_offsets,
)
from apprentice.drivers.bus_arm import RAD_PER_TICK, ServoBusArm
from apprentice.drivers.emulator import EmulatorProcess
from apprentice.drivers.factory import arm_config

# Raw ticks at the reference pose: shoulder_pan sits near the seam, so its range crosses 4095→0.
REFERENCE = {1: 4000, 2: 100, 3: 2048, 4: 1000, 5: 3000, 6: 2500}
SIGNS = {1: 1, 2: -1, 3: 1, 4: 1, 5: -1, 6: 1}  # which way raw ticks go for +joint / opening
SWEEP = (-600, 700)  # the range each joint is moved through, raw ticks from the reference


def sweep_path(step: int = 50) -> list[int]:
    lo, hi = SWEEP
    return list(range(0, hi + 1, step)) + list(range(hi, lo - 1, -step)) + list(range(lo, 1, step))


def raw(servo_id: int, delta: int) -> int:
    return (REFERENCE[servo_id] + SIGNS[servo_id] * delta) % 4096


def test_range_recorder_unwraps_across_the_seam() -> None:
    rec = RangeRecorder({"a": 4000, "b": 50})
    for t in [4050, 4095, 10, 300, 100, 3990, 3900]:
        rec.add({"a": t, "b": (50 - (t - 4000)) % 4096})
    assert rec.ranges["a"] == (-100, 396)  # 4000 → 4096 + 300: one interval, not two
    assert rec.ranges["b"] == (-396, 100)
    assert wrap_delta(10 - 4090) == 16 and wrap_delta(4090 - 10) == -16


def test_direction_needs_a_real_move() -> None:
    assert direction(4080, 30) == 1 and direction(30, 4080) == -1
    with pytest.raises(ValueError, match="move the joint further"):
        direction(2048, 2060)


def test_leader_and_follower_agree_at_the_reference_pose_and_beyond(tmp_path) -> None:
    cfg = arm_config(robot_file(tmp_path, "feetech"), "feetech_follower")
    regs = REGISTERS["feetech"]
    # The leader's servos are mounted differently: other raw ticks, other directions.
    arms = {
        "follower": ({k: REFERENCE[k] for k in IDS}, SIGNS),
        "leader": ({k: (REFERENCE[k] * 7 + 123) % 4096 for k in IDS}, {k: -SIGNS[k] for k in IDS}),
    }
    readings = {}
    for arm, (ref, signs) in arms.items():
        names = {j.servo_id: j.name for j in cfg.joints}
        cal = compute_calibration(
            cfg,
            {names[i]: ref[i] for i in IDS},
            # the same physical sweep: raw ticks run the other way where the sign is -1
            {names[i]: SWEEP if signs[i] > 0 else (-SWEEP[1], -SWEEP[0]) for i in IDS},
            {names[i]: signs[i] for i in IDS},
        )
        joint_cals = cal.joint_calibrations()
        for pose, delta in (("reference", 0), ("moved", 300)):  # delta: ticks, positive way
            readings[arm, pose] = np.array(
                [
                    jc.to_joint(regs.present((ref[i] + signs[i] * delta) % 4096, j.servo_offset))
                    for i, jc, j in zip(IDS, joint_cals, cal.joints, strict=True)
                ]
            )
    expected_ref = [j.reference for j in cfg.joints[:-1]]
    assert np.allclose(readings["follower", "reference"][:-1], expected_ref)
    for pose in ("reference", "moved"):
        assert np.allclose(readings["follower", pose], readings["leader", pose], atol=RAD_PER_TICK)
    assert readings["follower", "moved"][0] == pytest.approx(300 * RAD_PER_TICK)
    # the gripper's range maps onto (closed, open) = (0, 1) on both, whatever the direction
    lo, hi = SWEEP
    assert readings["follower", "moved"][-1] == pytest.approx((300 - lo) / (hi - lo), abs=1e-3)


def test_calibration_file_round_trip_and_mismatches(tmp_path) -> None:
    cfg = arm_config(robot_file(tmp_path, "dynamixel"), "dynamixel_follower")
    names = [j.name for j in cfg.joints]
    cal = compute_calibration(
        cfg, dict.fromkeys(names, 3000), dict.fromkeys(names, SWEEP), dict.fromkeys(names, -1)
    )
    path = cal.save(tmp_path / "cal.yaml")
    assert ArmCalibration.load(path) == cal
    assert cal.mismatches(cfg) == []
    other = arm_config("koch", "follower")  # same joint names, other models
    assert "differ from the robot config" in cal.mismatches(other)[0]
    with pytest.raises(CalibrationMismatch):
        cal.arm_spec(other)
    with pytest.raises(ValueError, match="record its range"):
        compute_calibration(
            cfg, dict.fromkeys(names, 0), dict.fromkeys(names, (0, 10)), dict.fromkeys(names, 1)
        )


@pytest.mark.parametrize("protocol", ["feetech", "dynamixel"])
def test_offsets_written_to_servos_reload_and_verify_across_the_seam(tmp_path, protocol) -> None:
    cfg = arm_config(robot_file(tmp_path, protocol), f"{protocol}_follower")
    names = {j.servo_id: j.name for j in cfg.joints}
    cal = compute_calibration(
        cfg,
        {names[i]: REFERENCE[i] for i in IDS},
        {names[i]: SWEEP for i in IDS},
        {names[i]: SIGNS[i] for i in IDS},
    )
    assert any(j.servo_offset != 0 for j in cal.joints)
    with EmulatorProcess(protocol, IDS) as emu:
        bus = open_bus(cfg, emu.port, 1_000_000)
        assert verify(bus, cfg, cal)  # fresh servos: offsets 0, not the file's
        write_offsets(bus, cal)
        bus.link.close()
        cal = ArmCalibration.load(cal.save(tmp_path / "cal.yaml"))  # reload from the file
        bus = open_bus(cfg, emu.port, 1_000_000)
        assert verify(bus, cfg, cal) == []
        bus.link.close()
        for i in IDS:
            emu.control("move", id=i, ticks=REFERENCE[i])
        arm = ServoBusArm(emu.port, cfg.family, cal.arm_spec(cfg), cal.joint_calibrations())
        try:
            q = arm.read().position
            assert np.allclose(q[:-1], 0.0)  # the reference pose reads the reference values
            emu.control("move", id=1, ticks=raw(1, 200))  # 4000 + 200 → 104: across the seam
            assert arm.read().position[0] == pytest.approx(200 * RAD_PER_TICK)
            arm.set_torque(True)
            target = arm.read().position
            target[0] = -0.4  # back across the seam, the short way
            arm.write(target)
            for _ in range(40):  # a control loop's traffic keeps the Dynamixel watchdog fed
                q = arm.read().position
                time.sleep(0.005)
            goal = emu.state()["servos"]["1"]["goal"]
            assert goal % 4096 == pytest.approx(raw(1, round(-0.4 / RAD_PER_TICK)), abs=0.5)
            assert abs(goal - raw(1, 200)) < 500  # down through the seam, not the long way round
            assert q[0] == pytest.approx(-0.4, abs=2 * RAD_PER_TICK)
        finally:
            arm.close()


def read_until_prompt(proc: subprocess.Popen) -> str:
    lines = []
    while True:
        line = proc.stdout.readline()
        assert line, "calibration CLI ended early:\n" + "".join(lines) + proc.stderr.read()
        lines.append(line)
        if line.rstrip().endswith("[Enter]"):
            return "".join(lines)


def test_cli_calibrates_from_stdin_and_verify_catches_a_changed_servo(tmp_path) -> None:
    robot = robot_file(tmp_path, "feetech")
    out = tmp_path / "follower.yaml"
    cli = [sys.executable, "-m", "apprentice.calibration.arm_cli"]
    with EmulatorProcess("feetech", IDS) as emu:
        common = ["--robot", str(robot), "--arm", "feetech_follower", "--port", emu.port]
        for i in IDS:
            emu.control("move", id=i, ticks=REFERENCE[i])
        proc = subprocess.Popen(
            [*cli, "calibrate", *common, "-o", str(out)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert "reference pose" in read_until_prompt(proc)
            proc.stdin.write("\n")
            proc.stdin.flush()
            for i in IDS:
                assert "positive direction" in read_until_prompt(proc)
                emu.control("move", id=i, ticks=raw(i, 100))
                proc.stdin.write("\n")
                proc.stdin.flush()
            assert "whole range" in read_until_prompt(proc)
            for delta in sweep_path():
                for i in IDS:
                    emu.control("move", id=i, ticks=raw(i, delta))
                time.sleep(0.03)  # the CLI samples every 10 ms
            proc.stdin.write("\n")
            proc.stdin.close()
            assert proc.wait(timeout=20) == 0, proc.stderr.read()
            assert "written to the servos" in proc.stdout.read()
        finally:
            if proc.poll() is None:
                proc.kill()
        cal = ArmCalibration.load(out)
        assert [j.sign for j in cal.joints[:-1]] == [SIGNS[i] for i in IDS[:-1]]
        lo, hi = cal.joints[0].range_values()  # shoulder_pan swept across the seam
        assert lo == pytest.approx(SWEEP[0] * RAD_PER_TICK) and hi == pytest.approx(
            SWEEP[1] * RAD_PER_TICK
        )
        check = [*cli, "verify", *common, "-c", str(out)]
        ok = subprocess.run(check, capture_output=True, text=True, timeout=30)
        assert ok.returncode == 0, ok.stderr
        # Someone recalibrates servo 2 with another tool: the file no longer fits.
        cfg = arm_config(robot, "feetech_follower")
        bus = open_bus(cfg, emu.port, 1_000_000)
        REGISTERS["feetech"].write_offset(bus, 2, 77)
        bus.link.close()
        bad = subprocess.run(check, capture_output=True, text=True, timeout=30)
        assert bad.returncode == 1
        assert "shoulder_lift: servo id 2 has offset 77" in bad.stderr


def test_late_replies_do_not_shift_onto_the_next_servos(tmp_path) -> None:
    """The emulator stalls for 0.5 s (a host under load, seen in CI), then answers every
    request it missed at once: those late replies are dropped, never taken for the next
    servos' (before: "asked id 2, reply from id 1" on every joint)."""
    cfg = arm_config(robot_file(tmp_path, "feetech"), "feetech_follower")
    with EmulatorProcess("feetech", IDS) as emu:
        bus = open_bus(cfg, emu.port, 1_000_000, timeout_s=0.02)
        try:
            assert check_servos(bus, cfg) == []
            os.kill(emu.proc.pid, signal.SIGSTOP)
            resume = threading.Timer(0.5, os.kill, (emu.proc.pid, signal.SIGCONT))
            resume.start()
            try:
                problems = check_servos(bus, cfg)
            finally:
                resume.join()
            assert problems == [], problems
            assert check_servos(bus, cfg) == []
        finally:
            bus.link.close()
