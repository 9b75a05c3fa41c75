"""What only PostgreSQL does for key-value collections: the kv and kv_tags tables, the key
glob as a POSIX regular expression, code point order whatever the database's collation,
one statement per query held against ``KVSelect.apply``, the plans its queries use,
batches in one transaction, hand-damaged rows.

A real PostgreSQL server (tests/postgres_server.py), a schema per test; rows looked at and
tampered with through asyncpg directly.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from connectome_storage.backends._postgres_kv import regex_of, select_sql
from connectome_storage.errors import CorruptedDataError, InvalidArgumentError, StorageError
from connectome_storage.kv import KVRecord, KVSelect, compile_pattern

from ..conftest import START, FakeClock
from ..postgres_server import PostgresServer
from .postgres_fixtures import open_storage, raw_fixture, schema_fixture  # noqa: F401

NOW_MS = int(START * 1000)


# ------------------------------------------------------------------ the tables


async def test_entries_are_rows_and_tags_are_index_rows(
    postgres_server: PostgresServer, schema: str, clock: FakeClock, raw: Any
) -> None:
    async with open_storage(postgres_server, schema, clock) as storage:
        kv = storage.kv("sessions")
        await kv.set("user:1", {"name": "Ada", "n": 1e300, "z": -0.0}, ttl=60, tags={"type": "web", "user": "1"})
        await kv.set("user:2", [1, "\x00", None])
        rows = [tuple(r) for r in await raw.fetch("SELECT * FROM kv ORDER BY key")]
        tags = [tuple(r) for r in await raw.fetch("SELECT namespace, name, value, key FROM kv_tags ORDER BY name")]
        assert rows == [
            ("sessions", "user:1", '{"n":1e+300,"name":"Ada","z":-0.0}', '{"type":"web","user":"1"}', NOW_MS,
             NOW_MS, NOW_MS + 60_000),
            ("sessions", "user:2", '[1,"\\u0000",null]', "{}", NOW_MS, NOW_MS, None),
        ]  # fmt: skip
        assert tags == [("sessions", "type", "web", "user:1"), ("sessions", "user", "1", "user:1")]
        assert await kv.get("user:1") == {"name": "Ada", "n": 1e300, "z": -0.0}  # exactly: text, not jsonb
        assert await kv.get("user:2") == [1, "\x00", None]


async def test_tag_rows_follow_every_change_of_their_entry(
    postgres_server: PostgresServer, schema: str, clock: FakeClock, raw: Any
) -> None:
    async def tag_rows() -> list[tuple[str, str, str]]:
        return [tuple(r) for r in await raw.fetch("SELECT key, name, value FROM kv_tags ORDER BY key, name")]

    async with open_storage(postgres_server, schema, clock) as storage:
        kv = storage.kv()
        await kv.set("a", 1, tags={"t": "x", "u": "y"})
        await kv.set("a", 2, tags={"t": "z", "u": "y"})  # replaced, not merged
        assert await tag_rows() == [("a", "t", "z"), ("a", "u", "y")]
        await kv.set("a", 3)
        assert await tag_rows() == []
        await kv.set_many({"b": 1, "c": 2}, tags={"t": "x"}, ttl=5)
        await kv.set("d", 1, tags={"t": "x"})
        assert await kv.set("d", 2, tags={"t": "other"}, if_not_exists=True) is False
        assert await tag_rows() == [("b", "t", "x"), ("c", "t", "x"), ("d", "t", "x")]
        await kv.delete("d")  # the foreign key's cascade removes them
        assert await tag_rows() == [("b", "t", "x"), ("c", "t", "x")]
        clock.advance(10)
        assert await kv.find_by_tag("t", "x") == []  # expired, though still stored
        assert await kv.set("b", 9, tags={"t": "y"}, if_not_exists=True) is True  # over an expired entry
        assert await tag_rows() == [("b", "t", "y"), ("c", "t", "x")]
        assert (await storage.cleanup())["expired_kv_entries"] == 1
        assert await tag_rows() == [("b", "t", "y")]
        await kv.clear()
        assert await tag_rows() == []


async def test_set_many_is_one_transaction(
    postgres_server: PostgresServer, schema: str, clock: FakeClock, raw: Any
) -> None:
    """An engine failure on the last entry of a batch leaves none of the batch stored."""
    async with open_storage(postgres_server, schema, clock) as storage:
        kv = storage.kv()
        await kv.set("keep", "before")
        # A real trigger that refuses one key, standing in for a full disk.
        await raw.execute("""CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN IF NEW.key = 'k9' THEN RAISE EXCEPTION 'refused by the test'; END IF; RETURN NEW; END $$""")
        await raw.execute("CREATE TRIGGER refuse BEFORE INSERT ON kv FOR EACH ROW EXECUTE FUNCTION refuse()")
        with pytest.raises(StorageError, match="refused by the test"):
            await kv.set_many({"keep": "after", **{f"k{i}": i for i in range(10)}})
        assert await kv.keys() == ["keep"]
        assert await kv.get("keep") == "before"


# ------------------------------------------------------------ native = reference

KEYS = ["a", "a\U0010ffff", "a\U0010ffffb", "ab", "b", "B", "é", "é\ud7ff", "\ud7ff", "\ue000", "[x]", "a*", "user:1",
        "a.b", "a\nb", "a\\b", "a$", "Z", "(x)", "a^b", "{1}"]  # fmt: skip
PREFIXES = [None, "a", "a\U0010ffff", "é", "\ud7ff", "u", "\U0010ffff", "\ud800", "a."]
PATTERNS = [None, "*", "a*", "[!a]*", "[^a]", "?", "a[", "[\ud800]", "[!\ud800]*", "a.?", "a?b", "[a-c]*", "*\\*",
            "[]x]*", "a[!.]b", "*[$^]*", "(x)", "{1}", "[[]x]", "a\nb", "[\\]*"]  # fmt: skip


async def test_select_agrees_with_the_reference(postgres_server: PostgresServer, schema: str, clock: FakeClock) -> None:
    """Every hook's SQL against ``KVSelect.apply`` over the same records: 1,500 seeded random selects."""
    rng = random.Random(20261130)
    async with open_storage(postgres_server, schema, clock) as storage:
        records = []
        for i, key in enumerate(KEYS):
            clock.advance(rng.choice([0, 1]))  # ties in the time orders too
            labels = {"t": "1"} if i % 2 else {"t": "1", "u": "2"} if i % 3 else {}
            ttl = 3 if i % 4 == 0 else None
            await storage.kv("n").set(key, i, tags=labels, ttl=ttl)
            now = storage._now_ms()
            records.append(KVRecord(key, i, labels, now, now, None if ttl is None else now + ttl * 1000))
        await storage.kv("other").set("a", 0, tags={"t": "1"})
        clock.advance(1)
        now = storage._now_ms()
        for _ in range(1500):
            tags = rng.choice([(), (("t", "1"),), (("t", "1"), ("u", "2")), (("t", "\ud800"),), (("u", "2"),)])
            since = rng.choice([None, rng.randrange(NOW_MS, NOW_MS + 12_000)])
            until = rng.choice([None, None, rng.randrange(NOW_MS, NOW_MS + 12_000)])
            limit = rng.choice([None, rng.randrange(6), 2**70])
            offset = rng.choice([0, rng.randrange(5), 2**70])
            after = rng.choice([None, None, rng.choice(KEYS)])
            select = KVSelect(rng.choice(PATTERNS), rng.choice(PREFIXES), tags, since, until,
                              rng.choice(["key", "created_at", "updated_at"]), rng.random() < 0.5, limit, offset,
                              after)  # fmt: skip
            expected = select.apply(records, now)
            assert await storage._kv_select("n", select, now) == expected, select
            assert await storage._kv_keys("n", select, now) == [r.key for r in expected], select
            unpaged = select.unpaged()
            assert await storage._kv_count("n", unpaged, now) == len(unpaged.apply(records, now)), select


