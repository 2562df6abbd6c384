"""Recorder benchmark: the recorder node under a full teleop load, against a do-nothing subscriber.

Real processes on an isolated ROS_DOMAIN_ID (rclpy, Fast DDS; the shared-memory profile unless
--no-shm): one publisher process per camera (sensor_msgs/Image rgb8 at 30 Hz on image_raw, or
with --compressed sensor_msgs/CompressedImage JPEG quality 90 on image_raw/compressed, what the
camera node publishes) and per arm (sensor_msgs/JointState, 6 and 7 joints, at 200 Hz), all
header-stamped with the host clock; the recorder node (apprentice_ros.recorder, run as
GraphRunner runs it) records one episode of them, and a baseline process subscribes to the same
topics the same way (raw, RELIABLE, the recorder's queue depths and executor) and only counts.
Reported:

  sent / recorded / lost  per topic: publisher count vs the recorder's /recorder/stop counts
                          (the baseline's count beside them), and the bag's own MCAP statistics
  verdict                 the recorder's quality gate (passed, reasons)
  CPU                     user+sys from /proc/<pid>/stat over the recording (start reply to
                          the stop request), as % of one core: recorder, baseline, ratio; the
                          busiest threads of each; stop()'s own cost (close, fsync); and each
                          publisher's CPU over its publishing (time.process_time)
  bag                     size, MB/s written, compression against the uncompressed chunks

    .venv/bin/python bench/recording.py                     # 120 s
    .venv/bin/python bench/recording.py --seconds 20 --json out.json
    .venv/bin/python bench/recording.py --compressed        # JPEG cameras

Roles `--role camera|arm|baseline` are the child processes; the default role runs the bench.
SIGINT/SIGTERM/SIGHUP, an error or a timeout stop every child; they also get SIGTERM when the
bench itself dies, even by kill -9 (PR_SET_PDEATHSIG, Linux).
"""

from __future__ import annotations

import argparse
import array
import ctypes
import json
import os
import shutil
import signal
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

CAMERA_HZ = 30.0
ARM_HZ = 200.0
ARM_JOINTS = (6, 7)  # an SO-100-like arm and an ALOHA-like arm (with gripper)
PREFIX = "/bench"
# Publishers' QoS depth: what most camera drivers use. The recorder picks its own (100).
PUB_DEPTH = 10
JPEG_QUALITY = 90  # the camera node's default
START_TIMEOUT_S = 90.0  # rclpy start-up and discovery of ~8 processes on a busy 2-core host
DRAIN_S = 1.0  # after the last publisher exits, for the subscribers' queues to empty
CLK_TCK = os.sysconf("SC_CLK_TCK")
PR_SET_PDEATHSIG = 1


def camera_topic(i: int, compressed: bool = False) -> str:
    return f"{PREFIX}/cam{i}/image_raw" + ("/compressed" if compressed else "")


def arm_topic(i: int) -> str:
    return f"{PREFIX}/arm{i}/joint_states"


def topics(cameras: int, compressed: bool = False) -> list[tuple[str, float, str]]:
    """(name, nominal Hz, role) of every stream."""
    return [(camera_topic(i, compressed), CAMERA_HZ, "camera") for i in range(cameras)] + [
        (arm_topic(i), ARM_HZ, "joint") for i in range(len(ARM_JOINTS))
    ]


