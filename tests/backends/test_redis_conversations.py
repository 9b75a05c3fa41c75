"""What only RedisStorage does for the conversation store: the metadata hash, native expiry
of every key of a conversation (relative to the storage clock), the expiry index that
listings prune, corrupt metadata, and one script per operation. A real redis-server runs
every test (tests/redis_server.py).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from connectome_storage import RedisStorage
from connectome_storage.errors import CorruptedDataError
from connectome_storage.interface import Kind

from ..conftest import FakeClock
from .redis_fixtures import commands_of, eventually, make_fixture, prefix_fixture, raw_fixture, storage_fixture  # noqa: F401

MSGS = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
# An id that percent-encodes (``/``, ``:``, braces, non-ASCII, a device name): the scripts
# that walk the index name its keys in Lua, and must name them as key_of does.
HOSTILE = "CON/a:{b} é"


def _sent(commands: list[dict[str, Any]]) -> list[str]:
    """Commands the client sent (those a script ran show up with client type lua)."""
    return [c["command"].split()[0].upper() for c in commands if c.get("client_type") != "lua"]


async def _fill(storage: RedisStorage, conversation_id: str, ttl: float | None = None) -> None:
    """Every kind of part, then the store's metadata."""
    await storage.store_conversation(conversation_id, {"title": "t"})
    await storage.store_chunks(conversation_id, [{"chunk": 1}])
    await storage.store_memory(conversation_id, "m", {"text": "x"})
    await storage.conversation_store().save(conversation_id, MSGS, ttl=ttl, metadata={"k": 1})


async def _ttls(raw: Any, storage: RedisStorage, conversation_id: str) -> list[int]:
    return [await raw.pttl(key) for key in storage._part_keys(conversation_id)]


# ------------------------------------------------------------------------ layout


@pytest.mark.parametrize("serializer", ["json", "msgpack"])
async def test_metadata_is_one_hash_that_round_trips_exactly(
    make: Callable[..., RedisStorage], raw: Any, prefix: str, clock: FakeClock, serializer: str
) -> None:
    metadata = {"userId": "u1", "n": 2**60, "f": 1.0, "neg": -0.5, "text": "é\u2028", "list": [None, True, {}]}
    async with make(serializer=serializer) as storage:
        store = storage.conversation_store()
        saved = await store.save("c", MSGS, ttl=90, metadata=metadata)
        key = f"{prefix}conv:{{c}}:meta"
        assert storage.meta_key_of("c") == key
        fields = await raw.hgetall(key)
        now_ms = round(clock.now * 1000)
        assert {name: value for name, value in fields.items() if name != b"metadata"} == {
            b"conversation_id": b"c", b"created_ms": str(now_ms).encode(), b"updated_ms": str(now_ms).encode(),
            b"message_count": b"2", b"ttl": b"90.0", b"expires_ms": str(now_ms + 90_000).encode(),
        }  # fmt: skip
        # The caller's dict is one field in the storage's serializer, never re-encoded by a script.
        assert fields[b"metadata"] == storage._serializer.dumps(metadata)
        assert await raw.zrange(storage.expiry_index, 0, -1, withscores=True) == [(b"c", now_ms + 90_000)]
        loaded = await store.load("c")
        assert loaded is not None and loaded == saved
        assert loaded.metadata.metadata == metadata and type(loaded.metadata.metadata["f"]) is float
        # A record written as it is (migrate does this) comes back as it was, int ttl included.
        record = await storage._meta_read("c", now_ms)
        assert record is not None
        exact = type(record)("d", 5, 6, 7, 30, None, None)
        await storage._meta_put("d", exact)
        assert await storage._meta_read("d", now_ms) == exact
        assert type((await storage._meta_read("d", now_ms)).ttl) is int  # type: ignore[union-attr]


