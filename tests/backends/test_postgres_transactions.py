"""Transactions on PostgresStorage (docs/postgres.md, "Transactions"): one pooled connection
per transaction holding session-level advisory locks (the schema's transaction key, then
each entity it touches), its reads on that connection, every op run between BEGIN and
COMMIT at the end of the block, all or nothing.

A real server (the session's ``postgres_server``), a schema per test; a failing commit
fails for real inside PostgreSQL (a trigger that refuses a row), other writers are real
other storages (other pools) or other tasks, and what the server holds (advisory locks,
sessions idle in a transaction) is read from ``pg_locks`` and ``pg_stat_activity``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from connectome_storage import StorageInterface, create_postgres_storage
from connectome_storage.backends.postgres import PostgresStorage
from connectome_storage.errors import BackendUnavailableError, LockTimeoutError, StorageIOError, TransactionError

from ..postgres_server import PostgresServer
from .postgres_fixtures import raw_fixture, schema_fixture  # noqa: F401

TABLES = ("conversations", "raw_messages", "memories", "system_state", "kv")
NOTHING = dict.fromkeys(TABLES, 0)


@pytest.fixture
def server(postgres_server: PostgresServer) -> PostgresServer:
    return postgres_server


def make(server: PostgresServer, schema: str, **options: Any) -> PostgresStorage:
    storage = create_postgres_storage(server.dsn, schema=schema, **options)
    assert isinstance(storage, PostgresStorage)
    return storage


async def five_writes(tx: StorageInterface, round_number: int, *, state: Any = None) -> None:
    """A turn of an agent: document, log append, memory, system state, kv entry."""
    await tx.store_conversation("doc", {"round": round_number})
    await tx.append_raw_messages("doc", [{"round": round_number}])
    await tx.store_memory("doc", "m", {"round": round_number})
    await tx.store_system_state("round", {"round": round_number} if state is None else state)
    await tx.kv("turns").set("last", {"round": round_number})


async def counts(raw: Any) -> dict[str, int]:
    return {table: await raw.fetchval(f"SELECT count(*) FROM {table}") for table in TABLES}


async def held_elsewhere(raw: Any) -> dict[str, int]:
    """Advisory locks held, and sessions idle inside a transaction, by every other connection."""
    locks = await raw.fetchval(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid()"
    )
    idle = await raw.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%' AND pid <> pg_backend_pid()"
    )
    return {"advisory locks": locks, "idle in transaction": idle}


async def settled(raw: Any) -> dict[str, int]:
    """``held_elsewhere`` once a terminated session had time to end (the server ends it on its own)."""
    for _ in range(200):
        held = await held_elsewhere(raw)
        if held == {"advisory locks": 0, "idle in transaction": 0}:
            break
        await asyncio.sleep(0.01)
    return held


CLEAN = {"advisory locks": 0, "idle in transaction": 0}


# ----------------------------------------------------- a commit that cannot complete


async def test_a_commit_refused_by_the_server_midway_applies_nothing(
    server: PostgresServer, schema: str, raw: Any
) -> None:
    async with make(server, schema) as storage, make(server, schema, connection_timeout=0.5) as other:
        # The kv entry is the last op: every other op's statements have run in the
        # transaction when the server refuses its row.
        await raw.execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$"
        )
        await raw.execute("CREATE TRIGGER refuse BEFORE INSERT ON kv FOR EACH ROW EXECUTE FUNCTION refuse()")
        with pytest.raises(TransactionError, match="nothing of it was applied") as failure:
            async with storage.transaction() as tx:
                await five_writes(tx, 0)
        assert isinstance(failure.value.__cause__, StorageIOError)
        assert "refused" in str(failure.value)
        assert await counts(raw) == NOTHING
        assert await settled(raw) == CLEAN
        # Nothing stays locked: another storage writes the touched entities at once.
        await other.store_system_state("round", {"round": "other"})
        await raw.execute("DROP TRIGGER refuse ON kv")
        async with storage.transaction() as tx:
            await five_writes(tx, 1)
    async with make(server, schema) as fresh:
        assert await fresh.load_raw_messages("doc") == [{"round": 1}]
        assert await fresh.kv("turns").get("last") == {"round": 1}
        assert await fresh.load_system_state("round") == {"round": 1}


async def test_an_exception_in_the_block_lets_every_lock_go(server: PostgresServer, schema: str, raw: Any) -> None:
    async with make(server, schema) as storage, make(server, schema, connection_timeout=0.5) as other:
        with pytest.raises(RuntimeError):
            async with storage.transaction() as tx:
                await five_writes(tx, 0)
                assert (await held_elsewhere(raw))["advisory locks"] == 4  # the schema's key, 3 entities
                raise RuntimeError("abort")
        assert await held_elsewhere(raw) == CLEAN
        await other.store_system_state("round", 1)  # would time out if the lock were still held
        async with other.transaction() as tx:  # so would the schema's transaction key
            await tx.store_system_state("after", 2)
        assert await counts(raw) == {**NOTHING, "system_state": 2}


async def test_a_cancelled_block_rolls_back_and_lets_every_lock_go(
    server: PostgresServer, schema: str, raw: Any
) -> None:
    async with make(server, schema) as storage, make(server, schema, connection_timeout=0.5) as other:
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
        assert await settled(raw) == CLEAN
        await other.store_system_state("round", 1)
        async with storage.transaction() as tx:
            await tx.store_system_state("again", 2)
        assert await counts(raw) == {**NOTHING, "system_state": 2}


async def test_a_commit_cancelled_midway_applies_nothing_and_holds_nothing(
    server: PostgresServer, schema: str, raw: Any
) -> None:
    """The commit is cancelled while the server runs one of its statements (a trigger that
    sleeps): the connection is dropped, the server rolls back and lets the locks go."""
    async with make(server, schema) as storage, make(server, schema, connection_timeout=2) as other:
        await raw.execute(
            "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN PERFORM pg_sleep(30); RETURN NEW; END $$"
        )
        await raw.execute("CREATE TRIGGER slow BEFORE INSERT ON kv FOR EACH ROW EXECUTE FUNCTION slow()")

        async def turn() -> None:
            async with storage.transaction() as tx:
                await five_writes(tx, 0)

        task = asyncio.create_task(turn())
        for _ in range(1000):  # until the commit sits in the trigger's sleep
            if await raw.fetchval("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'"):
                break
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The server stopped the statement (asyncpg's cancel request reached it), rolled back
        # and let the locks go; a connection merely closed would leave it sleeping, locks held.
        assert await settled(raw) == CLEAN
        await raw.execute("DROP TRIGGER slow ON kv")
        assert await counts(raw) == NOTHING
        await other.store_system_state("round", 1)
        async with storage.transaction() as tx:
            await five_writes(tx, 1)
        assert await storage.load_raw_messages("doc") == [{"round": 1}]


async def test_a_touch_cancelled_while_it_waits_holds_nothing(server: PostgresServer, schema: str, raw: Any) -> None:
    async with make(server, schema) as storage:
        # Another session holds the entity's key shared, as a plain write in progress does.
        key = storage._lock_key("system", "s")
        await raw.execute("SELECT pg_advisory_lock_shared($1)", key)
        waiting = asyncio.Event()

        async def turn() -> None:
            async with storage.transaction() as tx:
                waiting.set()
                await tx.store_system_state("s", "tx")  # waits for the key

        task = asyncio.create_task(turn())
        await waiting.wait()
        await asyncio.sleep(0.1)
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await raw.execute("SELECT pg_advisory_unlock_shared($1)", key)
        assert await settled(raw) == CLEAN
        async with storage.transaction() as tx:
            await tx.store_system_state("s", "later")
        assert await storage.load_system_state("s") == "later"


# ------------------------------------------------------------------ other writers


async def test_a_writer_on_another_storage_waits_then_times_out(server: PostgresServer, schema: str) -> None:
    async with make(server, schema) as storage, make(server, schema, connection_timeout=0.2) as other:
        async with storage.transaction() as tx:
            await tx.store_system_state("s", "tx")
            with pytest.raises(LockTimeoutError, match="connection_timeout"):
                await other.store_system_state("s", "other")
            await other.store_system_state("untouched", 1)  # an entity it did not touch: at once
        assert await other.load_system_state("s") == "tx"


async def test_a_writer_of_this_storage_in_another_task_waits_for_the_commit(
    server: PostgresServer, schema: str
) -> None:
    async with make(server, schema) as storage:
        await storage.store_system_state("counter", 10)
        async with storage.transaction() as tx:
            value = await tx.load_system_state("counter")
            writer = asyncio.create_task(storage.store_system_state("counter", 100))
            await asyncio.sleep(0.2)  # a writer that did not wait is done by now
            assert not writer.done()
            await tx.store_system_state("counter", value + 1)
        await writer
        assert await storage.load_system_state("counter") == 100


async def test_writing_to_the_storage_itself_inside_its_own_transaction_is_refused(
    server: PostgresServer, schema: str
) -> None:
    async with make(server, schema, connection_timeout=5) as storage:
        async with storage.transaction() as tx:
            await tx.store_system_state("s", "tx")
            with pytest.raises(TransactionError, match="write through the transaction"):
                await storage.store_system_state("s", "direct")
            # Several entities at once would wait for the transaction too (its schema key).
            with pytest.raises(TransactionError, match="write through the transaction"):
                await storage.kv("k").set_many({"a": 1, "b": 2})
            await storage.store_system_state("untouched", "direct")  # waits for nothing: allowed
        assert await storage.load_system_state("s") == "tx"
        assert await storage.kv("k").get_many(["a", "b"]) == {}


async def test_a_second_transaction_waits_for_the_first_then_times_out(server: PostgresServer, schema: str) -> None:
    async with make(server, schema) as storage, make(server, schema, connection_timeout=0.2) as other:
        async with storage.transaction() as tx:
            await tx.store_system_state("s", "first")
            with pytest.raises(LockTimeoutError, match="another transaction on this schema"):
                async with other.transaction():
                    pass
        assert await other.load_system_state("s") == "first"


async def test_a_second_transaction_of_one_storage_waits_at_its_gate(server: PostgresServer, schema: str) -> None:
    """In one storage the second transaction waits before it takes a connection."""
    async with make(server, schema, connection_timeout=0.2, pool_size=2) as storage:
        go = asyncio.Event()

        async def second() -> None:
            await go.wait()
            async with storage.transaction() as tx:
                await tx.store_system_state("s", "second")

        waiting = asyncio.create_task(second())  # not inside the block: a task of its own
        async with storage.transaction() as tx:
            await tx.store_system_state("s", "first")
            go.set()
            await asyncio.sleep(0.05)
            assert storage.pool.get_size() - storage.pool.get_idle_size() == 1  # the first one's only
            with pytest.raises(LockTimeoutError, match="another transaction of this storage"):
                await waiting
        assert await storage.load_system_state("s") == "first"


async def test_concurrent_read_modify_write_transactions_lose_no_update(server: PostgresServer, schema: str) -> None:
    """Two storages (two pools), three tasks each: every increment survives, none deadlocks."""
    async with make(server, schema) as first, make(server, schema) as second:
        await first.kv("counters").set("n", 0)

        async def increment(storage: StorageInterface, times: int) -> None:
            for _ in range(times):
                async with storage.transaction() as tx:
                    value = await tx.kv("counters").get("n")
                    await asyncio.sleep(0)  # let the others try to slip in between the read and the write
                    await tx.kv("counters").set("n", value + 1)

        await asyncio.gather(*(increment(s, 10) for s in (first, second) for _ in range(3)))
        assert await first.kv("counters").get("n") == 60


@pytest.mark.parametrize("write", ["set_many", "clear"])
async def test_a_write_of_several_entities_never_deadlocks_with_a_transaction(
    server: PostgresServer, schema: str, write: str
) -> None:
    """The transaction locks "a" and "b" in the order opposite to their keys' order, and a
    plain write of both (``set_many``, or ``clear``, which locks every key it removes)
    starts in between. Taking the entities' keys alone, the write would hold the first
    key while waiting for the second, and the transaction would wait for the first: a
    deadlock, which the server breaks by failing one of them. Writes of several entities
    take the schema's transaction key first, so the write waits for the whole transaction
    instead, and both succeed."""
    async with make(server, schema) as storage, make(server, schema) as other:
        kv = storage.kv("k")
        await kv.set_many({"a": 0, "b": 0})
        first, second = sorted("ab", key=lambda k: storage._lock_key("kv", "k", k), reverse=True)
        async with storage.transaction() as tx:
            one = await tx.kv("k").get(first)
            if write == "set_many":
                writer = asyncio.create_task(other.kv("k").set_many({"a": 100, "b": 100}))
            else:
                writer = asyncio.create_task(other.kv("k").clear())
            await asyncio.sleep(0.2)  # the writer is waiting now (for the transaction)
            two = await tx.kv("k").get(second)
            await tx.kv("k").set_many({first: one + 1, second: two + 1})
        await writer  # it waited for the commit, then wrote
        expected = {"a": 100, "b": 100} if write == "set_many" else {}
        assert await kv.get_many(["a", "b"]) == expected


# ----------------------------------------------------------------------- readers


async def test_readers_do_not_wait_for_an_open_transaction_and_see_none_of_it(
    server: PostgresServer, schema: str
) -> None:
    async with make(server, schema) as storage, make(server, schema, connection_timeout=0.2) as other:
        await storage.store_system_state("round", {"round": -1})
        async with storage.transaction() as tx:
            await five_writes(tx, 0)
            assert await other.load_system_state("round") == {"round": -1}
            assert await asyncio.create_task(storage.load_system_state("round")) == {"round": -1}
            assert await other.get_storage_stats()
        assert await other.load_raw_messages("doc") == [{"round": 0}]


async def test_the_transactions_reads_need_no_second_connection(server: PostgresServer, schema: str) -> None:
    """pool_size=2: the transaction holds one connection, a writer waiting for its entity
    holds the other. The transaction's reads run on its own connection, so it goes on and
    commits (on the pool they would wait for a connection that is never given back)."""
    async with make(server, schema, pool_size=2, connection_timeout=3) as storage:
        await storage.store_system_state("other", "before")
        async with storage.transaction() as tx:
            await tx.store_system_state("s", "tx")
            writer = asyncio.create_task(storage.store_system_state("s", "writer"))
            await asyncio.sleep(0.2)
            assert not writer.done()
            assert await tx.load_system_state("other") == "before"
            assert await tx.load_conversation("nothing") is None
        await writer
        assert await storage.load_system_state("s") == "writer"


# -------------------------------------------------------------- a lost connection


async def test_a_transaction_whose_connection_is_lost_applies_nothing(
    server: PostgresServer, schema: str, raw: Any
) -> None:
    """The server ends the transaction's session in the middle of the block (its locks go
    with it): its next read raises BackendUnavailableError, nothing is applied, and the
    storage goes on with a new connection."""
    async with make(server, schema) as storage:
        with pytest.raises(BackendUnavailableError, match="nothing of it was applied"):
            async with storage.transaction() as tx:
                await tx.store_system_state("s", "tx")
                pid = tx._state.conn.get_server_pid()
                assert await raw.fetchval("SELECT pg_terminate_backend($1)", pid)
                await asyncio.sleep(0.1)
                await tx.load_system_state("other")
        assert await counts(raw) == NOTHING
        assert await settled(raw) == CLEAN
        async with storage.transaction() as tx:
            await tx.store_system_state("s", "again")
        assert await storage.load_system_state("s") == "again"


async def test_a_connection_lost_before_the_commit_fails_it_and_applies_nothing(
    server: PostgresServer, schema: str, raw: Any
) -> None:
    async with make(server, schema) as storage:
        with pytest.raises(TransactionError, match="nothing of it was applied"):
            async with storage.transaction() as tx:
                await five_writes(tx, 0)
                assert await raw.fetchval("SELECT pg_terminate_backend($1)", tx._state.conn.get_server_pid())
                await asyncio.sleep(0.1)
        assert await counts(raw) == NOTHING
        assert await storage.load_system_state("round") is None
