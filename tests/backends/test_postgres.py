"""What only PostgresStorage does: its tables, statistics and verify judged in SQL, errors of
the server (a wrong password, a stopped server, a restart), concurrent writers of one
conversation. Everything runs against a real PostgreSQL (tests/postgres_server.py); the
tests that stop or restart a server start their own, so the shared one stays up.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from connectome_storage import PostgresStorage, create_file_storage, create_postgres_storage
from connectome_storage.errors import AccessDeniedError, BackendUnavailableError, CorruptedDataError
from connectome_storage.interface import Kind

from ..conftest import FakeClock
from ..postgres_server import PASSWORD, PostgresServer
from .postgres_fixtures import raw_fixture, schema_fixture  # noqa: F401

# ------------------------------------------------------------------- fixtures


@pytest.fixture
async def storage(postgres_server: PostgresServer, schema: str, clock: FakeClock) -> AsyncIterator[PostgresStorage]:
    store = create_postgres_storage(postgres_server.dsn, schema=schema, clock=clock)
    assert isinstance(store, PostgresStorage)
    async with store:
        yield store


@pytest.fixture(scope="module")
def own_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """A server of this module's own, for the tests that stop and restart it."""
    server = PostgresServer(tmp_path_factory.mktemp("postgres-own"))
    server.start()
    try:
        yield server
    finally:
        server.stop("immediate")


@pytest.fixture
def running(own_server: PostgresServer) -> Iterator[PostgresServer]:
    """``own_server``, started again after the test whatever it did to it."""
    if not own_server.is_running():
        own_server.start()
    yield own_server
    if not own_server.is_running():
        own_server.start()


# --------------------------------------------------------------------- tables


async def test_values_are_kept_as_their_canonical_json_text(storage: PostgresStorage, raw: Any) -> None:
    # jsonb would turn 1e300 into 301 digits and -0.0 into 0, and refuse \u0000.
    document = {"b": 1e300, "a": -0.0, "nul": "\x00", "big": 2**63 - 1}
    await storage.store_conversation("c1", document)
    text = await raw.fetchval("SELECT document FROM conversations WHERE conversation_id = 'c1'")
    assert text == orjson.dumps(document, option=orjson.OPT_SORT_KEYS).decode()
    assert await storage.load_conversation("c1") == document
    types = await raw.fetch(
        "SELECT data_type FROM information_schema.columns WHERE table_schema = current_schema() "
        "AND column_name IN ('document', 'chunks', 'data', 'metadata')"
    )
    assert {row["data_type"] for row in types} == {"text"}


async def test_a_log_is_one_row_per_item_in_order(storage: PostgresStorage, raw: Any) -> None:
    assert await storage.append_raw_messages("c1", [{"n": 0}, {"n": 1}]) == 2
    assert await storage.append_raw_messages("c1", [{"n": 2}]) == 3
    rows = await raw.fetch("SELECT seq, data FROM raw_messages WHERE conversation_id = 'c1' ORDER BY seq")
    assert [(row["seq"], row["data"]) for row in rows] == [(0, '{"n":0}'), (1, '{"n":1}'), (2, '{"n":2}')]
    assert await storage.pop_raw_message("c1") == {"n": 2}
    await storage.store_raw_messages("c1", [])
    # The conversation's row goes with its last part.
    assert await raw.fetchval("SELECT count(*) FROM conversations") == 0


async def test_pop_on_an_empty_log_returns_none_and_creates_nothing(storage: PostgresStorage, raw: Any) -> None:
    assert await storage.pop_raw_message("nothing") is None
    await storage.store_reasoning_chain("a1", {"step": 1})
    assert await storage._pop_log(Kind.REASONING_CHAINS, "a1") == {"step": 1}
    assert await storage._pop_log(Kind.REASONING_CHAINS, "a1") is None
    assert await storage.list_agents() == []
    assert await raw.fetchval("SELECT count(*) FROM conversations") == 0
    assert await raw.fetchval("SELECT count(*) FROM agents") == 0


