"""What only SQLite does for the conversation store: metadata as columns of the conversation
row, expiry inside each statement, queries answered in SQL (held against the reference
``MetaQuery.apply`` / ``aggregate`` over ``_meta_scan``), the index an ``updated_at`` range
uses, the schema upgrade, and hand-damaged metadata.

Real database files in tmp dirs, looked at (and tampered with) through the standard
library's sqlite3 module.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from connectome_storage import SqliteStorage, create_sqlite_storage
from connectome_storage.backends._sqlite_conversations import Fallback, compile_where, order_sql
from connectome_storage.backends._sqlite_schema import APPLICATION_ID, MIGRATIONS, SCHEMA_VERSION
from connectome_storage.conversation_query import MetaQuery, aggregate
from connectome_storage.errors import CorruptedDataError

from ..conftest import START, FakeClock
from .random_queries import RandomQueries
from .sqlite_fixtures import db_fixture, raw  # noqa: F401

NOW_MS = int(START * 1000)
MSGS = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


def open_storage(db: Path, clock: FakeClock, **options: Any) -> SqliteStorage:
    storage = create_sqlite_storage(db, clock=clock, **options)
    assert isinstance(storage, SqliteStorage)
    return storage


# ------------------------------------------------------------------ the layout


@pytest.mark.parametrize("serializer", ["json", "msgpack"])
async def test_metadata_is_columns_of_the_row_and_json_text_whatever_the_serializer(
    db: Path, clock: FakeClock, serializer: str
) -> None:
    async with open_storage(db, clock, serializer=serializer) as storage:
        await storage.conversation_store().save("c", MSGS, ttl=60, metadata={"userId": "u1", "n": {"k": [1]}})
    with raw(db, foreign_keys=True) as conn:
        row = conn.execute(
            "SELECT created_ms, updated_ms, message_count, ttl, expires_ms, metadata, "
            "json_extract(metadata, '$.n.k[0]') FROM conversations WHERE conversation_id = 'c'"
        ).fetchone()
    assert row == (NOW_MS, NOW_MS, 2, 60.0, NOW_MS + 60_000, '{"n":{"k":[1]},"userId":"u1"}', 1)


async def test_the_row_stays_while_metadata_is_its_only_part_and_goes_with_it(db: Path, clock: FakeClock) -> None:
    async with open_storage(db, clock) as storage:
        store = storage.conversation_store()
        await store.save("c", [])  # metadata only
        assert await storage.list_conversations() == ["c"]
        await storage.store_memory("c", "m", {"x": 1})
        await storage.delete_memory("c", "m")  # prunes the row unless metadata keeps it
        assert await storage.list_conversations() == ["c"]
        await storage._meta_put("c", None)
        assert await storage.list_conversations() == []
    with raw(db, foreign_keys=True) as conn:
        assert conn.execute("SELECT COUNT(*) FROM conversations").fetchone() == (0,)


async def test_message_count_follows_section_2_writes_in_the_row(db: Path, clock: FakeClock) -> None:
    async with open_storage(db, clock) as storage:
        await storage.conversation_store().save("c", MSGS)
        await storage.append_raw_messages("c", [{"n": 3}])
        await storage.pop_raw_message("c")
        await storage.append_raw_messages("c", [{"n": 3}, {"n": 4}])
        with raw(db, foreign_keys=True) as conn:
            assert conn.execute("SELECT message_count FROM conversations").fetchone() == (4,)
        await storage.store_raw_messages("c", [])
        with raw(db, foreign_keys=True) as conn:
            assert conn.execute("SELECT message_count FROM conversations").fetchone() == (0,)


# --------------------------------------------------------------------- expiry


async def test_an_expired_conversation_stays_stored_until_cleanup_but_reads_as_missing(
    db: Path, clock: FakeClock
) -> None:
    async with open_storage(db, clock) as storage:
        store = storage.conversation_store()
        await store.save("c", MSGS, ttl=10)
        await storage.store_memory("c", "m", {"x": 1})
        clock.advance(10)
        assert await storage.load_raw_messages("c") == []
        with raw(db, foreign_keys=True) as conn:  # still there: nothing was written
            assert conn.execute("SELECT COUNT(*) FROM raw_messages").fetchone() == (2,)
        stats = await storage.get_storage_stats()
        assert (stats["raw_message_count"], stats["memory_count"], stats["conversation_count"]) == (0, 0, 0)
        assert stats["expired_conversation_count"] == 1
        assert await storage.cleanup() == {"expired_cache": 0, "expired_conversations": 1, "expired_kv_entries": 0}
        with raw(db, foreign_keys=True) as conn:  # the cascade took every child row
            counts = conn.execute(
                "SELECT (SELECT COUNT(*) FROM conversations), (SELECT COUNT(*) FROM raw_messages), "
                "(SELECT COUNT(*) FROM memories)"
            ).fetchone()
        assert counts == (0, 0, 0)


async def test_a_write_to_an_expired_conversation_removes_it_in_the_same_transaction(
    db: Path, clock: FakeClock
) -> None:
    async with open_storage(db, clock) as storage:
        await storage.conversation_store().save("c", MSGS, ttl=10, metadata={"old": True})
        await storage.store_memory("c", "m", {"x": 1})
        clock.advance(10)
        await storage.store_chunks("c", [{"chunk": 1}])
    with raw(db, foreign_keys=True) as conn:
        row = conn.execute("SELECT chunks, metadata, expires_ms FROM conversations").fetchone()
        children = conn.execute("SELECT (SELECT COUNT(*) FROM raw_messages), (SELECT COUNT(*) FROM memories)")
        assert row == ('[{"chunk":1}]', None, None)
        assert children.fetchone() == (0, 0)


async def test_hot_paths_are_one_hop_each(db: Path, clock: FakeClock) -> None:
    """Expiry and message_count ride inside the one function each operation runs on the
    connection's thread: never a second trip for the check. A point read (one row) takes
    no hop at all: it runs on the loop's thread, from the reader connection."""
    hops: list[str] = []

    class Counting(SqliteStorage):
        async def _run(self, action: str, body: Any, begin: str | None = None) -> Any:
            hops.append(action)
            return await super()._run(action, body, begin)

        async def _queue_write(self, action: str, body: Any) -> Any:  # a write's hop (its group's)
            hops.append(action)
            return await super()._queue_write(action, body)

    async with Counting({"db_path": str(db), "clock": clock}) as storage:
        store = storage.conversation_store()
        await store.save("c", MSGS, ttl=60, metadata={"k": 1})
        for call, expected in (
            (lambda: storage.load_conversation("c"), 0),
            (lambda: storage.load_raw_messages("c"), 1),
            (lambda: storage.append_raw_messages("c", [{"n": 1}]), 1),
            (lambda: store.append("c", [{"n": 2}]), 1),
            (lambda: store.load("c"), 1),
            (lambda: store.get_ttl("c"), 0),
            (lambda: store.exists("c"), 1),
            (lambda: store.query().where("updated_at", ">", datetime.fromtimestamp(START - 1, tz=UTC)).all(), 1),
        ):
            hops.clear()
            await call()
            assert len(hops) == expected, hops


