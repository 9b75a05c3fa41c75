"""What only PostgreSQL does for the conversation store: metadata as columns of the
conversation row, expiry inside each statement, queries answered in SQL (held against the
reference ``MetaQuery.apply`` / ``aggregate`` over ``_meta_scan``), exact number order,
code point order whatever the database's collation, the index an ``updated_at`` range uses.

A real PostgreSQL server (tests/postgres_server.py), a schema per test; rows looked at and
tampered with through asyncpg directly.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from connectome_storage.backends._postgres_conversations import Fallback, compile_where, order_sql
from connectome_storage.conversation_query import MetaQuery, aggregate
from connectome_storage.errors import CorruptedDataError

from ..conftest import START, FakeClock
from ..postgres_server import PostgresServer
from .postgres_fixtures import open_storage, raw_fixture, schema_fixture  # noqa: F401
from .random_queries import RandomQueries

MSGS = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


# ------------------------------------------------------------------ the layout


async def test_metadata_is_columns_of_the_row_and_its_count_follows_every_history_write(
    postgres_server: PostgresServer, schema: str, clock: FakeClock, raw: Any
) -> None:
    async with open_storage(postgres_server, schema, clock) as storage:
        store = storage.conversation_store()
        await store.save("c", MSGS, ttl=60, metadata={"b": 1e300, "a": "x"})
        row = await raw.fetchrow("SELECT created_ms, message_count, ttl, expires_ms, metadata FROM conversations")
        now = int(START * 1000)
        assert tuple(row) == (now, 2, 60.0, now + 60_000, '{"a":"x","b":1e+300}')
        await storage.append_raw_messages("c", MSGS)  # a section 2 write: the count follows
        assert await raw.fetchval("SELECT message_count FROM conversations") == 4
        await storage.pop_raw_message("c")
        assert (await store.load("c")).metadata.message_count == 3  # type: ignore[union-attr]
        await storage.store_raw_messages("c", [])
        assert await raw.fetchval("SELECT message_count FROM conversations") == 0
        await store.delete("c")
        assert await raw.fetchval("SELECT COUNT(*) FROM conversations") == 0


async def test_an_expired_conversation_reads_as_missing_and_a_write_starts_afresh(
    postgres_server: PostgresServer, schema: str, clock: FakeClock, raw: Any
) -> None:
    async with open_storage(postgres_server, schema, clock) as storage:
        store = storage.conversation_store()
        await store.save("c", MSGS, ttl=5, metadata={"v": 1})
        await storage.store_memory("c", "m", {"x": 1})
        clock.advance(6)
        assert await raw.fetchval("SELECT COUNT(*) FROM raw_messages") == 2  # still stored
        assert await store.load("c") is None and await storage.load_raw_messages("c") == []
        assert await storage.list_conversations() == [] and await store.query().count() == 0
        assert await storage._expired_conversations(storage._now_ms()) == ["c"]
        meta = await store.append("c", MSGS[:1])  # the expired one is removed first, in the same transaction
        assert (meta.message_count, meta.metadata, meta.ttl) == (1, {}, None)
        assert await storage.load_memories("c") == []
        assert await raw.fetchval("SELECT COUNT(*) FROM memories") == 0


async def test_an_updated_at_range_uses_the_index(
    postgres_server: PostgresServer, schema: str, clock: FakeClock, raw: Any
) -> None:
    async with open_storage(postgres_server, schema, clock) as storage:
        store = storage.conversation_store()
        for i in range(300):
            await store.save(f"c{i:03}", MSGS[:1], metadata={"i": i})
            clock.advance(1)
        start = datetime.fromtimestamp(START, tz=UTC)
        query = store.query().where("updated_at", ">=", start + timedelta(seconds=10))
        query = query.where("updated_at", "<", start + timedelta(seconds=20))
        assert [m.conversation_id for m in await query.all()] == [f"c{i:03}" for i in range(10, 20)]
        await raw.execute("ANALYZE")
        where, params = compile_where(query.build(), storage._now_ms())
        plan = "\n".join(r[0] for r in await raw.fetch(f"EXPLAIN SELECT * FROM conversations WHERE {where}", *params))
        assert "conversations_updated" in plan and "Seq Scan" not in plan, plan
        ordered = MetaQuery(query.build().conditions, (("updated_at", True),), limit=5)
        where, params = compile_where(ordered, storage._now_ms())
        sql = f"EXPLAIN SELECT * FROM conversations WHERE {where} ORDER BY {order_sql(ordered, params)} LIMIT 5"
        plan = "\n".join(r[0] for r in await raw.fetch(sql, *params))
        assert "Index Scan Backward using conversations_updated" in plan and "Sort" not in plan, plan


# ------------------------------------------------ SQL agrees with the reference

# Ints and doubles that a float8 or a decimal text would confuse: 2**60 and 2.0**60 are equal,
# 2**53 + 1 is above 2.0**53, 2.0**63 is 2**63, which no int64 holds.
_RANDOM = RandomQueries(
    keys=["a", "b", "user Id", "it's", "x[0]", "$k", "ünï", "%_", "nested", "0"],
    strings=["", "a", "A", "ab", "abc", "b", "%", "_", "a%c", "it's", "ünï", "Ünï", "é", "[1]", "1", "true", "a\tb",
             "\U0001f600", "Z", "a\\b", '"q"'],
    numbers=[0, 1, -1, 2, 3, 1.0, 1.5, -0.0, 0.1, 0.30000000000000004, 1e300, -2.5, 2**53 + 1, 2.0**53, 2**60,
             2.0**60, 2**62, -(2**63), -(2.0**63), 2**63, 2.0**63, 2**64 - 1, 2.0**64, 1e16, 7, 5e-324],
    conversation_ids=["c005", "c010", "c0", "1", "c03", "zz", "C", "é"],
    message_count=lambda rng: rng.choice([rng.randrange(-1, 8), 2.5, 3.0, 2**70]),
)  # fmt: skip


async def test_sql_agrees_with_the_reference_on_random_queries(
    postgres_server: PostgresServer, schema: str, clock: FakeClock
) -> None:
    """1,500 seeded random queries, counts and aggregates: SQL against the reference."""
    rng = random.Random(20261130)
    async with open_storage(postgres_server, schema, clock) as storage:
        store = storage.conversation_store()
        for i in range(60):
            conversation_id = rng.choice(["c", "C", "é", "c_", "Z"]) + f"{i:03}"
            if rng.random() < 0.1:
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
                in_sql += 1
            except Fallback:
                pass
            assert await storage._meta_query(built, now) == built.apply(scan), built
            assert await storage._meta_count(built.unpaged(), now) == len(built.unpaged().apply(scan)), built
            group_by = rng.choice([None, *(_RANDOM.field(rng) for _ in range(3))])
            measures: dict[str, tuple[str, str | None]] = {"n": ("count", None)}
            for name in ("s", "a", "lo", "hi")[: rng.randrange(5)]:
                op = {"s": "sum", "a": "avg", "lo": "min", "hi": "max"}[name]
                measures[name] = (op, _RANDOM.field(rng))
            got = await storage._meta_aggregate(built.unpaged(), group_by, measures, now)
            want = aggregate(built.unpaged().apply(scan), group_by, measures)
            assert repr(list(got.items())) == repr(list(want.items())), (built, group_by, measures)
        assert in_sql == 1500  # every one of them compiled to SQL
        assert storage._reference_answers == 0  # and answered by it: no statement failed over to the reference


async def test_numbers_compare_and_sort_exactly_as_python_does(
    postgres_server: PostgresServer, schema: str, clock: FakeClock
) -> None:
    values = {"i60": 2**60, "f60": 2.0**60, "i53": 2**53 + 1, "f53": 2.0**53, "f63": 2.0**63, "u64": 2**64 - 1,
              "i63": 2**63, "tenth": 0.1, "one": 1, "fone": 1.0, "neg": -(2**63), "fneg": -(2.0**63)}  # fmt: skip
    async with open_storage(postgres_server, schema, clock) as storage:
        store = storage.conversation_store()
        for name, value in values.items():
            await store.save(name, MSGS, metadata={"v": value})

        async def ids(op: Any, operand: Any) -> list[str]:
            return sorted(m.conversation_id for m in await store.query().where("metadata.v", op, operand).all())

        assert await ids("==", 2**60) == ["f60", "i60"]
        assert await ids("==", 2.0**63) == ["f63", "i63"]
        assert await ids(">", 2.0**53) == ["f60", "f63", "i53", "i60", "i63", "u64"]
        assert await ids("==", 0.1) == ["tenth"]
        assert await ids("<", -(2**62)) == ["fneg", "neg"]
        ordered = [m.conversation_id for m in await store.query().order_by("metadata.v").all()]
        reference = [r.conversation_id for r in MetaQuery((), (("metadata.v", False),)).apply(
            await storage._meta_scan(storage._now_ms()))]  # fmt: skip
        assert ordered == reference == ["fneg", "neg", "tenth", "fone", "one", "f53", "i53", "f60", "i60", "f63",
                                        "i63", "u64"]  # fmt: skip


async def test_strings_and_ids_sort_by_code_point_in_a_database_of_another_collation(
    postgres_server: PostgresServer, schema: str, clock: FakeClock, raw: Any
) -> None:
    name = f"icu_{schema}"[:60]
    await raw.execute(f"CREATE DATABASE \"{name}\" TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US'")
    try:
        dsn = postgres_server.dsn.rsplit("/", 1)[0] + f"/{name}"
        words = ["a", "B", "é", "Z", "ab", "a b", "A", "_x"]
        async with open_storage(postgres_server, schema, clock, dsn=dsn) as storage:
            store = storage.conversation_store()
            for word in words:
                await store.save(word, MSGS, metadata={"w": word})
            by_id = [m.conversation_id for m in await store.query().order_by("conversation_id").all()]
            by_word = [m.conversation_id for m in await store.query().order_by("metadata.w", descending=True).all()]
            below = await store.query().where("metadata.w", "<", "a").count()
            assert by_id == sorted(words) and by_word == sorted(words, reverse=True)
            assert below == len([w for w in words if w < "a"])
            assert await store.list() == sorted(words)
    finally:
        await raw.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


async def test_what_sql_cannot_carry_is_answered_by_the_reference(
    postgres_server: PostgresServer, schema: str, clock: FakeClock
) -> None:
    """A stored U+0000 (PostgreSQL makes no text of it) or one in an operand or field name."""
    async with open_storage(postgres_server, schema, clock) as storage:
        store = storage.conversation_store()
        await store.save("a", MSGS, metadata={"s": "a", "k\x00": 1})
        await store.save("b", MSGS, metadata={"s": "a\x00b"})
        assert [m.conversation_id for m in await store.query().where("metadata.s", ">", "a").all()] == ["b"]
        assert await store.query().where("metadata.s", "contains", "b").count() == 1
        assert await store.query().where("metadata.s", "==", "a\x00b").count() == 1
        assert await store.query().where("metadata.k\x00", "==", 1).count() == 1
        with pytest.raises(Fallback):
            compile_where(store.query().where("metadata.s", "==", "a\x00b").build(), 0)
        assert await store.query().aggregate(group_by="metadata.s", n="count") == {"a": {"n": 1}, "a\x00b": {"n": 1}}
        assert storage._reference_answers == 4  # the aggregate's SQL reads no string: it needs no fallback


async def test_damaged_metadata_is_named(
    postgres_server: PostgresServer, schema: str, clock: FakeClock, raw: Any
) -> None:
    async with open_storage(postgres_server, schema, clock) as storage:
        store = storage.conversation_store()
        await store.save("good", MSGS, metadata={"v": 1})
        await store.save("bad", MSGS, metadata={"v": 2})
        await raw.execute("UPDATE conversations SET metadata = '{not json' WHERE conversation_id = 'bad'")
        with pytest.raises(CorruptedDataError, match="conversation_id 'bad'"):
            await store.query().where("metadata.v", ">", 0).all()
        with pytest.raises(CorruptedDataError, match="conversation_id 'bad'"):
            await store.load("bad")
        assert (await store.load("good")) is not None
        problems = await storage.verify()
        assert [p.location for p in problems] == [
            f"{storage._server} (schema {schema}, table conversations, conversation_id 'bad', metadata columns)"
        ]
        assert (await storage.get_storage_stats())["unreadable_count"] == 1
        await store.save("bad", MSGS, metadata={"v": 3})  # saving again repairs it
        assert await store.query().where("metadata.v", ">", 0).count() == 2
        assert await storage.verify() == []
