"""Child processes of a test: their output line by line, and their own children."""

from __future__ import annotations

import threading
import time
from pathlib import Path


class Lines:
    """A child's output, line by line, on a thread: wait for a line without blocking forever."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream) -> None:
        for line in stream:
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()

    def wait_for(self, text: str, timeout: float, start: int = 0) -> tuple[int, str]:
        """(index, line) of the first line from `start` on that holds `text`."""
        end = time.monotonic() + timeout
        with self._cond:
            while True:
                for i in range(start, len(self.lines)):
                    if text in self.lines[i]:
                        return i, self.lines[i]
                if not self._cond.wait(max(0.0, end - time.monotonic())):
                    raise AssertionError(f"no {text!r} in {timeout} s:\n{''.join(self.lines)}")


def child_pid(parent: int, module: str) -> int:
    """The child process of `parent` that runs `python -m <module>`."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and module.encode() in cmdline:
            return int(stat.parent.name)
    raise AssertionError(f"no child {module} of {parent}")
