"""Closed-loop evaluation in simulation and the end-to-end demo pipeline (no rclpy here).

    apprentice eval --policy runs/x/policy --episodes 10 [--graph eval_sim_aloha] [--seed0 1000]
    apprentice demo [--out runs/demo] [--fresh]

`eval` starts the sim robot of an eval graph (launch/graphs/eval_sim_aloha.yaml) and an eval
session (apprentice_ros.eval_session) that runs one episode per seed, each with a fresh policy
node built from the graph's `policy` process. It prints a per-episode table and the success
rate and writes <out>/results.json, a video and a joint plot per episode.

The demo runs every stage as the CLI command a user would type, in an output folder:
scripted demos → bags (`apprentice record`) → dataset cache → CPU-preset training → ONNX
export → closed-loop eval; a stage whose result is already in the folder is reused (`--fresh`
starts over). It ends with the policy's success rate next to the scripted demonstrator's
(measured on the recorded episodes, through the same teleop → robot path).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

EVAL_GRAPH = "eval_sim_aloha"
RECORD_GRAPH = "record_sim_aloha"  # `apprentice record`'s default graph
RESULTS_FILE = "results.json"
POLICY_LABEL = "policy"  # the eval graph's policy process, restarted per episode
FEW_DEMOS = 10  # fewer successful demonstrations than this: warn

# ---------------------------------------------------------------------------------------------
# Results: aggregation and the table


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Success rate (ACT's criterion: the task's last stage reached during the episode), the
    rate at the episode's end, and the mean highest stage."""
    n = len(rows)
    if n == 0:
        return {"episodes": 0, "successes": 0, "success_rate": None}
    ok = sum(bool(r["success"]) for r in rows)
    out: dict[str, Any] = {"episodes": n, "successes": ok, "success_rate": ok / n}
    if all("success_at_end" in r for r in rows):
        out["success_rate_at_end"] = sum(bool(r["success_at_end"]) for r in rows) / n
    if all("max_stage" in r for r in rows):
        out["mean_max_stage"] = float(np.mean([r["max_stage"] for r in rows]))
    if any(r.get("sim_stalled") for r in rows):
        out["sim_stalled"] = sum(bool(r.get("sim_stalled")) for r in rows)
    return out


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Rows as left-aligned text columns (the union of keys, first-seen order)."""
    if not rows:
        return "(no episodes)"
    cols = list(columns) if columns else list(dict.fromkeys(k for r in rows for k in r))
    cells = [[("" if r.get(c) is None else str(r.get(c))) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = [cols] + cells
    return "\n".join(
        "  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def parse_record_rows(text: str) -> list[dict[str, Any]]:
    """The per-episode rows `apprentice record --scripted` prints (`[i/N] {json}`)."""
    rows = []
    for line in text.splitlines():
        m = re.match(r"\[\d+/\d+\] (\{.*\})\s*$", line)
        if m:
            rows.append(json.loads(m.group(1)))
    return rows


# ---------------------------------------------------------------------------------------------
# Episode artifacts


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
# `apprentice eval`


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
    scene = sim.parameters.get("scene", "aloha_transfer_cube")
    arms = policy_arms(card, scene)
    cams = card["cameras"]
    if len({(c["height"], c["width"]) for c in cams}) > 1:
        raise ValueError("the sim renders every camera at one size; the card has several")
    world = MujocoWorld(scene)  # not started: only its joint limits are read
    lower = np.concatenate([world.arm(a).spec.lower for a in arms]).tolist()
    upper = np.concatenate([world.arm(a).spec.upper for a in arms]).tolist()
    common = {"arms": arms, "cameras": [c["name"] for c in cams]}
    size = {"image_height": int(cams[0]["height"]), "image_width": int(cams[0]["width"])}
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


def cmd_eval(a: argparse.Namespace) -> int:
    from apprentice.graph import GraphRunner, write_params_file
    from apprentice.policy_server.card import load_card, unverified_warning
    from apprentice.transport import isolated_domain_id, ros_env

    policy_dir = Path(a.policy).resolve()
    card = load_card(policy_dir)  # whole, readable, files as exported; else one line, exit 2
    if warning := unverified_warning(card):
        print(f"eval: warning: {warning}", file=sys.stderr, flush=True)
    out = Path(a.out or f"runs/eval-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    sim_graph, params = eval_graph(card, policy_dir, a.graph, a.seed0)
    for item in a.set:
        key, _, value = item.partition("=")
        params[key] = yaml.safe_load(value)
    params_file = write_params_file(params, out, POLICY_LABEL)
    domain = a.domain if a.domain is not None else isolated_domain_id()
    env = ros_env(domain_id=domain)
    print(
        f"eval: {card['policy_type']} policy {policy_dir}, graph {sim_graph.name} "
        f"({params['execution']}), {a.episodes} episode(s) of {a.duration:g} s from seed "
        f"{a.seed0}, ROS_DOMAIN_ID={domain}",
        flush=True,
    )
    episodes_file = out / "episodes.json"
    cam = params["cameras"][0]
    fps = float(sim_graph.processes[0].parameters.get("camera_rate", 30.0))
    with GraphRunner(sim_graph, env=env, log_dir=out / "logs") as runner:
        session = subprocess.run(
            [sys.executable, "-m", "apprentice_ros.eval_session", "--policy-params",
             str(params_file), "--episodes", str(a.episodes), "--duration", str(a.duration),
             "--arms", *params["arms"], "--camera", cam, "--fps", str(fps), "--out", str(out),
             "--home", json.dumps(home_pose(sim_graph.processes[0].parameters["scene"],
                                            params["arms"])),
             "--json", str(episodes_file)],
            env=env, check=False,
        )  # fmt: skip
        died = runner.poll()
    rows = json.loads(episodes_file.read_text()) if episodes_file.exists() else []
    if died or session.returncode != 0:
        print(f"eval: failed (session exit {session.returncode}, graph exits {died}); logs in "
              f"{out / 'logs'}", file=sys.stderr)  # fmt: skip
        return 1
    summary = summarize(rows)
    results = {"policy": str(policy_dir), "policy_type": card["policy_type"],
               "graph": sim_graph.name, "seed0": a.seed0, "duration_s": a.duration,
               "policy_params": params, **summary, "rows": rows}  # fmt: skip
    (out / RESULTS_FILE).write_text(json.dumps(results, indent=2))
    cols = ["episode", "seed", "success", "success_at_end", "max_stage", "frames", "sim_stalled",
            "inferences", "inference_ms", "mode"]  # fmt: skip
    print(format_table(rows, cols))
    print(f"success {summary['successes']}/{summary['episodes']} "
          f"({100 * summary['success_rate']:.0f} %); results {out / RESULTS_FILE}")  # fmt: skip
    if summary.get("sim_stalled"):
        stalled = summary["sim_stalled"]
        print(f"warning: the simulator stalled in {stalled} episode(s) (host overloaded?): "
              "their results say little about the policy", file=sys.stderr)  # fmt: skip
    return 0


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--policy", required=True, help="an exported policy folder")
    p.add_argument("--episodes", type=int, default=10, help="closed-loop episodes to run")
    p.add_argument("--graph", default=EVAL_GRAPH, help="sim robot + `policy` process graph")
    p.add_argument("--seed0", type=int, default=1000, help="the first episode's scene seed")
    # transfer cube: 8 s of demonstration + margin
    p.add_argument("--duration", type=float, default=10.0, help="s from the first command")
    p.add_argument("--out", help="results folder (default runs/eval-<time>)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="policy node parameter, e.g. --set execution=receding")  # fmt: skip
    p.add_argument("--domain", type=int, help="ROS_DOMAIN_ID (default: a free one)")


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    """Registers `eval` on the main CLI's subparsers."""
    p = sub.add_parser("eval", help="closed-loop evaluation of an exported policy in simulation")
    add_eval_arguments(p)
    p.set_defaults(func=cmd_eval)