async def test_message_count_follows_raw_history_writes_in_the_same_script(
    storage: RedisStorage, raw: Any, redis_server: Any
) -> None:
    store = storage.conversation_store()
    await store.save("c", MSGS)
    await storage.append_raw_messages("c", [{"n": 3}])  # the server now caches the script
    seen = await commands_of(raw, storage, lambda: storage.append_raw_messages("c", [{"n": 4}]))
    assert _sent(seen) == ["EVALSHA"]
    inside = [c["command"] for c in seen if c.get("client_type") == "lua"]
    assert any(command.startswith("RPUSH") for command in inside)
    assert any(command.startswith("HSET") and "message_count" in command for command in inside)
    assert await raw.hget(storage.meta_key_of("c"), "message_count") == b"4"
    await storage.pop_raw_message("c")
    assert await raw.hget(storage.meta_key_of("c"), "message_count") == b"3"
    await storage.store_raw_messages("c", [])
    assert await raw.hget(storage.meta_key_of("c"), "message_count") == b"0"
    assert await storage.list_conversations() == ["c"]  # the metadata alone keeps it


# ---------------------------------------------------------------- one round trip


async def test_every_operation_is_one_round_trip_and_append_never_reads_the_history(
    storage: RedisStorage, raw: Any
) -> None:
    store = storage.conversation_store()
    await _fill(storage, "c", ttl=600)
    await store.save("big", [{"n": i} for i in range(2000)])
    operations: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
        ("load_conversation", lambda: storage.load_conversation("c")),
        ("load_raw_messages", lambda: storage.load_raw_messages("c")),
        ("load_memories", lambda: storage.load_memories("c")),
        ("load_chunks", lambda: storage.load_chunks("c")),
        ("append_raw_messages", lambda: storage.append_raw_messages("c", [{"n": 1}])),
        ("store_conversation", lambda: storage.store_conversation("c", {"title": "u"})),
        ("store_memory", lambda: storage.store_memory("c", "m2", {"text": "y"})),
        ("list_conversations", storage.list_conversations),
        ("store.append", lambda: store.append("big", [{"n": -1}])),
        ("store.load", lambda: store.load("c")),
        ("store.exists", lambda: store.exists("c")),
        ("store.set_ttl", lambda: store.set_ttl("c", 500)),
        ("store.cleanup", store.cleanup),
        ("delete_conversation", lambda: storage.delete_conversation("gone")),
    ]
    for name, operation in operations:
        await operation()  # first use loads the script
        seen = await commands_of(raw, storage, operation)
        assert _sent(seen) == ["EVALSHA"], name
        if name == "store.append":
            inside = [c["command"].split()[0].upper() for c in seen if c.get("client_type") == "lua"]
            assert "LRANGE" not in inside and "LINDEX" not in inside, inside
    # A query reads the listing (one script) and then every metadata hash in one pipeline.
    seen = await commands_of(raw, storage, lambda: store.query().where("metadata.k", "==", 1).all())
    assert _sent(seen) == ["EVALSHA", "HGETALL", "HGETALL"]


# --------------------------------------------------------------- native expiry


async def test_every_key_gets_the_time_left_on_the_storage_clock(
    storage: RedisStorage, raw: Any, clock: FakeClock
) -> None:
    # The fake clock is years away from the server's: PEXPIRE is relative, so the keys
    # expire after the TTL, not at once and not years later.
    assert abs(clock.now - time.time()) > 86_400
    store = storage.conversation_store()
    await _fill(storage, "c", ttl=60)
    assert all(55_000 < ttl <= 60_000 for ttl in await _ttls(raw, storage, "c"))
    clock.advance(30)
    # Keys created later get the time that is left; a replaced document keeps its TTL.
    await storage.delete_memory("c", "m")
    await storage.store_memory("c", "m2", {"text": "y"})
    await storage.store_conversation("c", {"title": "again"})
    await storage.store_raw_messages("c", [{"n": 1}])
    ttls = await _ttls(raw, storage, "c")
    assert all(0 < ttl <= 60_000 for ttl in ttls), ttls
    mem, order = storage._part_keys("c")[4:6]
    assert 25_000 < await raw.pttl(mem) <= 30_000 and 25_000 < await raw.pttl(order) <= 30_000
    assert 25_000 < await raw.pttl(storage.key_of(Kind.RAW_MESSAGES, "c")) <= 30_000
    # set_ttl moves every key; removing the expiry PERSISTs every key and leaves the zset.
    assert await store.set_ttl("c", 1000)
    assert all(990_000 < ttl <= 1_000_000 for ttl in await _ttls(raw, storage, "c"))
    assert await store.set_ttl("c", None)
    assert await _ttls(raw, storage, "c") == [-1] * 6
    assert await raw.zcard(storage.expiry_index) == 0
    await storage.store_chunks("c", [{"chunk": 2}])
    assert await raw.pttl(storage.key_of(Kind.CHUNKS, "c")) == -1


