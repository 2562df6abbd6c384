"""DatasetCache.scene_seeds: the simulated scenes a dataset holds, which `apprentice eval` must
not evaluate on (the export writes them into the policy card as `train_seeds`)."""

from __future__ import annotations

import json
from pathlib import Path

from apprentice.dataset import DatasetCache
from apprentice.dataset.cache import CACHE_FORMAT, META_FILE
from apprentice.recording import EpisodeWriter, WriterConfig


def _bag(path: Path, custom_data: dict[str, str]) -> Path:
    """A bag with one Bool message and the recorder's episode info in custom_data."""
    with EpisodeWriter(path, task="t", custom_data=custom_data,
                       config=WriterConfig(fsync_on_close=False)) as w:  # fmt: skip
        w.add_topic("/sim/success", "std_msgs/msg/Bool")
        w.write("/sim/success", b"\x00\x01\x00\x00\x01", log_time_ns=1_000_000_000)
    return path


def _cache(root: Path, records: list[dict]) -> DatasetCache:
    root.mkdir()
    episodes = [{"episode_id": f"episode_{i:04d}", "start": 10 * i, "length": 10,
                 "split": "val" if i == 0 else "train", "task": "t", "mcap_sha256": "x", **r}
                for i, r in enumerate(records)]  # fmt: skip
    (root / META_FILE).write_text(json.dumps({"format": CACHE_FORMAT, "episodes": episodes}))
    return DatasetCache(root)


def test_scene_seeds_come_from_the_records_or_the_bags(tmp_path: Path) -> None:
    seeded = _bag(tmp_path / "bags" / "episode_0001", {"scene": "aloha_insertion", "seed": "7"})
    person = _bag(tmp_path / "bags" / "episode_0002", {"source": "teleop"})
    cache = _cache(tmp_path / "cache", [
        {"bag": str(tmp_path / "gone"), "seed": 3},  # the builder kept it (a val episode too)
        {"bag": str(seeded)},  # a cache from before: read from the bag's custom_data
        {"bag": str(person)},  # no seed: a person's demonstration
        {"bag": str(tmp_path / "gone")},  # bag moved: unknown
    ])  # fmt: skip
    assert cache.scene_seeds() == [3, 7]
    assert [e.seed for e in cache.episodes] == [3, None, None, None]
    people = _cache(tmp_path / "people", [{"bag": str(person)}])
    assert people.scene_seeds() is None  # nothing known: the card gets no train_seeds
