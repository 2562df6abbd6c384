"""The policy runtime: a fixed-rate control thread decoupled from an inference thread.

  inference thread   waits for the newest synchronized observation (as-of rule,
                     apprentice.resample.AsOfBuffer), runs the policy, hands the chunk to the
                     chunk executor. Runs only when the executor wants a chunk.
  control thread     on absolute deadlines (apprentice.timing.RateLoop): the executor's action
                     for this tick's time → SafetyLayer → `publish`. Never waits on inference.

Times: ticks are scheduled on the monotonic clock and converted to the host clock (what the
observation stamps use) with one offset taken at start. Inputs pass a stamp gate
(apprentice.stamps: a stamp too far ahead of the host clock is dropped and counted), and the
watchdog's age counts from each stream's last accepted arrival on the monotonic clock as well
as from its stamp, so a stream that stops trips the hold and the fault whatever it stamped.
Python's cyclic garbage collector is frozen and disabled while the loop runs (a full collection
can stop every thread for milliseconds); the inference thread collects the young generations
between inferences, where a pause costs nothing. No rclpy here: the node passes observations
in and publishes commands.
"""

from __future__ import annotations

import copy
import gc
import math
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from apprentice.policy_server.adapters import PolicyAdapter
from apprentice.policy_server.chunking import (
    EXECUTORS,
    ChunkExecutor,
    RealTimeChunking,
    RecedingHorizon,
    StepGrid,
    TemporalEnsemble,
)
from apprentice.policy_server.safety import FAULT, HOLD, RUNNING, SafetyConfig, SafetyLayer
from apprentice.resample import AsOfBuffer
from apprentice.stamps import ACCEPTED, FUTURE, MAX_FUTURE_S, OUT_OF_ORDER, StampGate
from apprentice.timing import RateLoop


@dataclass(frozen=True)
class Observation:
    stamp: float  # s, host clock: the newest time every stream has a sample for
    state: np.ndarray  # (To, J) joint positions, oldest first
    images: np.ndarray  # (To, N, 3, H, W) float32 in [0, 1]


