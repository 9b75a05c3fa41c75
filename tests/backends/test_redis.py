"""What only RedisStorage does: key layout, native expiry, scripts, faults, a client it
does not own. Everything runs against a real redis-server (tests/redis_server.py); the
tests that kill, pause or fill a server start their own so the shared one stays up.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio
from redis.crc import key_slot

from connectome_storage import RedisStorage, create_file_storage
from connectome_storage.backends.redis import redact_url
from connectome_storage.errors import (
    AccessDeniedError,
    BackendUnavailableError,
    ConfigError,
    CorruptedDataError,
    StorageFullError,
    ValueTooLargeError,
)
from connectome_storage.interface import CacheEntry, Kind

from ..conftest import FakeClock
from ..redis_server import RedisServer
from .redis_fixtures import (  # noqa: F401
    commands_of,
    eventually,
    make_fixture,
    own_server_fixture,
    prefix_fixture,
    raw_fixture,
    storage_fixture,
)

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------ packaging


def test_missing_redis_package_raises_import_error_naming_the_extra() -> None:
    code = (
        "import sys\n"
        "sys.modules['redis'] = None\n"
        "import connectome_storage\n"
        "from connectome_storage import StorageFactory, create_redis_storage\n"
        "for build in (lambda: create_redis_storage('redis://127.0.0.1:1/0'),\n"
        "              lambda: StorageFactory.create_storage('redis', {})):\n"
        "    try:\n"
        "        build()\n"
        "    except ImportError as e:\n"
        "        print('IMPORT-ERROR:', e)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    assert all("pip install connectome-storage[redis]" in line for line in lines)


def test_importing_the_package_does_not_import_redis() -> None:
    code = "import sys, connectome_storage; print('redis' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert result.stdout.strip() == "False"


# ---------------------------------------------------------------- client owner


async def _client_ids(raw: Any) -> set[int]:
    return {int(client["id"]) for client in await raw.client_list()}


async def test_a_client_passed_in_is_not_closed_by_shutdown(
    redis_server: RedisServer, raw: Any, make: Callable[..., RedisStorage]
) -> None:
    client = redis.asyncio.Redis.from_url(redis_server.url, single_connection_client=True)
    try:
        storage = make(client=client)
        async with storage:
            await storage.store_system_state("k", 1)
            assert storage.client is client
            connection_id = await client.client_id()
        assert client.connection is not None and client.connection.is_connected
        assert connection_id in await _client_ids(raw)
        assert await client.client_id() == connection_id  # the same connection, still open
        assert (await storage.health_check())["status"] == "unhealthy"  # shut down: refused
    finally:
        await client.aclose()


async def test_a_client_the_storage_made_is_closed_by_shutdown(raw: Any, make: Callable[..., RedisStorage]) -> None:
    storage = make()
    async with storage:
        connection_id = await storage.client.client_id()
        assert connection_id in await _client_ids(raw)
        assert (await storage.health_check())["details"]["client_owned_by_caller"] is False

    async def closed() -> bool:
        return connection_id not in await _client_ids(raw)

    assert await eventually(closed)


# ------------------------------------------------------------------ key layout


async def test_two_prefixes_never_see_each_other(make: Callable[..., RedisStorage], prefix: str) -> None:
    # The second prefix extends the first with what looks like a key of it.
    async with make(key_prefix=prefix) as outer, make(key_prefix=prefix + "conv:{c}:") as inner:
        for storage, tag in ((outer, "outer"), (inner, "inner")):
            await storage.store_conversation("c", {"who": tag})
            await storage.append_raw_messages("c", [{"who": tag}])
            await storage.store_memory("c", "m", {"who": tag})
            await storage.store_reasoning_chain("a", {"who": tag})
            await storage.store_cache("k", tag)
            await storage.store_system_state("s", tag)
        await inner.store_system_state("only-inner", 1)
        for storage, tag in ((outer, "outer"), (inner, "inner")):
            assert await storage.load_conversation("c") == {"who": tag}
            assert await storage.load_raw_messages("c") == [{"who": tag}]
            assert await storage.load_memories("c") == [{"memory_id": "m", "who": tag}]
            assert await storage.load_reasoning_chains("a") == [{"who": tag}]
            assert await storage.load_cache("k") == tag
        assert await outer.list_system_states() == ["s"]
        assert await inner.list_system_states() == ["only-inner", "s"]
        assert await outer.delete_conversation("c") is True
        assert await inner.load_conversation("c") == {"who": "inner"}
        assert (await inner.get_storage_stats())["conversation_count"] == 1
        assert (await outer.get_storage_stats())["conversation_count"] == 0


async def test_ids_with_braces_and_colons_are_distinct_and_keep_one_slot(storage: RedisStorage) -> None:
    ids = ["x", "x}", "{x}", "x}:raw", "x}:current", "conv:{x}", "%7Dx", "a:b"]
    for index, conversation_id in enumerate(ids):
        await storage.store_conversation(conversation_id, {"n": index})
        await storage.append_raw_messages(conversation_id, [{"n": index}])
        await storage.store_memory(conversation_id, "m", {"n": index})
    for index, conversation_id in enumerate(ids):
        assert await storage.load_conversation(conversation_id) == {"n": index}
        assert await storage.load_raw_messages(conversation_id) == [{"n": index}]
        keys = storage._part_keys(conversation_id)
        assert len({key_slot(key.encode()) for key in keys}) == 1, keys
        assert all(key.count("{") == 1 and key.count("}") == 1 for key in keys)
    assert await storage.list_conversations() == sorted(ids)


async def test_memories_keep_their_order_through_delete_and_reinsert(storage: RedisStorage, raw: Any) -> None:
    for memory_id in ("m1", "m2", "m3"):
        await storage.store_memory("c", memory_id, {"v": memory_id})
    await storage.delete_memory("c", "m1")
    await storage.store_memory("c", "m1", {"v": "again"})
    await storage.store_memory("c", "m2", {"v": "replaced"})
    assert [m["memory_id"] for m in await storage.load_memories("c")] == ["m2", "m3", "m1"]
    assert await raw.hlen(storage.key_of(Kind.MEMORIES, "c")) == 3
    assert await raw.zcard(storage._order_key("c")) == 3


async def test_long_logs_go_in_one_script_despite_lua_unpack_limits(storage: RedisStorage) -> None:
    messages = [{"n": n} for n in range(9000)]
    await storage.store_raw_messages("c", messages[:2500])
    assert await storage.append_raw_messages("c", messages[2500:]) == 9000
    assert await storage.load_raw_messages("c") == messages


async def test_concurrent_writers_through_separate_clients_lose_nothing(make: Callable[..., RedisStorage]) -> None:
    async with make() as first, make() as second:
        writers = [first, second] * 100
        counts = await asyncio.gather(
            *(storage.append_raw_messages("c", [{"n": n}]) for n, storage in enumerate(writers))
        )
        await asyncio.gather(*(storage.store_memory("c", f"m{n}", {"n": n}) for n, storage in enumerate(writers)))
        assert sorted(counts) == list(range(1, 201))  # each append saw its own new length
        assert sorted(m["n"] for m in await first.load_raw_messages("c")) == list(range(200))
        memories = await second.load_memories("c")
        assert sorted(m["n"] for m in memories) == list(range(200))
        assert len({m["memory_id"] for m in memories}) == 200


# ---------------------------------------------------------------------- expiry


async def test_cache_entries_expire_natively(storage: RedisStorage, raw: Any, clock: FakeClock) -> None:
    await storage.store_cache("ttl", 1, ttl=100)
    await storage.store_cache("forever", 2)
    assert 0 < await raw.pttl(storage.key_of(Kind.CACHE, "ttl")) <= 100_000
    assert await raw.pttl(storage.key_of(Kind.CACHE, "forever")) == -1
    # Expiry is what is left on the clock, not the time since creation (migrate copies
    # entries created long ago).
    now = round(clock() * 1000)
    await storage._write_cache(CacheEntry("old", 3, now - 3_600_000, now + 5_000))
    assert 0 < await raw.pttl(storage.key_of(Kind.CACHE, "old")) <= 5_000
    entry = await storage._read_cache("old")
    assert entry == CacheEntry("old", 3, now - 3_600_000, now + 5_000)


async def _expire_natively(raw: Any, storage: RedisStorage, *keys: str) -> None:
    """Make Redis expire entries now, as it would once their PX runs out."""
    names = [storage.key_of(Kind.CACHE, key) for key in keys]
    for name in names:
        await raw.pexpire(name, 1)

    async def gone() -> bool:
        return bool(await raw.exists(*names) == 0)

    assert await eventually(gone)


async def test_entries_redis_expired_leave_the_listing(storage: RedisStorage, raw: Any) -> None:
    index = storage.index_of(Kind.CACHE)
    for key in ("native", "live", "native-2"):
        await storage.store_cache(key, key, ttl=1000)
    await _expire_natively(raw, storage, "native", "native-2")
    assert await raw.zcard(index) == 3  # Redis knows nothing of our index
    assert await storage.list_cache_keys() == ["live"]
    assert await raw.zrange(index, 0, -1) == [b"live"]  # the listing pruned it
    assert await storage.load_cache("native") is None
    await storage.store_cache("native-3", 3, ttl=1000)
    await _expire_natively(raw, storage, "native-3")
    stats = await storage.get_storage_stats()
    assert (stats["cache_entry_count"], stats["expired_cache_entry_count"]) == (1, 0)


async def test_cleanup_counts_entries_redis_expired_and_those_expired_on_the_clock(
    storage: RedisStorage, raw: Any, clock: FakeClock
) -> None:
    index = storage.index_of(Kind.CACHE)
    await storage.store_cache("native", 1, ttl=1000)
    await storage.store_cache("on-clock", 2, ttl=10)
    await storage.store_cache("live", 3, ttl=1000)
    await _expire_natively(raw, storage, "native")
    clock.advance(20)
    assert await storage.load_cache("on-clock") is None  # expired on the clock...
    assert await raw.exists(storage.key_of(Kind.CACHE, "on-clock")) == 1  # ...not yet in Redis
    assert await storage.cleanup_expired_cache() == 2
    assert await raw.exists(storage.key_of(Kind.CACHE, "on-clock")) == 0
    assert await raw.zrange(index, 0, -1) == [b"live"]
    assert await storage.cleanup_expired_cache() == 0


# ------------------------------------------------------------------- atomicity


async def test_delete_conversation_is_one_script_that_updates_the_listing(
    storage: RedisStorage, raw: Any, redis_server: RedisServer
) -> None:
    for conversation_id in ("warm-up", "c1", "c2"):
        await storage.store_conversation(conversation_id, {"t": 1})
        await storage.store_raw_messages(conversation_id, [{"n": 1}])
        await storage.store_chunks(conversation_id, [{"c": 1}])
        await storage.store_memory(conversation_id, "m", {"x": 1})
    await storage.delete_conversation("warm-up")  # the server now caches the script
    keys = storage._part_keys("c1")
    assert await raw.exists(*keys) == 5
    monitor_client = redis.asyncio.Redis.from_url(redis_server.url)
    try:
        seen = await commands_of(monitor_client, storage, lambda: storage.delete_conversation("c1"))
    finally:
        await monitor_client.aclose()
    sent = [info["command"].split()[0] for info in seen if info["client_type"] != "lua"]
    inside = [info["command"] for info in seen if info["client_type"] == "lua"]
    assert sent == ["EVALSHA"]  # one round trip, one script: nothing can run in between
    assert any(command.startswith("DEL ") and all(key in command for key in keys) for command in inside)
    assert await raw.exists(*keys) == 0
    assert await raw.smembers(storage.index_of(Kind.CONVERSATION)) == {b"c2"}
    assert await storage.list_conversations() == ["c2"]


async def test_listing_stats_and_cleanup_never_use_keys_or_scan(
    storage: RedisStorage, raw: Any, clock: FakeClock
) -> None:
    async def calls(command: str) -> int:
        return int((await raw.info("commandstats")).get(f"cmdstat_{command}", {}).get("calls", 0))

    before = {command: await calls(command) for command in ("keys", "scan", "scard", "llen", "hlen")}
    await storage.store_conversation("c1", {})
    await storage.store_raw_messages("c1", [{"n": 1}, {"n": 2}])
    await storage.store_memory("c2", "m1", {})
    await storage.store_memory("c2", "m2", {})
    await storage.store_chunks("c3", [{"a": 1}, {"b": 2}, {"c": 3}])
    await storage.store_reasoning_chain("a1", {})
    await storage.store_cache("live", 1)
    await storage.store_cache("dying", 1, ttl=1)
    await storage.store_system_state("s", 1)
    clock.advance(2)
    stats = await storage.get_storage_stats()
    await storage.list_conversations()
    await storage.list_agents()
    await storage.list_cache_keys()
    await storage.list_system_states()
    await storage.cleanup_expired_cache()
    assert await storage.verify() == []
    expected = {
        "conversation_count": 3, "raw_message_count": 2, "memory_count": 2, "chunk_count": 3,
        "agent_count": 1, "reasoning_chain_count": 1, "cache_entry_count": 1,
        "expired_cache_entry_count": 1, "system_state_count": 1, "unreadable_count": 0,
    }  # fmt: skip
    assert {key: stats[key] for key in expected} == expected
    assert stats["total_bytes"] > 0
    assert await calls("keys") == before["keys"]
    assert await calls("scan") == before["scan"]
    for counter in ("scard", "llen", "hlen"):  # proof that commandstats saw the stats run
        assert await calls(counter) > before[counter]


async def test_stats_total_bytes_is_memory_usage_of_every_key_of_the_prefix(
    storage: RedisStorage, raw: Any, prefix: str
) -> None:
    # The counts and bytes of conversations are taken on the server by one script per batch;
    # the figure must stay what docs/redis.md defines: MEMORY USAGE summed over every key of
    # the prefix (here found by SCAN, which the storage itself never runs).
    for n in range(1200):  # more than one script's batch
        await storage.store_raw_messages(f"c{n}", [{"n": n}] * (n % 3))
    await storage.store_conversation("c1", {"t": 1})
    await storage.store_memory("c2", "m", {"x": 1})
    await storage.store_chunks("c3", [{"a": 1}, {"b": 2}])
    await storage.conversation_store().save("c4", [{"n": 1}], ttl=600, metadata={"k": 1})
    await storage.store_reasoning_chain("a", {"s": 1})
    await storage.store_cache("k", 1, ttl=60)
    await storage.store_system_state("s", 1)
    await storage.kv("ns").set("key", {"v": 1}, tags={"t": "x"})
    await raw.set(storage.key_of(Kind.MEMORIES, "c5"), b"a string where a hash belongs")
    await raw.sadd(storage.index_of(Kind.CONVERSATION), "c5")
    stats = await storage.get_storage_stats()
    keys = [key async for key in raw.scan_iter(match=f"{prefix}*", count=1000)]
    assert stats["total_bytes"] == sum([await raw.memory_usage(key) for key in keys])
    assert (stats["conversation_count"], stats["raw_message_count"]) == (801, 1200)  # c3 added, c5 listed
    assert (stats["memory_count"], stats["chunk_count"], stats["unreadable_count"]) == (1, 2, 1)


# ---------------------------------------------------------------- corrupt data


async def test_pop_leaves_a_corrupt_newest_item_in_place(storage: RedisStorage, raw: Any) -> None:
    await storage.store_raw_messages("c1", [{"n": 1}, {"n": 2}])
    log = storage.key_of(Kind.RAW_MESSAGES, "c1")
    await raw.lset(log, 1, b"[1]")
    with pytest.raises(CorruptedDataError) as caught:
        await storage.pop_raw_message("c1")
    assert caught.value.path == f"{log}[-1]"
    assert await raw.llen(log) == 2
    await raw.lset(log, 1, b'{"n": 2}')
    assert await storage.pop_raw_message("c1") == {"n": 2}
    assert await storage.pop_raw_message("c1") == {"n": 1}
    assert await raw.exists(log) == 0
    assert await storage.list_conversations() == []


async def test_bad_json_and_wrong_types_raise_corrupted_data_naming_the_key(storage: RedisStorage, raw: Any) -> None:
    await storage.store_conversation("c1", {"ok": True})
    await storage.store_raw_messages("c1", [{"n": 1}, {"n": 2}])
    await storage.store_chunks("c2", [{"a": 1}])
    await storage.store_system_state("s", 1)
    document = storage.key_of(Kind.CONVERSATION, "c1")
    await raw.set(document, b'{"ok": tru')
    with pytest.raises(CorruptedDataError) as caught:
        await storage.load_conversation("c1")
    assert caught.value.path == document and document in str(caught.value)
    assert (caught.value.line, caught.value.column) != (None, None)

    log = storage.key_of(Kind.RAW_MESSAGES, "c1")
    await raw.lset(log, 1, b"[1]")
    with pytest.raises(CorruptedDataError, match=r"expected a JSON object") as caught:
        await storage.load_raw_messages("c1")
    assert caught.value.path == f"{log}[1]"

    chunks = storage.key_of(Kind.CHUNKS, "c2")
    await raw.delete(chunks)
    await raw.hset(chunks, "not", "a string")
    with pytest.raises(CorruptedDataError, match="wrong Redis type"):
        await storage.load_chunks("c2")
    stats = await storage.get_storage_stats()  # counts what it can, never raises
    assert stats["unreadable_count"] == 1 and stats["raw_message_count"] == 2
    assert {problem.location for problem in await storage.verify()} == {document, f"{log}[1]", chunks}

    # Storing again repairs each of them.
    await storage.store_conversation("c1", {"ok": 1})
    await storage.store_raw_messages("c1", [{"n": 3}])
    await storage.store_chunks("c2", [{"b": 2}])
    assert await storage.verify() == []
    assert await storage.load_chunks("c2") == [{"b": 2}]


# ---------------------------------------------------------------------- faults


async def test_a_dead_server_is_reported_and_the_same_object_recovers(
    own_server: RedisServer, make: Callable[..., RedisStorage]
) -> None:
    storage = make(url=own_server.url, connection_timeout=2)
    async with storage:
        await storage.store_conversation("c1", {"t": 1})
        own_server.kill()
        with pytest.raises(BackendUnavailableError, match=str(own_server.port)):
            await storage.load_conversation("c1")
        with pytest.raises(BackendUnavailableError):
            await storage.append_raw_messages("c1", [{"n": 1}])
        with pytest.raises(BackendUnavailableError):
            await storage.get_storage_stats()
        report = await storage.health_check()
        assert report["status"] == "unhealthy"
        assert report["details"]["error_type"] == "BackendUnavailableError"

        own_server.start()  # same port; an empty server, which also forgot our scripts
        assert (await storage.health_check())["status"] == "healthy"
        assert await storage.load_conversation("c1") is None
        assert await storage.append_raw_messages("c1", [{"n": 1}]) == 1
        await storage.store_conversation("c1", {"t": 2})
        assert await storage.load_conversation("c1") == {"t": 2}
        assert await storage.list_conversations() == ["c1"]


async def test_initialize_against_a_dead_server_raises_backend_unavailable(
    own_server: RedisServer, make: Callable[..., RedisStorage]
) -> None:
    own_server.kill()
    storage = make(url=own_server.url, connection_timeout=2)
    with pytest.raises(BackendUnavailableError, match="check that the server runs"):
        await storage.initialize()
    with pytest.raises(Exception, match="initialize"):
        await storage.load_conversation("c1")
    own_server.start()
    async with storage:
        assert await storage.list_conversations() == []


async def test_a_hung_server_times_out_and_an_append_is_never_repeated(
    own_server: RedisServer, make: Callable[..., RedisStorage]
) -> None:
    storage = make(url=own_server.url, connection_timeout=0.5)
    async with storage:
        await storage.append_raw_messages("c1", [{"n": 0}])  # the server now caches the script
        own_server.pause()  # the port still accepts connections; nothing answers
        try:
            with pytest.raises(BackendUnavailableError, match="Timeout"):
                await storage.append_raw_messages("c1", [{"n": 1}])
            with pytest.raises(BackendUnavailableError):
                await storage.load_raw_messages("c1")
            assert (await storage.health_check())["status"] == "unhealthy"
        finally:
            own_server.resume()
        # The server may still run the append it had buffered (a lost reply says nothing
        # about the write); it must run it at most once, so it was not retried.
        messages = await storage.load_raw_messages("c1")
        assert messages in ([{"n": 0}], [{"n": 0}, {"n": 1}])
        assert await storage.append_raw_messages("c1", [{"n": 2}]) == len(messages) + 1


async def test_out_of_memory_raises_storage_full_and_writes_nothing(
    own_server: RedisServer, make: Callable[..., RedisStorage]
) -> None:
    storage = make(url=own_server.url)
    async with storage:
        await storage.store_system_state("before", "kept")
        await storage.append_raw_messages("c1", [{"n": 1}])
        client = storage.client
        used = (await client.info("memory"))["used_memory"]
        await client.config_set("maxmemory-policy", "noeviction")
        await client.config_set("maxmemory", used + 256 * 1024)
        written = 0
        with pytest.raises(StorageFullError, match="out of memory"):
            for written in range(10_000):
                await storage.store_system_state(f"s{written}", "x" * 16_384)
        assert await storage.load_system_state(f"s{written}") is None
        assert f"s{written}" not in await storage.list_system_states()
        with pytest.raises(StorageFullError):
            await storage.append_raw_messages("c1", [{"n": 2}])
        assert await storage.load_raw_messages("c1") == [{"n": 1}]
        assert await storage.load_system_state("before") == "kept"
        assert await storage.delete_system_state("s0") is True  # deleting frees memory
        await client.config_set("maxmemory", 0)
        assert await storage.append_raw_messages("c1", [{"n": 2}]) == 2


class ReplyDroppingProxy:
    """A TCP proxy in front of a real server that can lose replies, as a network can.

    With ``drop_replies`` set to n, the next n replies are swallowed and their connection
    is cut, after the server has executed the command: the client cannot know whether
    its write happened. A client that resent it would apply it twice.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.drop_replies = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter, replies: bool) -> None:
            while data := await source.read(65536):
                if replies and self.drop_replies > 0:
                    self.drop_replies -= 1
                    return
                sink.write(data)
                await sink.drain()

        try:
            await asyncio.wait(
                [asyncio.ensure_future(pump(reader, upstream_writer, False)),
                 asyncio.ensure_future(pump(upstream_reader, writer, True))],
                return_when=asyncio.FIRST_COMPLETED,
            )  # fmt: skip
        finally:
            for stream in (writer, upstream_writer):
                stream.close()


