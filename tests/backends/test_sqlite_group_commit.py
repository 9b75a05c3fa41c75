"""Group commit on SqliteStorage (docs/sqlite.md, "Concurrency"): writes that queue up while
the connection's thread is busy commit together in one transaction, a SAVEPOINT each, and
each caller gets its own result or exception.

The connection's thread is held for real (a function that waits on an event, queued on it
like any operation), so the writes issued meanwhile queue up exactly as they do behind a
commit's fsync; the statements SQLite runs are read back with the connection's trace
callback. Failures are real SQLite failures: a trigger that refuses a row, a value over
the connection's length limit, a deferred foreign key that fails at COMMIT.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from connectome_storage import SqliteStorage, create_sqlite_storage
from connectome_storage.errors import CorruptedDataError, StorageError, StorageIOError, ValueTooLargeError

from .sqlite_fixtures import db_fixture, raw  # noqa: F401


@asynccontextmanager
async def opened(db: Path) -> AsyncIterator[tuple[SqliteStorage, list[str]]]:
    """The storage, and the statements its connection runs from now on."""
    async with SqliteStorage({"db_path": str(db)}) as storage:
        statements: list[str] = []
        await storage._hop(lambda conn: conn.set_trace_callback(statements.append))
        yield storage, statements


async def queued_together(storage: SqliteStorage, calls: Sequence[Awaitable[Any]]) -> list[Any]:
    """Run ``calls`` while the connection's thread is held, so that they all queue up
    before any of them runs; each call's result or exception, in order."""
    started, release = threading.Event(), threading.Event()

    def hold(conn: sqlite3.Connection) -> None:
        started.set()
        release.wait(30)

    holder = asyncio.ensure_future(storage._hop(hold))
    assert await asyncio.to_thread(started.wait, 30)
    tasks = [asyncio.ensure_future(call) for call in calls]
    while len(storage._group) < len(tasks):  # every call reached the queue
        await asyncio.sleep(0)
    release.set()
    await holder
    return list(await asyncio.gather(*tasks, return_exceptions=True))


def transactions(statements: list[str]) -> int:
    return sum(1 for s in statements if s.startswith("BEGIN IMMEDIATE"))


async def test_writes_that_queue_up_commit_in_one_transaction(db: Path) -> None:
    async with opened(db) as (storage, statements):
        calls = [storage.append_raw_messages(f"c{i}", [{"n": i}, {"n": i + 1}]) for i in range(8)]
        calls.append(storage.store_conversation("doc", {"d": 1}))
        calls.append(storage.append_raw_messages("c0", [{"n": 99}]))  # the same conversation again, after
        statements.clear()
        results = await queued_together(storage, calls)
        assert results == [2] * 8 + [True, 3]
        assert transactions(statements) == 1 and statements.count("COMMIT") == 1
        assert sum(1 for s in statements if s.startswith("SAVEPOINT")) == len(calls)
        assert await storage.load_raw_messages("c0") == [{"n": 0}, {"n": 1}, {"n": 99}]
        assert await storage.load_conversation("doc") == {"d": 1}

        statements.clear()  # a lone write runs at once, alone, as it always did: no savepoint
        assert await storage.append_raw_messages("c1", [{"n": 5}]) == 3
        assert transactions(statements) == 1 and not any(s.startswith("SAVEPOINT") for s in statements)


async def test_one_failing_write_fails_alone_and_the_others_of_its_group_commit(db: Path) -> None:
    async with create_sqlite_storage(db) as storage:
        await storage.append_raw_messages("damaged", [{"n": 0}])
    with raw(db) as conn:  # a damaged row, and a hand-added rule that refuses one conversation's messages
        conn.execute("UPDATE raw_messages SET data = 'not json' WHERE conversation_id = 'damaged'")
        conn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON raw_messages WHEN NEW.conversation_id = 'bad' "
            "BEGIN SELECT RAISE(ABORT, 'refused by hand'); END"
        )
    async with opened(db) as (storage, statements):
        await storage._hop(lambda conn: conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 1000))
        statements.clear()
        results = await queued_together(
            storage,
            [
                storage.append_raw_messages("a", [{"n": 1}]),
                storage.append_raw_messages("bad", [{"n": 2}]),
                storage.append_raw_messages("b", [{"n": 3}]),
                storage.store_conversation("big", {"text": "x" * 2000}),
                storage.append_raw_messages("a", [{"n": 4}]),
                storage.pop_raw_message("damaged"),  # reads the damaged row: refused, nothing deleted
                storage.append_raw_messages("damaged", [{"n": 1}]),
            ],
        )
        assert results[0] == 1 and results[2] == 1 and results[4] == 2 and results[6] == 2
        assert isinstance(results[5], CorruptedDataError) and "seq 0" in str(results[5])
        assert isinstance(results[1], StorageIOError) and "refused by hand" in str(results[1])
        assert isinstance(results[3], ValueTooLargeError)
        assert isinstance(results[1].__cause__, sqlite3.Error)
        assert transactions(statements) == 1 and statements.count("COMMIT") == 1
        assert await storage.load_raw_messages("a") == [{"n": 1}, {"n": 4}]
        assert await storage.load_raw_messages("b") == [{"n": 3}]
        # Each failed write left nothing, not even the conversation row its first statement made.
        assert sorted(await storage.list_conversations()) == ["a", "b", "damaged"]
        with raw(db) as conn:
            rows = conn.execute("SELECT seq, data FROM raw_messages WHERE conversation_id = 'damaged' ORDER BY seq")
            assert rows.fetchall() == [(0, "not json"), (1, '{"n":1}')]


