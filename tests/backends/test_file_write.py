"""FileStorage's write path: its worker threads, temp file names, the same-bytes check,
and the per-entity lock against a stopped or killed holder (real subprocesses)."""

from __future__ import annotations

import asyncio
import contextvars
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from connectome_storage import create_file_storage
from connectome_storage.backends import _fs, _locks
from connectome_storage.errors import LockTimeoutError, StorageIOError

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and fork")

_caller: contextvars.ContextVar[str] = contextvars.ContextVar("caller", default="unset")


async def test_worker_threads_see_the_callers_context_and_raise_its_errors() -> None:
    _caller.set("store 7")
    assert await _locks._workers.run(_caller.get) == "store 7"
    with pytest.raises(ZeroDivisionError):
        await _locks._workers.run(divmod, 1, 0)


def _store_in_child(base: str, done: multiprocessing.queues.Queue[str]) -> None:
    async def store() -> None:
        storage = create_file_storage(base)
        await storage.initialize()
        await storage.store_conversation("from_child", {"messages": []})
        await storage.shutdown()

    asyncio.run(store())
    done.put("stored")


async def test_a_forked_child_stores_with_threads_of_its_own(tmp_path: Path) -> None:
    # The parent's threads are not copied by fork: a child that used the parent's pool
    # (idle threads counted, none running) would wait forever for its first store.
    storage = create_file_storage(tmp_path)
    await storage.initialize()
    await asyncio.gather(*(storage.store_conversation(f"c{i}", {"messages": []}) for i in range(8)))
    context = multiprocessing.get_context("fork")
    done = context.Queue()
    child = context.Process(target=_store_in_child, args=(str(tmp_path), done))
    child.start()
    try:
        assert await asyncio.to_thread(done.get, True, 30) == "stored"
    finally:
        child.join(10)
        if child.is_alive():
            child.kill()
    assert await storage.load_conversation("from_child") == {"messages": []}
    await storage.shutdown()


_FORKER = textwrap.dedent(
    """
    import asyncio, os, sys
    from connectome_storage import create_file_storage

    async def store(name):
        storage = create_file_storage(sys.argv[1])
        await storage.initialize()
        await storage.store_conversation(name, {"messages": []})
        await storage.shutdown()

    asyncio.run(store("parent"))
    pid = os.fork()
    if pid == 0:
        asyncio.run(store("child"))  # then an ordinary exit, which waits for non-daemon threads
    else:
        _, status = os.waitpid(pid, 0)
        print("child exit", os.waitstatus_to_exitcode(status), flush=True)
    """
)


