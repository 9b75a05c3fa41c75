"""The conversation store's contract (docs/conversations.md), run once per backend.

Every storage runs on a fake clock that the test moves by hand: expiry is decided by the
storage's clock on every backend (Redis also expires keys natively, a TTL later by the
server's clock), so these tests are exact and never sleep.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from connectome_storage import StorageInterface
from connectome_storage.errors import InvalidArgumentError, InvalidKeyError, SerializationError

MSGS = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


def at(clock: Any, seconds: float = 0) -> datetime:
    return datetime.fromtimestamp(clock.now + seconds, tz=UTC)


# ------------------------------------------------------------------ save, load, append


async def test_save_then_load_returns_messages_and_metadata(storage: StorageInterface, clock: Any) -> None:
    store = storage.conversation_store()
    saved = await store.save("conv-1", MSGS, metadata={"userId": "u1"})
    loaded = await store.load("conv-1")
    assert loaded is not None
    assert loaded == saved
    assert loaded.messages == MSGS
    meta = loaded.metadata
    assert (meta.conversation_id, meta.message_count, meta.ttl, meta.expires_at) == ("conv-1", 2, None, None)
    assert meta.created_at == meta.updated_at == at(clock)
    assert meta.metadata == {"userId": "u1"}


async def test_save_keeps_created_at_and_stored_metadata_when_none_given(storage: StorageInterface, clock: Any) -> None:
    store = storage.conversation_store()
    await store.save("c", MSGS, metadata={"a": 1})
    clock.advance(5)
    again = await store.save("c", MSGS[:1])
    assert again.metadata.created_at == at(clock, -5)
    assert again.metadata.updated_at == at(clock)
    assert again.metadata.metadata == {"a": 1}
    assert again.metadata.message_count == 1
    replaced = await store.save("c", MSGS, metadata={"b": 2})
    assert replaced.metadata.metadata == {"b": 2}
    loaded = await store.load("c")
    assert loaded is not None and loaded.messages == MSGS and loaded.metadata.metadata == {"b": 2}


async def test_the_store_is_a_view_over_the_raw_history(storage: StorageInterface) -> None:
    store = storage.conversation_store()
    await store.save("c", MSGS)
    assert await storage.load_raw_messages("c") == MSGS
    assert await storage.list_conversations() == ["c"]
    await storage.append_raw_messages("c", [{"n": 3}])
    await storage.store_conversation("c", {"title": "t"})
    loaded = await store.load("c")
    assert loaded is not None
    assert loaded.messages == [*MSGS, {"n": 3}]
    assert loaded.metadata.message_count == 3  # the storage methods keep the count in step


@pytest.mark.parametrize("change", ["store", "pop", "empty"])
async def test_every_raw_history_write_keeps_message_count(storage: StorageInterface, change: str) -> None:
    store = storage.conversation_store()
    await store.save("c", MSGS)
    if change == "store":
        await storage.store_raw_messages("c", [{"n": i} for i in range(5)])
        expected = 5
    elif change == "pop":
        await storage.pop_raw_message("c")
        expected = 1
    else:
        await storage.store_raw_messages("c", [])
        expected = 0
    [row] = await store.query().all()
    assert row.message_count == expected
    loaded = await store.load("c")
    assert loaded is not None and loaded.metadata.message_count == expected


async def test_append_creates_then_extends_without_touching_created_at(storage: StorageInterface, clock: Any) -> None:
    store = storage.conversation_store()
    first = await store.append("c", MSGS[:1])
    assert (first.message_count, first.created_at, first.updated_at) == (1, at(clock), at(clock))
    clock.advance(10)
    second = await store.append("c", MSGS[1:])
    assert (second.message_count, second.created_at, second.updated_at) == (2, at(clock, -10), at(clock))
    clock.advance(10)
    quiet = await store.append("c", [{"n": 3}], update_timestamp=False)
    assert (quiet.message_count, quiet.updated_at) == (3, at(clock, -10))
    loaded = await store.load("c")
    assert loaded is not None and loaded.messages == [*MSGS, {"n": 3}] and loaded.metadata == quiet


async def test_append_to_a_conversation_without_metadata_counts_its_history(storage: StorageInterface) -> None:
    await storage.store_raw_messages("c", MSGS)
    meta = await storage.conversation_store().append("c", [{"n": 3}])
    assert meta.message_count == 3


async def test_a_conversation_stored_without_the_store_has_no_times(storage: StorageInterface) -> None:
    store = storage.conversation_store()
    await storage.store_raw_messages("plain", MSGS)
    loaded = await store.load("plain")
    assert loaded is not None and loaded.messages == MSGS
    meta = loaded.metadata
    assert (meta.created_at, meta.updated_at, meta.ttl, meta.metadata) == (None, None, None, {})
    assert meta.message_count == 2
    assert await store.exists("plain")
    assert await store.get_ttl("plain") == -1.0
    assert await store.list() == ["plain"]
    [row] = await store.query().all()
    assert (row.conversation_id, row.message_count, row.created_at) == ("plain", None, None)


async def test_values_are_copies_both_ways(storage: StorageInterface) -> None:
    store = storage.conversation_store()
    messages = [{"role": "user", "content": "hi", "tags": ["a"]}]
    metadata: dict[str, Any] = {"userId": "u1", "nested": {"k": [1]}}
    saved = await store.save("c", messages, metadata=metadata)
    messages[0]["content"] = "changed"
    metadata["nested"]["k"].append(2)
    saved.messages[0]["tags"].append("b")
    saved.metadata.metadata["userId"] = "other"
    loaded = await store.load("c")
    assert loaded is not None
    assert loaded.messages == [{"role": "user", "content": "hi", "tags": ["a"]}]
    assert loaded.metadata.metadata == {"userId": "u1", "nested": {"k": [1]}}
    loaded.messages.clear()
    again = await store.load("c")
    assert again is not None and len(again.messages) == 1


async def test_a_second_storage_object_sees_the_same_conversations(
    storage: StorageInterface, make_storage: Callable[..., StorageInterface], clock: Any
) -> None:
    await storage.conversation_store().save("c", MSGS, ttl=60, metadata={"k": "v"})
    async with make_storage() as other:
        loaded = await other.conversation_store().load("c")
    assert loaded is not None
    assert loaded.metadata.metadata == {"k": "v"}
    assert loaded.metadata.expires_at == at(clock, 60)
    assert loaded.metadata.ttl == 60


# ----------------------------------------------------------------------- delete, clear


async def test_delete_exists_clear(storage: StorageInterface) -> None:
    store = storage.conversation_store()
    await store.save("a", MSGS)
    await store.save("b", MSGS)
    await storage.store_memory("b", "m1", {"text": "x"})
    assert await store.exists("a") and await store.delete("a")
    assert not await store.exists("a") and not await store.delete("a")
    assert await store.load("a") is None
    assert await store.get_ttl("a") == -2.0
    assert await store.clear() == 1
    assert await store.list() == [] and await storage.list_conversations() == []
    assert await storage.load_memories("b") == []


async def test_stats(storage: StorageInterface, clock: Any) -> None:
    store = storage.conversation_store()
    await store.save("a", MSGS)
    await store.save("b", MSGS[:1], ttl=10)
    await store.save("c", MSGS, ttl=100)
    clock.advance(20)
    stats = await store.get_stats()
    assert {k: stats[k] for k in ("total_conversations", "total_messages", "expired_conversations")} == {
        "total_conversations": 2, "total_messages": 4, "expired_conversations": 1,
    }  # fmt: skip
    assert stats["storage_size"] > 0
    full = await storage.get_storage_stats()
    assert (full["conversation_count"], full["expired_conversation_count"]) == (2, 1)


# --------------------------------------------------------------------------------- TTL


async def test_ttl_counts_down_then_the_conversation_is_absent_everywhere(
    storage: StorageInterface, clock: Any
) -> None:
    store = storage.conversation_store()
    await store.save("c", MSGS, ttl=60)
    await storage.store_conversation("c", {"title": "t"})
    await storage.store_chunks("c", [{"chunk": 1}])
    await storage.store_memory("c", "m", {"text": "x"})
    await store.save("keep", MSGS)
    assert await store.get_ttl("c") == 60.0
    clock.advance(59.5)
    assert await store.get_ttl("c") == 0.5
    assert await store.exists("c")
    clock.advance(0.5)
    assert await store.load("c") is None
    assert not await store.exists("c")
    assert await store.get_ttl("c") == -2.0
    assert await store.list() == ["keep"]
    assert await storage.list_conversations() == ["keep"]
    assert await storage.load_conversation("c") is None
    assert await storage.load_raw_messages("c") == []
    assert await storage.load_chunks("c") == []
    assert await storage.load_memories("c") == []
    assert [row.conversation_id for row in await store.query().all()] == ["keep"]
    assert not await store.delete("c")  # it is already gone as far as anyone can see


async def test_include_expired_until_cleanup_removes_it(storage: StorageInterface, clock: Any) -> None:
    store = storage.conversation_store()
    await store.save("c", MSGS, ttl=10, metadata={"k": 1})
    clock.advance(11)
    kept = await store.load("c", include_expired=True)
    assert kept is not None and kept.messages == MSGS and kept.metadata.metadata == {"k": 1}
    assert await store.cleanup() == 1
    assert await store.load("c", include_expired=True) is None
    assert (await store.get_stats())["expired_conversations"] == 0


async def test_storage_cleanup_reports_expired_conversations(storage: StorageInterface, clock: Any) -> None:
    store = storage.conversation_store()
    await store.save("a", MSGS, ttl=10)
    await store.save("b", MSGS, ttl=10)
    await store.save("c", MSGS)
    clock.advance(10)
    removed = await storage.cleanup()
    assert removed["expired_conversations"] == 2
    assert (await storage.cleanup())["expired_conversations"] == 0
    assert await storage.list_conversations() == ["c"]


async def test_a_write_to_an_expired_conversation_starts_a_new_one(storage: StorageInterface, clock: Any) -> None:
    store = storage.conversation_store()
    await store.save("c", MSGS, ttl=10, metadata={"old": True})
    await storage.store_chunks("c", [{"chunk": 1}])
    await storage.store_memory("c", "m", {"text": "x"})
    clock.advance(10)
    assert await storage.append_raw_messages("c", [{"new": 1}]) == 1
    assert await storage.load_chunks("c") == []
    assert await storage.load_memories("c") == []
    loaded = await store.load("c")
    assert loaded is not None and loaded.messages == [{"new": 1}]
    assert loaded.metadata.created_at is None  # the old metadata went with the old conversation
    assert (await store.get_stats())["expired_conversations"] == 0


async def test_append_to_an_expired_conversation_creates_it_afresh(storage: StorageInterface, clock: Any) -> None:
    store = storage.conversation_store()
    await store.save("c", MSGS, ttl=10, metadata={"old": True})
    clock.advance(10)
    meta = await store.append("c", [{"n": 1}])
    assert (meta.message_count, meta.created_at, meta.metadata, meta.ttl) == (1, at(clock), {}, None)


async def test_set_ttl_and_get_ttl(storage: StorageInterface, clock: Any) -> None:
    store = storage.conversation_store()
    assert not await store.set_ttl("missing", 10)
    await store.save("c", MSGS)
    assert await store.get_ttl("c") == -1.0
    assert await store.set_ttl("c", 30)
    assert await store.get_ttl("c") == 30.0
    loaded = await store.load("c")
    assert loaded is not None and loaded.metadata.ttl == 30 and loaded.metadata.expires_at == at(clock, 30)
    assert await store.set_ttl("c", None)
    assert await store.get_ttl("c") == -1.0
    clock.advance(100)
    assert await store.exists("c")


async def test_set_ttl_expires_every_part_and_parts_written_later(storage: StorageInterface, clock: Any) -> None:
    store = storage.conversation_store()
    await storage.store_raw_messages("c", MSGS)  # no metadata yet
    await storage.store_conversation("c", {"title": "t"})
    assert await store.set_ttl("c", 10)
    loaded = await store.load("c")
    assert loaded is not None and loaded.metadata.message_count == 2
    await storage.store_chunks("c", [{"chunk": 1}])  # written after the TTL was set
    await storage.store_memory("c", "m", {"text": "x"})
    await storage.append_raw_messages("c", [{"n": 3}])
    clock.advance(10)
    assert await storage.list_conversations() == []
    assert await storage.load_conversation("c") is None
    assert await storage.load_chunks("c") == []
    assert await storage.load_memories("c") == []
    assert await storage.load_raw_messages("c") == []


async def test_set_ttl_on_an_expired_conversation_is_false(storage: StorageInterface, clock: Any) -> None:
    store = storage.conversation_store()
    await store.save("c", MSGS, ttl=5)
    clock.advance(5)
    assert not await store.set_ttl("c", 100)
    assert await store.load("c") is None


async def test_default_ttl(storage: StorageInterface, clock: Any) -> None:
    store = storage.conversation_store(default_ttl=100)
    saved = await store.save("s", MSGS)
    appended = await store.append("a", MSGS)
    assert saved.metadata.expires_at == appended.expires_at == at(clock, 100)
    explicit = await store.save("e", MSGS, ttl=5)
    assert explicit.metadata.ttl == 5
    clock.advance(50)
    again = await store.append("a", MSGS)  # appending does not move the expiry
    assert again.expires_at == at(clock, 50)
    with pytest.raises(InvalidArgumentError):
        storage.conversation_store(default_ttl=0)


# -------------------------------------------------------------------------- bad input


async def test_bad_input_is_refused_and_changes_nothing(storage: StorageInterface) -> None:
    store = storage.conversation_store()
    await store.save("c", MSGS, ttl=60, metadata={"k": 1})
    before = await store.load("c")
    with pytest.raises(SerializationError):
        await store.save("c", [{"bad": {1, 2}}])
    with pytest.raises(SerializationError):
        await store.save("c", ["not a dict"])  # type: ignore[list-item]
    with pytest.raises(SerializationError):
        await store.append("c", [{"ok": 1}, {"bad": float("nan")}])
    with pytest.raises(InvalidArgumentError):
        await store.save("c", MSGS, ttl=0)
    with pytest.raises(InvalidArgumentError):
        await store.save("c", MSGS, metadata=["not", "a", "dict"])  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        await store.set_ttl("c", -1)
    with pytest.raises(InvalidKeyError):
        await store.save("bad\x00id", MSGS)
    with pytest.raises(InvalidKeyError):
        await store.load("")
    assert await store.load("c") == before
    assert await storage.list_conversations() == ["c"]


async def test_hostile_ids_are_plain_ids(storage: StorageInterface) -> None:
    store = storage.conversation_store()
    await store.save("../../etc/passwd", MSGS, metadata={"x": 1})
    loaded = await store.load("../../etc/passwd")
    assert loaded is not None and loaded.metadata.metadata == {"x": 1}
    assert await store.list() == ["../../etc/passwd"]


# ------------------------------------------------------------------------------ query


async def _people(storage: StorageInterface, clock: Any) -> Any:
    """Five conversations one second apart, and one without metadata."""
    store = storage.conversation_store()
    rows: list[tuple[str, int, dict[str, Any]]] = [
        ("a", 1, {"userId": "u1", "source": "web", "score": 3, "tags": ["x", "y"]}),
        ("b", 3, {"userId": "u2", "source": "api", "score": 1.5}),
        ("c", 2, {"userId": "u1", "source": "web", "score": "high"}),
        ("d", 5, {"userId": "u3", "source": "api", "nested": {"level": 2}}),
        ("e", 4, {"userId": "u1", "tags": ["y"], "flag": None}),
    ]
    for conversation_id, count, metadata in rows:
        await store.save(conversation_id, [{"n": i} for i in range(count)], metadata=metadata)
        clock.advance(1)
    await storage.store_raw_messages("plain", MSGS)
    return store


def ids(rows: list[Any]) -> list[str]:
    return [row.conversation_id for row in rows]


async def test_query_without_conditions_is_every_conversation_by_id(storage: StorageInterface, clock: Any) -> None:
    store = await _people(storage, clock)
    assert ids(await store.query().all()) == ["a", "b", "c", "d", "e", "plain"]
    assert await store.query().count() == 6


@pytest.mark.parametrize(
    ("field", "op", "value", "expected"),
    [
        ("metadata.userId", "==", "u1", ["a", "c", "e"]),
        ("metadata.userId", "!=", "u1", ["b", "d", "plain"]),  # a missing field matches only !=
        ("metadata.source", "in", ["api", "mobile"], ["b", "d"]),
        ("metadata.tags", "contains", "y", ["a", "e"]),
        ("metadata.userId", "contains", "3", ["d"]),
        ("metadata.score", ">", 1, ["a", "b"]),  # "high" is a string: never > a number
        ("metadata.score", "<=", 1.5, ["b"]),
        ("metadata.score", ">=", "a", ["c"]),
        ("metadata.nested.level", "==", 2, ["d"]),
        ("metadata.flag", "==", None, ["e"]),
        ("metadata.absent", "==", None, []),
        ("message_count", ">=", 3, ["b", "d", "e"]),
        ("message_count", "<", 2, ["a"]),
        ("conversation_id", "in", ["a", "plain", "zz"], ["a", "plain"]),
        ("conversation_id", ">", "d", ["e", "plain"]),
        ("metadata.score", "==", True, []),
        ("metadata.score", "==", 3.0, ["a"]),
    ],
)
async def test_where(
    storage: StorageInterface, clock: Any, field: str, op: Any, value: Any, expected: list[str]
) -> None:
    store = await _people(storage, clock)
    assert ids(await store.query().where(field, op, value).all()) == expected
    assert await store.query().where(field, op, value).count() == len(expected)


async def test_where_on_times(storage: StorageInterface, clock: Any) -> None:
    start = at(clock)
    store = await _people(storage, clock)
    query = store.query().where("updated_at", ">=", start + timedelta(seconds=1))
    assert ids(await query.where("updated_at", "<", start + timedelta(seconds=3)).all()) == ["b", "c"]
    assert ids(await store.query().where("created_at", "==", start).all()) == ["a"]
    assert await store.query().where("expires_at", "==", start).count() == 0


async def test_conditions_combine_with_and(storage: StorageInterface, clock: Any) -> None:
    store = await _people(storage, clock)
    query = store.query().where("metadata.userId", "==", "u1").where("message_count", ">", 1)
    assert ids(await query.all()) == ["c", "e"]


async def test_order_limit_offset(storage: StorageInterface, clock: Any) -> None:
    store = await _people(storage, clock)
    newest = await store.query().order_by("updated_at", descending=True).all()
    assert ids(newest) == ["e", "d", "c", "b", "a", "plain"]  # missing values come last
    page = await store.query().order_by("message_count").limit(2).offset(1).all()
    assert ids(page) == ["c", "b"]
    by_user = await store.query().order_by("metadata.userId").order_by("message_count", descending=True).all()
    assert ids(by_user) == ["e", "c", "a", "b", "d", "plain"]
    mixed = await store.query().order_by("metadata.score").all()  # numbers before strings
    assert ids(mixed) == ["b", "a", "c", "d", "e", "plain"]
    assert ids(await store.query().order_by("metadata.source", descending=True).limit(3).all()) == ["c", "a", "d"]


async def test_aggregate(storage: StorageInterface, clock: Any) -> None:
    store = await _people(storage, clock)
    by_source = await store.query().aggregate(
        group_by="metadata.source", conversations="count", messages=("sum", "message_count")
    )
    assert by_source == {
        "web": {"conversations": 2, "messages": 3},
        "api": {"conversations": 2, "messages": 8},
        None: {"conversations": 2, "messages": 4},
    }
    whole = (
        await store.query()
        .where("metadata.userId", "==", "u1")
        .aggregate(n="count", avg=("avg", "message_count"), low=("min", "message_count"), newest=("max", "updated_at"))
    )
    assert whole == {None: {"n": 3, "avg": 7 / 3, "low": 1, "newest": at(clock, -1)}}
    nothing = await store.query().where("message_count", ">", 100).aggregate(n="count", total=("sum", "message_count"))
    assert nothing == {}


async def test_query_leaves_expired_conversations_out(storage: StorageInterface, clock: Any) -> None:
    store = storage.conversation_store()
    await store.save("short", MSGS, ttl=5, metadata={"k": 1})
    await store.save("long", MSGS, ttl=50, metadata={"k": 1})
    clock.advance(5)
    assert ids(await store.query().where("metadata.k", "==", 1).all()) == ["long"]
    assert await store.query().count() == 1
    assert ids(await store.query().where("expires_at", ">", at(clock)).all()) == ["long"]


@pytest.mark.parametrize(
    "build",
    [
        lambda q: q.where("nope", "==", 1),
        lambda q: q.where("metadata.", "==", 1),
        lambda q: q.where("message_count", "~", 1),
        lambda q: q.where("message_count", "<", [1]),
        lambda q: q.where("message_count", "<", None),
        lambda q: q.where("message_count", "<", True),
        lambda q: q.where("metadata.k", "in", "abc"),
        lambda q: q.where("metadata.k", "==", {"a": 1}),
        lambda q: q.where("updated_at", ">", datetime(2026, 1, 1)),  # naive
        lambda q: q.where("updated_at", ">", 12345),
        lambda q: q.where("metadata.k", "==", float("nan")),
        lambda q: q.order_by("bogus"),
        lambda q: q.limit(-1),
        lambda q: q.offset("1"),
    ],
)
async def test_bad_queries_raise(storage: StorageInterface, build: Callable[[Any], Any]) -> None:
    with pytest.raises(InvalidArgumentError):
        build(storage.conversation_store().query())


async def test_bad_measures_raise(storage: StorageInterface) -> None:
    query = storage.conversation_store().query()
    with pytest.raises(InvalidArgumentError):
        await query.aggregate()
    with pytest.raises(InvalidArgumentError):
        await query.aggregate(n="total")
    with pytest.raises(InvalidArgumentError):
        await query.aggregate(n=("median", "message_count"))
    with pytest.raises(InvalidArgumentError):
        await query.aggregate(group_by="nope", n="count")


# What this module adds to the suite: every test above, in the order they are defined.
__all__ = [name for name in list(globals()) if name.startswith("test_")]
