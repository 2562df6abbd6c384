"""`apprentice eval`: closed-loop evaluation in simulation, and `apprentice eval compare` (no rclpy
here).

    apprentice eval --policy runs/x/policy --episodes 50 [--seed0 1000] [--graph eval_sim_aloha]
    apprentice eval compare runs/eval-a runs/eval-b
    apprentice eval report runs/eval-a

`eval` starts the sim robot of an eval graph (launch/graphs/eval_sim_aloha.yaml) and an eval
session (apprentice_ros.eval_session) that runs one episode per seed (seed0, seed0 + 1, ...),
each with a fresh policy node built from the graph's `policy` process. It prints a per-episode
table, the success rate with its 95 % Wilson interval and the per-stage rates
(`apprentice.evaluation`), and writes <out>/results.json, a video, a joint plot and the
rollout's streams per episode, and <out>/report.html (`apprentice.report`; `eval report`
rewrites it). On a terminal the episodes show as one progress line (`apprentice.progress`).

Seeds the policy was trained on are refused: the card lists the scene seeds of its dataset's
episodes (`train_seeds`), and an eval whose seeds overlap them would measure recall of
demonstrated scenes, not the policy (`--allow-train-seeds` runs it anyway, and results.json
says so). A card without the list (exported before it was kept) runs with a note.

`compare` prints two eval folders' rates side by side and whether they differ significantly.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from apprentice.errors import UserError, UserValueError
from apprentice.evaluation import (
    RESULTS_FILE,
    compare,
    format_comparison,
    format_rate,
    format_stages,
    format_table,
    load_results,
    seed_ranges,
    seen_seeds,
    summarize,
)
from apprentice.progress import EpisodeProgress, relay_thread
from apprentice.report import REPORT_FILE, write_report
from apprentice.viz.live import add_view_arguments, view_options, with_viewer

EVAL_GRAPH = "eval_sim_aloha"
POLICY_LABEL = "policy"  # the eval graph's policy process, restarted per episode
ROW_COLUMNS = ("episode", "seed", "success", "success_at_end", "max_stage", "frames",
               "sim_stalled", "inferences", "inference_ms", "mode")  # fmt: skip

# ---------------------------------------------------------------------------------------------
# Episode artifacts (the eval session writes them)


def write_video(
    frames: Sequence[np.ndarray], path: Path, fps: float, min_height: int = 240
) -> Path:
    """RGB frames (H, W, 3) uint8 → Motion-JPEG .avi (OpenCV, no codec libraries needed).
    Small frames are enlarged by a whole factor (nearest pixel) so they can be watched."""
    import cv2

    if not frames:
        raise ValueError(f"{path}: no frames to write")
    h, w = frames[0].shape[:2]
    k = max(1, -(-min_height // h))  # ceil
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w * k, h * k))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path}")
    try:
        for rgb in frames:
            big = cv2.resize(rgb, (w * k, h * k), interpolation=cv2.INTER_NEAREST)
            writer.write(cv2.cvtColor(big, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    return path


Series = tuple[
    Sequence[str], Sequence[tuple[float, np.ndarray]], Sequence[tuple[float, np.ndarray]]
]


def plot_joints(series: dict[str, Series], path: Path, title: str = "") -> Path:
    """One panel per arm: measured joint positions (solid) and commands (dashed) over time (s
    from the first sample). series: arm → (joint names, [(t, q)], [(t, command)])."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    starts = [s[0][0] for _, meas, cmd in series.values() for s in (meas, cmd) if s]
    t0 = min(starts, default=0.0)
    fig, axes = plt.subplots(len(series), 1, figsize=(10, 3.2 * len(series)), squeeze=False)
    for ax, (arm, (names, meas, cmds)) in zip(axes[:, 0], series.items(), strict=True):
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for data, style in ((meas, "-"), (cmds, "--")):
            if not data:
                continue
            t = np.array([s for s, _ in data]) - t0
            q = np.stack([v for _, v in data])  # (T, J)
            for j in range(q.shape[1]):
                label = names[j] if style == "-" and j < len(names) else None
                ax.plot(t, q[:, j], style, color=colors[j % len(colors)], lw=1, label=label)
        ax.set_title(f"{arm} (solid: measured, dashed: commanded)", fontsize=9)
        ax.set_ylabel("rad / m")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper right", ncol=2)
    axes[-1, 0].set_xlabel("s")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------
# The eval graph


