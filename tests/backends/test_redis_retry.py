"""Retries against a real redis-server that goes away and comes back on the same port.

The server persists (AOF, fsync always), so what was written before the outage is still
there after it and the tests can count the history: an append that failed during the
outage must not appear, one that succeeded must appear once. Connecting and reads are
retried (``max_retries``, exponential backoff); a write is sent at most once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from connectome_storage import RedisStorage
from connectome_storage.config import read_environment
from connectome_storage.errors import BackendUnavailableError, ConfigError

from ..redis_server import RedisServer
from .redis_fixtures import make_fixture, prefix_fixture

__all__ = ["make_fixture", "prefix_fixture"]

# Enough tries that the backoff (0.1, 0.2, 0.4, 0.8, then 1 s each) outlasts a server
# start by far (about 37 s in all, for a machine so busy that a start takes seconds): the
# read or write is still waiting when it is back. A working retry ends as soon as it is.
_PATIENT = 40
# How long the test lets a waiting call run against the stopped server before starting it
# again: an ordering aid, no assertion is made on time. A call that was not retried has
# failed long before (a refused connection fails in well under a millisecond).
_OUTAGE_SECONDS = 0.3


@pytest.fixture(name="server")
def persistent_server_fixture(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test alone that keeps its data over a stop and start."""
    server = RedisServer(tmp_path / "redis", extra=["--appendonly", "yes", "--appendfsync", "always"])
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def _restart_later(server: RedisServer) -> None:
    await asyncio.sleep(_OUTAGE_SECONDS)
    await asyncio.to_thread(server.start)


async def test_a_restarted_server_is_used_again_by_the_same_storage(
    server: RedisServer, make: Callable[..., RedisStorage]
) -> None:
    async with make(url=server.url, connection_timeout=2) as storage:
        # Several pooled connections, all of which die with the server.
        await asyncio.gather(*(storage.append_raw_messages("c1", [{"n": n}]) for n in range(4)))
        await storage.store_conversation("c1", {"t": 1})
        # Stopped and started while this process runs on (the event loop sees the connections
        # close, as it would in production): same port, same data.
        await asyncio.to_thread(server.stop)
        await asyncio.to_thread(server.start)
        assert await storage.append_raw_messages("c1", [{"n": 4}]) == 5  # a write first, on a dead pool
        assert sorted(m["n"] for m in await storage.load_raw_messages("c1")) == [0, 1, 2, 3, 4]
        assert await storage.load_conversation("c1") == {"t": 1}
        assert (await storage.health_check())["status"] == "healthy"


async def test_an_append_during_an_outage_fails_and_is_never_applied_later(
    server: RedisServer, make: Callable[..., RedisStorage]
) -> None:
    async with make(url=server.url, connection_timeout=2, max_retries=2) as storage:
        await storage.append_raw_messages("c1", [{"n": 0}])
        await storage.store_reasoning_chain("agent", {"s": 0})
        await asyncio.to_thread(server.stop)
        with pytest.raises(BackendUnavailableError, match=str(server.port)):
            await storage.append_raw_messages("c1", [{"n": 1}])
        with pytest.raises(BackendUnavailableError):
            await storage.store_reasoning_chain("agent", {"s": 1})
        await asyncio.to_thread(server.start)
        # Nothing of the failed appends reached the server, then or since.
        assert await storage.load_raw_messages("c1") == [{"n": 0}]
        assert await storage.load_reasoning_chains("agent") == [{"s": 0}]
        assert await storage.append_raw_messages("c1", [{"n": 2}]) == 2
        assert await storage.load_raw_messages("c1") == [{"n": 0}, {"n": 2}]


async def test_a_read_during_a_short_outage_succeeds_once_the_server_is_back(
    server: RedisServer, make: Callable[..., RedisStorage]
) -> None:
    async with make(url=server.url, connection_timeout=2, max_retries=_PATIENT) as storage:
        await storage.append_raw_messages("c1", [{"n": 0}])
        await storage.store_system_state("s", {"v": 1})
        await asyncio.to_thread(server.stop)
        restart = asyncio.create_task(_restart_later(server))
        reads = asyncio.gather(storage.load_raw_messages("c1"), storage.load_system_state("s"))
        await restart
        assert not reads.done()  # still retrying when the server came back
        assert await reads == [[{"n": 0}], {"v": 1}]


async def test_an_append_waits_while_connecting_and_is_applied_once(
    server: RedisServer, make: Callable[..., RedisStorage]
) -> None:
    # Connecting is retried for a write too: nothing was sent while the server was away.
    async with make(url=server.url, connection_timeout=2, max_retries=_PATIENT) as storage:
        await storage.append_raw_messages("c1", [{"n": 0}])
        await storage.store_reasoning_chain("agent", {"s": 0})
        await asyncio.to_thread(server.stop)
        restart = asyncio.create_task(_restart_later(server))
        appends = asyncio.gather(
            storage.append_raw_messages("c1", [{"n": 1}]), storage.store_reasoning_chain("agent", {"s": 1})
        )
        await restart
        assert not appends.done()
        assert await appends == [2, True]
        assert await storage.load_raw_messages("c1") == [{"n": 0}, {"n": 1}]
        assert await storage.load_reasoning_chains("agent") == [{"s": 0}, {"s": 1}]


async def test_no_retries_fails_at_once(server: RedisServer, make: Callable[..., RedisStorage]) -> None:
    async with make(url=server.url, connection_timeout=2, max_retries=0) as storage:
        await storage.store_system_state("s", 1)
        await asyncio.to_thread(server.stop)
        restart = asyncio.create_task(_restart_later(server))
        with pytest.raises(BackendUnavailableError):
            await storage.load_system_state("s")
        assert not restart.done()  # it failed before the server was back
        await restart
        assert await storage.load_system_state("s") == 1


def test_max_retries_is_a_whole_number_from_the_option_or_the_environment(make: Callable[..., Any]) -> None:
    assert read_environment({"CONNECTOME_STORAGE_MAX_RETRIES": "5"})[1] == {"max_retries": 5}
    for bad in ("-1", "many", "1.5"):
        with pytest.raises(ConfigError, match="CONNECTOME_STORAGE_MAX_RETRIES"):
            read_environment({"CONNECTOME_STORAGE_MAX_RETRIES": bad})
    assert make(max_retries="4").settings.max_retries == 4
    assert make().settings.max_retries == 3
    with pytest.raises(ConfigError, match="max_retries"):
        make(max_retries=-2)