@pytest.fixture
async def proxy(redis_server: RedisServer) -> AsyncIterator[ReplyDroppingProxy]:
    faulty = ReplyDroppingProxy(redis_server.port)
    await faulty.start()
    yield faulty
    await faulty.close()


@pytest.mark.parametrize("retries", [0, 2])
async def test_a_lost_reply_is_retried_for_a_read_and_never_for_an_append(
    proxy: ReplyDroppingProxy, make: Callable[..., RedisStorage], retries: int
) -> None:
    async with make(url=proxy.url, connection_timeout=2, max_retries=retries) as storage:
        await storage.append_raw_messages("c1", [{"n": 0}])  # the server now caches the script
        proxy.drop_replies = retries
        assert await storage.load_raw_messages("c1") == [{"n": 0}]  # retried, transparently
        assert proxy.drop_replies == 0
        proxy.drop_replies = 1
        with pytest.raises(BackendUnavailableError):
            await storage.append_raw_messages("c1", [{"n": 1}])
        # The server did run it; only the reply was lost. It must be there exactly once.
        assert await storage.load_raw_messages("c1") == [{"n": 0}, {"n": 1}]
        proxy.drop_replies = retries + 1
        with pytest.raises(BackendUnavailableError):
            await storage.load_raw_messages("c1")  # a read is tried max_retries + 1 times, not more
        assert proxy.drop_replies == 0