async def test_a_replaced_memory_keeps_its_place(storage: PostgresStorage, raw: Any) -> None:
    for memory_id in ("m1", "m2", "m3"):
        await storage.store_memory("c1", memory_id, {"v": 1})
    await storage.store_memory("c1", "m1", {"v": 2})
    await storage.delete_memory("c1", "m2")
    await storage.store_memory("c1", "m2", {"v": 3})  # a new memory: last
    assert [m["memory_id"] for m in await storage.load_memories("c1")] == ["m1", "m3", "m2"]
    positions = await raw.fetch("SELECT memory_id, position FROM memories ORDER BY position")
    assert [row["memory_id"] for row in positions] == ["m1", "m3", "m2"]


async def test_conversation_parts_read_in_one_statement_equal_the_single_reads(storage: PostgresStorage) -> None:
    await storage.store_conversation("c1", {"title": "t"})
    await storage.store_chunks("c1", [{"i": 0}])
    await storage.append_raw_messages("c1", [{"n": 0}, {"n": 1}])
    await storage.store_memory("c1", "m1", {"v": 1})
    meta, document, chunks, messages, memories = await storage._conversation_parts("c1", storage._now_ms())
    assert meta is None  # no conversation store metadata was written
    assert document == await storage.load_conversation("c1")
    assert chunks == await storage.load_chunks("c1")
    assert messages == await storage.load_raw_messages("c1")
    assert memories == await storage.load_memories("c1")
    assert await storage._conversation_parts("missing", storage._now_ms()) == (None, None, None, [], [])


# ---------------------------------------------------------------- concurrency


async def test_concurrent_appends_from_many_connections_lose_nothing(
    postgres_server: PostgresServer, schema: str, clock: FakeClock
) -> None:
    # Several storage objects (pools) append to one conversation at once: the parent row
    # lock orders them, so every seq is taken once and every length returned is distinct.
    stores = [create_postgres_storage(postgres_server.dsn, schema=schema, clock=clock) for _ in range(4)]
    for store in stores:
        await store.initialize()
    try:

        async def writer(store: Any, index: int) -> list[int]:
            return [await store.append_raw_messages("c1", [{"w": index, "i": i}]) for i in range(15)]

        lengths = await asyncio.gather(*(writer(store, index) for index, store in enumerate(stores)))
        messages = await stores[0].load_raw_messages("c1")
        assert sorted(n for run in lengths for n in run) == list(range(1, 61))
        for index in range(4):  # each writer's messages stay in its own order
            assert [m["i"] for m in messages if m["w"] == index] == list(range(15))

        async def memories(store: Any, index: int) -> None:
            for i in range(10):
                await store.store_memory("c2", f"m{index}-{i}", {"i": i})

        await asyncio.gather(*(memories(store, index) for index, store in enumerate(stores)))
        assert len(await stores[0].load_memories("c2")) == 40
    finally:
        for store in stores:
            await store.shutdown()


# ------------------------------------------------------- statistics and verify


# Texts that PostgreSQL's json parser and orjson judge differently, or that look close.
TRICKY_TEXTS = [
    '{"a":1}', "[1,]", "{", "", "NaN", "01", "1.", ".5", '"\\x"', '"\t"', '"\x01"', "\ufeff{}",
    '{"a":1}{"b":2}', " \t{}\n", "1e400", "-1e400", "1e-400", "1E+308", "1e308", "1" + "0" * 320,
    "0." + "0" * 400 + "1", '"\\u0000"', '"\\ud800"', '"\\udc00"', '"\\ud83d\\ude00"', '"\\\\ud800"',
    "[" * 1100 + "]" * 1100, "[" * 1000 + "]" * 1000, '{"a":1,"a":2}', '"\x7f"', "true", "null",
]  # fmt: skip


async def test_json_kind_and_the_python_fallback_judge_like_the_reader(storage: PostgresStorage, raw: Any) -> None:
    for text in TRICKY_TEXTS:
        kind = await raw.fetchval("SELECT json_kind($1)", text)
        try:
            value: Any = orjson.loads(text)
        except orjson.JSONDecodeError:
            reader = None
        else:
            reader = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
                type(value), "number"
            )
        # 'unsure' rows are decoded in Python: whatever the reader says is the verdict.
        assert kind == "unsure" or kind == reader, (text[:30], kind, reader)


