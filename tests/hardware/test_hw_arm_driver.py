"""The arm_driver executable over the pty servo emulator, both protocols, as real processes.

One emulator and one `python -m apprentice_ros.arm_driver` process per protocol; rates are
measured by the independent probe process, goals read back through the emulator's control
socket, services called from an rclpy node in this process (isolated domain: tests/conftest.py).
The drivers run with bus_timeout 0.05 s and bus_retries 3 (not the defaults, 0.01 s and 2), so
that the parameters' effect can be seen; the module's tests run in order on the same processes.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import rclpy
from hw_setup import IDS, JOINTS, SHOULDER_PAN_MAX_VELOCITY, emulated_arm
from rclpy.node import Node
from std_msgs.msg import Float64MultiArray
from std_srvs.srv import SetBool, Trigger

from apprentice.arm_driver import MAX_STEP_TIME
from apprentice.calibration.arm import ArmCalibration, compute_calibration
from apprentice.drivers.emulator import EmulatorProcess
from apprentice.drivers.factory import arm_config
from apprentice.drivers.joints import RAD_PER_TICK

pytestmark = [pytest.mark.ros]

BUS_TIMEOUT = 0.05  # s
BUS_RETRIES = 3


def driver_cmd(**params: object) -> list[str]:
    cmd = [sys.executable, "-m", "apprentice_ros.arm_driver", "--ros-args"]
    for key, value in params.items():
        cmd += ["-p", f"{key}:={value}"]
    return cmd


def wait_for(check: Callable[[], object], timeout_s: float, what: str) -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


class Driver:
    """One arm_driver process on one emulated bus, and the test's handles on both."""

    def __init__(self, protocol: str, folder: Path, node: Node) -> None:
        self.protocol = protocol
        self.arm = f"{protocol}_follower"
        self.node = node
        robot, cal_file = emulated_arm(folder, protocol)
        self.robot = robot
        self.cal = ArmCalibration.load(cal_file)
        self.emu = EmulatorProcess(protocol, IDS, tau_s=0.01)
        self.log = folder / f"{protocol}_driver.log"
        self.proc = subprocess.Popen(
            driver_cmd(
                backend=protocol,
                robot=robot,
                arm=self.arm,
                port=self.emu.port,
                calibration_file=cal_file,
                joint_state_rate=250.0,
                bus_timeout=BUS_TIMEOUT,
                bus_retries=BUS_RETRIES,
            ),
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        self.pub = node.create_publisher(Float64MultiArray, f"/{self.arm}/commands", 10)
        self.clients = {
            "stats": node.create_client(Trigger, f"/{self.arm}/stats"),
            "rearm": node.create_client(Trigger, f"/{self.arm}/rearm"),
            "set_torque": node.create_client(SetBool, f"/{self.arm}/set_torque"),
        }

    def call(self, service: str, request: object) -> object:
        client = self.clients[service]
        assert client.wait_for_service(timeout_sec=15), f"no {service} service\n{self.output()}"
        future = client.call_async(request)
        rclpy.spin_until_future_complete(self.node, future, timeout_sec=10)
        assert future.done(), f"{service} did not answer"
        return future.result()

    def stats(self) -> dict:
        return json.loads(self.call("stats", Trigger.Request()).message)

    def command(self, q: np.ndarray) -> None:
        self.pub.publish(Float64MultiArray(data=[float(v) for v in q]))

    def drive(self, q: np.ndarray, timeout_s: float = 5.0) -> None:
        """Commands q at 50 Hz until the goals are q's: a velocity-limited driver ramps there."""
        expected = self.expected_goals(q)
        deadline = time.monotonic() + timeout_s
        while self.goals() != expected:
            assert time.monotonic() < deadline, f"goals {self.goals()}, not {expected}"
            self.command(q)
            time.sleep(0.02)

    def positions(self) -> np.ndarray:
        """The joint values the goal registers hold."""
        cals = self.cal.joint_calibrations()
        return np.array([c.to_joint(t) for c, t in zip(cals, self.goals(), strict=True)])

    def set_torque(self, on: bool) -> SetBool.Response:
        return self.call("set_torque", SetBool.Request(data=on))

    def goals(self) -> list[int]:
        servos = self.emu.state()["servos"]
        return [round(servos[str(i)]["goal"]) for i in IDS]

    def torques(self, skip: int | None = None) -> list[bool]:
        servos = self.emu.state()["servos"]
        return [servos[str(i)]["torque"] for i in IDS if i != skip]

    def expected_goals(self, q: np.ndarray) -> list[int]:
        return [c.to_ticks(v) for c, v in zip(self.cal.joint_calibrations(), q, strict=True)]

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.emu.close()
        for client in self.clients.values():
            self.node.destroy_client(client)
        self.node.destroy_publisher(self.pub)


@pytest.fixture(scope="module")
def ros_node() -> Iterator[Node]:
    rclpy.init()
    node = Node("hw_arm_driver_test")
    yield node
    node.destroy_node()
    rclpy.shutdown()


@pytest.fixture(scope="module", params=["feetech", "dynamixel"])
def driver(request, ros_node: Node, tmp_path_factory) -> Iterator[Driver]:
    d = Driver(request.param, tmp_path_factory.mktemp(request.param), ros_node)
    yield d
    d.close()


def test_joint_states_at_200_hz_seen_by_an_independent_probe(driver: Driver, tmp_path) -> None:
    """250 Hz nominal, >= 200 Hz seen. On a host loaded by other test workers the loop can fall
    behind (seen on CI: 144-161 Hz); then the shortfall must be the driver's own count of
    skipped ticks, never a silent loss, and the rate still >= 50 Hz (4 busy loops at a higher
    priority than the test here: 98 Hz, 1759 ticks counted against a 456-state shortfall)."""
    out = tmp_path / "probe.json"
    topic = f"/{driver.arm}/joint_states"
    before = driver.stats()
    subprocess.run(
        [sys.executable, "-m", "apprentice_ros.probe", topic, "--duration", "3", "--json", out],
        check=True,
        timeout=60,
        capture_output=True,
    )
    report = json.loads(out.read_text())[topic]
    assert driver.proc.poll() is None, driver.output()
    stats = driver.stats()
    assert report["strictly_increasing"], report
    assert stats["read_errors"] == 0 and stats["bus"]["failed_transactions"] == 0, stats
    counted = sum(stats[k] - before[k] for k in ("missed_ticks", "skipped_stale"))
    print(f"probe {report['rate_hz']:.1f} Hz; the driver counted {counted} skipped ticks")
    if report["rate_hz"] < 200.0:
        shortfall = (250.0 - report["rate_hz"]) * 3.0  # states not seen in the probe's 3 s
        assert report["rate_hz"] >= 50.0 and counted >= 0.8 * shortfall, (report, stats)


def test_commands_reach_the_servos(driver: Driver) -> None:
    assert all(driver.torques()), "torque_on_start: the follower holds"
    target = np.array([0.3, -0.2, 0.25, -0.1, 0.4, 0.6])
    expected = driver.expected_goals(target)
    assert expected != driver.goals()
    driver.drive(target)
    assert driver.stats()["accepted"] >= 1


def test_transient_faults_are_retried_counted_and_survived(driver: Driver) -> None:
    before = driver.stats()["bus"]
    driver.emu.control("fault", kind="drop", ids=[3], count=2)
    driver.emu.control("fault", kind="corrupt", ids=[5], count=1)
    after = wait_for(
        lambda: (b := driver.stats()["bus"])["checksum_errors"] > before["checksum_errors"] and b,
        3.0,
        "the corrupt reply to be counted",
    )
    assert after["timeouts"] >= before["timeouts"] + 2
    assert after["retries"] > before["retries"]
    stats = driver.stats()
    assert stats["safe_state"] is None and driver.proc.poll() is None
    assert all(driver.torques())
    driver.drive(np.array([-0.3, 0.2, -0.25, 0.1, -0.4, 0.2]))


def test_persistent_loss_safe_state_no_self_rearm_then_rearm(driver: Driver) -> None:
    driver.emu.control("vanish", ids=[3])
    stats = wait_for(
        lambda: (s := driver.stats())["safe_state"] and s, 5.0, "the safe state in stats"
    )
    assert stats["bus"]["safe_state_entries"] == 1
    assert not any(driver.torques(skip=3))  # the broadcast reached every servo still there
    held = driver.goals()
    refused = stats["command_errors"]
    driver.command(np.zeros(6))
    wait_for(lambda: driver.stats()["command_errors"] > refused, 3.0, "the refusal to count")
    assert driver.goals() == held

    driver.emu.control("appear", ids=[3])  # the device is back: nothing re-enables by itself
    time.sleep(0.5)
    stats = driver.stats()
    # Servo 3 missed the safe state's torque-off broadcast while it was gone (ServoBusArm sends
    # it once, at entry), so only the others are checked limp.
    assert stats["safe_state"] is not None and not any(driver.torques(skip=3))
    assert not driver.call("set_torque", SetBool.Request(data=True)).success
    assert not any(driver.torques(skip=3))

    answer = driver.call("rearm", Trigger.Request())
    assert answer.success, answer.message
    assert driver.stats()["safe_state"] is None and not any(driver.torques(skip=3))
    assert driver.call("set_torque", SetBool.Request(data=True)).success
    assert all(driver.torques())
    driver.drive(np.array([0.1, 0.1, 0.1, 0.1, 0.1, 0.5]))
    assert driver.proc.poll() is None


def test_bus_timeout_and_retries_parameters_take_effect(driver: Driver) -> None:
    def consumed() -> bool:
        return all(f["count"] == 0 for f in driver.emu.state()["faults"])

    before = driver.stats()["bus"]
    # Replies 20 ms late: timeouts under the default 10 ms, answers under bus_timeout 50 ms.
    driver.emu.control("fault", kind="delay", ids=[2], count=20, delay_s=0.02)
    wait_for(consumed, 5.0, "the delayed replies")
    mid = driver.stats()["bus"]
    assert mid["timeouts"] == before["timeouts"], (before, mid)
    # Three replies lost in a row: with 2 retries the transaction fails, with 3 it succeeds.
    driver.emu.control("clear_faults")
    driver.emu.control("fault", kind="drop", ids=[2], count=3)
    wait_for(
        lambda: driver.stats()["bus"]["timeouts"] >= mid["timeouts"] + 3, 5.0, "three timeouts"
    )
    time.sleep(0.2)  # the fourth attempt's answer
    after = driver.stats()["bus"]
    assert after["timeouts"] == mid["timeouts"] + 3, (mid, after)
    assert after["retries"] >= mid["retries"] + 3
    assert after["failed_transactions"] == mid["failed_transactions"], (mid, after)
    driver.emu.control("clear_faults")


def test_unplug_replug_rearm_keeps_torque_off_until_set_torque(driver: Driver) -> None:
    assert all(driver.torques())
    held = driver.goals()
    t0 = time.monotonic()
    driver.emu.control("unplug")  # the USB adapter pulled; the servos keep power
    wait_for(lambda: driver.stats()["safe_state"], 3.0, "the safe state")
    time.sleep(max(0.0, 2.0 - (time.monotonic() - t0)))
    assert all(driver.torques()) and driver.goals() == held  # the torque-off went nowhere
    driver.emu.control("replug")
    wait_for(lambda: not any(driver.torques()), 3.0, "torque-off once the bus answers again")
    stats = driver.stats()
    assert stats["safe_state"] is not None and stats["bus"]["reopens"] >= 1, stats

    answer = driver.call("rearm", Trigger.Request())
    assert answer.success, answer.message
    assert not any(driver.torques()) and driver.goals() == held
    before = driver.stats()
    moved = driver.positions()
    moved[1] += 0.41  # the move, sent before set_torque
    driver.command(moved)
    wait_for(
        lambda: driver.stats()["command_errors"] > before["command_errors"], 3.0, "the refusal"
    )
    after = driver.stats()
    assert after["bus"]["refused_writes"] == before["bus"]["refused_writes"] + 1
    time.sleep(0.2)
    assert driver.goals() == held and not any(driver.torques())

    assert driver.set_torque(True).success
    assert all(driver.torques())
    driver.drive(moved)


def test_overheating_servo_refuses_torque_with_a_clear_reply(driver: Driver) -> None:
    assert driver.set_torque(False).success and not any(driver.torques())
    driver.emu.control("error", id=4, bits=["overheating"])
    answer = driver.set_torque(True)
    assert not answer.success
    assert f"{JOINTS[3]} (servo 4) reports overheating" in answer.message, answer.message
    time.sleep(0.2)
    assert not any(driver.torques())  # the healthy servos stayed off too
    driver.emu.control("error", id=4, bits=[])  # cooled down (Dynamixel: as after a reboot)
    answer = driver.set_torque(True)
    assert answer.success, answer.message
    assert all(driver.torques())


def test_a_2_rad_command_moves_a_goal_register_one_step(driver: Driver) -> None:
    stats = driver.stats()
    limits = stats["max_velocity"]
    assert limits[0] == SHOULDER_PAN_MAX_VELOCITY  # from the robot config
    # The others: the model's no-load speed; the gripper's through its linear calibration.
    speed = arm_config(driver.robot, driver.arm).joints[5].family.no_load_speed
    gripper = driver.cal.joint_calibrations()[5]
    assert limits[5] == pytest.approx(speed / RAD_PER_TICK * abs(gripper.units_per_tick))
    start = driver.goals()
    q0 = driver.positions()
    target = q0.copy()
    target[0] += -2.0 if q0[0] > 0 else 2.0
    time.sleep(0.2)  # no command for longer than the step cap
    driver.command(target)
    wait_for(lambda: driver.stats()["accepted"] > stats["accepted"], 3.0, "the command")
    one_step = q0.copy()
    one_step[0] += np.sign(target[0] - q0[0]) * SHOULDER_PAN_MAX_VELOCITY * MAX_STEP_TIME
    goals = driver.goals()
    assert abs(goals[0] - driver.expected_goals(one_step)[0]) <= 1, (start, goals)
    assert abs(goals[0] - start[0]) < 0.2 / RAD_PER_TICK  # not 2 rad: 0.15 rad
    assert goals[1:] == start[1:]
    assert driver.stats()["clamped"] == stats["clamped"] + 1


def test_sigint_stops_cleanly_with_torque_off(driver: Driver) -> None:
    assert all(driver.torques())
    driver.proc.send_signal(signal.SIGINT)
    assert driver.proc.wait(timeout=10) == 0, driver.output()
    assert not any(driver.torques())


def mismatched_koch(folder: Path, port: str) -> list[str]:
    # Koch follower: XL430-W250 at ids 1-3, but the emulator's servos are all XL330-M288.
    cfg = arm_config("koch", "follower")
    ref = {j.name: 2048 for j in cfg.joints}
    cal = compute_calibration(cfg, ref, dict.fromkeys(ref, (-900, 900)), dict.fromkeys(ref, 1))
    path = cal.save(folder / "koch.cal.yaml")
    return driver_cmd(
        backend="dynamixel", robot="koch", arm="follower", port=port, calibration_file=path
    )


def missing_id(folder: Path, port: str) -> list[str]:
    robot, cal = emulated_arm(folder, "feetech")
    return driver_cmd(
        backend="feetech", robot=robot, arm="feetech_follower", port=port, calibration_file=cal
    )


def other_calibration(folder: Path, port: str) -> list[str]:
    # A calibration made on other servos: same joints, but offsets the registers do not hold.
    robot, _ = emulated_arm(folder, "feetech")
    cfg = arm_config(robot, "feetech_follower")
    ref = {j.name: 1000 for j in cfg.joints}
    cal = compute_calibration(cfg, ref, dict.fromkeys(ref, (-500, 500)), dict.fromkeys(ref, 1))
    path = cal.save(folder / "other.cal.yaml")
    return driver_cmd(
        backend="feetech", robot=robot, arm="feetech_follower", port=port, calibration_file=path
    )


@pytest.mark.parametrize(
    ("protocol", "ids", "make_cmd", "message"),
    [
        ("dynamixel", IDS, mismatched_koch, "is XL330-M288 (model number 1200)"),
        ("feetech", IDS[:-1], missing_id, "servo id 6 does not answer"),
        ("feetech", IDS, other_calibration, "has offset 0, the calibration file"),
    ],
    ids=["different_model", "missing_id", "offsets_differ"],
)
def test_start_up_mismatch_is_a_clear_error_and_nonzero_exit(
    tmp_path, protocol: str, ids: list[int], make_cmd, message: str
) -> None:
    with EmulatorProcess(protocol, ids) as emu:
        run = subprocess.run(
            make_cmd(tmp_path, emu.port),
            stdin=subprocess.DEVNULL,  # nothing to answer: it must not wait for input
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert not any(s["torque"] for s in emu.state()["servos"].values())
    assert run.returncode != 0
    assert message in run.stderr, run.stderr
    assert "Traceback" not in run.stderr, run.stderr


@pytest.mark.parametrize("protocol", ["feetech", "dynamixel"])
def test_a_failure_in_the_first_read_is_one_line_and_a_nonzero_exit(tmp_path, protocol) -> None:
    robot, cal = emulated_arm(tmp_path, protocol, "leader")
    # Start-up reads the state in one sync read (ServoBusArm holds the present pose; the arm is
    # a leader, no torque-on); the next is the driver core's first read: its replies are lost.
    lost = {"kind": "drop", "ids": [6], "instruction": "sync_read", "skip": 1}
    with EmulatorProcess(protocol, IDS, faults=[lost]) as emu:
        run = subprocess.run(
            driver_cmd(
                backend=protocol,
                robot=robot,
                arm=f"{protocol}_leader",
                port=emu.port,
                calibration_file=cal,
            ),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
        )
        packets = emu.state()["stats"]
    assert run.returncode != 0
    assert "Traceback" not in run.stderr, run.stderr
    errors = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, run.stderr
    assert errors[0].startswith(f"arm_driver {protocol}_leader: read failed after 3 attempts")
    assert "missing ids [6]" in errors[0]
    assert packets["dropped"] == 3  # the first read's three attempts, nothing before
