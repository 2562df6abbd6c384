"""`apprentice record` and `apprentice deploy`: a robot's graph, started here.

    apprentice record --robot so101 --dataset data/pick --task "pick the cube"
    apprentice record                                   # the simulated ALOHA, scripted demos
    apprentice deploy --robot so101 --policy policies/pick

--robot takes a robot config (launch/robots/<name>.yaml or a path); its graphs come from
apprentice.robot_graphs. Ports, cameras and calibration files are overridable per arm or
camera: --port follower=/dev/ttyACM3 --camera front=/dev/video4 --calibration follower=F.yaml.
Everything that can be checked before a process starts is (calibrations, ports, camera devices,
the policy card against the robot): a mistake is one line and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from apprentice.errors import UserError
from apprentice.graph import (
    Graph,
    GraphRunner,
    die_with,
    load_graph,
    parse_overrides,
    stop_processes,
)
from apprentice.pipeline import RECORD_GRAPH  # the simulated ALOHA and its scripted demos
from apprentice.progress import EpisodeProgress, relay_thread
from apprentice.robot_graphs import (
    RobotSetup,
    calibration_path,
    deploy_graph,
    load_setup,
    robot_graph,
)
from apprentice.transport import isolated_domain_id, ros_env
from apprentice.viz.live import add_view_arguments, view_options, with_viewer


def _pairs(values: list[str], flag: str) -> dict[str, str]:
    out = {}
    for value in values:
        name, sep, setting = value.partition("=")
        if not sep or not name or not setting:
            raise UserError(f"{flag} takes NAME=VALUE, got {value!r}")
        out[name] = setting
    return out


def robot_overrides(a: argparse.Namespace) -> dict[str, Any]:
    """--port / --camera / --calibration / -p → graph overrides (`label.key` scoped)."""
    out: dict[str, Any] = {}
    for arm, port in _pairs(a.port, "--port").items():
        out[f"{arm}.port"] = port
    for cam, device in _pairs(a.camera, "--camera").items():
        out[f"{cam}.device"] = device
    for arm, path in _pairs(a.calibration, "--calibration").items():
        out[f"{arm}.calibration_file"] = str(Path(path).expanduser().resolve())
    out.update(parse_overrides(a.param))
    return out


def no_calibration(label: str, path: Path, robot: str, arm: str) -> str:
    return (
        f"{label}: no calibration {path}; run `apprentice calibrate-arm calibrate --robot {robot} "
        f"--arm {arm}` or pass --calibration {label}=FILE"
    )


def preflight(graph: Graph) -> None:
    """Raises UserError naming everything that would make a hardware process fail at once
    (calibrations, ports, cameras), found before any process starts."""
    problems = []
    unset = []  # RealSense cameras without a serial: each would open the first one found
    for proc in graph.processes:
        p = proc.parameters
        if proc.executable == "arm_driver" and p.get("backend") in ("feetech", "dynamixel"):
            cal = Path(p["calibration_file"]).expanduser()
            if not cal.is_file():
                problems.append(no_calibration(proc.label, cal, p["robot"], p["arm"]))
            if p["port"] and not Path(p["port"]).exists():
                problems.append(
                    f"{proc.label}: no serial port {p['port']} (`apprentice list-devices` lists "
                    f"them); pass --port {proc.label}=PORT"
                )
        if proc.executable == "camera" and p.get("backend") == "realsense" and not p["device"]:
            unset.append(proc.label)
        if proc.executable == "camera" and p.get("backend") == "uvc":
            device = str(p["device"])
            if not device.isdigit() and not Path(device).exists():
                problems.append(
                    f"{proc.label}: no camera or video file {device} (`apprentice list-devices`); "
                    f"pass --camera {proc.label}=DEVICE"
                )
    if len(unset) > 1:
        problems.append(
            f"RealSense cameras {', '.join(unset)} have no serial (`apprentice list-devices` "
            f"lists them); pass --camera {unset[0]}=SERIAL for each"
        )
    if problems:
        raise UserError("; ".join(problems))


def args_graph(a: argparse.Namespace, robot: str | None = None, kind: str = "drive") -> Graph:
    """`robot`'s graph of `kind`, or else the graph `a.graph`, with the command line's
    overrides; a graph or robot config that is not there is a UserError."""
    try:
        if robot is None:
            graph = load_graph(a.graph)
        else:
            graph = robot_graph(robot, kind)
        return graph.with_parameters(robot_overrides(a))
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(str(exc)) from None


def cmd_record(a: argparse.Namespace) -> int:
    """Robot + teleop + recorder graph, then a recording session; prints the episodes."""
    from apprentice.recording import DatasetIndex

    dataset = Path(a.dataset).resolve()
    a.param = [f"dataset_dir={dataset}", *a.param] + ([f"task={a.task}"] if a.task else [])
    if a.robot is not None and a.scripted:
        raise UserError("--scripted plays the simulator's demonstrator; a robot has a leader arm")
    graph = args_graph(a, a.robot, "record")
    interactive = a.interactive or a.robot is not None
    preflight(graph)
    view = view_options(a.view, a.view_save)
    graph = with_viewer(graph, view)
    domain = a.domain if a.domain is not None else isolated_domain_id()
    env = ros_env(domain_id=domain)
    print(f"record: graph {graph.name} on ROS_DOMAIN_ID={domain}, dataset {dataset}", flush=True)
    if view is not None:
        print(view.describe(), flush=True)
    mode = ["--interactive"] if interactive else ["--scripted", "--episodes", str(a.episodes)]
    logs = dataset / "logs"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    rows = Path(a.rows).resolve() if a.rows else logs / f"session-{stamp}.json"
    rows.parent.mkdir(parents=True, exist_ok=True)
    # scripted on a terminal: one progress line (the interactive session draws its own status)
    tty = not interactive and sys.stdout.isatty()
    lost = LostEpisodes(dataset)
    recorders = {p.label for p in graph.processes if p.executable == "recorder"}

    def restarting(label: str, code: int) -> None:
        new = lost.new()
        what = f"while recording {', '.join(new)}: {lost.how}" if new else "between episodes"
        say(f"record: the {label} died ({exit_reason(code)}) {what}; restarting it")

    with GraphRunner(graph, env=env, log_dir=logs) as runner:
        session = subprocess.Popen(
            [sys.executable, "-m", "apprentice_ros.record_session", *mode, "--json", str(rows)],
            env=env, stdout=subprocess.PIPE if tty else None, text=True,
            preexec_fn=die_with(os.getpid()),
        )  # fmt: skip
        shown = session.stdout and relay_thread(
            session.stdout, EpisodeProgress(a.episodes, sys.stdout, gate=True)
        )
        died = watch(session, runner, recorders, restarting)
        if shown:
            shown.join(timeout=5.0)
    lost.new()
    for label, code in died:
        print(f"record: {label} exited ({exit_reason(code)}): "
              f"{last_line(logs / f'{label}.log')}", file=sys.stderr)  # fmt: skip
    if not died:
        entries = DatasetIndex(dataset).list()
        print(
            f"dataset {dataset}: {len(entries)} episode(s) kept, "
            f"{sum(e.passed for e in entries)} passed the quality gate"
        )
    if lost.episodes:
        say(f"record: {len(lost.episodes)} episode(s) left unfinished by a crash "
            f"({', '.join(lost.episodes)}): {lost.how}")  # fmt: skip
    if died:
        print(f"record: stopped; logs in {logs}", file=sys.stderr)
    return 1 if died or lost.episodes else session.returncode or 0


# A recorder killed during a session is started again, this many times in all (the session
# goes on with the next episode); one that keeps dying stops the session.
RECORDER_RESTARTS = 3


class LostEpisodes:
    """The episodes of a dataset that a crash during this session left unfinished: bag
    folders its index does not list, beyond those an earlier session left."""

    def __init__(self, dataset: Path) -> None:
        from apprentice.recording.recorder import unfinished_episodes

        self._unfinished = unfinished_episodes
        self.dataset = dataset
        dataset.mkdir(parents=True, exist_ok=True)
        self._known = set(unfinished_episodes(dataset))
        self.episodes: list[str] = []  # found so far
        self.how = f"recover with `apprentice recover {shlex.quote(str(dataset))}`"

    def new(self) -> list[str]:
        """The episodes found unfinished since the last call."""
        new = [p for p in self._unfinished(self.dataset) if p not in self._known]
        self._known.update(new)
        self.episodes += [p.name for p in new]
        return [p.name for p in new]


def say(line: str) -> None:
    """A line on stderr, on a line of its own also while the session redraws its status."""
    print(("\r\x1b[K" if sys.stderr.isatty() else "") + line, file=sys.stderr, flush=True)


def exit_reason(code: int) -> str:
    """-9 → killed by SIGKILL; 1 → exit code 1."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def watch(
    session: subprocess.Popen,
    runner: GraphRunner,
    restartable: set[str] | frozenset[str] = frozenset(),
    on_restart: Callable[[str, int], None] | None = None,
) -> list[tuple[str, int]]:
    """Waits for the session. A `restartable` process killed by a signal (kill -9, the OOM
    killer, a crash in C code) is started again, at most RECORDER_RESTARTS times
    (`on_restart(label, exit code)` first), the session is told (SIGUSR1) and goes on; one that
    exited by itself printed why, and a restart would only repeat it. Any other death
    interrupts the session (SIGINT: it restores the terminal); the dead are returned."""
    restarts = 0
    try:
        while session.poll() is None:
            died = runner.poll()
            if (
                died
                and restarts < RECORDER_RESTARTS
                and all(label in restartable and code < 0 for label, code in died)
            ):
                for label, code in died:
                    if on_restart is not None:
                        on_restart(label, code)
                    runner.restart(label)
                restarts += 1
                session.send_signal(signal.SIGUSR1)
            elif died:
                session.send_signal(signal.SIGINT)
                stop_processes([session], timeout=5.0)
                return died
            time.sleep(0.2)
    except KeyboardInterrupt:  # Ctrl-C reached the whole group: every process stops cleanly
        stop_processes([session], timeout=5.0)
        return []
    return [(label, code) for label, code in runner.poll() if code != 0]


