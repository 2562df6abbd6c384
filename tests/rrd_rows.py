"""Reading an .rrd back for tests: per entity the rows on the `time` timeline and their range.
Importable from every test folder (tests/ is on sys.path through tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
from rerun.chunk import RrdReader


def rrd_rows(path: Path) -> tuple[dict[str, tuple[int, int, int]], dict[str, list[str]], int]:
    """(entity → (rows, first, last stamp in ns) on `time`; entity → archetypes of its static
    data; the number of blueprint stores)."""
    reader = RrdReader(path)
    rows: dict[str, tuple[int, int, int]] = {}
    static: dict[str, list[str]] = {}
    for chunk in reader.stream():
        entity = chunk.entity_path.lstrip("/")
        if chunk.is_static:
            static.setdefault(entity, []).append(str(chunk.to_record_batch().schema))
            continue
        if "time" not in chunk.timeline_names:
            continue
        t = chunk.to_record_batch().column("time").cast(pa.int64()).to_numpy()
        n, lo, hi = rows.get(entity, (0, np.iinfo(np.int64).max, np.iinfo(np.int64).min))
        rows[entity] = (n + len(t), min(lo, int(t.min())), max(hi, int(t.max())))
    return rows, static, len(reader.blueprints())