def policy_arms(card: dict[str, Any], scene: str) -> list[str]:
    """The scene's arms, in the order the card's joints list them (card joints must be whole
    arms, concatenated)."""
    from apprentice.sim.scenes import get_scene

    arms = {a.name: tuple(a.joints) for a in get_scene(scene).arms}
    order, i, names = [], 0, list(card["joint_names"])
    while i < len(names):
        arm = next((a for a, js in arms.items() if tuple(names[i : i + len(js)]) == js), None)
        if arm is None:
            raise ValueError(f"policy joints {names} are not whole arms of scene {scene}")
        order.append(arm)
        i += len(arms[arm])
    return order


def sim_process(graph: Any) -> Any:
    """The graph's sim_robot process (apprentice.graph.Process)."""
    try:
        return next(p for p in graph.processes if p.executable == "sim_robot")
    except StopIteration:
        raise ValueError(f"graph {graph.name} has no sim_robot process") from None


def sim_scene(sim: Any) -> str:
    """The scene a sim_robot process simulates (its parameter, else sim_robot's default)."""
    return str(sim.parameters.get("scene", "aloha_transfer_cube"))


def eval_graph(
    card: dict[str, Any], policy_dir: Path, graph: str, seed0: int
) -> tuple[Any, dict[str, Any]]:
    """(the sim part of the eval graph, the policy process's parameters) for this policy: the
    camera renders at the card's image size (the policy node would resize any other size;
    rendering small is cheaper), arms and joint limits come from the scene."""
    from apprentice.graph import Graph, load_graph
    from apprentice.sim.world import MujocoWorld

    g = load_graph(graph)
    by_label = {p.label: p for p in g.processes}
    if POLICY_LABEL not in by_label:
        raise ValueError(f"graph {g.name} has no process labelled {POLICY_LABEL!r}")
    sim = sim_process(g)
    scene = sim_scene(sim)
    arms = policy_arms(card, scene)
    cams = card["cameras"]
    if len({(c["height"], c["width"]) for c in cams}) > 1:
        raise ValueError("the sim renders every camera at one size; the card has several")
    world = MujocoWorld(scene)  # not started: only its joint limits are read
    lower = np.concatenate([world.arm(a).spec.lower for a in arms]).tolist()
    upper = np.concatenate([world.arm(a).spec.upper for a in arms]).tolist()
    common = {"arms": arms, "cameras": [c["name"] for c in cams]}
    size = {"image_height": int(cams[0]["height"]), "image_width": int(cams[0]["width"])}
    # /sim/reset moves to seed + 1 before each episode: the first one runs seed0
    sim_graph = Graph(g.name, (sim,), g.source).with_parameters(
        {**common, **size, "seed": seed0 - 1}
    )
    policy = {**by_label[POLICY_LABEL].parameters, **common, "policy_dir": str(policy_dir),
              "joint_lower": lower, "joint_upper": upper}  # fmt: skip
    return sim_graph, policy


def home_pose(scene: str, arms: Sequence[str]) -> dict[str, list[float]]:
    """Each arm's reset pose (joint order), which the eval session commands around resets."""
    from apprentice.sim.scenes import get_scene

    defs = {a.name: a for a in get_scene(scene).arms}
    return {arm: [float(v) for v in defs[arm].home] for arm in arms}


def graph_task(graph: str | None) -> str | None:
    """The task of a graph's simulated scene (for results.json files that predate `task`)."""
    from apprentice.graph import load_graph
    from apprentice.sim.scenes import get_scene

    try:
        return get_scene(sim_scene(sim_process(load_graph(str(graph))))).task
    except (OSError, ValueError, KeyError):
        return None


# ---------------------------------------------------------------------------------------------
# `apprentice eval`


def check_seeds(card: dict[str, Any], seed0: int, episodes: int, allow: bool) -> list[int] | None:
    """The eval seeds the policy was trained on (None: the card does not say). Raises UserError
    when there are any and `allow` is not set."""
    train = card.get("train_seeds")
    if train is None:
        return None
    seen = seen_seeds(range(seed0, seed0 + episodes), train)
    if seen and not allow:
        raise UserError(
            f"eval seeds {seed_ranges(range(seed0, seed0 + episodes))} include {len(seen)} the "
            f"policy was trained on ({seed_ranges(seen)}; its dataset: {seed_ranges(train)}): "
            f"pick --seed0 {max(train) + 1} or later, or pass --allow-train-seeds"
        )
    return seen


