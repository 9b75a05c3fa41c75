"""Fixtures of the Redis backend's own tests: a key prefix per test, a plain client to look
at what the storage wrote, and storages built on the session's real redis-server.

Test modules import the functions (pytest finds fixtures among a module's globals); each is
registered under its short name (``prefix``, ``raw``, ``make``, ``storage``), so the
imported names never clash with the test functions' parameters.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio

from connectome_storage import RedisStorage, create_redis_storage

from ..conftest import FakeClock
from ..redis_server import RedisServer

__all__ = ["make_fixture", "prefix_fixture", "raw_fixture", "storage_fixture"]


@pytest.fixture(name="prefix")
def prefix_fixture(tmp_path: Path) -> str:
    return f"test:{tmp_path.name}:"


@pytest.fixture(name="raw")
async def raw_fixture(redis_server: RedisServer) -> AsyncIterator[Any]:
    """A plain client to look at what the storage wrote."""
    client = redis.asyncio.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


@pytest.fixture(name="make")
def make_fixture(redis_server: RedisServer, prefix: str, clock: FakeClock) -> Callable[..., RedisStorage]:
    def build(**options: Any) -> RedisStorage:
        options = {"key_prefix": prefix, "clock": clock, **options}
        storage = create_redis_storage(options.pop("url", redis_server.url), **options)
        assert isinstance(storage, RedisStorage)
        return storage

    return build


@pytest.fixture(name="storage")
async def storage_fixture(make: Callable[..., RedisStorage]) -> AsyncIterator[RedisStorage]:
    async with make() as opened:
        yield opened
