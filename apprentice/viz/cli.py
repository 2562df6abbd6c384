"""`apprentice view`: an episode in Rerun, offline.

    apprentice view BAG                        native viewer (needs a display)
    apprentice view DATASET --episode 3        a dataset's episode (folder name or index)
    apprentice view runs/x/eval --episode 7    an eval rollout (episode number)
    apprentice view BAG --save x.rrd           a file for `rerun x.rrd` or the web viewer
    apprentice view BAG --web [--port 9090]    the web viewer from the rerun wheel, until Ctrl-C

PATH is an episode bag folder (metadata.yaml + .mcap), a dataset folder of bags, or an eval
folder (results.json, episodes.json, rollouts/episode_NNN.npz). Bags are drawn by
`apprentice.viz.episode`, eval rollouts by `apprentice.viz.rollout.log_rollout`, both in the
layout of `apprentice.viz.layout`; the 3D robot is the scene's MJCF posed by the recorded
joint states.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
import time
from pathlib import Path
from urllib.parse import quote

from apprentice.errors import UserError, UserPathError, UserValueError

APP_ID = "apprentice_view"
WEB_PORT = 9090


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    """Registers `view` on the main CLI's subparsers."""
    p = sub.add_parser(
        "view", help="an episode in Rerun: cameras, joints, task, quality findings, 3D robot",
        usage="apprentice view PATH [--episode NAME|INDEX] [--save X.rrd | --web [--port N]] "
              "[--max-fps N]",
    )  # fmt: skip
    p.add_argument("path", help="an episode bag folder, a dataset folder of bags, or an eval "
                                "folder (results.json + rollouts/)")  # fmt: skip
    p.add_argument("--episode", help="which episode: a dataset's bag folder name or index "
                                     "(default the first), an eval folder's episode number or "
                                     "episode_NNN (default the first)")  # fmt: skip
    out = p.add_mutually_exclusive_group()
    out.add_argument("--save", metavar="X.rrd", help="write a Rerun file instead of opening "
                                                     "a viewer")  # fmt: skip
    out.add_argument("--web", action="store_true", help="serve the web viewer (from the rerun "
                                                        "wheel, works offline) until Ctrl-C")
    p.add_argument("--port", type=int, default=WEB_PORT,
                   help=f"--web: the viewer's HTTP port (default {WEB_PORT}); its data is "
                        "served on gRPC at PORT+1")  # fmt: skip
    p.add_argument("--max-fps", type=float, default=30.0,
                   help="the 3D robot's poses per second at most (default 30; 0: one per joint "
                        "state); plots and cameras keep every message")  # fmt: skip
    p.set_defaults(func=cmd_view)


# ---------------------------------------------------------------------------------------------
# What PATH is


def is_bag(path: Path) -> bool:
    return (path / "metadata.yaml").is_file()


def is_eval(path: Path) -> bool:
    """What `apprentice eval` writes: results.json (or, stopped early, only episodes.json) and
    rollouts/."""
    return ((path / "results.json").is_file() or (path / "episodes.json").is_file()) and (
        path / "rollouts").is_dir()


def resolve(path: Path, episode: str | None) -> tuple[str, Path, int | None]:
    """('bag', bag folder, None) or ('eval', eval folder, episode number)."""
    if not path.exists():
        raise UserPathError(f"{path}: no such file or folder")
    if not path.is_dir():
        raise UserPathError(f"{path}: not a folder (an episode bag, a dataset of bags or an "
                            "eval folder)")  # fmt: skip
    if is_bag(path):
        if episode is not None:
            raise UserValueError(f"--episode {episode}: {path} is one episode bag")
        return "bag", path, None
    if is_eval(path):
        return "eval", path, eval_episode(path, episode)
    if any(path.glob("*.mcap")):
        raise UserPathError(f"{path}: an unfinished recording (an .mcap without metadata.yaml): "
                            f"apprentice recover {path.parent} first")  # fmt: skip
    bags = sorted(p for p in path.iterdir() if p.is_dir() and is_bag(p))
    if bags:
        return "bag", pick(bags, episode), None
    raise UserPathError(f"{path}: not an episode bag (no metadata.yaml), a dataset of bags or "
                        "an eval folder (results.json + rollouts/)")  # fmt: skip


