"""The message store per backend: file layout, damaged files and rows, watch, backups."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from connectome_storage import FileStorage, create_file_storage, create_redis_storage, create_sqlite_storage
from connectome_storage.errors import CorruptedDataError, InvalidKeyError
from connectome_storage.interface import Kind

from ..conftest import FakeClock
from .test_watch import Watcher, summary


@pytest.fixture
async def files(tmp_path: Path, clock: FakeClock) -> Any:
    storage = create_file_storage(tmp_path / "data", clock=clock)
    async with storage:
        yield storage


async def test_file_layout_is_one_pretty_file_per_message_and_a_sorted_read_array(files: FileStorage) -> None:
    bus = files.message_store()
    first = await bus.save({"id": "b/2", "from": "planner", "to": "coder", "text": "go"})
    await bus.save({"id": "a", "from": "coder", "to": "*"})
    await bus.mark_read("coder", ["b/2", "a", "zz"])
    root = files.base_dir
    assert sorted(p.name for p in (root / "messages").iterdir()) == ["a.json", "b%2F2.json"]
    assert (root / "messages" / "b%2F2.json").read_text() == (
        '{\n  "from": "planner",\n  "id": "b/2",\n  "text": "go",\n'
        '  "timestamp": "2026-11-21T09:30:00.000Z",\n  "to": "coder"\n}\n'
    )
    assert json.loads((root / "agents" / "coder" / "read_messages.json").read_text()) == ["a", "b/2", "zz"]
    assert first == "b/2"
    # An agent with read state only is not an agent of list_agents() (agents with chains).
    assert await files.list_agents() == [] and (await files.get_storage_stats())["agent_count"] == 0
    await files.store_reasoning_chain("coder", {"s": 1})
    assert await files.list_agents() == ["coder"]
    await files._delete(Kind.REASONING_CHAINS, "coder")  # the chains go, the read state stays
    assert await bus.get_unread_ids("coder") == set() and await files.list_agents() == []
    assert await files.verify() == []


async def test_file_damaged_message_and_read_state_are_named_and_the_rest_stays_readable(files: FileStorage) -> None:
    bus = files.message_store()
    good = await bus.save({"from": "a", "to": "b"})
    await bus.save({"id": "bad", "from": "a", "to": "b"})
    await bus.save({"id": "wrong-id", "from": "a", "to": "b"})
    await bus.mark_read("b", [good])
    await bus.mark_read("c", [good])
    messages, agents = files.base_dir / "messages", files.base_dir / "agents"
    (messages / "bad.json").write_text('{"from": "a", "to": ')
    (messages / "wrong-id.json").write_text('{"id": "other", "from": "a", "to": "b", "timestamp": "t"}\n')
    (agents / "c" / "read_messages.json").write_text('{"not": "a list"}\n')
    with pytest.raises(CorruptedDataError, match=r"bad\.json") as caught:
        await bus.get("bad")
    assert caught.value.line == 1
    with pytest.raises(CorruptedDataError, match="other"):
        await bus.get("wrong-id")
    with pytest.raises(CorruptedDataError):
        await bus.query()  # a query never skips a damaged message silently
    with pytest.raises(CorruptedDataError, match=r"read_messages\.json"):
        await bus.mark_read("c", ["x"])  # its ids would be lost: refused, file unchanged
    assert (agents / "c" / "read_messages.json").read_text() == '{"not": "a list"}\n'
    assert await bus.get(good) is not None
    with pytest.raises(CorruptedDataError):
        await bus.get_unread_ids("b")  # the file tree reads every message to find b's: none is skipped
    stats = await files.get_storage_stats()
    assert (stats["message_count"], stats["message_read_state_count"], stats["unreadable_count"]) == (1, 1, 3)
    located = sorted(p.location for p in await files.verify())
    assert located == sorted(str(p) for p in [messages / "bad.json", messages / "wrong-id.json",
                                              agents / "c" / "read_messages.json"])  # fmt: skip
    with pytest.raises(InvalidKeyError):
        await bus.save({"id": "bad", "from": "a", "to": "b"})  # a damaged file still holds its id


async def test_file_strays_in_messages_are_reported(files: FileStorage) -> None:
    (files.base_dir / "messages" / "notes.txt").write_text("hi")
    (files.base_dir / "agents" / "x").mkdir()
    (files.base_dir / "agents" / "x" / "other.json").write_text("[]")
    problems = {Path(p.location).name for p in await files.verify()}
    assert problems == {"notes.txt", "other.json"}


async def test_file_read_state_keeps_backups_and_restores(files: FileStorage) -> None:
    bus = files.message_store()
    await bus.mark_read("b", ["1"])
    await bus.mark_read("b", ["2"])
    versions = await files.list_backups("agents/b/read_messages.json")
    assert len(versions) == 1
    await files.restore_backup("agents/b/read_messages.json")
    assert await files._msg_read_ids("b") == ["1"]


async def test_watch_reports_message_and_read_state_files(files: FileStorage) -> None:
    watcher = await Watcher(files, debounce_ms=50).started()
    try:
        bus = files.message_store()
        await bus.save({"id": "m1", "from": "a", "to": "b"})
        await bus.mark_read("b", ["m1"])
        events = await watcher.take(2)
    finally:
        await watcher.close()
    assert summary(events) == {(Kind.MESSAGE, "m1", "added", True, True), (Kind.READ_STATE, "b", "added", True, True)}
    assert {e.kind_name for e in events} == {"message", "read_state"}


async def test_sqlite_damaged_row_is_named_and_counted(tmp_path: Path, clock: FakeClock) -> None:
    db = tmp_path / "m.db"
    async with create_sqlite_storage(db, clock=clock) as storage:
        bus = storage.message_store()
        good = await bus.save({"from": "a", "to": "b"})
        await bus.save({"id": "bad", "from": "a", "to": "b"})
        with sqlite3.connect(db) as conn:
            conn.execute("UPDATE messages SET data = '{oops' WHERE message_id = 'bad'")
        with pytest.raises(CorruptedDataError, match="table messages, message_id 'bad'"):
            await bus.get("bad")
        with pytest.raises(CorruptedDataError):
            await bus.query(to="b")
        assert await bus.get(good) is not None and await bus.get_unread_ids("b") == {good, "bad"}
        stats = await storage.get_storage_stats()
        assert (stats["message_count"], stats["unreadable_count"]) == (1, 1)
        assert [p.location for p in await storage.verify()] == [f"{db} (table messages, message_id 'bad')"]


async def test_sqlite_queries_use_the_indexes(tmp_path: Path) -> None:
    from connectome_storage.backends._sqlite_messages import select_sql
    from connectome_storage.messages import MessageSelect

    async with create_sqlite_storage(tmp_path / "m.db"):
        pass
    with sqlite3.connect(tmp_path / "m.db") as conn:
        for select, index in [(MessageSelect(from_="a", limit=5), "messages_sender"),
                              (MessageSelect(limit=5), "messages_order")]:  # fmt: skip
            sql, params = select_sql(select)
            plan = " ".join(row[-1] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params))
            assert index in plan and "TEMP B-TREE" not in plan, plan


async def test_redis_damaged_field_is_named_and_indexes_narrow_queries(redis_server: Any, clock: FakeClock) -> None:
    prefix = "msgtest:"
    async with create_redis_storage(redis_server.url, key_prefix=prefix, clock=clock) as storage:
        await storage.client.flushdb()
        bus = storage.message_store()
        good = await bus.save({"from": "a", "to": "b"})
        await bus.save({"id": "bad", "from": "a", "to": "c"})
        await storage.client.hset(f"{prefix}msg:{{m}}:all", "bad", b"{oops")
        with pytest.raises(CorruptedDataError, match="bad"):
            await bus.get("bad")
        # A query for b reads only what b's sets name: the damaged message to c is not read.
        assert [m["id"] for m in await bus.query(to="b")] == [good]
        with pytest.raises(CorruptedDataError):
            await bus.query(to="c")
        stats = await storage.get_storage_stats()
        assert (stats["message_count"], stats["unreadable_count"]) == (1, 1)
        assert [p.location for p in await storage.verify()] == [f"{prefix}msg:{{m}}:all field 'bad'"]
        keys = sorted(k.decode() for k in await storage.client.keys(f"{prefix}msg:*"))
        assert keys == sorted(f"{prefix}msg:{{m}}:{name}" for name in
                              ["all", "agents", "to:b", "to:c", "from:a"])  # fmt: skip
        await storage.client.flushdb()


async def test_memory_saves_of_one_id_race_to_one_winner(tmp_path: Path) -> None:
    from connectome_storage import MemoryStorage

    async with MemoryStorage() as storage:
        bus = storage.message_store()
        results = await asyncio.gather(
            *(bus.save({"id": "same", "from": f"w{n}", "to": "x"}) for n in range(10)), return_exceptions=True
        )
    assert sum(r == "same" for r in results) == 1
    assert sum(isinstance(r, InvalidKeyError) for r in results) == 9
