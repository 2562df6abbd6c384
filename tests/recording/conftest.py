"""Fixtures of the recording tests."""

from __future__ import annotations

import pytest


class FakeMonotonic:
    """A monotonic clock the test advances: chunk ageing without sleeping."""

    def __init__(self) -> None:
        self.t = 0.0  # s

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> FakeMonotonic:
    return FakeMonotonic()
