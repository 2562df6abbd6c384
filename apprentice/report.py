"""An eval folder → one self-contained HTML report (`report.html`), viewable by double-click.

    apprentice eval report runs/eval-x      # (re)writes runs/eval-x/report.html

`apprentice eval` writes it at the end of every eval. What it shows, from `results.json` and the
policy card it names:
- the success rate with its 95 % Wilson interval and the per-stage table (recomputed from the
  rows with `apprentice.evaluation`, so results.json files of any version read alike);
- one row per episode: seed, success, highest stage, a strip of `THUMBS` frames read from the
  episode's video, its joint plot, and a link to the video (relative: the folder can move);
- the policy card's summary (type, joints, cameras, rates, chunk, training seeds, hashes) and
  the policy node's parameters.

Self-contained: inline CSS, no script, images as data: URIs (thumbnails JPEG, plots downscaled
PNG with 16 levels per channel). The SO-100 demo's 50 episodes: 1.17 MB. Every value from the
files is escaped. A missing video, plot or card is said in the page, not skipped silently.
Pure: no rclpy, no torch (OpenCV reads the videos and shrinks the plots).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from apprentice.evaluation import (
    RESULTS_FILE,
    format_rate,
    load_results,
    seed_ranges,
    summarize,
    wilson_interval,
)

REPORT_FILE = "report.html"
CARD_FILE = "policy_card.json"  # apprentice.learning.runtime.CARD_FILE (no torch import here)
THUMBS = 6  # frames per episode strip, evenly spaced over the video
THUMB_HEIGHT = 60  # px (the SO-100 demo renders 96 × 128)
PLOT_WIDTH = 560  # px; plot_joints draws 800 px wide


def _e(value: Any) -> str:
    return escape(str(value), quote=True)


def _data_uri(kind: str, data: bytes) -> str:
    return f"data:image/{kind};base64,{base64.b64encode(data).decode('ascii')}"


def video_thumbnails(video: Path, n: int = THUMBS, height: int = THUMB_HEIGHT) -> list[bytes]:
    """`n` JPEG frames evenly spaced over a video (first to last), `height` px tall; [] when
    OpenCV cannot read it."""
    import cv2

    cap = cv2.VideoCapture(str(video))
    try:
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        if not cap.isOpened() or count <= 0:
            return []
        out = []
        for i in np.linspace(0, count - 1, min(n, count)).round().astype(int):
            cap.set(cv2.CAP_PROP_POS_FRAMES, int(i))
            ok, frame = cap.read()
            if not ok:
                continue
            h, w = frame.shape[:2]
            small = cv2.resize(frame, (max(1, round(w * height / h)), height),
                               interpolation=cv2.INTER_AREA)  # fmt: skip
            out.append(cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 75])[1].tobytes())
        return out
    finally:
        cap.release()


def shrink_plot(png: Path, width: int = PLOT_WIDTH) -> bytes | None:
    """A plot PNG downscaled to `width` px, 16 levels per channel (line art compresses ~4× better
    and looks the same); None when unreadable."""
    import cv2

    img = cv2.imread(str(png), cv2.IMREAD_COLOR)
    if img is None:
        return None
    h, w = img.shape[:2]
    if w > width:
        img = cv2.resize(img, (width, round(h * width / w)), interpolation=cv2.INTER_AREA)
    img = (img // 16 * 16 + 8).astype(np.uint8)
    return cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 9])[1].tobytes()


def _local(path: str | None, folder: Path) -> tuple[Path | None, str | None]:
    """(the file on disk, its link from the report) for a path in results.json. Rows keep
    absolute paths; a file in the eval folder is linked relatively so the folder can move, and
    a moved or copied folder's files are looked up by their path below it."""
    if not path:
        return None, None
    p = Path(path)
    if not p.is_absolute():
        p = folder / p
    if not p.is_relative_to(folder):  # the folder was moved or copied: its own copy first
        for k in range(1, len(p.parts)):
            if (candidate := folder.joinpath(*p.parts[k:])).exists():
                p = candidate
                break
    try:
        link = Path(os.path.relpath(p, folder)).as_posix()
    except ValueError:  # another drive (Windows)
        link = p.as_uri()
    if link.startswith("../"):
        link = p.as_uri()
    return (p if p.exists() else None), link


def load_card(results: Mapping[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """The policy card results.json names, and a note on it ('' when the card is the one the
    eval ran: same SHA-256)."""
    policy = results.get("policy")
    if not isinstance(policy, dict) or not policy.get("dir"):
        return None, "results.json does not name the policy folder (an older eval)"
    path = Path(policy["dir"]) / CARD_FILE
    try:
        data = path.read_bytes()
        card = json.loads(data)
    except (OSError, ValueError) as exc:
        return None, f"policy card {path} unreadable ({exc.__class__.__name__})"
    sha = policy.get("card_sha256")
    if sha and hashlib.sha256(data).hexdigest() != sha:
        return card, f"policy card {path} has changed since this eval (SHA-256 differs)"
    return card, ""


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.0f} %"


def _interval(k: int, n: int) -> str:
    lo, hi = wilson_interval(k, n)
    return f"{100 * lo:.0f}–{100 * hi:.0f} %"


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "") -> str:
    """Cells are HTML already (escape values before)."""
    th = "".join(f"<th>{h}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def _kv(pairs: Sequence[tuple[str, Any]]) -> str:
    return "<dl>" + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in pairs) + "</dl>"


