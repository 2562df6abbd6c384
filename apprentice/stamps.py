"""Stamp sanity: the one rule for a message whose header stamp is ahead of the host clock.

Stamps are host-clock seconds taken at the sensor (docs/ARCHITECTURE.md, Time), so a message
is received after it was stamped. A stamp more than `max_future` ahead of the receiving host's
clock is wrong (a sensor clock that stepped, a mis-set camera, a driver bug): the message is
rejected and counted, and it never becomes the stream's newest stamp, where one frame stamped
+30 s would make every later, correct frame look out of order. Out of order means not newer
than the last *accepted* stamp. A stamp far in the past passes this gate: the as-of rule's
maximum age (apprentice.resample) makes it useless, and watchdogs see the stream as stale.

MAX_FUTURE_S = 0.5 s: same-host stamps are never ahead; a sensor on another host synced by
NTP/PTP is off by milliseconds, an unsynced one by seconds or more; the simulator's stamps
stay within a few ms of wall time (its resync moves them forward to catch up, never past the
host clock). It is also below the policy node's `safe_after` (1 s): a frame accepted just
under the bound holds later frames back as out of order for less than that, so its watchdog
can hold the arm but never latch a fault because of it.

Watchdogs use `last_received`, the host's monotonic receive time of the last accepted
message, not stamps: a stream that stops is stale whatever its stamps said.
"""

from __future__ import annotations

import math

MAX_FUTURE_S = 0.5  # s a stamp may be ahead of the host clock (see the module docstring)
REPORT_EVERY_S = 5.0  # s between two log lines about one stream's rejected messages

ACCEPTED, FUTURE, OUT_OF_ORDER = "accepted", "future", "out_of_order"


class Throttle:
    """For log lines about counted events: the first is due at once, then at most one every
    `every` s (now: s, monotonic)."""

    def __init__(self, every: float = REPORT_EVERY_S) -> None:
        if not every >= 0:
            raise ValueError(f"every must be >= 0 s, got {every}")
        self.every = every
        self._next = -math.inf

    def due(self, now: float) -> bool:
        if now < self._next:
            return False
        self._next = now + self.every
        return True


class StampGate:
    """One stream's stamp check and its counters. Not thread-safe: the caller serializes."""

    def __init__(self, max_future: float = MAX_FUTURE_S, report_every: float = REPORT_EVERY_S):
        if not max_future >= 0:
            raise ValueError(f"max_future must be >= 0 s, got {max_future}")
        self.max_future = max_future
        self.counts = {ACCEPTED: 0, FUTURE: 0, OUT_OF_ORDER: 0}
        self.last_stamp = -math.inf  # s, host clock: the newest accepted stamp
        self.last_received = -math.inf  # s, monotonic: when that message arrived
        self.last_ahead = 0.0  # s the latest rejected future stamp was ahead of the host clock
        self._reported = {FUTURE: 0, OUT_OF_ORDER: 0}
        self._throttle = Throttle(report_every)

    def admit(self, stamp: float, now: float, received: float) -> str:
        """ACCEPTED, FUTURE or OUT_OF_ORDER for a message stamped `stamp` (s, host clock),
        received at `now` (s, host clock) = `received` (s, monotonic)."""
        if not stamp - now <= self.max_future:  # also a NaN stamp
            verdict = FUTURE
            self.last_ahead = stamp - now
        elif stamp <= self.last_stamp:
            verdict = OUT_OF_ORDER
        else:
            verdict = ACCEPTED
            self.last_stamp, self.last_received = stamp, received
        self.counts[verdict] += 1
        return verdict

    def age(self, received_now: float) -> float:
        """s since the last accepted message arrived (monotonic); inf before the first."""
        return received_now - self.last_received

    def report(self, name: str, received_now: float) -> str | None:
        """A log line about the messages rejected since the last line, or None: the first
        rejection is reported at once, later ones at most every `report_every` s (monotonic)."""
        new = {k: self.counts[k] - self._reported[k] for k in self._reported}
        if not any(new.values()) or not self._throttle.due(received_now):
            return None
        self._reported = {k: self.counts[k] for k in self._reported}
        parts = []
        if new[FUTURE]:
            parts.append(
                f"{new[FUTURE]} stamped more than {self.max_future:g} s ahead of the host clock "
                f"(latest {self.last_ahead:+.3f} s)"
            )
        if new[OUT_OF_ORDER]:
            parts.append(f"{new[OUT_OF_ORDER]} not newer than the last accepted stamp")
        totals = f"{self.counts[FUTURE]} future, {self.counts[OUT_OF_ORDER]} out of order in all"
        return f"{name}: dropped {' and '.join(parts)} ({totals})"

    def stats(self, received_now: float) -> dict[str, float | int | None]:
        """Counters, and s since the last accepted message arrived (None before the first)."""
        return {
            ACCEPTED: self.counts[ACCEPTED],
            "future_stamps": self.counts[FUTURE],
            OUT_OF_ORDER: self.counts[OUT_OF_ORDER],
            "arrival_age_s": round(self.age(received_now), 4) if self.counts[ACCEPTED] else None,
        }