def _names(items: list[str]) -> str:
    return ", ".join(items) if len(items) <= 8 else ", ".join([*items[:4], "…", *items[-2:]])


def pick(bags: list[Path], episode: str | None) -> Path:
    """A dataset's bag by folder name or index (default the first)."""
    if episode is None:
        return bags[0]
    by_name = {b.name: b for b in bags}
    if episode in by_name:
        return by_name[episode]
    if episode.lstrip("-").isdigit() and -len(bags) <= int(episode) < len(bags):
        return bags[int(episode)]
    raise UserValueError(f"--episode {episode}: {bags[0].parent} has {len(bags)} episodes: "
                         f"{_names([b.name for b in bags])} (or an index 0-{len(bags) - 1})")


def eval_episode(folder: Path, episode: str | None) -> int:
    """An eval folder's episode number (default its first), checked against its rows."""
    from apprentice.viz.rollout import eval_rows

    numbers = [int(r["episode"]) for r in eval_rows(folder)[0] if "episode" in r]
    if not numbers:
        raise UserValueError(f"{folder}: its results.json lists no episodes")
    if episode is None:
        return numbers[0]
    text = episode.removeprefix("episode_")
    if text.isdigit() and int(text) in numbers:
        return int(text)
    raise UserValueError(f"--episode {episode}: {folder} has episodes "
                         f"{_names([str(n) for n in numbers])}")


# ---------------------------------------------------------------------------------------------
# Drawing


def cmd_view(a: argparse.Namespace) -> int:
    import rerun as rr

    kind, path, episode = resolve(Path(a.path), a.episode)
    if a.max_fps < 0:
        raise UserValueError(f"--max-fps must be >= 0, got {a.max_fps}")
    if a.save:
        out = Path(a.save)
        if not out.parent.is_dir():
            raise UserPathError(f"--save {out}: folder {out.parent} does not exist")
    elif not a.web and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise UserError("no display for the native viewer: --save X.rrd writes a file, --web "
                        "serves the viewer to a browser")  # fmt: skip
    what = f"{path.name} episode {episode}" if kind == "eval" else path.name
    rec = rr.RecordingStream(APP_ID)
    rec.send_recording_name(what)
    if a.save:
        rec.save(out)
    elif a.web:
        url = rec.serve_grpc(grpc_port=a.port + 1)
        rr.serve_web_viewer(web_port=a.port, open_browser=False, connect_to=url)
    else:
        rec.spawn()
    t0 = time.perf_counter()
    if kind == "bag":
        from apprentice.viz.episode import log_bag

        view = log_bag(rec, path, max_fps=a.max_fps)
        drawn = (f"{sum(view.counts.values())} messages of {len(view.counts)} topics, "
                 f"{len(view.arms)} arm(s), {len(view.cameras)} camera(s), "
                 f"robot: {view.scene or 'none'}")  # fmt: skip
        if view.not_drawn:
            drawn += f"; not drawn: {', '.join(view.not_drawn)}"
    else:
        from apprentice.viz.rollout import log_rollout

        rollout = log_rollout(rec, path, episode, max_fps=a.max_fps)
        drawn = (f"{len(rollout.arms)} arm(s), {len(rollout.cameras)} camera(s), "
                 f"robot: {rollout.scene or 'none'}")  # fmt: skip
    rec.flush()
    took = time.perf_counter() - t0
    if a.save:
        rec.disconnect()  # closes the file
        size = out.stat().st_size / 1e6
        print(f"{what}: {drawn}; wrote {out} ({size:.1f} MB) in {took:.1f} s")
        return 0
    print(f"{what}: {drawn}; logged in {took:.1f} s")
    if a.web:
        return serve_until_stopped(f"http://localhost:{a.port}/?url={quote(url, safe='')}")
    return 0


def serve_until_stopped(link: str) -> int:
    """Keeps the process (and so the viewer's servers) up until SIGINT or SIGTERM: exit 0."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(f"web viewer: {link}  (Ctrl-C stops)", flush=True)
    while not stop.wait(0.5):
        pass
    return 0
