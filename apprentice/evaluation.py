"""What a closed-loop evaluation's episodes say: success with an interval, per-stage rates, and
whether two evaluations differ (pure: no ROS, no processes; `apprentice.eval_cli` runs them).

Success rates come with a 95 % Wilson score interval. With n episodes a rate is known to about
±1/√n: 18/20 is [0.70, 0.97], so 20 episodes cannot tell 85 % from 95 % (that takes ~200 each).
Wilson rather than the normal approximation p ± 1.96·√(p(1-p)/n): the latter collapses to a
zero-width interval at 0/n and n/n and leaves [0, 1] near them; Wilson stays inside [0, 1] and
keeps close to its nominal coverage down to a handful of episodes.

Stages are those the simulator publishes on /sim/task_stage (`apprentice.sim.tasks`); an
episode's row keeps the highest stage it reached (`max_stage`). The per-stage rates are the
columns of the ACT paper's simulation tables: the share of episodes that reached at least that
stage (transfer cube: touch, lift, transfer; insertion: touch, lift, contact, insert).

Two evaluations are compared with Newcombe's hybrid score interval for the difference of two
independent proportions (Newcombe 1998, method 10, built from the two Wilson intervals): the
difference is called significant when its 95 % interval excludes 0. That is sharper than asking
whether the two Wilson intervals overlap (which misses real differences) and, unlike the plain
two-proportion z test, holds up at 0/n, n/n and small n.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from apprentice.errors import UserPathError, UserValueError

RESULTS_FILE = "results.json"  # an eval folder's summary (apprentice.eval_cli writes it)
Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile: two-sided 95 %

# (column, stage): the stage numbers of apprentice.sim.tasks. Transfer cube: 1 the right gripper
# touches the cube, 2 lifts it off the table, 3 the left touches it, 4 transferred (the left holds
# it, off the table). Insertion: 1 both grasped, 2 both lifted, 3 peg touches the socket,
# 4 inserted (the peg touches the pin). Lift (one arm): 1 touched, 2 lifted.
STAGE_COLUMNS: dict[str, tuple[tuple[str, int], ...]] = {
    "transfer_cube": (("touch", 1), ("lift", 2), ("transfer", 4)),
    "insertion": (("touch", 1), ("lift", 2), ("contact", 3), ("insert", 4)),
    "lift": (("touch", 1), ("lift", 2)),
}


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of k successes in n trials (95 % for the default z)."""
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n > 0, got k={k}, n={n}")
    p, z2 = k / n, z * z
    denom = 1 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    # exact at the edges: 0/n has lower bound 0 and n/n upper bound 1 (no rounding residue)
    return (0.0 if k == 0 else center - half), (1.0 if k == n else center + half)


def rate(k: int, n: int) -> dict[str, Any]:
    """{"reached", "episodes", "rate", "interval95"} (rate and interval None when n is 0)."""
    if n == 0:
        return {"reached": 0, "episodes": 0, "rate": None, "interval95": None}
    return {"reached": k, "episodes": n, "rate": k / n, "interval95": list(wilson_interval(k, n))}


def stage_columns(task: str | None, highest: int = 0) -> tuple[tuple[str, int], ...]:
    """The task's ACT columns; for a task without named stages, `stage N` for 1..highest."""
    if task in STAGE_COLUMNS:
        return STAGE_COLUMNS[task]
    return tuple((f"stage {s}", s) for s in range(1, highest + 1))


def stage_table(rows: Sequence[Mapping[str, Any]], task: str | None) -> dict[str, dict[str, Any]]:
    """Per column: its stage and how many episodes reached at least it (their `max_stage`),
    with the rate's Wilson interval."""
    highest = max((int(r["max_stage"]) for r in rows), default=0)
    return {
        name: {"stage": stage, **rate(sum(int(r["max_stage"]) >= stage for r in rows), len(rows))}
        for name, stage in stage_columns(task, highest)
    }


def summarize(rows: Sequence[Mapping[str, Any]], task: str | None = None) -> dict[str, Any]:
    """Success rate (ACT's criterion: the task's last stage reached during the episode) with its
    95 % Wilson interval; for eval rows (they have `max_stage`) also the per-stage table, the
    rate at the episode's end and the mean highest stage."""
    n = len(rows)
    if n == 0:
        return {"episodes": 0, "successes": 0, "success_rate": None, "interval95": None}
    ok = sum(bool(r["success"]) for r in rows)
    out: dict[str, Any] = {"episodes": n, "successes": ok, "success_rate": ok / n,
                           "interval95": list(wilson_interval(ok, n))}  # fmt: skip
    if all("success_at_end" in r for r in rows):
        out["success_rate_at_end"] = sum(bool(r["success_at_end"]) for r in rows) / n
    if all("max_stage" in r for r in rows):
        out["mean_max_stage"] = sum(int(r["max_stage"]) for r in rows) / n
        out["stages"] = stage_table(rows, task)
    if any(r.get("sim_stalled") for r in rows):
        out["sim_stalled"] = sum(bool(r.get("sim_stalled")) for r in rows)
    return out