# ---------------------------------------------------------------------------------------------
# The end-to-end demo


@dataclass(frozen=True)
class DemoConfig:
    """The demo's defaults (docs/BENCHMARKS.md, closed loop): 50 scripted demos (~8 min to
    record, 50/50 succeed through ROS), ACT CPU preset, chunk 50, 8000 steps (~12 min on 2
    cores) exported from an EMA of the weights, 20 eval episodes (~5 min).

    EMA: the last weights of a constant-rate run are noisy; the same run's EMA (decay 0.999)
    did 12/20 closed loop against 3/20 for its raw weights (8000 steps).
    Camera: the graphs' top camera (50° lens, 2×2 supersampling) took the demo from 10/20 to
    17/20 and 18/20 (two demos); through the MJCF's 78° lens, aliased, the cube was ~3 px
    and most grasps missed."""

    episodes: int = 50  # scripted demonstrations
    image_hw: tuple[int, int] = (96, 128)  # the sim renders at this size, recorded and live
    policy: str = "act"
    steps: int = 8000
    ema: float = 0.999  # decay of the exported weights' moving average
    batch_size: int = 8
    chunk_size: int = 50
    threads: int = 2  # torch threads for training
    eval_episodes: int = 20
    seed0: int = 1000
    execution: str = "ensemble"