def last_line(log: Path) -> str:
    """The last non-empty line of a process's log: usually why it stopped."""
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(no log)"
    return lines[-1] if lines else "(empty log)"


def deploy_limits(setup: RobotSetup, calibrations: dict[str, str]):
    """Per follower arm its joint limits: the robot config's, narrowed to its calibration."""
    from apprentice.calibration.arm import ArmCalibration

    limits = {}
    for arm in setup.followers:
        path = Path(calibrations.get(arm) or calibration_path(setup.name, arm)).expanduser()
        if not path.is_file():
            raise UserError(no_calibration(arm, path, setup.name, arm))
        try:
            spec = ArmCalibration.load(path).arm_spec(setup.arms[arm])
        except ValueError as exc:
            raise UserError(f"{arm}: {exc}") from None
        limits[arm] = (spec.lower.tolist(), spec.upper.tolist())
    return limits


def cmd_deploy(a: argparse.Namespace) -> int:
    """Follower drivers + cameras + the policy node, from the robot config and the card."""
    from apprentice.policy_server.card import PolicyRefused, load_card

    try:
        card = load_card(a.policy)
        setup = load_setup(a.robot)
    except (PolicyRefused, FileNotFoundError, ValueError) as exc:
        raise UserError(str(exc)) from None
    overrides = robot_overrides(a)
    calibrations = {key.partition(".")[0]: path for key, path in overrides.items()
                    if key.endswith(".calibration_file")}  # fmt: skip
    limits = deploy_limits(setup, calibrations)
    try:
        graph = deploy_graph(a.robot, card, Path(a.policy).resolve(), limits)
        graph = graph.with_parameters(overrides)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    view = view_options(a.view, a.view_save)
    graph = with_viewer(graph, view)
    if a.print_graph:
        doc = {"name": graph.name, "processes": [
            {"executable": p.executable, "label": p.label, "parameters": p.parameters}
            for p in graph.processes
        ]}  # fmt: skip
        print(yaml.safe_dump(doc, sort_keys=False), end="")
        return 0
    preflight(graph)
    env = ros_env(domain_id=a.domain)
    print(
        f"deploy: {card['policy_type']} policy {a.policy} on {setup.name} "
        f"({', '.join(p.label for p in graph.processes)}), ROS_DOMAIN_ID="
        f"{env.get('ROS_DOMAIN_ID', '0')}; Ctrl-C stops (torque off)",
        flush=True,
    )
    if view is not None:
        print(view.describe(), flush=True)
    return GraphRunner(graph, env=env).start().wait()


