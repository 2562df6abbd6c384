"""The wheel: one `pip install` gives `apprentice` with its launch files and the ROS nodes.

The wheel is built from a copy of the sources (a build in the checkout would reuse a stale
build/ folder), installed into a new venv and run from a folder outside the repository. The new
venv gets its third-party dependencies (numpy, mujoco, rclpy, ...) from this venv's
site-packages through a .pth file of plain path lines: that adds the folders only, their own
.pth files (this venv's editable-install finders) never run, so `apprentice`, `apprentice_ros`
and the launch files must come from the wheel; the test checks that they do.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import site
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.ros  # the sim graph runs on the session's isolated ROS_DOMAIN_ID

REPO = Path(__file__).resolve().parents[1]
# What pyproject.toml builds the wheel from (its package-dir folders, README for the metadata).
SOURCES = (
    "pyproject.toml",
    "README.md",
    "apprentice",
    "teleop",
    "policy_server",
    "calibration",
    "launch",
    "ros_ws/src/apprentice_ros/apprentice_ros",
)


def _under(path: str | Path, folder: Path) -> bool:
    return Path(path).resolve().is_relative_to(folder.resolve())


def _build_wheel(tmp: Path) -> Path:
    src = tmp / "src"
    for rel in SOURCES:
        source, target = REPO / rel, src / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
            shutil.copytree(source, target, ignore=ignore)
        else:
            shutil.copy2(source, target)
    # Offline: this venv's setuptools builds it (>= 70.1 needs no `wheel` package).
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    dist = tmp / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-index", *isolation, "-q"]
        + ["-w", str(dist), str(src)],
        check=True,
        timeout=300,
    )
    (wheel,) = dist.glob("apprentice-*.whl")
    return wheel


def _new_venv(tmp: Path, wheel: Path) -> Path:
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index"]
        + ["-q", str(wheel)],
        check=True,
        timeout=300,
    )
    purelib = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(purelib) / "_project_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return venv


def _env() -> dict[str, str]:
    """This process's environment (ROS domain, LD_LIBRARY_PATH for the rclpy wheels, MUJOCO_GL)
    without PYTHONPATH entries inside the repository (a sourced colcon install of it)."""
    env = dict(os.environ)
    keep = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and not _under(p, REPO)]
    if keep:
        env["PYTHONPATH"] = os.pathsep.join(keep)
    else:
        env.pop("PYTHONPATH", None)
    return env


PROVENANCE = """
import json, sys
import apprentice, apprentice_ros, apprentice.resources
from apprentice.drivers.factory import robot_path
from apprentice.graph import resolve_graph_path
print(json.dumps({
    "apprentice": apprentice.__file__,
    "apprentice_ros": apprentice_ros.__file__,
    "launch_dir": str(apprentice.resources.LAUNCH_DIR),
    "graph": str(resolve_graph_path("sim_so100")),
    "robots": [str(robot_path(name)) for name in sys.argv[1:]],
    "finders": [repr(f) for f in sys.meta_path],
    "path": sys.path,
}))
"""


def test_the_wheel_installs_a_working_apprentice_with_graphs_and_nodes(tmp_path) -> None:
    t0 = time.monotonic()
    wheel = _build_wheel(tmp_path)
    version = wheel.name.split("-")[1]

    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    expected = {"apprentice/launch/robot.launch.py", "apprentice/cli.py"}
    for folder in ("graphs", "robots"):
        files = (REPO / "launch" / folder).glob("*.yaml")
        expected |= {f"apprentice/launch/{folder}/{p.name}" for p in files}
    nodes = REPO / "ros_ws/src/apprentice_ros/apprentice_ros"
    expected |= {f"apprentice_ros/{p.name}" for p in nodes.glob("*.py")}
    assert "apprentice/launch/graphs/sim_so100.yaml" in expected
    assert expected <= names, f"missing from the wheel: {sorted(expected - names)}"

    venv = _new_venv(tmp_path, wheel)
    py, cli = venv / "bin" / "python", venv / "bin" / "apprentice"
    work = tmp_path / "work"  # the working directory: outside the repository
    work.mkdir()
    assert not _under(work, REPO)
    env = _env()

    def run(*cmd: str | Path, timeout: float = 60) -> str:
        done = subprocess.run(
            [str(c) for c in cmd], cwd=work, env=env, capture_output=True, text=True,
            timeout=timeout,
        )  # fmt: skip
        assert done.returncode == 0, f"{cmd}: {done.returncode}\n{done.stdout}\n{done.stderr}"
        return done.stdout

    # Everything of ours comes from the new venv's wheel install, nothing from the repository.
    robots = sorted(p.stem for p in (REPO / "launch/robots").glob("*.yaml"))
    where = json.loads(run(py, "-c", PROVENANCE, *robots))
    installed = venv / "lib"
    for key in ("apprentice", "apprentice_ros", "launch_dir", "graph"):
        assert _under(where[key], installed), (key, where[key])
    assert where["robots"] and all(_under(p, installed) for p in where["robots"]), where
    assert not any("editable" in f.lower() for f in where["finders"]), where["finders"]
    deps = set(site.getsitepackages())  # the .pth lines (this venv may live in the repository)
    assert not [p for p in where["path"] if p and _under(p, REPO) and p not in deps], where["path"]

    assert run(cli, "--version").strip() == f"apprentice {version}"
    assert "so100_lift" in run(cli, "scenes")

    # A sim graph from the installed package; an independent probe from the same venv.
    log_path = tmp_path / "graph.log"
    log = open(log_path, "wb")  # noqa: SIM115

    def log_tail() -> str:
        return log_path.read_text(errors="replace")[-3000:]

    graph = subprocess.Popen(
        [str(cli), "graph", "run", "sim_so100", "-p", "cameras=[top]"],
        cwd=work,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, as in a terminal
    )
    try:
        report_file = tmp_path / "probe.json"
        probe = subprocess.run(
            [str(py), "-m", "apprentice_ros.probe", "/arm/joint_states", "--duration", "2"]
            + ["--json", str(report_file)],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert graph.poll() is None, f"the graph exited early:\n{log_tail()}"
        assert probe.returncode == 0, f"{probe.stdout}{probe.stderr}\n{log_tail()}"
        joints = json.loads(report_file.read_text())["/arm/joint_states"]
        assert joints["count"] >= 100 and joints["strictly_increasing"], joints  # 100 Hz for 2 s
        os.killpg(graph.pid, signal.SIGINT)  # Ctrl-C: to the whole group, as a terminal does
        assert graph.wait(timeout=30) == 0, log_tail()
    finally:
        if graph.poll() is None:
            os.killpg(graph.pid, signal.SIGKILL)
            graph.wait()
        log.close()
    print(f"wheel test: {time.monotonic() - t0:.1f} s")
