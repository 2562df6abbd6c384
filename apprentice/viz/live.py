"""The live `--view`: which topics a graph's viewer process shows, and where its stream goes.

`--view` on `apprentice record`, `eval`, `deploy` and `graph run` adds one process to the
graph, `apprentice_ros.viewer` (a subscriber node; see its docstring), whose parameters are
read off the graph's other processes here: the follower arms (their joint_states, commands
and leaders), the cameras (JPEG when the graph publishes it, else raw frames). It is
`optional`: its exit is reported, never stops the robot (apprentice.graph.GraphRunner).

Where the stream goes: `--view-save X.rrd` writes a file; else a native viewer window when a
display exists (`DISPLAY` / `WAYLAND_DISPLAY`), else the web viewer (served from the viewer
process, gRPC + HTTP on all interfaces) whose URL the command prints. Pure: no rclpy, no rerun.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from apprentice.errors import UserError
from apprentice.graph import Graph, ProcessSpec

LABEL = "viewer"
SINKS = ("web", "spawn", "save")


@dataclass(frozen=True)
class ViewOptions:
    sink: str  # web | spawn | save
    save_path: str = ""
    grpc_port: int = 9876
    web_port: int = 9090

    def describe(self) -> str:
        """One line for the terminal: where to look."""
        if self.sink == "save":
            return f"view: streaming to {self.save_path} (open it with `rerun {self.save_path}`)"
        if self.sink == "spawn":
            return f"view: a Rerun viewer window opens (gRPC port {self.grpc_port})"
        return f"view: open {web_url(self.web_port, self.grpc_port)} (web viewer)"


def web_url(web_port: int, grpc_port: int, host: str = "localhost") -> str:
    """The web viewer's address, connected to the viewer process's gRPC stream (another
    machine: replace `localhost` with this host's name in both places)."""
    stream = f"rerun+http://{host}:{grpc_port}/proxy"
    return f"http://{host}:{web_port}/?url={quote(stream, safe=':/')}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def has_display(env: dict[str, str] | None = None) -> bool:
    env = dict(os.environ) if env is None else env
    return bool(env.get("DISPLAY") or env.get("WAYLAND_DISPLAY"))


def view_options(view: bool, save: str | None) -> ViewOptions | None:
    """--view / --view-save → where the stream goes (None: no viewer). Raises UserError when
    Rerun is not installed or the file is not an .rrd."""
    if not view and not save:
        return None
    if importlib.util.find_spec("rerun") is None:
        raise UserError("--view needs Rerun: pip install 'apprentice[view]'")
    if save:
        path = Path(save).expanduser().resolve()
        if path.suffix != ".rrd":
            raise UserError(f"--view-save takes a .rrd file, got {save!r}")
        if not path.parent.is_dir():
            raise UserError(f"--view-save: no folder {path.parent}")
        return ViewOptions("save", str(path))
    sink = "spawn" if has_display() else "web"
    return ViewOptions(sink, grpc_port=free_port(), web_port=free_port())


def add_view_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--view", action="store_true",
                   help="show the run live in Rerun (a window, or a web viewer URL when there "
                        "is no display), from a subscriber process of its own")
    p.add_argument("--view-save", metavar="FILE.rrd",
                   help="stream the live view into a Rerun file instead (headless)")  # fmt: skip


def _cameras(procs: Sequence[ProcessSpec]) -> dict[str, str]:
    """camera → transport the viewer subscribes to (compressed when the graph publishes
    JPEG: cheap, logged undecoded)."""
    out: dict[str, str] = {}
    for p in procs:
        params = p.parameters
        names: list[str] = []
        if p.executable == "sim_robot":
            names = [str(c) for c in params.get("cameras", ["top"])]
        elif p.executable == "camera":
            names = [str(params.get("name", p.label))]
        else:
            continue
        jpeg = bool(params.get("publish_compressed", True))
        for cam in names:
            out.setdefault(cam, "compressed" if jpeg else "raw")
    return out


def _arms(procs: Sequence[ProcessSpec]) -> list[str]:
    """The follower arms: sim arms, arm drivers not under /leader, policy and teleop targets."""
    arms: list[str] = []
    for p in procs:
        params = p.parameters
        if p.executable == "sim_robot":
            names = [str(a) for a in params.get("arms", ["all"])]
            if names == ["all"]:
                from apprentice.sim.scenes import get_scene

                names = [a.name for a in get_scene(str(params.get("scene",
                                                                  "aloha_transfer_cube"))).arms]
            arms += names
        elif p.executable == "arm_driver":
            ns = str(params.get("namespace") or params.get("arm") or p.label)
            if not ns.startswith("leader/"):
                arms.append(ns)
        elif p.executable == "policy_node":
            arms += [str(a) for a in params.get("arms", [])]
        elif p.executable == "teleop":
            arms += [str(pair).partition(":")[2] for pair in params.get("pairs", [])]
    return list(dict.fromkeys(a for a in arms if a))


def _scene(procs: Sequence[ProcessSpec]) -> str:
    """The simulated scene (drawn in 3D), or "" for a robot."""
    for p in procs:
        if p.executable == "sim_robot":
            return str(p.parameters.get("scene", "aloha_transfer_cube"))
    return ""


def viewer_process(graph: Graph, view: ViewOptions,
                   extra: Sequence[ProcessSpec] = ()) -> ProcessSpec:
    """The viewer process for `graph`'s topics (`extra`: processes started outside the
    graph, e.g. eval's per-episode policy node)."""
    procs = [*graph.processes, *extra]
    cams = _cameras(procs)
    return ProcessSpec(
        "viewer",
        LABEL,
        {
            "name": graph.name,
            "arms": _arms(procs),
            "cameras": [f"{c}:{t}" for c, t in cams.items()],
            "sink": view.sink,
            "save_path": view.save_path,
            "grpc_port": view.grpc_port,
            "web_port": view.web_port,
            "scene": _scene(procs),
            "idle": True,  # SCHED_IDLE: only CPU time nothing else wants
        },
        optional=True,
    )


def with_viewer(graph: Graph, view: ViewOptions | None,
                extra: Sequence[ProcessSpec] = ()) -> Graph:
    """`graph` plus its viewer process (unchanged when `view` is None)."""
    if view is None:
        return graph
    return Graph(graph.name, (*graph.processes, viewer_process(graph, view, extra)),
                 graph.source)