def format_rate(k: int, n: int) -> str:
    """`18/20 (90 %, 95 % interval 70–97 %)`."""
    if n == 0:
        return "0/0"
    lo, hi = wilson_interval(k, n)
    return f"{k}/{n} ({100 * k / n:.0f} %, 95 % interval {100 * lo:.0f}–{100 * hi:.0f} %)"


def format_stages(stages: Mapping[str, Mapping[str, Any]]) -> str:
    """`touch 20/20 (100 %, …); lift 19/20 (…); …`."""
    return "; ".join(f"{name} {format_rate(s['reached'], s['episodes'])}"
                     for name, s in stages.items())  # fmt: skip


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
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


def seed_ranges(seeds: Iterable[int]) -> str:
    """`0–49, 60, 1000–1019`: sorted, runs of consecutive seeds joined."""
    s = sorted(set(seeds))
    runs: list[list[int]] = []
    for x in s:
        if runs and x == runs[-1][1] + 1:
            runs[-1][1] = x
        else:
            runs.append([x, x])
    return ", ".join(str(a) if a == b else f"{a}–{b}" for a, b in runs) or "none"


def seen_seeds(eval_seeds: Iterable[int], train_seeds: Iterable[int]) -> list[int]:
    """The eval seeds whose scenes the policy saw demonstrated (sorted)."""
    return sorted(set(eval_seeds) & set(train_seeds))


# ---------------------------------------------------------------------------------------------
# Two evaluations


def difference_interval(k1: int, n1: int, k2: int, n2: int, z: float = Z95) -> tuple[float, float]:
    """95 % interval of p2 − p1 (k2/n2 − k1/n1), Newcombe's hybrid score method (method 10 of
    Newcombe 1998): the distance from each rate to its Wilson bounds, combined in quadrature."""
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson_interval(k1, n1, z)
    l2, u2 = wilson_interval(k2, n2, z)
    d = p2 - p1
    return (d - math.hypot(p2 - l2, u1 - p1), d + math.hypot(u2 - p2, p1 - l1))


def compare(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Success and every stage column both summaries have (but the last, when it is success):
    A's and B's counts, B − A, its 95 % interval and whether that excludes 0. a, b: `summarize`
    outputs (with `stages`)."""
    metrics = [("success", a["successes"], b["successes"])]
    stages_a, stages_b = a.get("stages") or {}, b.get("stages") or {}
    for name, sa in stages_a.items():
        sb = stages_b.get(name)
        if sb is None:
            continue
        counts = (sa["reached"], sb["reached"])
        if name == list(stages_a)[-1] and counts == metrics[0][1:]:
            continue  # the task's last stage: success again
        metrics.append((name, *counts))
    na, nb = a["episodes"], b["episodes"]
    out = []
    for name, ka, kb in metrics:
        lo, hi = difference_interval(ka, na, kb, nb)
        out.append({"metric": name, "a": rate(ka, na), "b": rate(kb, nb),
                    "difference": kb / nb - ka / na, "interval95": [lo, hi],
                    "significant": lo > 0 or hi < 0})  # fmt: skip
    return out


def format_comparison(lines: Sequence[Mapping[str, Any]]) -> str:
    """The table `apprentice eval compare` prints (rates and bounds in %)."""

    def cell(r: Mapping[str, Any]) -> str:
        lo, hi = (round(100 * v) for v in r["interval95"])
        return f"{r['reached']}/{r['episodes']} {100 * r['rate']:.0f} % [{lo}, {hi}]"

    rows = []
    for r in lines:
        lo, hi = (100 * v for v in r["interval95"])
        diff = f"{100 * r['difference']:+.0f} points [{lo:+.0f}, {hi:+.0f}]"
        significant = "yes" if r["significant"] else "no"
        rows.append({"": r["metric"], "A": cell(r["a"]), "B": cell(r["b"]),
                     "B - A [95 %]": diff, "significant": significant})  # fmt: skip
    return format_table(rows)


# ---------------------------------------------------------------------------------------------
# Eval folders


def load_results(folder: str | Path) -> dict[str, Any]:
    """An eval folder's results.json, its episodes' rows checked. One-line errors (UserError)."""
    folder = Path(folder)
    path = folder / RESULTS_FILE
    if not folder.is_dir():
        raise UserPathError(f"{folder}: no such eval folder")
    if not path.is_file():
        raise UserPathError(f"{folder}: not an eval folder (no {RESULTS_FILE})")
    try:
        results = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserValueError(f"{path}: unreadable ({exc})") from None
    rows = results.get("rows") if isinstance(results, dict) else None
    if not isinstance(rows, list) or not rows:
        raise UserValueError(f"{path}: no episode rows (not written by apprentice eval?)")
    if not all(isinstance(r, dict) and "success" in r for r in rows):
        raise UserValueError(f"{path}: an episode row without 'success'")
    return results
