"""What only SQLite does for key-value collections: the kv and kv_tags tables, the indexes
its queries use, GLOB standing in for the key glob, the schema upgrade, hand-damaged rows.

Real database files in tmp dirs, looked at (and tampered with) through the standard
library's sqlite3 module; the semantics are held against ``KVSelect.apply``, the reference.
"""

from __future__ import annotations

import re
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectome_storage import SqliteStorage, create_sqlite_storage
from connectome_storage.backends._sqlite_kv import glob_of, prefix_upper_bound, select_sql
from connectome_storage.backends._sqlite_schema import APPLICATION_ID, MIGRATIONS, SCHEMA_VERSION
from connectome_storage.errors import CorruptedDataError, InvalidArgumentError, StorageError
from connectome_storage.kv import KVRecord, KVSelect, compile_pattern

from ..conftest import START, FakeClock
from .sqlite_fixtures import db_fixture, raw  # noqa: F401

NOW_MS = int(START * 1000)


def open_storage(db: Path, clock: FakeClock) -> SqliteStorage:
    storage = create_sqlite_storage(db, clock=clock)
    assert isinstance(storage, SqliteStorage)
    return storage


# ------------------------------------------------------------------ the tables


async def test_entries_are_rows_and_tags_are_index_rows(db: Path, clock: FakeClock) -> None:
    async with open_storage(db, clock) as storage:
        kv = storage.kv("sessions")
        await kv.set("user:1", {"name": "Ada", "n": 1}, ttl=60, tags={"type": "web", "user": "1"})
        await kv.set("user:2", [1, 2.5, None])
    with raw(db, foreign_keys=True) as conn:
        rows = conn.execute("SELECT * FROM kv ORDER BY key").fetchall()
        tags = conn.execute("SELECT namespace, name, value, key FROM kv_tags ORDER BY name").fetchall()
        # Canonical compact JSON text: readable with json_extract from the sqlite3 shell.
        name = conn.execute("SELECT json_extract(value, '$.name') FROM kv WHERE key = 'user:1'").fetchone()[0]
    assert rows == [
        ("sessions", "user:1", '{"n":1,"name":"Ada"}', '{"type":"web","user":"1"}', NOW_MS, NOW_MS, NOW_MS + 60_000),
        ("sessions", "user:2", "[1,2.5,null]", "{}", NOW_MS, NOW_MS, None),
    ]
    assert tags == [("sessions", "type", "web", "user:1"), ("sessions", "user", "1", "user:1")]
    assert name == "Ada"


async def test_tag_rows_follow_every_change_of_their_entry(db: Path, clock: FakeClock) -> None:
    def tag_rows() -> list[tuple[str, str, str]]:
        with raw(db, foreign_keys=True) as conn:
            return conn.execute("SELECT key, name, value FROM kv_tags ORDER BY key, name").fetchall()

    async with open_storage(db, clock) as storage:
        kv = storage.kv()
        await kv.set("a", 1, tags={"t": "x", "u": "y"})
        await kv.set("a", 2, tags={"t": "z"})  # replaced, not merged
        assert tag_rows() == [("a", "t", "z")]
        await kv.set("a", 3)
        assert tag_rows() == []
        await kv.set_many({"b": 1, "c": 2}, tags={"t": "x"}, ttl=5)
        await kv.set("d", 1, tags={"t": "x"})
        assert await kv.set("d", 2, tags={"t": "other"}, if_not_exists=True) is False
        assert tag_rows() == [("b", "t", "x"), ("c", "t", "x"), ("d", "t", "x")]
        await kv.delete("d")  # the foreign key's cascade removes them
        assert tag_rows() == [("b", "t", "x"), ("c", "t", "x")]
        clock.advance(10)
        assert await kv.find_by_tag("t", "x") == []  # expired, though still stored
        assert await storage.cleanup() == {"expired_cache": 0, "expired_conversations": 0, "expired_kv_entries": 2}
        assert tag_rows() == []
        await kv.set("e", 1, tags={"t": "x"})
        await kv.clear()
        assert tag_rows() == []


# --------------------------------------------------------------- query plans


def plan(db: Path, namespace: str, select: KVSelect, *, columns: str = "kv.key") -> list[str]:
    query = select_sql(columns, namespace, select, NOW_MS)
    assert query is not None
    sql, params = query
    with raw(db, foreign_keys=True) as conn:
        return [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params)]


def uses(details: list[str], table: str, index: str, constraint: str) -> bool:
    """Whether a step searches ``table`` through ``index`` (covering or not) with ``constraint``."""
    step = re.compile(rf"SEARCH {table} USING (COVERING )?INDEX {index} \({re.escape(constraint)}\)")
    return any(step.match(d) for d in details)


