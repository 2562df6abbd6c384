"""Graph descriptions: the one source both launchers read."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from apprentice.graph import GRAPHS_DIR, load_graph, write_params_file


@pytest.mark.parametrize("path", sorted(GRAPHS_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_graph_parameter_is_declared_by_its_executable(path) -> None:
    graph = load_graph(path)
    for proc in graph.processes:
        defaults = importlib.import_module(f"apprentice_ros.{proc.executable}").DEFAULTS
        unknown = set(proc.parameters) - set(defaults)
        assert not unknown, f"{path.name}: undeclared parameters {unknown}"
        for key, value in proc.parameters.items():  # ROS parameter types are fixed by defaults
            assert type(value) is type(defaults[key]), (path.name, key)


def test_overrides_apply_and_unknown_ones_are_refused() -> None:
    g = load_graph("sim_aloha").with_parameters({"scene": "aloha_insertion", "seed": 7})
    assert g.processes[0].parameters["scene"] == "aloha_insertion"
    assert g.processes[0].parameters["seed"] == 7
    with pytest.raises(ValueError, match="no process has parameter"):
        load_graph("sim_aloha").with_parameters({"sceen": "x"})


def test_bad_graphs_are_refused_clearly(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="no graph file"):
        load_graph("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("processes:\n  - parameters: {}\n")
    with pytest.raises(ValueError, match="executable"):
        load_graph(bad)


def test_params_file_applies_to_all_nodes_of_a_process(tmp_path) -> None:
    path = write_params_file({"seed": 3, "cameras": ["top"]}, tmp_path, "sim")
    assert yaml.safe_load(path.read_text()) == {
        "/**": {"ros__parameters": {"seed": 3, "cameras": ["top"]}}
    }


def test_launch_file_reads_the_graph_through_load_graph() -> None:
    text = (GRAPHS_DIR.parent / "robot.launch.py").read_text()
    assert "from apprentice.graph import load_graph" in text and "load_graph(" in text


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[1]) == pid:  # field 4 of /proc/PID/stat: the parent's pid
            out.append(int(stat.parent.name))
    return out


@pytest.mark.ros
def test_nodes_do_not_outlive_a_killed_graph_runner() -> None:
    """SIGKILL to `apprentice graph run` (no chance to stop its nodes): every node gets SIGTERM
    from the kernel (PR_SET_PDEATHSIG) and exits, none keeps running as an orphan."""
    runner = subprocess.Popen([sys.executable, "-m", "apprentice", "graph", "run", "sim_so100"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not (nodes := _children(runner.pid)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert nodes, "the graph started no node within 60 s"
        time.sleep(2.0)  # the node is running, past its imports
        runner.kill()
        runner.wait()
        deadline = time.monotonic() + 30
        while (alive := [p for p in nodes if Path(f"/proc/{p}").exists()]) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.2)
    finally:
        runner.kill()
    for pid in alive:  # don't leave them to load later tests
        os.kill(pid, signal.SIGKILL)
    assert not alive, f"nodes {alive} outlived their graph runner"


@pytest.mark.ros
def test_sigint_stops_a_graph_started_with_sigint_ignored() -> None:
    """A background start (`apprentice deploy … &`, nohup, a CI runner) inherits SIGINT ignored;
    Ctrl-C / a supervisor's SIGINT must still stop the graph (and its nodes) cleanly."""
    runner = subprocess.Popen(
        [sys.executable, "-m", "apprentice", "graph", "run", "sim_so100"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not (nodes := _children(runner.pid)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert nodes, "the graph started no node within 60 s"
        time.sleep(2.0)
        runner.send_signal(signal.SIGINT)
        code = runner.wait(timeout=30)
    finally:
        runner.kill()
    assert code == 0
    assert not [p for p in nodes if Path(f"/proc/{p}").exists()]
