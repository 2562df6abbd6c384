"""`apprentice view`: episode bags and eval folders drawn in Rerun, read back from the .rrd.

Each test runs the command as a user does (a subprocess), reads the file back with Rerun's
own reader (`rerun.chunk.RrdReader`) and compares every entity's sample count and time range
with the bag, read independently (rosbags' AnyReader, not the viewer's checked reader)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from rerun.chunk import RrdReader
from rosbags.highlevel import AnyReader
from rosbags.typesys import Stores, get_typestore
from rrd_rows import rrd_rows

from apprentice.recording import EpisodeWriter, WriterConfig
from apprentice.recording.recorder import QUALITY_TOPICS_KEY
from apprentice.sim.scenes import get_scene

TS = get_typestore(Stores.ROS2_JAZZY)
T = TS.types
STAMP_TOL_NS = 1_000  # Rerun keeps ns; a float64 second near 1.8e9 resolves 0.24 µs
T0 = 1_796_000_000.0  # s since the epoch
ALOHA = get_scene("aloha_transfer_cube")
SO100 = get_scene("so100_lift")


def apprentice(*args: str, timeout: float = 300, env: dict | None = None
               ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "apprentice", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Reading back


def expected_rows(bag_dir: Path) -> dict[str, tuple[int, int, int]]:
    """What the layout must hold for a bag: entity → (messages, first, last stamp ns), header
    stamps where the message has one, else the receive (log) time."""
    stamps: dict[str, list[int]] = {}
    names: dict[str, list[str]] = {}
    with AnyReader([bag_dir]) as reader:
        for conn, log_ns, raw in reader.messages():
            msg = reader.deserialize(raw, conn.msgtype)
            header = getattr(msg, "header", None)
            ns = header.stamp.sec * 1_000_000_000 + header.stamp.nanosec if header else log_ns
            stamps.setdefault(conn.topic, []).append(ns)
            if conn.msgtype == "sensor_msgs/msg/JointState":
                names[conn.topic] = list(msg.name)
    out: dict[str, tuple[int, int, int]] = {}

    def put(entity: str, topic: str) -> None:
        s = stamps[topic]
        out[entity] = (len(s), min(s), max(s))

    for topic in stamps:
        parts = topic.strip("/").split("/")
        if parts[0] == "cameras" and parts[2:3] == ["image_raw"]:
            put(f"cameras/{parts[1]}", topic)
        elif topic == "/sim/success":
            put("task/success", topic)
        elif topic == "/sim/task_stage":
            put("task/stage", topic)
        elif parts[0] == "leader" and parts[-1] == "joint_states":
            for j in names[topic]:
                put(f"joints/{'/'.join(parts[1:-1])}/{j}/leader", topic)
        elif parts[-1] == "joint_states":
            for j in names[topic]:
                put(f"joints/{'/'.join(parts[:-1])}/{j}/state", topic)
        elif parts[-1] == "commands":
            arm = "/".join(parts[:-1])
            for j in names[f"/{arm}/joint_states"]:
                put(f"joints/{arm}/{j}/command", topic)
    return out


def assert_matches_bag(rrd: Path, bag_dir: Path) -> dict[str, tuple[int, int, int]]:
    rows, static, blueprints = rrd_rows(rrd)
    want = expected_rows(bag_dir)
    assert blueprints == 1
    for entity, (n, first, last) in want.items():
        assert entity in rows, f"{entity} missing; have {sorted(rows)[:20]}"
        got_n, got_first, got_last = rows[entity]
        assert got_n == n, f"{entity}: {got_n} samples, the bag has {n}"
        assert abs(got_first - first) <= STAMP_TOL_NS, (entity, got_first, first)
        assert abs(got_last - last) <= STAMP_TOL_NS, (entity, got_last, last)
    assert "quality" in rows  # the gate's verdict or findings, always on the timeline
    return rows


def robot_rows(rows: dict, static: dict[str, list[str]], prefix: str
               ) -> tuple[list[str], list[str]]:
    """The moving bodies (posed on the timeline) and the drawn geoms (static) of one arm."""
    moving = [e for e in rows if e.startswith(f"robot/{prefix}")]
    geoms = [e for e in static if e.startswith(f"robot/{prefix}") and "/geom_" in e]
    return moving, geoms


# ---------------------------------------------------------------------------------------------
# A bag written by the recording core: two ALOHA arms, their leaders, commands, a raw and a
# JPEG camera, the sim's stage and success, and a 0.4 s hole in one arm's joint states.


def _header(ns: int, frame: str = "base"):
    return T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](
        sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000), frame_id=frame)  # fmt: skip


def _cdr(msg, msgtype: str) -> bytes:
    return bytes(TS.serialize_cdr(msg, msgtype))


GAP = (0.8, 1.2)  # s after T0: /right/joint_states is silent


def write_aloha_bag(bag_dir: Path, duration_s: float = 2.0) -> Path:
    import cv2

    rng = np.random.default_rng(0)
    msgs: list[tuple[int, str, bytes]] = []

    def add(topic: str, t: float, cdr: bytes) -> None:
        msgs.append((int((T0 + t + rng.uniform(0.0005, 0.003)) * 1e9), topic, cdr))

    def ns(t: float) -> int:
        return int(round((T0 + t) * 1e9))

    empty = np.zeros(0)
    for arm in ALOHA.arms:
        home = np.asarray(arm.home)
        for prefix, rate in (("", 100.0), ("/leader", 100.0)):
            for t in np.arange(0, duration_s, 1 / rate) + rng.uniform(0, 1e-3):
                if not prefix and arm.name == "right" and GAP[0] < t < GAP[1]:
                    continue
                q = home + 0.3 * np.sin(t + np.arange(len(home)))
                add(f"{prefix}/{arm.name}/joint_states", t, _cdr(T["sensor_msgs/msg/JointState"](
                    header=_header(ns(t)), name=list(arm.joints), position=q, velocity=empty,
                    effort=empty), "sensor_msgs/msg/JointState"))  # fmt: skip
        for t in np.arange(0, duration_s, 1 / 50):
            layout = T["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0)
            add(f"/{arm.name}/commands", t, _cdr(T["std_msgs/msg/Float64MultiArray"](
                layout=layout, data=home + 0.3 * np.sin(t + 0.1 + np.arange(len(home)))),
                "std_msgs/msg/Float64MultiArray"))  # fmt: skip
    for i, t in enumerate(np.arange(0, duration_s, 1 / 30)):
        rgb = np.zeros((24, 32, 3), np.uint8)
        rgb[:, : i % 32] = (200, 40, 40)
        add("/cameras/top/image_raw", t, _cdr(T["sensor_msgs/msg/Image"](
            header=_header(ns(t), "top"), height=24, width=32, encoding="rgb8", is_bigendian=0,
            step=96, data=rgb.reshape(-1)), "sensor_msgs/msg/Image"))  # fmt: skip
        jpeg = cv2.imencode(".jpg", rgb)[1].reshape(-1)
        add("/cameras/wrist/image_raw/compressed", t + 0.005, _cdr(
            T["sensor_msgs/msg/CompressedImage"](header=_header(ns(t + 0.005), "wrist"),
                                                 format="jpeg", data=jpeg),
            "sensor_msgs/msg/CompressedImage"))  # fmt: skip
    for t in np.arange(0, duration_s, 1 / 10):
        add("/sim/success", t, _cdr(T["std_msgs/msg/Bool"](data=bool(t > 1.5)),
                                    "std_msgs/msg/Bool"))
        add("/sim/task_stage", t, _cdr(T["std_msgs/msg/Int32"](data=int(t)),
                                       "std_msgs/msg/Int32"))
    types = {t: "sensor_msgs/msg/JointState" for _, t, _ in msgs if t.endswith("joint_states")}
    types |= {t: "std_msgs/msg/Float64MultiArray" for _, t, _ in msgs if t.endswith("commands")}
    types |= {"/cameras/top/image_raw": "sensor_msgs/msg/Image",
              "/cameras/wrist/image_raw/compressed": "sensor_msgs/msg/CompressedImage",
              "/sim/success": "std_msgs/msg/Bool", "/sim/task_stage": "std_msgs/msg/Int32"}
    specs = [[t, 100.0 if t.endswith("joint_states") else 50.0, "joint", True]
             for t in types if "joint_states" in t or "commands" in t]
    for spec in specs:
        if spec[0].endswith("commands"):
            spec[2:] = ["other", False]
    custom = {"scene": ALOHA.name, "seed": "1", QUALITY_TOPICS_KEY: json.dumps(specs)}
    with EpisodeWriter(bag_dir, task="transfer", custom_data=custom,
                       config=WriterConfig(fsync_on_close=False)) as writer:
        for topic, msgtype in types.items():
            writer.add_topic(topic, msgtype)
        for log_ns, topic, cdr in sorted(msgs):
            writer.write(topic, cdr, log_time_ns=log_ns)
    return bag_dir


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dataset")
    write_aloha_bag(root / "episode_0000")
    write_aloha_bag(root / "episode_0001", duration_s=1.0)
    return root


def test_view_save_bag(dataset: Path, tmp_path: Path) -> None:
    rrd = tmp_path / "ep.rrd"
    out = apprentice("view", str(dataset), "--episode", "episode_0000", "--save", str(rrd))
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"wrote {rrd}" in out.stdout
    rows = assert_matches_bag(rrd, dataset / "episode_0000")
    _, static, _ = rrd_rows(rrd)
    # every joint of both arms: state, leader and command; both cameras; stage and success
    for arm in ALOHA.arms:
        for j in arm.joints:
            kinds = ("state", "leader", "command")
            assert {f"joints/{arm.name}/{j}/{k}" for k in kinds} <= set(rows)
    assert rows["cameras/top"][0] == rows["cameras/wrist"][0] == 60
    # the 3D robot: each arm's moving links posed at <= 30 fps over the episode, geoms static
    for prefix in ("vx300s_left.", "vx300s_right."):
        moving, geoms = robot_rows(rows, static, prefix)
        assert len(moving) >= 9 and len(geoms) >= 8, (moving, geoms)
        n, first, last = rows[moving[0]]
        assert 2.0 * 30 * 0.9 <= n <= 2.0 * 30 + 1
        assert abs(first - T0 * 1e9) < 5e6 and last <= (T0 + 2.0) * 1e9
    # the quality gate found the 0.4 s hole in /right/joint_states, at its place on the timeline
    assert rows["quality"][0] >= 1
    assert "gap of 0.4" in out.stdout
    gap_at = [t for t in quality_times(rrd) if abs(t - (T0 + GAP[0]) * 1e9) < 0.02e9]
    assert gap_at, quality_times(rrd)


def quality_times(rrd: Path) -> list[int]:
    times = []
    for chunk in RrdReader(rrd).stream():
        if chunk.entity_path == "/quality" and not chunk.is_static:
            times += list(chunk.to_record_batch().column("time").cast(pa.int64()).to_numpy())
    return times


def test_view_dataset_by_index(dataset: Path, tmp_path: Path) -> None:
    """`--episode 1` is the second bag; --max-fps 0 poses the robot at every joint state."""
    rrd = tmp_path / "ep1.rrd"
    out = apprentice("view", str(dataset), "--episode", "1", "--max-fps", "0", "--save", str(rrd))
    assert out.returncode == 0, out.stderr[-3000:]
    rows = assert_matches_bag(rrd, dataset / "episode_0001")
    want = expected_rows(dataset / "episode_0001")
    stamps = want["joints/left/left_waist/state"][0] + want["joints/right/right_waist/state"][0]
    assert rows["robot/vx300s_left.gripper_link"][0] == stamps  # one pose per joint state


@pytest.mark.ros
@pytest.mark.slow
def test_view_recorded_sim_episode(tmp_path: Path) -> None:
    """A real recording: the SO-100 sim, its scripted leader, teleop and the recorder."""
    dataset = tmp_path / "demos"
    out = apprentice("record", "--graph", "record_sim_so100", "--episodes", "1", "--dataset",
                     str(dataset), "--domain", os.environ["ROS_DOMAIN_ID"])  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rrd = tmp_path / "ep.rrd"
    out = apprentice("view", str(dataset), "--save", str(rrd))
    assert out.returncode == 0, out.stderr[-3000:]
    rows = assert_matches_bag(rrd, dataset / "episode_0000")
    _, static, _ = rrd_rows(rrd)
    joints = SO100.arms[0].joints
    assert {f"joints/arm/{j}/{k}" for j in joints for k in ("state", "leader", "command")} <= set(
        rows)
    assert {"cameras/front", "task/success"} <= set(rows)
    moving, geoms = robot_rows(rows, static, "so_arm100_right.")
    assert len(moving) == 6 and len(geoms) >= 6, (moving, geoms)


# ---------------------------------------------------------------------------------------------
# An eval folder as `apprentice eval` writes it: results.json, a rollout with predicted chunks
# and a video (the eval session's arrays, written here for one short SO-100 episode)

@pytest.fixture(scope="module")
def eval_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from apprentice.eval_cli import write_video

    folder = tmp_path_factory.mktemp("eval")
    arm = SO100.arms[0]
    home = np.asarray(arm.home)
    joints_t = T0 + np.arange(0, 1.5, 0.01)  # (150,) s
    commands_t = T0 + 0.003 + np.arange(0, 1.5, 0.02)  # (75,)
    chunk_t = T0 + np.arange(0, 1.5, 0.1)  # (15,) inferences
    offsets = np.arange(8) / 50  # (8,) s: a chunk of 8 at 50 Hz
    wave = lambda t: home + 0.2 * np.sin(t[:, None] - T0 + np.arange(len(home)))  # noqa: E731
    chunks = np.stack([wave(t + offsets) for t in chunk_t])  # (15, 8, 6)
    frames = [np.full((24, 32, 3), 10 * i, np.uint8) for i in range(20)]
    (folder / "rollouts").mkdir()
    np.savez_compressed(
        folder / "rollouts" / "episode_000.npz", arm_names=np.array(arm.joints),
        arm_joints_t=joints_t, arm_joints=wave(joints_t), arm_commands_t=commands_t,
        arm_commands=wave(commands_t), arm_chunk_t=chunk_t, arm_chunks=chunks,
        arm_chunk_offsets=offsets)  # fmt: skip
    write_video(frames, folder / "videos" / "episode_000.avi", fps=30)
    rows = [{"episode": 0, "seed": 1000, "success": True, "max_stage": 2}]
    (folder / "episodes.json").write_text(json.dumps(rows))
    (folder / "results.json").write_text(json.dumps({"scene": SO100.name, "rows": rows}))
    return folder


def test_view_save_eval_rollout(eval_folder: Path, tmp_path: Path) -> None:
    rrd = tmp_path / "eval.rrd"
    out = apprentice("view", str(eval_folder), "--episode", "episode_000", "--save", str(rrd))
    assert out.returncode == 0, out.stderr[-3000:]
    rows, static, blueprints = rrd_rows(rrd)
    assert blueprints == 1
    with np.load(eval_folder / "rollouts" / "episode_000.npz") as z:
        for key, kind in (("joints", "state"), ("commands", "command")):
            t = z[f"arm_{key}_t"]
            for j in SO100.arms[0].joints:
                n, first, last = rows[f"joints/arm/{j}/{kind}"]
                assert n == len(t)
                assert abs(first - t[0] * 1e9) <= STAMP_TOL_NS
                assert abs(last - t[-1] * 1e9) <= STAMP_TOL_NS
        assert rows["joints/arm/gripper/chunk"][0] == z["arm_chunks"].shape[0] * 8
    assert rows["cameras/eval"][0] == 20
    moving, geoms = robot_rows(rows, static, "so_arm100_right.")
    assert len(moving) == 6 and len(geoms) >= 6, (moving, geoms)
    assert rows[moving[0]][0] == 45  # 1.5 s of joint states at <= 30 fps


# ---------------------------------------------------------------------------------------------
# The user's mistakes: one line, exit 2 (in this process: the command's own error path)

MISTAKES = [
    (["/nonexistent-bag"], "/nonexistent-bag: no such file or folder"),
    (["{tmp}"], "not an episode bag (no metadata.yaml), a dataset of bags or an eval folder"),
    (["{data}", "--episode", "episode_0009"], "--episode episode_0009: {data} has 2 episodes: "
                                              "episode_0000, episode_0001 (or an index 0-1)"),
    (["{data}", "--episode", "7"], "has 2 episodes"),
    (["{data}/episode_0000", "--episode", "1"], "is one episode bag"),
    (["{eval}", "--episode", "3"], "--episode 3: {eval} has episodes 0"),
    (["{cut}", "--save", "{tmp}/x.rrd"], "{tmp}/bad/cut/episode_0001_0.mcap: "),
    (["{unfinished}"], "an unfinished recording (an .mcap without metadata.yaml): apprentice "
                       "recover {tmp}/bad first"),
    (["{data}", "--save", "/nonexistent-dir/x.rrd"], "folder /nonexistent-dir does not exist"),
    (["{data}"], "no display for the native viewer: --save X.rrd writes a file, --web"),
    (["{data}", "--max-fps", "-1", "--save", "{tmp}/x.rrd"], "--max-fps must be >= 0"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "message"), MISTAKES)
def test_view_mistakes(dataset: Path, eval_folder: Path, tmp_path: Path, args: list[str],
                       message: str, monkeypatch: pytest.MonkeyPatch,
                       capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    from apprentice.cli import main

    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)

    import shutil

    cut = shutil.copytree(dataset / "episode_0001", tmp_path / "bad" / "cut")  # cut short
    mcap = next(cut.glob("*.mcap"))
    mcap.write_bytes(mcap.read_bytes()[: mcap.stat().st_size // 2])
    unfinished = tmp_path / "bad" / "unfinished"  # killed before metadata.yaml
    unfinished.mkdir()
    shutil.copy(mcap, unfinished)

    def fill(s: str) -> str:
        return s.format(tmp=tmp_path, data=dataset, eval=eval_folder, cut=cut,
                        unfinished=unfinished)

    assert main(["view", *map(fill, args)]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("apprentice: error: "), err
    assert fill(message) in lines[0]


# ---------------------------------------------------------------------------------------------
# --web


def free_port() -> int:
    """An even free port whose successor is free too (the gRPC server takes PORT+1)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with socket.socket() as a, socket.socket() as b:
            try:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
                return port
            except OSError:
                continue
    raise RuntimeError("no two free ports in a row")


