"""Transactions on SqliteStorage (docs/sqlite.md, "Transactions"): one BEGIN IMMEDIATE held
for the block, every op applied in one step at its end, all or nothing.

Real database files; a failing commit fails for real inside SQLite (a trigger that refuses
a row, a value over the connection's length limit), and other writers are real other
connections or other coroutines of the same storage.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from connectome_storage import SqliteStorage, StorageInterface, create_sqlite_storage
from connectome_storage.errors import LockTimeoutError, StorageIOError, TransactionError, ValueTooLargeError

from .sqlite_fixtures import db_fixture, raw  # noqa: F401


async def five_writes(tx: StorageInterface, round_number: int, *, state: Any = None) -> None:
    """A turn of an agent: document, log append, memory, system state, kv entry."""
    await tx.store_conversation("doc", {"round": round_number})
    await tx.append_raw_messages("doc", [{"round": round_number}])
    await tx.store_memory("doc", "m", {"round": round_number})
    await tx.store_system_state("round", {"round": round_number} if state is None else state)
    await tx.kv("turns").set("last", {"round": round_number})


def counts(db: Path) -> dict[str, int]:
    with raw(db) as conn:
        return {
            table: conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
            for table in ("conversations", "raw_messages", "memories", "system_state", "kv")
        }


NOTHING = dict.fromkeys(("conversations", "raw_messages", "memories", "system_state", "kv"), 0)


# ----------------------------------------------------- a commit that cannot complete


async def test_a_commit_refused_by_sqlite_midway_applies_nothing(db: Path) -> None:
    async with create_sqlite_storage(db) as storage:
        # The kv entry is the last op: every other op's statements have run in the
        # transaction when SQLite refuses its row.
        with raw(db) as conn:
            conn.execute("CREATE TRIGGER refuse BEFORE INSERT ON kv BEGIN SELECT RAISE(ABORT, 'refused'); END")
        with pytest.raises(TransactionError, match="nothing of it was applied") as failure:
            async with storage.transaction() as tx:
                await five_writes(tx, 0)
        assert isinstance(failure.value.__cause__, StorageIOError)
        assert "refused" in str(failure.value)
        assert counts(db) == NOTHING
        assert await storage.load_raw_messages("doc") == []
        # The storage goes on: the lock was released, the next transaction commits.
        with raw(db) as conn:
            conn.execute("DROP TRIGGER refuse")
        async with storage.transaction() as tx:
            await five_writes(tx, 1)
    async with create_sqlite_storage(db) as fresh:
        assert await fresh.load_raw_messages("doc") == [{"round": 1}]
        assert await fresh.kv("turns").get("last") == {"round": 1}


async def test_a_value_over_the_engine_limit_fails_the_commit_and_applies_nothing(db: Path) -> None:
    async with create_sqlite_storage(db) as storage:
        await storage.store_system_state("round", {"round": -1})
        assert isinstance(storage, SqliteStorage)
        # SQLite's own length limit, lowered on this connection (on its thread): the fourth
        # op's value is over it.
        await storage._hop(lambda conn: conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 1000))
        with pytest.raises(TransactionError) as failure:
            async with storage.transaction() as tx:
                await five_writes(tx, 0, state={"pad": "x" * 2000})
        assert isinstance(failure.value.__cause__, ValueTooLargeError)
        assert counts(db) == {**NOTHING, "system_state": 1}
        assert await storage.load_system_state("round") == {"round": -1}


async def test_an_exception_in_the_block_releases_the_write_lock(db: Path) -> None:
    async with create_sqlite_storage(db) as storage, create_sqlite_storage(db, connection_timeout=0.5) as other:
        with pytest.raises(RuntimeError):
            async with storage.transaction() as tx:
                await five_writes(tx, 0)
                raise RuntimeError("abort")
        await other.store_system_state("after", 1)  # would time out if the lock were still held
        assert counts(db) == {**NOTHING, "system_state": 1}


async def test_a_cancelled_block_rolls_back_and_releases_the_lock(db: Path) -> None:
    async with create_sqlite_storage(db) as storage, create_sqlite_storage(db, connection_timeout=0.5) as other:
        inside = asyncio.Event()

        async def turn() -> None:
            async with storage.transaction() as tx:
                await five_writes(tx, 0)
                inside.set()
                await asyncio.Event().wait()  # never set: cancelled here

        task = asyncio.create_task(turn())
        await inside.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await other.store_system_state("after", 1)
        await storage.store_system_state("again", 2)
        assert counts(db) == {**NOTHING, "system_state": 2}


# ------------------------------------------------------------------ other writers


async def test_a_writer_on_another_connection_waits_then_times_out(db: Path) -> None:
    async with create_sqlite_storage(db) as storage, create_sqlite_storage(db, connection_timeout=0.2) as other:
        async with storage.transaction() as tx:
            await tx.store_system_state("s", "tx")
            with pytest.raises(LockTimeoutError, match="connection_timeout"):
                await other.store_system_state("s", "other")
        assert await other.load_system_state("s") == "tx"


async def test_a_writer_of_this_storage_in_another_task_waits_for_the_commit(db: Path) -> None:
    async with create_sqlite_storage(db) as storage:
        await storage.store_system_state("counter", 10)
        async with storage.transaction() as tx:
            value = await tx.load_system_state("counter")
            writer = asyncio.create_task(storage.store_system_state("counter", 100))
            for _ in range(20):  # many turns of the loop: a writer that did not wait is done by now
                await asyncio.sleep(0)
            assert not writer.done()
            await tx.store_system_state("counter", value + 1)
        await writer
        assert await storage.load_system_state("counter") == 100


async def test_a_writer_of_this_storage_times_out_at_the_gate(db: Path) -> None:
    async with create_sqlite_storage(db, connection_timeout=0.2) as storage:
        async with storage.transaction() as tx:
            await tx.store_system_state("s", "tx")
            with pytest.raises(LockTimeoutError, match="transaction of this storage"):
                await asyncio.create_task(storage.store_system_state("s", "other"))
        assert await storage.load_system_state("s") == "tx"


async def test_writing_to_the_storage_itself_inside_its_own_transaction_is_refused(db: Path) -> None:
    async with create_sqlite_storage(db) as storage:
        async with storage.transaction() as tx:
            await tx.store_system_state("s", "tx")
            with pytest.raises(TransactionError, match="write through the transaction"):
                await storage.store_system_state("s", "direct")
        assert await storage.load_system_state("s") == "tx"


async def test_concurrent_read_modify_write_transactions_lose_no_update(db: Path) -> None:
    """Two storages (two connections), three tasks each: every increment survives, none deadlocks."""
    async with create_sqlite_storage(db) as first, create_sqlite_storage(db) as second:
        await first.kv("counters").set("n", 0)

        async def increment(storage: StorageInterface, times: int) -> None:
            for _ in range(times):
                async with storage.transaction() as tx:
                    value = await tx.kv("counters").get("n")
                    await asyncio.sleep(0)  # let the others try to slip in between the read and the write
                    await tx.kv("counters").set("n", value + 1)

        await asyncio.gather(*(increment(s, 10) for s in (first, second) for _ in range(3)))
        assert await first.kv("counters").get("n") == 60


# ----------------------------------------------------------------------- readers


async def test_readers_do_not_wait_for_an_open_transaction_and_see_none_of_it(db: Path) -> None:
    async with create_sqlite_storage(db) as storage, create_sqlite_storage(db, connection_timeout=0.2) as other:
        await storage.store_system_state("round", {"round": -1})
        async with storage.transaction() as tx:
            await five_writes(tx, 0)
            # Another connection, and another task of this storage: both read at once.
            assert await other.load_system_state("round") == {"round": -1}
            assert await asyncio.create_task(storage.load_system_state("round")) == {"round": -1}
            assert await other.get_storage_stats()
            assert await storage.get_storage_stats()
        assert await other.load_raw_messages("doc") == [{"round": 0}]


async def test_a_reader_on_another_connection_sees_every_part_of_a_commit_or_none(db: Path) -> None:
    """A plain sqlite3 reader in a thread reads the five parts in one read transaction
    while transactions commit: they always agree (and at least one commit is seen)."""
    async with create_sqlite_storage(db) as storage:
        async with storage.transaction() as tx:
            await five_writes(tx, 0)
        stop = threading.Event()
        seen: list[tuple[Any, ...]] = []

        def read() -> None:
            with raw(db) as conn:
                while not stop.is_set():
                    conn.execute("BEGIN")
                    parts = (
                        conn.execute("SELECT json_extract(data, '$.round') FROM system_state").fetchone()[0],
                        conn.execute("SELECT json_extract(document, '$.round') FROM conversations").fetchone()[0],
                        conn.execute("SELECT json_extract(data, '$.round') FROM memories").fetchone()[0],
                        conn.execute("SELECT MAX(json_extract(data, '$.round')) FROM raw_messages").fetchone()[0],
                        conn.execute("SELECT json_extract(value, '$.round') FROM kv").fetchone()[0],
                    )
                    conn.execute("COMMIT")
                    seen.append(parts)

        reader = threading.Thread(target=read)
        reader.start()
        try:
            for round_number in range(1, 60):
                async with storage.transaction() as tx:
                    await five_writes(tx, round_number)
        finally:
            stop.set()
            await asyncio.to_thread(reader.join)
        assert seen
        torn = [parts for parts in seen if len(set(parts)) != 1]
        assert torn == []
