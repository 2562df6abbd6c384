"""`apprentice dataset build` as a user runs it, for tests that check what a recording holds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml


def build_flagged(dataset: Path, cache: Path, config: dict) -> dict:
    """Builds `dataset` into `cache` with `config` (written beside the cache), flagged episodes
    included: the test checks the bags, not the host that recorded them. Returns dataset.json."""
    path = cache.parent / f"{cache.name}.dataset.yaml"
    path.write_text(yaml.safe_dump(config))
    built = subprocess.run(
        [sys.executable, "-m", "apprentice", "dataset", "build", str(dataset), "--out",
         str(cache), "--config", str(path), "--include-flagged"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    return json.loads((cache / "dataset.json").read_text())