class WebView:
    """`apprentice view BAG --web` in the background until stopped with a signal."""

    def __init__(self, bag: Path, port: int) -> None:
        self.port = port
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "apprentice", "view", str(bag), "--web", "--port", str(port)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        self.link = ""
        deadline = time.monotonic() + 120
        for line in self.proc.stdout:
            if line.startswith("web viewer: "):
                self.link = line.split()[2]
                break
            if time.monotonic() > deadline:
                break
        assert self.link.startswith(f"http://localhost:{port}/?url="), self.stop(signal.SIGTERM)

    def stop(self, sig: int) -> tuple[int, str, float]:
        t = time.monotonic()
        self.proc.send_signal(sig)
        try:
            rest, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rest, err = self.proc.communicate()
        return self.proc.returncode, err, time.monotonic() - t


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_view_web_serves_until_signal(dataset: Path, sig: int) -> None:
    view = WebView(dataset / "episode_0000", free_port())
    try:
        with urllib.request.urlopen(f"http://localhost:{view.port}/", timeout=10) as r:
            page = r.read().decode()
        assert r.status == 200 and "Rerun" in page
    finally:
        code, err, took = view.stop(sig)
    assert code == 0, err[-2000:]
    assert took < 15, took


def loaded(png: Path, max_share: float = 0.9) -> bool:
    """False for the web viewer's loading screen: one background colour on ~95 % of the pixels
    (measured: 94.7 %); the drawn viewer (panels, plots, the 3D robot) has it on ~80 %."""
    import cv2

    pixels = cv2.imread(str(png), cv2.IMREAD_COLOR).reshape(-1, 3)
    _, counts = np.unique(pixels, axis=0, return_counts=True)
    return counts.max() / len(pixels) < max_share


