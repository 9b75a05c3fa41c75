"""Fixtures for the hypothesis tests: every backend open at once, on one event loop.

Hypothesis runs many examples inside one test function and fixtures are not rebuilt
between examples, so a test opens one storage per backend for its whole run and each
example cleans up after itself. The tests are synchronous and drive the storages through
one ``asyncio.Runner``, whose loop the Redis client and aiosqlite connection stay bound to.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, settings

from connectome_storage import (
    StorageInterface,
    create_file_storage,
    create_memory_storage,
    create_postgres_storage,
    create_redis_storage,
    create_sqlite_storage,
)

from ..conftest import FakeClock

T = TypeVar("T")


class EveryBackend:
    """One storage per backend (file pretty, file compact, SQLite, Redis, PostgreSQL, memory) over fresh data.

    The file trees and the database live deep below ``tmp_path`` (``outer``), so that a
    write escaping its folder would land somewhere ``stray_paths`` sees.
    """

    def __init__(self, tmp_path: Path, redis_url: str, postgres_dsn: str) -> None:
        self.outer = tmp_path
        self.file_roots = {
            "file": tmp_path / "a" / "b" / "c" / "storage_data",
            "file-compact": tmp_path / "a" / "b" / "d" / "storage_data",
        }
        self.sqlite_dir = tmp_path / "a" / "b" / "e"
        self.clock = FakeClock()
        self.storages: dict[str, StorageInterface] = {
            "file": create_file_storage(self.file_roots["file"], clock=self.clock),
            "file-compact": create_file_storage(
                self.file_roots["file-compact"], clock=self.clock, pretty_print_json=False
            ),
            "sqlite": create_sqlite_storage(self.sqlite_dir / "connectome.db", clock=self.clock),
            "redis": create_redis_storage(redis_url, key_prefix=f"test:hostile:{uuid.uuid4().hex}:", clock=self.clock),
            "postgres": create_postgres_storage(postgres_dsn, schema=f"t_hostile_{uuid.uuid4().hex}", clock=self.clock),
            "memory": create_memory_storage(clock=self.clock),
        }
        self._runner = asyncio.Runner()

    def run(self, make: Callable[[], Awaitable[T]]) -> T:
        """Run one coroutine (made by ``make``) on the shared loop."""

        async def call() -> T:
            return await make()

        return self._runner.run(call())

    def open(self) -> None:
        for storage in self.storages.values():
            self.run(storage.initialize)

    def close(self) -> None:
        try:
            for storage in self.storages.values():
                self.run(storage.shutdown)
        finally:
            self._runner.close()

    def stray_paths(self) -> list[Path]:
        """Every path under ``outer`` that is not a storage folder, inside one, or above one.

        The housekeeping folders (backups, locks, journal) are not entered: they are
        inside a storage folder whatever they hold, and they grow with every example.
        """
        allowed = [*self.file_roots.values(), self.sqlite_dir]
        strays = []
        for dirpath, dirs, files in os.walk(self.outer):
            folder = Path(dirpath)
            if folder in self.file_roots.values():
                dirs[:] = [d for d in dirs if d not in (".backups", ".locks", ".journal")]
            for name in dirs + files:
                path = folder / name
                if not any(path == a or a in path.parents or path in a.parents for a in allowed):
                    strays.append(path)
        return strays


@pytest.fixture
def every_backend(tmp_path: Path, redis_server: Any, postgres_server: Any) -> Iterator[EveryBackend]:
    backends = EveryBackend(tmp_path, redis_server.url, postgres_server.dsn)
    backends.open()
    try:
        yield backends
    finally:
        backends.close()


@pytest.fixture
def hostile_settings(request: pytest.FixtureRequest) -> settings:
    """Hypothesis settings: ``--hostile-examples`` examples (60 in CI), no deadline."""
    return settings(
        max_examples=int(request.config.getoption("--hostile-examples")),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