async def test_a_group_whose_commit_fails_runs_each_write_alone(db: Path) -> None:
    async with create_sqlite_storage(db):
        pass
    with raw(db) as conn:  # a row that breaks a deferred foreign key: only COMMIT notices
        conn.execute(
            "CREATE TABLE guard (ref TEXT REFERENCES conversations (conversation_id) DEFERRABLE INITIALLY DEFERRED)"
        )
        conn.execute(
            "CREATE TRIGGER late AFTER INSERT ON raw_messages WHEN NEW.conversation_id = 'late' "
            "BEGIN INSERT INTO guard VALUES ('nowhere'); END"
        )
    async with opened(db) as (storage, statements):
        statements.clear()
        names = ["a", "late", "b", "c"]
        results = await queued_together(storage, [storage.append_raw_messages(n, [{"n": n}]) for n in names])
        assert results[0] == results[2] == results[3] == 1
        assert isinstance(results[1], StorageError) and "FOREIGN KEY" in str(results[1])
        # The group's transaction, then one per write.
        assert transactions(statements) == 1 + len(names)
        assert sorted(await storage.list_conversations()) == ["a", "b", "c"]
        assert [await storage.load_raw_messages(n) for n in ("a", "b", "c")] == [
            [{"n": "a"}],
            [{"n": "b"}],
            [{"n": "c"}],
        ]


async def test_counts_and_expiry_stay_exact_inside_a_group(db: Path) -> None:
    async with opened(db) as (storage, _statements):
        store = storage.conversation_store()
        await store.save("kept", [{"n": 0}], metadata={"k": 1})
        await store.save("gone", [{"n": 0}, {"n": 1}], ttl=0.001, metadata={"k": 2})
        await asyncio.sleep(0.01)  # "gone" has expired: a write to it starts a new conversation
        calls: list[Awaitable[Any]] = []
        for i in range(5):
            calls.append(storage.append_raw_messages("kept", [{"n": i + 1}]))
            calls.append(storage.append_raw_messages("gone", [{"n": i}]))
        calls.append(storage.store_chunks("chunks", [{"c": 1}, {"c": 2}]))
        results = await queued_together(storage, calls)
        assert results[:10:2] == [2, 3, 4, 5, 6] and results[1:10:2] == [1, 2, 3, 4, 5]
        kept = await store.load("kept")
        assert kept is not None and kept.metadata.message_count == 6 == len(kept.messages)
        gone = await store.load("gone")  # a new conversation: the expired one's metadata went with it
        assert gone is not None and gone.messages == [{"n": i} for i in range(5)]
        assert (gone.metadata.created_at, gone.metadata.metadata) == (None, {})
        stats = await storage.get_storage_stats()
        assert (stats["conversation_count"], stats["raw_message_count"], stats["chunk_count"]) == (3, 11, 2)
        assert stats["unreadable_count"] == 0


async def test_a_transaction_waits_for_a_queued_group_and_writes_wait_for_it(db: Path) -> None:
    async with opened(db) as (storage, _statements):
        order: list[str] = []

        async def block() -> None:
            async with storage.transaction() as tx:
                order.append(f"block sees {len(await tx.load_raw_messages('c'))}")
                await tx.append_raw_messages("c", [{"n": "tx"}])

        async def later() -> None:
            await asyncio.sleep(0)
            await storage.append_raw_messages("c", [{"n": "after"}])

        results = await queued_together(storage, [storage.append_raw_messages("c", [{"n": i}]) for i in range(3)])
        assert results == [1, 2, 3]
        await asyncio.gather(block(), later())
        assert order == ["block sees 3"]
        assert [m["n"] for m in await storage.load_raw_messages("c")] == [0, 1, 2, "tx", "after"]
