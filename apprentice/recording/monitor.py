"""What a person sees while recording: episode time and every stream's live rate.

Pure: `LiveRates` turns the recorder's cumulative per-topic counts (its `~/status` service)
into rates; `status_line` renders one line. A stream below half its nominal rate is marked, so
a camera that stalls or a driver that stopped is seen before the episode is spoiled, not after.
"""

from __future__ import annotations

LOW_FRACTION = 0.5  # a stream below this share of its nominal rate is flagged


class LiveRates:
    """Rates (Hz) from cumulative counts sampled at host times."""

    def __init__(self) -> None:
        self._last: tuple[float, dict[str, int]] | None = None
        self.rates: dict[str, float] = {}

    def update(self, t: float, seen: dict[str, int]) -> dict[str, float]:
        if self._last is not None and t > self._last[0]:
            t0, before = self._last
            self.rates = {k: (n - before.get(k, 0)) / (t - t0) for k, n in seen.items()}
        self._last = (t, dict(seen))
        return self.rates


def short_name(topic: str) -> str:
    """/cameras/front/image_raw/compressed → front; /follower/joint_states → follower."""
    parts = [p for p in topic.split("/") if p]
    if parts and parts[0] == "cameras" and len(parts) > 1:
        rest = parts[2:]
        return parts[1] if not rest or rest[0].startswith("image") else f"{parts[1]}/{rest[0]}"
    if parts and parts[-1] == "joint_states":
        parts = parts[:-1]
    return "/".join(parts) or topic


def low_streams(rates: dict[str, float], nominal: dict[str, float]) -> list[str]:
    return [t for t, hz in nominal.items() if t in rates and rates[t] < LOW_FRACTION * hz]


def status_line(status: dict, rates: dict[str, float], width: int | None = None) -> str:
    """`REC episode_0003   12.4 s | Hz: follower 100  front 30 ...` (or `idle | ...`).
    camera_info streams are shown only when LOW (they follow their camera). `width`: cut to
    fit a terminal line (a wrapped line could not be redrawn in place)."""
    nominal = status.get("nominal_hz", {})
    low = set(low_streams(rates, nominal))
    if status.get("recording"):
        head = f"REC {status['episode']} {status['elapsed_s']:6.1f} s"
    else:
        head = "idle"
    streams = "  ".join(
        f"{short_name(t)} {rates[t]:.0f}" + (" LOW" if t in low else "")
        for t in nominal
        if t in rates and (t in low or not t.endswith("/camera_info"))
    )
    line = f"{head} | " + (f"Hz: {streams}" if streams else "measuring rates...")
    return line if width is None or len(line) <= width else line[: max(0, width - 3)] + "..."