def synthetic_frames(n: int, height: int, width: int, seed: int) -> list[bytes]:
    """n distinct rgb8 frames: gradients, a moving square and sensor-like noise (sigma 4).

    Neither pure noise (zstd skips it for free) nor flat colour (zstd squeezes it for free):
    something a real scene costs the compressor.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    out = []
    for i in range(n):
        img = np.empty((height, width, 3), dtype=np.float32)  # (H, W, 3)
        img[..., 0] = 255.0 * xx / width
        img[..., 1] = 255.0 * yy / height
        img[..., 2] = 128.0 + 100.0 * np.sin((xx + yy + 20 * i) / 40.0)
        s = max(1, height // 4)
        x0 = (i * width // n) % max(1, width - s)
        img[s : 2 * s, x0 : x0 + s] = (220.0, 40.0, 40.0)
        img += rng.normal(0.0, 4.0, img.shape)
        out.append(np.clip(img, 0, 255).astype(np.uint8).tobytes())
    return out


# --- child processes ---------------------------------------------------------------------------


def run_publisher(args: argparse.Namespace) -> dict[str, Any]:
    """One camera or one arm: waits for the recorder and the baseline, then streams."""
    import rclpy
    from rclpy.duration import Duration
    from rclpy.qos import QoSProfile
    from rclpy.signals import SignalHandlerOptions
    from sensor_msgs.msg import CompressedImage, Image, JointState

    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node(f"bench_{args.role}{args.index}")
    try:
        if args.role == "camera" and args.compressed:
            import cv2

            topic, rate, msg = camera_topic(args.index, True), CAMERA_HZ, CompressedImage()
            msg.header.frame_id = f"cam{args.index}_optical_frame"
            msg.format = "rgb8; jpeg compressed bgr8"  # as conversions.compressed_image
            frames = []
            for f in synthetic_frames(8, args.height, args.width, args.index):
                bgr = np.frombuffer(f, np.uint8).reshape(args.height, args.width, 3)[..., ::-1]
                ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
                if not ok:
                    raise RuntimeError("JPEG encoding failed")
                frames.append(array.array("B", buf.tobytes()))
        elif args.role == "camera":
            topic, rate, msg = camera_topic(args.index), CAMERA_HZ, Image()
            msg.header.frame_id = f"cam{args.index}_optical_frame"
            msg.height, msg.width, msg.encoding = args.height, args.width, "rgb8"
            msg.step = 3 * args.width  # bytes per row
            frames = [
                array.array("B", f)
                for f in synthetic_frames(8, args.height, args.width, args.index)
            ]
        else:
            topic, rate, msg = arm_topic(args.index), ARM_HZ, JointState()
            n_joints = ARM_JOINTS[args.index]
            msg.name = [f"arm{args.index}_joint{j}" for j in range(n_joints)]
            phase = np.arange(n_joints)  # rad
        pub = node.create_publisher(type(msg), topic, QoSProfile(depth=PUB_DEPTH))  # RELIABLE

        deadline = time.monotonic() + START_TIMEOUT_S
        while pub.get_subscription_count() < args.subscribers:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: fewer than {args.subscribers} subscribers")
            time.sleep(0.05)
        time.sleep(0.5)  # the readers match this writer a moment after it matches them
        (args.barrier / f"ready_{args.role}{args.index}").touch()
        while not (args.barrier / "go").exists():
            if time.monotonic() > deadline:
                raise TimeoutError("the bench never opened the start barrier")
            time.sleep(0.005)

        n = round(args.seconds * rate)
        period = 1.0 / rate  # s
        late_max = 0.0  # s, worst wake-up after a message's deadline
        sent_bytes = 0
        cpu0, t0 = time.process_time(), time.monotonic()
        for i in range(n):
            due = t0 + i * period
            time.sleep(max(0.0, due - time.monotonic()))
            late_max = max(late_max, time.monotonic() - due)
            now_ns = time.time_ns()  # the "capture" time, on the host clock, as drivers stamp
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(now_ns, 1_000_000_000)
            if args.role == "camera":
                msg.data = frames[i % len(frames)]
                sent_bytes += len(msg.data)
            else:
                q = np.sin(2 * np.pi * 0.5 * now_ns * 1e-9 + phase)  # rad, a slow wave
                msg.position = q.tolist()
                msg.velocity = (np.pi * np.cos(2 * np.pi * 0.5 * now_ns * 1e-9 + phase)).tolist()
                msg.effort = (0.1 * q).tolist()  # N·m
                sent_bytes += 24 * n_joints
            pub.publish(msg)
        wall = time.monotonic() - t0
        cpu = time.process_time() - cpu0
        # RELIABLE: stay until every sample is acknowledged, else the last ones die with us.
        acked = pub.wait_for_all_acked(Duration(seconds=10))
        return {
            "topic": topic,
            "sent": n,
            "payload_bytes": sent_bytes,
            "cpu_percent": 100.0 * cpu / wall,
            "late_max_ms": 1e3 * late_max,
            "all_acked": bool(acked),
        }
    finally:
        node.destroy_node()
        rclpy.shutdown()


def run_baseline(args: argparse.Namespace) -> None:
    """Subscribes like the recorder (raw bytes, RELIABLE, its depths and executor); counts."""
    from rclpy.node import Node
    from rclpy.qos import QoSProfile
    from sensor_msgs.msg import CompressedImage, Image, JointState

    from apprentice_ros.recorder import queue_depth, spin
    from apprentice_ros.runtime import init

    camera_type = CompressedImage if args.compressed else Image

    counts: dict[str, int] = {}

    class Baseline(Node):
        def __init__(self) -> None:
            super().__init__("bench_baseline")
            for name, hz, role in topics(args.cameras, args.compressed):
                counts[name] = 0
                self.create_subscription(
                    camera_type if role == "camera" else JointState,
                    name,
                    self._count(name),
                    QoSProfile(depth=queue_depth(hz)),
                    raw=True,
                )

        @staticmethod
        def _count(name: str):
            def on_raw(_data: bytes) -> None:
                counts[name] += 1

            return on_raw

    init()
    try:
        spin(Baseline())
    finally:
        args.result.write_text(json.dumps(counts))


# --- measuring ---------------------------------------------------------------------------------


def cpu_s(pid: int) -> tuple[float, float]:
    """(user, sys) CPU seconds of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK  # utime, stime (fields 14, 15)


