"""Camera transport benchmark: raw images between ROS 2 processes, default UDP vs shared memory.

Each case starts one subscriber process and one publisher process per camera (real rclpy, Fast
DDS through rmw_fastrtps_cpp, an isolated ROS_DOMAIN_ID per case). Publishers send
sensor_msgs/Image 640x480 rgb8 (or sensor_msgs/CompressedImage JPEG) at 30 Hz, stamped with the
host clock at "capture", just before the message is filled. The subscriber measures

    received / sent, and latency = (time the pixels are usable in its callback) - header stamp

so JPEG latency includes encoding and decoding. Both sides run on one host and one clock.

    .venv/bin/python bench/camera_transport.py                  # default cases, 10 s each
    .venv/bin/python bench/camera_transport.py --cases shm --seconds 3 --json out.json

Roles `--role pub` and `--role sub` are the child processes; the default role runs the cases.
"""

from __future__ import annotations

import argparse
import array
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from apprentice.graph import stop_processes
from apprentice.transport import isolated_domain_id, ros_env


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # "raw": sensor_msgs/Image rgb8; "jpeg": sensor_msgs/CompressedImage
    shm: bool  # load apprentice/transport/fastdds_shm.xml; False: Fast DDS defaults (UDP)
    cameras: int = 1
    reliable: bool = True


CASES: dict[str, Case] = {
    c.name: c
    for c in (
        Case("udp", "raw", shm=False),  # the baseline the ratios refer to
        Case("shm", "raw", shm=True),
        Case("jpeg-udp", "jpeg", shm=False),
        Case("shm-3cam", "raw", shm=True, cameras=3),
        Case("udp-best-effort", "raw", shm=False, reliable=False),
        Case("udp-3cam", "raw", shm=False, cameras=3),
    )
}
DEFAULT_CASES = ("udp", "shm", "jpeg-udp", "shm-3cam")
BASELINE = "udp"
JPEG_QUALITY = 90  # 0..100 (cv2's default: 95)
MAX_WAIT_FOR_SUBSCRIBER_S = 30.0  # rclpy start-up on a busy 2-core machine takes seconds
DRAIN_S = 1.0  # after the last publisher exits, for the subscriber's queue to empty


def summarize(latencies_ms: Sequence[float]) -> dict[str, float]:
    """Mean, median, 99th percentile and maximum of a latency sample (ms); NaN when empty."""
    if len(latencies_ms) == 0:
        return {"mean": float("nan"), "p50": float("nan"), "p99": float("nan"), "max": float("nan")}
    x = np.asarray(latencies_ms, dtype=float)
    return {
        "mean": float(x.mean()),
        "p50": float(np.percentile(x, 50)),
        "p99": float(np.percentile(x, 99)),
        "max": float(x.max()),
    }


def topic_name(prefix: str, camera: int) -> str:
    return f"{prefix}/cam{camera}/image"


