"""Shared fixtures. The conformance suite (``connectome_storage.testing``) runs once per backend.

The suite's fixtures (``clock``, ``make_storage``, ``storage``) come from the package and are
built over ``storage_builder``, which here builds the current ``backend``. Adding a backend to
the conformance suite means adding one entry to ``BACKENDS``: a function that builds an
uninitialized storage from (tmp_path, clock, options).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from connectome_storage import (
    MemoryStorage,
    StorageInterface,
    create_file_storage,
    create_postgres_storage,
    create_redis_storage,
    create_sqlite_storage,
)
from connectome_storage.testing import START, FakeClock, StorageBuilder, clock, make_storage, storage

from .postgres_server import postgres_server
from .redis_server import redis_server

# Fixtures every test here gets: the suite's (over storage_builder below) and the Redis and
# PostgreSQL servers. START and FakeClock stay importable from here.
__all__ = ["BACKENDS", "START", "FakeClock", "clock", "make_storage", "postgres_server", "redis_server", "storage"]


Builder = Callable[[Path, FakeClock, dict[str, Any]], StorageInterface]


def _file(tmp_path: Path, clock: FakeClock, options: dict[str, Any]) -> StorageInterface:
    return create_file_storage(tmp_path / "storage_data", clock=clock, **options)


def _sqlite(tmp_path: Path, clock: FakeClock, options: dict[str, Any]) -> StorageInterface:
    return create_sqlite_storage(tmp_path / "connectome.db", clock=clock, **options)


def _redis(tmp_path: Path, clock: FakeClock, options: dict[str, Any]) -> StorageInterface:
    # One shared server (make_storage passes its redis_url); a key prefix per test keeps
    # tests apart and is the same for every storage a test builds, so a fresh object
    # sees the same data.
    return create_redis_storage(key_prefix=f"test:{tmp_path.name}:", clock=clock, **options)


def _postgres(tmp_path: Path, clock: FakeClock, options: dict[str, Any]) -> StorageInterface:
    # One shared server (make_storage passes its dsn); a schema per test, as a prefix for Redis.
    return create_postgres_storage(schema=postgres_schema(tmp_path), clock=clock, **options)


def postgres_schema(tmp_path: Path) -> str:
    """The PostgreSQL schema of the test that owns ``tmp_path`` (unique in the session)."""
    return "t_" + re.sub(r"[^a-z0-9_]", "_", tmp_path.name.lower())[:60]


def _memory(tmp_path: Path, clock: FakeClock, options: dict[str, Any]) -> StorageInterface:
    # Every storage a test builds shares the first one's data, as a second process would
    # open the same tree or database.
    first = _MEMORY_DATA.get(tmp_path)
    storage = MemoryStorage({"clock": clock, **options}, share_with=first)
    _MEMORY_DATA.setdefault(tmp_path, storage)
    return storage


_MEMORY_DATA: dict[Path, MemoryStorage] = {}


def _msgpack(build: Builder) -> Builder:
    # The same backend storing every value as msgpack instead of JSON.
    return lambda tmp_path, clock, options: build(tmp_path, clock, {"serializer": "msgpack", **options})


BACKENDS: dict[str, Builder] = {
    "file": _file, "memory": _memory, "sqlite": _sqlite, "redis": _redis, "postgres": _postgres,
    "sqlite-msgpack": _msgpack(_sqlite), "redis-msgpack": _msgpack(_redis), "postgres-msgpack": _msgpack(_postgres),
}  # fmt: skip


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def storage_builder(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> StorageBuilder:
    """Build another storage of the current backend over the same data (what ``make_storage`` calls)."""
    # Only Redis and PostgreSQL runs need a server, so file and sqlite runs never start one.
    server: dict[str, Any] = {}
    if backend.startswith("redis"):
        server["redis_url"] = request.getfixturevalue("redis_server").url
    if backend.startswith("postgres"):
        server["dsn"] = request.getfixturevalue("postgres_server").dsn

    def build(clock: FakeClock, /, **options: Any) -> StorageInterface:
        return BACKENDS[backend](tmp_path, clock, {**server, **options})

    return build


def pytest_addoption(parser: pytest.Parser) -> None:
    # Sizes of the reliability tests' long forms (docs/reliability.md gives the commands).
    parser.addoption(
        "--crash-rounds",
        default="500",
        help="SIGKILLs per backend in the slow long form of tests/reliability/test_crash.py",
    )
    parser.addoption(
        "--concurrency",
        default="8x4x25",
        help="PROCESSESxCOROUTINESxCOUNT in the slow long form of tests/reliability/test_concurrency.py",
    )
    parser.addoption(
        "--hostile-examples",
        default="60",
        help="hypothesis examples per backend in tests/reliability/test_hostile_*.py (CI: 60)",
    )