def full_scans(details: list[str]) -> list[str]:
    """Plan steps that read a whole table (``SCAN kv``), as opposed to an index SEARCH."""
    return [d for d in details if re.match(r"SCAN (kv|kv_tags|t\d+)\b", d)]


@pytest.fixture
async def filled(db: Path, clock: FakeClock) -> Path:
    async with open_storage(db, clock) as storage:
        kv = storage.kv("n")
        await kv.set_many({f"k{i:04}": i for i in range(200)}, tags={"type": "web"})
        await kv.set("x", 1, tags={"user": "7", "type": "web"}, ttl=30)
    return db


def test_a_tag_query_is_an_index_lookup(filled: Path) -> None:
    for select in (
        KVSelect(tags=(("user", "7"),)),  # find_by_tag
        KVSelect(tags=(("type", "web"), ("user", "7")), limit=10),  # query(tags=..., limit=10)
        KVSelect(tags=(("user", "7"),), descending=True, limit=10),
    ):
        details = plan(filled, "n", select, columns="kv.key, kv.value")
        # The tag's range of kv_tags drives the statement, then one primary key lookup per row.
        assert details[0].startswith("SEARCH t0 USING PRIMARY KEY (namespace=? AND name=? AND value=?)"), details
        assert uses(details[1:], "kv", "sqlite_autoindex_kv_1", "namespace=? AND key=?"), details
        assert not full_scans(details), details
        assert not any("TEMP B-TREE FOR ORDER BY" in d for d in details), details  # key order comes free


def test_an_updated_at_range_is_an_index_range(filled: Path) -> None:
    select = KVSelect(since_ms=NOW_MS - 1000, until_ms=NOW_MS + 1000, order_by="updated_at", limit=10)
    details = plan(filled, "n", select, columns="kv.key, kv.value")
    assert uses(details, "kv", "kv_updated", "namespace=? AND updated_ms>? AND updated_ms<?"), details
    assert not full_scans(details) and not any("TEMP B-TREE" in d for d in details), details


def test_created_at_order_prefix_and_pattern_use_indexes(filled: Path) -> None:
    details = plan(filled, "n", KVSelect(order_by="created_at", descending=True, limit=10))
    assert uses(details, "kv", "kv_created", "namespace=?") and "TEMP B-TREE" not in str(details), details
    for select in (KVSelect(prefix="k01"), KVSelect(pattern="k01*"), KVSelect(pattern="k0[12]?")):
        details = plan(filled, "n", select)
        assert uses(details, "kv", "sqlite_autoindex_kv_1", "namespace=? AND key>? AND key<?"), (select, details)
        assert not full_scans(details)


def test_expired_entries_are_found_through_the_expiry_index(filled: Path) -> None:
    with raw(filled, foreign_keys=True) as conn:
        for sql in (
            "SELECT COUNT(*) FROM kv WHERE expires_ms <= ?",
            "DELETE FROM kv WHERE expires_ms <= ? AND +namespace = 'n'",
        ):
            details = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", (NOW_MS,))]
            assert any("kv_expires (expires_ms<?)" in d for d in details), details


# ---------------------------------------------------------------- GLOB and bounds


def glob_matches(glob: str, key: str) -> bool:
    with closing(sqlite3.connect(":memory:")) as conn:
        return bool(conn.execute("SELECT ? GLOB ?", (key, glob)).fetchone()[0])


@pytest.mark.parametrize(
    ("pattern", "glob"),
    [
        ("user:*", "user:*"),
        ("a?c", "a?c"),
        ("[!a]x", "[^a]x"),  # GLOB's only negation is ^
        ("[^a]x", "[^a]x"),
        ("[", "[[]"),  # unclosed: a literal [ for the key glob, a failed match for GLOB
        ("a[bc", "a[[]bc"),
        ("[^]", "[[]^]"),
        ("[^]x]", "[^]x]"),
        ("[*]", "[*]"),
        ("[a-c]]", "[a-c]]"),
        ("[]*[a]", "[]*[a]"),  # a "]" first in a set belongs to it
        ("[!]a]", "[^]a]"),
    ],
)
def test_patterns_become_equal_globs(pattern: str, glob: str) -> None:
    assert glob_of(pattern)[0] == glob
    regex = compile_pattern(pattern)
    for key in ("user:1", "abc", "bx", "ax", "[", "a[bc", "[^]", "]", "^x", "*", "b]", "x", ".", "a]"):
        assert glob_matches(glob, key) == (regex.fullmatch(key) is not None), (pattern, key)