def thread_cpu_s(pid: int) -> dict[str, float]:
    """CPU seconds per thread, keyed "name/tid" (Fast DDS names its threads, Python does not)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "stat").read_text()
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text.rpartition(")")[2].split()
        out[f"{name}/{task.name}"] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB -> MiB
    return float("nan")


def busiest_threads(
    before: dict[str, float], after: dict[str, float], wall: float, n: int = 6
) -> list[tuple[str, float]]:
    """The n threads that used the most CPU between two snapshots: (name/tid, % of a core)."""
    used = {k: v - before.get(k, 0.0) for k, v in after.items()}
    top = sorted(used.items(), key=lambda kv: kv[1], reverse=True)[:n]
    return [(k, 100.0 * v / wall) for k, v in top if v > 0]


def bag_stats(bag_dir: Path) -> dict[str, Any]:
    """Size on disk and, from the MCAP summary, message counts and uncompressed chunk bytes."""
    from mcap.reader import make_reader

    size = sum(p.stat().st_size for p in bag_dir.iterdir() if p.is_file())
    counts: dict[str, int] = {}
    uncompressed = 0
    for path in sorted(bag_dir.glob("*.mcap")):
        with open(path, "rb") as f:
            summary = make_reader(f).get_summary()
        if summary is None or summary.statistics is None:
            raise RuntimeError(f"{path}: no MCAP summary (unfinished bag)")
        for channel_id, count in summary.statistics.channel_message_counts.items():
            topic = summary.channels[channel_id].topic
            counts[topic] = counts.get(topic, 0) + count
        uncompressed += sum(c.uncompressed_size for c in summary.chunk_indexes)
    return {"bytes": size, "uncompressed_chunk_bytes": uncompressed, "counts": counts}


# --- the bench ---------------------------------------------------------------------------------


def _die_with_parent() -> None:
    """preexec_fn: the child gets SIGTERM when the bench dies, even by kill -9 (Linux)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _call(node: Any, srv: str, timeout: float = 60.0) -> dict[str, Any]:
    import rclpy
    from std_srvs.srv import Trigger

    client = node.create_client(Trigger, srv)
    try:
        if not client.wait_for_service(timeout_sec=timeout):
            raise TimeoutError(f"no service {srv} after {timeout:g} s")
        future = client.call_async(Trigger.Request())
        rclpy.spin_until_future_complete(node, future, timeout_sec=timeout)
        res = future.result()
        if res is None:
            raise TimeoutError(f"{srv}: no reply after {timeout:g} s")
        reply = {"success": res.success, **json.loads(res.message)}
        if not res.success:
            raise RuntimeError(f"{srv} failed: {reply}")
        return reply
    finally:
        node.destroy_client(client)