async def test_stats_and_verify_count_hand_damaged_rows_like_a_read(
    storage: PostgresStorage, raw: Any, clock: FakeClock
) -> None:
    await storage.store_conversation("good", {"t": 1})
    await storage.store_chunks("good", [{"i": 0}, {"i": 1}])
    await storage.append_raw_messages("good", [{"n": 0}, {"n": 1e300}])
    await storage.store_memory("good", "m1", {"v": 1})
    for name in ("doc", "chunks", "raw", "raw2", "memory", "memory_id"):
        await storage.store_conversation(name, {"t": 1})
    await storage.store_chunks("chunks", [{"i": 0}])
    await storage.append_raw_messages("raw", [{"n": 0}, {"n": 1}, {"n": 2}])
    await storage.append_raw_messages("raw2", [{"n": 0}])
    await storage.store_memory("memory", "m1", {"v": 1})
    await storage.store_memory("memory_id", "m1", {"v": 1})
    await storage.store_reasoning_chain("agent", {"s": 1})
    await storage.store_cache("cache", {"c": 1})
    await storage.store_system_state("state", [1, 2])
    clean = await storage.get_storage_stats()
    assert clean["unreadable_count"] == 0
    assert await storage.verify() == []

    # What only a hand edit can do. Two rows of one history are bad: a load stops at the first.
    await raw.execute("UPDATE conversations SET document = '[1]' WHERE conversation_id = 'doc'")
    await raw.execute("""UPDATE conversations SET chunks = '[{"i":0}, 5]' WHERE conversation_id = 'chunks'""")
    await raw.execute("UPDATE raw_messages SET data = '{\"n\": 1e400}' WHERE conversation_id = 'raw' AND seq = 1")
    await raw.execute("UPDATE raw_messages SET data = 'oops' WHERE conversation_id = 'raw' AND seq = 2")
    await raw.execute("""UPDATE raw_messages SET data = '"\\ud800"' WHERE conversation_id = 'raw2'""")
    await raw.execute("UPDATE memories SET data = '{' WHERE conversation_id = 'memory'")
    await raw.execute("""UPDATE memories SET data = '{"memory_id":"other"}' WHERE conversation_id = 'memory_id'""")
    await raw.execute("UPDATE reasoning_chains SET data = '[]'")
    await raw.execute("UPDATE cache SET data = 'NaN'")
    await raw.execute("UPDATE system_state SET data = '1e999'")

    stats = await storage.get_storage_stats()
    # Bad rows: document, chunk list, 2 raw rows + 1, memory, memory id, chain, cache, state.
    assert stats["unreadable_count"] == 10
    assert stats["raw_message_count"] == clean["raw_message_count"] - 3
    assert stats["memory_count"] == clean["memory_count"] - 2
    assert stats["chunk_count"] == clean["chunk_count"] - 1
    assert stats["reasoning_chain_count"] == 0
    assert stats["cache_entry_count"] == stats["system_state_count"] - 1 == 0
    assert stats["conversation_count"] == clean["conversation_count"]

    problems = await storage.verify()
    # One per entity a load would fail on (the history "raw" once, at seq 1).
    assert len(problems) == 9
    for problem in problems:
        assert storage._schema in problem.location
    expected: list[tuple[Any, str]] = [
        (lambda: storage.load_conversation("doc"), "doc"),
        (lambda: storage.load_chunks("chunks"), "chunks"),
        (lambda: storage.load_raw_messages("raw"), "seq 1"),
        (lambda: storage.load_raw_messages("raw2"), "raw2"),
        (lambda: storage.load_memories("memory"), "memory"),
        (lambda: storage.load_memories("memory_id"), "memory_id"),
        (lambda: storage.load_reasoning_chains("agent"), "agent"),
        (lambda: storage.load_cache("cache"), "cache"),
        (lambda: storage.load_system_state("state"), "state"),
    ]
    messages = sorted(str(problem.message) for problem in problems)
    for read, needle in expected:
        with pytest.raises(CorruptedDataError) as caught:
            await read()
        assert str(caught.value) in messages, needle  # verify reports exactly what the load raises
        assert needle in str(caught.value)