def test_a_forked_child_exits_normally_after_storing(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(_locks.__file__).parents[2])}
    done = subprocess.run(
        [sys.executable, "-c", _FORKER, str(tmp_path)], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.stdout == "child exit 0\n", done.stderr
    assert (tmp_path / "conversations" / "child" / "current.json").is_file()


async def test_hand_placed_temp_names_are_skipped_never_opened(tmp_path: Path) -> None:
    storage = create_file_storage(tmp_path)
    await storage.initialize()
    await storage.store_conversation("c", {"messages": ["first"]})
    folder = tmp_path / "conversations" / "c"
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.write_bytes(b"not ours")
    # The next names this process would give its temp files, taken by a link leading out
    # of the tree and by a plain file (as a crashed process with the same pid leaves).
    upcoming = next(_fs._TEMP_COUNTER) + 1
    names = [f"{_fs.TEMP_PREFIX}{os.getpid()}-{_fs._TEMP_TAG[0]}{upcoming + i:x}" for i in range(4)]
    (folder / names[0]).symlink_to(outside)
    (folder / names[1]).write_bytes(b"left by a crash")
    await storage.store_conversation("c", {"messages": ["second"]})
    assert await storage.load_conversation("c") == {"messages": ["second"]}
    assert outside.read_bytes() == b"not ours"
    assert (folder / names[1]).read_bytes() == b"left by a crash"
    assert (folder / names[0]).is_symlink()
    await storage.shutdown()


def test_holds_compares_the_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "f.json"
    path.write_bytes(b"abcd")
    assert _fs.holds(path, b"abcd")
    assert not _fs.holds(path, b"abce")
    assert not _fs.holds(path, b"abc")  # the file is longer than what would be written
    assert not _fs.holds(tmp_path / "missing.json", b"abcd")
    link = tmp_path / "link.json"
    link.symlink_to(path)
    with pytest.raises(StorageIOError, match="symbolic link"):
        _fs.holds(link, b"abcd")


async def test_a_store_of_the_same_bytes_after_a_hand_edit_of_equal_size_writes(tmp_path: Path) -> None:
    storage = create_file_storage(tmp_path)
    await storage.initialize()
    await storage.store_conversation("c", {"messages": ["aaaa"]})
    path = tmp_path / "conversations" / "c" / "current.json"
    path.write_bytes(path.read_bytes().replace(b"aaaa", b"bbbb"))  # same size, other bytes
    await storage.store_conversation("c", {"messages": ["aaaa"]})
    assert await storage.load_conversation("c") == {"messages": ["aaaa"]}
    await storage.shutdown()


def _counting_reads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The paths ``_fs.holds`` (the same-bytes read) is called for, from now on."""
    reads: list[Path] = []
    holds = _fs.holds

    def counted(path: Path, data: bytes) -> bool:
        reads.append(path)
        return holds(path, data)

    monkeypatch.setattr(_fs, "holds", counted)
    return reads


async def test_a_file_this_process_wrote_is_not_read_to_tell_other_bytes_of_its_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = create_file_storage(tmp_path)
    await storage.initialize()
    await storage.store_conversation("c", {"messages": ["aaaa"]})
    reads = _counting_reads(monkeypatch)
    await storage.store_conversation("c", {"messages": ["bbbb"]})  # same size, other bytes
    assert reads == []
    await storage.store_conversation("c", {"messages": ["bbbb"]})  # the same bytes: read, not written
    assert len(reads) == 1
    path = tmp_path / "conversations" / "c" / "current.json"
    path.write_bytes(path.read_bytes().replace(b"bbbb", b"cccc"))  # by hand: no longer what it wrote
    await storage.store_conversation("c", {"messages": ["cccc"]})  # read, and found to hold it
    assert len(reads) == 2
    assert [v.number for v in await storage.list_backups("conversations/c/current.json")] == [1]
    await storage.shutdown()


async def test_a_long_file_is_read_to_tell_other_bytes_of_its_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = create_file_storage(tmp_path)
    await storage.initialize()
    long = "a" * _fs.LastWritten.LONGEST
    await storage.store_conversation("c", {"messages": [long]})
    reads = _counting_reads(monkeypatch)
    await storage.store_conversation("c", {"messages": [long.replace("a", "b")]})
    assert len(reads) == 1  # not remembered: hashing it on every write would cost more
    assert await storage.load_conversation("c") == {"messages": [long.replace("a", "b")]}
    await storage.shutdown()


async def test_a_same_size_change_that_keeps_the_files_identity_is_still_written_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Changed in place within one clock tick: inode, size and mtime as this process left
    # them. Its memory says "other bytes" and the store writes, as it would without it.
    storage = create_file_storage(tmp_path)
    await storage.initialize()
    await storage.store_conversation("c", {"messages": ["aaaa"]})
    path = tmp_path / "conversations" / "c" / "current.json"
    before = path.stat()
    with path.open("r+b") as f:
        f.write(path.read_bytes().replace(b"aaaa", b"bbbb"))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    reads = _counting_reads(monkeypatch)
    await storage.store_conversation("c", {"messages": ["bbbb"]})
    assert reads == []
    assert await storage.load_conversation("c") == {"messages": ["bbbb"]}
    await storage.shutdown()


_HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from connectome_storage.backends._locks import EntityLocks
    locks = EntityLocks(Path(sys.argv[1]), 5.0)
    held = locks.take("conversations/c", time.monotonic() + 5)
    print("held", flush=True)
    time.sleep(600)
    """
)


async def test_a_stopped_holder_times_out_naming_the_entity_and_a_killed_one_frees_it(tmp_path: Path) -> None:
    storage = create_file_storage(tmp_path, connection_timeout=0.5)
    await storage.initialize()
    env = {**os.environ, "PYTHONPATH": str(Path(_locks.__file__).parents[2])}
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(tmp_path.absolute())], stdout=subprocess.PIPE, env=env, text=True
    )
    try:
        assert holder.stdout is not None
        assert await asyncio.to_thread(holder.stdout.readline) == "held\n"
        holder.send_signal(signal.SIGSTOP)
        with pytest.raises(LockTimeoutError, match="conversations/c"):
            await storage.store_conversation("c", {"messages": []})
        holder.kill()  # a killed holder's lock goes with its descriptors
        holder.wait(10)
        await storage.store_conversation("c", {"messages": ["after"]})
        assert await storage.load_conversation("c") == {"messages": ["after"]}
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(10)
    await storage.shutdown()