def _child(role: str, args: argparse.Namespace, out: Path, index: int = 0) -> list[str]:
    return [
        sys.executable, str(Path(__file__).resolve()),
        "--role", role,
        "--index", str(index),
        "--seconds", str(args.seconds),
        "--cameras", str(args.cameras),
        "--width", str(args.width),
        "--height", str(args.height),
        *(["--compressed"] if args.compressed else []),
        "--subscribers", "2",  # the recorder and the baseline
        "--barrier", str(out),
        "--result", str(out / f"{role}{index}.json"),
    ]  # fmt: skip


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    from apprentice.graph import write_params_file

    env = ros_env(isolated_domain_id(), shm=not args.no_shm)
    os.environ.update(env)  # before rclpy loads: this process calls the recorder's services
    if args.no_shm:
        os.environ.pop("FASTRTPS_DEFAULT_PROFILES_FILE", None)
    load_before = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="bench_recording_", dir=args.dir))
    dataset, logs = tmp / "dataset", tmp / "logs"
    logs.mkdir()
    procs: dict[str, subprocess.Popen] = {}
    node = None

    def spawn(name: str, cmd: list[str]) -> None:
        with open(logs / f"{name}.log", "wb") as log:  # the child keeps its own descriptor
            procs[name] = subprocess.Popen(
                cmd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                preexec_fn=_die_with_parent,
            )

    def check_alive() -> None:
        # Publishers exit 0 when done; the recorder and the baseline must not exit at all.
        dead = [
            (n, p.returncode)
            for n, p in procs.items()
            if p.poll() is not None and (p.returncode != 0 or n in ("recorder", "baseline0"))
        ]
        if dead:
            raise RuntimeError(f"child process(es) died: {dead} (logs in {logs})")

    try:
        for i in range(args.cameras):
            spawn(f"camera{i}", _child("camera", args, tmp, i))
        for i in range(len(ARM_JOINTS)):
            spawn(f"arm{i}", _child("arm", args, tmp, i))
        spawn("baseline0", _child("baseline", args, tmp))
        params = {
            "dataset_dir": str(dataset),
            "task": "bench",
            # no TYPE: the recorder learns types and QoS from the publishers, as in a graph
            "topics": [
                f"{name}:{hz:g}:{role}" for name, hz, role in topics(args.cameras, args.compressed)
            ],
            "discover_timeout": START_TIMEOUT_S,
        }
        # The command GraphRunner runs, started here so that it too dies with the bench.
        spawn(
            "recorder",
            [sys.executable, "-m", "apprentice_ros.recorder", "--ros-args", "--params-file"]
            + [str(write_params_file(params, tmp, "recorder"))],
        )
        recorder_pid, baseline_pid = procs["recorder"].pid, procs["baseline0"].pid

        import rclpy

        rclpy.init()
        node = rclpy.create_node("bench_recording_control")
        pubs = [n for n in procs if n not in ("recorder", "baseline0")]
        deadline = time.monotonic() + START_TIMEOUT_S
        while not all((tmp / f"ready_{n}").exists() for n in pubs):
            check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"publishers not ready after {START_TIMEOUT_S:g} s ({logs})")
            time.sleep(0.05)

        started = _call(node, "/recorder/start")
        watched = {"recorder": recorder_pid, "baseline": baseline_pid}
        cpu0 = {k: cpu_s(p) for k, p in watched.items()}
        threads0 = {k: thread_cpu_s(p) for k, p in watched.items()}
        t0 = time.monotonic()
        (tmp / "go").touch()

        deadline = t0 + args.seconds + 60.0
        while any(procs[n].poll() is None for n in pubs):
            check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError("publishers did not finish in time")
            time.sleep(0.1)
        time.sleep(DRAIN_S)
        check_alive()
        t1 = time.monotonic()
        cpu1 = {k: cpu_s(p) for k, p in watched.items()}
        threads1 = {k: thread_cpu_s(p) for k, p in watched.items()}
        stopped = _call(node, "/recorder/stop", timeout=120.0)
        t2 = time.monotonic()
        stop_cpu = sum(cpu_s(recorder_pid)) - sum(cpu1["recorder"])
        rss = {k: peak_rss_mib(p) for k, p in watched.items()}
        load_after = os.getloadavg()

        stop_processes([procs["baseline0"]], 15.0, first=signal.SIGTERM)
        # SIGTERM: 0 when it shut down cleanly
        stop_processes([procs["recorder"]], 15.0, first=signal.SIGTERM)
        baseline_counts = json.loads((tmp / "baseline0.json").read_text())
        pub_results = {n: json.loads((tmp / f"{n}.json").read_text()) for n in pubs}
        bag = bag_stats(dataset / started["episode"])
        wall = t1 - t0
        return {
            "config": {
                "seconds": args.seconds,
                "cameras": args.cameras,
                "image": [args.height, args.width],
                "camera_format": "jpeg" if args.compressed else "rgb8",
                "transport": "udp (Fast DDS defaults)" if args.no_shm else "shm profile",
                "cpus": os.cpu_count(),
            },
            "load_before": load_before,
            "load_after": load_after,
            "window_s": wall,
            "publishers": pub_results,
            "stop": stopped,
            "baseline_counts": baseline_counts,
            "bag": bag,
            "cpu_percent": {k: 100.0 * (sum(cpu1[k]) - sum(cpu0[k])) / wall for k in watched},
            "sys_cpu_percent": {k: 100.0 * (cpu1[k][1] - cpu0[k][1]) / wall for k in watched},
            "threads": {k: busiest_threads(threads0[k], threads1[k], wall) for k in watched},
            "stop_call": {"wall_s": t2 - t1, "cpu_s": stop_cpu},
            "peak_rss_mib": rss,
            "exit_codes": {n: procs[n].returncode for n in ("recorder", "baseline0")},
            "pids": watched,
            "dir": str(tmp),
        }
    finally:
        if node is not None:
            node.destroy_node()
            import rclpy

            if rclpy.ok():
                rclpy.shutdown()
        stop_processes(list(procs.values()), 10.0, first=signal.SIGTERM)
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


