"""SQLite statistics from kept counts (schema version 6) and point reads on the loop's thread.

The kept counts (``suspects``, ``counters``, their triggers) must give exactly what a full
recount gives: the recount here is the statistics' previous implementation, one pass of
``json_valid`` over every row. The reader connection must never make a read wait for
another process, never miss a commit, and step aside whenever it cannot read.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import closing, contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest

from connectome_storage import SqliteStorage, create_sqlite_storage
from connectome_storage.backends._sqlite_schema import APPLICATION_ID, MIGRATIONS
from connectome_storage.errors import CorruptedDataError, LockTimeoutError
from connectome_storage.testing import START, FakeClock

ROOT = Path(__file__).resolve().parents[2]

# ----------------------------------------------------------------- the recount

_OBJECT_ROWS = """SELECT COALESCE(SUM(ok), 0), COALESCE(SUM(1 - ok), 0) FROM (SELECT CASE
    WHEN json_valid(data) AND json_type(data) = 'object' THEN 1 ELSE 0 END AS ok FROM {table}{where})"""
_LIVE_PARTS = """ WHERE NOT EXISTS (SELECT 1 FROM conversations AS c
    WHERE c.conversation_id = {table}.conversation_id AND c.expires_ms <= :now)"""
_META_OK = """(typeof(created_ms) = 'integer' AND typeof(updated_ms) = 'integer'
    AND typeof(message_count) = 'integer' AND message_count >= 0
    AND (ttl IS NULL OR (typeof(ttl) IN ('integer', 'real') AND ttl > 0))
    AND (expires_ms IS NULL OR typeof(expires_ms) = 'integer')
    AND json_valid(metadata) AND json_type(metadata) = 'object')"""
_KV_OK = """(typeof(namespace) = 'text' AND typeof(key) = 'text' AND json_valid(value)
    AND typeof(created_ms) = 'integer' AND typeof(updated_ms) = 'integer'
    AND (expires_ms IS NULL OR typeof(expires_ms) = 'integer')
    AND CASE WHEN json_valid(tags) AND json_type(tags) = 'object'
        THEN NOT EXISTS (SELECT 1 FROM json_each(tags) WHERE json_each.type != 'text') ELSE 0 END)"""
RECOUNT = {
    "raw": _OBJECT_ROWS.format(table="raw_messages", where=_LIVE_PARTS.format(table="raw_messages")),
    "memories": _OBJECT_ROWS.format(table="memories", where=_LIVE_PARTS.format(table="memories")),
    "chains": _OBJECT_ROWS.format(table="reasoning_chains", where=""),
    "cache": """SELECT COALESCE(SUM(ok AND live), 0), COALESCE(SUM(ok AND NOT live), 0),
        COALESCE(SUM(NOT ok), 0) FROM (SELECT json_valid(data) AS ok,
        (expires_ms IS NULL OR expires_ms > :now) AS live FROM cache)""",
    "conversations": f"""SELECT COALESCE(SUM(live), 0),
        COALESCE(SUM(CASE WHEN live AND chunks_ok THEN json_array_length(chunks) END), 0),
        COALESCE(SUM(NOT live), 0),
        COALESCE(SUM(live AND document IS NOT NULL AND NOT document_ok), 0)
            + COALESCE(SUM(live AND chunks IS NOT NULL AND NOT chunks_ok), 0)
            + COALESCE(SUM(metadata IS NOT NULL AND NOT meta_ok), 0)
        FROM (SELECT document, chunks, metadata,
            NOT COALESCE(expires_ms <= :now, 0) AS live,
            CASE WHEN json_valid(document) THEN json_type(document) = 'object' ELSE 0 END AS document_ok,
            CASE WHEN json_valid(chunks) THEN json_type(chunks) = 'array' ELSE 0 END AS chunks_ok,
            CASE WHEN json_valid(metadata) THEN {_META_OK} ELSE 0 END AS meta_ok FROM conversations)""",
    "states": "SELECT COUNT(*) - COALESCE(SUM(NOT json_valid(data)), 0), COALESCE(SUM(NOT json_valid(data)), 0) "
    "FROM system_state",
    "agents": "SELECT COUNT(*) FROM agents",
    "kv": f"""SELECT COUNT(DISTINCT CASE WHEN ok AND live THEN namespace END),
        COALESCE(SUM(ok AND live), 0), COALESCE(SUM(ok AND NOT live), 0), COALESCE(SUM(NOT ok), 0)
        FROM (SELECT namespace, {_KV_OK} AS ok, (expires_ms IS NULL OR expires_ms > :now) AS live FROM kv)""",
}


def recount(db: Path, now_ms: int) -> dict[str, int]:
    """Every count get_storage_stats reports (but messages and bytes), by reading every row."""
    with closing(sqlite3.connect(db)) as conn:

        def row(name: str) -> tuple[int, ...]:
            return tuple(int(v) for v in conn.execute(RECOUNT[name], {"now": now_ms}).fetchone())

        raw, raw_bad = row("raw")
        memories, memories_bad = row("memories")
        chains, chains_bad = row("chains")
        cache, cache_expired, cache_bad = row("cache")
        conversations, chunks, expired, conversations_bad = row("conversations")
        states, states_bad = row("states")
        (agents,) = row("agents")
        namespaces, entries, entries_expired, kv_bad = row("kv")
    return {
        "conversation_count": conversations, "expired_conversation_count": expired, "raw_message_count": raw,
        "memory_count": memories, "chunk_count": chunks, "agent_count": agents, "reasoning_chain_count": chains,
        "cache_entry_count": cache, "expired_cache_entry_count": cache_expired, "system_state_count": states,
        "kv_namespace_count": namespaces, "kv_entry_count": entries, "expired_kv_entry_count": entries_expired,
        "unreadable_count": raw_bad + memories_bad + chains_bad + cache_bad + conversations_bad + states_bad + kv_bad,
    }  # fmt: skip


async def kept(db: Path, now: float) -> dict[str, int]:
    async with create_sqlite_storage(db, clock=FakeClock(now)) as storage:
        stats = await storage.get_storage_stats()
    return {key: stats[key] for key in recount(db, 0)}


async def assert_kept_equals_recount(db: Path, now: float) -> dict[str, int]:
    found = await kept(db, now)
    assert found == recount(db, round(now * 1000))
    return found


# ------------------------------------------------------------- random workload

# Hand edits a user could make in the sqlite3 shell: each damages (or repairs) one row.
DAMAGE = [
    "UPDATE raw_messages SET data = '{oops' WHERE id = (SELECT MIN(id) FROM raw_messages)",
    "UPDATE raw_messages SET data = '[1]' WHERE id = (SELECT MAX(id) FROM raw_messages)",
    "UPDATE memories SET data = 'nope' WHERE id = (SELECT MAX(id) FROM memories)",
    "UPDATE reasoning_chains SET data = '7' WHERE id = (SELECT MIN(id) FROM reasoning_chains)",
    "UPDATE cache SET data = '{' WHERE cache_key = (SELECT MIN(cache_key) FROM cache)",
    "UPDATE system_state SET data = 'x' WHERE state_key = (SELECT MAX(state_key) FROM system_state)",
    "UPDATE conversations SET document = '[]' WHERE conversation_id = (SELECT MIN(conversation_id) FROM conversations)",
    "UPDATE conversations SET chunks = '{bad' WHERE conversation_id = (SELECT MAX(conversation_id) FROM conversations)",
    "UPDATE conversations SET metadata = '[' WHERE metadata IS NOT NULL AND conversation_id = "
    "(SELECT MIN(conversation_id) FROM conversations WHERE metadata IS NOT NULL)",
    "UPDATE conversations SET message_count = -1 WHERE metadata IS NOT NULL",
    "UPDATE kv SET tags = '{\"a\": 1}' WHERE key = (SELECT MIN(key) FROM kv)",
    "UPDATE kv SET value = 'nan(' WHERE key = (SELECT MAX(key) FROM kv)",
    "UPDATE cache SET cache_key = cache_key || '-moved' WHERE cache_key = (SELECT MAX(cache_key) FROM cache)",
    "INSERT INTO system_state (state_key, data) VALUES ('hand-' || random(), '{not json')",
    "DELETE FROM raw_messages WHERE id = (SELECT MIN(id) FROM raw_messages)",
    "UPDATE conversations SET chunks = '[1, 2, 3]' WHERE chunks IS NOT NULL",
]


async def workload(db: str, seed: int, steps: int, clock: FakeClock | None = None, edits: bool = True) -> None:
    """``steps`` random operations of every kind that writes, with hand edits between them."""
    rng = random.Random(seed)
    clock = clock or FakeClock()
    async with create_sqlite_storage(db, clock=clock) as storage:
        store = storage.conversation_store()
        for step in range(steps):
            with suppress(CorruptedDataError):  # a read of a row a hand edit damaged: refused, as it should be
                await _step(storage, store, clock, rng, db, step, edits)


async def _step(
    storage: SqliteStorage, store: Any, clock: FakeClock, rng: random.Random, db: str, step: int, edits: bool
) -> None:
    conversation, agent = f"c{rng.randrange(8)}", f"a{rng.randrange(3)}"
    choice = rng.randrange(20)
    if choice == 0:
        await storage.store_conversation(conversation, {"step": step})
    elif choice == 1:
        await storage.append_raw_messages(conversation, [{"n": i} for i in range(rng.randrange(1, 4))])
    elif choice == 2:
        await storage.store_raw_messages(conversation, [{"n": i} for i in range(rng.randrange(0, 5))])
    elif choice == 3:
        await storage.pop_raw_message(conversation)
    elif choice == 4:
        await storage.store_chunks(conversation, [{"c": i} for i in range(rng.randrange(0, 4))])
    elif choice == 5:
        await storage.store_memory(conversation, f"m{rng.randrange(3)}", {"v": step})
    elif choice == 6:
        await storage.delete_memory(conversation, f"m{rng.randrange(3)}")
    elif choice == 7:
        await storage.delete_conversation(conversation)
    elif choice == 8:
        await storage.store_reasoning_chain(agent, {"s": step})
    elif choice == 9:
        await storage.store_cache(f"k{rng.randrange(6)}", {"v": step}, ttl=rng.choice([None, 1, 5]))
    elif choice == 10:
        await storage.store_system_state(f"s{rng.randrange(4)}", {"v": step})
    elif choice == 11:
        await store.save(conversation, [{"n": 1}], ttl=rng.choice([None, 2, 10]), metadata={"k": step})
    elif choice == 12:
        await store.append(conversation, [{"n": step}])
    elif choice == 13:
        await storage.kv(f"ns{rng.randrange(3)}").set(f"e{rng.randrange(5)}", {"v": step}, ttl=rng.choice([None, 3]))
    elif choice == 14:
        await storage.kv(f"ns{rng.randrange(3)}").delete(f"e{rng.randrange(5)}")
    elif choice == 15:
        async with storage.transaction() as tx:
            await tx.store_conversation(conversation, {"tx": step})
            await tx.append_raw_messages(conversation, [{"tx": step}])
            await tx.store_chunks(conversation, [{"tx": step}])
            await tx.store_cache(f"k{rng.randrange(6)}", step)
    elif choice == 16:
        clock.advance(rng.choice([0.5, 1, 3]))
    elif choice == 17:
        await storage.cleanup()
    elif choice == 18 and edits:
        with closing(sqlite3.connect(db)) as conn:  # another connection, outside the library
            conn.execute(rng.choice(DAMAGE))
            conn.commit()
    elif rng.random() < 0.5:
        await storage.delete_cache(f"k{rng.randrange(6)}")
    else:
        await storage.store_memory(conversation, "m0", {"v": step})


@pytest.mark.parametrize("seed", range(6))
async def test_kept_counts_equal_a_recount_after_a_random_workload(tmp_path: Path, seed: int) -> None:
    db = tmp_path / "w.db"
    clock = FakeClock()
    for round_ in range(4):
        await workload(str(db), seed * 10 + round_, 60, clock)
        await assert_kept_equals_recount(db, clock.now)
        await assert_kept_equals_recount(db, clock.now + 7)  # more of it expired by then


async def test_the_recount_is_not_trivially_equal(tmp_path: Path) -> None:
    """The workload reaches every count, damaged rows and expiry included."""
    db = tmp_path / "w.db"
    clock = FakeClock()
    totals: dict[str, int] = {}
    for seed in range(5):
        await workload(str(db), seed, 80, clock)
        for now in (clock.now, clock.now + 7):
            for key, value in (await assert_kept_equals_recount(db, now)).items():
                totals[key] = max(totals.get(key, 0), value)
    assert [key for key in totals if totals[key] == 0] == []


async def test_a_stale_suspect_is_forgotten_by_cleanup_and_never_counted(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    async with create_sqlite_storage(db) as storage:
        await storage.store_system_state("s", {"v": 1})
        with closing(sqlite3.connect(db)) as conn:
            conn.execute("UPDATE system_state SET data = '{' WHERE state_key = 's'")
            conn.commit()
        assert (await storage.get_storage_stats())["unreadable_count"] == 1
        await storage.store_system_state("s", {"v": 2})  # repaired: still named, no longer counted
        assert (await storage.get_storage_stats())["unreadable_count"] == 0
        with closing(sqlite3.connect(db)) as conn:
            assert conn.execute("SELECT COUNT(*) FROM suspects").fetchone()[0] == 1
        await storage.cleanup()
        with closing(sqlite3.connect(db)) as conn:
            assert conn.execute("SELECT COUNT(*) FROM suspects").fetchone()[0] == 0


# ----------------------------------------------------------------- kill -9

_WORKER = """
import asyncio, sys
sys.path.insert(0, sys.argv[3])
from tests.backends.test_sqlite_counts import workload
print("ready", flush=True)
asyncio.run(workload(sys.argv[1], int(sys.argv[2]), 100_000))
"""


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


@pytest.mark.parametrize("kills", [4])
async def test_kept_counts_equal_a_recount_after_kill_9_mid_workload(tmp_path: Path, kills: int) -> None:
    db = tmp_path / "k.db"
    rng = random.Random(kills)
    for kill in range(kills):
        process = subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(db), str(kill), str(ROOT)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(),
        )  # fmt: skip
        assert process.stdout is not None
        assert process.stdout.readline().strip() == b"ready"
        await asyncio.sleep(rng.uniform(0.3, 1.0))  # when it dies, not what is checked
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert process.returncode == -signal.SIGKILL, process.stderr.read() if process.stderr else ""
        # Any instant (the workload's clock starts at START; later instants expire more).
        for now in (START, START + 5, START + 1000):
            await assert_kept_equals_recount(db, now)
    assert recount(db, round(START * 1000))["raw_message_count"] > 0


# --------------------------------------------------------------- migration v6


async def test_a_version_5_database_gets_its_counts_filled(tmp_path: Path) -> None:
    db = tmp_path / "v5.db"
    with closing(sqlite3.connect(db)) as conn:
        for step in MIGRATIONS[:5]:
            for statement in step:
                conn.execute(statement)
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute("PRAGMA user_version = 5")
        conn.execute("INSERT INTO meta VALUES ('serializer', 'json')")
        conn.execute("INSERT INTO conversations (conversation_id, document, chunks) VALUES ('c', '{}', '[1,2]')")
        conn.execute("INSERT INTO conversations (conversation_id, document, chunks) VALUES ('d', '{x', '[3]')")
        conn.execute("INSERT INTO raw_messages (conversation_id, seq, data) VALUES ('c', 0, '{}'), ('c', 1, '[')")
        conn.execute("INSERT INTO cache VALUES ('k', '1', 0, NULL), ('bad', '{', 0, NULL)")
        conn.execute(
            "INSERT INTO kv VALUES ('ns', 'a', '1', '{}', 0, 0, NULL), ('ns', 'b', '1', '{\"t\": 2}', 0, 0, NULL)"
        )
        conn.commit()
    found = await assert_kept_equals_recount(db, START)
    assert (found["chunk_count"], found["raw_message_count"], found["unreadable_count"]) == (3, 1, 4)
    assert (found["kv_entry_count"], found["kv_namespace_count"], found["cache_entry_count"]) == (1, 1, 1)


async def test_a_msgpack_database_has_no_triggers_and_counts_by_reading(tmp_path: Path) -> None:
    pytest.importorskip("msgpack")
    db = tmp_path / "m.db"
    async with create_sqlite_storage(db, serializer="msgpack") as storage:
        await storage.append_raw_messages("c", [{"a": 1}, {"b": 2}])
        stats = await storage.get_storage_stats()
    assert (stats["raw_message_count"], stats["unreadable_count"]) == (2, 0)
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("SELECT COUNT(*) FROM sqlite_master WHERE type = 'trigger'").fetchone()[0] == 0
        assert conn.execute("SELECT COUNT(*) FROM suspects").fetchone()[0] == 0


# ------------------------------------------------------- reads on the loop thread


class Counting(SqliteStorage):
    hops: list[str]

    async def _run(self, action: str, body: Any, begin: str | None = None) -> Any:
        self.hops.append(action)
        return await super()._run(action, body, begin)


def counting(db: Path, **options: Any) -> Counting:
    storage = Counting({"db_path": str(db), **options})
    storage.hops = []
    return storage


@contextmanager
def stopped(code: str, db: Path) -> Iterator[subprocess.Popen[str]]:
    """A process that runs ``code`` on ``db``, prints "held", then is stopped (SIGSTOP) holding what it took."""
    process = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), str(db)], stdout=subprocess.PIPE, text=True, env=_env()
    )
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "held"
        process.send_signal(signal.SIGSTOP)
        yield process
    finally:
        process.send_signal(signal.SIGCONT)
        process.kill()
        process.wait()


async def test_point_reads_take_no_hop_and_see_every_commit_of_another_process(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    async with counting(db) as storage:
        await storage.store_cache("k", 1)
        for value in range(3):
            with closing(sqlite3.connect(db)) as other:  # a commit of another connection
                other.execute("UPDATE cache SET data = ? WHERE cache_key = 'k'", (str(value + 10),))
                other.commit()
            storage.hops.clear()
            assert await storage.load_cache("k") == value + 10
            assert storage.hops == []
            await storage.store_cache("k", value)  # and this storage's own acknowledged write
            assert await storage.load_cache("k") == value


async def test_with_the_rollback_journal_reads_stay_on_the_worker(tmp_path: Path) -> None:
    async with counting(tmp_path / "j.db", enable_wal_mode=False) as storage:
        await storage.store_system_state("s", 1)
        storage.hops.clear()
        assert await storage.load_system_state("s") == 1
        assert storage.hops == ["reading"]


async def test_a_read_never_waits_for_a_stopped_writer_in_the_middle_of_its_transaction(tmp_path: Path) -> None:
    db = tmp_path / "w.db"
    async with counting(db, connection_timeout=30) as storage:
        await storage.store_conversation("c", {"v": 1})
        code = """
            import sqlite3, sys
            conn = sqlite3.connect(sys.argv[1], isolation_level=None)
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("UPDATE conversations SET document = '{\\"v\\": 2}'")
            print("held", flush=True)
            input()
        """
        with stopped(code, db):
            storage.hops.clear()
            assert await storage.load_conversation("c") == {"v": 1}  # the committed state, at once
            assert storage.hops == []


async def test_a_process_stopped_in_wal_recovery_sends_reads_to_the_worker(tmp_path: Path) -> None:
    """SQLITE_BUSY on the loop's read (another process recovers the WAL index, and is
    stopped there): the read goes to the worker, which waits like any read did before,
    and the loop runs other work meanwhile."""
    db = tmp_path / "x.db"
    async with counting(db, connection_timeout=0.5) as storage:
        await storage.store_system_state("s", 1)
        # What a process rebuilding the -shm holds: the write and recovery locks (bytes 120
        # and 122 of the -shm), while the index header's two copies differ.
        code = """
            import fcntl, os, sys
            fd = os.open(sys.argv[1] + "-shm", os.O_RDWR)
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 120, os.SEEK_SET)
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 122, os.SEEK_SET)
            header = bytearray(os.pread(fd, 4, 48))
            os.pwrite(fd, bytes(b ^ 0xFF for b in header), 48)
            print("held", flush=True)
            input()
        """
        with stopped(code, db):
            ticks = 0

            async def ticker() -> None:
                nonlocal ticks
                while True:
                    await asyncio.sleep(0)
                    ticks += 1

            task = asyncio.create_task(ticker())
            storage.hops.clear()
            with pytest.raises(LockTimeoutError, match=str(db)):
                await storage.load_system_state("s")
            task.cancel()
            assert storage.hops == ["reading"]  # the loop's read met SQLITE_BUSY and stepped aside
            assert ticks > 1  # and the loop ran other work while the worker waited
        assert await storage.load_system_state("s") == 1  # the next reader recovers the index


async def test_a_deleted_database_file_is_never_created_again_by_a_read(tmp_path: Path) -> None:
    db = tmp_path / "d.db"
    async with create_sqlite_storage(db) as storage:
        await storage.store_cache("k", 1)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        assert await storage.load_cache("k") == 1  # the open connections keep the unlinked file
    assert not db.exists()


async def test_a_read_only_folder_keeps_point_reads_working(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    db = folder / "r.db"
    async with create_sqlite_storage(db) as storage:
        await storage.store_system_state("s", {"v": 1})
        folder.chmod(0o555)
        try:
            async with create_sqlite_storage(db) as second:  # opened while the folder is read-only
                assert await second.load_system_state("s") == {"v": 1}
            assert await storage.load_system_state("s") == {"v": 1}
        finally:
            folder.chmod(0o755)


async def test_a_damaged_row_read_on_the_loop_names_its_key(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    async with counting(db) as storage:
        await storage.store_cache("k", 1)
        with closing(sqlite3.connect(db)) as conn:
            conn.execute("UPDATE cache SET data = '{' WHERE cache_key = 'k'")
            conn.commit()
        storage.hops.clear()
        with pytest.raises(CorruptedDataError, match="cache_key 'k'"):
            await storage.load_cache("k")
        assert storage.hops == []


async def test_a_big_value_is_read_whole(tmp_path: Path) -> None:
    async with create_sqlite_storage(tmp_path / "b.db") as storage:
        document = {"text": "x" * 1_000_000}
        await storage.store_conversation("c", document)
        assert await storage.load_conversation("c") == document


async def test_a_read_that_held_the_loop_over_a_second_ends_loop_reads_for_good(tmp_path: Path) -> None:
    """SQLite's own retries while a process is stopped inside a WAL restart hold the loop for
    about 10 s (too slow to stage here): after one such read, point reads never go back to
    the loop, while a short stall only sends the next second of reads to the worker."""
    async with counting(tmp_path / "g.db") as storage:
        await storage.store_system_state("s", 1)
        storage._pause_reader(0.2, failed=False)  # a short stall: a pause, then back on the loop
        storage._reader_paused_until = 0.0  # as if the second had passed
        storage.hops.clear()
        assert await storage.load_system_state("s") == 1
        assert storage.hops == []
        storage._pause_reader(1.5, failed=False)  # the loop was held: never again
        assert storage._reader_paused_until == math.inf
        for _ in range(3):
            assert await storage.load_system_state("s") == 1
        assert storage.hops == ["reading"] * 3


_TRUNCATED_READER = """
import asyncio, os, sys, threading, time
from connectome_storage import StorageError, create_sqlite_storage