def dataset_config(hw: tuple[int, int]) -> dict[str, Any]:
    """Both followers' joint positions → both arms' commands, the top camera. The leader's
    joint states are in the bags too, but the policy cannot see a leader: leave them out.
    Max ages are looser than the defaults (dataset/config.py): on a loaded 2-core host the
    simulator stalls for a few frames at times (measured gaps 0.1-0.3 s), and a scripted demo with
    such a gap is still a good demo."""
    return {
        "control_rate_hz": 50.0,
        "image_hw": list(hw),
        "val_fraction": 0.1,
        "state": [{"topic": f"/{a}/joint_states", "max_age_s": 0.25} for a in ("left", "right")],
        "action": [{"topic": f"/{a}/commands", "max_age_s": 0.3} for a in ("left", "right")],
        "cameras": [{"name": "top", "topic": "/cameras/top/image_raw", "max_age_s": 0.4}],
    }


@dataclass(frozen=True)
class DemoSelection:
    kept: int
    unsuccessful: int  # demonstrations whose task failed
    flagged: dict[str, str]  # episode → the quality gate's reasons (left out unless included)

    def summary(self, total: int) -> str:
        flagged = "; ".join(f"{ep}: {why}" for ep, why in self.flagged.items())
        head = f"{self.kept} of {total} demonstrations kept: {self.unsuccessful} failed the task"
        return f"{head}, {len(self.flagged)} flagged by the quality gate" + (
            f" ({flagged})" if flagged else ""
        )