async def test_regex_agrees_with_the_reference_on_random_patterns(raw: Any) -> None:
    """regex_of(pattern) in PostgreSQL against compile_pattern in Python, on 3,000 random
    patterns over awkward characters, all keys of a pattern in one statement."""
    rng = random.Random(7)
    chars = list("ab*?[]^!-\\.\n$(){}|+é")
    keys = ["".join(rng.choice(list("ab-^!][.*\\\n$()é")) for _ in range(rng.randrange(1, 5))) for _ in range(60)]
    checked = 0
    for _ in range(3000):
        pattern = "".join(rng.choice(chars) for _ in range(rng.randrange(9)))
        try:
            regex = compile_pattern(pattern)
        except InvalidArgumentError:
            continue  # refused before any backend sees it (a set such as [b-a])
        sql = 'SELECT k FROM unnest($1::text[]) AS k WHERE k COLLATE "C" ~ $2'
        got = sorted(row[0] for row in await raw.fetch(sql, keys, regex_of(pattern)))
        assert got == sorted(k for k in keys if regex.fullmatch(k)), (pattern, regex_of(pattern))
        checked += 1
    assert checked > 2000


async def test_keys_sort_by_code_point_in_a_database_of_another_collation(
    postgres_server: PostgresServer, schema: str, clock: FakeClock, raw: Any
) -> None:
    """A database whose default collation is ICU's en-US sorts "a" < "B" < "é" < "Z"; the
    collections still give Python's order (code points), through the primary key index."""
    name = f"icu_{schema}"[:60]
    await raw.execute(f"CREATE DATABASE \"{name}\" TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US'")
    try:
        dsn = postgres_server.dsn.rsplit("/", 1)[0] + f"/{name}"
        keys = ["a", "B", "é", "Z", "ab", "a b", "A", "_x", "\U0001f600"]
        async with open_storage(postgres_server, schema, clock, dsn=dsn) as storage:
            kv = storage.kv()
            await kv.set_many({key: 1 for key in keys}, tags={"t": "x"})
            assert await kv.keys() == sorted(keys)
            assert await kv.find_by_tag("t", "x") == sorted(keys)
            assert [e.key for e in await kv.query(prefix="a", descending=True)] == ["ab", "a b", "a"]
            assert [e.key for e in await kv.query(limit=3)] == sorted(keys)[:3]
            assert [k async for k, _ in kv.scan("[a-z]*")] == sorted(k for k in keys if "a" <= k[0] <= "z")
    finally:
        await raw.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


