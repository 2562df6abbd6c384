"""A closed-loop evaluation session against a running simulated robot.

python -m apprentice_ros.eval_session --policy-params policy.params.yaml --episodes N --out DIR

For each episode: command the arms home (the arm drivers hold the last command they got),
reset the simulator (/sim/reset: arms home, objects at the next seed), let the objects settle
while still commanding home, start a fresh policy node process (`apprentice_ros.policy_node`
with the given params file), and from its first command on, run for `--duration` seconds while
recording /sim/success, /sim/task_stage, the camera's frames, joint states, commands and the
policy's predicted chunks (/<arm>/predicted_chunk). Then the policy node is stopped (SIGINT) and
the episode's video (DIR/videos/episode_NNN.avi), joint plot (DIR/plots/episode_NNN.png) and
streams (DIR/rollouts/episode_NNN.npz, `save_rollout`) are written.

Why a process per episode: the policy node keeps its chunk buffers and its observation
history across an e-stop/rearm, so a rearm after a reset would blend chunks predicted for the
previous episode's last pose into the first second of the next. A fresh process starts empty,
measures the reset pose and ramps from it, exactly like the first episode; it costs ~2-3 s.

Prints one JSON row per episode; --json writes the rows, after every episode (a long run that
stops keeps the episodes it finished). A row's `max_stage` is the highest /sim/task_stage seen
while the policy ran: the per-stage rates are computed from it (apprentice.evaluation).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import rclpy
from rclpy.node import Node
from rclpy.qos import QoSProfile
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Float64MultiArray, Int32
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from apprentice.eval_cli import plot_joints, write_video
from apprentice.graph import die_with, stop_processes
from apprentice_ros.conversions import from_time, image_to_array
from apprentice_ros.runtime import call_trigger, init

SETTLE_S = 0.5  # after a reset, objects drop onto the table
HOME_S = 1.0  # commanding home before a reset: the arms let go of what they hold
QUIET_S = 0.2  # after our last home command; a policy node takes > 1 s to start
STOP_TIMEOUT_S = 15.0  # for the policy node's orderly shutdown


class EvalSession(Node):
    """Subscriptions that fill the current episode's buffers while `recording` is set."""

    def __init__(self, arms: list[str], camera: str) -> None:
        super().__init__("eval_session")
        self.arms, self.camera = arms, camera
        self.recording = False
        self.first_command: float | None = None  # host time of the policy's first command
        self.clear()
        self.create_subscription(Bool, "/sim/success", self._on_success, 10)
        self.create_subscription(Int32, "/sim/task_stage", self._on_stage, 10)
        self.create_subscription(Image, f"/cameras/{camera}/image_raw", self._on_image,
                                 QoSProfile(depth=5))  # fmt: skip
        for arm in arms:
            self.create_subscription(
                JointState, f"/{arm}/joint_states", lambda m, a=arm: self._on_joints(a, m), 10
            )
            self.create_subscription(
                Float64MultiArray, f"/{arm}/commands", lambda m, a=arm: self._on_command(a, m),
                10,
            )  # fmt: skip
            self.create_subscription(
                JointTrajectory, f"/{arm}/predicted_chunk", lambda m, a=arm: self._on_chunk(a, m),
                50,
            )  # fmt: skip
        self._reset = self.create_client(Trigger, "/sim/reset")
        self._command_pubs = {
            arm: self.create_publisher(Float64MultiArray, f"/{arm}/commands", 10) for arm in arms
        }

    def command_home(self, home: dict[str, list[float]], seconds: float) -> None:
        """Publishes each arm's home pose (joint order) at 50 Hz for `seconds`."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for arm, q in home.items():
                self._command_pubs[arm].publish(Float64MultiArray(data=list(q)))
            time.sleep(0.02)

    def clear(self) -> None:
        self.success: list[bool] = []
        self.stages: list[int] = []
        # host arrival times of the above (Bool and Int32 carry no stamp)
        self.success_t: list[float] = []
        self.stages_t: list[float] = []
        self.frames: list[np.ndarray] = []  # (H, W, 3) uint8 RGB
        self.frames_t: list[float] = []  # their header stamps
        # per arm: (header stamp = the inference's observation, (H, J) predicted positions)
        self.chunks: dict[str, list[tuple[float, np.ndarray]]] = {a: [] for a in self.arms}
        self.chunk_offsets: dict[str, np.ndarray] = {}  # (H,) s, the points' time_from_start
        self.chunks_dropped = 0
        self.joints: dict[str, list[tuple[float, np.ndarray]]] = {a: [] for a in self.arms}
        self.joint_names: dict[str, list[str]] = {}
        self.commands: dict[str, list[tuple[float, np.ndarray]]] = {a: [] for a in self.arms}
        self.first_command = None
        # our own home commands may still be in flight: none of them is the policy's first
        self._quiet_until = time.time() + QUIET_S

    def _on_success(self, msg: Bool) -> None:
        if self.recording:
            self.success.append(bool(msg.data))
            self.success_t.append(time.time())

    def _on_stage(self, msg: Int32) -> None:
        if self.recording:
            self.stages.append(int(msg.data))
            self.stages_t.append(time.time())

    def _on_image(self, msg: Image) -> None:
        if self.recording:
            self.frames.append(image_to_array(msg).copy())
            self.frames_t.append(from_time(msg.header.stamp))

    def _on_chunk(self, arm: str, msg: JointTrajectory) -> None:
        if not self.recording:
            return
        q = np.array([p.positions for p in msg.points], dtype=np.float32)  # (H, J)
        offsets = np.array([from_time(p.time_from_start) for p in msg.points])
        known = self.chunk_offsets.setdefault(arm, offsets)
        names = self.joint_names.get(arm)
        if q.ndim != 2 or len(q) != len(known) or (names and q.shape[1] != len(names)):
            self.chunks_dropped += 1  # not one policy's chunk shape (in the row, never silent)
            return
        self.chunks[arm].append((from_time(msg.header.stamp), q))

    def _on_joints(self, arm: str, msg: JointState) -> None:
        self.joint_names.setdefault(arm, list(msg.name))
        if self.recording:
            self.joints[arm].append((from_time(msg.header.stamp), np.asarray(msg.position)))

    def _on_command(self, arm: str, msg: Float64MultiArray) -> None:
        now = time.time()  # forward commands carry no stamp: the arrival time
        if self.first_command is None and now > self._quiet_until:
            self.first_command = now
        if self.recording:
            self.commands[arm].append((now, np.asarray(msg.data)))

    def call(self, client, timeout: float = 30.0) -> dict:
        ok, message = call_trigger(client, timeout)
        if not ok:
            raise RuntimeError(f"{client.srv_name}: {message}")
        return json.loads(message) if message.startswith("{") else {}

    def reset_sim(self) -> dict:
        return self.call(self._reset)

    def policy_stats(self) -> dict:
        client = self.create_client(Trigger, "/policy/stats")
        try:
            return self.call(client, timeout=5.0)
        except RuntimeError:
            return {}
        finally:
            self.destroy_client(client)


def _start_policy(params: Path, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "apprentice_ros.policy_node", "--ros-args", "--params-file",
           str(params)]  # fmt: skip
    # SIGTERM when this session dies (PDEATHSIG), however it goes: never a policy node left
    return subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            preexec_fn=die_with(os.getpid()))  # fmt: skip


def run_episode(
    node: EvalSession, index: int, a: argparse.Namespace, out: Path
) -> dict[str, object]:
    # The arm drivers hold their last command: without a new one they would pull the arms
    # from the reset pose back to where the last episode's policy left them. Command home
    # before and after the reset, as teleop does while recording.
    home = json.loads(a.home) if a.home else {}
    node.command_home(home, HOME_S)
    sim = node.reset_sim()
    node.command_home(home, SETTLE_S)
    node.clear()
    name = f"episode_{index:03d}"
    log = out / "logs" / f"policy_{name}.log"
    proc = _start_policy(Path(a.policy_params), log)
    row: dict[str, object] = {"episode": index, "seed": sim["seed"]}
    end = time.monotonic() + a.startup_timeout
    while node.first_command is None and proc.poll() is None and time.monotonic() < end:
        time.sleep(0.01)
    if node.first_command is None:
        (code,) = stop_processes([proc], STOP_TIMEOUT_S)
        raise RuntimeError(f"{name}: the policy node sent no command (exit {code}); see {log}")
    node.recording = True
    t0 = time.monotonic()
    while time.monotonic() - t0 < a.duration and proc.poll() is None:
        time.sleep(0.05)
    node.recording = False
    ran = time.monotonic() - t0  # s
    stats = node.policy_stats()
    (code,) = stop_processes([proc], STOP_TIMEOUT_S)
    if not node.success:
        raise RuntimeError(f"{name}: no /sim/success message while the policy ran")
    inference = stats.get("inference_s", {})
    row.update(
        success=any(node.success),  # ACT's criterion: the last stage was reached
        success_at_end=node.success[-1],
        max_stage=max(node.stages, default=0),
        seconds=round(ran, 2),
        frames=len(node.frames),
        # fewer than half the camera's frames: the simulator stalled (a loaded host), so the
        # policy was held by its watchdog for part of the episode
        sim_stalled=len(node.frames) < 0.5 * a.fps * ran,
        inferences=stats.get("inferences", 0),
        inference_ms=round(1e3 * inference["p50"], 1) if inference.get("n") else None,
        mode=stats.get("mode", "?"),
        exit_code=code,
    )
    row["video"] = str(write_video(node.frames, out / "videos" / f"{name}.avi", a.fps))
    series = {
        arm: (node.joint_names.get(arm, []), node.joints[arm], node.commands[arm])
        for arm in node.arms
    }
    row["plot"] = str(plot_joints(series, out / "plots" / f"{name}.png", title=f"{name} "
                                  f"(seed {sim['seed']}, success {row['success']})"))  # fmt: skip
    row["chunks"] = sum(len(c) for c in node.chunks.values())
    if node.chunks_dropped:
        row["chunks_dropped"] = node.chunks_dropped
    chunks = {arm: (node.chunk_offsets.get(arm), node.chunks[arm]) for arm in node.arms}
    task = {"success": (node.success_t, node.success), "stage": (node.stages_t, node.stages)}
    row["rollout"] = str(save_rollout(
        series, out / "rollouts" / f"{name}.npz", chunks, {a.camera: node.frames_t}, task
    ))  # fmt: skip
    return row


def save_rollout(
    series: dict, path: Path, chunks: dict | None = None,
    frames_t: dict[str, list[float]] | None = None,
    task: dict[str, tuple[list[float], list]] | None = None,
) -> Path:  # fmt: skip
    """The episode's streams as arrays (times: s since the epoch):
      <arm>_names (J,), <arm>_joints_t (N,), <arm>_joints (N, J), <arm>_commands_t (M,),
      <arm>_commands (M, J)
      <arm>_chunk_t (C,) the inferences' observation stamps, <arm>_chunks (C, H, J) float32
      the predicted positions, <arm>_chunk_offsets (H,) s after its stamp each point is for
      (chunks: arm → (offsets or None, [(stamp, (H, J))]); an arm without offsets has none)
      <cam>_frames_t (F,) header stamps of the video's frames, in order (frames_t: cam → list)
      success_t, success, stage_t, stage: /sim's messages, host arrival times (task)
    Files from before chunks, frame stamps and task times lack those keys."""
    arrays: dict[str, np.ndarray] = {}
    for arm, (names, joints, commands) in series.items():
        arrays[f"{arm}_names"] = np.asarray(names, dtype=str)
        for key, samples in (("joints", joints), ("commands", commands)):
            arrays[f"{arm}_{key}_t"] = np.asarray([t for t, _ in samples], dtype=np.float64)
            arrays[f"{arm}_{key}"] = (
                np.stack([v for _, v in samples]) if samples else np.zeros((0, len(names)))
            )
    for arm, (offsets, samples) in (chunks or {}).items():
        if offsets is None:
            continue
        arrays[f"{arm}_chunk_offsets"] = np.asarray(offsets, dtype=np.float64)
        arrays[f"{arm}_chunk_t"] = np.asarray([t for t, _ in samples], dtype=np.float64)
        arrays[f"{arm}_chunks"] = np.stack([q for _, q in samples]).astype(np.float32)
    for cam, stamps in (frames_t or {}).items():
        arrays[f"{cam}_frames_t"] = np.asarray(stamps, dtype=np.float64)
    for key, (times, values) in (task or {}).items():
        arrays[f"{key}_t"] = np.asarray(times, dtype=np.float64)
        arrays[key] = np.asarray(values, dtype=np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy-params", required=True, help="params file of the policy node")
    ap.add_argument("--episodes", type=int, default=1)
    ap.add_argument("--duration", type=float, default=10.0, help="s per episode")
    ap.add_argument("--arms", nargs="+", default=["left", "right"])
    ap.add_argument("--camera", default="top", help="the camera recorded into the video")
    ap.add_argument("--fps", type=float, default=30.0, help="the camera's rate, for the video")
    ap.add_argument("--startup-timeout", type=float, default=60.0, help="s to the first command")
    ap.add_argument("--home", help="JSON {arm: [joint positions]} commanded around resets")
    ap.add_argument("--out", required=True, help="folder for videos, plots, logs")
    ap.add_argument("--json", help="write the per-episode rows here")
    a = ap.parse_args(argv)
    out = Path(a.out)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    init()  # SIGINT / SIGTERM (the CLI's, or its death: PDEATHSIG) raise KeyboardInterrupt here
    node = EvalSession(a.arms, a.camera)
    stop = threading.Event()
    spinner = threading.Thread(target=_spin, args=(node, stop), daemon=True)
    spinner.start()
    rows = []
    try:
        for i in range(a.episodes):
            row = run_episode(node, i, a, out)
            rows.append(row)
            print(f"[{i + 1}/{a.episodes}] " + json.dumps(row), flush=True)
            if a.json:
                _write_rows(rows, Path(a.json))
    except KeyboardInterrupt:  # the episode under way stopped its policy node on the way out
        print(f"eval session: stopped after {len(rows)} episode(s)", file=sys.stderr)
        return 130
    finally:
        stop.set()
        spinner.join(timeout=5)
        node.destroy_node()
        rclpy.shutdown()
        if a.json:
            _write_rows(rows, Path(a.json))
    return 0


def _write_rows(rows: list[dict], path: Path) -> None:
    """Through a temporary file and a rename: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(rows, indent=2))
    tmp.replace(path)


def _spin(node: Node, stop: threading.Event) -> None:
    while not stop.is_set() and rclpy.ok():
        rclpy.spin_once(node, timeout_sec=0.05)


if __name__ == "__main__":
    sys.exit(main())