async def test_the_storage_clock_decides_while_the_keys_are_still_there(
    storage: RedisStorage, raw: Any, clock: FakeClock
) -> None:
    store = storage.conversation_store()
    await _fill(storage, HOSTILE, ttl=10)
    await _fill(storage, "keep")
    clock.advance(10)
    keys = storage._part_keys(HOSTILE)
    assert await raw.exists(*keys) == 6  # the server's clock has not got there
    assert await storage.list_conversations() == ["keep"]
    # The listing dropped it from the listing index, but the expiry index keeps it (its
    # keys are still there) so that cleanup finds it: the script named its keys right.
    assert await raw.smembers(storage.index_of(Kind.CONVERSATION)) == {b"keep"}
    assert await raw.zrange(storage.expiry_index, 0, -1) == [HOSTILE.encode()]
    assert (await store.get_stats())["expired_conversations"] == 1
    # An injected clock may be anywhere relative to the server's: every read of a part checks
    # expires_ms in its script, so the keys still there read as missing.
    assert await storage.load_conversation(HOSTILE) is None and await storage.load_chunks(HOSTILE) == []
    assert await storage.load_raw_messages(HOSTILE) == [] and await storage.load_memories(HOSTILE) == []
    assert (await store.load(HOSTILE, include_expired=True)) is not None
    assert await store.cleanup() == 1
    assert await raw.exists(*keys) == 0
    assert await raw.zcard(storage.expiry_index) == 0


@pytest.mark.parametrize("write", ["store_chunks", "append_raw_messages", "store_conversation"])
async def test_a_write_to_an_expired_conversation_removes_it_whole_in_the_same_script(
    storage: RedisStorage, raw: Any, clock: FakeClock, write: str
) -> None:
    await _fill(storage, HOSTILE, ttl=10)
    await storage.list_conversations()  # not expired yet: still listed
    clock.advance(10)
    await getattr(storage, write)(HOSTILE, [{"new": 1}] if write != "store_conversation" else {"new": 1})
    keys = storage._part_keys(HOSTILE)
    slot = {"store_chunks": 3, "append_raw_messages": 2, "store_conversation": 1}[write]
    assert [await raw.exists(key) for key in keys] == [int(i == slot) for i in range(6)]
    assert await raw.pttl(keys[slot]) == -1  # the new conversation has no expiry
    assert await raw.zcard(storage.expiry_index) == 0
    assert await storage.list_conversations() == [HOSTILE]
    assert await storage.conversation_store().load(HOSTILE) is not None


async def test_on_the_default_clock_every_key_carries_the_expiry_and_reads_are_plain_commands(
    make: Callable[..., RedisStorage], raw: Any
) -> None:
    async with make(clock=time.time) as storage:
        store = storage.conversation_store()
        await store.save("c", MSGS, ttl=60)
        # Every key created after the expiry was set gets the time left, in the script that
        # creates it: a document, chunks, a memory (hash and order), a history emptied and
        # written again.
        await storage.store_conversation("c", {"title": "t"})
        await storage.store_chunks("c", [{"chunk": 1}])
        await storage.store_memory("c", "m", {"text": "x"})
        await storage.store_raw_messages("c", [])
        await storage.append_raw_messages("c", [{"n": 1}])
        await storage.store_conversation("c", {"title": "replaced"})  # keeps its TTL
        ttls = await _ttls(raw, storage, "c")
        assert all(0 < ttl <= 60_000 for ttl in ttls), ttls
        # So the server's own expiry answers as the clock would: a part is one plain command.
        for read, command in [
            (lambda: storage.load_conversation("c"), "GET"),
            (lambda: storage.load_chunks("c"), "GET"),
            (lambda: storage.load_raw_messages("c"), "LRANGE"),
        ]:
            await read()
            assert _sent(await commands_of(raw, storage, read)) == [command]
        assert await storage.load_raw_messages("c") == [{"n": 1}]
        assert await store.set_ttl("c", 0.05)
        keys = storage._part_keys("c")

        async def gone() -> bool:
            return int(await raw.exists(*keys)) == 0

        assert await eventually(gone)
        assert await storage.load_conversation("c") is None and await storage.load_chunks("c") == []
        assert await storage.load_raw_messages("c") == [] and await storage.load_memories("c") == []
        # A key of the wrong type is still named on the plain path.
        await raw.hset(storage.key_of(Kind.CONVERSATION, "d"), "not", "a string")
        with pytest.raises(CorruptedDataError, match="wrong Redis type"):
            await storage.load_conversation("d")


