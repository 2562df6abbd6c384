"""One progress line for `apprentice record` and `apprentice eval` on a terminal.

    [12/50] ██████░░░░░░░░░░ success 11/12 · gate flagged 1 · 9.3 s/ep · ETA 6 min

The sessions (apprentice_ros.record_session / eval_session) print one `[i/N] {json}` row per
episode. On a terminal the command reads them from the session's stdout and redraws this line
in place; any other line the session prints appears above it. When stdout is not a terminal
(a log, a pipe, the demo pipeline) the session's lines pass through unchanged, and the rows are
in a JSON file as well (record: `--rows`, eval: episodes.json and results.json).
"""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import IO, Any

ROW = re.compile(r"\[(\d+)/(\d+)\] (\{.*\})\s*$")  # a session's per-episode line
BAR = 16  # characters


def parse_row(line: str) -> tuple[int, int, dict[str, Any]] | None:
    """`[i/N] {json}` → (i, N, row); None for any other line."""
    m = ROW.match(line)
    if not m:
        return None
    try:
        row = json.loads(m.group(3))
    except ValueError:
        return None
    return (int(m.group(1)), int(m.group(2)), row) if isinstance(row, dict) else None


def _minutes(s: float) -> str:
    return f"{s:.0f} s" if s < 90 else f"{s / 60:.0f} min"


def progress_line(
    done: int,
    total: int,
    successes: int,
    flagged: int | None = None,
    seconds_per_episode: float | None = None,
    width: int | None = None,
) -> str:
    """`[12/50] ███░░ success 11/12 · gate flagged 1 · 9.3 s/ep · ETA 6 min` (flagged None: no
    gate; cut to `width` characters)."""
    filled = round(BAR * done / total) if total > 0 else 0
    parts = [f"[{done}/{total}] {'█' * filled}{'░' * (BAR - filled)} success {successes}/{done}"]
    if flagged is not None:
        parts.append(f"gate flagged {flagged}")
    if seconds_per_episode is not None:
        parts.append(f"{seconds_per_episode:.1f} s/ep")
        if done < total:
            parts.append(f"ETA {_minutes(seconds_per_episode * (total - done))}")
    line = " · ".join(parts)
    return line[:width] if width else line


class EpisodeProgress:
    """Counts the rows and redraws the line on `out` (a terminal), cut to `width` (default: the
    terminal's). `gate`: the rows carry the quality gate's verdict (`quality`, "ok" when
    passed). Time per episode is measured from construction (the first episode includes the
    start-up)."""

    def __init__(
        self,
        total: int,
        out: IO[str],
        gate: bool = False,
        clock: Callable[[], float] = time.monotonic,
        width: int | None = None,
    ) -> None:
        self.total, self.out, self.gate, self.clock = total, out, gate, clock
        self.width = width
        self.t0 = self.t_last = clock()  # start, the last row's arrival
        self.rows: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._shown = False

    def line(self) -> str:
        n = len(self.rows)
        ok = sum(bool(r.get("success")) for r in self.rows)
        flagged = sum(r.get("quality", "ok") != "ok" for r in self.rows) if self.gate else None
        per = (self.t_last - self.t0) / n if n else None
        width = self.width or shutil.get_terminal_size().columns - 1
        return progress_line(n, self.total, ok, flagged, per, width)

    def _draw(self) -> None:
        self.out.write("\r\x1b[K" + self.line())
        self.out.flush()
        self._shown = True

    def start(self) -> None:
        with self._lock:
            self._draw()

    def update(self, row: Mapping[str, Any]) -> None:
        with self._lock:
            self.rows.append(dict(row))
            self.t_last = self.clock()
            self._draw()

    def say(self, text: str) -> None:
        """A line above the progress line."""
        with self._lock:
            self.out.write("\r\x1b[K" + text.rstrip("\n") + "\n")
            self._draw()

    def close(self) -> None:
        """Ends the progress line (the next output starts on a new line)."""
        with self._lock:
            if self._shown:
                self.out.write("\n")
                self.out.flush()
            self._shown = False


def relay(lines: Iterable[str], progress: EpisodeProgress) -> None:
    """A session's stdout → the progress line: rows update it, other lines print above it."""
    progress.start()
    for line in lines:
        parsed = parse_row(line)
        if parsed is None:
            progress.say(line)
        else:
            progress.update(parsed[2])
    progress.close()


def relay_thread(lines: Iterable[str], progress: EpisodeProgress) -> threading.Thread:
    """`relay` on a daemon thread (started), so the caller can watch the session meanwhile;
    join it after the session exits (the pipe's end ends it)."""
    thread = threading.Thread(target=relay, args=(lines, progress), name="progress", daemon=True)
    thread.start()
    return thread