# ------------------------------------------------------------- damaged metadata


async def test_damaged_metadata_is_named_counted_and_listed(db: Path, clock: FakeClock) -> None:
    async with open_storage(db, clock) as storage:
        store = storage.conversation_store()
        await store.save("bad", MSGS, metadata={"k": 1})
        await store.save("good", MSGS, metadata={"k": 2})
        with raw(db, foreign_keys=True) as conn:
            conn.execute("UPDATE conversations SET metadata = '{not json' WHERE conversation_id = 'bad'")
        with pytest.raises(CorruptedDataError, match="conversation_id 'bad'"):
            await store.load("bad")
        with pytest.raises(CorruptedDataError, match="conversation_id 'bad'"):
            await store.query().where("metadata.k", "==", 2).all()
        loaded = await store.load("good")
        assert loaded is not None and loaded.metadata.metadata == {"k": 2}
        problems = await storage.verify()
        assert [p.location for p in problems] == [
            f"{db} (table conversations, conversation_id 'bad', metadata columns)"
        ]
        assert (await storage.get_storage_stats())["unreadable_count"] == 1
        await store.save("bad", MSGS, metadata={"k": 3})  # saving over it repairs it
        assert await storage.verify() == []
        assert (await store.load("bad")).metadata.metadata == {"k": 3}  # type: ignore[union-attr]


