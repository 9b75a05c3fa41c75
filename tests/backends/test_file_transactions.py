"""Transactions on the file tree: the intent journal, its recovery, locks and failures."""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from connectome_storage import FileStorage, create_file_storage
from connectome_storage.codec import encode
from connectome_storage.errors import LockTimeoutError, TransactionError

BIG = 1 << 20  # bytes a state of the failing commit takes, past the file size limit below


def _leftovers(base: Path) -> list[str]:
    """Temp files and journals anywhere in the tree."""
    return sorted(
        str(path.relative_to(base))
        for path in base.rglob("*")
        if path.name.startswith(".tmp-") or (path.parent.name == ".transactions")
    )


async def _one_of_each(tx: FileStorage, n: int) -> None:
    await tx.store_conversation("doc", {"round": n})
    await tx.append_raw_messages("doc", [{"round": n}])
    await tx.store_memory("doc", "m", {"round": n})
    await tx.store_system_state("round", {"round": n})
    await tx.kv("turns").set("last", {"round": n})


async def _state(storage: FileStorage) -> dict[str, object]:
    return {
        "doc": await storage.load_conversation("doc"),
        "log": await storage.load_raw_messages("doc"),
        "memories": await storage.load_memories("doc"),
        "round": await storage.load_system_state("round"),
        "kv": await storage.kv("turns").get("last"),
    }