async def test_stats_leave_out_the_parts_of_an_expired_conversation(
    storage: PostgresStorage, raw: Any, clock: FakeClock
) -> None:
    await storage.append_raw_messages("c1", [{"n": 0}])
    await storage.store_memory("c1", "m1", {"v": 1})
    await storage.store_chunks("c1", [{"i": 0}])
    # The conversation store's expiry is a column of the row (set here by hand).
    await raw.execute("UPDATE conversations SET expires_ms = $1", storage._now_ms())
    stats = await storage.get_storage_stats()
    assert (stats["conversation_count"], stats["expired_conversation_count"]) == (0, 1)
    assert stats["raw_message_count"] == stats["memory_count"] == stats["chunk_count"] == 0
    assert await storage.load_raw_messages("c1") == []
    assert await storage.list_conversations() == []
    # A write starts it afresh.
    assert await storage.append_raw_messages("c1", [{"n": 1}]) == 1
    assert await storage.load_memories("c1") == []


async def test_total_bytes_is_this_schemas_tables(storage: PostgresStorage, raw: Any) -> None:
    before = await storage._total_bytes()
    assert before > 0  # empty tables still own their index pages
    await storage.store_system_state("big", "x" * 200_000)
    assert await storage._total_bytes() > before
    other = f"t_other_{uuid.uuid4().hex}"
    await raw.execute(f"CREATE SCHEMA {other}; CREATE TABLE {other}.filler AS SELECT repeat('y', 500000) AS t")
    try:
        after = await storage._total_bytes()
        assert after == await storage._total_bytes()
        stats = await storage.get_storage_stats()
        assert stats["total_bytes"] == after  # another schema's tables are not counted
    finally:
        await raw.execute(f"DROP SCHEMA {other} CASCADE")


async def test_health_reports_the_server_and_the_pool(storage: PostgresStorage) -> None:
    report = await storage.health_check()
    assert report["status"] == "healthy"
    details = report["details"]
    assert details["server_version"].startswith(("1", "2"))
    assert details["schema_version"] >= 1
    assert 1 <= details["pool_size"] <= details["pool_max_size"] == 10
    assert PASSWORD not in repr(report)


# --------------------------------------------------------------------- errors


async def test_a_wrong_password_is_access_denied_without_showing_it(postgres_server: PostgresServer) -> None:
    secret = "not-the-password-7f3a"
    dsn = postgres_server.dsn.replace(PASSWORD, secret)
    store = create_postgres_storage(dsn, schema="t_wrong_password", connection_timeout=5)
    with pytest.raises(AccessDeniedError, match="password") as caught:
        await store.initialize()
    for text in (str(caught.value), repr(caught.value), repr(store)):
        assert secret not in text
    report = await store.health_check()
    assert report["status"] == "unhealthy" and secret not in repr(report)


async def test_a_stopped_server_is_unavailable_at_initialize(running: PostgresServer) -> None:
    running.stop("immediate")
    store = create_postgres_storage(running.dsn, schema="t_stopped", connection_timeout=2, max_retries=1)
    with pytest.raises(BackendUnavailableError) as caught:
        await store.initialize()
    assert PASSWORD not in str(caught.value)
    assert "127.0.0.1" in str(caught.value)
    running.start()
    async with store:
        assert await store.list_conversations() == []


async def test_a_server_that_stops_and_starts_again_is_reconnected(running: PostgresServer, clock: FakeClock) -> None:
    store = create_postgres_storage(running.dsn, schema="t_restart", connection_timeout=2, max_retries=1, clock=clock)
    async with store:
        await store.store_conversation("c1", {"t": 1})
        await store.append_raw_messages("c1", [{"n": 0}])
        running.stop("immediate")  # a crash: every pooled connection dies with it
        with pytest.raises(BackendUnavailableError) as caught:
            await store.load_conversation("c1")
        assert PASSWORD not in str(caught.value)
        with pytest.raises(BackendUnavailableError):
            await store.append_raw_messages("c1", [{"n": 1}])
        report = await store.health_check()
        assert report["status"] == "unhealthy"
        assert report["details"]["error_type"] == "BackendUnavailableError"
        assert PASSWORD not in repr(report)

        running.start()  # same port, same data: the same storage object works again
        assert await store.load_conversation("c1") == {"t": 1}
        assert await store.append_raw_messages("c1", [{"n": 1}]) == 2
        assert (await store.health_check())["status"] == "healthy"


