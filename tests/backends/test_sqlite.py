"""What only SqliteStorage does: schema and its version, journal modes, backup, many
processes on one file, appends that insert rows, engine errors, the optional import.

Everything runs against real database files in tmp dirs; the test inspects them with the
standard library's sqlite3 module, never a mock.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import pytest

from connectome_storage import SqliteStorage, create_sqlite_storage
from connectome_storage.backends.sqlite import SCHEMA_VERSION
from connectome_storage.errors import (
    AccessDeniedError,
    ConfigError,
    CorruptedDataError,
    LockTimeoutError,
    StorageFullError,
    StorageNotInitializedError,
    UnsupportedFormatError,
    ValueTooLargeError,
)

from ..conftest import FakeClock
from .sqlite_fixtures import db_fixture, raw  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]


def scalar(path: Path, sql: str, *args: Any) -> Any:
    with raw(path) as conn:
        return conn.execute(sql, args).fetchone()[0]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def run_python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", textwrap.dedent(code), *args]
    return subprocess.run(command, capture_output=True, text=True, env=_env(), check=False)


# ------------------------------------------------------------------------ schema


async def test_a_new_database_gets_the_current_schema(db: Path) -> None:
    async with create_sqlite_storage(db):
        pass
    assert scalar(db, "PRAGMA user_version") == SCHEMA_VERSION
    with raw(db) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"conversations", "raw_messages", "memories", "agents", "reasoning_chains", "cache",
                "system_state"} <= tables  # fmt: skip
        for child in ("raw_messages", "memories"):
            keys = conn.execute(f"PRAGMA foreign_key_list({child})").fetchall()
            assert [(k[2], k[3], k[6]) for k in keys] == [("conversations", "conversation_id", "CASCADE")]


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT seq, data FROM raw_messages WHERE conversation_id = 'c' ORDER BY seq",
        "SELECT COALESCE(MAX(seq), -1) FROM raw_messages WHERE conversation_id = 'c'",
        "SELECT memory_id, data FROM memories WHERE conversation_id = 'c' ORDER BY position",
        "SELECT seq, data FROM reasoning_chains WHERE agent_id = 'a' ORDER BY seq",
        "SELECT data FROM cache WHERE cache_key = 'k'",
        "SELECT cache_key FROM cache WHERE expires_ms <= 5",
        "SELECT data FROM system_state WHERE state_key = 's'",
        "SELECT document FROM conversations WHERE conversation_id = 'c'",
    ],
)
async def test_every_lookup_uses_an_index(db: Path, sql: str) -> None:
    async with create_sqlite_storage(db):
        pass
    with raw(db) as conn:
        plan = " | ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}"))
    assert "INDEX" in plan and "SCAN" not in plan, plan


async def test_a_newer_schema_version_is_refused_and_left_alone(db: Path) -> None:
    async with create_sqlite_storage(db) as storage:
        await storage.store_system_state("s", 1)
    with raw(db) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(UnsupportedFormatError, match=rf"schema version {SCHEMA_VERSION + 1}.*upgrade"):
        await create_sqlite_storage(db).initialize()
    assert scalar(db, "PRAGMA user_version") == SCHEMA_VERSION + 1
    assert scalar(db, "SELECT data FROM system_state WHERE state_key = 's'") == "1"


@pytest.mark.parametrize("content", [b"this is not a database\n" * 200, b"SQLite format 3\x00" + b"\xff" * 4000])
async def test_a_file_that_is_not_sqlite_raises_corrupted_data(db: Path, content: bytes) -> None:
    db.write_bytes(content)
    storage = create_sqlite_storage(db)
    with pytest.raises(CorruptedDataError) as caught:
        await storage.initialize()
    assert str(db) in str(caught.value)
    assert db.read_bytes() == content  # nothing was written over it
    with pytest.raises(StorageNotInitializedError):
        await storage.list_conversations()


async def test_a_database_of_another_application_is_refused(db: Path) -> None:
    with raw(db) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
    with pytest.raises(ConfigError, match="another application"):
        await create_sqlite_storage(db).initialize()
    assert scalar(db, "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'") == 1


# ------------------------------------------------------------------ journal mode


@pytest.mark.parametrize(("wal", "mode"), [(True, "wal"), (False, "delete")])
async def test_wal_mode_on_and_off(db: Path, wal: bool, mode: str) -> None:
    async with create_sqlite_storage(db, enable_wal_mode=not wal):
        pass  # start from the other mode: the setting must switch an existing file
    async with create_sqlite_storage(db, enable_wal_mode=wal) as storage:
        await storage.store_conversation("c", {"t": 1})
        assert scalar(db, "PRAGMA journal_mode") == mode
        assert Path(f"{db}-wal").exists() is wal
        details = (await storage.health_check())["details"]
        assert details["journal_mode"] == mode
        assert details["schema_version"] == SCHEMA_VERSION and details["page_count"] > 0


async def test_wal_off_while_another_connection_is_open_runs_on_in_wal(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with create_sqlite_storage(db, enable_wal_mode=True) as first:
        await first.store_system_state("s", 1)
        # SQLite cannot leave WAL while another connection is open: opening must neither
        # wait for that nor fail (a regression would end in LockTimeoutError).
        async with create_sqlite_storage(db, enable_wal_mode=False, connection_timeout=5) as second:
            assert await second.load_system_state("s") == 1
            await second.store_system_state("s", 2)
            assert (await second.health_check())["details"]["journal_mode"] == "wal"
        assert await first.load_system_state("s") == 2
    assert "stays in journal_mode wal" in caplog.text


@pytest.mark.parametrize("level", ["FULL", "NORMAL", "EXTRA"])
async def test_synchronous_setting_is_applied(db: Path, level: str) -> None:
    async with create_sqlite_storage(db, synchronous=level.lower()) as storage:
        assert isinstance(storage, SqliteStorage)
        assert await storage._run("checking", lambda c: c.execute("PRAGMA synchronous").fetchone()[0]) == {
            "NORMAL": 1, "FULL": 2, "EXTRA": 3}[level]  # fmt: skip


# ------------------------------------------------------------------------ values


async def test_values_are_canonical_json_text_and_cache_times_exact_ms(db: Path, clock: FakeClock) -> None:
    async with create_sqlite_storage(db, clock=clock) as storage:
        await storage.store_system_state("s", {"b": [1, 2.5], "a": "ü"})
        await storage.store_cache("k", 1, ttl=1.5)
        await storage.store_cache("forever", 2)
    with raw(db) as conn:
        assert conn.execute("SELECT typeof(data), data FROM system_state").fetchone() == (
            "text", '{"a":"ü","b":[1,2.5]}')  # fmt: skip
        now_ms = round(clock() * 1000)
        rows = conn.execute("SELECT cache_key, created_ms, expires_ms FROM cache ORDER BY cache_key").fetchall()
        assert rows == [("forever", now_ms, None), ("k", now_ms, now_ms + 1500)]


async def test_a_corrupt_row_names_db_table_and_key_and_the_rest_stays_readable(db: Path) -> None:
    async with create_sqlite_storage(db) as storage:
        await storage.store_raw_messages("c1", [{"n": 0}, {"n": 1}])
        await storage.store_raw_messages("c2", [{"n": 0}])
        with raw(db) as conn:
            conn.execute("UPDATE raw_messages SET data = '{\"n\": ' WHERE conversation_id = 'c1' AND seq = 1")
        with pytest.raises(CorruptedDataError) as caught:
            await storage.load_raw_messages("c1")
        message = str(caught.value)
        assert str(db) in message and "raw_messages" in message and "'c1'" in message and "seq 1" in message
        assert await storage.load_raw_messages("c2") == [{"n": 0}]
        stats = await storage.get_storage_stats()
        assert (stats["unreadable_count"], stats["raw_message_count"]) == (1, 2)
        problems = await storage.verify()
        assert len(problems) == 1 and "seq 1" in problems[0].message
        await storage.store_raw_messages("c1", [{"n": 9}])  # storing again repairs it
        assert await storage.load_raw_messages("c1") == [{"n": 9}]
        assert await storage.verify() == []


async def test_pop_leaves_a_corrupt_newest_row_in_place(db: Path) -> None:
    async with create_sqlite_storage(db) as storage:
        await storage.store_raw_messages("c1", [{"n": 0}, {"n": 1}])
        with raw(db) as conn:
            conn.execute("UPDATE raw_messages SET data = '[1]' WHERE conversation_id = 'c1' AND seq = 1")
        with pytest.raises(CorruptedDataError, match="seq 1"):
            await storage.pop_raw_message("c1")
        with raw(db) as conn:
            assert conn.execute("SELECT COUNT(*) FROM raw_messages").fetchone()[0] == 2


# -------------------------------------------------------- rows, parents, cascade


async def test_append_inserts_rows_and_never_rewrites_the_history(db: Path) -> None:
    async with create_sqlite_storage(db) as storage:
        assert isinstance(storage, SqliteStorage)
        await storage.store_raw_messages("c", [{"n": n} for n in range(300)])
        # Rows of another conversation after c's: a rewrite of c would give it new row ids.
        await storage.store_raw_messages("other", [{"n": 0}])
        before = _rows(db, "c")
        changes = await storage._run("counting", lambda conn: conn.total_changes)
        assert await storage.append_raw_messages("c", [{"n": 300}, {"n": 301}]) == 302
        assert await storage._run("counting", lambda conn: conn.total_changes) - changes == 2
        after = _rows(db, "c")
    assert after[:300] == before  # same row ids, positions and bytes: untouched
    assert [(seq, data) for _id, seq, data in after[300:]] == [(300, '{"n":300}'), (301, '{"n":301}')]


def _rows(db: Path, conversation_id: str) -> list[tuple[int, int, str]]:
    with raw(db) as conn:
        sql = "SELECT id, seq, data FROM raw_messages WHERE conversation_id = ? ORDER BY seq"
        return conn.execute(sql, (conversation_id,)).fetchall()


async def test_the_conversation_row_lives_exactly_as_long_as_a_part(db: Path) -> None:
    def rows() -> int:
        return int(scalar(db, "SELECT COUNT(*) FROM conversations"))

    async with create_sqlite_storage(db) as storage:
        await storage.store_raw_messages("c", [{"n": 1}])
        await storage.store_memory("c", "m", {})
        await storage.store_chunks("c", [{"s": 0}])
        await storage.store_raw_messages("c", [])
        await storage.delete_memory("c", "m")
        assert rows() == 1  # the chunks are still there
        await storage.store_chunks("c", [])
        assert rows() == 0
        await storage.store_memory("c", "m", {})
        await storage.delete_memory("c", "m")
        assert rows() == 0


async def test_delete_conversation_cascades_to_every_row(db: Path) -> None:
    async with create_sqlite_storage(db) as storage:
        await storage.store_conversation("c", {"t": 1})
        await storage.store_raw_messages("c", [{"n": n} for n in range(5)])
        await storage.store_memory("c", "m1", {})
        await storage.store_memory("keep", "m1", {})
        assert await storage.delete_conversation("c") is True
    with raw(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM raw_messages").fetchone()[0] == 0
        assert conn.execute("SELECT conversation_id FROM memories").fetchall() == [("keep",)]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []


# ------------------------------------------------------------------------ backup


async def test_backup_is_a_self_contained_copy_that_opens_with_the_same_data(tmp_path: Path, db: Path) -> None:
    copy = tmp_path / "backups" / "copy.db"
    async with create_sqlite_storage(db) as storage:
        assert isinstance(storage, SqliteStorage)
        with pytest.raises(StorageNotInitializedError):
            await SqliteStorage({"db_path": tmp_path / "other.db"}).backup(copy)
        await storage.store_conversation("c", {"t": 1})
        await storage.store_raw_messages("c", [{"n": n} for n in range(50)])
        await storage.store_memory("c", "m", {"x": 1})
        await storage.store_reasoning_chain("a", {"step": 1})
        await storage.store_cache("k", [1, 2])
        await storage.store_system_state("s", "v")
        assert await storage.backup(copy) == copy
        await storage.store_system_state("s", "changed after the backup")
    assert sorted(p.name for p in copy.parent.iterdir()) == ["copy.db"]  # no -wal, no temp file
    assert scalar(copy, "PRAGMA journal_mode") == "delete"
    async with create_sqlite_storage(copy) as restored:
        assert await restored.load_conversation("c") == {"t": 1}
        assert await restored.load_raw_messages("c") == [{"n": n} for n in range(50)]
        assert await restored.load_memories("c") == [{"memory_id": "m", "x": 1}]
        assert await restored.load_reasoning_chains("a") == [{"step": 1}]
        assert await restored.load_cache("k") == [1, 2]
        assert await restored.load_system_state("s") == "v"
        assert await restored.verify() == []


# -------------------------------------------------------------- engine failures


async def test_a_held_write_lock_gives_lock_timeout_error_and_reads_go_on(db: Path) -> None:
    async with create_sqlite_storage(db, connection_timeout=0.2) as storage:
        await storage.store_system_state("s", 1)
        with raw(db) as other:
            other.execute("BEGIN IMMEDIATE")
            with pytest.raises(LockTimeoutError) as caught:
                await storage.store_system_state("s", 2)
            assert isinstance(caught.value, TimeoutError) and str(db) in str(caught.value)
            assert "database is locked" not in str(caught.value)
            assert await storage.load_system_state("s") == 1  # WAL: readers are not blocked
            other.execute("ROLLBACK")
        await storage.store_system_state("s", 3)
        assert await storage.load_system_state("s") == 3


async def test_a_full_database_raises_storage_full_and_keeps_the_old_data(db: Path) -> None:
    async with create_sqlite_storage(db) as storage:
        assert isinstance(storage, SqliteStorage)
        await storage.store_system_state("s", "before")
        # max_page_count makes SQLite answer SQLITE_FULL exactly as a full disk does.
        await storage._run("limiting", lambda c: c.execute("PRAGMA max_page_count = 1").fetchone())
        with pytest.raises(StorageFullError, match="intact"):
            await storage.store_system_state("s", "x" * 200_000)
        with pytest.raises(StorageFullError):
            await storage.append_raw_messages("c", [{"big": "y" * 200_000}])
        assert await storage.load_system_state("s") == "before"
        assert await storage.load_raw_messages("c") == []
        assert await storage.list_conversations() == []


# --------------------------------------------------------------- many processes


async def test_concurrent_coroutines_and_objects_in_one_process_lose_nothing(db: Path) -> None:
    async with create_sqlite_storage(db) as one, create_sqlite_storage(db) as two:
        # Coroutines of one object share its connection: their transactions must not
        # interleave; the second object is a second connection to the same file.
        totals = await asyncio.gather(
            *(storage.append_raw_messages("c", [{"n": n}]) for n in range(60) for storage in (one, two)),
            *(one.store_memory("c", f"m{n}", {"n": n}) for n in range(20)),
        )
        assert sorted(totals[:120]) == list(range(1, 121))
        assert len(await two.load_raw_messages("c")) == 120
        assert sorted(m["n"] for m in await two.load_memories("c")) == list(range(20))


WORKER = """
import asyncio, json, os, sys
from connectome_storage import create_sqlite_storage

