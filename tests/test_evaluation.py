"""apprentice.evaluation: intervals, the stage table, summaries, comparison, results files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from apprentice.errors import UserError
from apprentice.evaluation import (
    STAGE_COLUMNS,
    compare,
    difference_interval,
    format_comparison,
    format_rate,
    format_table,
    load_results,
    seed_ranges,
    seen_seeds,
    stage_table,
    summarize,
    wilson_interval,
)
from apprentice.sim.tasks import TASKS


def test_wilson_interval_matches_published_values() -> None:
    # 18/20 (the demo's best run): [0.699, 0.972]
    assert wilson_interval(18, 20) == pytest.approx((0.6990, 0.9721), abs=5e-5)
    # Newcombe (1998), Table I: 5/10 → 0.2366–0.7634 (Wilson score, no continuity correction)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=5e-5)
    # a 95 % interval holds the rate; it narrows as 1/√n: 90/100 is about half as wide as 18/20
    lo, hi = wilson_interval(90, 100)
    assert lo < 0.9 < hi and hi - lo < 0.6 * (0.9721 - 0.6990)


def test_wilson_interval_at_the_edges() -> None:
    # 0/n and n/n: one bound exactly 0 or 1, the other (z²/n)/(1 + z²/n) from it
    assert wilson_interval(0, 20) == pytest.approx((0.0, 0.1611), abs=5e-5)
    assert wilson_interval(20, 20) == pytest.approx((0.8389, 1.0), abs=5e-5)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=5e-5)
    assert wilson_interval(0, 20)[0] == 0.0 and wilson_interval(20, 20)[1] == 1.0
    assert wilson_interval(1, 1) == pytest.approx((0.2065, 1.0), abs=5e-5)
    for k, n in ((0, 1), (3, 7), (7, 7), (199, 200)):
        lo, hi = wilson_interval(k, n)
        assert 0.0 <= lo <= k / n <= hi <= 1.0
    for k, n in ((1, 0), (-1, 5), (6, 5)):
        with pytest.raises(ValueError):
            wilson_interval(k, n)


def test_difference_interval_matches_newcombe() -> None:
    """Newcombe (1998) Table II, method 10 (hybrid score): 56/70 − 48/80 → 0.0524–0.3339,
    9/10 − 3/10 → 0.1705–0.8090. The function gives (second − first)."""
    assert difference_interval(48, 80, 56, 70) == pytest.approx((0.0524, 0.3339), abs=5e-5)
    assert difference_interval(3, 10, 9, 10) == pytest.approx((0.1705, 0.8090), abs=5e-5)
    lo, hi = difference_interval(17, 20, 19, 20)  # 85 % vs 95 % on 20 seeds each: not separable
    assert lo < 0 < hi
    lo, hi = difference_interval(170, 200, 190, 200)  # on 200 each they are
    assert 0 < lo < 0.1 < hi


def _rows(stages: list[int]) -> list[dict]:
    return [{"episode": i, "seed": 1000 + i, "success": s == 4, "success_at_end": s == 4,
             "max_stage": s} for i, s in enumerate(stages)]  # fmt: skip


def test_stage_table_counts_episodes_that_reached_each_stage() -> None:
    # transfer cube: 12 transferred, 2 touched by the left with the cube on the table, 3 lifted
    # but dropped, 2 touched only, 1 never touched
    rows = _rows([4] * 12 + [3] * 2 + [2] * 3 + [1] * 2 + [0])
    table = stage_table(rows, "transfer_cube")
    assert list(table) == ["touch", "lift", "transfer"]
    assert [(t["stage"], t["reached"], t["episodes"]) for t in table.values()] == [
        (1, 19, 20), (2, 17, 20), (4, 12, 20)
    ]  # fmt: skip
    assert table["touch"]["rate"] == pytest.approx(0.95)
    assert table["transfer"]["interval95"] == pytest.approx(list(wilson_interval(12, 20)))
    ins = stage_table(rows, "insertion")
    assert [(n, t["reached"]) for n, t in ins.items()] == [
        ("touch", 19), ("lift", 17), ("contact", 14), ("insert", 12)
    ]  # fmt: skip
    # a task without named columns: every stage up to the highest reached
    generic = stage_table(_rows([0, 2, 1]), None)
    assert [(n, t["reached"]) for n, t in generic.items()] == [("stage 1", 2), ("stage 2", 1)]


def test_stage_columns_name_the_simulated_tasks() -> None:
    assert set(STAGE_COLUMNS) <= set(TASKS)
    for columns in STAGE_COLUMNS.values():
        stages = [s for _, s in columns]
        assert stages == sorted(stages) and stages[0] == 1


def test_summarize_counts_successes_and_stages() -> None:
    rows = [
        {"success": True, "success_at_end": True, "max_stage": 4},
        {"success": True, "success_at_end": False, "max_stage": 4},
        {"success": False, "success_at_end": False, "max_stage": 1},
        {"success": False, "success_at_end": False, "max_stage": 2, "sim_stalled": True},
    ]
    s = summarize(rows, "transfer_cube")
    assert (s["episodes"], s["successes"]) == (4, 2)
    assert s["success_rate"] == pytest.approx(0.5)
    assert s["interval95"] == pytest.approx(list(wilson_interval(2, 4)))
    assert s["success_rate_at_end"] == pytest.approx(0.25)
    assert s["mean_max_stage"] == pytest.approx(2.75)
    assert s["sim_stalled"] == 1
    assert {n: t["reached"] for n, t in s["stages"].items()} == {
        "touch": 4, "lift": 3, "transfer": 2
    }  # fmt: skip
    assert s["stages"]["transfer"]["reached"] == s["successes"]  # the last stage is success
    assert summarize([])["success_rate"] is None and summarize([])["interval95"] is None
    # rows of `apprentice record` have no stages: the rate and its interval
    assert summarize([{"success": True}, {"success": False}, {"success": True}]) == {
        "episodes": 3, "successes": 2, "success_rate": pytest.approx(2 / 3),
        "interval95": pytest.approx(list(wilson_interval(2, 3))),
    }  # fmt: skip


def test_format_rate_and_seed_ranges() -> None:
    assert format_rate(18, 20) == "18/20 (90 %, 95 % interval 70–97 %)"
    assert format_rate(0, 20) == "0/20 (0 %, 95 % interval 0–16 %)"
    assert seed_ranges([1003, 1000, 1001, 1002, 7, 1, 2, 3]) == "1–3, 7, 1000–1003"
    assert seed_ranges([]) == "none"
    assert seen_seeds(range(40, 60), range(1, 51)) == list(range(40, 51))
    assert seen_seeds(range(1000, 1020), range(1, 51)) == []


def test_format_table_aligns_columns_and_leaves_missing_cells_empty() -> None:
    rows = [
        {"episode": 0, "success": True, "inference_ms": 12.5},
        {"episode": 10, "success": False},
    ]
    lines = format_table(rows).splitlines()
    assert lines[0].split() == ["episode", "success", "inference_ms"]
    assert lines[1].split() == ["0", "True", "12.5"] and lines[2].split() == ["10", "False"]
    # every column starts at the same offset in every line
    starts = [lines[0].index("success"), lines[0].index("inference_ms")]
    assert lines[1][starts[0] : starts[0] + 4] == "True" and lines[1][starts[1] :] == "12.5"
    assert format_table(rows, ["success"]).splitlines() == ["success", "True", "False"]


def test_compare_marks_only_differences_whose_interval_excludes_zero() -> None:
    a = summarize(_rows([4] * 17 + [1] * 3), "transfer_cube")  # 85 %, touched all
    b = summarize(_rows([4] * 19 + [0]), "transfer_cube")  # 95 %, one never touched
    lines = {r["metric"]: r for r in compare(a, b)}
    assert list(lines) == ["success", "touch", "lift"]  # transfer: the success line
    assert lines["success"]["difference"] == pytest.approx(0.10)
    assert lines["success"]["interval95"] == pytest.approx(
        list(difference_interval(17, 20, 19, 20))
    )
    assert not lines["success"]["significant"]  # 20 seeds cannot tell 85 % from 95 %
    big_a = summarize(_rows([4] * 100 + [1] * 100), "transfer_cube")  # 50 % on 200
    big_b = summarize(_rows([4] * 190 + [1] * 10), "transfer_cube")  # 95 % on 200
    lines = {r["metric"]: r for r in compare(big_a, big_b)}
    assert lines["success"]["significant"] and lines["success"]["interval95"][0] > 0
    assert not lines["touch"]["significant"]  # both 100 %
    text = format_comparison(compare(big_a, big_b)).splitlines()
    assert text[0].split() == ["A", "B", "B", "-", "A", "[95", "%]", "significant"]
    assert text[1].split()[:5] == ["success", "100/200", "50", "%", "[43,"]
    assert text[1].split()[-1] == "yes"


def test_load_results_refuses_what_is_not_an_eval_folder(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such eval folder"):
        load_results(tmp_path / "nope")
    with pytest.raises(UserError, match="not an eval folder"):
        load_results(tmp_path)
    (tmp_path / "results.json").write_text('{"rows": [')
    with pytest.raises(UserError, match="unreadable"):
        load_results(tmp_path)
    (tmp_path / "results.json").write_text(json.dumps({"rows": []}))
    with pytest.raises(UserError, match="no episode rows"):
        load_results(tmp_path)
    (tmp_path / "results.json").write_text(json.dumps({"rows": _rows([4, 1])}))
    assert len(load_results(tmp_path)["rows"]) == 2
