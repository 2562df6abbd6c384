"""The `apprentice` command line."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys

from apprentice.errors import run_command
from apprentice.eval_cli import add_subcommands as add_eval_subcommands
from apprentice.graph import GraphRunner
from apprentice.interop.lerobot_policy_cli import add_subcommands as add_import_policy
from apprentice.learning.train_cli import add_subcommands as add_learning_subcommands
from apprentice.pipeline import add_demo_arguments, run_demo
from apprentice.robot_cli import add_hardware_arguments, args_graph, preflight
from apprentice.robot_cli import add_subcommands as add_robot_subcommands
from apprentice.transport import ros_env
from apprentice.viz.cli import add_subcommands as add_view_subcommands
from apprentice.viz.live import add_view_arguments, view_options, with_viewer


def cmd_graph_run(a: argparse.Namespace) -> int:
    graph = args_graph(a)
    preflight(graph)  # hardware that is not there: before any process starts
    view = view_options(a.view, a.view_save)
    graph = with_viewer(graph, view)
    env = ros_env(domain_id=a.domain, shm=not a.no_shm)
    print(
        f"graph {graph.name}: {len(graph.processes)} process(es), ROS_DOMAIN_ID="
        f"{env.get('ROS_DOMAIN_ID', '0')}; Ctrl-C stops"
    )
    if view is not None:
        print(view.describe(), flush=True)
    return GraphRunner(graph, env=env).start().wait()


def cmd_recover(a: argparse.Namespace) -> int:
    """Recovers the killed episodes of a dataset into its index (exit 1 if any failed)."""
    from apprentice.recording.recorder import recover_dataset

    return recover_dataset(a.dataset)


def cmd_list_devices(_a: argparse.Namespace) -> int:
    from apprentice.cameras.devices import format_devices, list_devices

    print(format_devices(list_devices()))
    return 0


def cmd_scenes(_a: argparse.Namespace) -> int:
    from apprentice.sim.scenes import SCENES

    for s in SCENES.values():
        arms = ", ".join(f"{a.name} ({len(a.joints)} joints)" for a in s.arms)
        print(f"{s.name:22} task={s.task:14} arms: {arms}; cameras: {', '.join(s.cameras)}")
    return 0


# Commands with a CLI of their own: name → (help, module run as `python -m module ARGS`).
# A child process keeps this CLI free of rclpy even for modules of apprentice_ros.
PASS_THROUGH = {
    "replay": (
        "replay an episode bag in simulation: tracking error, video, success",
        "apprentice_ros.replay",
    ),
    "calibrate-arm": (
        "calibrate a servo-bus arm, or verify a calibration",
        "apprentice.calibration.arm_cli",
    ),
    "calibrate-camera": (
        "camera intrinsics (ChArUco), hand-eye, CameraInfo files",
        "apprentice.calibration.camera_cli",
    ),
    "convert-backbone": (
        "torchvision's ResNet-18 ImageNet weights (.pth) → the safetensors file train takes",
        "apprentice.learning.convert_backbone",
    ),
}


def _pass_through(name: str, rest: list[str]) -> int:
    module = PASS_THROUGH[name][1]
    return subprocess.run([sys.executable, "-m", module, *rest], check=False).returncode


def parser() -> argparse.ArgumentParser:
    """The whole command line (the pass-through commands parse the rest themselves)."""
    from importlib import metadata

    try:  # the installed distribution's version, as pip reports it
        version = metadata.version("apprentice")
    except metadata.PackageNotFoundError:  # a source tree on sys.path, not installed
        from apprentice import __version__ as version
    ap = argparse.ArgumentParser(prog="apprentice", description=__doc__)
    ap.add_argument("--version", action="version", version=f"%(prog)s {version}")
    ap.add_argument("--debug", action="store_true", help="show the traceback of any error")
    sub = ap.add_subparsers(dest="cmd", required=True)

    g = sub.add_parser("graph", help="node graphs").add_subparsers(dest="graph_cmd", required=True)
    run = g.add_parser("run", help="start a graph here (no ROS launch tools needed)")
    run.add_argument("graph", help="a graph name in launch/graphs or a YAML path")
    run.add_argument("-p", "--param", action="append", default=[], metavar="[LABEL.]KEY=VALUE",
                     help="a parameter of every process that has it, or of LABEL's")  # fmt: skip
    add_hardware_arguments(run)  # robot graphs: --port ARM=PORT, --camera, --calibration
    run.add_argument("--domain", type=int, help="ROS_DOMAIN_ID (default: inherited)")
    run.add_argument("--no-shm", action="store_true", help="default Fast DDS transports")
    add_view_arguments(run)
    run.set_defaults(func=cmd_graph_run)

    demo = sub.add_parser(
        "demo", help="the whole job in simulation: demos → bags → training → ONNX → closed loop"
    )
    add_demo_arguments(demo)
    demo.set_defaults(func=run_demo)

    add_robot_subcommands(sub)  # record, deploy

    sub.add_parser("scenes", help="list simulated scenes").set_defaults(func=cmd_scenes)
    recov = sub.add_parser("recover", help="recover episodes a crash left unfinished")
    recov.add_argument("dataset", help="dataset folder (its episode bags and index.json)")
    recov.set_defaults(func=cmd_recover)
    add_learning_subcommands(sub)  # dataset build, train, export (torch imported only to run)
    add_import_policy(sub)  # import-policy: a LeRobot checkpoint → a run folder
    add_eval_subcommands(sub)  # eval, eval compare
    add_view_subcommands(sub)  # view (Rerun; rerun imported only to run)
    sub.add_parser("list-devices", help="serial ports and cameras").set_defaults(
        func=cmd_list_devices
    )

    # Commands whose own CLI parses the rest of the line (listed here for --help).
    for name, (help_text, _module) in PASS_THROUGH.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return ap


def main(argv: list[str] | None = None) -> int:
    # Ctrl-C (or a supervisor's SIGINT) always stops a graph and turns torque off: a command
    # started in the background (`cmd &`, nohup, some CI runners) inherits SIGINT ignored, and
    # Python then installs no KeyboardInterrupt handler: the stop would be ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    ap = parser()
    argv = sys.argv[1:] if argv is None else argv
    rest = argv[1:] if argv[:1] == ["--debug"] else argv
    if rest and rest[0] in PASS_THROUGH:
        if rest is not argv:  # the child's run_command reads it
            os.environ["APPRENTICE_DEBUG"] = "1"
        return _pass_through(rest[0], rest[1:])

    a = ap.parse_args(argv)
    return run_command(a.func, a, debug=a.debug)


if __name__ == "__main__":
    sys.exit(main())
