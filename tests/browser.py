"""Headless Chromium for page tests: a screenshot, the DOM after scripts ran, a blank check.

    from browser import dom, is_blank, screenshot, snapshot
    png = screenshot("http://127.0.0.1:9090", tmp_path / "viewer.png", wait_ms=15000)
    assert not is_blank(png)
    assert "<canvas" in dom("http://127.0.0.1:9090", wait_ms=15000)
    html, png = snapshot(url, path)         # both from one page load

    python tests/browser.py URL OUT.png [WIDTHxHEIGHT] [WAIT_MS]   # a screenshot for the docs

Debian's `chromium` package (scripts/setup.sh installs it); a missing browser fails the test
with the install line, it does not skip it. Each call starts a fresh browser with its own
temporary profile (calls may run side by side) and waits for it to exit.

Flags, as measured with Chromium 156 on Debian 12 (2 cores, no GPU):
- `--headless`: the new headless mode (the same browser without a window).
- `--no-sandbox` when running as root: Chromium refuses to start as root otherwise ("Running
  as root without --no-sandbox is not supported").
- `--use-angle=swiftshader --enable-unsafe-swiftshader`: WebGL on the CPU (SwiftShader). Without
  the second flag Chromium 156 still falls back to it but logs that the automatic fallback is
  deprecated; a page with a WebGL canvas (the Rerun web viewer) needs it.
- `--virtual-time-budget=MS`: the page runs on a virtual clock that jumps ahead whenever
  nothing else is pending (timers fire without waiting; network loads are waited for in real
  time), and the DOM is dumped / the screenshot taken when MS of virtual time have passed. So
  `wait_ms` is what the page's scripts get, not wall time.
- `--screenshot` and `--dump-dom` work in one run (`snapshot`).
A browser start costs 2-5 s of wall time on an idle 2-core host, 10-25 s at load average 18.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

INSTALL = "apt-get install chromium (scripts/setup.sh does)"
TIMEOUT_S = 120.0  # one browser run, start to exit (a wasm page on a loaded 2-core host: < 60 s)


class BrowserMissing(RuntimeError):
    """No `chromium` on PATH: a failure, not a skip (the page tests are part of the suite)."""


def chromium() -> str:
    """The browser's path; BrowserMissing (with the install line) when there is none."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        raise BrowserMissing(f"no chromium on PATH: {INSTALL}")
    return exe


def _browser(profile: str, size: tuple[int, int]) -> list[str]:
    """The headless browser and the flags every run here uses (see the module docstring)."""
    return [chromium(), "--headless", f"--user-data-dir={profile}",
            "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
            "--hide-scrollbars", "--no-first-run", "--disable-extensions",
            f"--window-size={size[0]},{size[1]}",
            *(["--no-sandbox"] if os.geteuid() == 0 else [])]  # fmt: skip


def _run(url: str, mode: list[str], wait_ms: int, size: tuple[int, int]) -> str:
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        cmd = [*_browser(profile, size), f"--virtual-time-budget={wait_ms}", *mode, url]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"chromium exit {out.returncode} on {url}: {out.stderr[-2000:]}")
    return out.stdout


def screenshot(
    url: str, path: str | Path, size: tuple[int, int] = (1280, 800), wait_ms: int = 3000
) -> Path:
    """A PNG of the page's first `size` (width, height) pixels after `wait_ms` of virtual time.
    url: http(s)://… or file://… (Path.as_uri())."""
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    _run(url, [f"--screenshot={path}"], wait_ms, size)
    if not path.is_file():
        raise RuntimeError(f"chromium wrote no screenshot of {url} to {path}")
    return path


def snapshot(
    url: str, path: str | Path, size: tuple[int, int] = (1280, 800), wait_ms: int = 3000
) -> tuple[str, Path]:
    """(the DOM, the screenshot) of one page load: `dom` and `screenshot` in one browser run
    (a browser start is 2-5 s here, ~15 s on a loaded host)."""
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    html = _run(url, [f"--screenshot={path}", "--dump-dom"], wait_ms, size)
    if not path.is_file():
        raise RuntimeError(f"chromium wrote no screenshot of {url} to {path}")
    return html, path


def dom(url: str, wait_ms: int = 3000, size: tuple[int, int] = (1280, 800)) -> str:
    """The page's serialized DOM (document.documentElement.outerHTML) after `wait_ms` of virtual
    time: what scripts built, not the file that was served."""
    return _run(url, ["--dump-dom"], wait_ms, size)