async def test_a_pattern_sqlite_cannot_take_is_matched_by_the_reference_regex(db: Path, clock: FakeClock) -> None:
    # A lone surrogate is not UTF-8, so no GLOB can hold it; a negated set of one still
    # matches every key, and a literal one none.
    assert glob_of("\ud800*")[0] is None and glob_of("[!\ud800]*")[0] is None
    keys = [".", "*", "a", "b", "]", "\ue000x"]
    async with open_storage(db, clock) as storage:
        kv = storage.kv()
        await kv.set_many({key: 1 for key in keys})
        assert await kv.keys("[!\ud800]*") == sorted(keys)
        assert await kv.count("[!\ud800]") == 5
        assert await kv.keys("\ud800*") == []
        assert await kv.keys("[\ud7ff-\ue000]*") == ["\ue000x"]


def test_the_literal_start_of_a_pattern_bounds_the_key_range() -> None:
    assert glob_of("user:*")[1] == "user:"
    assert glob_of("a[bc")[1] == "a[bc"
    assert glob_of("ab?[x]")[1] == "ab"
    assert glob_of("*a")[1] == ""


KEY_CHARS = st.sampled_from(list("ab-^!][.*\\\n"))
PATTERN_CHARS = st.sampled_from(list("ab*?[]^!-\\.\n"))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pattern=st.text(PATTERN_CHARS, max_size=8), keys=st.lists(st.text(KEY_CHARS, min_size=1, max_size=5), max_size=12)
)
def test_glob_agrees_with_the_reference_on_any_pattern(pattern: str, keys: list[str]) -> None:
    try:
        regex = compile_pattern(pattern)
    except InvalidArgumentError:
        return  # refused before any backend sees it (a set such as [b-a])
    glob, literal = glob_of(pattern)
    for key in keys:
        expected = regex.fullmatch(key) is not None
        if expected:
            assert key.startswith(literal)
        if glob is not None:
            assert glob_matches(glob, key) == expected, (pattern, glob, key)


@pytest.mark.parametrize(
    ("prefix", "upper"),
    [
        ("user:", "user;"),
        ("a\U0010ffff", "b"),
        ("\U0010ffff\U0010ffff", None),
        ("a\ud7ff", "a\ue000"),  # the surrogates are skipped
        ("\x7f", "\x80"),
    ],
)
def test_prefix_upper_bounds(prefix: str, upper: str | None) -> None:
    assert prefix_upper_bound(prefix) == upper


# ------------------------------------------------------------ native = reference

KEYS = ["a", "a\U0010ffff", "a\U0010ffffb", "ab", "b", "é", "é\ud7ff", "\ud7ff", "\ue000", "[x]", "a*", "user:1"]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(
    data=st.data(),
    prefix=st.one_of(st.none(), st.sampled_from(["a", "a\U0010ffff", "é", "\ud7ff", "u", "\U0010ffff", "\ud800"])),
    pattern=st.one_of(st.none(), st.sampled_from(["*", "a*", "[!a]*", "[^a]", "?", "a[", "[\ud800]", "[!\ud800]*"])),
    order_by=st.sampled_from(["key", "created_at", "updated_at"]),
    descending=st.booleans(),
    limit=st.one_of(st.none(), st.integers(0, 5), st.just(2**70)),
    offset=st.one_of(st.integers(0, 4), st.just(2**70)),
)
def test_select_agrees_with_the_reference(
    tmp_path_factory: pytest.TempPathFactory, data: st.DataObject, prefix: str | None, pattern: str | None,
    order_by: Any, descending: bool, limit: int | None, offset: int,
) -> None:  # fmt: skip
    """Every hook's SQL against ``KVSelect.apply`` over the same records, on awkward keys."""
    tags = data.draw(st.sampled_from([(), (("t", "1"),), (("t", "1"), ("u", "2")), (("t", "\ud800"),)]))
    since = data.draw(st.one_of(st.none(), st.integers(NOW_MS, NOW_MS + 12_000)))
    select = KVSelect(pattern, prefix, tags, since, None, order_by, descending, limit, offset)
    import asyncio

    async def run() -> None:
        clock = FakeClock()
        async with open_storage(tmp_path_factory.mktemp("q") / "kv.db", clock) as storage:
            records = []
            for i, key in enumerate(KEYS):
                clock.advance(1)
                labels = {"t": "1"} if i % 2 else {"t": "1", "u": "2"} if i % 3 else {}
                ttl = 3 if i % 4 == 0 else None
                await storage.kv("n").set(key, i, tags=labels, ttl=ttl)
                now = storage._now_ms()
                expires = None if ttl is None else now + ttl * 1000
                records.append(KVRecord(key, i, labels, now, now, expires))
            await storage.kv("other").set("a", 0, tags={"t": "1"})
            now = storage._now_ms()
            expected = select.apply(records, now)
            assert await storage._kv_select("n", select, now) == expected
            assert await storage._kv_keys("n", select, now) == [r.key for r in expected]
            assert await storage._kv_count("n", select.unpaged(), now) == len(select.unpaged().apply(records, now))

    asyncio.run(run())


