"""`apprentice eval` without a simulator: its refusals, `eval compare`, the eval graph's arms,
the episode artifacts. (Closed-loop runs: tests/ros/test_eval.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from tiny_act import export_tiny_act, flip_weight_bits

from apprentice.cli import main
from apprentice.eval_cli import plot_joints, policy_arms, write_video
from apprentice.sim.scenes import get_scene


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("apprentice: error: "), err
    return lines[0]


def test_eval_refuses_seeds_the_policy_was_trained_on(tmp_path: Path, capsys) -> None:
    # the demo records seeds 1-50 (record graph seed 0, one reset per episode)
    folder = export_tiny_act(tmp_path / "policy", ["j0", "j1"], np.zeros(2), ["top"], (32, 40),
                             train_seeds=range(1, 51))  # fmt: skip
    card = json.loads((folder / "policy_card.json").read_text())
    assert card["train_seeds"] == list(range(1, 51))
    out = tmp_path / "eval"
    code = main(["eval", "--policy", str(folder), "--seed0", "40", "--episodes", "20",
                 "--out", str(out)])  # fmt: skip
    assert code == 2
    line = _one_error_line(capsys.readouterr().err)
    assert (
        "eval seeds 40–59 include 11 the policy was trained on (40–50; its dataset: 1–50)" in line
    )
    assert "--seed0 51" in line and "--allow-train-seeds" in line
    assert not out.exists()  # refused before anything ran


def test_eval_needs_a_policy_and_an_episode(tmp_path: Path, capsys) -> None:
    assert main(["eval"]) == 2
    assert "eval needs --policy" in _one_error_line(capsys.readouterr().err)
    assert main(["eval", "--policy", str(tmp_path), "--episodes", "0"]) == 2
    assert "--episodes must be at least 1" in _one_error_line(capsys.readouterr().err)


def _eval_folder(path: Path, stages: list[int], seed0: int = 1000, **extra) -> Path:
    rows = [{"episode": i, "seed": seed0 + i, "success": s == 4, "success_at_end": s == 4,
             "max_stage": s} for i, s in enumerate(stages)]  # fmt: skip
    path.mkdir(parents=True)
    results = {"policy": {"dir": "/p", "type": "act", "card_sha256": "ab" * 32},
               "policy_type": "act", "graph": "eval_sim_aloha", "task": "transfer_cube",
               **extra, "rows": rows}  # fmt: skip
    (path / "results.json").write_text(json.dumps(results))
    return path


def test_eval_compare_prints_rates_intervals_and_significance(tmp_path: Path, capsys) -> None:
    a = _eval_folder(tmp_path / "a", [4] * 100 + [1] * 100)  # 50 %
    b = _eval_folder(tmp_path / "b", [4] * 190 + [2] * 10, seed0=2000)  # 95 %
    assert main(["eval", "compare", str(a), str(b)]) == 0
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    assert lines[0] == (f"A  {a}: act policy /p (card abababababab), transfer_cube, 200 episodes "
                        "on seeds 1000–1199")  # fmt: skip
    assert lines[1].startswith(f"B  {b}:") and "seeds 2000–2199" in lines[1]
    table = {line.split()[0]: line for line in lines[3:6]}
    assert table["success"].split()[1:5] == ["100/200", "50", "%", "[43,"]
    assert "190/200 95 %" in table["success"] and table["success"].endswith("yes")
    assert "+45 points" in table["success"]
    assert table["touch"].endswith("no")  # both 100 %
    assert table["lift"].split()[1] == "100/200" and table["lift"].endswith("yes")
    assert "Newcombe" in printed and "same seeds" not in printed

    # 85 % and 95 % on the same 20 seeds: not significant
    c = _eval_folder(tmp_path / "c", [4] * 17 + [1] * 3)
    d = _eval_folder(tmp_path / "d", [4] * 19 + [1])
    assert main(["eval", "compare", str(c), str(d)]) == 0
    printed = capsys.readouterr().out
    success = next(line for line in printed.splitlines() if line.startswith("success"))
    assert "17/20 85 % [64, 95]" in success and "19/20 95 % [76, 99]" in success
    assert success.endswith("no") and "same seeds in both" in printed


def test_eval_compare_reads_results_from_before_the_summary_fields(tmp_path: Path, capsys) -> None:
    """results.json of older evals: "policy" a path, no task (found through the graph)."""
    old = _eval_folder(tmp_path / "old", [4, 4, 1, 0])
    results = json.loads((old / "results.json").read_text())
    del results["task"]
    results["policy"] = "/runs/demo/run/policy"
    (old / "results.json").write_text(json.dumps(results))
    new = _eval_folder(tmp_path / "new", [4, 4, 4, 2])
    assert main(["eval", "compare", str(old), str(new)]) == 0
    printed = capsys.readouterr().out
    assert "act policy /runs/demo/run/policy, transfer_cube, 4 episodes" in printed
    assert [line.split()[0] for line in printed.splitlines()[3:6]] == ["success", "touch", "lift"]


def test_eval_compare_of_wrong_folders_is_one_line(tmp_path: Path, capsys) -> None:
    good = _eval_folder(tmp_path / "good", [4, 1])
    (tmp_path / "empty").mkdir()
    for a, b, message in (
        (good, tmp_path / "empty", f"{tmp_path / 'empty'}: not an eval folder (no results.json)"),
        (tmp_path / "nope", good, f"{tmp_path / 'nope'}: no such eval folder"),
    ):
        assert main(["eval", "compare", str(a), str(b)]) == 2
        assert _one_error_line(capsys.readouterr().err) == f"apprentice: error: {message}"
    other = _eval_folder(tmp_path / "insertion", [4, 1], task="insertion")
    assert main(["eval", "compare", str(good), str(other)]) == 2
    assert "not comparable" in _one_error_line(capsys.readouterr().err)


def test_policy_arms_follow_the_card_joint_order() -> None:
    arms = {a.name: list(a.joints) for a in get_scene("aloha_transfer_cube").arms}
    assert policy_arms({"joint_names": arms["left"] + arms["right"]},
                       "aloha_transfer_cube") == ["left", "right"]  # fmt: skip
    assert policy_arms({"joint_names": arms["right"]}, "aloha_transfer_cube") == ["right"]
    with pytest.raises(ValueError, match="not whole arms"):
        policy_arms({"joint_names": arms["left"][:3]}, "aloha_transfer_cube")


def test_write_video_keeps_every_frame_enlarged(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    frames = [np.full((48, 64, 3), 10 * i, np.uint8) for i in range(12)]
    frames[5] = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    path = write_video(frames, tmp_path / "v" / "ep.avi", fps=30.0)
    cap = cv2.VideoCapture(str(path))
    read = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        read.append(frame)
    cap.release()
    assert len(read) == 12
    assert read[0].shape == (240, 320, 3)  # 48 → 240 rows: 5x, nearest pixel
    # grey levels survive MJPEG within a few counts
    assert abs(float(read[7].mean()) - 70) < 4 and abs(float(read[2].mean()) - 20) < 4
    with pytest.raises(ValueError):
        write_video([], tmp_path / "empty.avi", fps=30.0)


def test_plot_joints_writes_a_png(tmp_path: Path) -> None:
    t = np.linspace(0, 2, 50)
    meas = [(1000 + s, np.array([np.sin(s), np.cos(s)])) for s in t]
    cmds = [(1000 + s, np.array([np.sin(s), 0.5])) for s in t[::2]]
    path = plot_joints({"right": (["a", "b"], meas, cmds), "left": (["c", "d"], [], [])},
                       tmp_path / "p.png", title="ep")  # fmt: skip
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    img = cv2.imread(str(path))
    assert img.shape[0] > img.shape[1] / 2  # two panels stacked


def test_eval_of_a_corrupt_policy_is_one_line(tmp_path: Path) -> None:
    """Three flipped bits in the weights load and run; the card's SHA-256 refuses them."""
    folder = export_tiny_act(tmp_path / "policy", ["j0", "j1"], np.zeros(2), ["top"], (32, 40))
    flip_weight_bits(folder / "policy.onnx")
    out = subprocess.run([sys.executable, "-m", "apprentice", "eval", "--policy", str(folder),
                          "--out", str(tmp_path / "eval")], capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert f"apprentice: error: {folder / 'policy.onnx'}: sha256 " in out.stderr, out.stderr
    assert "changed since export" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert not (tmp_path / "eval").exists()  # refused before anything ran
