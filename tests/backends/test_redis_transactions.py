"""Transactions on Redis (connectome_storage/backends/_redis_tx.py): one MULTI/EXEC on a
connection of the transaction's own, WATCH on every key it touched, and commits that fail
for real (a refused command, a value over the server's limit, a watched key changed, a
script failing inside EXEC, a dropped connection), each on a real redis-server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio

from connectome_storage import RedisStorage
from connectome_storage.errors import AccessDeniedError, TransactionError, ValueTooLargeError

from ..conftest import FakeClock
from ..redis_server import RedisServer
from .redis_fixtures import commands_of, make_fixture, own_server_fixture, prefix_fixture, raw_fixture, storage_fixture  # noqa: F401

PASSWORD = "tx-Secret-pw"
MIB = 1024 * 1024
MSGS = [{"role": "user", "content": "hi"}]


@pytest.fixture
async def limited_user(raw: Any, prefix: str, tmp_path: Path) -> AsyncIterator[str]:
    """An ACL user who may write every key of the prefix but only read its system states."""
    name = f"tx-user-{tmp_path.name}"
    patterns = [f"~{prefix}{part}*" for part in ("conv:", "idx:", "kv:", "meta:", "agent:", "cache:")]
    await raw.execute_command("ACL", "SETUSER", name, "reset", "on", f">{PASSWORD}", "+@all", *patterns)
    await raw.execute_command("ACL", "SETUSER", name, f"%R~{prefix}system:*")
    yield name
    await raw.execute_command("ACL", "DELUSER", name)


async def _nothing_of_it(storage: RedisStorage) -> None:
    assert await storage.load_conversation("c1") is None
    assert await storage.load_raw_messages("c1") == []
    assert await storage.kv("sessions").get("s1") is None
    assert await storage.list_conversations() == []


async def test_the_commit_is_one_multi_exec_on_the_connection_that_watched(
    storage: RedisStorage, raw: Any, prefix: str
) -> None:
    async def turn() -> None:
        async with storage.transaction() as tx:
            await tx.store_conversation("c1", {"round": 1})
            await tx.append_raw_messages("c1", MSGS)
            await tx.store_system_state("state", 1)
            await tx.kv("sessions").set("s1", 1)

    seen = [info for info in await commands_of(raw, storage, turn) if info["client_type"] != "lua"]
    names = [info["command"].split(" ", 1)[0].upper() for info in seen]
    start, end = names.index("MULTI"), names.index("EXEC")
    # The writes: one EVAL per op, all between MULTI and EXEC; outside them only reads (the
    # overlay's: read scripts by EVALSHA, HGETALL, HMGET) and WATCH.
    assert [i for i, n in enumerate(names) if n == "EVAL"] == list(range(start + 1, end)), names
    assert end - start - 1 == 4
    assert not {"SET", "RPUSH", "RPUSHX", "HSET", "SADD", "DEL"} & set(names), names
    watching = {info["client_port"] for info in seen if info["command"].upper().startswith("WATCH")}
    assert watching == {seen[end]["client_port"]}  # WATCH and EXEC: one connection
    watched = " ".join(info["command"] for info in seen if info["command"].upper().startswith("WATCH"))
    for key in (f"{prefix}conv:{{c1}}:current", f"{prefix}conv:{{c1}}:raw", f"{prefix}system:{{state}}"):
        assert key in watched
    assert f"{prefix}idx:" not in watched  # indexes are shared by every entity: never watched
    assert await storage.load_raw_messages("c1") == MSGS


async def test_a_touched_key_written_by_another_fails_the_commit_and_nothing_is_applied(
    storage: RedisStorage, make: Callable[..., RedisStorage]
) -> None:
    await storage.kv("sessions").set("s1", {"turn": 1})
    async with make() as other:
        with pytest.raises(TransactionError, match=r"changed by another writer.*retry the transaction"):
            async with storage.transaction() as tx:
                entry = await tx.kv("sessions").get("s1")
                await tx.store_conversation("c1", {"title": "t"})
                await tx.append_raw_messages("c1", MSGS)
                await other.kv("sessions").set("s1", {"turn": 5})  # after the transaction read it
                await tx.kv("sessions").set("s1", {"turn": entry["turn"] + 1})
        assert await storage.kv("sessions").get("s1") == {"turn": 5}  # the other writer's update stays
        assert await storage.load_conversation("c1") is None
        assert await storage.load_raw_messages("c1") == []
        # A write to an entity the transaction did not touch (sharing its index sets) is no conflict.
        async with storage.transaction() as tx:
            await tx.store_system_state("mine", 1)
            await other.store_system_state("theirs", 2)
            await tx.append_raw_messages("c1", MSGS)
        assert await storage.list_system_states() == ["mine", "theirs"]
        assert await storage.load_raw_messages("c1") == MSGS


async def test_a_command_refused_by_the_server_fails_the_commit_and_nothing_is_applied(
    make: Callable[..., RedisStorage], redis_server: RedisServer, limited_user: str
) -> None:
    async with make():  # the prefix is claimed (its serializer marker written) by a full user
        pass
    async with make(url=f"redis://{limited_user}:{PASSWORD}@127.0.0.1:{redis_server.port}/0") as storage:
        with pytest.raises(TransactionError, match="nothing of it was applied") as caught:
            async with storage.transaction() as tx:
                await tx.store_conversation("c1", {"title": "t"})
                await tx.append_raw_messages("c1", MSGS)
                await tx.kv("sessions").set("s1", 1)
                await tx.store_system_state("state", 1)  # refused by the ACL, queued after the others
        assert isinstance(caught.value.__cause__, AccessDeniedError)
        await _nothing_of_it(storage)
        assert await storage.load_system_state("state") is None


async def test_a_value_over_the_servers_limit_fails_the_commit_before_anything_is_sent(
    own_server: RedisServer, make: Callable[..., RedisStorage]
) -> None:
    client = redis.asyncio.Redis.from_url(own_server.url)
    try:
        assert await client.config_set("proto-max-bulk-len", "1mb")
    finally:
        await client.aclose()
    async with make(url=own_server.url) as storage:
        with pytest.raises(TransactionError, match="proto-max-bulk-len") as caught:
            async with storage.transaction() as tx:
                await tx.store_conversation("c1", {"title": "t"})
                await tx.kv("sessions").set("s1", 1)
                await tx.append_raw_messages("c1", [{"text": "x" * (MIB + 10)}])
        assert isinstance(caught.value.__cause__, ValueTooLargeError)
        await _nothing_of_it(storage)
        async with storage.transaction() as tx:  # the connection went back to the pool, usable
            await tx.store_conversation("c1", {"title": "t"})
        assert await storage.load_conversation("c1") == {"title": "t"}


async def test_a_script_failing_inside_exec_is_reported_as_applied_in_part(
    storage: RedisStorage, raw: Any, prefix: str
) -> None:
    """What Redis cannot roll back: a key the transaction never reads (here the system-state
    index, damaged by hand) makes one script fail while EXEC runs; the others stay applied,
    and the commit says so rather than claiming nothing happened."""
    await raw.set(f"{prefix}idx:system", "not a set")
    with pytest.raises(TransactionError, match="does not roll back: every other write") as caught:
        async with storage.transaction() as tx:
            await tx.store_conversation("c1", {"title": "t"})
            await tx.store_system_state("state", 1)
            await tx.kv("sessions").set("s1", 1)
    assert "1 of its 3 writes failed" in str(caught.value)
    assert "nothing of it was applied" not in str(caught.value)
    assert await storage.load_conversation("c1") == {"title": "t"}
    assert await storage.kv("sessions").get("s1") == 1


async def test_a_connection_dropped_before_exec_reports_an_unknown_outcome(storage: RedisStorage, raw: Any) -> None:
    with pytest.raises(TransactionError, match="whether it did is unknown"):
        async with storage.transaction() as tx:
            await tx.store_system_state("state", 1)
            clients = await raw.client_list()
            watching = [c["id"] for c in clients if c.get("cmd") == "watch"]
            assert len(watching) == 1
            await raw.client_kill_filter(_id=watching[0])
    assert await storage.load_system_state("state") is None  # killed before EXEC: not applied
    await storage.store_system_state("state", 2)  # the storage goes on
    assert await storage.load_system_state("state") == 2


async def test_expiry_inside_a_transaction_follows_the_storage_clock(
    storage: RedisStorage, raw: Any, prefix: str, clock: FakeClock
) -> None:
    """Relative PEXPIRE, as outside a transaction: keys expire after the time left on the
    storage clock, however far that clock is from the server's."""
    async with storage.transaction() as tx:
        await tx.conversation_store().save("c1", MSGS, ttl=60)
        await tx.kv("sessions").set("s1", 1, ttl=30)
        await tx.store_cache("k", 1, ttl=3600)
    assert 59_000 <= await raw.pttl(f"{prefix}conv:{{c1}}:raw") <= 60_000
    assert 59_000 <= await raw.pttl(f"{prefix}conv:{{c1}}:meta") <= 60_000
    assert 29_000 <= await raw.pttl(f"{prefix}kv:{{sessions}}:e:s1") <= 30_000
    assert 3_599_000 <= await raw.pttl(f"{prefix}cache:{{k}}") <= 3_600_000
    clock.advance(20)
    async with storage.transaction() as tx:
        await tx.store_chunks("c1", [{"n": 1}])  # a new key of the conversation: the time it has left
    assert 39_000 <= await raw.pttl(f"{prefix}conv:{{c1}}:chunks") <= 40_000
    clock.advance(40)
    async with storage.transaction() as tx:
        assert await tx.load_raw_messages("c1") == []  # expired on the storage clock