@pytest.fixture
def file_size_limit() -> Iterator[None]:
    """Writes past 64 KiB fail with EFBIG (a real write failure, no mock); SIGXFSZ ignored."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


async def test_a_commit_that_fails_half_way_through_its_writes_leaves_nothing(
    tmp_path: Path, file_size_limit: None
) -> None:
    base = tmp_path / "data"
    async with create_file_storage(base) as storage:
        async with storage.transaction() as tx:
            await _one_of_each(tx, 1)
        before = await _state(storage)
        files_before = {p: p.read_bytes() for p in base.rglob("*.json") if ".backups" not in p.parts}
        with pytest.raises(TransactionError, match="nothing of it was applied"):
            async with storage.transaction() as tx:
                await _one_of_each(tx, 2)
                # Staged after the conversation's files (paths in order): its write fails
                # once those are written as temp files.
                await tx.store_system_state("round", {"round": 2, "pad": "x" * BIG})
        assert await _state(storage) == before
        assert {p: p.read_bytes() for p in files_before} == files_before
        assert _leftovers(base) == []
        assert await storage.verify() == []
        async with storage.transaction() as tx:  # the locks were released
            await _one_of_each(tx, 3)
        assert (await _state(storage))["round"] == {"round": 3}


async def test_a_writer_of_a_touched_entity_times_out_and_others_do_not_wait(tmp_path: Path) -> None:
    base = tmp_path / "data"
    async with (
        create_file_storage(base) as storage,
        create_file_storage(base, connection_timeout=0.2) as other,
    ):
        async with storage.transaction() as tx:
            await tx.store_system_state("touched", 1)
            with pytest.raises(LockTimeoutError):
                await other.store_system_state("touched", 2)
            await other.store_system_state("untouched", 2)  # no wait: another entity
            with pytest.raises(LockTimeoutError):  # one transaction at a time
                async with other.transaction():
                    pass
        assert await other.load_system_state("touched") == 1
        await other.store_system_state("touched", 3)
        assert await storage.load_system_state("touched") == 3


async def test_a_log_is_rewritten_whole_and_the_next_append_outside_goes_in_place(tmp_path: Path) -> None:
    base = tmp_path / "data"
    path = base / "conversations/c/raw_messages.json"
    async with create_file_storage(base) as storage:
        await storage.append_raw_messages("c", [{"n": 0}])
        async with storage.transaction() as tx:
            await tx.append_raw_messages("c", [{"n": 1}])
            await tx.append_raw_messages("c", [{"n": 2}])
        assert path.read_bytes() == encode([{"n": 0}, {"n": 1}, {"n": 2}])
        inode = path.stat().st_ino
        assert await storage.append_raw_messages("c", [{"n": 3}]) == 4
        assert path.stat().st_ino == inode, "the append after the transaction was not in place"
        assert path.read_bytes() == encode([{"n": k} for k in range(4)])
        assert await storage.list_backups("conversations/c/raw_messages.json") == []  # appends keep none
        await storage.store_conversation("c", {"v": 1})
        async with storage.transaction() as tx:
            await tx.store_conversation("c", {"v": 2})
        assert len(await storage.list_backups("conversations/c/current.json")) == 1


CRASHER = textwrap.dedent(
    """
    import asyncio, os, sys
    from connectome_storage import create_file_storage
    from connectome_storage.backends import _file_tx

    point = sys.argv[2]
    if point == "committed":  # right after the commit point, before any rename
        _file_tx.FileTransactions._tx_finish = lambda self, record, **kw: os._exit(9)
    else:  # temp files staged, the journal not yet committed
        _file_tx.FileTransactions._tx_before_replace = lambda self, f: os._exit(9)

    async def main():
        async with create_file_storage(sys.argv[1]) as storage:
            async with storage.transaction() as tx:
                await tx.store_conversation("doc", {"round": 2})
                await tx.append_raw_messages("doc", [{"round": 2}])
                await tx.store_memory("doc", "m", {"round": 2})
                await tx.store_system_state("round", {"round": 2})
                await tx.kv("turns").set("last", {"round": 2})
                await tx.delete_system_state("gone")

    asyncio.run(main())
    """
)


def _crash(base: Path, point: str) -> None:
    done = subprocess.run([sys.executable, "-c", CRASHER, str(base), point], capture_output=True)
    assert done.returncode == 9, done.stderr.decode()


async def _prepare(base: Path) -> None:
    async with create_file_storage(base) as storage, storage.transaction() as tx:
        await _one_of_each(tx, 1)
        await tx.store_system_state("gone", True)


ROUND_2 = {
    "doc": {"round": 2}, "log": [{"round": 1}, {"round": 2}], "memories": [{"round": 2, "memory_id": "m"}],
    "round": {"round": 2}, "kv": {"round": 2},
}  # fmt: skip
ROUND_1 = {
    "doc": {"round": 1}, "log": [{"round": 1}], "memories": [{"round": 1, "memory_id": "m"}],
    "round": {"round": 1}, "kv": {"round": 1},
}  # fmt: skip


async def test_a_commit_killed_after_its_commit_point_is_finished_at_the_next_open(tmp_path: Path) -> None:
    base = tmp_path / "data"
    await _prepare(base)
    _crash(base, "committed")
    assert any(p.parent.name == ".transactions" for p in base.rglob("*.json"))
    reader = create_file_storage(base)
    reader.create_on_open = False  # what the CLI's read-only commands open: it changes nothing
    async with reader:
        problems = await reader.verify()
        assert any("interrupted" in p.message for p in problems), problems
    async with create_file_storage(base) as storage:
        assert await _state(storage) == ROUND_2
        assert await storage.load_system_state("gone") is None
        assert _leftovers(base) == []
        assert await storage.verify() == []
        assert await storage.append_raw_messages("doc", [{"round": 3}]) == 3


async def test_a_commit_killed_before_its_commit_point_is_undone_at_the_next_open(tmp_path: Path) -> None:
    base = tmp_path / "data"
    await _prepare(base)
    _crash(base, "staged")
    assert _leftovers(base) != []  # its temp files and its uncommitted journal
    async with create_file_storage(base) as storage:
        assert await _state(storage) == ROUND_1
        assert await storage.load_system_state("gone") is True
        assert _leftovers(base) == []
        assert await storage.verify() == []


async def test_a_storage_open_during_the_crash_finishes_it_before_its_next_read_or_write(tmp_path: Path) -> None:
    base = tmp_path / "data"
    await _prepare(base)
    async with create_file_storage(base) as reader, create_file_storage(base) as writer:
        await reader.load_conversation("doc")  # the journal folder is known and empty
        _crash(base, "committed")
        assert await reader.load_conversation("doc") == {"round": 2}
        assert _leftovers(base) == []
    await _prepare(base)
    async with create_file_storage(base) as writer:
        _crash(base, "committed")
        # The write's own lock, then the recovery, then the write: nothing of the
        # transaction lands on top of it afterwards.
        await writer._locks.run("system/round.json", writer._replace_file, base / "system/round.json", encode(7))
        assert _leftovers(base) == []
        assert await writer.load_system_state("round") == 7
        assert await writer.load_conversation("doc") == {"round": 2}


async def test_cleanup_finishes_an_interrupted_commit_before_removing_temp_files(tmp_path: Path) -> None:
    base = tmp_path / "data"
    await _prepare(base)
    async with create_file_storage(base) as storage:
        _crash(base, "committed")
        # cleanup() alone (no read first): the committed journal's temp files are data.
        removed = await storage.cleanup()
        assert removed["temp_files"] == 0
        assert _leftovers(base) == []
        assert await _state(storage) == ROUND_2


async def test_two_transactions_of_one_storage_run_one_after_the_other(tmp_path: Path) -> None:
    async with create_file_storage(tmp_path / "data") as storage:
        await storage.store_system_state("n", 0)

        async def increment() -> None:
            async with storage.transaction() as tx:
                value = await tx.load_system_state("n")
                await asyncio.sleep(0)
                await tx.store_system_state("n", value + 1)

        await asyncio.gather(*(increment() for _ in range(10)))
        assert await storage.load_system_state("n") == 10
        assert os.listdir(tmp_path / "data" / ".transactions") == []


async def test_a_temp_file_lost_after_the_commit_point_is_named_not_ignored(tmp_path: Path) -> None:
    """What a power cut could do on a filesystem that does not keep a folder's changes in
    order: the journal survives, one of its temp files does not. Recovery must not call
    the transaction finished; it sets the journal aside and verify() names it."""
    base = tmp_path / "data"
    await _prepare(base)
    _crash(base, "committed")
    (temp,) = (base / "system").glob(".tmp-*")
    temp.unlink()
    async with create_file_storage(base) as storage:
        problems = await storage.verify()
        assert [p for p in problems if p.location.endswith(".damaged")], problems
        assert await storage.load_conversation("doc") == {"round": 2}  # the rest was finished


async def test_a_transaction_cancelled_while_it_waits_leaves_no_lock_behind(tmp_path: Path) -> None:
    base = tmp_path / "data"
    async with create_file_storage(base) as first, create_file_storage(base, connection_timeout=2) as second:
        async with first.transaction() as tx:
            await tx.store_system_state("x", 1)
            # The second storage's transaction waits for the tree lock in a worker thread;
            # cancelled, that thread still gets the lock once the first ends, and must let it go.
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(second.transaction().__aenter__(), 0.2)
        await asyncio.sleep(0.2)  # time for that thread to take the lock
        async with second.transaction() as tx:
            await tx.store_system_state("x", 2)
        assert await first.load_system_state("x") == 2
