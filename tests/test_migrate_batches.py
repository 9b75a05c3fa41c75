"""migrate() into SQLite writes batches of conversations, one transaction each: a kill
leaves whole batches (every conversation complete, or absent), a re-run finishes the
copy, and damaged data the destination holds is still replaced, as without batches."""

from __future__ import annotations

import random
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bench.suites.scale import build_migrate_source, migrate_conversation
from connectome_storage import SqliteStorage, create_file_storage, create_sqlite_storage, migrate
from connectome_storage.errors import ValueTooLargeError

ROOT = Path(__file__).resolve().parents[1]
COUNT = 1_000
BATCH = SqliteStorage._migrate_batch

MIGRATOR = textwrap.dedent(
    """
    import asyncio, sys
    from connectome_storage import create_file_storage, create_sqlite_storage, migrate

    def progress(done, total):
        sys.stdout.write(f"{done}\\n")
        sys.stdout.flush()

    async def main():
        async with create_file_storage(sys.argv[1]) as source, create_sqlite_storage(sys.argv[2]) as destination:
            await migrate(source, destination, progress=progress)
        print("finished", flush=True)

    asyncio.run(main())
    """
)


def killed_migration(source: Path, database: Path, after: int) -> int:
    """Run migrate in a subprocess and SIGKILL it once progress passed ``after``; the last
    progress it reported."""
    proc = subprocess.Popen(
        [sys.executable, "-c", MIGRATOR, str(source), str(database)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    seen = 0
    for line in proc.stdout:
        if line.strip() == "finished":
            break
        seen = int(line)
        if seen >= after:
            proc.kill()
            break
    proc.wait()
    assert proc.stderr is not None
    proc.stderr.close()
    proc.stdout.close()
    return seen


async def test_a_killed_migration_leaves_whole_batches_and_a_rerun_finishes_it(tmp_path: Path) -> None:
    await kill_and_check(tmp_path, rounds=3, seed=18)


@pytest.mark.slow
async def test_a_killed_migration_leaves_whole_batches_long_form(tmp_path: Path) -> None:
    await kill_and_check(tmp_path, rounds=30, seed=1818)


async def kill_and_check(tmp_path: Path, rounds: int, seed: int) -> None:
    source = tmp_path / "source"
    async with create_file_storage(source):
        build_migrate_source(source, COUNT)
    rng = random.Random(seed)
    for round_number in range(rounds):
        database = tmp_path / f"copy-{round_number}.db"
        seen = killed_migration(source, database, rng.randrange(1, COUNT - BATCH))
        async with create_sqlite_storage(database) as copy:
            present = await copy.list_conversations()
            # Progress counts a batch once it is committed: at least what was reported is
            # there, in whole batches, each conversation with every part.
            # A kill that lands after the migration ended (this reader of its progress was
            # slow: a loaded machine) finds all of it, the last batch being the short one.
            whole = len(present) % BATCH == 0 or len(present) == COUNT
            assert whole and len(present) >= seen, (len(present), seen)
            # The source is walked in its folder listing's order, not by id.
            assert set(present) <= {f"conv_{i:06d}" for i in range(COUNT)}
            for conversation_id in present:
                parts = (await copy.load_conversation(conversation_id), await copy.load_raw_messages(conversation_id),
                         await copy.load_memories(conversation_id))  # fmt: skip
                assert parts == migrate_conversation(int(conversation_id.removeprefix("conv_"))), conversation_id
        async with create_file_storage(source) as files, create_sqlite_storage(database) as copy:
            report = await migrate(files, copy)
            assert report.conversations == COUNT
            assert len(await copy.list_conversations()) == COUNT
            last = f"conv_{COUNT - 1:06d}"
            assert (await copy.load_conversation(last), await copy.load_raw_messages(last),
                    await copy.load_memories(last)) == migrate_conversation(COUNT - 1)  # fmt: skip


async def test_damaged_rows_in_the_destination_are_replaced(tmp_path: Path) -> None:
    database = tmp_path / "copy.db"
    async with create_file_storage(tmp_path / "source") as source, create_sqlite_storage(database) as copy:
        for i in range(3):
            await source.store_conversation(f"c{i}", {"n": i})
            await source.append_raw_messages(f"c{i}", [{"m": i}])
            await copy.store_conversation(f"c{i}", {"old": i})
            await copy.append_raw_messages(f"c{i}", [{"old": i}])
    with sqlite3.connect(database) as conn:  # damaged by hand: a document and a message that do not parse
        conn.execute("UPDATE conversations SET document = '{not json' WHERE conversation_id = 'c1'")
        conn.execute("UPDATE raw_messages SET data = '[broken' WHERE conversation_id = 'c2'")
    conn.close()
    async with create_file_storage(tmp_path / "source") as source, create_sqlite_storage(database) as copy:
        report = await migrate(source, copy)
        assert report.conversations == 3
        for i in range(3):
            assert await copy.load_conversation(f"c{i}") == {"n": i}
            assert await copy.load_raw_messages(f"c{i}") == [{"m": i}]


async def test_a_value_too_large_for_sqlite_stops_the_migration_and_its_batch_is_not_written(tmp_path: Path) -> None:
    async with create_file_storage(tmp_path / "source") as source, create_sqlite_storage(tmp_path / "copy.db") as copy:
        for i in range(5):
            await source.store_conversation(f"c{i}", {"n": i})
        await source.store_memory("c3", "m", {"text": "x" * 200_000})
        assert isinstance(copy, SqliteStorage)
        # SQLite's own length limit lowered, as tests/backends/test_sqlite.py does.
        await copy._run("limiting", lambda conn: conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 100_000))
        copy._length_limit = 100_000
        with pytest.raises(ValueTooLargeError, match="100,000 bytes"):
            await migrate(source, copy)
        assert await copy.list_conversations() == []  # one batch: all of it or none
