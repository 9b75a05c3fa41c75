"""serializer="json" | "msgpack" on PostgreSQL: the column type each one gets, how a schema
records its serializer and refuses the other one, a schema from before the option, stats
and verify under msgpack (rows decoded in Python), hand-damaged msgpack rows.

The contract itself runs on both serializers in the conformance suites (conftest.BACKENDS
has postgres-msgpack), and test_migrate.py takes a file tree through postgres-msgpack and
back byte for byte.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any

import msgpack
import pytest

from connectome_storage import PostgresStorage, create_postgres_storage
from connectome_storage.backends._postgres_schema import MIGRATIONS
from connectome_storage.errors import ConfigError, CorruptedDataError

from ..conftest import START, FakeClock
from ..postgres_server import PostgresServer
from ..test_migrate import populate
from .postgres_fixtures import raw_fixture, schema_fixture  # noqa: F401

VALUE = {"text": "héllo", "n": 2**64 - 1, "neg": -(2**63), "z": -0.0, "f": 0.1, "nul": "\x00", "list": [1, [2]]}
_VALUE_COLUMNS = {
    ("conversations", "document"), ("conversations", "chunks"), ("raw_messages", "data"), ("memories", "data"),
    ("reasoning_chains", "data"), ("cache", "data"), ("system_state", "data"), ("kv", "value"), ("messages", "data"),
}  # fmt: skip


@pytest.fixture
def make(postgres_server: PostgresServer, schema: str, clock: FakeClock) -> Callable[..., PostgresStorage]:
    def build(serializer: str = "json", *, name: str | None = None, at: FakeClock | None = None) -> PostgresStorage:
        store = create_postgres_storage(
            postgres_server.dsn, schema=name or schema, clock=at or clock, serializer=serializer
        )
        assert isinstance(store, PostgresStorage)
        return store

    return build


async def column_types(raw: Any) -> dict[tuple[str, str], tuple[str, str | None]]:
    """(table, column) -> (data type, domain) of every column of the schema."""
    rows = await raw.fetch(
        "SELECT table_name, column_name, data_type, domain_name FROM information_schema.columns "
        "WHERE table_schema = current_schema()"
    )
    return {(r["table_name"], r["column_name"]): (r["data_type"], r["domain_name"]) for r in rows}


async def test_msgpack_values_are_bytea_and_metadata_and_tags_stay_json(
    make: Callable[..., PostgresStorage], raw: Any
) -> None:
    async with make("msgpack") as storage:
        await storage.store_system_state("s", VALUE)
        await storage.append_raw_messages("c", [{"role": "user", "content": "hi"}])
        await storage.kv("ns").set("k", VALUE, tags={"t": "x"})
        await storage.conversation_store().save("c2", [{"role": "user"}], metadata={"topic": "a"})
        await storage.message_store().save({"from": "a", "to": "b", "text": "yo"})
        assert (await storage.health_check())["details"]["serializer"] == "msgpack"
        assert await storage.load_system_state("s") == VALUE
    assert await raw.fetchval("SELECT value FROM meta WHERE name = 'serializer'") == "msgpack"
    types = await column_types(raw)
    assert {types[column] for column in _VALUE_COLUMNS} == {("bytea", "stored")}
    assert types[("conversations", "metadata")] == types[("kv", "tags")] == ("text", None)
    state = await raw.fetchval("SELECT data FROM system_state")
    assert msgpack.unpackb(state, raw=False) == VALUE
    assert await raw.fetchval("SELECT tags FROM kv") == '{"t":"x"}'  # JSON: the tag rows and get_entry read it
    assert await raw.fetchval("SELECT metadata FROM conversations WHERE conversation_id = 'c2'") == '{"topic":"a"}'
    message = await raw.fetchval("SELECT data FROM messages")
    assert msgpack.unpackb(message, raw=False)["text"] == "yo"


async def test_json_values_stay_readable_text(make: Callable[..., PostgresStorage], raw: Any) -> None:
    async with make() as storage:
        await storage.store_system_state("s", {"b": 1, "a": [True]})
        assert (await storage.health_check())["details"]["serializer"] == "json"
    assert await raw.fetchval("SELECT data FROM system_state") == '{"a":[true],"b":1}'
    assert await raw.fetchval("SELECT value FROM meta WHERE name = 'serializer'") == "json"
    types = await column_types(raw)
    assert {types[column] for column in _VALUE_COLUMNS} == {("text", "stored")}


@pytest.mark.parametrize(("written", "opened"), [("json", "msgpack"), ("msgpack", "json")])
async def test_a_schema_refuses_the_other_serializer(
    make: Callable[..., PostgresStorage], written: str, opened: str
) -> None:
    async with make(written) as storage:
        await storage.store_system_state("s", 41)
    wrong = make(opened)
    try:
        with pytest.raises(ConfigError, match=rf"serializer='{written}'.*opened with serializer='{opened}'"):
            await wrong.initialize()
        assert wrong._pool is None  # its pool was closed again
    finally:
        await wrong.shutdown()
    async with make(written) as storage:
        assert await storage.load_system_state("s") == 41


async def test_an_empty_schema_is_claimed_by_the_first_opener(make: Callable[..., PostgresStorage]) -> None:
    async with make("msgpack"):
        pass  # nothing stored, but the schema is msgpack's now
    with pytest.raises(ConfigError, match="serializer='msgpack'"):
        await make("json").initialize()


async def test_two_openers_of_a_new_schema_with_different_serializers(make: Callable[..., PostgresStorage]) -> None:
    # The schema's advisory lock orders them: the second finds the first one's row.
    stores = [make("json"), make("msgpack")]
    outcomes = await asyncio.gather(*(store.initialize() for store in stores), return_exceptions=True)
    try:
        refused = [outcome for outcome in outcomes if isinstance(outcome, ConfigError)]
        opened = [store for store, outcome in zip(stores, outcomes, strict=True) if outcome is True]
        assert len(refused) == len(opened) == 1
        winner = opened[0]
        await winner.store_system_state("s", [1])
        assert await winner.load_system_state("s") == [1]
    finally:
        for store in stores:
            await store.shutdown()


async def test_a_schema_from_before_the_option_is_json(
    make: Callable[..., PostgresStorage], raw: Any, schema: str
) -> None:
    # As the first version of the schema left it: text columns, no meta table, no domain.
    await raw.execute(f'CREATE SCHEMA "{schema}"')
    await raw.execute("CREATE TABLE schema_version (version integer NOT NULL, one boolean PRIMARY KEY DEFAULT true)")
    await raw.execute("INSERT INTO schema_version (version) VALUES (1)")
    for statement in MIGRATIONS[0]:
        await raw.execute(re.sub(r"\bstored\b", "text", statement))
    await raw.execute("INSERT INTO system_state (state_key, data) VALUES ('s', '41')")
    # msgpack would misread JSON text: refused, and nothing recorded.
    with pytest.raises(ConfigError, match="serializer='json'"):
        await make("msgpack").initialize()
    async with make() as storage:
        assert await storage.load_system_state("s") == 41
        await storage.append_raw_messages("c", [{"n": 1}])  # the statements' stored[] exists now
        assert await storage.load_raw_messages("c") == [{"n": 1}]
    assert await raw.fetchval("SELECT value FROM meta WHERE name = 'serializer'") == "json"


async def test_msgpack_stats_and_verify_match_json(make: Callable[..., PostgresStorage], schema: str) -> None:
    # populate() moves its clock on and saves messages: an hour before the usual start, so
    # the ids it makes never run ahead of the ids later tests expect at the start (message
    # ids increase within a process).
    clock = FakeClock(START - 3600)
    found = {}
    for serializer in ("json", "msgpack"):
        async with make(serializer, name=f"{schema}_{serializer}", at=clock) as storage:
            await populate(storage, clock)
            assert await storage.verify() == []
            stats = await storage.get_storage_stats()
            found[serializer] = {key: value for key, value in stats.items() if key != "total_bytes"}
    assert found["msgpack"] == found["json"]
    assert found["msgpack"]["raw_message_count"] > 0 and found["msgpack"]["kv_entry_count"] > 0


async def test_msgpack_damaged_rows_are_counted_and_named_like_a_read(
    make: Callable[..., PostgresStorage], raw: Any
) -> None:
    async with make("msgpack") as storage:
        await storage.store_conversation("doc", {"t": 1})
        await storage.store_chunks("chunks", [{"i": 0}, {"i": 1}])
        await storage.append_raw_messages("raw", [{"n": 0}, {"n": 1}, {"n": 2}])
        await storage.store_memory("memory", "m1", {"v": 1})
        await storage.store_reasoning_chain("agent", {"s": 1})
        await storage.store_cache("cache", {"c": 1})
        await storage.store_system_state("state", 1)
        await storage.kv().set_many({"good": 1, "bad": 2})
        await storage.message_store().save({"id": "m", "from": "a", "to": "b"})
        clean = await storage.get_storage_stats()
        assert clean["unreadable_count"] == 0

        # What only a hand edit can do: bytes msgpack cannot decode, or a value of the wrong shape.
        packed = msgpack.packb
        await raw.execute("UPDATE conversations SET document = $1 WHERE conversation_id = 'doc'", packed([1]))
        await raw.execute("UPDATE conversations SET chunks = $1 WHERE conversation_id = 'chunks'", packed([{}, 5]))
        await raw.execute("UPDATE raw_messages SET data = '\\xc1' WHERE seq = 1")
        await raw.execute("UPDATE raw_messages SET data = '\\x92' WHERE seq = 2")
        await raw.execute("UPDATE memories SET data = $1", packed({"memory_id": "other"}))
        await raw.execute("UPDATE reasoning_chains SET data = $1", packed([]))
        await raw.execute("UPDATE cache SET data = '\\x'")
        await raw.execute("UPDATE system_state SET data = convert_to('1', 'UTF8') || '\\x00'")  # trailing bytes
        await raw.execute("UPDATE kv SET value = '\\x92' WHERE key = 'bad'")
        await raw.execute("UPDATE messages SET data = $1", packed({"id": "m"}))

        stats = await storage.get_storage_stats()
        # document, chunk list, 2 raw rows, memory, chain, cache, state, kv entry, message.
        assert stats["unreadable_count"] == 10
        assert stats["raw_message_count"] == clean["raw_message_count"] - 2
        assert stats["chunk_count"] == stats["memory_count"] == stats["reasoning_chain_count"] == 0
        assert stats["cache_entry_count"] == 0 and stats["kv_entry_count"] == 1 and stats["message_count"] == 0
        assert stats["system_state_count"] == 1  # counted as a key, as on JSON

        problems = await storage.verify()
        assert len(problems) == 9  # the history "raw" once, at seq 1
        messages = {str(problem.message) for problem in problems}
        expected: list[tuple[Any, str]] = [
            (lambda: storage.load_conversation("doc"), "doc"),
            (lambda: storage.load_chunks("chunks"), "chunks"),
            (lambda: storage.load_raw_messages("raw"), "seq 1"),
            (lambda: storage.load_memories("memory"), "memory_id"),
            (lambda: storage.load_reasoning_chains("agent"), "agent"),
            (lambda: storage.load_cache("cache"), "invalid msgpack"),
            (lambda: storage.load_system_state("state"), "invalid msgpack"),
            (lambda: storage.kv().get("bad"), "key 'bad'"),
        ]
        for read, needle in expected:
            with pytest.raises(CorruptedDataError) as caught:
                await read()
            assert str(caught.value) in messages, needle  # verify reports exactly what the read raises
            assert needle in str(caught.value)
        assert await storage.kv().get("good") == 1
