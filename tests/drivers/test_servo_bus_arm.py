"""ServoBusArm against the emulator in another process, byte by byte on a pseudo-terminal."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import numpy as np
import pytest

from apprentice.drivers.bus_arm import ArmFaulted, JointCalibration, ServoBusArm
from apprentice.drivers.dynamixel import XL330_M288
from apprentice.drivers.emulator import EmulatorProcess
from apprentice.drivers.feetech import STS3215
from apprentice.drivers.link import BusError
from apprentice.robot_io import Arm, ArmSpec

IDS = [1, 2, 3, 4, 5, 6]
FAMILIES = {"dynamixel": XL330_M288, "feetech": STS3215()}


def make_spec(n: int) -> ArmSpec:
    return ArmSpec(
        tuple(f"joint{i}" for i in range(n)), np.full(n, -math.pi / 2), np.full(n, math.pi / 2)
    )


def make_arm(emu: EmulatorProcess, protocol: str, **kwargs: object) -> ServoBusArm:
    joints = [JointCalibration(i, homing_offset=10 * i, sign=1 if i % 2 else -1) for i in IDS]
    return ServoBusArm(emu.port, FAMILIES[protocol], make_spec(len(IDS)), joints, **kwargs)


@pytest.fixture
def arm(emu: EmulatorProcess, protocol: str) -> Iterator[ServoBusArm]:
    a = make_arm(emu, protocol)
    yield a
    a.close()


def settle(arm: ServoBusArm, target: np.ndarray, timeout_s: float = 1.0) -> np.ndarray:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        arm.write(target)  # keeps the bus (and the watchdog) busy, as a control loop would
        q = arm.read().position
        if np.allclose(q, target, atol=1e-3):  # within a tick (1.5e-3 rad)
            break
        time.sleep(0.005)
    return q


def test_round_trip_goes_through_calibration(arm: ServoBusArm, emu: EmulatorProcess) -> None:
    assert isinstance(arm, Arm)
    start = arm.read().position
    assert np.allclose(start, [-(10 * i) * 2 * math.pi / 4096 * (1 if i % 2 else -1) for i in IDS])
    arm.set_torque(True)
    target = np.linspace(-1.0, 1.0, len(IDS))
    q = settle(arm, target)
    assert np.allclose(q, target, atol=2 * math.pi / 4096)
    servos = emu.state()["servos"]
    for k, i in enumerate(IDS):  # the emulator saw the calibrated ticks
        sign = 1 if i % 2 else -1
        ticks = round(sign * target[k] * 4096 / (2 * math.pi)) + 2048 + 10 * i
        assert servos[str(i)]["goal"] == ticks
    assert arm.counters["failed_transactions"] == 0


def test_reading_has_velocity_effort_and_a_stamp_inside_the_transaction(arm: ServoBusArm) -> None:
    arm.set_torque(True)
    target = np.full(len(IDS), 0.5)
    arm.write(target)
    before = time.time()
    reading = arm.read()
    after = time.time()
    assert before < reading.stamp < after
    assert reading.velocity is not None and reading.effort is not None
    # moving toward +0.5 rad: odd ids (sign +1) turn positive in joint units, all of them do
    assert np.all(reading.velocity > 0)
    assert np.all(np.abs(reading.effort) > 0)


def test_200_hz_read_write_cycles_with_six_joints(arm: ServoBusArm) -> None:
    arm.set_torque(True)
    q = arm.read().position
    n = 200
    t0 = time.perf_counter()
    for _ in range(n):
        arm.write(q)
        q = arm.read().position
    period = (time.perf_counter() - t0) / n
    assert period < 1 / 200, f"{1 / period:.0f} Hz"
    assert arm.counters["failed_transactions"] == 0


@pytest.mark.parametrize(
    ("fault", "counter"),
    [
        ({"kind": "drop", "ids": [3], "count": 1}, "timeouts"),
        ({"kind": "corrupt", "ids": [2], "count": 2}, "checksum_errors"),
        ({"kind": "wrong_id", "ids": [4], "count": 1}, "wrong_ids"),
        ({"kind": "delay", "ids": [5], "count": 1, "delay_s": 0.03}, "timeouts"),
    ],
)
def test_transient_faults_are_retried_and_counted(
    arm: ServoBusArm, emu: EmulatorProcess, fault: dict, counter: str
) -> None:
    before = arm.counters
    emu.control("fault", **fault)
    reading = arm.read()  # retried away
    after = arm.counters
    assert after[counter] > before[counter]
    assert after["retries"] > before["retries"]
    assert after["failed_transactions"] == 0
    assert np.all(np.isfinite(reading.position))
    for _ in range(5):  # still usable
        arm.write(reading.position)
        arm.read()
    assert arm.faulted is None


def test_split_and_slightly_late_replies_need_no_retry(emu: EmulatorProcess, protocol: str) -> None:
    arm = make_arm(emu, protocol, timeout_s=0.05)  # no spurious timeouts on a loaded machine
    emu.control("fault", kind="split", count=12, gap_s=0.001)
    emu.control("fault", kind="delay", ids=[6], count=2, delay_s=0.002)  # within the timeout
    before = arm.counters
    arm.read()
    arm.read()
    after = arm.counters
    assert after["retries"] == before["retries"]
    assert after["transactions"] == before["transactions"] + 2
    arm.close()


def test_late_reply_is_drained_before_the_retry(arm: ServoBusArm, emu: EmulatorProcess) -> None:
    arm.set_torque(True)
    emu.control("fault", kind="delay", ids=[1], count=1, delay_s=0.015)  # timeout is 10 ms
    before = arm.counters
    arm.read()
    after = arm.counters
    assert after["retries"] == before["retries"] + 1
    assert after["stale_bytes"] > before["stale_bytes"]  # the late replies, dropped at once
    target = np.full(len(IDS), 0.3)
    assert np.allclose(settle(arm, target), target, atol=2e-3)


def test_persistent_loss_enters_safe_state_until_rearm(
    arm: ServoBusArm, emu: EmulatorProcess
) -> None:
    arm.set_torque(True)
    q = arm.read().position
    emu.control("vanish", ids=[3])
    for _ in range(2):
        with pytest.raises(BusError) as err:
            arm.read()
        assert not isinstance(err.value, ArmFaulted)
    with pytest.raises(ArmFaulted):
        arm.read()
    assert arm.faulted is not None
    assert arm.counters["safe_state_entries"] == 1
    servos = emu.state()["servos"]
    assert not any(servos[str(i)]["torque"] for i in IDS if i != 3)  # torque-off reached them
    emu.control("appear", ids=[3])
    with pytest.raises(ArmFaulted):
        arm.write(q)
    with pytest.raises(ArmFaulted):
        arm.set_torque(True)
    arm.read()  # reading a limp arm is allowed; it does not re-enable anything
    assert arm.faulted is not None
    arm.rearm()
    assert arm.faulted is None and arm.counters["rearms"] == 1
    assert not emu.state()["servos"]["1"]["torque"]  # rearm leaves torque off
    arm.set_torque(True)
    target = np.full(len(IDS), -0.2)
    assert np.allclose(settle(arm, target), target, atol=2e-3)


def test_rearm_fails_while_the_servo_is_still_gone(arm: ServoBusArm, emu: EmulatorProcess) -> None:
    emu.control("vanish", ids=[6])
    for _ in range(3):
        with pytest.raises(BusError):
            arm.read()
    with pytest.raises(ArmFaulted):
        arm.rearm()
    assert arm.faulted is not None


def test_error_bits_are_reported_per_joint_and_kept(
    arm: ServoBusArm, emu: EmulatorProcess, protocol: str
) -> None:
    arm.set_torque(True)
    emu.control("error", id=2, bits=["overload"])
    arm.read()
    errors = arm.servo_errors
    assert list(errors) == ["joint1"]  # id 2 is the second joint
    if protocol == "dynamixel":
        assert errors["joint1"] == ("hardware_alert", "hw:overload")
    else:
        assert errors["joint1"] == ("overload",)
    assert not emu.state()["servos"]["2"]["torque"]  # the servo protected itself
    if protocol == "feetech":
        emu.control("error", id=2, bits=[])  # the condition passes; the report stays
    arm.read()
    arm.read()
    assert arm.servo_errors == errors
    arm.clear_errors()
    arm.read()
    assert arm.servo_errors == {}
    assert emu.state()["servos"]["2"]["error_bits"] == 0  # Dynamixel: cleared by a reboot


def test_dynamixel_refuses_torque_on_with_a_latched_hardware_error() -> None:
    with EmulatorProcess("dynamixel", IDS) as emu, make_arm(emu, "dynamixel") as arm:
        emu.control("error", id=4, bits=["overheating"])
        with pytest.raises(BusError, match="joint3"):
            arm.set_torque(True)
        assert "hw:overheating" in arm.servo_errors["joint3"]


def test_dynamixel_bus_watchdog_stops_servos_when_the_host_goes_silent() -> None:
    with EmulatorProcess("dynamixel", IDS, tau_s=0.01) as emu:
        arm = make_arm(emu, "dynamixel", watchdog_s=0.06)
        assert all(s["watchdog"] == 3 for s in emu.state()["servos"].values())  # 3 × 20 ms
        arm.set_torque(True)
        q = arm.read().position
        time.sleep(0.25)  # a stalled host
        assert all(s["watchdog"] == 0xFF for s in emu.state()["servos"].values())
        with pytest.raises(ArmFaulted, match="watchdog"):
            arm.write(q + 0.1)
        assert all("bus_watchdog" in e for e in arm.servo_errors.values())
        arm.rearm()
        assert all(s["watchdog"] == 3 for s in emu.state()["servos"].values())
        arm.close()


def test_close_turns_torque_off(emu: EmulatorProcess, protocol: str) -> None:
    arm = make_arm(emu, protocol)
    arm.set_torque(True)
    assert all(s["torque"] for s in emu.state()["servos"].values())
    arm.close()
    assert not any(s["torque"] for s in emu.state()["servos"].values())


def test_limp_arm_follows_the_hand(arm: ServoBusArm, emu: EmulatorProcess) -> None:
    emu.control("move", id=1, ticks=2048 + 10 + 1024)  # joint0: +90°
    assert arm.read().position[0] == pytest.approx(math.pi / 2)


def test_adapter_unplugged_ends_in_safe_state(emu: EmulatorProcess, protocol: str) -> None:
    arm = make_arm(emu, protocol)
    arm.set_torque(True)
    q = arm.read().position
    emu.close()  # the far end of the port is gone, like a USB adapter pulled out
    for _ in range(2):
        with pytest.raises(BusError):
            arm.read()
    with pytest.raises(ArmFaulted):
        arm.read()
    with pytest.raises(ArmFaulted):
        arm.write(q)
    counts = arm.counters
    assert counts["io_errors"] + counts["timeouts"] > 0 and counts["safe_state_entries"] == 1
    arm.close()  # does not raise on a dead port