def add_hardware_arguments(p: argparse.ArgumentParser) -> None:
    """--port / --camera / --calibration (see `robot_overrides`)."""
    p.add_argument("--port", action="append", default=[], metavar="ARM=PORT",
                   help="serial port of an arm (default: the robot config's)")
    p.add_argument("--camera", action="append", default=[], metavar="NAME=DEVICE",
                   help="camera device, RealSense serial or video file")
    p.add_argument("--calibration", action="append", default=[], metavar="ARM=FILE",
                   help="arm calibration (default: ~/.apprentice/calibration/)")  # fmt: skip


def _robot_arguments(p: argparse.ArgumentParser) -> None:
    add_hardware_arguments(p)
    p.add_argument("-p", "--param", action="append", default=[], metavar="[LABEL.]KEY=VALUE",
                   help="a node parameter, for every process that has it or one process")
    p.add_argument("--domain", type=int, help="ROS_DOMAIN_ID")  # fmt: skip
    add_view_arguments(p)


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    rec = sub.add_parser("record", help="record demonstrations into a dataset of episode bags")
    src = rec.add_mutually_exclusive_group()
    src.add_argument("--robot", help="a robot config (so101, koch, aloha or a YAML path): its "
                     "leader and follower arms, cameras, teleop and the recorder")  # fmt: skip
    src.add_argument("--graph", default=RECORD_GRAPH, help="a robot + teleop + recorder graph")
    rec.add_argument("--task", help="task label saved with each episode")
    rec.add_argument("--episodes", type=int, default=1, help="scripted demonstrations to record")
    rec.add_argument("--dataset", default="data/demos", help="dataset folder (created or added to)")
    rec.add_argument("--rows", metavar="FILE",
                     help="the session's per-episode rows as JSON, written after each episode "
                     "(default DATASET/logs/session-TIME.json)")  # fmt: skip
    mode = rec.add_mutually_exclusive_group()
    mode.add_argument("--interactive", action="store_true",
                      help="keys s/k/d/q start, keep, discard, quit (the default with --robot)")
    mode.add_argument("--scripted", action="store_true",
                      help="the simulator's scripted demonstrator (the default without --robot)")
    _robot_arguments(rec)
    rec.set_defaults(func=cmd_record)

    dep = sub.add_parser("deploy", help="run an exported policy on a robot")
    dep.add_argument("--robot", required=True, help="a robot config (so101, koch, aloha, a path)")
    dep.add_argument("--policy", required=True, help="an exported policy folder")
    dep.add_argument("--print-graph", action="store_true",
                     help="print the graph as YAML (for ros2 launch ... graph:=FILE) and exit")
    _robot_arguments(dep)
    dep.set_defaults(func=cmd_deploy)
