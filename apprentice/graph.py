"""Node graphs: one YAML description, two launchers.

`launch/*.launch.py` turns a graph into launch_ros Node actions for `ros2 launch` on a ROS
install; `GraphRunner` starts the same processes here without the ROS launch tools. Each
process runs `apprentice_ros.<executable>` (a module with main(), installed as a console script
of the same name) with the graph's parameters in a params file for all its nodes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from apprentice.errors import UserPathError, UserValueError
from apprentice.resources import GRAPHS_DIR  # launch/graphs, in a checkout or a wheel


@dataclass(frozen=True)
class ProcessSpec:
    executable: str
    label: str
    parameters: dict[str, Any] = field(default_factory=dict)
    # An optional process (the live viewer) may exit without stopping the graph: GraphRunner
    # reports its exit once on stderr and leaves it out of poll() and the exit code.
    optional: bool = False


@dataclass(frozen=True)
class Graph:
    name: str
    processes: tuple[ProcessSpec, ...]
    source: Path | None = None

    def with_parameters(self, overrides: dict[str, Any]) -> Graph:
        """Applies overrides: `KEY` to every process that declares the parameter,
        `LABEL.KEY` to the process labelled LABEL only (e.g. `follower.port`)."""
        labels = {p.label for p in self.processes}
        scoped: dict[str, dict[str, Any]] = {}
        for key, value in overrides.items():
            label, dot, name = key.rpartition(".")
            if dot and label not in labels:
                raise UserValueError(
                    f"graph {self.name}: no process labelled {label!r} (in {key!r}); "
                    f"labels: {', '.join(sorted(labels))}"
                )
            scoped.setdefault(label if dot else "", {})[name] = value
        procs = []
        for p in self.processes:
            mine = {**scoped.get("", {}), **scoped.get(p.label, {})}
            unknown = set(scoped.get(p.label, {})) - set(p.parameters)
            if unknown:
                raise UserValueError(
                    f"graph {self.name}: process {p.label} has no parameter(s) {sorted(unknown)}"
                )
            applied = {k: v for k, v in mine.items() if k in p.parameters}
            procs.append(
                ProcessSpec(p.executable, p.label, {**p.parameters, **applied}, p.optional)
            )
        unknown = set(scoped.get("", {})) - {k for p in self.processes for k in p.parameters}
        if unknown:
            names = sorted(unknown)
            raise UserValueError(f"graph {self.name}: no process has parameter(s) {names}")
        return Graph(self.name, tuple(procs), self.source)


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """KEY=VALUE strings → a dict, each value typed as YAML reads it: 3 → int, [a, b] → list."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise UserValueError(f"expected KEY=VALUE, got {pair!r}")
        out[key] = yaml.safe_load(value)
    return out


def resolve_graph_path(name_or_path: str | os.PathLike[str]) -> Path:
    path = Path(name_or_path)
    if path.is_file():
        return path
    candidate = GRAPHS_DIR / f"{name_or_path}.yaml"
    if candidate.is_file():
        return candidate
    known = ", ".join(sorted(p.stem for p in GRAPHS_DIR.glob("*.yaml")))
    raise UserPathError(f"no graph file {name_or_path!r}; graphs in {GRAPHS_DIR}: {known}")


def load_graph(name_or_path: str | os.PathLike[str]) -> Graph:
    """A graph file (a path, or a name in launch/graphs), else a robot's graph made from its
    robot config: `so101` (drivers and cameras), `record_so101` (apprentice.robot_graphs)."""
    try:
        path = resolve_graph_path(name_or_path)
    except FileNotFoundError:
        from apprentice.robot_graphs import graph_by_name

        graph = graph_by_name(str(name_or_path)) if "/" not in str(name_or_path) else None
        if graph is None:
            raise UserPathError(
                f"no graph file {str(name_or_path)!r} and no robot config of that name; graphs: "
                f"{', '.join(sorted(p.stem for p in GRAPHS_DIR.glob('*.yaml')))}; robot graphs: "
                "ROBOT or record_ROBOT for a robot in launch/robots"
            ) from None
        return graph
    try:
        doc = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UserValueError(f"{path}: not a YAML graph ({str(exc).splitlines()[0]})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("processes"), list):
        raise UserValueError(f"{path}: a graph needs a 'processes' list")
    procs = []
    for i, p in enumerate(doc["processes"]):
        exe = p.get("executable") if isinstance(p, dict) else None
        if not isinstance(exe, str) or not exe.isidentifier():
            raise UserValueError(f"{path}: process {i} needs an 'executable' (a module name)")
        params = p.get("parameters") or {}
        if not isinstance(params, dict):
            raise UserValueError(f"{path}: process {i} ({exe}): 'parameters' must be a mapping")
        procs.append(ProcessSpec(exe, str(p.get("label", exe)), params))
    return Graph(str(doc.get("name", path.stem)), tuple(procs), path)


def write_params_file(params: dict[str, Any], folder: Path, label: str) -> Path:
    """A ROS 2 params file that applies to every node of the process (`/**`)."""
    path = folder / f"{label}.params.yaml"
    path.write_text(yaml.safe_dump({"/**": {"ros__parameters": params}}, sort_keys=False))
    return path


def stop_processes(
    procs: Sequence[subprocess.Popen[Any]], timeout: float = 10.0, first: int = signal.SIGINT
) -> list[int | None]:
    """Stops child processes together: `first` (SIGINT = Ctrl-C, a clean shutdown; SIGTERM for
    processes that handle that), then SIGTERM after `timeout` s, then SIGKILL after 3 s more.
    Always reaps them (no zombies); returns their exit codes."""
    steps = [(first, timeout)] + [(s, 3.0) for s in (signal.SIGTERM, signal.SIGKILL) if s != first]
    for sig, grace in steps:
        alive = [p for p in procs if p.poll() is None]
        if not alive:
            break
        for p in alive:
            p.send_signal(sig)
        deadline = time.monotonic() + grace
        for p in alive:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
    return [p.returncode for p in procs]


def _load_prctl() -> Any:
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux
        return None


_PRCTL = _load_prctl()  # looked up here: a forked child should only call it
_PR_SET_PDEATHSIG = 1


def die_with(parent: int) -> Any:
    """A child's pre-exec step: SIGTERM when the graph runner dies, even by SIGKILL (Linux
    PR_SET_PDEATHSIG), so no node outlives it: an orphaned policy node would go on commanding
    the arm with nobody to stop it (a test killing a hung `apprentice deploy` once left its
    policy node, arm driver and camera running, loading every later test). The signal comes
    when the thread that started the child ends: start graphs from the main thread. The record
    and eval CLIs start their session processes with it too: a session left by an interrupted
    CLI went on starting episodes (a policy node each) against a graph that was gone."""

    def pre_exec() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # not inherited ignored (`cmd &`)
        if _PRCTL is not None:
            _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)
            if os.getppid() != parent:  # the runner died before the line above
                os._exit(1)

    return pre_exec