def wait_for(
    url: str, condition: str, path: str | Path, size: tuple[int, int] = (1280, 800),
    timeout_s: float = 90.0, settle_s: float = 2.0,
) -> tuple[str, Path]:
    """(the DOM, a screenshot) once the JavaScript expression `condition` is true in the page,
    polled in real time over the DevTools protocol (`--remote-debugging-pipe`: JSON messages,
    NUL-separated, on the browser's fds 3 and 4), then `settle_s` later. For pages whose start
    is not a timer: a wasm app compiles while virtual time (`--virtual-time-budget`) runs out
    at once, so `snapshot` caught the Rerun viewer before it started in 1 of 3 runs.
    TimeoutError (with the page's DOM) when the condition stays false for `timeout_s`."""
    import base64
    import json
    import time

    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    to_browser_r, to_browser_w = os.pipe()
    from_browser_r, from_browser_w = os.pipe()

    def child_fds() -> None:  # the protocol's fds: the browser reads 3, writes 4
        r, w = os.dup(to_browser_r), os.dup(from_browser_w)
        os.dup2(r, 3)
        os.dup2(w, 4)

    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        cmd = [*_browser(profile, size), "--remote-debugging-pipe", "about:blank"]
        # kept: Popen closes every other fd after preexec_fn has made 3 and 4
        proc = subprocess.Popen(cmd, pass_fds=(3, 4, to_browser_r, from_browser_w),
                                preexec_fn=child_fds, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)  # fmt: skip
        os.close(to_browser_r)
        os.close(from_browser_w)
        out, buf, ids = os.fdopen(to_browser_w, "wb", buffering=0), b"", iter(range(1, 1 << 30))

        def call(method: str, session: str | None = None, **params) -> dict:
            nonlocal buf
            i = next(ids)
            msg = {"id": i, "method": method, "params": params}
            msg |= {"sessionId": session} if session else {}
            out.write(json.dumps(msg).encode() + b"\0")
            while True:
                while b"\0" not in buf:
                    chunk = os.read(from_browser_r, 1 << 20)
                    if not chunk:
                        raise RuntimeError(f"chromium closed the DevTools pipe ({method})")
                    buf += chunk
                raw, buf = buf.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == i:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply["result"]

        try:
            target = call("Target.createTarget", url=url)["targetId"]
            session = call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

            def evaluate(expr: str):
                r = call("Runtime.evaluate", session, expression=expr, returnByValue=True)
                return r.get("result", {}).get("value")

            deadline = time.monotonic() + timeout_s
            while not evaluate(f"Boolean({condition})"):
                if time.monotonic() > deadline:
                    page = str(evaluate("document.documentElement.outerHTML"))[-1500:]
                    raise TimeoutError(f"{condition} false after {timeout_s:g} s on {url}: {page}")
                time.sleep(0.5)
            time.sleep(settle_s)
            html = evaluate("document.documentElement.outerHTML")
            png = call("Page.captureScreenshot", session, format="png")["data"]
            path.write_bytes(base64.b64decode(png))
            call("Browser.close")
        finally:
            out.close()
            os.close(from_browser_r)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return html, path


def is_blank(png: str | Path, min_colors: int = 8, min_spread: int = 32) -> bool:
    """True when the image is (nearly) one flat color: fewer than `min_colors` distinct colors
    or a brightness range (max - min of the gray image) under `min_spread`. A rendered page
    with text, a plot or a 3D view has hundreds of colors."""
    import cv2
    import numpy as np

    img = cv2.imread(str(png), cv2.IMREAD_COLOR)
    if img is None:
        raise RuntimeError(f"{png}: not an image")
    packed = img.reshape(-1, 3).astype(np.int32) @ np.array([1 << 16, 1 << 8, 1], np.int32)
    colors = len(np.unique(packed))  # (np.unique(axis=0) on rows: ~10× slower)
    gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    return colors < min_colors or int(gray.max()) - int(gray.min()) < min_spread


if __name__ == "__main__":  # the README's screenshots: made by the tests' browser
    import sys

    url, out, *rest = sys.argv[1:]
    w, h = (int(v) for v in (rest[0] if rest else "1280x800").split("x"))
    png = screenshot(url, out, (w, h), int(rest[1]) if len(rest) > 1 else 3000)
    print(f"{png}: {png.stat().st_size} bytes, blank: {is_blank(png)}")
