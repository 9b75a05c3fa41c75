"""Fixtures of the Redis backend's own tests: a key prefix per test, a plain client to look
at what the storage wrote, and storages built on the session's real redis-server; and two
helpers those tests share (``eventually``, ``commands_of``).

Test modules import the functions (pytest finds fixtures among a module's globals); each is
registered under its short name (``prefix``, ``raw``, ``make``, ``storage``), so the
imported names never clash with the test functions' parameters.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio

from connectome_storage import RedisStorage, StorageInterface, create_redis_storage
from connectome_storage.testing import StorageBuilder

from ..conftest import BACKENDS, FakeClock
from ..redis_server import RedisServer

__all__ = [
    "CLUSTER", "cluster_backend_fixture", "cluster_storage_builder_fixture", "commands_of", "eventually",
    "make_fixture", "prefix_fixture", "raw_fixture", "storage_fixture",
]  # fmt: skip

SENTINEL = "connectome-test-sentinel"


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


@pytest.fixture(name="own_server")
def own_server_fixture(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server for one test alone, free to be killed, paused, filled or limited."""
    server = RedisServer(tmp_path / "own-redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(name="storage")
async def storage_fixture(make: Callable[..., RedisStorage]) -> AsyncIterator[RedisStorage]:
    async with make() as opened:
        yield opened


async def eventually(check: Callable[[], Awaitable[bool]]) -> bool:
    """Poll ``check`` for a state the server reaches asynchronously; counts tries, not time."""
    for _ in range(2000):
        if await check():
            return True
        await asyncio.sleep(0.005)
    return False


async def commands_of(monitor_client: Any, storage: RedisStorage, action: Callable[[], Awaitable[Any]]) -> list[Any]:
    """Every command the server ran while ``action`` ran, as MONITOR saw them."""
    async with monitor_client.monitor() as monitor:
        await action()
        await storage.client.echo(SENTINEL)
        seen = []
        while SENTINEL not in (info := await monitor.next_command())["command"]:
            seen.append(info)
    return seen


# ------------------------------------------------------------- Redis Cluster

CLUSTER = "redis-cluster"


@pytest.fixture(name="backend", params=[*sorted(BACKENDS), CLUSTER])
def cluster_backend_fixture(request: pytest.FixtureRequest) -> str:
    """conftest's ``backend`` plus Redis Cluster: a conformance module that imports this
    (and ``cluster_storage_builder_fixture``, ``redis_cluster``) runs on the cluster too."""
    return str(request.param)


@pytest.fixture(name="storage_builder")
def cluster_storage_builder_fixture(
    backend: str, storage_builder: StorageBuilder, tmp_path: Path, request: pytest.FixtureRequest
) -> StorageBuilder:
    """conftest's ``storage_builder``, or for Redis Cluster a storage on the session's
    cluster under a key prefix of the test's own (so tests never see each other's data)."""
    if backend != CLUSTER:
        return storage_builder
    url = request.getfixturevalue("redis_cluster").url

    def build(clock: FakeClock, /, **options: Any) -> StorageInterface:
        return create_redis_storage(url, key_prefix=f"test:{tmp_path.name}:", clock=clock, **options)

    return build