async def test_a_count_of_the_wrong_type_is_damage(db: Path, clock: FakeClock) -> None:
    async with open_storage(db, clock) as storage:
        await storage.conversation_store().save("c", MSGS)
        with raw(db, foreign_keys=True) as conn:
            conn.execute("UPDATE conversations SET message_count = 'two'")
        with pytest.raises(CorruptedDataError, match="message_count='two'"):
            await storage.conversation_store().load("c")


# --------------------------------------------------------------------- schema


async def test_a_version_3_database_is_upgraded_with_its_conversations(db: Path, clock: FakeClock) -> None:
    with raw(db, foreign_keys=True) as conn:
        for step in MIGRATIONS[:3]:
            for statement in step:
                conn.execute(statement)
        conn.execute("PRAGMA user_version = 3")
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute("INSERT INTO conversations (conversation_id, document) VALUES ('old', '{\"a\":1}')")
    async with open_storage(db, clock) as storage:
        assert await storage.load_conversation("old") == {"a": 1}
        store = storage.conversation_store()
        [row] = await store.query().all()
        assert (row.conversation_id, row.created_at) == ("old", None)
        await store.set_ttl("old", 5)
        clock.advance(5)
        assert await storage.list_conversations() == []
    with raw(db, foreign_keys=True) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)


# ---------------------------------------------------------------- query plans


def explain(db: Path, query: MetaQuery) -> list[str]:
    where, params = compile_where(query, NOW_MS)
    sql = f"SELECT conversation_id FROM conversations WHERE {where} ORDER BY {order_sql(query)}"
    with raw(db, foreign_keys=True) as conn:
        return [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params)]


async def test_an_updated_at_range_uses_the_index(db: Path, clock: FakeClock) -> None:
    async with open_storage(db, clock) as storage:
        store = storage.conversation_store()
        for i in range(50):
            await store.save(f"c{i:03}", MSGS[:1], metadata={"i": i})
            clock.advance(1)
        start = datetime.fromtimestamp(START, tz=UTC)
        query = store.query().where("updated_at", ">=", start + timedelta(seconds=10))
        query = query.where("updated_at", "<", start + timedelta(seconds=20))
        assert [m.conversation_id for m in await query.all()] == [f"c{i:03}" for i in range(10, 20)]
        plan = explain(db, query.build())
    assert any("INDEX conversations_updated (updated_ms>? AND updated_ms<?)" in step for step in plan), plan
    ordered = explain(db, MetaQuery(query.build().conditions, (("updated_at", True),)))
    assert any("conversations_updated" in step for step in ordered), ordered


# ------------------------------------------------ SQL agrees with the reference

_RANDOM = RandomQueries(
    keys=["a", "b", "user Id", "it's", "x[0]", "$k", "ünï", "%_", "nested"],
    strings=["", "a", "A", "ab", "abc", "b", "%", "_", "a%c", "it's", "ünï", "Ünï", "é", "[1]", "1", "true", "a\tb",
             "\U0001f600"],
    numbers=[0, 1, -1, 2, 3, 1.0, 1.5, -0.0, 0.1, 1e300, -2.5, 2**53 + 1, 2**62, -(2**63), 7],
    conversation_ids=["c005", "c010", "c0", "1", "c03", "zz"],
    message_count=lambda rng: rng.randrange(-1, 8),
)  # fmt: skip


