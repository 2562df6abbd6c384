"""Control-loop benchmark: the policy node at 100 Hz with inference running, on the sim robot.

Starts the simulated ALOHA graph (one camera) and the policy node as real processes on an
isolated ROS_DOMAIN_ID, runs for --seconds, then reads the node's own counters (~/stats) and
what an independent subscriber saw on /right/commands. Reports:

  period error      |wake-to-wake interval − 1/rate| of the control thread (in the node), and
                    |receive interval − 1/rate| at the subscriber (adds DDS delivery jitter)
  missed ticks      ticks the loop skipped because it woke more than a period late
  over budget       ticks whose command went out more than half a period after the deadline
  camera → command  host time a command is published − stamp of the camera frame behind the
                    newest chunk in use (inference + waiting for the tick + chunk reuse)
  start → command   node process launch → first command received; the node's sys.modules is
                    checked for torch (the robot side must not import it)

The policy is exported here (torch in this process only): an ACT at `ActConfig.cpu_preset`
size (96x128 images, d_model 256), randomly initialized, trained-at rate 50 Hz, run at 100 Hz.

    .venv/bin/python bench/control_loop.py                # 5 minutes
    .venv/bin/python bench/control_loop.py --seconds 60 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from apprentice.graph import stop_processes
from apprentice.transport import isolated_domain_id, ros_env

H, W = 96, 128  # camera images, pixels (the cpu_preset input size)
POLICY_RATE = 50.0  # Hz, the card's rate; the loop runs at a whole multiple of it
VX_JOINTS = ("waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate", "gripper")
JOINTS = tuple(f"right_{j}" for j in VX_JOINTS)
HOME = np.array([0.0, -0.96, 1.16, 0.0, -0.3, 0.0, 0.024])
LOWER = [-3.14, -1.85, -1.76, -3.14, -1.86, -3.14, 0.021]  # the sim's ViperX limits
UPPER = [3.14, 1.25, 1.6, 3.14, 2.23, 3.14, 0.057]


def export_policy(folder: Path) -> None:
    import torch

    from apprentice.learning.act.config import ActConfig
    from apprentice.learning.act.model import ActPolicy
    from apprentice.learning.export import export_onnx
    from apprentice.learning.normalize import NormStats

    torch.manual_seed(0)
    policy = ActPolicy(ActConfig.cpu_preset(state_dim=7, action_dim=7, n_cameras=1))
    rng = np.random.default_rng(0)
    offset = np.array([0.2, 0.1, -0.1, 0.2, 0.1, 0.2, 0.0])
    for key, centre in (("state", HOME), ("action", HOME + offset)):
        data = centre + 0.05 * rng.standard_normal((200, 7))
        policy.normalizer.set_stats(key, NormStats.fit(data, "mean_std"))
    export_onnx(policy, folder, joint_names=list(JOINTS), camera_names=["top"],
                control_rate_hz=POLICY_RATE, data_index_hash="bench")  # fmt: skip


def _stats(x: np.ndarray) -> dict[str, float]:
    x = x[np.isfinite(x)]
    if x.size == 0:
        return {"n": 0}
    p50, p99 = np.percentile(x, [50, 99])
    return {"n": int(x.size), "p50": float(p50), "p99": float(p99), "max": float(x.max())}


def run(args: argparse.Namespace) -> dict[str, Any]:
    os.environ.update(ros_env(domain_id=isolated_domain_id()))
    os.environ.setdefault("MUJOCO_GL", "egl")
    import rclpy
    from rclpy.node import Node
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Float64MultiArray
    from std_srvs.srv import Trigger

    from apprentice.graph import GraphRunner, load_graph, write_params_file

    tmp = Path(tempfile.mkdtemp(prefix="bench-control-"))
    policy_dir = Path(args.policy_dir) if args.policy_dir else tmp / "act"
    if not args.policy_dir:
        export_policy(policy_dir)
    graph = load_graph("sim_aloha").with_parameters(
        {"cameras": ["top"], "image_width": W, "image_height": H, "camera_rate": 30.0}
    )
    runner = GraphRunner(graph, log_dir=tmp / "logs").start()
    rclpy.init()
    node = Node("bench_control_loop")
    received: list[float] = []  # monotonic receive times
    node.create_subscription(
        Float64MultiArray, "/right/commands", lambda _m: received.append(time.monotonic()), 100
    )
    ready = []  # the sim is up before the launch clock starts
    node.create_subscription(JointState, "/right/joint_states", lambda m: ready.append(1), 10)
    deadline = time.monotonic() + 60
    while not ready and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.05)
    if not ready:
        raise RuntimeError(f"the sim robot did not start; logs in {tmp / 'logs'}")
    time.sleep(2.0)  # the camera's first frames (renderer start-up)

    params = {
        "policy_dir": str(policy_dir), "arms": ["right"], "cameras": ["top"],
        "control_rate": args.rate, "output": "forward",
        "execution": args.execution, "joint_lower": LOWER, "joint_upper": UPPER,
        "max_velocity": [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.05], "max_accel": [10.0],
        "max_observation_age": 0.15, "safe_after": 2.0, "execution_provider": "auto",
        "threads": args.threads, "realtime_priority": args.realtime_priority,
        "switch_interval": args.switch_interval,
    }  # fmt: skip
    params_file = write_params_file(params, tmp, "policy")
    log = tmp / "policy.log"
    launch_wall, launch_mono = time.time(), time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "apprentice_ros.policy_node", "--ros-args", "--params-file",
         str(params_file)],
        stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        while not received and proc.poll() is None and time.monotonic() - launch_mono < 60:
            rclpy.spin_once(node, timeout_sec=0.002)
        if not received:
            raise RuntimeError(f"no command from the policy node:\n{log.read_text()}")
        first_command_s = received[0] - launch_mono
        end = time.monotonic() + args.seconds
        while time.monotonic() < end:
            rclpy.spin_once(node, timeout_sec=0.05)
        cli = node.create_client(Trigger, "/policy/stats")
        cli.wait_for_service(timeout_sec=10)
        fut = cli.call_async(Trigger.Request())
        rclpy.spin_until_future_complete(node, fut, timeout_sec=10)
        stats = json.loads(fut.result().message)
    finally:
        stop_processes([proc], 15.0)
        node.destroy_node()
        rclpy.shutdown()
        runner.stop()
    period = 1.0 / args.rate
    rx = np.array(received[1:])  # after the first (start-up) command
    return {
        "rate_hz": args.rate,
        "seconds": args.seconds,
        "execution": args.execution,
        "provider": stats["provider"],
        "torch_imported_in_node": stats["torch_imported"],
        "start_to_first_command_s": first_command_s,
        "start_to_first_command_node_s": stats["first_command_wall"] - launch_wall,
        "realtime_priority": args.realtime_priority if stats["realtime"] else 0,
        "switch_interval_s": stats["switch_interval"],
        "ticks": stats["ticks"],
        "missed_ticks": stats["missed_ticks"],
        "over_budget": stats["over_budget"],
        "loop_period_error_s": stats["period_error_s"],
        "loop_lateness_s": stats["lateness_s"],
        "subscriber_period_error_s": _stats(np.abs(np.diff(rx) - period)),
        "subscriber_rate_hz": (rx.size - 1) / (rx[-1] - rx[0]) if rx.size > 1 else 0.0,
        "camera_to_command_s": stats["obs_to_command_s"],
        "inference_s": stats["inference_s"],
        "inferences": stats["inferences"],
        "stale_actions": stats["stale_actions"],
        "safety": stats["safety"],
        "mode": stats["mode"],
    }


def _ms(d: dict[str, float]) -> str:
    if not d.get("n"):
        return "n/a"
    return f"p50 {d['p50'] * 1e3:.3f}  p99 {d['p99'] * 1e3:.3f}  max {d['max'] * 1e3:.3f} ms"


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300.0, help="measurement time (s)")
    parser.add_argument("--rate", type=float, default=100.0, help="control rate (Hz)")
    parser.add_argument("--execution", default="ensemble", choices=["ensemble", "receding"])
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    parser.add_argument(
        "--realtime-priority",
        type=int,
        default=50,
        help="SCHED_FIFO priority of the control thread (needs rights), 0: off",
    )
    parser.add_argument(
        "--switch-interval",
        type=float,
        default=0.0001,
        help="s, the node's sys.setswitchinterval while the loop runs",
    )
    parser.add_argument("--policy-dir", help="an exported ACT folder for the sim's right arm")
    parser.add_argument("--json", type=Path, help="write the results here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse(argv)
    r = run(args)
    fifo = f"SCHED_FIFO {r['realtime_priority']}" if r["realtime_priority"] else "no SCHED_FIFO"
    print(f"control loop at {r['rate_hz']:g} Hz for {r['seconds']:g} s ({r['execution']}, "
          f"{r['provider']}, {fifo}, GIL switch interval {r['switch_interval_s'] * 1e3:g} ms), "
          f"{r['ticks']} ticks, {r['inferences']} inferences")  # fmt: skip
    print(f"  period error (loop)        {_ms(r['loop_period_error_s'])}")
    print(f"  period error (subscriber)  {_ms(r['subscriber_period_error_s'])}")
    print(f"  missed ticks {r['missed_ticks']}, over budget {r['over_budget']}, "
          f"subscriber rate {r['subscriber_rate_hz']:.2f} Hz")  # fmt: skip
    print(f"  camera stamp -> command    {_ms(r['camera_to_command_s'])}")
    print(f"  inference                  {_ms(r['inference_s'])}")
    print(f"  start -> first command     {r['start_to_first_command_s']:.2f} s "
          f"(torch imported in node: {r['torch_imported_in_node']})")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(r, indent=2) + "\n")


if __name__ == "__main__":
    main()