def link_successful(
    demos: Path, rows: Sequence[dict[str, Any]], dest: Path, include_flagged: bool = False
) -> DemoSelection:
    """A folder of links to the episodes whose demonstration succeeded and whose recording
    passed the quality gate (`include_flagged`: those that failed it too): the policy learns
    from those only (a demo that dropped the cube teaches dropping it; one that lost 3 % of
    its joint states teaches jumps)."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    kept, unsuccessful, flagged = 0, 0, {}
    for r in rows:
        if not (demos / r["episode"]).is_dir():
            continue  # in the log, but no bag was kept (a discarded episode)
        if not r.get("success"):
            unsuccessful += 1
            continue
        quality = r.get("quality", "ok")
        if quality != "ok":
            flagged[r["episode"]] = quality
            if not include_flagged:
                continue
        (dest / r["episode"]).symlink_to(demos / r["episode"], target_is_directory=True)
        kept += 1
    return DemoSelection(kept, unsuccessful, flagged)


@dataclass(frozen=True)
class Stage:
    name: str
    done: Callable[[], bool]  # its result is in the output folder
    command: list[str]  # `python -m <command...>`: a CLI module and its arguments
    log: Path


def _checkpoint_step(run: Path) -> int:
    state = run / "checkpoints" / "last" / "state.json"
    return int(json.loads(state.read_text())["step"]) if state.exists() else 0


def demo_stages(out: Path, cfg: DemoConfig) -> list[Stage]:
    from apprentice.dataset import is_cache

    demos, cache, run = out / "demos", out / "cache", out / "run"
    kept = out / "demos_ok"  # links to the successful demonstrations
    policy, evals = run / "policy", out / "eval"
    h, w = cfg.image_hw
    train = ["apprentice", "train", "--policy", cfg.policy, "--preset", "cpu", "--data", str(cache),
             "--out", str(run), "--steps", str(cfg.steps), "--batch-size", str(cfg.batch_size),
             "--threads", str(cfg.threads), "--no-progress", "--val-every", "500",
             "--checkpoint-every", "500", "--ema", str(cfg.ema),
             "--set", f"chunk_size={cfg.chunk_size}"]  # fmt: skip
    if cfg.policy == "diffusion":
        train = train[: train.index("--set")]
    if 0 < _checkpoint_step(run) < cfg.steps:
        train = ["apprentice", "train", "--out", str(run), "--resume", "--steps", str(cfg.steps),
                 "--threads", str(cfg.threads), "--no-progress"]  # fmt: skip
    return [
        Stage("record", lambda: (kept / "record.json").exists(),
              ["apprentice", "record", "--episodes", str(cfg.episodes), "--dataset", str(demos),
               "-p", f"image_width={w}", "-p", f"image_height={h}"], out / "record.log"),
        Stage("dataset", lambda: is_cache(cache),
              ["apprentice", "dataset", "build", str(kept), "--out", str(cache), "--config",
               str(out / "dataset.yaml"), "--skip-bad", "--overwrite"],
              out / "dataset.log"),
        Stage("train", lambda: _checkpoint_step(run) >= cfg.steps, train, out / "train.log"),
        Stage("export", lambda: (policy / "policy_card.json").exists(),
              ["apprentice", "export", str(run)], out / "export.log"),
        Stage("eval", lambda: (evals / RESULTS_FILE).exists(),
              ["apprentice.pipeline", "eval", "--policy", str(policy), "--episodes",
               str(cfg.eval_episodes), "--seed0", str(cfg.seed0), "--out", str(evals), "--set",
               f"execution={cfg.execution}"], out / "eval.log"),
    ]  # fmt: skip


SETUP_FILE = "setup.json"
# sim_robot parameters that change what the policy sees (not only how fast it runs)
CAMERA_KEYS = ("scene", "cameras", "camera_fovy", "supersample")


def demo_setup(cfg: DemoConfig) -> dict[str, Any]:
    """What a demo folder's recordings and policy depend on: the image size and the simulated
    cameras of the record and eval graphs (lens, supersampling)."""
    from apprentice.graph import load_graph

    sims = {}
    for name in (RECORD_GRAPH, EVAL_GRAPH):
        sim = sim_process(load_graph(name))
        sims[name] = {k: sim.parameters.get(k) for k in CAMERA_KEYS}
    return {"image_hw": list(cfg.image_hw), "sim": sims}


def set_aside_if_other_setup(out: Path, setup: dict[str, Any]) -> Path | None:
    """A folder whose stages were made with other cameras (or before the setup was written
    down) is renamed to <out>.<time>, not reused: its demos would train a policy for a camera
    the eval no longer has. Returns the new name, or None when the folder can be reused."""
    if not out.exists() or not any(out.iterdir()):
        return None
    file = out / SETUP_FILE
    try:
        if json.loads(file.read_text()) == setup:
            return None
    except (OSError, ValueError):  # none, or unreadable: not known to match
        pass
    stamp, n = time.strftime("%Y%m%d-%H%M%S"), 1
    aside = out.with_name(f"{out.name}.{stamp}")
    while aside.exists():
        n += 1
        aside = out.with_name(f"{out.name}.{stamp}-{n}")
    out.rename(aside)
    return aside


def drop_run_without_ema(run: Path) -> bool:
    """Deletes a training run that keeps no EMA (one from before the demo exported the EMA):
    resuming it would export its last weights. True when it did."""
    last = run / "checkpoints" / "last"
    if (last / "state.json").exists() and not (last / "ema").exists():
        shutil.rmtree(run)
        return True
    return False


def stale_after(stages: Sequence[Stage]) -> list[bool]:
    """Which stages to run: the first not done and everything after it (a later stage's
    result was made from an earlier one's, so it is stale once that is redone)."""
    run, out = False, []
    for s in stages:
        run = run or not s.done()
        out.append(run)
    return out


def _run_stage(stage: Stage) -> None:
    cmd = [sys.executable, "-m", *stage.command]
    print(f"  $ python -m {' '.join(stage.command)}\n  (log: {stage.log})", flush=True)
    with stage.log.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:  # the log keeps everything; the terminal gets progress lines
            log.write(line)
            log.flush()
            if line.startswith(("[", "step ", "success", "dataset", "eval:", "record:")):
                print(f"    {line.rstrip()[:160]}", flush=True)
        code = proc.wait()
    if code != 0:
        raise SystemExit(f"demo: stage {stage.name} failed (exit {code}); see {stage.log}")


def run_demo(args: argparse.Namespace) -> int:
    """The whole job in simulation; see the module docstring."""
    cfg = DemoConfig(
        episodes=args.episodes, steps=args.steps, eval_episodes=args.eval_episodes,
        policy=args.policy,
    )  # fmt: skip
    out = Path(args.out).resolve()
    if args.fresh and out.exists():
        shutil.rmtree(out)
    setup = demo_setup(cfg)
    aside = set_aside_if_other_setup(out, setup)
    if aside is not None:
        print(f"demo: {out} was made with other camera settings (or by an older version): "
              f"moved to {aside}; starting over", flush=True)  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / SETUP_FILE).write_text(json.dumps(setup, indent=2))
    (out / "dataset.yaml").write_text(yaml.safe_dump(dataset_config(cfg.image_hw)))
    if drop_run_without_ema(out / "run"):
        print("train: the run in this folder keeps no EMA of its weights: training again")
    stages = demo_stages(out, cfg)
    t_all = time.monotonic()
    for i, (stage, todo) in enumerate(zip(stages, stale_after(stages), strict=True)):
        head = f"[{i + 1}/{len(stages)}] {stage.name}"
        if not todo:
            print(f"{head}: done already in {out} (--fresh redoes it)", flush=True)
            continue
        print(f"{head} ...", flush=True)
        t0 = time.monotonic()
        _run_stage(stage)
        if stage.name == "record":
            rows = parse_record_rows(stage.log.read_text())
            chosen = link_successful(out / "demos", rows, out / "demos_ok", args.include_flagged)
            print(f"{head}: {chosen.summary(len(rows))}", flush=True)
            if chosen.flagged and not args.include_flagged:
                print(f"{head}: --include-flagged trains on flagged demonstrations too")
            n = chosen.kept
            if n == 0:
                raise SystemExit("demo: no demonstration succeeded: nothing to learn from")
            if n < FEW_DEMOS:
                print(f"warning: only {n} successful demonstrations", file=sys.stderr)
            (out / "demos_ok" / "record.json").write_text(json.dumps(rows, indent=2))
        print(f"{head}: {time.monotonic() - t0:.0f} s", flush=True)
    scripted = summarize(json.loads((out / "demos_ok" / "record.json").read_text()))
    policy = json.loads((out / "eval" / RESULTS_FILE).read_text())
    ratio = (policy["success_rate"] / scripted["success_rate"]) if scripted["success_rate"] else 0
    print(
        f"demo done in {time.monotonic() - t_all:.0f} s ({out}):\n"
        f"  scripted demonstrator  {scripted['successes']}/{scripted['episodes']} "
        f"({100 * scripted['success_rate']:.0f} %)\n"
        f"  {policy['policy_type']} policy (closed loop)  {policy['successes']}/"
        f"{policy['episodes']} ({100 * policy['success_rate']:.0f} %), "
        f"{100 * ratio:.0f} % of the demonstrator; videos in {out / 'eval' / 'videos'}",
        flush=True,
    )
    return 0


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    d = DemoConfig()
    p.add_argument("--out", default="runs/demo", help="output folder (stages reused)")
    p.add_argument("--fresh", action="store_true", help="start over: delete the output folder")
    p.add_argument("--episodes", type=int, default=d.episodes, help="scripted demonstrations")
    p.add_argument("--steps", type=int, default=d.steps, help="training steps")
    p.add_argument("--eval-episodes", type=int, default=d.eval_episodes,
                   help="closed-loop evaluation episodes (unseen seeds)")  # fmt: skip
    p.add_argument("--policy", choices=("act", "diffusion"), default=d.policy,
                   help="the policy to train")  # fmt: skip
    p.add_argument("--include-flagged", action="store_true",
                   help="train on demonstrations the quality gate flagged too")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """`python -m apprentice.pipeline eval|demo ...` (the same commands as the main CLI)."""
    ap = argparse.ArgumentParser(prog="apprentice", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    add_subcommands(sub)
    demo = sub.add_parser("demo", help="the end-to-end job in simulation")
    add_demo_arguments(demo)
    demo.set_defaults(func=run_demo)
    a = ap.parse_args(argv)
    return a.func(a)


if __name__ == "__main__":
    sys.exit(main())