def synthetic_frames(n: int, height: int, width: int, seed: int = 0) -> list[np.ndarray]:
    """n distinct RGB frames (H, W, 3) uint8: gradients, a moving square and sensor-like noise.

    Not random noise (which JPEG cannot compress) nor flat colour (which it compresses to
    nothing): something in between, so the JPEG case costs roughly what a real scene costs.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    frames = []
    for i in range(n):
        img = np.empty((height, width, 3), dtype=np.float32)
        img[..., 0] = 255.0 * xx / width
        img[..., 1] = 255.0 * yy / height
        img[..., 2] = 128.0 + 100.0 * np.sin((xx + yy + 20 * i) / 40.0)
        s = height // 4
        x0 = (i * width // n) % (width - s)
        img[s : 2 * s, x0 : x0 + s] = (220.0, 40.0, 40.0)
        img += rng.normal(0.0, 4.0, img.shape)
        frames.append(np.clip(img, 0, 255).astype(np.uint8))
    return frames


def _qos(reliable: bool):
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

    # Depth 10 as most camera drivers; volatile: late joiners do not want old frames.
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=10,
        reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
    )


def run_publisher(args: argparse.Namespace) -> dict[str, Any]:
    import cv2
    import rclpy
    from rclpy.duration import Duration
    from rclpy.signals import SignalHandlerOptions
    from sensor_msgs.msg import CompressedImage, Image

    frames = synthetic_frames(8, args.height, args.width, seed=args.camera)
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node(f"bench_camera_pub_{args.camera}")
    try:
        topic = topic_name(args.prefix, args.camera)
        msg_type = CompressedImage if args.kind == "jpeg" else Image
        pub = node.create_publisher(msg_type, topic, _qos(args.reliable))
        msg = msg_type()
        msg.header.frame_id = f"cam{args.camera}_optical_frame"
        if args.kind == "jpeg":
            msg.format = "rgb8; jpeg compressed bgr8"  # compressed_image_transport's convention
        else:
            msg.height, msg.width, msg.encoding = args.height, args.width, "rgb8"
            msg.step = 3 * args.width  # bytes per row

        deadline = time.monotonic() + MAX_WAIT_FOR_SUBSCRIBER_S
        while pub.get_subscription_count() < 1:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no subscriber on {topic} after {MAX_WAIT_FOR_SUBSCRIBER_S} s")
            time.sleep(0.05)
        time.sleep(0.5)  # the reader side matches this writer a moment after the writer side
        # Start barrier: every camera starts streaming together, once all processes are up, so
        # neither start-up CPU nor a camera still starting skews the measured streams.
        if args.barrier is not None:
            (args.barrier / f"ready{args.camera}").touch()
            while not (args.barrier / "go").exists():
                if time.monotonic() > deadline:
                    raise TimeoutError("the parent never opened the start barrier")
                time.sleep(0.01)

        n = round(args.seconds * args.rate)
        period = 1.0 / args.rate  # s
        sent_bytes = 0
        late_max = 0.0  # s, worst wake-up after a frame's deadline
        cpu0, t0 = time.process_time(), time.monotonic() + period
        for i in range(n):
            due = t0 + i * period
            time.sleep(max(0.0, due - time.monotonic()))
            late_max = max(late_max, time.monotonic() - due)
            stamp_ns = time.time_ns()  # "exposure" on the host clock, as a driver would stamp
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
            frame = frames[i % len(frames)]
            data = array.array("B")
            if args.kind == "jpeg":
                ok, buf = cv2.imencode(
                    ".jpg",
                    cv2.cvtColor(frame, cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY],
                )
                if not ok:
                    raise RuntimeError("JPEG encoding failed")
                data.frombytes(buf.tobytes())
            else:
                data.frombytes(frame.data)  # the copy a driver makes from its capture buffer
            msg.data = data
            pub.publish(msg)
            sent_bytes += len(data)
        wall = time.monotonic() - t0 + period
        cpu = time.process_time() - cpu0
        # RELIABLE: stay until every sample is acknowledged, else the last frames die with us.
        acked = pub.wait_for_all_acked(Duration(seconds=5)) if args.reliable else True
        return {
            "sent": n,
            "bytes_per_msg": sent_bytes / max(n, 1),
            "cpu_percent": 100.0 * cpu / wall,  # of one core, during publishing
            "late_max_ms": 1e3 * late_max,
            "all_acked": bool(acked),
        }
    finally:
        node.destroy_node()
        rclpy.shutdown()


def run_subscriber(args: argparse.Namespace) -> dict[str, Any]:
    import cv2
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions
    from sensor_msgs.msg import CompressedImage, Image

    # The parent stops us with SIGTERM once the publishers are done; rclpy's own handlers would
    # tear the context down under the executor, so we take the signals ourselves.
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    samples: list[tuple[int, int, int]] = []  # (camera, stamp ns, latency ns)
    bad: list[str] = []
    cpu_first: list[float] = []
    expected = (args.height, args.width, 3)

    def make_callback(camera: int) -> Callable[[Any], None]:
        def on_image(msg: Any) -> None:
            img = None
            if args.kind == "jpeg":
                bgr = cv2.imdecode(np.frombuffer(msg.data, np.uint8), cv2.IMREAD_COLOR)
                if bgr is not None:
                    img = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            elif msg.encoding == "rgb8" and len(msg.data) == msg.height * msg.step:
                rows = np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.step)
                img = rows[:, : 3 * msg.width].reshape(msg.height, msg.width, 3)  # a view
            now_ns = time.time_ns()
            if not cpu_first:
                cpu_first.append(time.process_time())
            stamp_ns = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
            if img is None or img.shape != expected:
                bad.append(f"cam{camera}: {len(msg.data)} bytes, not a {expected} image")
                return
            samples.append((camera, stamp_ns, now_ns - stamp_ns))

        return on_image

    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node("bench_camera_sub")
    executor = SingleThreadedExecutor()
    try:
        executor.add_node(node)
        msg_type = CompressedImage if args.kind == "jpeg" else Image
        for cam in range(args.cameras):
            node.create_subscription(
                msg_type, topic_name(args.prefix, cam), make_callback(cam), _qos(args.reliable)
            )
        while not stop:
            executor.spin_once(timeout_sec=0.05)
        cpu_last = time.process_time()
        shm_mib = _mapped_fastdds_segments_mib()
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown()

    span_s = (max(s[1] for s in samples) - min(s[1] for s in samples)) / 1e9 if samples else 0.0
    return {
        "samples": samples,
        "malformed": bad,
        # Of one core, from the first frame to the stop signal (includes DRAIN_S of idling).
        "cpu_percent": 100.0 * (cpu_last - cpu_first[0]) / (span_s + DRAIN_S) if samples else 0.0,
        "shm_segments_mib": shm_mib,
    }


def _mapped_fastdds_segments_mib() -> list[float]:
    """Sizes (MiB) of the Fast DDS shared-memory segments this process maps (Linux only).

    Shows which profile the middleware really loaded: the SHM profile's segment is 16 MiB (plus
    headers); Fast DDS's default SHM transport's is 0.5 MiB. Port files are queues: skipped.
    """
    maps = Path("/proc/self/maps")
    if not maps.exists():
        return []
    paths = {line.split()[-1] for line in maps.read_text().splitlines() if "/dev/shm/" in line}
    sizes = []
    for path in paths:
        if path.startswith("/dev/shm/fastrtps_") and "port" not in os.path.basename(path):
            try:
                sizes.append(os.stat(path).st_size / 2**20)
            except FileNotFoundError:  # a peer that left unlinks its segment
                continue
    return sorted(sizes)


def _child_command(
    role: str, case: Case, args: argparse.Namespace, result: Path, camera: int = 0
) -> list[str]:
    return [
        sys.executable,
        str(Path(__file__).resolve()),
        "--role", role,
        "--kind", case.kind,
        "--cameras", str(case.cameras),
        "--camera", str(camera),
        "--qos", "reliable" if case.reliable else "best-effort",
        "--seconds", str(args.seconds),
        "--rate", str(args.rate),
        "--width", str(args.width),
        "--height", str(args.height),
        "--prefix", args.prefix,
        "--result", str(result),
        "--barrier", str(result.parent),
    ]  # fmt: skip


def run_case(case: Case, args: argparse.Namespace) -> dict[str, Any]:
    """Runs one case in fresh processes on a fresh ROS_DOMAIN_ID; returns its measurements."""
    env = ros_env(isolated_domain_id(), shm=case.shm)
    load = os.getloadavg()[0]  # other work on the machine shows in the tail latencies
    with tempfile.TemporaryDirectory(prefix=f"camera_transport_{case.name}_") as tmp:
        out = Path(tmp)
        procs: list[tuple[str, subprocess.Popen, Path]] = []

        def spawn(role: str, camera: int = 0) -> subprocess.Popen:
            name = "sub" if role == "sub" else f"pub{camera}"
            result = out / f"{name}.json"
            cmd = _child_command(role, case, args, result, camera)
            with open(out / f"{name}.log", "wb") as log:  # the child keeps its own descriptor
                p = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
            procs.append((name, p, result))
            return p

        try:
            sub = spawn("sub")
            pubs = [spawn("pub", cam) for cam in range(case.cameras)]
            deadline = time.monotonic() + MAX_WAIT_FOR_SUBSCRIBER_S
            while not all((out / f"ready{cam}").exists() for cam in range(case.cameras)):
                if time.monotonic() > deadline or any(p.poll() is not None for p in pubs):
                    break  # the children's own timeouts or exit codes tell what went wrong
                time.sleep(0.01)
            (out / "go").touch()
            deadline = time.monotonic() + args.seconds + 30.0
            for p in pubs:
                p.wait(max(0.1, deadline - time.monotonic()))
            time.sleep(DRAIN_S)
            stop_processes([sub], 10.0, first=signal.SIGTERM)
        except subprocess.TimeoutExpired as e:
            raise RuntimeError(f"case {case.name}: a publisher did not finish in time") from e
        finally:
            stop_processes([p for _, p, _ in procs], 5.0, first=signal.SIGTERM)

        children = {}
        for name, p, result in procs:
            log = (out / f"{name}.log").read_text(errors="replace")
            if p.returncode != 0 or not result.exists():
                raise RuntimeError(
                    f"case {case.name}: {name} exited {p.returncode}:\n{log[-3000:]}"
                )
            children[name] = {
                "returncode": p.returncode,
                "aborted": "terminate called" in log,  # the unjoined-thread abort message
                **json.loads(result.read_text()),
            }
    return {**_measure(case, children), "load_before": load}


def _measure(case: Case, children: dict[str, dict[str, Any]]) -> dict[str, Any]:
    sub = children["sub"]
    samples = np.asarray(sub["samples"], dtype=np.int64).reshape(-1, 3)
    sent = sum(children[f"pub{c}"]["sent"] for c in range(case.cameras))
    # A frame counts once however often it arrived: stamps are unique per camera.
    received = sum(len(np.unique(samples[samples[:, 0] == c, 1])) for c in range(case.cameras))
    order = np.argsort(samples[:, 1], kind="stable")  # by stamp: the publishing order
    worst = order[np.argsort(samples[order, 2])[::-1][:3]]
    return {
        "case": case.name,
        "kind": case.kind,
        "transport": "shm" if case.shm else "udp",
        "qos": "reliable" if case.reliable else "best-effort",
        "cameras": case.cameras,
        "sent": sent,
        "received": received,
        "duplicates": int(len(samples) - received),
        "malformed": len(sub["malformed"]),
        "latency_ms": summarize(samples[:, 2] / 1e6),
        # The three slowest frames as (position in the stream, ms): start-up or steady state?
        "worst_ms": [
            (int(np.flatnonzero(order == i)[0]), float(samples[i, 2] / 1e6)) for i in worst
        ],
        "bytes_per_msg": float(
            np.mean([children[f"pub{c}"]["bytes_per_msg"] for c in range(case.cameras)])
        ),
        "pub_cpu_percent": float(
            np.mean([children[f"pub{c}"]["cpu_percent"] for c in range(case.cameras)])
        ),
        "sub_cpu_percent": sub["cpu_percent"],
        "pub_late_max_ms": max(children[f"pub{c}"]["late_max_ms"] for c in range(case.cameras)),
        "shm_segments_mib": sub["shm_segments_mib"],
        "clean_exit": all(ch["returncode"] == 0 and not ch["aborted"] for ch in children.values()),
    }


def format_table(rows: Sequence[dict[str, Any]], baseline: str = BASELINE) -> str:
    """Markdown table; ratio columns divide by the `baseline` case's row of the same run."""
    base = next((r for r in rows if r["case"] == baseline), None)

    def ratio(r: dict[str, Any], key: str) -> str:
        if base is None:
            return "-"
        return f"{r['latency_ms'][key] / base['latency_ms'][key]:.2f}x"

    head = (
        "| case | msg | transport | cams | received/sent | mean ms | p50 ms | p99 ms | max ms "
        "| mean vs udp | p99 vs udp | KiB/msg | pub CPU % | sub CPU % |"
    )
    lines = [head, "|" + "|".join("---" for _ in range(head.count("|") - 1)) + "|"]
    for r in rows:
        lat = r["latency_ms"]
        lines.append(
            f"| {r['case']} | {'Image rgb8' if r['kind'] == 'raw' else 'CompressedImage jpeg'} "
            f"| {'SHM profile' if r['transport'] == 'shm' else 'default'} {r['qos']} "
            f"| {r['cameras']} "
            f"| {r['received']}/{r['sent']} ({100 * r['received'] / max(r['sent'], 1):.1f} %) "
            f"| {lat['mean']:.1f} | {lat['p50']:.1f} | {lat['p99']:.1f} | {lat['max']:.1f} "
            f"| {ratio(r, 'mean')} | {ratio(r, 'p99')} | {r['bytes_per_msg'] / 1024:.0f} "
            f"| {r['pub_cpu_percent']:.0f} | {r['sub_cpu_percent']:.0f} |"
        )
    loads = ", ".join(f"{r['load_before']:.1f}" for r in rows)
    lines.append(f"\n1-min load average before each case: {loads} (machine: {os.cpu_count()} CPUs)")
    return "\n".join(lines)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--role", choices=("run", "pub", "sub"), default="run")
    ap.add_argument("--cases", nargs="+", choices=sorted(CASES), default=list(DEFAULT_CASES))
    ap.add_argument("--seconds", type=float, default=10.0, help="publishing time per case (s)")
    ap.add_argument("--rate", type=float, default=30.0, help="frames per second per camera")
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--prefix", default="/bench", help="topic namespace")
    ap.add_argument("--json", type=Path, help="also write every case's measurements here")
    # Child-process arguments (set by the parent).
    ap.add_argument("--kind", choices=("raw", "jpeg"), default="raw")
    ap.add_argument("--cameras", type=int, default=1)
    ap.add_argument("--camera", type=int, default=0)
    ap.add_argument("--qos", choices=("reliable", "best-effort"), default="reliable")
    ap.add_argument("--result", type=Path, help="where a child writes its JSON result")
    ap.add_argument("--barrier", type=Path, help="folder of the publishers' start barrier")
    args = ap.parse_args(argv)
    args.reliable = args.qos == "reliable"
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    if args.role in ("pub", "sub"):
        result = run_publisher(args) if args.role == "pub" else run_subscriber(args)
        args.result.write_text(json.dumps(result))
        return 0
    rows = []
    for name in args.cases:
        print(f"case {name}: {args.seconds:g} s ...", file=sys.stderr, flush=True)
        rows.append(run_case(CASES[name], args))
    print(format_table(rows))
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