# ---------------------------------------------------------------------- health


async def test_health_check_pings_and_reads_server_info(storage: RedisStorage, prefix: str) -> None:
    report = await storage.health_check()
    details = report["details"]
    assert report["status"] == "healthy" and report["backend"] == "redis"
    assert isinstance(details["ping_ms"], float) and details["ping_ms"] >= 0
    assert details["redis_version"].count(".") == 2
    assert isinstance(details["used_memory"], int) and details["used_memory"] > 0
    assert details["key_prefix"] == prefix
    assert details["server"].startswith("redis://127.0.0.1:")


async def test_credentials_never_appear_in_messages(make: Callable[..., RedisStorage], own_server: RedisServer) -> None:
    own_server.kill()
    storage = make(url=f"redis://user:s3cret@127.0.0.1:{own_server.port}/0", connection_timeout=2)
    with pytest.raises(BackendUnavailableError) as caught:
        await storage.initialize()
    assert "s3cret" not in str(caught.value)
    assert f"127.0.0.1:{own_server.port}" in str(caught.value)


# --------------------------------------------------------------------- migrate


async def test_file_to_redis_to_file_is_byte_identical(tmp_path: Path, make: Callable[..., RedisStorage]) -> None:
    from connectome_storage.migrate import migrate

    clock = FakeClock()
    original, copy = tmp_path / "original", tmp_path / "copy"
    async with create_file_storage(original, clock=clock) as source:
        for conversation_id in ("conv_001", "a/b:{c}", "ümlaut 🙂"):
            await source.store_conversation(conversation_id, {"title": conversation_id, "n": [1, 2.5, None]})
            await source.store_raw_messages(conversation_id, [{"role": "user", "text": "hi"}, {"role": "ai"}])
            await source.store_chunks(conversation_id, [{"start": 0, "end": 2}])
            for memory_id in ("m3", "m1", "m2"):
                await source.store_memory(conversation_id, memory_id, {"text": memory_id})
        await source.append_raw_messages("only-messages", [{"n": 1}])
        await source.store_memory("only-memories", "m", {"x": {"deep": [True, False]}})
        for step in range(3):
            await source.store_reasoning_chain("agent-1", {"step": step})
        await source.store_cache("forever", {"answer": 42})
        await source.store_cache("hour", [1, 2], ttl=3600)
        clock.advance(60)
        await source.store_cache("later", "x", ttl=7200)
        await source.store_cache("expired", "x", ttl=1)
        clock.advance(2)
        await source.store_system_state("config", {"mode": "fast", "limits": [1, 2]})
        await source.store_system_state("counter", 7)

        async with make(clock=clock) as middle:
            there = await migrate(source, middle)
            assert (there.conversations, there.memories, there.reasoning_chains) == (5, 10, 3)
            assert (there.cache_entries, there.skipped_expired, there.system_states) == (3, 1, 2)
            async with create_file_storage(copy, clock=clock) as destination:
                back = await migrate(middle, destination)
    assert back.as_dict() == {**there.as_dict(), "skipped_expired": 0}

    def data_files(root: Path) -> dict[str, bytes]:
        return {
            path.relative_to(root).as_posix(): path.read_bytes()
            for path in sorted(root.rglob("*"))
            if path.is_file() and not any(part.startswith(".") for part in path.relative_to(root).parts)
        }

    before, after = data_files(original), data_files(copy)
    assert len(before) == 3 * 4 + 2 + 1 + 4 + 2  # parts, lone parts, agent, cache files, states
    del before["cache/expired.json"]  # expired entries are not migrated, by design
    assert sorted(after) == sorted(before)
    for name, content in before.items():
        assert after[name] == content, name