class GraphRunner:
    """Starts a graph's processes here (no ROS launch tools) and stops them all together."""

    def __init__(
        self, graph: Graph, env: dict[str, str] | None = None, log_dir: Path | None = None
    ):
        self.graph = graph
        self.env = dict(os.environ if env is None else env)
        self._tmp = tempfile.TemporaryDirectory(prefix=f"graph-{graph.name}-")
        self.log_dir = log_dir
        self.procs: list[tuple[ProcessSpec, subprocess.Popen[bytes]]] = []
        self._reported: set[str] = set()  # optional processes whose exit was reported

    def start(self) -> GraphRunner:
        folder = Path(self._tmp.name)
        for spec in self.graph.processes:
            write_params_file(spec.parameters, folder, spec.label)
            self.procs.append((spec, self._launch(spec, "wb")))
        return self

    def restart(self, label: str) -> None:
        """Starts the exited process `label` again, with the same parameters; its log goes on
        in the same file."""
        i = next((k for k, (s, _) in enumerate(self.procs) if s.label == label), None)
        if i is None:
            raise KeyError(f"graph {self.graph.name}: no process labelled {label!r}")
        spec, proc = self.procs[i]
        if proc.poll() is None:
            raise RuntimeError(f"{label} is still running")
        self.procs[i] = (spec, self._launch(spec, "ab"))

    def _launch(self, spec: ProcessSpec, log_mode: str) -> subprocess.Popen[bytes]:
        params = Path(self._tmp.name) / f"{spec.label}.params.yaml"
        cmd = [sys.executable, "-m", f"apprentice_ros.{spec.executable}"]
        cmd += ["--ros-args", "--params-file", str(params)]
        die = die_with(os.getpid())
        if self.log_dir is None:
            return subprocess.Popen(cmd, env=self.env, preexec_fn=die)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / f"{spec.label}.log", log_mode) as out:  # the child keeps a copy
            return subprocess.Popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                    preexec_fn=die)  # fmt: skip

    def poll(self) -> list[tuple[str, int]]:
        """(label, exit code) of every process that has exited; an optional one's exit is
        reported on stderr once instead."""
        exited = [(s, p.returncode) for s, p in self.procs if p.poll() is not None]
        for spec, code in exited:
            if spec.optional and spec.label not in self._reported:
                self._reported.add(spec.label)
                log = f"; log {self.log_dir / f'{spec.label}.log'}" if self.log_dir else ""
                print(f"graph {self.graph.name}: {spec.label} exited (code {code}); the rest "
                      f"goes on{log}", file=sys.stderr, flush=True)  # fmt: skip
        return [(s.label, code) for s, code in exited if not s.optional]

    def wait(self) -> int:
        """Blocks until any process exits (or Ctrl-C), then stops the rest; worst exit code."""
        try:
            while not self.poll():
                time.sleep(0.2)
        except KeyboardInterrupt:
            pass
        return self.stop()

    def stop(self, timeout: float = 10.0) -> int:
        """SIGINT (clean shutdown), then SIGTERM, then SIGKILL for whatever is left."""
        codes = stop_processes([p for _, p in self.procs], timeout)
        self._tmp.cleanup()
        # -SIGINT / 0 are clean stops; anything else is reported (an optional process's
        # failure was reported by poll() and is not the run's).
        bad = [c for (s, _), c in zip(self.procs, codes, strict=True)
               if not s.optional and c not in (0, -signal.SIGINT, None)]  # fmt: skip
        return bad[0] if bad else 0

    def __enter__(self) -> GraphRunner:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
