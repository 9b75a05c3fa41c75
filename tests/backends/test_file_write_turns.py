"""Writes run their Python in turns (``_turns``): one write at a time between its waits for
the device, the waits side by side; a turn held too long, or across a fork, never blocks."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from connectome_storage import create_file_storage
from connectome_storage.backends import _fs, _locks, _turns
from connectome_storage.errors import StorageIOError

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="fork")


class _Overlap:
    """The most threads seen at once in each kind of section."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self.now = {"python": 0, "device": 0}
        self.most = {"python": 0, "device": 0}

    def enter(self, what: str) -> None:
        with self._mutex:
            self.now[what] += 1
            self.most[what] = max(self.most[what], self.now[what])

    def leave(self, what: str) -> None:
        with self._mutex:
            self.now[what] -= 1


async def test_writes_take_turns_in_python_and_wait_for_the_device_side_by_side(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_turns, "TURN_WAIT", 60.0)  # no write runs without its turn, however loaded the machine
    seen = _Overlap()
    started = threading.Barrier(4, timeout=30)

    held: list[bool] = []

    def write(index: int) -> None:
        for _round in range(5):
            held.append(_turns.holding())
            seen.enter("python")
            for _call in range(20):  # quick system calls: each lets the GIL go
                os.lstat(tmp_path)
            seen.leave("python")
            _turns.blocking(_wait_for_device, seen, started if _round == 0 else None)

    await asyncio.gather(*(_locks._workers.run(write, i, in_turn=True) for i in range(4)))
    assert held == [True] * 20  # each write holds the turn between its waits
    assert seen.most["python"] == 1  # so never two writes' Python at once
    assert seen.most["device"] == 4  # all four waited at once (they met at the barrier)


def _wait_for_device(seen: _Overlap, started: threading.Barrier | None) -> None:
    seen.enter("device")
    try:
        if started is not None:
            started.wait()  # only returns once all four are here: the turn was let go
        time.sleep(0.001)
    finally:
        seen.leave("device")


async def test_a_write_goes_on_without_a_turn_that_is_held_too_long(tmp_path: Path) -> None:
    storage = create_file_storage(tmp_path)
    await storage.initialize()
    release = threading.Event()
    holder = threading.Thread(target=_hold_the_turn, args=(release,))
    holder.start()
    try:
        while not _turns._turn.locked():
            await asyncio.sleep(0.001)
        # A write whose turn never comes (a call blocking while holding it, say) still
        # completes: each wait for the turn ends after TURN_WAIT, and it runs without.
        await asyncio.wait_for(storage.store_conversation("c1", {"messages": []}), 30)
        assert await storage.load_conversation("c1") == {"messages": []}
    finally:
        release.set()
        holder.join()
    assert not _turns._turn.locked()
    await storage.shutdown()


def _hold_the_turn(release: threading.Event) -> None:
    _turns.take()
    try:
        release.wait(60)
    finally:
        _turns.leave()


def test_blocking_outside_a_write_leaves_the_turn_alone() -> None:
    # A call from the event loop or any other thread (a read) neither takes nor frees it.
    assert _turns.blocking(_turns.holding) is False
    assert not _turns._turn.locked()


def test_a_write_holds_the_turn_except_while_blocking() -> None:
    _turns.take()
    try:
        assert _turns.holding()
        assert _turns.blocking(_turns.holding) is False
        assert _turns.blocking(_turns._turn.locked) is False  # free for another writer meanwhile
        assert _turns.holding()
    finally:
        _turns.leave()
    assert not _turns.holding() and not _turns._turn.locked()


def _turn_free_in_child(answer: multiprocessing.queues.Queue[bool]) -> None:
    answer.put(not _turns._turn.locked())


def test_a_child_forked_while_a_thread_holds_the_turn_starts_free() -> None:
    release = threading.Event()
    holder = threading.Thread(target=_hold_the_turn, args=(release,))
    holder.start()
    try:
        while not _turns._turn.locked():
            time.sleep(0.001)
        context = multiprocessing.get_context("fork")
        answer = context.Queue()
        child = context.Process(target=_turn_free_in_child, args=(answer,))
        child.start()
        try:
            assert answer.get(True, 30) is True
        finally:
            child.join(10)
    finally:
        release.set()
        holder.join()


async def test_sixteen_stores_each_keep_their_own_document_and_backups(tmp_path: Path) -> None:
    storage = create_file_storage(tmp_path, max_backup_files=2)
    await storage.initialize()

    async def writer(w: int) -> None:
        for i in range(6):
            await storage.store_conversation(f"c{w}", {"writer": w, "round": i})

    await asyncio.gather(*(writer(w) for w in range(16)))
    for w in range(16):
        assert await storage.load_conversation(f"c{w}") == {"writer": w, "round": 5}
        backups = _fs.list_backups(tmp_path.absolute(), Path("conversations", f"c{w}", "current.json"))
        assert len(backups) == 2
    assert not _turns._turn.locked()
    await storage.shutdown()


async def test_a_journal_folder_that_appears_after_being_seen_absent_is_noticed(tmp_path: Path) -> None:
    # The check before each access remembers only which system call answers it faster
    # (access while the folder is missing, stat once it exists), never the answer.
    storage = create_file_storage(tmp_path)
    await storage.initialize()
    assert not storage._journals_busy()
    assert not storage._journals_busy()  # seen missing twice: answered by access()
    folder = tmp_path / ".transactions"
    folder.mkdir()
    (folder / ".tmp-1-draft").write_bytes(b"")
    assert storage._journals_busy()
    (folder / ".tmp-1-draft").unlink()
    folder.rmdir()
    assert not storage._journals_busy()
    await storage.shutdown()


async def test_a_write_refused_in_its_turn_gives_the_turn_back(tmp_path: Path) -> None:
    storage = create_file_storage(tmp_path)
    await storage.initialize()
    await storage.store_conversation("c1", {"messages": []})
    target = tmp_path / "conversations" / "c1" / "current.json"
    target.unlink()
    os.mkfifo(target)  # placed by hand where the document belongs
    with pytest.raises(StorageIOError, match="FIFO"):
        await storage.store_conversation("c1", {"messages": [1]})
    assert not _turns._turn.locked()
    await asyncio.wait_for(storage.store_conversation("c2", {"messages": []}), 30)
    assert await storage.load_conversation("c2") == {"messages": []}
    await storage.shutdown()