class Observations:
    """Live input buffers: joint positions per arm and frames per camera (host-clock stamps).

    The synchronized observation at time t takes each stream's as-of sample (latest at or
    before t, at most max_age old): t is the oldest of the cameras' newest stamps, so every
    camera has a frame for it; with no cameras, the oldest of the arms' newest stamps.

    Every message passes its stream's StampGate first (apprentice.stamps): a stamp more than
    `max_future` ahead of the host clock is dropped and counted, and never blocks later
    messages. The watchdog's age (`age`) is, per stream, the larger of the newest accepted
    stamp's age and the time since that message arrived (monotonic), and the oldest stream
    decides: a stream that stops is stale whatever its stamps said, and one whose stamps lag
    is stale although it arrives. Dropped messages are logged per stream (`log("event", ..)`:
    the first at once, then at most every REPORT_EVERY_S).
    """

    def __init__(
        self,
        arms: list[str],
        cameras: list[str],
        max_age: float,
        max_future: float = MAX_FUTURE_S,
        log: Callable[[str, str], None] = lambda level, text: None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.arms, self.cameras = list(arms), list(cameras)
        self.max_age = max_age
        self._joints = {a: AsOfBuffer[np.ndarray](max_age, capacity=256) for a in self.arms}
        self._frames = {c: AsOfBuffer[np.ndarray](max_age, capacity=16) for c in self.cameras}
        self.gates = {
            **{f"arm {a}": StampGate(max_future) for a in self.arms},
            **{f"camera {c}": StampGate(max_future) for c in self.cameras},
        }
        self._log, self._clock, self._monotonic = log, clock, monotonic
        self._gate_lock = threading.Lock()
        self._new = threading.Condition()

    def _admit(self, stream: str, stamp: float) -> bool:
        with self._gate_lock:
            gate = self.gates[stream]
            received = self._monotonic()
            accepted = gate.admit(stamp, self._clock(), received) == ACCEPTED
            line = gate.report(stream, received)
        if line is not None:
            self._log("event", line)
        return accepted

    def push_joints(self, arm: str, stamp: float, position: np.ndarray) -> None:
        if not self._admit(f"arm {arm}", stamp):
            return
        self._joints[arm].push(stamp, np.asarray(position, dtype=float))
        if not self.cameras:
            with self._new:
                self._new.notify_all()

    def push_frame(self, camera: str, stamp: float, image: np.ndarray) -> None:
        """image (3, H, W) uint8 RGB at the policy's input size (apprentice.dataset.images)."""
        if not self._admit(f"camera {camera}", stamp):
            return
        self._frames[camera].push(stamp, image)
        with self._new:
            self._new.notify_all()

    def never_accepted(self, arms: list[str], cameras: list[str]) -> list[str]:
        """Those of the given streams with no message accepted yet (all dropped, or none)."""
        names = [f"arm {a}" for a in arms] + [f"camera {c}" for c in cameras]
        with self._gate_lock:
            return [n for n in names if self.gates[n].counts[ACCEPTED] == 0]

    def ages(self, t: float, t_mono: float) -> dict[str, float]:
        """Per stream, s: max(t − newest accepted stamp, t_mono − its arrival); inf if none.
        t: host clock, t_mono: the same instant on the monotonic clock."""
        with self._gate_lock:
            return {
                name: max(t - gate.last_stamp, gate.age(t_mono))
                for name, gate in self.gates.items()
            }

    def age(self, t: float, t_mono: float) -> float:
        """The watchdog's observation age (s): the stalest stream's; inf if a stream never
        delivered. Once per control tick."""
        with self._gate_lock:
            return max(
                (max(t - g.last_stamp, g.age(t_mono)) for g in self.gates.values()),
                default=math.inf,
            )

    def staleness(self, t: float, t_mono: float) -> str:
        """Which stream is stalest and why, for the log."""
        ages = self.ages(t, t_mono)
        if not ages:
            return ""
        name = max(ages, key=ages.__getitem__)
        gate = self.gates[name]
        if gate.counts[ACCEPTED] == 0:
            return f"{name}: nothing accepted yet"
        stamp_age, arrival_age = t - gate.last_stamp, gate.age(t_mono)
        rejected = gate.counts[FUTURE] + gate.counts[OUT_OF_ORDER]
        return (
            f"{name}: last accepted message arrived {arrival_age:.3f} s ago, stamped "
            f"{stamp_age:.3f} s ago ({rejected} dropped for their stamps)"
        )

    def stats(self, t: float, t_mono: float) -> dict[str, dict]:
        """Per stream: accepted, future_stamps, out_of_order, arrival_age_s, age_s (the
        watchdog's: by stamp and by arrival) and stale (age_s > max_age)."""
        ages = self.ages(t, t_mono)
        with self._gate_lock:
            out = {name: gate.stats(t_mono) for name, gate in self.gates.items()}
        for name, entry in out.items():
            entry["age_s"] = round(ages[name], 4) if math.isfinite(ages[name]) else None
            entry["stale"] = not ages[name] <= self.max_age
        return out

    def joints_now(self) -> np.ndarray | None:
        """(J,) newest positions of all arms, in arm order; None until every arm has reported."""
        parts = [buf.latest() for buf in self._joints.values()]
        if any(p is None for p in parts):
            return None
        return np.concatenate([p[1] for p in parts])  # type: ignore[index]

    def sync_stamp(self) -> float | None:
        bufs = self._frames.values() if self.cameras else self._joints.values()
        stamps = [b.latest() for b in bufs]
        if any(s is None for s in stamps):
            return None
        return min(s[0] for s in stamps)  # type: ignore[index]

    def wait_newer(self, than: float, timeout: float) -> None:
        with self._new:
            self._new.wait_for(lambda: (self.sync_stamp() or -math.inf) > than, timeout)

    def synchronized(self, n_steps: int, dt: float) -> Observation | None:
        """The newest synchronized observation with n_steps history dt apart, or None when a
        stream has no fresh-enough sample for one of the times."""
        t = self.sync_stamp()
        if t is None:
            return None
        states, frames = [], []
        for k in range(n_steps - 1, -1, -1):
            tk = t - k * dt
            q = [b.at(tk) for b in self._joints.values()]
            f = [b.at(tk) for b in self._frames.values()]
            if any(s is None for s in q) or any(s is None for s in f):
                return None
            states.append(np.concatenate([s[1] for s in q]))  # type: ignore[index]
            frames.append([s[1] for s in f])  # type: ignore[index]
        images = np.asarray(frames, dtype=np.float32) / np.float32(255.0)  # (To, N, 3, H, W)
        return Observation(t, np.stack(states), images)


@dataclass(frozen=True)
class Command:
    stamp: float  # s, host clock: the tick's scheduled time
    position: np.ndarray  # (J,) the safe command
    mode: str  # SafetyLayer mode after this tick
    plan: list[tuple[float, np.ndarray]] = field(default_factory=list)  # safe preview


@dataclass
class RuntimeConfig:
    control_rate_hz: float
    execution: str = "ensemble"  # a key of chunking.EXECUTORS
    n_execute: int = 0  # receding / rtc: actions per chunk; 0 = the card's action_horizon
    ensemble_k: float = 0.01
    plan_points: int = 0  # > 0: each Command carries a safe preview of the next points
    over_budget: float = 0.5  # of a period: a tick finishing later than this is over budget
    # s: how long a Python thread may keep the GIL while another waits (CPython default 5 ms).
    # The control thread wakes on time but needs the GIL; the holder drops it at its next check
    # after this interval (a long C call holding it still finishes). 100 Hz with SCHED_FIFO
    # (docs/BENCHMARKS.md): 0.5 ms → period error p99 0.6-0.7 ms, 0.1 ms → 0.26 ms.
    switch_interval: float = 0.0001
    realtime_priority: int = 0  # > 0: SCHED_FIFO priority for the control thread (needs rights)

    def __post_init__(self) -> None:
        if not self.switch_interval > 0:
            raise ValueError(f"switch_interval must be > 0 s, got {self.switch_interval}")


class _Ring:
    """Preallocated float samples (no allocation per tick); keeps the newest `size`."""

    def __init__(self, size: int = 1 << 16) -> None:
        self._a = np.full(size, np.nan)
        self._n = 0

    def add(self, x: float) -> None:
        self._a[self._n % self._a.size] = x
        self._n += 1

    def values(self) -> np.ndarray:
        return self._a[: min(self._n, self._a.size)].copy()


def percentiles(x: np.ndarray) -> dict[str, float]:
    x = x[np.isfinite(x)]
    if x.size == 0:
        return {"n": 0}
    p50, p99 = np.percentile(x, [50, 99])
    return {"n": int(x.size), "p50": float(p50), "p99": float(p99), "max": float(x.max())}


class PolicyRuntime:
    """Owns the two threads. `publish(Command)` is called from the control thread, every tick;
    `on_chunk(obs_stamp, chunk)` (optional) from the inference thread, once per inference, with
    the raw chunk (K, A) in joint units just after the executor took it (so it never delays a
    command; the time it takes is `chunk_publish_s` in stats); `log(level, text)` for rare
    events (over budget, inference errors, mode changes)."""

    def __init__(
        self,
        policy: PolicyAdapter,
        observations: Observations,
        safety: SafetyConfig,
        cfg: RuntimeConfig,
        publish: Callable[[Command], None],
        log: Callable[[str, str], None] = lambda level, text: None,
        on_chunk: Callable[[float, np.ndarray], None] | None = None,
    ) -> None:
        if cfg.execution not in EXECUTORS:
            raise ValueError(f"execution must be one of {sorted(EXECUTORS)}")
        self.policy, self.obs, self.cfg = policy, observations, cfg
        self.safety = SafetyLayer(safety)
        self.publish, self.log, self.on_chunk = publish, log, on_chunk
        self.period = 1.0 / cfg.control_rate_hz
        self.executor: ChunkExecutor | None = None
        self.latency_estimate = 0.0  # s, inference
        self.counts = {"ticks": 0, "over_budget": 0, "inferences": 0, "inference_errors": 0,
                       "chunk_publish_errors": 0}  # fmt: skip
        self.periods, self.lateness = _Ring(), _Ring()
        self.inference_s, self.obs_to_command = _Ring(4096), _Ring()
        self.chunk_publish_s = _Ring(4096)
        self.first_command_wall: float | None = None
        self.realtime = False  # SCHED_FIFO granted to the control thread
        self._stop = threading.Event()
        self._lock = threading.Lock()  # safety layer: control thread vs e-stop service calls
        self._rate = RateLoop(cfg.control_rate_hz, self._stop)
        self._threads: list[threading.Thread] = []
        self._switch_interval: float | None = None  # the process's, restored by stop()

    def _make_executor(self, t0: float) -> ChunkExecutor:
        grid = StepGrid(t0, self.policy.dt)
        n = self.cfg.n_execute or int(self.policy.card["action_horizon"])
        if self.cfg.execution == "ensemble":
            return TemporalEnsemble(grid, self.cfg.ensemble_k)
        if self.cfg.execution == "receding":
            return RecedingHorizon(grid, n)
        return RealTimeChunking(grid, n)

    def warm_up(self) -> float:
        """One inference on zeros (the first run allocates); returns its duration in s."""
        card = self.policy.card
        to, j = self.policy.n_obs_steps, len(card["state_names"])
        images = np.zeros(
            (to, len(card["cameras"]), 3, *(card["cameras"][0][k] for k in ("height", "width")))
            if card["cameras"]
            else (to, 0, 3, 1, 1),
            dtype=np.float32,
        )
        t0 = time.monotonic()
        chunk = self.policy.predict(np.zeros((to, j)), images)
        self.latency_estimate = time.monotonic() - t0
        if chunk.shape != (self.policy.horizon, len(card["joint_names"])):
            raise ValueError(f"policy returned a {chunk.shape} chunk")
        return self.latency_estimate

    def start(self, current: np.ndarray) -> None:
        """Starts tracking from the measured pose `current` (J,), then both threads."""
        self._offset = time.time() - time.monotonic()
        self.executor = self._make_executor(time.monotonic() + self._offset)
        self.safety.start(current, time.time())
        gc.collect()
        gc.freeze()  # everything alive now is never scanned again
        gc.disable()
        self._switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(self.cfg.switch_interval)
        for target, name in ((self._control, "control"), (self._inference, "inference")):
            thread = threading.Thread(target=target, name=f"policy-{name}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()
        if self._switch_interval is None:
            return  # never started
        gc.enable()
        gc.unfreeze()
        sys.setswitchinterval(self._switch_interval)
        self._switch_interval = None

    def estop(self, reason: str = "e-stop") -> None:
        with self._lock:
            self.safety.estop(reason)

    def rearm(self) -> None:
        with self._lock:
            self.safety.rearm(time.time())

    @property
    def missed_ticks(self) -> int:
        return self._rate.missed

    def _control(self) -> None:
        assert self.executor is not None
        if self.cfg.realtime_priority > 0:
            try:  # on Linux, pid 0 is the calling thread
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(self.cfg.realtime_priority))
                self.realtime = True
            except (PermissionError, AttributeError, OSError) as exc:
                self.log("warn", f"no real-time priority for the control thread: {exc}")
        budget = self.cfg.over_budget * self.period
        last_wake = math.nan
        mode = self.safety.mode
        for deadline in self._rate:
            wake = time.monotonic()
            self.periods.add(wake - last_wake)
            last_wake = wake
            t = deadline + self._offset  # the tick's host-clock time
            target = self.executor.action_at(t)
            age = self.obs.age(t, deadline)
            with self._lock:
                q = self.safety.step(target, age, t)
                plan = self._preview(t) if self.cfg.plan_points else []
                new_mode = self.safety.mode
            self.publish(Command(t, q, new_mode, plan))
            done = time.monotonic()
            if self.first_command_wall is None:
                self.first_command_wall = done + self._offset
            self.counts["ticks"] += 1
            if target is not None and self.executor.last_obs_stamp is not None:
                self.obs_to_command.add(done + self._offset - self.executor.last_obs_stamp)
            self.lateness.add(done - deadline)
            if done - deadline > budget:
                self.counts["over_budget"] += 1
                self.log("warn", f"tick over budget: {1e3 * (done - deadline):.2f} ms late")
            if new_mode != mode:
                self._log_mode(mode, new_mode, t, deadline)
                mode = new_mode

    def _log_mode(self, old: str, new: str, t: float, t_mono: float) -> None:
        """A mode change is an event the log must show (never throttled away): leaving
        `running` says which input went stale, or the fault's reason."""
        if new == RUNNING:
            self.log("info", f"safety mode {old} -> {new}")
            return
        why = self.safety.fault_reason if new != HOLD else ""
        if new in (HOLD, FAULT):
            why = "; ".join(w for w in (why, self.obs.staleness(t, t_mono)) if w)
        self.log("event", f"safety mode {old} -> {new}" + (f": {why}" if why else ""))

    def _preview(self, t: float) -> list[tuple[float, np.ndarray]]:
        """The executor's next points passed through a copy of the safety layer."""
        assert self.executor is not None
        shadow = copy.deepcopy(self.safety)
        return [
            (ts, shadow.step(a, 0.0, ts)) for ts, a in self.executor.plan(t, self.cfg.plan_points)
        ]

    def _inference(self) -> None:
        assert self.executor is not None
        last_stamp = -math.inf
        dt = self.policy.dt
        while not self._stop.is_set():
            now = time.time()
            if not self.executor.needs_inference(now, self.latency_estimate):
                self._stop.wait(dt / 4)
                continue
            self.obs.wait_newer(last_stamp, timeout=0.05)
            obs = self.obs.synchronized(self.policy.n_obs_steps, dt)
            if obs is None or obs.stamp <= last_stamp:
                continue
            last_stamp = obs.stamp
            prefix = weights = None
            if isinstance(self.executor, RealTimeChunking):
                prefix, weights = self.executor.guidance(
                    obs.stamp, time.time(), self.latency_estimate, self.policy.horizon
                )
            t0 = time.monotonic()
            try:
                chunk = self.policy.predict(obs.state, obs.images, prefix, weights)
            except Exception as exc:  # the control thread holds when chunks stop coming
                self.counts["inference_errors"] += 1
                self.log("error", f"inference failed: {exc}")
                continue
            took = time.monotonic() - t0
            self.inference_s.add(took)
            # fast attack, slow decay: better to plan for a slow inference than a fast one
            self.latency_estimate = max(took, 0.9 * self.latency_estimate + 0.1 * took)
            self.executor.add_chunk(chunk, obs.stamp)
            self.counts["inferences"] += 1
            if self.on_chunk is not None:
                self._hand_out(obs.stamp, chunk)
            gc.collect(1)  # young objects only, here where a pause delays nothing

    def _hand_out(self, stamp: float, chunk: np.ndarray) -> None:
        """The chunk to `on_chunk`, timed; a failure is counted and logged, never fatal to
        the inference thread."""
        assert self.on_chunk is not None
        t0 = time.monotonic()
        try:
            self.on_chunk(stamp, chunk)
        except Exception as exc:
            self.counts["chunk_publish_errors"] += 1
            self.log("error", f"publishing the predicted chunk failed: {exc}")
            return
        self.chunk_publish_s.add(time.monotonic() - t0)

    def stats(self) -> dict:
        ex = self.executor
        periods = self.periods.values()
        return {
            **self.counts,
            "missed_ticks": self.missed_ticks,
            "realtime": self.realtime,
            "switch_interval": self.cfg.switch_interval,
            "mode": self.safety.mode,
            "fault_reason": self.safety.fault_reason,
            "inputs": self.obs.stats(time.time(), time.monotonic()),
            "safety": dict(self.safety.counts),
            "stale_actions": ex.stale if ex else 0,
            "chunks": ex.chunks if ex else 0,
            "period_error_s": percentiles(np.abs(periods - self.period)),
            "lateness_s": percentiles(self.lateness.values()),
            "inference_s": percentiles(self.inference_s.values()),
            "chunk_publish_s": percentiles(self.chunk_publish_s.values()),
            "obs_to_command_s": percentiles(self.obs_to_command.values()),
            "first_command_wall": self.first_command_wall,
        }
