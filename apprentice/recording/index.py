"""The index of a dataset folder: one entry per recorded episode, in `<root>/index.json`.

JSON rather than CSV: per-topic counts and the list of quality reasons are nested, and a
JSON file stays readable by hand and by any tool. Every change rewrites the whole file
through a temporary file and a rename (readers never see a torn index) under an exclusive
lock (the recorder and a CLI may change it at the same time).
"""

from __future__ import annotations

import fcntl
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from .episode import EpisodeSummary, write_atomic
from .quality import QualityVerdict

INDEX_FILE = "index.json"
_LOCK_FILE = ".index.lock"
_FORMAT = "apprentice-dataset-index"
_VERSION = 1

Status = Literal["kept", "discarded"]


@dataclass(frozen=True)
class EpisodeEntry:
    episode_id: str
    task: str
    start_time_ns: int  # first message's log time, ns since epoch
    duration_s: float
    topic_counts: dict[str, int]
    passed: bool  # quality verdict
    reasons: tuple[str, ...]  # why it failed; empty when it passed
    bag: str  # bag folder, relative to the dataset root
    status: Status = "kept"
    recovered: bool = False  # rewritten by recover() after a crash
    note: str = ""  # e.g. why it was discarded
    start_time_iso: str = field(default="")  # UTC, for people reading the file

    def __post_init__(self) -> None:
        if not self.start_time_iso:
            iso = datetime.fromtimestamp(self.start_time_ns * 1e-9, tz=timezone.utc).isoformat()
            object.__setattr__(self, "start_time_iso", iso)
        object.__setattr__(self, "reasons", tuple(self.reasons))

    @classmethod
    def from_episode(
        cls, root: str | Path, summary: EpisodeSummary, verdict: QualityVerdict
    ) -> EpisodeEntry:
        """The entry of a closed (or recovered) episode bag inside the dataset root."""
        bag = summary.bag_dir.resolve().relative_to(Path(root).resolve())
        return cls(
            episode_id=summary.bag_dir.name,
            task=summary.custom_data.get("task", ""),
            start_time_ns=summary.start_time_ns,
            duration_s=summary.duration_ns * 1e-9,
            topic_counts=dict(summary.topic_counts),
            passed=verdict.passed,
            reasons=verdict.reasons,
            bag=bag.as_posix(),
            recovered="recovered_from" in summary.custom_data,
        )


class DatasetIndex:
    """Episodes of one dataset folder."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.path = self.root / INDEX_FILE

    def list(self, *, include_discarded: bool = False) -> list[EpisodeEntry]:
        entries = self._load()
        return [e for e in entries if include_discarded or e.status == "kept"]

    def get(self, episode_id: str) -> EpisodeEntry:
        for e in self._load():
            if e.episode_id == episode_id:
                return e
        raise KeyError(f"no episode {episode_id} in {self.path}")

    def append(self, entry: EpisodeEntry) -> None:
        with self._locked():
            entries = self._load()
            if any(e.episode_id == entry.episode_id for e in entries):
                raise ValueError(f"episode {entry.episode_id} is already in {self.path}")
            self._bag_path(entry)  # refuses a bag outside the dataset before it is listed
            self._save([*entries, entry])

    def discard(self, episode_id: str, note: str = "") -> EpisodeEntry:
        """Marks the episode discarded, then deletes its bag folder. Idempotent."""
        with self._locked():
            entries = self._load()
            i = next((k for k, e in enumerate(entries) if e.episode_id == episode_id), None)
            if i is None:
                raise KeyError(f"no episode {episode_id} in {self.path}")
            e = entries[i]
            bag = self._bag_path(e)
            # Marked first: a crash between the two steps leaves a discarded entry whose bag
            # is still there (discard again deletes it), never a kept entry without a bag.
            entries[i] = replace(e, status="discarded", note=note or e.note)
            self._save(entries)
            shutil.rmtree(bag, ignore_errors=True)
            return entries[i]

    def next_episode_id(self, prefix: str = "episode_") -> str:
        """`prefix` + the next free 4-digit number, counting discarded episodes too."""
        used = {e.episode_id for e in self._load()} | {p.name for p in self.root.iterdir()}
        n = 0
        while f"{prefix}{n:04d}" in used:
            n += 1
        return f"{prefix}{n:04d}"

    def _bag_path(self, entry: EpisodeEntry) -> Path:
        bag = (self.root / entry.bag).resolve()
        if not bag.is_relative_to(self.root.resolve()) or bag == self.root.resolve():
            raise ValueError(f"bag {entry.bag} of {entry.episode_id} is not inside {self.root}")
        return bag

    def _load(self) -> list[EpisodeEntry]:
        if not self.path.exists():
            return []
        doc = json.loads(self.path.read_text("utf-8"))
        if doc.get("format") != _FORMAT or doc.get("version") != _VERSION:
            raise ValueError(f"{self.path} is not a version {_VERSION} {_FORMAT}")
        return [EpisodeEntry(**e) for e in doc["episodes"]]

    def _save(self, entries: list[EpisodeEntry]) -> None:
        doc = {"format": _FORMAT, "version": _VERSION, "episodes": [asdict(e) for e in entries]}
        write_atomic(self.path, (json.dumps(doc, indent=1) + "\n").encode())

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.root / _LOCK_FILE, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