def cmd_eval(a: argparse.Namespace) -> int:
    if a.policy is None:
        raise UserError("eval needs --policy (or: apprentice eval compare A B)")
    if a.episodes < 1:
        raise UserValueError(f"--episodes must be at least 1, got {a.episodes}")
    from apprentice.graph import GraphRunner, ProcessSpec, die_with, write_params_file
    from apprentice.learning.runtime import CARD_FILE
    from apprentice.policy_server.card import load_card, unverified_warning
    from apprentice.sim.scenes import get_scene
    from apprentice.transport import isolated_domain_id, ros_env

    policy_dir = Path(a.policy).resolve()
    card = load_card(policy_dir)  # whole, readable, files as exported; else one line, exit 2
    if warning := unverified_warning(card):
        print(f"eval: warning: {warning}", file=sys.stderr, flush=True)
    seen = check_seeds(card, a.seed0, a.episodes, a.allow_train_seeds)
    if seen is None:
        print("eval: note: the policy card does not list its training seeds (exported before "
              "they were kept): cannot check that the eval seeds are unseen", file=sys.stderr,
              flush=True)  # fmt: skip
    elif seen:
        print(f"eval: warning: seeds {seed_ranges(seen)} were in the training data: their "
              "episodes measure recall, not generalization", file=sys.stderr)  # fmt: skip
    out = Path(a.out or f"runs/eval-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    sim_graph, params = eval_graph(card, policy_dir, a.graph, a.seed0)
    scene = sim_scene(sim_graph.processes[0])
    task = get_scene(scene).task
    for item in a.set:
        key, _, value = item.partition("=")
        params[key] = yaml.safe_load(value)
    params_file = write_params_file(params, out, POLICY_LABEL)
    view = view_options(a.view, a.view_save)  # the viewer also shows each episode's policy
    sim_graph = with_viewer(sim_graph, view, extra=(ProcessSpec("policy_node", POLICY_LABEL,
                                                                params),))  # fmt: skip
    domain = a.domain if a.domain is not None else isolated_domain_id()
    env = ros_env(domain_id=domain)
    print(
        f"eval: {card['policy_type']} policy {policy_dir}, graph {sim_graph.name} "
        f"({params['execution']}), {a.episodes} episode(s) of {a.duration:g} s on seeds "
        f"{seed_ranges(range(a.seed0, a.seed0 + a.episodes))}, ROS_DOMAIN_ID={domain}",
        flush=True,
    )
    if view is not None:
        print(view.describe(), flush=True)
    episodes_file = out / "episodes.json"
    cam = params["cameras"][0]
    fps = float(sim_graph.processes[0].parameters.get("camera_rate", 30.0))
    tty = sys.stdout.isatty()  # a progress line; else the session's `[i/N] {json}` lines
    with GraphRunner(sim_graph, env=env, log_dir=out / "logs") as runner:
        with subprocess.Popen(
            [sys.executable, "-m", "apprentice_ros.eval_session", "--policy-params",
             str(params_file), "--episodes", str(a.episodes), "--duration", str(a.duration),
             "--arms", *params["arms"], "--camera", cam, "--fps", str(fps), "--out", str(out),
             "--home", json.dumps(home_pose(scene, params["arms"])),
             "--json", str(episodes_file)],
            env=env, stdout=subprocess.PIPE if tty else None, text=True,
            preexec_fn=die_with(os.getpid()),
        ) as session:  # fmt: skip
            shown = session.stdout and relay_thread(
                session.stdout, EpisodeProgress(a.episodes, sys.stdout)
            )
            session.wait()
            if shown:
                shown.join()
        died = runner.poll()
    rows = json.loads(episodes_file.read_text()) if episodes_file.exists() else []
    if died or session.returncode != 0:
        print(f"eval: failed (session exit {session.returncode}, graph exits {died}) after "
              f"{len(rows)} episode(s); logs in {out / 'logs'}", file=sys.stderr)  # fmt: skip
        return 1
    summary = summarize(rows, task)
    policy = {"dir": str(policy_dir), "type": card["policy_type"],
              "card_sha256": hashlib.sha256((policy_dir / CARD_FILE).read_bytes()).hexdigest(),
              "data_index_hash": card.get("data_index_hash"),
              "train_seeds": card.get("train_seeds")}  # fmt: skip
    results = {"policy": policy, "policy_type": card["policy_type"], "graph": sim_graph.name,
               "scene": scene, "task": task, "seed0": a.seed0,
               "seeds": [r["seed"] for r in rows], "seen_seeds": seen, "duration_s": a.duration,
               "policy_params": params, **summary, "rows": rows}  # fmt: skip
    (out / RESULTS_FILE).write_text(json.dumps(results, indent=2))
    print(format_table(rows, ROW_COLUMNS))
    print(f"success {format_rate(summary['successes'], summary['episodes'])}, Wilson score; "
          f"results {out / RESULTS_FILE}")  # fmt: skip
    print(f"stages reached ({task}): {format_stages(summary['stages'])}")
    print(f"report {write_report(out)}")
    if summary.get("sim_stalled"):
        stalled = summary["sim_stalled"]
        print(f"warning: the simulator stalled in {stalled} episode(s) (host overloaded?): "
              "their results say little about the policy", file=sys.stderr)  # fmt: skip
    return 0


# ---------------------------------------------------------------------------------------------
# `apprentice eval compare`


def _described(folder: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(one line about the eval, its summary recomputed from the rows, its results)."""
    results = load_results(folder)
    task = results.get("task") or graph_task(results.get("graph"))
    summary = summarize(results["rows"], task)
    policy = results.get("policy")
    if isinstance(policy, dict):  # since results.json names the card
        card = str(policy.get("card_sha256", "?"))[:12]
        who = f"{policy.get('type', '?')} policy {policy.get('dir')} (card {card})"
    else:
        who = f"{results.get('policy_type', '?')} policy {policy}"
    seeds = [r["seed"] for r in results["rows"] if "seed" in r]
    line = (f"{folder}: {who}, {task or 'unknown task'}, {summary['episodes']} episodes on "
            f"seeds {seed_ranges(seeds)}")  # fmt: skip
    return line, summary, {**results, "task": task, "seeds": seeds}


def cmd_compare(a: argparse.Namespace) -> int:
    line_a, sum_a, res_a = _described(a.a)
    line_b, sum_b, res_b = _described(a.b)
    if res_a["task"] and res_b["task"] and res_a["task"] != res_b["task"]:
        raise UserError(f"{a.a} evaluates {res_a['task']}, {a.b} {res_b['task']}: "
                        "their rates are not comparable")  # fmt: skip
    print(f"A  {line_a}\nB  {line_b}")
    print(format_comparison(compare(sum_a, sum_b)))
    print("B - A: difference in rate, with its 95 % interval (Newcombe's hybrid score method "
          "from the two Wilson intervals); significant: the interval excludes 0")  # fmt: skip
    if sorted(res_a["seeds"]) == sorted(res_b["seeds"]):
        print("same seeds in both: the interval treats the two as independent samples, so here "
              "it is conservative")  # fmt: skip
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    print(f"report {write_report(a.folder)}")
    return 0


# ---------------------------------------------------------------------------------------------
# The command line


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--policy", help="an exported policy folder")
    p.add_argument("--episodes", type=int, default=10,
                   help="closed-loop episodes, one per seed (20 give ±15 points)")  # fmt: skip
    p.add_argument("--graph", default=EVAL_GRAPH, help="sim robot + `policy` process graph")
    p.add_argument("--seed0", type=int, default=1000, help="the first episode's scene seed")
    p.add_argument("--allow-train-seeds", action="store_true",
                   help="run even if eval seeds are among the policy's training seeds")  # fmt: skip
    # transfer cube: 8 s of demonstration + margin
    p.add_argument("--duration", type=float, default=10.0, help="s from the first command")
    p.add_argument("--out", help="results folder (default runs/eval-<time>)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="policy node parameter, e.g. --set execution=receding")  # fmt: skip
    p.add_argument("--domain", type=int, help="ROS_DOMAIN_ID (default: a free one)")
    add_view_arguments(p)


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    """Registers `eval` (and `eval compare`) on the main CLI's subparsers."""
    p = sub.add_parser(
        "eval", help="closed-loop evaluation of an exported policy in simulation",
        usage="apprentice eval --policy DIR [options]\n       apprentice eval compare A B\n"
        "       apprentice eval report DIR",
    )  # fmt: skip
    add_eval_arguments(p)
    p.set_defaults(func=cmd_eval)
    more = p.add_subparsers(dest="eval_cmd", metavar="compare|report")  # optional: `eval` runs
    c = more.add_parser("compare", help="two eval folders' rates and whether they differ",
                        prog="apprentice eval compare")  # fmt: skip
    c.add_argument("a", help="eval folder A (its results.json)")
    c.add_argument("b", help="eval folder B")
    c.set_defaults(func=cmd_compare)
    r = more.add_parser("report", help=f"(re)write an eval folder's {REPORT_FILE}",
                        prog="apprentice eval report")  # fmt: skip
    r.add_argument("folder", help="an eval folder (its results.json)")
    r.set_defaults(func=cmd_report)