# ------------------------------------------------------------- value size limit

MIB = 1024 * 1024


async def _lower_bulk_limit(server: RedisServer) -> None:
    """proto-max-bulk-len at its minimum, 1 MiB: the same refusal as 512 MiB, without
    allocating 512 MiB in a test."""
    client = redis.asyncio.Redis.from_url(server.url)
    try:
        assert await client.config_set("proto-max-bulk-len", "1mb")
    finally:
        await client.aclose()


async def test_a_value_over_the_servers_limit_raises_value_too_large_and_writes_nothing(
    own_server: RedisServer, make: Callable[..., RedisStorage]
) -> None:
    await _lower_bulk_limit(own_server)
    big = "x" * (MIB + 10)
    async with make(url=own_server.url) as storage:
        await storage.append_raw_messages("c1", [{"n": 0}])
        writes = [
            storage.store_conversation("c1", {"text": big}),
            storage.store_conversation("new", {"text": big}),
            storage.append_raw_messages("c1", [{"n": 1}, {"text": big}]),
            storage.store_raw_messages("c1", [{"text": big}]),
            storage.store_memory("c1", "m1", {"text": big}),
            storage.store_chunks("c1", [{"text": big}]),
            storage.store_reasoning_chain("a1", {"text": big}),
            storage.store_cache("k", big, ttl=60),
            storage.store_system_state("s", big),
        ]
        for write in writes:
            with pytest.raises(ValueTooLargeError) as caught:
                await write
            message = str(caught.value)
            assert "1,048,576 bytes" in message and "proto-max-bulk-len" in message
            assert "check that the server runs" not in message
        assert await storage.load_raw_messages("c1") == [{"n": 0}]  # nothing of it was written
        assert await storage.list_conversations() == ["c1"]
        assert (await storage.list_agents(), await storage.list_cache_keys(), await storage.list_system_states()) == (
            [],
            [],
            [],
        )
        await storage.store_system_state("s", "x" * (MIB - 100))  # under the limit: fine
        assert (await storage.health_check())["details"]["max_value_bytes"] == MIB