@pytest.mark.slow
def test_view_web_page_in_chromium(dataset: Path, tmp_path: Path) -> None:
    """The served page in a real browser: the viewer's app started (its canvas shown, which
    the page's script does once the wasm runs) and drew more than its loading screen."""
    from browser import is_blank, wait_for

    view = WebView(dataset / "episode_0000", free_port())
    canvas = '<canvas id="the_canvas_id" class="visible"'
    try:
        # real time, polled: the wasm app's start (its canvas made visible) takes 5-90 s of
        # wall time on a 2-core host, which chromium's virtual-time budget does not wait for
        html, png = wait_for(view.link, "document.querySelector('#the_canvas_id.visible')",
                             tmp_path / "view_web.png", size=(1400, 850), timeout_s=150,
                             settle_s=8.0)  # fmt: skip
    finally:
        code, err, _ = view.stop(signal.SIGINT)
    assert canvas in html
    assert not is_blank(png) and loaded(png), png
    assert code == 0, err[-2000:]


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "mono8", "yuv422"])
def test_raw_image_encodings(encoding: str) -> None:
    """Raw frames as cameras send them (rows padded to `step`) → what the viewer shows."""
    from apprentice.dataset.mcap_checked import DatasetError
    from apprentice.viz.episode import rgb

    px = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)  # RGB
    planes = {"rgb8": px, "bgr8": px[:, :, ::-1], "rgba8": np.dstack([px, px[:, :, :1]]),
              "mono8": px[:, :, :1], "yuv422": px[:, :, :2]}[encoding]  # fmt: skip
    step = planes.shape[1] * planes.shape[2] + 3  # 3 bytes of row padding
    rows = np.zeros((5, step), np.uint8)
    rows[:, : planes[0].size] = planes.reshape(5, -1)
    msg = TS.deserialize_cdr(_cdr(T["sensor_msgs/msg/Image"](
        header=_header(0), height=5, width=7, encoding=encoding, is_bigendian=0, step=step,
        data=rows.reshape(-1)), "sensor_msgs/msg/Image"), "sensor_msgs/msg/Image")  # fmt: skip
    if encoding == "yuv422":
        with pytest.raises(DatasetError, match="/cam: image encoding 'yuv422' is not drawn"):
            rgb(msg, "/cam")
        return
    want = px[:, :, 0] if encoding == "mono8" else px
    np.testing.assert_array_equal(rgb(msg, "/cam"), want)