def _card_section(results: Mapping[str, Any]) -> str:
    card, note = load_card(results)
    policy = results.get("policy") if isinstance(results.get("policy"), dict) else {}
    pairs: list[tuple[str, Any]] = [
        ("type", results.get("policy_type", "?")),
        ("folder", policy.get("dir", results.get("policy", "?"))),
    ]
    if card:
        cams = ", ".join(f"{c.get('name')} {c.get('height')}×{c.get('width')}"
                         for c in card.get("cameras", []))  # fmt: skip
        pairs += [("joints", ", ".join(card.get("joint_names", []))), ("cameras", cams),
                  ("control rate", f"{card.get('control_rate_hz')} Hz"),
                  ("chunk", card.get("chunk_size")),
                  ("observation steps", card.get("n_obs_steps"))]  # fmt: skip
        files = card.get("files") or {}
        pairs += [(f"file {n}", f"{f.get('bytes', 0) / 1e6:.1f} MB, sha256 "
                   f"{str(f.get('sha256'))[:12]}") for n, f in files.items()]  # fmt: skip
    train = policy.get("train_seeds") or (card or {}).get("train_seeds")
    pairs.append(("training seeds", seed_ranges(train) if train else "not listed"))
    if policy.get("data_index_hash"):
        pairs.append(("dataset", str(policy["data_index_hash"])[:19]))
    if policy.get("card_sha256"):
        pairs.append(("card sha256", str(policy["card_sha256"])[:12]))
    params = results.get("policy_params") or {}
    shown = ("execution", "ensemble_k", "control_rate", "image_transport", "output",
             "max_observation_age", "execution_provider", "threads")  # fmt: skip
    node = ", ".join(f"{k}={params[k]}" for k in shown if k in params)
    if node:
        pairs.append(("policy node", node))
    warn = f'<p class="warn">{_e(note)}</p>' if note else ""
    return f"<section><h2>Policy</h2>{warn}{_kv(pairs)}</section>"


def _episode_row(r: Mapping[str, Any], folder: Path, stages: int) -> tuple[str, list[str]]:
    """(the row's HTML, notes on its missing files)."""
    notes = []
    video, video_link = _local(r.get("video"), folder)
    plot, _ = _local(r.get("plot"), folder)
    thumbs = video_thumbnails(video) if video else []
    if r.get("video") and not thumbs:
        notes.append(f"episode {r.get('episode')}: video {r.get('video')} missing or unreadable")
    strip = "".join(f'<img class="thumb" alt="frame" src="{_data_uri("jpeg", t)}">'
                    for t in thumbs) or '<span class="muted">no video</span>'  # fmt: skip
    shrunk = shrink_plot(plot) if plot else None
    if r.get("plot") and shrunk is None:
        notes.append(f"episode {r.get('episode')}: plot {r.get('plot')} missing or unreadable")
    plot_html = (f'<img class="plot" alt="joint plot" src="{_data_uri("png", shrunk)}">'
                 if shrunk else '<span class="muted">no plot</span>')  # fmt: skip
    ok = bool(r.get("success"))
    result = f'<span class="{"ok" if ok else "fail"}">{"success" if ok else "failure"}</span>'
    if "success_at_end" in r and bool(r["success_at_end"]) != ok:
        result += f'<br><span class="muted">at end: {"yes" if r["success_at_end"] else "no"}</span>'
    if r.get("sim_stalled"):
        result += '<br><span class="warn">sim stalled</span>'
    link = (f'<a href="{_e(video_link)}">video</a>' if video_link and video
            else '<span class="muted">–</span>')  # fmt: skip
    stage = f"{_e(r.get('max_stage', '–'))}/{stages}" if stages else _e(r.get("max_stage", "–"))
    ms = r.get("inference_ms")
    cells = [_e(r.get("episode", "")), _e(r.get("seed", "")), result, stage,
             _e(f"{ms} ms" if ms is not None else "–"), link,
             f'<div class="strip">{strip}</div>', plot_html]  # fmt: skip
    cls = "" if ok else ' class="failed"'
    return f"<tr{cls}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>", notes


CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1d2330;background:#fafbfc}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:24px 0 8px}
.muted{color:#7a8190}.warn{color:#a15c00}.ok{color:#137333;font-weight:600}
.fail{color:#b3261e;font-weight:600}
.headline{display:flex;gap:32px;align-items:baseline;margin:16px 0}
#success{font-size:44px;font-weight:700}#interval{font-size:16px}
table{border-collapse:collapse;background:#fff}th,td{border:1px solid #dde1e6;padding:4px 8px;
text-align:left;vertical-align:middle}th{background:#eef1f4}
tr.failed td{background:#fdf1f0}.strip{display:flex;gap:2px}
img.thumb{height:60px;border-radius:2px}img.plot{width:300px;display:block}
img.plot:hover{width:560px}.cols{display:flex;gap:48px;flex-wrap:wrap}
dl{display:grid;grid-template-columns:max-content auto;gap:1px 16px;margin:0}
dt{color:#5b6270}dd{margin:0;font-family:ui-monospace,monospace;font-size:12px;max-width:640px}
.seeds{display:flex;flex-wrap:wrap;gap:2px;max-width:900px}
.seeds span{width:14px;height:14px;border-radius:2px;background:#137333}
.seeds span.f{background:#b3261e}
"""


def render_report(results: Mapping[str, Any], folder: Path) -> str:
    """The report's HTML for an eval folder's results (see the module docstring)."""
    rows = list(results["rows"])
    task = results.get("task")
    summary = summarize(rows, task)
    k, n = summary["successes"], summary["episodes"]
    title = (f"{results.get('policy_type', '?')} policy on {task or '?'} "
             f"({results.get('scene', results.get('graph', '?'))})")  # fmt: skip
    mtime = (folder / RESULTS_FILE).stat().st_mtime
    written = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(mtime))
    seeds = [r["seed"] for r in rows if "seed" in r]
    facts = [f"{n} episode(s) on seeds {seed_ranges(seeds)}",
             f"{results.get('duration_s', '?')} s each", f"graph {results.get('graph', '?')}",
             f"results written {written}"]  # fmt: skip
    warns = []
    if results.get("seen_seeds"):
        warns.append(f"seeds {seed_ranges(results['seen_seeds'])} were in the training data: "
                     "their episodes measure recall, not generalization")  # fmt: skip
    if summary.get("sim_stalled"):
        warns.append(f"the simulator stalled in {summary['sim_stalled']} episode(s) (host "
                     "overloaded?): their results say little about the policy")  # fmt: skip
    stage_rows = [[_e(name), _e(s["stage"]), _e(f"{s['reached']}/{s['episodes']}"),
                   _e(_pct(s["rate"])), _e(_interval(s["reached"], s["episodes"]))]
                  for name, s in (summary.get("stages") or {}).items()]  # fmt: skip
    stages_html = (_table(["stage", "#", "reached", "rate", "95 % interval"], stage_rows)
                   if stage_rows else '<p class="muted">no stages in these rows</p>')  # fmt: skip
    grid = "".join(f'<span class="{"" if r.get("success") else "f"}" title="episode '
                   f'{_e(r.get("episode"))}, seed {_e(r.get("seed"))}"></span>'
                   for r in rows)  # fmt: skip
    stage_max = max((s["stage"] for s in (summary.get("stages") or {}).values()), default=0)
    episode_rows, notes = [], []
    for r in rows:
        html_row, missing = _episode_row(r, folder, stage_max)
        episode_rows.append(html_row)
        notes += missing
    head = "".join(f"<th>{h}</th>" for h in ("episode", "seed", "result", "max stage",
                                             "inference", "video", "frames", "joints"))  # fmt: skip
    episodes_html = (f'<table id="episodes"><thead><tr>{head}</tr></thead>'
                     f"<tbody>{''.join(episode_rows)}</tbody></table>")  # fmt: skip
    warn_html = "".join(f'<p class="warn">{_e(w)}</p>' for w in warns + notes)
    at_end = summary.get("success_rate_at_end")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Eval: {_e(title)}</title>
<style>{CSS}</style></head><body>
<h1>Evaluation: {_e(title)}</h1>
<p class="muted">{_e(" · ".join(facts))}</p>
<div class="headline"><div><div id="success">{_e(f"{k}/{n}")} · {_e(_pct(k / n))}</div>
<div id="interval">{_e(format_rate(k, n))}, Wilson score</div></div>
<div class="muted">success at the episode's end: {_e(_pct(at_end))}<br>
mean highest stage: {_e(f"{summary.get('mean_max_stage', 0):.2f}")}</div></div>
{warn_html}
<div class="seeds" title="one square per episode: green success, red failure">{grid}</div>
<div class="cols"><section><h2>Stages reached ({_e(task or "?")})</h2>{stages_html}</section>
{_card_section(results)}</div>
<section><h2>Episodes</h2>{episodes_html}</section>
<p class="muted">apprentice eval report · {_e(str(folder))}</p>
</body></html>
"""


def write_report(folder: str | Path, out: str | Path | None = None) -> Path:
    """Reads `folder`/results.json (one-line UserErrors when it is not an eval folder) and writes
    the report to `out` (default `folder`/report.html). Returns the path written."""
    folder = Path(folder).resolve()
    results = load_results(folder)
    html = render_report(results, folder)
    path = Path(out) if out is not None else folder / REPORT_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(path)
    return path
