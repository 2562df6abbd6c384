"""The progress line of `apprentice record` / `apprentice eval` (apprentice.progress), and the
real `apprentice record` on a pseudo-terminal: one line redrawn in place, the rows in a file."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from apprentice.progress import EpisodeProgress, parse_row, progress_line, relay


def test_the_line_shows_counts_rate_and_eta() -> None:
    assert progress_line(12, 50, 11, 1, 9.3) == (
        "[12/50] ████░░░░░░░░░░░░ success 11/12 · gate flagged 1 · 9.3 s/ep · ETA 6 min"
    )
    assert progress_line(0, 20, 0) == "[0/20] ░░░░░░░░░░░░░░░░ success 0/0"  # eval: no gate
    assert progress_line(20, 20, 18, None, 12.0).endswith("success 18/20 · 12.0 s/ep")  # no ETA
    assert progress_line(1, 3, 1, None, 20.0).endswith("ETA 40 s")
    assert len(progress_line(12, 50, 11, 1, 9.3, width=30)) == 30


def test_rows_are_told_from_other_lines() -> None:
    assert parse_row('[2/5] {"episode": "episode_0001", "success": true}') == (
        2, 5, {"episode": "episode_0001", "success": True}
    )  # fmt: skip
    for line in ("record: graph record_sim_aloha on ROS_DOMAIN_ID=130",
                 "[1/2] the recorder died; starting again", "[1/2] {not json}",
                 "[1/2] [1, 2]", "success 1/2; quality ok 0/2"):  # fmt: skip
        assert parse_row(line) is None, line


def test_relay_redraws_one_line_and_prints_other_lines_above_it() -> None:
    out, now = io.StringIO(), [100.0]
    progress = EpisodeProgress(3, out, gate=True, clock=lambda: now[0], width=200)

    def session():  # an episode every 10 s
        for i, (ok, quality) in enumerate([(True, "ok"), (False, "ok"), (True, "3 of 870")]):
            if i == 1:
                yield "[2/3] the recorder died; starting again"
            now[0] += 10.0
            yield f"[{i + 1}/3] " + json.dumps({"success": ok, "quality": quality})

    relay(session(), progress)
    text = out.getvalue()
    assert text.endswith(
        "\r\x1b[K[3/3] ████████████████ success 2/3 · gate flagged 1 · 10.0 s/ep\n"
    )
    assert "\r\x1b[K[2/3] the recorder died; starting again\n" in text  # its own line
    first = "[1/3] █████░░░░░░░░░░░ success 1/1 · gate flagged 0 · 10.0 s/ep · ETA 20 s"
    assert "\r\x1b[K" + first in text
    assert '{"success"' not in text  # the JSON stays in the rows file
    assert text.count("\n") == 2  # the message and the end: every redraw stays on one line


def _on_a_terminal(argv: list[str], timeout: float = 300.0) -> tuple[int, str, str]:
    """`python -m apprentice ARGV` with stdout on a pseudo-terminal: (exit code, what the
    terminal got, stderr)."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "apprentice", *argv], stdout=follower,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)  # fmt: skip
    os.close(follower)
    shown, end = b"", time.monotonic() + timeout
    while time.monotonic() < end:
        ready, _, _ = select.select([leader], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the terminal's other end closed (the command exited)
                break
            if not chunk:
                break
            shown += chunk
        elif proc.poll() is not None:
            break
    os.close(leader)
    err = proc.communicate(timeout=30)[1].decode()
    return proc.returncode, shown.decode(errors="replace"), err


@pytest.mark.ros
@pytest.mark.slow
def test_record_on_a_terminal_shows_a_progress_line_and_writes_the_rows(tmp_path: Path) -> None:
    """`apprentice record` (scripted, 2 episodes) with stdout on a pseudo-terminal."""
    rows_file = tmp_path / "rows.json"
    code, text, err = _on_a_terminal(
        ["record", "--episodes", "2", "--dataset", str(tmp_path / "demos"), "--rows",
         str(rows_file), "--domain", os.environ["ROS_DOMAIN_ID"]]
    )  # fmt: skip
    assert code == 0, text[-3000:] + err[-3000:]
    rows = json.loads(rows_file.read_text())
    assert [r["episode"] for r in rows] == ["episode_0000", "episode_0001"]
    ok = sum(r["success"] for r in rows)
    flagged = sum(r["quality"] != "ok" for r in rows)
    assert re.search(r"\r\x1b\[K\[0/2\] ░{16} success 0/0", text)
    assert re.search(rf"\r\x1b\[K\[2/2\] █{{16}} success {ok}/2 · gate flagged {flagged} · "
                     r"\d+\.\d s/ep\r?\n", text)  # fmt: skip
    assert not re.search(r"\[\d/2\] \{", text)  # no JSON rows on the terminal
    assert "success" in text and "quality ok" in text  # the session's table, above the line


@pytest.mark.ros
@pytest.mark.slow
def test_eval_on_a_terminal_shows_a_progress_line_and_the_report(tmp_path: Path) -> None:
    """`apprentice eval` of a tiny random ACT (1 episode of 2 s, SO-100) on a pseudo-terminal."""
    from tiny_act import export_tiny_act

    from apprentice.sim.scenes import get_scene

    (arm,) = get_scene("so100_lift").arms
    policy = export_tiny_act(tmp_path / "policy", list(arm.joints), np.asarray(arm.home),
                             ["front"], (48, 64), train_seeds=range(7))  # fmt: skip
    out = tmp_path / "eval"
    code, text, err = _on_a_terminal(
        ["eval", "--policy", str(policy), "--graph", "eval_sim_so100", "--episodes", "1",
         "--duration", "2", "--seed0", "7", "--out", str(out), "--domain",
         os.environ["ROS_DOMAIN_ID"]]
    )  # fmt: skip
    assert code == 0, text[-3000:] + err[-3000:]
    (row,) = json.loads((out / "episodes.json").read_text())
    ok = int(row["success"])
    assert re.search(rf"\r\x1b\[K\[1/1\] █{{16}} success {ok}/1 · \d+\.\d s/ep\r?\n", text)
    assert not re.search(r"\[1/1\] \{", text)  # the JSON row is in episodes.json only
    assert f"report {out / 'report.html'}" in text and (out / "report.html").stat().st_size > 5000