# ------------------------------------------------------------- transactions


async def test_set_many_is_one_transaction(db: Path, clock: FakeClock) -> None:
    """An engine failure on the last entry of a batch leaves none of the batch stored."""
    async with open_storage(db, clock) as storage:
        kv = storage.kv()
        await kv.set("keep", "before")
        # A real SQLite trigger that refuses one key, standing in for a full disk.
        with raw(db, foreign_keys=True) as conn:
            conn.execute("""CREATE TRIGGER refuse AFTER INSERT ON kv WHEN new.key = 'k9'
                            BEGIN SELECT RAISE(ABORT, 'refused by the test'); END""")
        with pytest.raises(StorageError, match="refused by the test"):
            await kv.set_many({**{f"k{i}": i for i in range(10)}, "keep": "after"})
        assert await kv.keys() == ["keep"]
        assert await kv.get("keep") == "before"


# --------------------------------------------------------------- schema upgrade


async def test_a_version_1_database_is_upgraded_in_place(db: Path, clock: FakeClock) -> None:
    assert SCHEMA_VERSION >= 2
    with raw(db, foreign_keys=True) as conn:
        conn.execute("BEGIN")
        for statement in MIGRATIONS[0]:
            conn.execute(statement)
        conn.execute("INSERT INTO system_state VALUES ('s', '{\"v\":1}')")
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute("PRAGMA user_version = 1")
        conn.execute("COMMIT")
    async with open_storage(db, clock) as storage:
        assert await storage.load_system_state("s") == {"v": 1}
        await storage.kv().set("k", "v", tags={"t": "1"})
        assert await storage.kv().find_by_tag("t", "1") == ["k"]
    with raw(db, foreign_keys=True) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"kv_updated", "kv_created", "kv_expires", "kv_tags_entry"} <= indexes


# ------------------------------------------------------------------ bad rows


@pytest.mark.parametrize(
    ("column", "bad"),
    [
        ("value", "{not json"),
        ("value", b"\xff\xfe"),  # a blob that is not UTF-8
        ("tags", "[1]"),
        ("tags", '{"t": 1}'),
        ("created_ms", "yesterday"),
        ("expires_ms", "later"),
        ("key", b"blob"),
    ],
)
async def test_a_damaged_row_is_named_counted_and_repaired(db: Path, clock: FakeClock, column: str, bad: Any) -> None:
    async with open_storage(db, clock) as storage:
        kv = storage.kv("ns")
        await kv.set("bad", 1, tags={"t": "1"})
        await kv.set("good", 2)
        with raw(db, foreign_keys=True) as conn:
            conn.execute("PRAGMA foreign_keys = OFF")  # the tag row points at the key being damaged
            conn.execute(f"UPDATE kv SET {column} = ? WHERE key = 'bad'", (bad,))
        if column != "key":
            with pytest.raises(CorruptedDataError, match=r"table kv, namespace 'ns', key 'bad'"):
                await kv.get("bad")
        assert await kv.get("good") == 2  # every other entry stays readable
        stats = await storage.get_storage_stats()
        assert (stats["kv_entry_count"], stats["unreadable_count"]) == (1, 1)
        problems = await storage.verify()
        assert len([p for p in problems if "table kv" in p.message]) == 1, problems
        await kv.set("bad", 3)  # storing again repairs it
        if column != "key":
            assert (await kv.get_entry("bad")) is not None
            stats = await storage.get_storage_stats()
            assert (stats["kv_entry_count"], stats["unreadable_count"]) == (2, 0)


async def test_stats_count_only_kv_rows_and_total_bytes_grows(db: Path, clock: FakeClock) -> None:
    async with open_storage(db, clock) as storage:
        before = (await storage.get_storage_stats())["total_bytes"]
        await storage.kv("a").set_many({f"k{i}": "x" * 1000 for i in range(100)})
        await storage.kv("b").set("k", 1, ttl=1)
        clock.advance(2)
        stats = await storage.get_storage_stats()
        assert (stats["kv_namespace_count"], stats["kv_entry_count"], stats["expired_kv_entry_count"]) == (1, 100, 1)
        assert stats["total_bytes"] > before + 100_000
        assert await storage.list_namespaces() == ["a"]
