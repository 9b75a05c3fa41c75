"""The suite's fixtures ``clock``, ``make_storage`` and ``storage``, over the one fixture a user provides."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import pytest

from ..interface import StorageInterface

__all__ = ["START", "FakeClock", "StorageBuilder", "clock", "make_storage", "storage"]

START = 1795253400.0  # 2026-11-21T09:30:00Z: where every FakeClock starts


class FakeClock:
    """A clock the test moves by hand, so TTLs and time stamps are exact."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class StorageBuilder(Protocol):
    """What the ``storage_builder`` fixture returns.

    Each call returns a new, uninitialized storage over the same data as every other call
    within one test (a second process opening the same store), reading time from ``clock``
    and passing ``options`` (``default_cache_ttl=60``, ...) on as storage options.
    """

    def __call__(self, clock: FakeClock, /, **options: Any) -> StorageInterface: ...


def _require_asyncio_auto_mode(config: pytest.Config) -> None:
    """Fail the test with the setting to change when pytest-asyncio would not run the suite's async tests.

    The suite's tests and its ``storage`` fixture are plain ``async def`` functions, which
    only pytest-asyncio's auto mode runs; in strict mode pytest would report them as not
    natively supported, which does not say what to change.
    """
    if not config.pluginmanager.hasplugin("asyncio"):
        pytest.fail(
            "connectome_storage.testing needs pytest-asyncio: pip install pytest-asyncio "
            '(or connectome-storage[testing]) and set asyncio_mode = "auto" in the pytest configuration',
            pytrace=False,
        )
    # pytest-asyncio's own precedence: the --asyncio-mode option, then the ini setting.
    mode = config.getoption("asyncio_mode", None) or config.getini("asyncio_mode")
    if mode != "auto":
        pytest.fail(
            f"connectome_storage.testing needs pytest-asyncio's auto mode, but asyncio_mode is {mode!r}: set "
            'asyncio_mode = "auto" in the pytest configuration ([tool.pytest.ini_options] in pyproject.toml, '
            "[pytest] in pytest.ini), or run pytest with --asyncio-mode=auto",
            pytrace=False,
        )


@pytest.fixture
def clock() -> FakeClock:
    """The test's clock; every storage ``make_storage`` builds reads time from it."""
    return FakeClock()


@pytest.fixture
def make_storage(
    storage_builder: StorageBuilder, clock: FakeClock, request: pytest.FixtureRequest
) -> Callable[..., StorageInterface]:
    """Build another storage over the test's data: ``make_storage(**options)``, uninitialized."""
    # Every async test of the suite reaches a storage through here, so this is where a
    # configuration that would not run them is reported.
    _require_asyncio_auto_mode(request.config)

    def make(**options: Any) -> StorageInterface:
        return storage_builder(clock, **options)

    return make


@pytest.fixture
async def storage(make_storage: Callable[..., StorageInterface]) -> AsyncIterator[StorageInterface]:
    """An initialized storage, shut down after the test."""
    async with make_storage() as opened:
        yield opened
