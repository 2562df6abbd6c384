"""Graph descriptions: the one source both launchers read."""

from __future__ import annotations

import importlib

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