# --------------------------------------------------------------- query plans


async def explain(raw: Any, select: KVSelect, columns: str = "kv.key, kv.value") -> str:
    query = select_sql(columns, "n", select, NOW_MS)
    assert query is not None
    await raw.execute("SET enable_seqscan = off")  # a tiny table: ask which index the planner can use
    rows = await raw.fetch(f"EXPLAIN {query[0]}", *query[1])
    return "\n".join(row[0] for row in rows)


@pytest.fixture
async def filled(postgres_server: PostgresServer, schema: str, clock: FakeClock, raw: Any) -> None:
    async with open_storage(postgres_server, schema, clock) as storage:
        kv = storage.kv("n")
        await kv.set_many({f"k{i:04}": i for i in range(300)}, tags={"type": "web"})
        await kv.set("x", 1, tags={"user": "7", "type": "web"}, ttl=30)
    await raw.execute("ANALYZE")


async def test_queries_use_their_indexes(filled: None, raw: Any) -> None:
    plan = await explain(raw, KVSelect(tags=(("user", "7"),)))
    assert "kv_tags_pkey" in plan and "kv_pkey" in plan and "Seq Scan" not in plan, plan
    plan = await explain(raw, KVSelect(since_ms=NOW_MS - 1000, until_ms=NOW_MS + 1000, order_by="updated_at", limit=9))
    assert "kv_updated" in plan and "Sort" not in plan, plan
    plan = await explain(raw, KVSelect(order_by="created_at", descending=True, limit=10))
    assert "kv_created" in plan and "Sort" not in plan, plan
    for select in (KVSelect(prefix="k01"), KVSelect(pattern="k01*"), KVSelect(pattern="k0[12]?"), KVSelect(limit=5)):
        plan = await explain(raw, select, "kv.key")
        # The key range (the literal start of a pattern) is the index condition.
        if select.limit is None:
            assert "kv_pkey" in plan and "(key >= " in plan and "(key < " in plan, plan
        else:  # read in key order (C collation: the index's) and stop after the limit
            assert "Index Scan using kv_pkey" in plan and "Sort" not in plan, plan
    plan = "\n".join(r[0] for r in await raw.fetch("EXPLAIN DELETE FROM kv WHERE expires_ms <= $1", NOW_MS))
    assert "kv_expires" in plan, plan


# ------------------------------------------------------------------ bad rows


@pytest.mark.parametrize(("column", "bad"), [("value", "{not json"), ("tags", "[1]"), ("tags", '{"t": 1}')])
async def test_a_damaged_row_is_named_counted_and_repaired(
    postgres_server: PostgresServer, schema: str, clock: FakeClock, raw: Any, column: str, bad: str
) -> None:
    async with open_storage(postgres_server, schema, clock) as storage:
        kv = storage.kv("ns")
        await kv.set("bad", 1)
        await kv.set("good", 2)
        await kv.set("nul", "\x00")  # judged by the reader in Python (json_kind is unsure of it)
        await raw.execute(f"UPDATE kv SET {column} = $1 WHERE key = 'bad'", bad)
        with pytest.raises(CorruptedDataError, match=r"table kv, namespace 'ns', key 'bad'"):
            await kv.get("bad")
        assert await kv.get("good") == 2  # every other entry stays readable
        stats = await storage.get_storage_stats()
        assert (stats["kv_entry_count"], stats["unreadable_count"]) == (2, 1)
        problems = await storage.verify()
        assert len([p for p in problems if "table kv" in p.message]) == 1, problems
        await kv.set("bad", 3)  # storing again repairs it
        assert await kv.get("bad") == 3
        stats = await storage.get_storage_stats()
        assert (stats["kv_entry_count"], stats["unreadable_count"]) == (3, 0)
