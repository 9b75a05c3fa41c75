"""Lock file descriptors kept open between holds (``_locks.IdleLocks``): a kept one is
never shared by two holders, not with a forked child either, a lock file removed while
one is kept is locked anew, and how many are kept is bounded."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import sys
import time
from pathlib import Path

import pytest

from connectome_storage import create_file_storage
from connectome_storage.backends import _locks
from connectome_storage.backends.file import FileStorage

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="flock and fork")

ENTITY = "conversations/c"


async def _storage(root: Path, **options: object) -> FileStorage:
    storage = create_file_storage(root, **options)
    await storage.initialize()
    await storage.store_conversation("c", {"messages": []})  # its lock's descriptor is now kept
    assert isinstance(storage, FileStorage)
    return storage


async def test_a_kept_descriptor_serves_one_holder_at_a_time(tmp_path: Path) -> None:
    storage = await _storage(tmp_path)
    locks = storage._locks
    held = locks.take(ENTITY, time.monotonic() + 1)
    assert held is not None
    try:
        # Housekeeping locks this way, in a thread, without the entity's asyncio lock: had
        # it been handed the same descriptor, its flock would have "succeeded".
        assert locks.take(ENTITY, time.monotonic(), wait=False) is None
        assert locks.try_hold(ENTITY, lambda: "ran") is None
    finally:
        held.__exit__()
    assert locks.try_hold(ENTITY, lambda: "ran") == "ran"
    await storage.shutdown()


async def test_a_lock_file_removed_while_its_descriptor_is_kept_is_locked_anew(tmp_path: Path) -> None:
    storage = await _storage(tmp_path)
    path = storage._locks.lock_path(ENTITY)
    assert _locks.remove_unused(path)  # cleanup() removes a lock file no one holds
    assert not path.exists()
    held = storage._locks.take(ENTITY, time.monotonic() + 1)
    assert held is not None
    try:
        assert path.exists()  # the kept descriptor named the removed file: a new one is locked
        other = _locks.EntityLocks(tmp_path, 1.0)
        assert other.take(ENTITY, time.monotonic(), wait=False) is None
        assert not _locks.remove_unused(path)
    finally:
        held.__exit__()
    await storage.store_conversation("c", {"messages": ["after"]})
    assert await storage.load_conversation("c") == {"messages": ["after"]}
    await storage.shutdown()


def _hold_in_child(storage: FileStorage, ready: multiprocessing.queues.Queue[str]) -> None:
    held = storage._locks.take(ENTITY, time.monotonic() + 5)
    assert held is not None
    ready.put("held")
    time.sleep(30)


async def test_a_forked_child_never_locks_with_the_parents_kept_descriptor(tmp_path: Path) -> None:
    # A child inherits the parent's descriptors, and with them their open file
    # descriptions: locking with one of them would lock "as the parent", and both would hold.
    storage = await _storage(tmp_path)
    context = multiprocessing.get_context("fork")
    ready = context.Queue()
    child = context.Process(target=_hold_in_child, args=(storage, ready))
    child.start()
    try:
        assert await asyncio.to_thread(ready.get, True, 30) == "held"
        assert storage._locks.take(ENTITY, time.monotonic(), wait=False) is None
    finally:
        child.kill()
        child.join(10)
    held = storage._locks.take(ENTITY, time.monotonic() + 5)  # the killed child's lock went with it
    assert held is not None
    held.__exit__()
    await storage.shutdown()


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts descriptors in /proc")
async def test_kept_descriptors_are_bounded_and_closed_with_their_storage(tmp_path: Path) -> None:
    def open_descriptors() -> int:
        return len(os.listdir("/proc/self/fd"))

    before = open_descriptors()
    first = await _storage(tmp_path / "one")
    second = await _storage(tmp_path / "two")
    for i in range(_locks.IDLE_KEPT + 20):
        await first.store_conversation(f"a{i}", {"messages": []})
        await second.store_conversation(f"b{i}", {"messages": []})
    assert open_descriptors() - before <= _locks.IDLE_KEPT  # both storages together
    await first.shutdown()
    await second.shutdown()
    assert open_descriptors() <= before
