"""Shared fixtures. ``storage`` runs every conformance test once per backend.

Adding a backend to the conformance suite means adding one entry to ``BACKENDS``: a
function that builds an uninitialized storage from (tmp_path, clock, options).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from connectome_storage import StorageInterface, create_file_storage

START = 1795253400.0  # 2026-11-21T09:30:00Z


class FakeClock:
    """A clock the test moves by hand, so TTLs and time stamps are exact."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


Builder = Callable[[Path, FakeClock, dict[str, Any]], StorageInterface]


def _file(tmp_path: Path, clock: FakeClock, options: dict[str, Any]) -> StorageInterface:
    return create_file_storage(tmp_path / "storage_data", clock=clock, **options)


BACKENDS: dict[str, Builder] = {"file": _file}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_storage(
    backend: str, tmp_path: Path, clock: FakeClock
) -> Callable[..., StorageInterface]:
    """Build another storage of the current backend over the same data."""

    def make(**options: Any) -> StorageInterface:
        return BACKENDS[backend](tmp_path, clock, options)

    return make


@pytest.fixture
async def storage(make_storage: Callable[..., StorageInterface]) -> AsyncIterator[StorageInterface]:
    async with make_storage() as opened:
        yield opened