def format_report(r: dict[str, Any]) -> str:
    c = r["config"]
    stop = r["stop"]
    lines = [
        f"recorder bench: {c['seconds']:g} s, {c['cameras']} cameras {c['image'][1]}x"
        f"{c['image'][0]} {c.get('camera_format', 'rgb8')} @ {CAMERA_HZ:g} Hz + "
        f"{len(ARM_JOINTS)} arms @ {ARM_HZ:g} Hz, "
        f"{c['transport']}, {c['cpus']} CPUs",
        "load average (1/5/15 min) before: "
        + " ".join(f"{x:.2f}" for x in r["load_before"])
        + ", after: "
        + " ".join(f"{x:.2f}" for x in r["load_after"]),
        "",
        "| topic | sent | recorded | lost | in bag | baseline got | pub CPU % | pub late max ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    total_lost = 0
    for p in r["publishers"].values():
        topic = p["topic"]
        recorded = stop["counts"].get(topic, 0)
        total_lost += p["sent"] - recorded
        lines.append(
            f"| {topic} | {p['sent']} | {recorded} | {p['sent'] - recorded} "
            f"| {r['bag']['counts'].get(topic, 0)} | {r['baseline_counts'].get(topic, 0)} "
            f"| {p['cpu_percent']:.1f} | {p['late_max_ms']:.1f} |"
        )
    payload = sum(p["payload_bytes"] for p in r["publishers"].values())
    bag = r["bag"]
    duration = stop["duration_s"]
    cpu = r["cpu_percent"]
    lines += [
        "",
        f"lost in all: {total_lost} (goal 0)",
        f"quality verdict: {'PASSED' if stop['passed'] else 'FLAGGED'}"
        + "".join(f"\n  - {reason}" for reason in stop["reasons"]),
        f"recorder CPU: {cpu['recorder']:.1f} % of one core over {r['window_s']:.1f} s "
        f"(goal <= 25 %; {cpu['recorder'] * r['window_s'] / c['seconds']:.1f} % per second "
        f"of the {c['seconds']:g} s of publishing); "
        f"baseline subscriber: {cpu['baseline']:.1f} %; "
        f"ratio recorder/baseline: {cpu['recorder'] / max(cpu['baseline'], 1e-9):.2f}; "
        f"recorder minus baseline: {cpu['recorder'] - cpu['baseline']:.1f} %",
        f"  of which in the kernel (sys): recorder {r['sys_cpu_percent']['recorder']:.1f} %, "
        f"baseline {r['sys_cpu_percent']['baseline']:.1f} %",
        f"stop (close + fsync): {r['stop_call']['wall_s']:.2f} s wall, "
        f"{r['stop_call']['cpu_s']:.2f} s CPU",
        f"bag: {bag['bytes'] / 1e6:.0f} MB over {duration:.1f} s = "
        f"{bag['bytes'] / 1e6 / max(duration, 1e-9):.1f} MB/s written; payload sent "
        f"{payload / 1e6 / max(duration, 1e-9):.1f} MB/s; zstd ratio "
        f"{bag['uncompressed_chunk_bytes'] / max(bag['bytes'], 1):.2f}",
        f"peak RSS MiB: recorder {r['peak_rss_mib']['recorder']:.0f}, "
        f"baseline {r['peak_rss_mib']['baseline']:.0f}; exit codes: {r['exit_codes']}",
    ]
    for who in ("recorder", "baseline"):
        busiest = ", ".join(f"{name} {pct:.1f}" for name, pct in r["threads"][who])
        lines.append(f"busiest threads, {who} (% of a core): {busiest}")
    return "\n".join(lines)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=120.0, help="publishing time (s)")
    ap.add_argument("--cameras", type=int, default=3)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument(
        "--compressed",
        action="store_true",
        help="cameras publish sensor_msgs/CompressedImage (JPEG) on image_raw/compressed",
    )
    ap.add_argument(
        "--no-shm", action="store_true", help="Fast DDS default transports, no SHM profile"
    )
    ap.add_argument("--json", type=Path, help="also write the measurements here")
    ap.add_argument("--keep", action="store_true", help="keep the bag and the logs")
    ap.add_argument("--dir", type=Path, help="where the bag goes (default: the temp folder)")
    # Child-process arguments (set by the bench).
    ap.add_argument("--role", choices=("run", "camera", "arm", "baseline"), default="run")
    ap.add_argument("--index", type=int, default=0)
    ap.add_argument("--subscribers", type=int, default=2)
    ap.add_argument("--barrier", type=Path)
    ap.add_argument("--result", type=Path)
    args = ap.parse_args(argv)
    if args.cameras < 0 or args.width <= 0 or args.height <= 0 or args.seconds <= 0:
        ap.error("--cameras must be >= 0; --width, --height and --seconds positive")
    return args


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    if args.role == "baseline":
        run_baseline(args)
        return 0
    if args.role in ("camera", "arm"):
        args.result.write_text(json.dumps(run_publisher(args)))
        return 0
    for sig in (signal.SIGTERM, signal.SIGHUP):  # the finally clauses stop every child
        signal.signal(sig, _interrupt)
    try:
        result = run_bench(args)
    except KeyboardInterrupt:  # every child is stopped by now
        print("interrupted", file=sys.stderr)
        return 130
    print(format_report(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
