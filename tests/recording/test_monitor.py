"""The operator's status line: rates from the recorder's counts, LOW streams, terminal width."""

from __future__ import annotations

from apprentice.recording.monitor import LiveRates, short_name, status_line

NOMINAL = {
    "/follower/joint_states": 100.0,
    "/leader/follower/joint_states": 100.0,
    "/cameras/front/image_raw/compressed": 30.0,
    "/cameras/front/camera_info": 30.0,
}


def test_rates_come_from_count_differences_over_time() -> None:
    rates = LiveRates()
    assert rates.update(10.0, dict.fromkeys(NOMINAL, 0)) == {}  # one sample: no rate yet
    seen = dict(zip(NOMINAL, (50, 20, 15, 15), strict=True))
    got = rates.update(10.5, seen)
    assert got["/follower/joint_states"] == 100.0 and got["/cameras/front/camera_info"] == 30.0
    assert got["/leader/follower/joint_states"] == 40.0


def test_status_line_shows_episode_time_rates_and_flags_slow_streams() -> None:
    status = {"recording": True, "episode": "episode_0007", "elapsed_s": 12.34,
              "nominal_hz": NOMINAL}  # fmt: skip
    rates = dict(zip(NOMINAL, (100.0, 40.0, 30.0, 30.0), strict=True))
    line = status_line(status, rates)
    assert line.startswith("REC episode_0007   12.3 s | Hz: follower 100 ")
    assert "leader/follower 40 LOW" in line and "front 30" in line
    assert "camera_info" not in line  # shown only when it is LOW
    rates["/cameras/front/camera_info"] = 3.0
    assert "front/camera_info 3 LOW" in status_line(status, rates)
    idle = status_line({"recording": False, "nominal_hz": NOMINAL}, {})
    assert idle == "idle | measuring rates..."
    cut = status_line(status, rates, width=40)
    assert len(cut) == 40 and cut.endswith("...")


def test_short_names() -> None:
    assert short_name("/cameras/wrist/image_raw") == "wrist"
    assert short_name("/cameras/wrist/camera_info") == "wrist/camera_info"
    assert short_name("/left/joint_states") == "left"
    assert short_name("/leader/left/joint_states") == "leader/left"
    assert short_name("/left/commands") == "left/commands"