async def main(db, original):
    async with create_sqlite_storage(db) as storage:
        print(await storage.load_conversation("c0") is not None, flush=True)  # the reader's pages are in use
        # Something else cuts the file to two pages and writes it back, again and again, while
        # this one reads (a thread: for the kernel, a truncation is one whoever makes it): each
        # read must return or raise, never end the process.
        stop = threading.Event()
        def chaos():
            while not stop.is_set():
                os.truncate(db, 8192)
                time.sleep(0.0005)
                with open(db, "r+b") as f:
                    f.write(original)
                time.sleep(0.0005)
        thread = threading.Thread(target=chaos)
        thread.start()
        reads = failures = 0
        try:
            deadline = time.monotonic() + 4
            while time.monotonic() < deadline:
                storage._reader_paused_until = 0.0  # every read on the loop's reader, even after a failure
                try:
                    await storage.load_conversation(f"c{reads % 50}")
                    reads += 1
                except StorageError:
                    failures += 1
        finally:
            stop.set()
            thread.join()
        print(reads, failures, flush=True)

asyncio.run(main(sys.argv[1], open(sys.argv[2], "rb").read()))
"""


async def test_a_file_truncated_by_another_process_never_crashes_a_reader(tmp_path: Path) -> None:
    """The loop's reader uses a page cache, not ``mmap_size``: with the file mapped, a read
    of a page that another process truncated away is a SIGBUS, which ends the process
    (this test with ``mmap_size`` set: exit -7, SIGBUS, within seconds). Here the reads
    raise or return instead."""
    db = tmp_path / "t.db"
    async with create_sqlite_storage(db) as storage:
        for i in range(50):
            await storage.store_conversation(f"c{i}", {"text": "x" * 3000, "i": i})
    copy = tmp_path / "copy.db"
    copy.write_bytes(db.read_bytes())  # closed: every page is in the main file, none in a WAL
    result = subprocess.run(
        [sys.executable, "-c", _TRUNCATED_READER, str(db), str(copy)],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    first, counts = result.stdout.split("\n")[:2]
    reads, failures = map(int, counts.split())
    assert first == "True" and reads + failures > 1000, (reads, failures)
