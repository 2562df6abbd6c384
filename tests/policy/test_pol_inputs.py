"""The policy's input buffers (policy_server.loop.Observations) under bad stamps, with fake
clocks: a frame stamped +30 s is dropped and counted and the frames after it feed inference;
the watchdog's age follows arrivals, so a camera that stops trips the hold and the fault after
it; stamps that lag make the inputs stale although they arrive."""

from __future__ import annotations

import numpy as np
import pytest

from apprentice.policy_server.loop import Observations
from apprentice.policy_server.safety import FAULT, HOLD, RUNNING, SafetyConfig, SafetyLayer

T0 = 1_763_900_000.0  # s, host clock
DT = 0.02  # s, 50 Hz inputs
MAX_AGE = 0.1  # s
SAFETY = SafetyConfig(
    lower=np.array([-1.0]), upper=np.array([1.0]), max_velocity=np.array([1.0]),
    max_accel=np.array([10.0]), period=DT, hold_after=MAX_AGE, safe_after=1.0,
)  # fmt: skip


class Clocks:
    """The host clock and the monotonic clock, moving together."""

    def __init__(self) -> None:
        self.wall, self.mono = T0, 100.0

    def advance(self, dt: float) -> None:
        self.wall += dt
        self.mono += dt


@pytest.fixture
def setup() -> tuple[Observations, Clocks, list[tuple[str, str]]]:
    clocks, logs = Clocks(), []
    obs = Observations(
        ["right"], ["top"], MAX_AGE, log=lambda level, text: logs.append((level, text)),
        clock=lambda: clocks.wall, monotonic=lambda: clocks.mono,
    )  # fmt: skip
    return obs, clocks, logs


def _tick(obs: Observations, clocks: Clocks, k: int, camera_stamp: float | None = None) -> None:
    """One input period: a joint state and a frame (stamped 5 ms before arrival by default)."""
    clocks.advance(DT)
    obs.push_joints("right", clocks.wall - 0.005, np.array([0.1 * k]))
    obs.push_frame(
        "top",
        clocks.wall - 0.005 if camera_stamp is None else camera_stamp,
        np.full((3, 2, 2), k % 256, np.uint8),
    )


def test_a_future_frame_is_dropped_and_inference_goes_on(setup) -> None:
    obs, clocks, logs = setup
    for k in range(10):
        _tick(obs, clocks, k)
    before = obs.synchronized(2, DT)
    assert before is not None
    _tick(obs, clocks, 10, camera_stamp=clocks.wall + 30.0)  # the bad frame
    for k in range(11, 20):
        _tick(obs, clocks, k)
        latest = obs.synchronized(2, DT)
        assert latest is not None and latest.stamp == pytest.approx(clocks.wall - 0.005)
        assert latest.images[-1, 0, 0, 0, 0] == pytest.approx(k / 255)  # this tick's frame
    assert obs.age(clocks.wall, clocks.mono) < MAX_AGE
    stats = obs.stats(clocks.wall, clocks.mono)["camera top"]
    assert stats["future_stamps"] == 1 and stats["out_of_order"] == 0
    assert stats["accepted"] == 19 and stats["stale"] is False
    assert obs.stats(clocks.wall, clocks.mono)["arm right"]["future_stamps"] == 0
    events = [text for level, text in logs if level == "event"]
    assert len(events) == 1 and events[0].startswith("camera top: dropped 1 stamped more")


def test_a_camera_that_stops_after_a_future_frame_holds_then_faults(setup) -> None:
    obs, clocks, _ = setup
    safety = SafetyLayer(SAFETY)
    safety.start(np.zeros(1), clocks.wall)
    for k in range(10):
        _tick(obs, clocks, k)
        safety.step(np.array([0.1]), obs.age(clocks.wall, clocks.mono), clocks.wall)
    assert safety.mode == RUNNING
    _tick(obs, clocks, 10, camera_stamp=clocks.wall + 0.45)  # ahead, within the bound
    _tick(obs, clocks, 11, camera_stamp=clocks.wall + 30.0)  # ahead, past it
    modes = []
    for _ in range(int(2.5 / DT)):  # the camera stops for 2.5 s; the arm keeps reporting
        clocks.advance(DT)
        obs.push_joints("right", clocks.wall - 0.005, np.zeros(1))
        safety.step(np.array([0.1]), obs.age(clocks.wall, clocks.mono), clocks.wall)
        modes.append(safety.mode)
    # hold once the last accepted frame arrived more than MAX_AGE ago, although it was stamped
    # 0.45 s ahead (by stamps alone the hold would wait 0.45 s more), then the latched fault
    first_hold = modes.index(HOLD)
    assert first_hold * DT == pytest.approx(MAX_AGE, abs=1.5 * DT), modes
    assert modes.index(FAULT) * DT == pytest.approx(SAFETY.safe_after, abs=1.5 * DT)
    assert set(modes[modes.index(FAULT) :]) == {FAULT}
    stats = obs.stats(clocks.wall, clocks.mono)["camera top"]
    assert stats["stale"] is True and stats["age_s"] == pytest.approx(2.52)  # since the +0.45
    assert "camera top: last accepted message arrived" in obs.staleness(clocks.wall, clocks.mono)


def test_stamps_that_lag_are_stale_although_they_arrive(setup) -> None:
    obs, clocks, _ = setup
    for k in range(10):
        _tick(obs, clocks, k, camera_stamp=clocks.wall + DT - 0.3)  # 0.3 s behind
    assert obs.age(clocks.wall, clocks.mono) == pytest.approx(0.3)
    assert obs.stats(clocks.wall, clocks.mono)["camera top"]["stale"] is True
    assert obs.synchronized(1, DT) is None  # no joint state within MAX_AGE of the frames


def test_no_input_yet_is_infinitely_old(setup) -> None:
    obs, clocks, _ = setup
    assert obs.age(clocks.wall, clocks.mono) == np.inf
    obs.push_frame("top", clocks.wall + 1.0, np.zeros((3, 2, 2), np.uint8))  # rejected
    assert obs.never_accepted(["right"], ["top"]) == ["arm right", "camera top"]
    _tick(obs, clocks, 0)
    obs.push_frame("top", clocks.wall + 1.0, np.zeros((3, 2, 2), np.uint8))  # rejected
    assert obs.age(clocks.wall, clocks.mono) == pytest.approx(0.005, abs=1e-6)
    stats = obs.stats(clocks.wall, clocks.mono)
    assert stats["camera top"]["future_stamps"] == 2 and stats["camera top"]["accepted"] == 1
    assert obs.never_accepted(["right"], ["top"]) == []
