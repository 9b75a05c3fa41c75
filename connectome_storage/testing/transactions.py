"""The transaction contract (docs/transactions.md): commit, rollback, read-your-writes,
nesting, and writers that wait (or a commit that fails rather than lose their update)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from connectome_storage import StorageInterface
from connectome_storage.errors import SerializationError, TransactionError

MSGS = [{"role": "user", "content": "hi"}]


class Boom(Exception):
    """Raised inside a transaction block to roll it back."""


async def write_one_of_each(tx: StorageInterface, round_number: int) -> None:
    """A turn of an agent: every kind of write a transaction can hold."""
    await tx.store_conversation("c1", {"round": round_number})
    await tx.append_raw_messages("c1", [{"round": round_number}])
    await tx.store_memory("c1", "m1", {"round": round_number})
    await tx.store_chunks("c1", [{"round": round_number}])
    await tx.store_reasoning_chain("agent", {"round": round_number})
    await tx.store_cache("cache-key", {"round": round_number}, ttl=3600)
    await tx.store_system_state("state", {"round": round_number})
    await tx.kv("sessions").set("s1", {"round": round_number}, tags={"user": "u1"})
    await tx.conversation_store().append("c2", [{"round": round_number}])


# What snapshot() shows of a storage where nothing was written.
NOTHING: dict[str, Any] = {
    "document": None, "messages": [], "memories": [], "chunks": [], "chains": [], "cache": None, "state": None,
    "kv": None, "tagged": [], "store": None, "conversations": [],
}  # fmt: skip


async def refused_across_slots(storage: StorageInterface, body: Callable[[StorageInterface], Any]) -> None:
    """On a ``sharded`` storage (Redis Cluster), a transaction may touch the entities of one
    hash slot only: ``body``, which touches several, is refused with TransactionError at the
    touch that leaves the slot, and nothing of it is applied."""
    assert storage.supports("sharded")
    with pytest.raises(TransactionError, match="one hash slot"):
        async with storage.transaction() as tx:
            await body(tx)


async def snapshot(storage: StorageInterface) -> dict[str, Any]:
    conversation = await storage.conversation_store().load("c2")
    return {
        "document": await storage.load_conversation("c1"),
        "messages": await storage.load_raw_messages("c1"),
        "memories": await storage.load_memories("c1"),
        "chunks": await storage.load_chunks("c1"),
        "chains": await storage.load_reasoning_chains("agent"),
        "cache": await storage.load_cache("cache-key"),
        "state": await storage.load_system_state("state"),
        "kv": await storage.kv("sessions").get("s1"),
        "tagged": await storage.kv("sessions").find_by_tag("user", "u1"),
        "store": None if conversation is None else (conversation.messages, conversation.metadata.message_count),
        "conversations": await storage.list_conversations(),
    }


async def test_leaving_the_block_commits_everything(
    storage: StorageInterface, make_storage: Callable[..., StorageInterface]
) -> None:
    if storage.supports("sharded"):  # these entities are in several hash slots: refused whole
        await refused_across_slots(storage, lambda tx: write_one_of_each(tx, 1))
        assert await snapshot(storage) == NOTHING
        return
    async with storage.transaction() as tx:
        await write_one_of_each(tx, 1)
    expected = {
        "document": {"round": 1}, "messages": [{"round": 1}], "memories": [{"round": 1, "memory_id": "m1"}],
        "chunks": [{"round": 1}], "chains": [{"round": 1}], "cache": {"round": 1}, "state": {"round": 1},
        "kv": {"round": 1}, "tagged": ["s1"], "store": ([{"round": 1}], 1), "conversations": ["c1", "c2"],
    }  # fmt: skip
    assert await snapshot(storage) == expected
    async with make_storage() as other:
        assert await snapshot(other) == expected


async def test_an_exception_rolls_back_everything_and_propagates(storage: StorageInterface) -> None:
    if storage.supports("sharded"):  # one slot at a time: the rollback of one conversation's writes
        await storage.store_conversation("c1", {"round": 1})
        before = await snapshot(storage)
        with pytest.raises(Boom):
            async with storage.transaction() as tx:
                await tx.store_conversation("c1", {"round": 2})
                await tx.append_raw_messages("c1", MSGS)
                await tx.store_memory("c1", "m1", {"round": 2})
                await tx.store_chunks("c1", [{"round": 2}])
                raise Boom
        assert await snapshot(storage) == before
        await refused_across_slots(storage, lambda tx: write_one_of_each(tx, 2))
        assert await snapshot(storage) == before
        return
    async with storage.transaction() as tx:
        await write_one_of_each(tx, 1)
    before = await snapshot(storage)
    with pytest.raises(Boom):
        async with storage.transaction() as tx:
            await write_one_of_each(tx, 2)
            await tx.delete_memory("c1", "m1")
            await tx.kv("sessions").set("s2", {"new": True})
            await tx.conversation_store().save("c3", MSGS, ttl=60)
            await tx.store_cache("other", 1)
            raise Boom
    assert await snapshot(storage) == before
    assert await storage.kv("sessions").get("s2") is None
    assert await storage.conversation_store().load("c3") is None
    assert await storage.load_cache("other") is None


async def test_a_transaction_reads_its_own_writes_and_others_see_none_until_commit(
    storage: StorageInterface, make_storage: Callable[..., StorageInterface]
) -> None:
    await storage.store_raw_messages("c1", MSGS)
    await storage.kv("sessions").set("s0", 0)
    if storage.supports("sharded"):

        async def across(tx: StorageInterface) -> None:
            await tx.store_conversation("c1", {"title": "new"})
            assert await tx.load_conversation("c1") == {"title": "new"}
            await tx.kv("sessions").set("s1", 1)  # another slot: refused here

        await refused_across_slots(storage, across)
        assert await storage.load_conversation("c1") is None
        assert await storage.kv("sessions").keys() == ["s0"]
        return
    async with make_storage() as other, storage.transaction() as tx:
        await tx.store_conversation("c1", {"title": "new"})
        assert await tx.append_raw_messages("c1", [{"n": 2}]) == 2
        assert await tx.load_raw_messages("c1") == [*MSGS, {"n": 2}]
        assert await tx.pop_raw_message("c1") == {"n": 2}
        await tx.store_memory("c1", "m2", {"text": "b"})
        await tx.store_memory("c1", "m1", {"text": "a"})
        await tx.store_memory("c1", "m2", {"text": "b again"})  # keeps its place
        assert [m["memory_id"] for m in await tx.load_memories("c1")] == ["m2", "m1"]
        assert await tx.load_conversation("c1") == {"title": "new"}
        kv = tx.kv("sessions")
        await kv.set("s1", 1)
        await kv.delete("s0")
        assert await kv.keys() == ["s1"]
        assert [entry.key for entry in await kv.query()] == ["s1"]
        assert await tx.list_namespaces() == ["sessions"]
        await tx.store_system_state("flag", None)  # None is a value
        assert await tx.list_system_states() == ["flag"]
        meta = await tx.conversation_store().append("c2", MSGS)
        assert meta.message_count == 1
        assert await tx.list_conversations() == ["c1", "c2"]
        # Nothing is visible outside yet, to this storage or another.
        for outside in (storage, other):
            assert await outside.load_conversation("c1") is None
            assert await outside.load_raw_messages("c1") == MSGS
            assert await outside.kv("sessions").keys() == ["s0"]
            assert await outside.list_conversations() == ["c1"]
    assert await storage.load_raw_messages("c1") == MSGS
    assert [m["text"] for m in await storage.load_memories("c1")] == ["b again", "a"]
    assert await storage.kv("sessions").keys() == ["s1"]
    assert await storage.list_system_states() == ["flag"]


async def test_values_returned_inside_a_transaction_are_copies(storage: StorageInterface) -> None:
    async with storage.transaction() as tx:
        document = {"items": [1]}
        await tx.store_conversation("c1", document)
        document["items"].append(2)
        loaded = await tx.load_conversation("c1")
        assert loaded == {"items": [1]}
        loaded["items"].append(3)
        assert await tx.load_conversation("c1") == {"items": [1]}
    assert await storage.load_conversation("c1") == {"items": [1]}


async def test_bad_input_inside_a_transaction_is_refused_at_once(storage: StorageInterface) -> None:
    with pytest.raises(SerializationError):
        async with storage.transaction() as tx:
            await tx.store_system_state("ok", 1)
            await tx.store_system_state("bad", {1, 2})
    assert await storage.list_system_states() == []


async def test_transactions_do_not_nest(storage: StorageInterface) -> None:
    async with storage.transaction() as tx:
        with pytest.raises(TransactionError, match="nest"):
            async with tx.transaction():
                pass
        with pytest.raises(TransactionError, match="nest"):
            async with storage.transaction():
                pass
        await tx.store_system_state("s", 1)
    assert await storage.load_system_state("s") == 1
    async with storage.transaction() as again:  # closed: a new one may open
        await again.store_system_state("s", 2)
    assert await storage.load_system_state("s") == 2


async def test_a_finished_transaction_cannot_be_used(storage: StorageInterface) -> None:
    async with storage.transaction() as tx:
        await tx.store_system_state("s", 1)
    with pytest.raises(TransactionError, match="ended"):
        await tx.store_system_state("s", 2)
    with pytest.raises(TransactionError, match="ended"):
        await tx.load_system_state("s")
    assert await storage.load_system_state("s") == 1


async def test_an_empty_transaction_commits_nothing(storage: StorageInterface) -> None:
    async with storage.transaction() as tx:
        assert await tx.load_conversation("nothing") is None
    assert await storage.list_conversations() == []


async def test_a_write_to_an_expired_conversation_starts_it_afresh(storage: StorageInterface, clock: Any) -> None:
    store = storage.conversation_store()
    await store.save("c1", MSGS, ttl=10)
    await storage.store_chunks("c1", [{"old": True}])
    clock.advance(10)
    async with storage.transaction() as tx:
        assert await tx.load_raw_messages("c1") == []
        assert await tx.append_raw_messages("c1", [{"new": 1}]) == 1
    assert await storage.load_raw_messages("c1") == [{"new": 1}]
    assert await storage.load_chunks("c1") == []


async def test_a_writer_of_a_touched_entity_waits_or_the_commit_fails(
    storage: StorageInterface, make_storage: Callable[..., StorageInterface]
) -> None:
    """A read-modify-write racing another writer: the other writer's update is never lost.
    Backends that lock (file, SQLite, memory) make the writer wait for the commit; Redis,
    which cannot lock, fails the commit with TransactionError instead."""
    await storage.store_system_state("counter", 10)
    async with make_storage() as other:
        writer: asyncio.Task[Any] | None = None
        try:
            async with storage.transaction() as tx:
                value = await tx.load_system_state("counter")
                writer = asyncio.create_task(other.store_system_state("counter", 100))
                await asyncio.sleep(0.2)  # time for the writer to try (it either waits or writes now)
                waited = not writer.done()
                await tx.store_system_state("counter", value + 1)
            committed = True
        except TransactionError:
            committed, waited = False, False
        assert writer is not None
        await writer
        # Either the writer waited for the commit and wrote after it, or the commit failed:
        # never 11, which would mean the writer's 100 was lost.
        assert await storage.load_system_state("counter") == 100
        assert waited or not committed


# What this module adds to the suite: every test above, in the order they are defined.
__all__ = [name for name in list(globals()) if name.startswith("test_")]
