"""The arm_driver executable over the pty servo emulator, both protocols, as real processes.

One emulator and one `python -m apprentice_ros.arm_driver` process per protocol; rates are
measured by the independent probe process, goals read back through the emulator's control
socket, services called from an rclpy node in this process (isolated domain: tests/conftest.py).
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
from hw_setup import IDS, emulated_arm
from rclpy.node import Node
from std_msgs.msg import Float64MultiArray
from std_srvs.srv import SetBool, Trigger

from apprentice.calibration.arm import ArmCalibration, compute_calibration
from apprentice.drivers.emulator import EmulatorProcess
from apprentice.drivers.factory import arm_config

pytestmark = [pytest.mark.ros]


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
    out = tmp_path / "probe.json"
    topic = f"/{driver.arm}/joint_states"
    subprocess.run(
        [sys.executable, "-m", "apprentice_ros.probe", topic, "--duration", "3", "--json", out],
        check=True,
        timeout=60,
        capture_output=True,
    )
    report = json.loads(out.read_text())[topic]
    assert driver.proc.poll() is None, driver.output()
    assert report["rate_hz"] >= 200.0, report
    assert report["strictly_increasing"], report
    stats = driver.stats()
    assert stats["read_errors"] == 0 and stats["bus"]["failed_transactions"] == 0, stats


def test_commands_reach_the_servos(driver: Driver) -> None:
    assert all(driver.torques()), "torque_on_start: the follower holds"
    target = np.array([0.3, -0.2, 0.25, -0.1, 0.4, 0.6])
    expected = driver.expected_goals(target)
    assert expected != driver.goals()
    driver.command(target)
    wait_for(lambda: driver.goals() == expected, 3.0, f"goals {expected}")
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
    target = np.array([-0.3, 0.2, -0.25, 0.1, -0.4, 0.2])
    driver.command(target)
    wait_for(lambda: driver.goals() == driver.expected_goals(target), 3.0, "goals after faults")


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
    target = np.array([0.1, 0.1, 0.1, 0.1, 0.1, 0.5])
    driver.command(target)
    wait_for(lambda: driver.goals() == driver.expected_goals(target), 3.0, "goals after rearm")
    assert driver.proc.poll() is None


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
