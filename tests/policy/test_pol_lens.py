"""The lens check (policy_server.card.check_lens): the same lens at any resolution passes; another
focal length, principal point or aspect ratio is named with both cameras' intrinsics."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from tiny_act import export_tiny_act

from apprentice.cameras.uvc import nominal_spec
from apprentice.dataset.images import camera_info_record
from apprentice.policy_server.card import LENS_RTOL, PolicyRefused, check_lens, load_card
from apprentice.robot_io import CameraSpec


def record(spec: CameraSpec) -> dict:
    return camera_info_record(spec.width, spec.height, spec.k.reshape(-1), spec.distortion,
                              "plumb_bob")  # fmt: skip


def scaled(spec: CameraSpec, **factors: float) -> CameraSpec:
    values = {k: getattr(spec, k) * factors.get(k, 1.0) for k in ("fx", "fy", "cx", "cy")}
    return CameraSpec(spec.name, spec.width, spec.height, **values)


def test_same_lens_at_another_resolution_passes() -> None:
    # nominal webcam lens and the sim's convention: principal point at ((W-1)/2, (H-1)/2)
    trained = record(nominal_spec("front", 320, 240))
    for w, h in ((640, 480), (1280, 960), (128, 96), (321, 241)):
        assert check_lens("front", trained, record(nominal_spec("front", w, h))) == []
    # a calibration that differs by less than the tolerance (two calibrations of one camera)
    near = scaled(nominal_spec("front", 640, 480), fx=1.015, fy=0.99, cx=1.01)
    assert check_lens("front", trained, record(near)) == []


@pytest.mark.parametrize(
    ("live", "named"),
    [
        (scaled(nominal_spec("front", 640, 480), fx=1.3), "fx/W"),
        (scaled(nominal_spec("front", 640, 480), fx=1.025, fy=1.025), "fy/H"),
        (scaled(nominal_spec("front", 640, 480), cx=0.9), "cx/W"),
        (nominal_spec("front", 640, 360), "W/H"),  # 16:9 from a 4:3 sensor: cropped
    ],
    ids=["fx+30%", "f+2.5%", "cx-10%", "aspect"],
)
def test_another_lens_is_named_with_both_intrinsics(live: CameraSpec, named: str) -> None:
    trained = record(nominal_spec("front", 320, 240))
    (problem,) = check_lens("front", trained, record(live))
    assert problem.startswith("camera front: not the lens") and named in problem
    assert "trained 320x240 fx 277.1" in problem and f"live {live.width}x{live.height}" in problem
    assert f"fx {live.fx:.1f}" in problem and f"{LENS_RTOL:.0%}" in problem


def test_card_with_a_malformed_source_is_refused(tmp_path) -> None:
    src = record(nominal_spec("front", 320, 240))
    good = export_tiny_act(tmp_path / "good", ["a", "b"], np.zeros(2), ["front"], (32, 40),
                           intrinsics={"front": src})  # fmt: skip
    card = load_card(good)
    assert card["cameras"] == [{"name": "front", "height": 32, "width": 40, "source": src}]
    for bad in ({**src, "k": src["k"][:6]}, {**src, "width": 0}, {"k": src["k"]}):
        folder = tmp_path / "bad"
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(good, folder)
        card["cameras"][0]["source"] = bad
        (folder / "policy_card.json").write_text(json.dumps(card))
        with pytest.raises(PolicyRefused, match="camera front: source .* not a CameraInfo"):
            load_card(folder)
    with pytest.raises(ValueError, match="not a CameraInfo record"):
        export_tiny_act(tmp_path / "x", ["a", "b"], np.zeros(2), ["front"], (32, 40),
                        intrinsics={"front": {"k": src["k"]}})  # fmt: skip
