"""Where the launch folder is: graph YAMLs, robot configs and robot.launch.py.

The files live in the repository's top-level `launch/` (the design card). A wheel ships that
folder as the package data of `apprentice.launch` (pyproject.toml maps the package onto
`launch/`), so it is `<site-packages>/apprentice/launch/` in an installed wheel and
`<repo>/launch/` in an editable install or a checkout. Everything that looks for launch files
(apprentice.graph, apprentice.drivers.factory, robot.launch.py through load_graph) asks here.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def launch_dir() -> Path:
    """The launch folder: the installed package data if present, else the checkout's."""
    installed = _PACKAGE / "launch"  # a wheel install
    if installed.is_dir():
        return installed
    return _PACKAGE.parent / "launch"  # editable install / source checkout


LAUNCH_DIR = launch_dir()
GRAPHS_DIR = LAUNCH_DIR / "graphs"
ROBOTS_DIR = LAUNCH_DIR / "robots"