async def test_a_read_on_connections_the_server_killed_is_retried(storage: PostgresStorage, raw: Any) -> None:
    await storage.store_conversation("c1", {"t": 1})
    pool = storage.pool
    await asyncio.gather(*(storage.load_conversation("c1") for _ in range(5)))  # several pooled connections
    assert pool.get_size() > 1
    killed = await raw.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE application_name = 'connectome-storage' AND datname = current_database() AND pid <> pg_backend_pid() "
        "AND query NOT LIKE '%pg_terminate_backend%' AND backend_type = 'client backend'"
    )
    assert killed >= 1
    # Every connection the pool held is gone; reads and a write find (or make) a live one.
    for _ in range(pool.get_max_size()):
        assert await storage.load_conversation("c1") == {"t": 1}
    assert await storage.append_raw_messages("c1", [{"n": 0}]) == 1


# ------------------------------------------------------------------------ CLI


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "connectome_storage", *args], capture_output=True, text=True, check=False, timeout=120
    )


async def test_cli_dsn_alone_selects_postgres(
    storage: PostgresStorage, postgres_server: PostgresServer, schema: str
) -> None:
    await storage.store_conversation("c1", {"t": 1})
    shown = _cli("--dsn", postgres_server.dsn, "--schema", schema, "show", "c1")
    assert shown.returncode == 0, shown.stderr
    assert '"t": 1' in shown.stdout
    listed = _cli("--dsn", postgres_server.dsn, "--schema", schema, "ls")
    assert listed.returncode == 0 and "c1" in listed.stdout
    dead = _cli("--dsn", postgres_server.dsn.replace(f":{postgres_server.port}/", ":1/"), "health")
    assert dead.returncode == 1
    assert "unhealthy" in dead.stdout
    assert PASSWORD not in dead.stdout + dead.stderr


async def test_cli_migrate_moves_a_tree_into_a_schema_and_back(
    tmp_path: Path, postgres_server: PostgresServer, schema: str
) -> None:
    """The one command that moves the data: tree -> postgres (--to-schema) -> tree, same bytes."""
    original, copy = tmp_path / "original", tmp_path / "copy"
    async with create_file_storage(original) as tree:
        await tree.store_conversation("c1", {"title": "trip"})
        await tree.append_raw_messages("c1", [{"role": "user", "content": "hi"}])
        await tree.kv("sessions").set("s1", {"turn": 4})
    moved = _cli("migrate", "--from", f"file:{original}", "--to", postgres_server.dsn, "--to-schema", schema)
    assert moved.returncode == 0, moved.stderr
    assert PASSWORD not in moved.stdout + moved.stderr
    same = _cli("migrate", "--from", postgres_server.dsn, "--to", postgres_server.dsn, "--schema", schema)
    assert same.returncode == 2 and "same storage" in same.stderr
    back = _cli("migrate", "--from", postgres_server.dsn, "--from-schema", schema, "--to", f"file:{copy}")
    assert back.returncode == 0, back.stderr
    for name in ("conversations/c1/current.json", "conversations/c1/raw_messages.json", "kv/sessions/s1.json"):
        assert (copy / name).read_bytes() == (original / name).read_bytes()


async def test_host_port_user_password_and_database_options_stand_in_for_the_dsn(
    postgres_server: PostgresServer, schema: str
) -> None:
    """The address in parts, each replacing that part of dsn (whose default names no
    server of the tests); the password is never shown."""
    parts = {"host": "127.0.0.1", "port": postgres_server.port, "user": "postgres", "database": "postgres"}
    async with create_postgres_storage(schema=schema, password=PASSWORD, **parts) as storage:
        await storage.store_system_state("s", {"v": 1})
        health = await storage.health_check()
        assert health["status"] == "healthy"
        assert PASSWORD not in repr(storage) + str(health) + repr(storage.settings)
    async with create_postgres_storage(postgres_server.dsn, schema=schema) as same:
        assert await same.load_system_state("s") == {"v": 1}
    wrong = create_postgres_storage(schema=schema, password="wrong-password", connection_timeout=5, **parts)
    with pytest.raises(AccessDeniedError) as caught:
        await wrong.initialize()
    assert "wrong-password" not in str(caught.value)
