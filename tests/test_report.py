"""The eval report (apprentice.report), loaded in headless Chromium (tests/browser.py).

The eval folder is made with the eval's own writers (`write_video`, `plot_joints`,
`summarize`), rows and results shaped as `apprentice eval` writes them; the report is written
by the `apprentice eval report` command and read back by a real browser: what a person who
double-clicks report.html sees.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from browser import BrowserMissing, dom, is_blank, snapshot

from apprentice.cli import main
from apprentice.eval_cli import plot_joints, write_video
from apprentice.evaluation import RESULTS_FILE, format_rate, summarize
from apprentice.report import REPORT_FILE, THUMBS, render_report

FPS = 30.0
FRAMES = 60  # the strip takes THUMBS of them whatever the length


def _frames(seed: int, n: int = FRAMES) -> list[np.ndarray]:
    """96 × 128 frames: a red block moving over a gray floor (the demo's camera size)."""
    rng = np.random.default_rng(seed)
    start = rng.integers(10, 60, size=2)
    frames = []
    for i in range(n):
        img = np.full((96, 128, 3), (40, 40, 48), np.uint8)
        img[60:] = (90, 90, 96)
        y, x = (start + [i // 10, i // 4]) % [80, 112]
        img[y : y + 12, x : x + 12] = (220, 60, 30)
        frames.append(img)
    return frames


def _series(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 10, 500)
    q = np.cumsum(rng.normal(0, 0.02, (500, 6)), axis=0)  # (T, J)
    names = ["pan", "lift", "elbow", "wrist_flex", "wrist_roll", "gripper"]
    meas = [(float(s), v) for s, v in zip(t, q, strict=True)]
    cmds = [(float(s), v + 0.01) for s, v in zip(t[::2], q[::2], strict=True)]
    return {"arm": (names, meas, cmds)}


def make_eval_folder(folder: Path, outcomes: list[int], policy_dir: Path) -> dict:
    """An eval folder as `apprentice eval` leaves it: per episode a video, a plot and a row;
    results.json; the policy's card. outcomes: each episode's highest stage (2: success)."""
    policy_dir.mkdir(parents=True)
    card = {"policy_type": "act", "joint_names": ["pan", "lift"], "chunk_size": 50,
            "cameras": [{"name": "front", "height": 96, "width": 128}], "control_rate_hz": 50.0,
            "n_obs_steps": 1, "train_seeds": list(range(1, 51)),
            "files": {"policy.onnx": {"sha256": "ab" * 32, "bytes": 6778141}}}  # fmt: skip
    (policy_dir / "policy_card.json").write_text(json.dumps(card))
    rows = []
    for i, stage in enumerate(outcomes):
        name = f"episode_{i:03d}"
        row = {"episode": i, "seed": 1000 + i, "success": stage == 2,
               "success_at_end": stage == 2, "max_stage": stage, "seconds": 10.0,
               "frames": FRAMES, "sim_stalled": False, "inferences": 300, "inference_ms": 9.5,
               "mode": "running", "exit_code": 0}  # fmt: skip
        row["video"] = str(write_video(_frames(i), folder / "videos" / f"{name}.avi", FPS))
        row["plot"] = str(plot_joints(_series(i), folder / "plots" / f"{name}.png", title=name))
        rows.append(row)
    card_sha = hashlib.sha256((policy_dir / "policy_card.json").read_bytes()).hexdigest()
    results = {"policy": {"dir": str(policy_dir), "type": "act", "card_sha256": card_sha,
                          "data_index_hash": "sha256:" + "cd" * 32,
                          "train_seeds": card["train_seeds"]},
               "policy_type": "act", "graph": "eval_sim_so100", "scene": "so100_lift",
               "task": "lift", "seed0": 1000, "seeds": [r["seed"] for r in rows],
               "seen_seeds": [], "duration_s": 10.0,
               "policy_params": {"execution": "ensemble", "control_rate": 50.0},
               **summarize(rows, "lift"), "rows": rows}  # fmt: skip
    (folder / RESULTS_FILE).write_text(json.dumps(results, indent=2))
    return results


def test_the_report_renders_in_chromium_with_rate_interval_rows_and_images(
    tmp_path: Path, capsys
) -> None:
    folder = tmp_path / "eval"
    make_eval_folder(folder, [2, 2, 1, 2, 0], tmp_path / "policy")
    (folder / "videos" / "episode_004.avi").unlink()  # said in the page, not skipped silently
    assert main(["eval", "report", str(folder)]) == 0
    report = folder / REPORT_FILE
    assert capsys.readouterr().out.strip() == f"report {report}"
    page, png = snapshot(report.as_uri(), tmp_path / "report.png", size=(1280, 900))
    assert re.search(r'id="success">3/5 · 60 %<', page)
    assert format_rate(3, 5) in page  # "3/5 (60 %, 95 % interval 23–88 %)"
    assert "95 % interval 23–88 %" in page
    body = re.search(r'<table id="episodes">.*?<tbody>(.*?)</tbody>', page, re.S).group(1)
    assert body.count("<tr") == 5 and body.count('class="failed"') == 2
    assert body.count('class="thumb"') == 4 * THUMBS  # the fifth video is gone
    assert body.count('class="plot"') == 5
    assert "episode 4: video" in page and "missing or unreadable" in page
    for i in range(4):  # relative links: the folder can move
        assert f'href="videos/episode_{i:03d}.avi"' in page
    assert "touch" in page and "3/5" in page and "4/5" in page  # stages: lift 3/5, touch 4/5
    assert "training seeds" in page and "1–50" in page
    assert not is_blank(png)  # the page as drawn; `page`: the DOM the browser built


def test_every_value_from_the_files_is_escaped(tmp_path: Path) -> None:
    folder = tmp_path / "eval"
    evil = tmp_path / "<script>alert(1)</script>&"
    results = make_eval_folder(folder, [2], evil)
    results["task"] = '<img src=x onerror="alert(2)">'
    results["rows"][0]["mode"] = "</td></tr></table><h1>injected"
    results["rows"][0]["seed"] = "<b>1000</b>"
    html = render_report(results, folder)
    assert "<script>" not in html and "<img src=x" not in html and "<b>1000" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&amp;" in html
    (folder / REPORT_FILE).write_text(html)
    page = dom((folder / REPORT_FILE).as_uri())
    # no element came from the values: no script, no img with onerror, no <b>, no <h1> but ours
    assert not re.search(r"(?i)<script|<img[^>]*onerror|<b>", page)
    assert page.count("<h1>") == 1 and "&lt;b&gt;1000&lt;/b&gt;" in page


def test_a_folder_that_was_moved_links_its_own_files(tmp_path: Path) -> None:
    """Rows keep absolute paths; a copied folder's report shows and links the copy's files."""
    make_eval_folder(tmp_path / "eval", [2, 0], tmp_path / "policy")
    moved = tmp_path / "moved"
    (tmp_path / "eval").rename(moved)
    assert main(["eval", "report", str(moved)]) == 0
    html = (moved / REPORT_FILE).read_text()
    assert html.count('class="thumb"') == 2 * THUMBS and "missing" not in html
    assert 'href="videos/episode_001.avi"' in html


def test_a_changed_or_missing_policy_card_is_said(tmp_path: Path) -> None:
    folder = tmp_path / "eval"
    results = make_eval_folder(folder, [2], tmp_path / "policy")
    (tmp_path / "policy" / "policy_card.json").write_text("{}")
    assert "has changed since this eval" in render_report(results, folder)
    (tmp_path / "policy" / "policy_card.json").unlink()
    html = render_report(results, folder)
    assert "unreadable" in html and "1–50" in html  # the seeds come from results.json too


def test_the_report_stays_small(tmp_path: Path) -> None:
    """≲ 2 MB for 50 episodes: ≤ 40 kB per episode (the SO-100 demo's 50: 1.17 MB in all)."""
    folder = tmp_path / "eval"
    results = make_eval_folder(folder, [2, 0, 2, 1], tmp_path / "policy")
    one = len(render_report({**results, "rows": results["rows"][:1]}, folder).encode())
    four = len(render_report(results, folder).encode())
    per_episode = (four - one) / 3
    assert 5_000 < per_episode < 40_000, per_episode


@pytest.mark.parametrize("argv", [["eval", "report"], ["eval", "report", "/nonexistent/eval"]])
def test_report_mistakes_are_one_line(argv: list[str], tmp_path: Path, capsys) -> None:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) <= 2 and "Traceback" not in "".join(err)


def test_the_browser_harness_fails_without_chromium_and_sees_blank_images(
    tmp_path: Path, monkeypatch
) -> None:
    import cv2

    page = np.full((800, 1280, 3), 250, np.uint8)
    cv2.imwrite(str(tmp_path / "flat.png"), page)
    assert is_blank(tmp_path / "flat.png")  # a page that drew nothing
    cv2.putText(page, "3/5", (40, 100), cv2.FONT_HERSHEY_SIMPLEX, 2, (30, 30, 40), 3, cv2.LINE_AA)
    cv2.imwrite(str(tmp_path / "text.png"), page)
    assert not is_blank(tmp_path / "text.png")
    monkeypatch.setenv("PATH", str(tmp_path))  # no chromium: a failure that says what to install
    with pytest.raises(BrowserMissing, match="apt-get install chromium"):
        dom("about:blank")
