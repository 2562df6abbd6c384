"""An eval episode drawn by `apprentice.viz.rollout.log_rollout`, saved to an .rrd and read back
(rerun.chunk.RrdReader): every entity holds as many samples as the rollout's arrays, at their
stamps. Synthetic eval folders here; a real one in tests/ros/test_eval.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rerun as rr
from rrd_rows import rrd_rows

from apprentice.errors import UserValueError
from apprentice.eval_cli import write_video
from apprentice.sim.scenes import get_scene
from apprentice.viz.rollout import log_rollout

T0 = 1_765_000_000.0  # s, host clock
ARM = get_scene("aloha_transfer_cube").arms[1]  # right
NAMES = list(ARM.joints)
J, H, C, F = len(NAMES), 20, 12, 9  # joints, chunk points, chunks, video frames


def ns(t) -> int:
    return int(round(float(t) * 1e9))


def _eval_folder(tmp: Path, new: bool) -> Path:
    """An eval folder with one episode of the right arm: 50 joint states at 50 Hz, 40
    commands, and when `new`: C chunks, the frames' stamps and the task messages."""
    folder = tmp / ("eval-new" if new else "eval-old")
    rng = np.random.default_rng(0)
    arrays = {
        "right_names": np.asarray(NAMES),
        "right_joints_t": T0 + np.arange(50) * 0.02,
        "right_joints": ARM.home + 0.01 * rng.standard_normal((50, J)),
        "right_commands_t": T0 + 0.1 + np.arange(40) * 0.02,
        "right_commands": ARM.home + 0.01 * rng.standard_normal((40, J)),
    }
    if new:
        arrays.update({
            "right_chunk_t": T0 + 0.05 + np.arange(C) * 0.04,
            "right_chunks": rng.standard_normal((C, H, J)).astype(np.float32),
            "right_chunk_offsets": np.arange(H) * 0.02,
            "top_frames_t": T0 + 0.01 + np.arange(F) / 30,
            "success_t": T0 + np.arange(10) * 0.1, "success": np.r_[np.zeros(9), 1],
            "stage_t": T0 + np.arange(10) * 0.1, "stage": np.minimum(np.arange(10), 4),
        })  # fmt: skip
    (folder / "rollouts").mkdir(parents=True)
    np.savez_compressed(folder / "rollouts" / "episode_000.npz", **arrays)
    frames = [np.full((48, 64, 3), 20 * i, np.uint8) for i in range(F)]
    write_video(frames, folder / "videos" / "episode_000.avi", fps=30.0)
    row = {"episode": 0, "seed": 7, "success": True, "max_stage": 4,
           "rollout": "/moved/away.npz", "video": "/moved/away.avi"}  # fmt: skip
    results = {"scene": "aloha_transfer_cube", "policy_params": {"arms": ["right"]},
               "rows": [row]}  # fmt: skip
    (folder / "results.json").write_text(json.dumps(results))
    return folder


def _save(folder: Path, out: Path, episode=0):
    rec = rr.RecordingStream("apprentice-test")
    rec.save(out)
    notes: list[str] = []
    view = log_rollout(rec, folder, episode, say=notes.append)
    rec.flush()
    rec.disconnect()
    return view, notes, *rrd_rows(out)


def test_rollout_entities_match_the_npz(tmp_path: Path) -> None:
    folder = _eval_folder(tmp_path, new=True)
    view, notes, rows, static, blueprints = _save(folder, tmp_path / "ep.rrd")
    with np.load(folder / "rollouts" / "episode_000.npz") as z:
        for j in NAMES:
            for kind, key in (("state", "joints"), ("command", "commands")):
                t = z[f"right_{key}_t"]
                assert rows[f"joints/right/{j}/{kind}"] == (len(t), ns(t[0]), ns(t[-1]))
            # every chunk's H points, point k at its stamp + k/50 s
            last = T0 + 0.05 + (C - 1) * 0.04 + (H - 1) * 0.02
            assert rows[f"joints/right/{j}/chunk"] == (C * H, ns(T0 + 0.05), ns(last))
            assert any("SeriesPoints" in s for s in static[f"joints/right/{j}/chunk"])
        ft = z["top_frames_t"]
        assert rows["cameras/eval"] == (F, ns(ft[0]), ns(ft[-1]))
        assert rows["task/success"] == (10, ns(T0), ns(T0 + 0.9))
    assert view.counts["right/chunk"] == C * H and view.cameras == ["eval"]
    assert view.scene == "aloha_transfer_cube" and any(e.startswith("robot/") for e in static)
    assert blueprints == 1 and notes == [], notes


def test_older_rollouts_draw_what_they_have_and_say_the_rest(tmp_path: Path) -> None:
    folder = _eval_folder(tmp_path, new=False)
    view, notes, rows, _, _ = _save(folder, tmp_path / "old.rrd")
    assert not [e for e in rows if e.endswith("/chunk")]
    assert len(rows[f"joints/right/{NAMES[0]}/state"]) == 3
    assert rows["task/success"][0] == 1 and rows["cameras/eval"][0] == F
    text = "\n".join(notes)
    assert "no predicted chunks" in text and "times estimated" in text
    assert "no task messages" in text
    with pytest.raises(UserValueError, match="no episode 3 \\(episodes: 0\\)"):
        _save(folder, tmp_path / "none.rrd", episode=3)