async def test_a_limit_lowered_after_initialize_is_found_when_the_server_drops_the_connection(
    own_server: RedisServer, make: Callable[..., RedisStorage]
) -> None:
    async with make(url=own_server.url) as storage:
        await _lower_bulk_limit(own_server)  # the storage still assumes 512 MiB
        for write in (
            storage.store_conversation("c1", {"text": "x" * 2 * MIB}),
            storage.append_raw_messages("c1", [{"text": "x" * 2 * MIB}]),
        ):
            with pytest.raises(ValueTooLargeError, match="1,048,576 bytes"):
                await write  # Redis closed the connection mid-request (ConnectionError in redis-py)
        await storage.store_conversation("c1", {"t": 1})  # the same storage goes on
        assert await storage.load_conversation("c1") == {"t": 1}


# ------------------------------------------------------------ access control

PASSWORD = "Sup3r-Secret-pw"


@pytest.fixture
def locked_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server that wants PASSWORD (requirepass)."""
    server = RedisServer(tmp_path / "locked-redis", password=PASSWORD)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _urls(port: int, password: str) -> list[str]:
    return [
        f"redis://:{password}@127.0.0.1:{port}/0",
        f"redis://default:{password}@127.0.0.1:{port}/0",
        f"redis://127.0.0.1:{port}/0?password={password}",
    ]


async def test_a_wrong_or_missing_password_raises_access_denied_saying_authentication(
    locked_server: RedisServer, make: Callable[..., RedisStorage]
) -> None:
    for url in [*_urls(locked_server.port, "wrong-password"), f"redis://127.0.0.1:{locked_server.port}/0"]:
        storage = make(url=url, connection_timeout=5)
        with pytest.raises(AccessDeniedError) as caught:
            await storage.initialize()
        assert "authenticate" in str(caught.value) and "wrong-password" not in str(caught.value), url
        assert not isinstance(caught.value, BackendUnavailableError)
    for url in _urls(locked_server.port, PASSWORD):
        async with make(url=url) as storage:
            await storage.store_conversation("c1", {"t": 1})
            assert (await storage.health_check())["status"] == "healthy"


@pytest.fixture
async def acl_user(raw: Any, tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[str]]]:
    """Make ACL users on the shared server (``ACL SETUSER name on >pw <rules>``); removed after."""
    made: list[str] = []

    async def create(*rules: str) -> str:
        name = f"user-{tmp_path.name}-{len(made)}"
        await raw.execute_command("ACL", "SETUSER", name, "reset", "on", f">{PASSWORD}", *rules)
        made.append(name)
        return name

    yield create
    for name in made:
        await raw.execute_command("ACL", "DELUSER", name)


async def test_a_user_whose_acl_excludes_the_prefix_is_unhealthy_and_denied(
    make: Callable[..., RedisStorage], redis_server: RedisServer, acl_user: Callable[..., Awaitable[str]]
) -> None:
    user = await acl_user("~elsewhere:*", "+@all")  # PING, INFO and CONFIG work; our keys do not
    async with make(url=f"redis://{user}:{PASSWORD}@127.0.0.1:{redis_server.port}/0") as storage:
        report = await storage.health_check()
        assert report["status"] == "unhealthy"
        assert report["details"]["error_type"] == "AccessDeniedError"
        assert "ACL" in report["details"]["error"] and PASSWORD not in str(report)
        operations: list[Callable[[], Awaitable[Any]]] = [
            lambda: storage.store_conversation("c1", {"t": 1}),
            lambda: storage.load_conversation("c1"),
            lambda: storage.append_raw_messages("c1", [{"n": 1}]),
            lambda: storage.store_cache("k", 1),
            storage.list_conversations,
        ]
        for operation in operations:
            with pytest.raises(AccessDeniedError, match=r"by its ACL \(NOPERM"):
                await operation()


async def test_a_user_limited_to_the_prefix_is_healthy_without_config_or_info(
    make: Callable[..., RedisStorage],
    redis_server: RedisServer,
    prefix: str,
    acl_user: Callable[..., Awaitable[str]],
) -> None:
    user = await acl_user(f"~{prefix}*", "+@all", "-config", "-info")
    async with make(url=f"redis://{user}:{PASSWORD}@127.0.0.1:{redis_server.port}/0") as storage:
        await storage.store_conversation("c1", {"t": 1})
        report = await storage.health_check()
        assert report["status"] == "healthy", report
        assert report["details"]["persistent"] is None and report["details"]["redis_version"] is None
        assert not storage.supports("persistent")  # not known, so not promised
        assert report["details"]["max_value_bytes"] == 512 * MIB


# ------------------------------------------------------------------- secrets


def test_redact_url_hides_every_form_of_password() -> None:
    assert redact_url("redis://127.0.0.1:6379/0?password=pw1") == "redis://127.0.0.1:6379/0?password=***"
    assert redact_url("redis://:pw2@host:1/0") == "redis://:***@host:1/0"
    assert redact_url("redis://user:pw3@host") == "redis://user:***@host"
    assert redact_url("redis://localhost:6379/0") == "redis://localhost:6379/0"


async def test_the_password_appears_in_no_message_log_report_or_repr(
    locked_server: RedisServer, make: Callable[..., RedisStorage], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    for url in _urls(locked_server.port, PASSWORD):
        # Authentication failure.
        wrong = make(url=url.replace(PASSWORD, PASSWORD[::-1]), connection_timeout=5)
        with pytest.raises(AccessDeniedError) as caught:
            await wrong.initialize()
        seen += [str(caught.value), repr(wrong), str(wrong), str(await wrong.health_check())]
        # Healthy: health details, stats, repr.
        storage = make(url=url, connection_timeout=5)
        async with storage:
            await storage.store_conversation("c1", {"t": 1})
            report = await storage.health_check()
            assert "***" in report["details"]["server"]
            seen += [str(report), str(await storage.get_storage_stats()), repr(storage), str(storage)]
    # Connection refused: the same URLs against a server that is gone.
    locked_server.stop()
    for url in _urls(locked_server.port, PASSWORD):
        storage = make(url=url, connection_timeout=2)
        with pytest.raises(BackendUnavailableError) as refused:
            await storage.initialize()
        assert "***" in str(refused.value)
        seen += [str(refused.value), str(await storage.health_check())]
    # A URL redis-py cannot parse.
    with pytest.raises(ConfigError) as bad:
        await make(url=f"redis://:{PASSWORD}@127.0.0.1:notaport/0").initialize()
    seen.append(str(bad.value))
    seen += [record.getMessage() for record in caplog.records]
    for text in seen:
        assert PASSWORD not in text, text


# -------------------------------------------------------- health, capabilities


async def test_health_of_a_stopped_server_is_an_unhealthy_report(
    own_server: RedisServer, make: Callable[..., RedisStorage]
) -> None:
    storage = make(url=own_server.url, connection_timeout=2)
    async with storage:
        own_server.stop()
        report = await storage.health_check()
    assert report["status"] == "unhealthy" and report["details"]["error_type"] == "BackendUnavailableError"
    never_opened = await make(url=own_server.url, connection_timeout=2).health_check()
    assert never_opened["status"] == "unhealthy"


async def test_capabilities_say_persistent_only_when_the_server_persists(
    storage: RedisStorage, tmp_path: Path, make: Callable[..., RedisStorage]
) -> None:
    assert storage.capabilities == frozenset({"native_ttl", "cross_process"})  # save "", appendonly no
    assert storage.supports("native_ttl") and not storage.supports("persistent")
    for name, extra in (("aof", ["--appendonly", "yes"]), ("rdb", ["--save", "3600 1"])):
        server = RedisServer(tmp_path / name, extra=extra)
        server.start()
        try:
            async with make(url=server.url) as persisting:
                assert persisting.capabilities == frozenset({"native_ttl", "cross_process", "persistent"})
                assert (await persisting.health_check())["details"]["persistent"] is True
        finally:
            server.stop()


# ------------------------------------------------------------- stats, cleanup


async def test_cleanup_leaves_no_stale_member_in_any_index(storage: RedisStorage, raw: Any) -> None:
    await storage.store_cache("native", 1, ttl=1000)
    await storage.store_cache("kept", 2, ttl=1000)
    await _expire_natively(raw, storage, "native")
    for conversation_id in ("evicted", "kept"):
        await storage.store_conversation(conversation_id, {"t": 1})
    await storage.store_reasoning_chain("evicted-agent", {"s": 1})
    await storage.store_system_state("evicted-state", 1)
    # What maxmemory eviction (or a hand-made DEL) does: the keys go, the index members stay.
    await raw.delete(
        storage.key_of(Kind.CONVERSATION, "evicted"),
        storage.key_of(Kind.REASONING_CHAINS, "evicted-agent"),
        storage.key_of(Kind.SYSTEM, "evicted-state"),
    )
    assert await storage.cleanup() == {
        "expired_cache": 1,
        "expired_conversations": 0,
        "expired_kv_entries": 0,
        "stale_index_entries": 3,
    }
    assert await raw.zrange(storage.index_of(Kind.CACHE), 0, -1) == [b"kept"]
    assert await storage.list_conversations() == ["kept"]
    assert (await storage.list_agents(), await storage.list_system_states()) == ([], [])
    assert await storage.cleanup() == {
        "expired_cache": 0,
        "expired_conversations": 0,
        "expired_kv_entries": 0,
        "stale_index_entries": 0,
    }


async def test_on_the_default_clock_cleanup_expired_cache_looks_at_expired_members_only(
    make: Callable[..., RedisStorage], raw: Any
) -> None:
    async with make(clock=time.time) as storage:
        await storage.store_cache("short", 1, ttl=0.05)
        for n in range(20):
            await storage.store_cache(f"live{n}", n, ttl=600)
        await storage.store_cache("evicted", 2, ttl=600)
        await raw.delete(storage.key_of(Kind.CACHE, "evicted"))  # as maxmemory eviction would

        async def expired_natively() -> bool:
            return int(await raw.exists(storage.key_of(Kind.CACHE, "short"))) == 0

        assert await eventually(expired_natively)
        counts: list[int] = []

        async def sweep() -> None:
            counts.append(await storage.cleanup_expired_cache())

        seen = await commands_of(raw, storage, sweep)
        # Redis removed it natively, and it is counted; the 21 members scored later are not
        # looked at one by one (no EXISTS of each), since Redis never expires a key early.
        assert counts == [1]
        assert not [c for c in seen if c["command"].upper().startswith("EXISTS")]
        assert await raw.zscore(storage.index_of(Kind.CACHE), "short") is None
        # The evicted entry's member goes with cleanup()'s housekeeping, and with any listing.
        assert (await storage.cleanup())["stale_index_entries"] == 1
        assert len(await raw.zrange(storage.index_of(Kind.CACHE), 0, -1)) == 20


async def test_an_index_member_that_is_not_utf8_is_corrupted_data(storage: RedisStorage, raw: Any) -> None:
    await storage.store_system_state("s", 1)
    await raw.sadd(storage.index_of(Kind.SYSTEM), b"\xff\xfe")
    with pytest.raises(CorruptedDataError, match="not UTF-8"):
        await storage.list_system_states()
    await raw.zadd(storage.index_of(Kind.CACHE), {b"\xff": 1})
    with pytest.raises(CorruptedDataError, match="not UTF-8"):
        await storage.list_cache_keys()


async def test_host_port_password_and_db_options_stand_in_for_the_url(
    locked_server: RedisServer, make: Callable[..., RedisStorage], prefix: str
) -> None:
    """The address in parts (seed 002's host/port/password), each replacing that part of
    redis_url; the password, percent-encoded into the URL, is never shown."""
    parts = {"host": "127.0.0.1", "port": locked_server.port, "db": 3}
    async with make(url="redis://localhost:6379/0", password=PASSWORD, **parts) as storage:
        await storage.store_system_state("s", {"v": 1})
        health = await storage.health_check()
        assert health["status"] == "healthy"
        assert PASSWORD not in repr(storage) + str(health) + repr(storage.settings)
        key = storage.key_of(Kind.SYSTEM, "s")
    raw = redis.asyncio.Redis(host="127.0.0.1", port=locked_server.port, password=PASSWORD, db=3)
    try:
        assert await raw.exists(key) == 1  # in database 3 of that server, not localhost:6379/0
    finally:
        await raw.aclose()
    wrong = make(password="wrong-password", connection_timeout=5, **parts)
    with pytest.raises(AccessDeniedError) as caught:
        await wrong.initialize()
    assert "wrong-password" not in str(caught.value)
