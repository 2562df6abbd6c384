"""Fixtures of the servo-bus tests: each test runs on both protocols against the emulator in
its own process (a pseudo-terminal, byte by byte)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from apprentice.drivers.emulator import EmulatorProcess

EMULATED_IDS = [1, 2, 3, 4, 5, 6]


@pytest.fixture(params=["dynamixel", "feetech"])
def protocol(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def emu(protocol: str) -> Iterator[EmulatorProcess]:
    with EmulatorProcess(protocol, EMULATED_IDS, tau_s=0.01) as e:
        yield e