async def test_sql_agrees_with_the_reference_on_random_queries(db: Path, clock: FakeClock) -> None:
    rng = random.Random(20261121)
    async with open_storage(db, clock) as storage:
        store = storage.conversation_store()
        for i in range(60):
            conversation_id = f"c{i:03}"
            kind = rng.random()
            if kind < 0.1:
                await storage.store_raw_messages(conversation_id, MSGS)  # no metadata
            else:
                ttl = rng.choice([None, None, 5, 30, 300])
                messages = [{"n": n} for n in range(rng.randrange(6))]
                await store.save(conversation_id, messages, ttl=ttl, metadata=_RANDOM.metadata(rng))
            clock.advance(rng.choice([0, 0.5, 1]))
        clock.advance(10)  # some have expired
        now = storage._now_ms()
        scan = await storage._meta_scan(now)
        assert 40 < len(scan) < 60
        in_sql = 0
        for _ in range(1500):
            built = _RANDOM.query(store, rng).build()
            try:
                compile_where(built, now)
                order_sql(built)
                in_sql += 1
            except Fallback:
                pass
            expected = built.apply(scan)
            assert await storage._meta_query(built, now) == expected, built
            assert await storage._meta_count(built.unpaged(), now) == len(built.unpaged().apply(scan)), built
            group_by = rng.choice([None, *(_RANDOM.field(rng) for _ in range(3))])
            measures: dict[str, tuple[str, str | None]] = {"n": ("count", None)}
            for name in ("s", "a", "lo", "hi")[: rng.randrange(5)]:
                op = {"s": "sum", "a": "avg", "lo": "min", "hi": "max"}[name]
                measures[name] = (op, _RANDOM.field(rng))
            got = await storage._meta_aggregate(built.unpaged(), group_by, measures, now)
            want = aggregate(built.unpaged().apply(scan), group_by, measures)
            assert repr(list(got.items())) == repr(list(want.items())), (built, group_by, measures)
        assert in_sql > 1300  # the SQL path, not the reference fallback, answered almost all of them


async def test_a_key_sql_paths_cannot_address_falls_back_to_the_reference(db: Path, clock: FakeClock) -> None:
    async with open_storage(db, clock) as storage:
        store = storage.conversation_store()
        await store.save("a", MSGS, metadata={'say "hi"': 1, "back\\slash": "x"})
        await store.save("b", MSGS, metadata={'say "hi"': 2})
        query = store.query().where('metadata.say "hi"', ">", 1)
        with pytest.raises(Fallback):
            compile_where(query.build(), NOW_MS)
        assert [m.conversation_id for m in await query.all()] == ["b"]
        assert await store.query().where("metadata.back\\slash", "==", "x").count() == 1
        assert await store.query().aggregate(group_by="metadata.back\\slash", n="count") == {
            "x": {"n": 1}, None: {"n": 1},
        }  # fmt: skip


async def test_contains_is_a_case_sensitive_substring_without_wildcards(db: Path, clock: FakeClock) -> None:
    async with open_storage(db, clock) as storage:
        store = storage.conversation_store()
        await store.save("a", MSGS, metadata={"t": "Hello 100%"})
        await store.save("b", MSGS, metadata={"t": "hello_world"})
        await store.save("c", MSGS, metadata={"t": ["hello", 1]})

        async def hits(value: Any) -> list[str]:
            return [m.conversation_id for m in await store.query().where("metadata.t", "contains", value).all()]

        assert await hits("hello") == ["b", "c"]
        assert await hits("%") == ["a"]
        assert await hits("_") == ["b"]
        assert await hits("o_w") == ["b"]
        assert await hits(1) == ["c"]
        assert await hits(True) == []


async def test_a_nul_in_stored_metadata_is_answered_exactly(db: Path, clock: FakeClock) -> None:
    """SQLite 3.40's json_extract returns a string only up to a U+0000 in it; such data is
    answered by the reference, the same as every other query."""
    async with open_storage(db, clock) as storage:
        store = storage.conversation_store()
        await store.save("a", MSGS, metadata={"s": "a"})
        await store.save("b", MSGS, metadata={"s": "a\x00b"})
        assert [m.conversation_id for m in await store.query().where("metadata.s", ">", "a").all()] == ["b"]
        assert await store.query().where("metadata.s", "contains", "b").count() == 1
        assert await store.query().aggregate(group_by="metadata.s", n="count") == {"a": {"n": 1}, "a\x00b": {"n": 1}}