db, worker, count, go, wal = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5] == "1"

async def main():
    async with create_sqlite_storage(db, enable_wal_mode=wal) as storage:
        print("ready", flush=True)
        while not os.path.exists(go):
            await asyncio.sleep(0.001)
        totals = []
        for n in range(count):
            totals.append(await storage.append_raw_messages("shared", [{"worker": worker, "n": n}]))
            if n % 5 == 0:  # readers in the mix, so rollback-journal mode meets SHARED locks
                assert len(await storage.load_raw_messages("shared")) >= totals[-1]
        print(json.dumps(totals), flush=True)

asyncio.run(main())
"""


@pytest.mark.parametrize("wal", [True, False], ids=["wal", "rollback-journal"])
async def test_many_processes_appending_lose_nothing_and_never_see_locked(tmp_path: Path, wal: bool) -> None:
    db, go = tmp_path / "shared.db", tmp_path / "go"
    workers, count = 4, 40
    # No schema yet: the workers also race to create it (and to set the journal mode).
    argv = [sys.executable, "-c", WORKER, str(db), "worker", str(count), str(go), "1" if wal else "0"]
    pipes: dict[str, Any] = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, "env": _env()}
    processes = [subprocess.Popen([*argv[:4], str(w), *argv[5:]], **pipes) for w in range(workers)]
    for process in processes:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
    go.touch()
    results = [process.communicate() for process in processes]
    for process, (_out, err) in zip(processes, results, strict=True):
        assert "database is locked" not in err
        assert process.returncode == 0, err
    totals = [json.loads(out) for out, _err in results]
    # Every append saw a distinct new length: the appends were serialized, none lost.
    assert sorted(t for worker_totals in totals for t in worker_totals) == list(range(1, workers * count + 1))
    async with create_sqlite_storage(db, enable_wal_mode=wal) as storage:
        messages = await storage.load_raw_messages("shared")
    assert len(messages) == workers * count
    for w in range(workers):
        assert [m["n"] for m in messages if m["worker"] == w] == list(range(count))
    assert [seq for _id, seq, _data in _rows(db, "shared")] == list(range(workers * count))


# ----------------------------------------------------------- optional package


def test_importing_the_package_does_not_import_aiosqlite() -> None:
    result = run_python("""
        import sys
        import connectome_storage
        print("aiosqlite" in sys.modules)
    """)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_missing_aiosqlite_raises_import_error_naming_the_extra(tmp_path: Path) -> None:
    result = run_python(
        """
        import sys
        sys.modules["aiosqlite"] = None  # as if it were not installed
        from connectome_storage import StorageFactory, create_sqlite_storage
        for build in (lambda: create_sqlite_storage(sys.argv[1]),
                      lambda: StorageFactory.create_storage("sqlite", {"db_path": sys.argv[1]})):
            try:
                build()
            except ImportError as e:
                print(e)
            else:
                print("no error")
        """,
        str(tmp_path / "x.db"),
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and all("pip install connectome-storage[sqlite]" in line for line in lines)
    assert not (tmp_path / "x.db").exists()


# ------------------------------------------------------- damage, paths, access


async def _several_pages(db: Path) -> int:
    """A real database of several dozen pages, self-contained (rollback journal); its page count."""
    async with create_sqlite_storage(db, enable_wal_mode=False) as storage:
        for i in range(40):
            await storage.store_conversation(f"c{i}", {"text": "x" * 2000, "i": i})
            await storage.append_raw_messages(f"c{i}", [{"m": "y" * 500}] * 3)
            await storage.store_memory(f"c{i}", "m", {"t": "z" * 300})
        await storage.store_reasoning_chain("a1", {"s": 1})
        await storage.store_cache("k", 1)
        await storage.store_system_state("s", 1)
    return int(scalar(db, "PRAGMA page_count"))


async def test_a_damaged_page_is_listed_by_verify_and_never_raised(tmp_path: Path) -> None:
    original = tmp_path / "original.db"
    pages = await _several_pages(original)
    assert pages > 30
    page_size = int(scalar(original, "PRAGMA page_size"))
    # The schema's pages (page 0 with the header, and more once the schema outgrows it):
    # initialize() refuses a file whose schema is damaged.
    with closing(sqlite3.connect(original)) as conn:
        found = conn.execute("SELECT pageno - 1 FROM dbstat WHERE name IN ('sqlite_schema', 'sqlite_master')")
        schema = {row[0] for row in found}
    listed = 0
    for page in sorted(set(range(1, pages)) - schema):
        db = tmp_path / f"damaged-{page}.db"
        shutil.copy(original, db)
        with db.open("r+b") as file:
            file.seek(page * page_size + 20)
            file.write(b"\xde\xad\xbe\xef" * 64)
        async with create_sqlite_storage(db, enable_wal_mode=False) as storage:
            problems = await storage.verify()  # never raises
            stats = await storage.get_storage_stats()  # counts what it can
        assert all(problem.location for problem in problems)
        if any(problem.location == str(db) and "quick_check" in problem.message for problem in problems):
            listed += 1
            assert stats["unreadable_count"] >= 0
    assert listed > pages // 2  # most pages hold rows or index entries; a few hold free space


async def test_a_cache_row_with_bad_times_is_corrupted_data_not_a_type_error(db: Path) -> None:
    async with create_sqlite_storage(db) as storage:
        await storage.store_cache("k", 1, ttl=60)
        with raw(db) as conn:
            conn.execute("UPDATE cache SET expires_ms = 'soon' WHERE cache_key = 'k'")
        with pytest.raises(CorruptedDataError, match="table cache"):
            await storage.load_cache("k")
        assert [problem.location for problem in await storage.verify()] == [f"{db} (table cache, cache_key 'k')"]


def test_db_path_naming_a_folder_is_a_config_error_and_nothing_is_printed(tmp_path: Path) -> None:
    folder = tmp_path / "a-folder"
    folder.mkdir()
    result = run_python(
        """
        import asyncio, sys
        from connectome_storage import create_sqlite_storage

        async def main():
            try:
                await create_sqlite_storage(sys.argv[1]).initialize()
            except Exception as e:
                print(type(e).__name__, e)

        for _ in range(20):  # the thread that printed "Event loop is closed" lost a race
            asyncio.run(main())
        """,
        str(folder),
    )
    lines = result.stdout.splitlines()
    assert len(lines) == 20 and all(line.startswith("ConfigError") and str(folder) in line for line in lines)
    assert "folder" in lines[0]
    assert result.stderr == ""


@contextmanager
def immutable(path: Path) -> Iterator[None]:
    """``chattr +i``: even root may not write it (permission bits do not stop root)."""
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(path)], check=False).returncode:
        pytest.skip("chattr +i is not available here (needs root and a filesystem with attributes)")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


async def test_a_read_only_database_file_gives_access_denied_and_reads_go_on(db: Path) -> None:
    async with create_sqlite_storage(db, enable_wal_mode=False) as storage:
        await storage.store_conversation("c1", {"t": 1})
    with immutable(db):
        async with create_sqlite_storage(db, enable_wal_mode=False) as storage:
            assert await storage.load_conversation("c1") == {"t": 1}
            with pytest.raises(AccessDeniedError, match="permissions") as caught:
                await storage.store_conversation("c1", {"t": 2})
            assert str(db) in str(caught.value)
            assert await storage.load_conversation("c1") == {"t": 1}


def test_a_read_only_folder_gives_access_denied_and_nothing_is_printed(tmp_path: Path) -> None:
    folder = tmp_path / "locked"
    folder.mkdir()
    existing = folder / "existing.db"
    sqlite3.connect(existing).close()
    with immutable(folder):
        result = run_python(
            """
            import asyncio, sys
            from connectome_storage import create_sqlite_storage

            async def main(path):
                try:
                    await create_sqlite_storage(path).initialize()
                except Exception as e:
                    print(type(e).__name__, e)

            for path in sys.argv[1:]:
                asyncio.run(main(path))
            """,
            str(folder / "new.db"),
            str(existing),
        )
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and all(line.startswith("AccessDeniedError") for line in lines), result.stdout
    assert "not permitted" in lines[0] and str(folder) in lines[0]
    assert result.stderr == ""


async def test_a_value_over_sqlites_length_limit_is_value_too_large(db: Path) -> None:
    async with SqliteStorage({"db_path": db}) as storage:
        # The connection's own SQLITE_LIMIT_LENGTH lowered (from 1,000,000,000), so the test
        # need not allocate a gigabyte; SQLite refuses with SQLITE_TOOBIG either way.
        await storage._run("limiting", lambda conn: conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 100_000))
        storage._length_limit = 100_000
        with pytest.raises(ValueTooLargeError, match="100,000 bytes"):
            await storage.store_conversation("c1", {"text": "x" * 200_000})
        assert await storage.list_conversations() == []
        await storage.store_conversation("c1", {"text": "x" * 1000})


# ----------------------------------------------- capabilities, stats, cleanup


async def test_capabilities_are_persistent_and_cross_process(db: Path) -> None:
    async with create_sqlite_storage(db) as storage:
        assert storage.capabilities == frozenset({"persistent", "cross_process"})
        assert storage.supports("cross_process") and not storage.supports("native_ttl")


async def test_cleanup_removes_expired_cache_rows(db: Path, clock: FakeClock) -> None:
    async with create_sqlite_storage(db, clock=clock) as storage:
        await storage.store_cache("old", 1, ttl=10)
        await storage.store_cache("live", 2, ttl=1000)
        clock.advance(20)
        assert (await storage.cleanup())["expired_cache"] == 1
        assert scalar(db, "SELECT group_concat(cache_key) FROM cache") == "live"
