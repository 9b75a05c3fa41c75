"""serializer="json" | "msgpack" on SQLite and Redis: what is stored, how a store records its
serializer and refuses the other one, stats and verify under msgpack, and migration between
a JSON store and a msgpack store and back to the file tree, byte for byte.

The contract itself (every round-trip rule) runs on both serializers in the conformance
suites (conftest.BACKENDS has sqlite-msgpack and redis-msgpack).
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import msgpack
import pytest
import redis.asyncio

from connectome_storage import (
    RedisStorage,
    SqliteStorage,
    StorageInterface,
    create_file_storage,
    create_redis_storage,
    create_sqlite_storage,
    migrate,
)
from connectome_storage.backends._sqlite_schema import MIGRATIONS
from connectome_storage.errors import ConfigError, CorruptedDataError
from connectome_storage.serializer import JsonSerializer, MsgpackSerializer, make_serializer

from .conftest import FakeClock
from .redis_server import RedisServer
from .test_migrate import populate, tree

VALUE = {"text": "héllo", "n": 2**64 - 1, "neg": -(2**63), "z": -0.0, "f": 0.1, "list": [1, [2]], "none": None}


def sqlite_storage(path: Path, clock: FakeClock, serializer: str = "json") -> SqliteStorage:
    storage = create_sqlite_storage(path, clock=clock, serializer=serializer)
    assert isinstance(storage, SqliteStorage)
    return storage


@pytest.fixture
def make_redis(redis_server: RedisServer, tmp_path: Path, clock: FakeClock) -> Callable[..., RedisStorage]:
    def build(serializer: str = "json", prefix: str = "", **options: Any) -> RedisStorage:
        key_prefix = f"test:{tmp_path.name}:{prefix}"
        storage = create_redis_storage(
            redis_server.url, key_prefix=key_prefix, clock=clock, serializer=serializer, **options
        )
        assert isinstance(storage, RedisStorage)
        return storage

    return build


@pytest.fixture
async def raw(redis_server: RedisServer) -> AsyncIterator[Any]:
    client = redis.asyncio.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


def rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute(sql).fetchall()


# ------------------------------------------------------------------ the serializers


@pytest.mark.parametrize("serializer", [JsonSerializer(), MsgpackSerializer()], ids=["json", "msgpack"])
def test_both_serializers_bring_every_value_back_exactly(serializer: Any) -> None:
    back = serializer.loads(serializer.dumps(VALUE))
    assert back == VALUE and str(back["z"]) == "-0.0" and type(back["n"]) is int
    assert type(back["text"]) is str and type(back["list"]) is list and type(back["list"][1]) is list


def test_msgpack_keeps_str_as_str_and_refuses_garbage_as_corrupted_data() -> None:
    serializer = make_serializer("msgpack")
    packed = serializer.dumps("é")
    assert 0xA0 <= packed[0] <= 0xBF  # a msgpack str, never bin
    for garbage in (b"\xc1", b"\x92\x01", serializer.dumps(1) + b"x", msgpack.packb({1: 2}), "text"):
        with pytest.raises(CorruptedDataError, match=r"where\b.*invalid msgpack"):
            serializer.decode(garbage, "where")


def test_an_unknown_serializer_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"'pickle'.*json or msgpack"):
        make_serializer("pickle")


# --------------------------------------------------------------------- SQLite


async def test_sqlite_msgpack_stores_blobs_and_records_its_serializer(tmp_path: Path, clock: FakeClock) -> None:
    db = tmp_path / "m.db"
    async with sqlite_storage(db, clock, "msgpack") as storage:
        await storage.store_system_state("s", VALUE)
        await storage.append_raw_messages("c", [{"role": "user", "content": "hi"}])
        await storage.kv("ns").set("k", VALUE, tags={"t": "x"})
        assert (await storage.health_check())["details"]["serializer"] == "msgpack"
    assert rows(db, "SELECT value FROM meta WHERE name = 'serializer'") == [("msgpack",)]
    [(state, kind)] = rows(db, "SELECT data, typeof(data) FROM system_state")
    assert kind == "blob" and msgpack.unpackb(state, raw=False) == VALUE
    [(value, tags)] = rows(db, "SELECT typeof(value), tags FROM kv")
    assert value == "blob" and tags == '{"t":"x"}'  # tags stay JSON: the tag index reads them
    [(message,)] = rows(db, "SELECT data FROM raw_messages")
    assert msgpack.unpackb(message, raw=False) == {"role": "user", "content": "hi"}


async def test_sqlite_json_stays_readable_text(tmp_path: Path, clock: FakeClock) -> None:
    db = tmp_path / "j.db"
    async with sqlite_storage(db, clock) as storage:
        await storage.store_system_state("s", {"b": 1, "a": [True]})
    assert rows(db, "SELECT data, typeof(data) FROM system_state") == [('{"a":[true],"b":1}', "text")]
    assert rows(db, "SELECT value FROM meta WHERE name = 'serializer'") == [("json",)]


@pytest.mark.parametrize(("written", "opened"), [("json", "msgpack"), ("msgpack", "json")])
async def test_sqlite_refuses_the_other_serializer(tmp_path: Path, clock: FakeClock, written: str, opened: str) -> None:
    db = tmp_path / "c.db"
    async with sqlite_storage(db, clock, written) as storage:
        await storage.store_system_state("s", 41)
    wrong = sqlite_storage(db, clock, opened)
    try:
        with pytest.raises(ConfigError, match=rf"serializer='{written}'.*opened with serializer='{opened}'"):
            await wrong.initialize()
        assert wrong._db is None  # the connection was closed again
    finally:
        await wrong.shutdown()  # only does something if the refusal failed: its thread would outlive the test
    async with sqlite_storage(db, clock, written) as storage:
        assert await storage.load_system_state("s") == 41


async def test_sqlite_an_empty_database_is_claimed_by_the_first_opener(tmp_path: Path, clock: FakeClock) -> None:
    db = tmp_path / "e.db"
    async with sqlite_storage(db, clock, "msgpack"):
        pass  # nothing stored, but the file is msgpack's now
    with pytest.raises(ConfigError, match="serializer='msgpack'"):
        await sqlite_storage(db, clock, "json").initialize()


def legacy_database(db: Path, with_data: bool) -> None:
    """A database as the previous schema version left it (no meta table), JSON inside."""
    with closing(sqlite3.connect(db, isolation_level=None)) as conn:
        for step in MIGRATIONS[:2]:
            for statement in step:
                conn.execute(statement)
        conn.execute("PRAGMA application_id = 0x436E5374")
        conn.execute("PRAGMA user_version = 2")
        if with_data:
            conn.execute("INSERT INTO system_state (state_key, data) VALUES ('s', '41')")


async def test_sqlite_a_database_from_before_the_meta_table_is_json(tmp_path: Path, clock: FakeClock) -> None:
    old = tmp_path / "old.db"
    legacy_database(old, with_data=True)
    # msgpack would read the JSON text '41' as the number 52: refused instead.
    with pytest.raises(ConfigError, match="serializer='json'"):
        await sqlite_storage(old, clock, "msgpack").initialize()
    async with sqlite_storage(old, clock) as storage:
        assert await storage.load_system_state("s") == 41
    empty = tmp_path / "empty.db"
    legacy_database(empty, with_data=False)
    async with sqlite_storage(empty, clock, "msgpack") as storage:
        await storage.store_system_state("s", 41)
        assert await storage.load_system_state("s") == 41


async def test_sqlite_msgpack_stats_and_verify_match_json(tmp_path: Path, clock: FakeClock) -> None:
    found = {}
    for serializer in ("json", "msgpack"):
        async with sqlite_storage(tmp_path / f"{serializer}.db", clock, serializer) as storage:
            await populate(storage, clock)
            assert await storage.verify() == []
            stats = await storage.get_storage_stats()
            found[serializer] = {key: value for key, value in stats.items() if key != "total_bytes"}
    assert found["msgpack"] == found["json"]
    assert found["msgpack"]["raw_message_count"] > 0 and found["msgpack"]["kv_entry_count"] > 0


async def test_sqlite_msgpack_damaged_rows_are_counted_and_named(tmp_path: Path, clock: FakeClock) -> None:
    db = tmp_path / "d.db"
    async with sqlite_storage(db, clock, "msgpack") as storage:
        await storage.append_raw_messages("c", [{"n": 1}, {"n": 2}])
        await storage.store_system_state("s", 1)
        await storage.kv().set_many({"good": 1, "bad": 2})
        with closing(sqlite3.connect(db, isolation_level=None)) as conn:
            conn.execute("UPDATE raw_messages SET data = x'c1' WHERE seq = 1")
            conn.execute("UPDATE system_state SET data = '{\"json\": 1}'")  # text: not what msgpack wrote
            conn.execute("UPDATE kv SET value = x'92' WHERE key = 'bad'")
        stats = await storage.get_storage_stats()
        assert stats["unreadable_count"] == 3
        # Without SQL that reads msgpack, stats decode entity by entity: the history with a
        # bad row is one unreadable entity, as a damaged file is on the file tree.
        assert stats["raw_message_count"] == 0 and stats["kv_entry_count"] == 1
        problems = " | ".join(f"{p.location}: {p.message}" for p in await storage.verify())
        assert "seq 1" in problems and "state_key 's'" in problems and "key 'bad'" in problems
        with pytest.raises(CorruptedDataError, match="invalid msgpack"):
            await storage.load_raw_messages("c")
        with pytest.raises(CorruptedDataError, match="key 'bad'"):
            await storage.kv().get("bad")
        assert await storage.kv().get("good") == 1


# ---------------------------------------------------------------------- Redis


async def test_redis_msgpack_stores_msgpack_and_records_its_serializer(
    make_redis: Callable[..., RedisStorage], raw: Any
) -> None:
    async with make_redis("msgpack") as storage:
        await storage.store_conversation("c", VALUE)
        await storage.kv().set("k", VALUE, tags={"t": "x"})
        assert (await storage.health_check())["details"]["serializer"] == "msgpack"
        prefix = storage._prefix
        document = await raw.get(storage.key_of(storage_kind("CONVERSATION"), "c"))
        assert msgpack.unpackb(document, raw=False) == VALUE
        entry = await raw.hgetall(storage.kv_key_of("default", "k"))
        assert msgpack.unpackb(entry[b"value"], raw=False) == VALUE and entry[b"tags"] == b'{"t":"x"}'
    assert await raw.get(f"{prefix}meta:serializer") == b"msgpack"


def storage_kind(name: str) -> Any:
    from connectome_storage.interface import Kind

    return Kind[name]


@pytest.mark.parametrize(("written", "opened"), [("json", "msgpack"), ("msgpack", "json")])
async def test_redis_refuses_the_other_serializer(
    make_redis: Callable[..., RedisStorage], written: str, opened: str
) -> None:
    async with make_redis(written) as storage:
        await storage.store_system_state("s", 41)
    wrong = make_redis(opened)
    with pytest.raises(ConfigError, match=rf"serializer='{written}'.*opened with serializer='{opened}'"):
        await wrong.initialize()
    async with make_redis(written) as storage:
        assert await storage.load_system_state("s") == 41


async def test_redis_a_prefix_from_before_the_marker_is_json(make_redis: Callable[..., RedisStorage], raw: Any) -> None:
    async with make_redis() as storage:
        await storage.store_system_state("s", 41)
        marker = f"{storage._prefix}meta:serializer"
    await raw.delete(marker)  # as a prefix written before the marker existed
    with pytest.raises(ConfigError, match="serializer='json'"):
        await make_redis("msgpack").initialize()
    assert await raw.get(marker) == b"json"
    async with make_redis("msgpack", prefix="fresh:"):
        pass  # an empty prefix is claimed by its first opener


async def test_redis_msgpack_refuses_a_client_that_decodes_replies(
    make_redis: Callable[..., RedisStorage], redis_server: RedisServer
) -> None:
    client = redis.asyncio.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        with pytest.raises(ConfigError, match="decode_responses=True"):
            await make_redis("msgpack", client=client).initialize()
        async with make_redis("json", prefix="json:", client=client) as storage:
            await storage.store_system_state("s", [1])
            assert await storage.load_system_state("s") == [1]
    finally:
        await client.aclose()


async def test_redis_msgpack_stats_and_verify_match_json(make_redis: Callable[..., RedisStorage], raw: Any) -> None:
    found = {}
    for serializer in ("json", "msgpack"):
        async with make_redis(serializer, prefix=f"{serializer}:") as storage:
            await populate(storage)
            assert await storage.verify() == []
            stats = await storage.get_storage_stats()
            found[serializer] = {key: value for key, value in stats.items() if key != "total_bytes"}
            if serializer == "msgpack":
                await raw.set(storage.key_of(storage_kind("CHUNKS"), "conv_001"), b"\xc1")
                await raw.hset(storage.kv_key_of("sessions", "user:1"), "value", b"\x92")
                damaged = await storage.get_storage_stats()
                assert damaged["unreadable_count"] == 2
                locations = sorted(p.location for p in await storage.verify())
                assert len(locations) == 2 and any("chunks" in place for place in locations)
    assert found["msgpack"] == found["json"]


# ------------------------------------------------------------------ migration


async def test_json_to_msgpack_and_back_to_the_file_tree_is_byte_identical(
    tmp_path: Path, clock: FakeClock, make_redis: Callable[..., RedisStorage]
) -> None:
    original, copy = tmp_path / "original", tmp_path / "copy"
    chain: list[StorageInterface] = [
        sqlite_storage(tmp_path / "json.db", clock),
        sqlite_storage(tmp_path / "msgpack.db", clock, "msgpack"),
        make_redis("msgpack", prefix="m:"),
        make_redis("json", prefix="j:"),
    ]
    async with create_file_storage(original, clock=clock) as source:
        expected = await populate(source, clock)
        previous: StorageInterface = source
        for middle in chain:
            await middle.initialize()
            report = await migrate(previous, middle)
            assert report.as_dict() == {**expected, "skipped_expired": 0}
            previous = middle
        async with create_file_storage(copy, clock=clock) as destination:
            await migrate(previous, destination)
        for middle in chain:
            await middle.shutdown()
    assert tree(copy) == tree(original)
    assert len(tree(original)) > 60