@pytest.mark.parametrize("sweep", ["listing", "cleanup"])
async def test_redis_expires_every_key_natively_and_no_index_entry_is_left(
    make: Callable[..., RedisStorage], raw: Any, prefix: str, sweep: str
) -> None:
    # The real clock: the server removes the keys by itself, about a second later.
    async with make(clock=time.time) as storage:
        store = storage.conversation_store()
        await _fill(storage, HOSTILE, ttl=1)
        await _fill(storage, "keep")
        await storage.append_raw_messages(HOSTILE, [{"n": 3}])
        keys = storage._part_keys(HOSTILE)
        assert await raw.exists(*keys) == 6

        async def gone() -> bool:
            return int(await raw.exists(*keys)) == 0

        assert await eventually(gone)
        # Nothing has read it since: only the indexes still mention it.
        assert await raw.sismember(storage.index_of(Kind.CONVERSATION), HOSTILE)
        assert await raw.zscore(storage.expiry_index, HOSTILE) is not None
        if sweep == "listing":
            assert await store.list() == ["keep"]
        else:
            assert (await storage.cleanup())["expired_conversations"] == 1
        name = storage._part_keys(HOSTILE)[0].split("{")[1].split("}")[0]
        leftover = [key async for key in raw.scan_iter(match=f"{prefix}*") if name.encode() in key]
        assert leftover == []
        mentions = [
            member
            for index in (storage.index_of(Kind.CONVERSATION), storage.expiry_index)
            for member in (
                await raw.zrange(index, 0, -1) if index == storage.expiry_index else await raw.smembers(index)
            )
            if member == HOSTILE.encode()
        ]
        assert mentions == []
        assert await storage.list_conversations() == ["keep"]


# ------------------------------------------------------------- corrupt metadata


async def test_corrupt_metadata_is_named_and_saving_again_repairs_it(storage: RedisStorage, raw: Any) -> None:
    store = storage.conversation_store()
    await store.save("bad", MSGS, metadata={"k": 1})
    await store.save("wrongtype", MSGS)
    await store.save("good", MSGS)
    await raw.hset(storage.meta_key_of("bad"), "expires_ms", "soon")
    await raw.delete(storage.meta_key_of("wrongtype"))
    await raw.set(storage.meta_key_of("wrongtype"), "not a hash")
    with pytest.raises(CorruptedDataError) as bad:
        await store.load("bad")
    assert bad.value.path == storage.meta_key_of("bad") and "expires_ms" in str(bad.value)
    with pytest.raises(CorruptedDataError) as wrong:
        await storage.load_raw_messages("wrongtype")
    assert storage.meta_key_of("wrongtype") in str(wrong.value)
    problems = [problem.location for problem in await storage.verify()]
    assert sorted(problems) == [storage.meta_key_of("bad"), storage.meta_key_of("wrongtype")]
    loaded = await store.load("good")
    assert loaded is not None and loaded.messages == MSGS
    # save() reads the stored metadata first (to keep created_at), so it cannot get past a
    # damaged one; deleting the conversation can, whatever the key holds.
    assert await store.delete("wrongtype")
    await store.save("wrongtype", MSGS)
    assert {problem.location for problem in await storage.verify()} == {storage.meta_key_of("bad")}
