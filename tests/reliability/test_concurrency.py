"""Concurrent writers lose nothing: coroutines, threads, storage objects and processes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from connectome_storage import create_file_storage
from connectome_storage.backends.file import FileStorage
from connectome_storage.errors import LockTimeoutError

WRITER = Path(__file__).with_name("writer.py")
READER = Path(__file__).with_name("reader.py")


def check_tags(items: list[dict[str, Any]], writers: list[str], workers: int, count: int) -> None:
    """Exactly one item per (writer, worker, seq), and each worker's own order kept."""
    seen = [(i["writer"], i["worker"], i["seq"]) for i in items]
    expected = {(w, k, s) for w in writers for k in range(workers) for s in range(count)}
    assert len(seen) == len(expected) and set(seen) == expected
    for writer in writers:
        for worker in range(workers):
            own = [s for w, k, s in seen if (w, k) == (writer, worker)]
            assert own == sorted(own)


async def test_coroutines_of_one_storage(tmp_path: Path) -> None:
    async with create_file_storage(tmp_path / "data") as storage:

        async def worker(n: int) -> None:
            for seq in range(5):
                tag = {"writer": "w", "worker": n, "seq": seq}
                await storage.append_raw_messages("c", [tag])
                await storage.store_memory("c", f"m{n}-{seq}", tag)
                await storage.store_reasoning_chain("a", tag)

        await asyncio.gather(*(worker(n) for n in range(12)))
        check_tags(await storage.load_raw_messages("c"), ["w"], 12, 5)
        check_tags(await storage.load_reasoning_chains("a"), ["w"], 12, 5)
        check_tags(await storage.load_memories("c"), ["w"], 12, 5)


async def test_two_storage_objects_in_one_process(tmp_path: Path) -> None:
    async with create_file_storage(tmp_path / "data") as one, create_file_storage(tmp_path / "data") as two:

        async def worker(storage: Any, name: str) -> None:
            for seq in range(20):
                await storage.append_raw_messages("c", [{"writer": name, "worker": 0, "seq": seq}])

        await asyncio.gather(worker(one, "one"), worker(two, "two"))
        check_tags(await one.load_raw_messages("c"), ["one", "two"], 1, 20)


def test_threads_with_their_own_event_loops(tmp_path: Path) -> None:
    errors: list[BaseException] = []

    def thread_main(name: str) -> None:
        async def run() -> None:
            async with create_file_storage(tmp_path / "data") as storage:
                for seq in range(15):
                    await storage.append_raw_messages("c", [{"writer": name, "worker": 0, "seq": seq}])

        try:
            asyncio.run(run())
        except BaseException as e:  # reported below, in the test's thread
            errors.append(e)

    threads = [threading.Thread(target=thread_main, args=(f"t{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []

    async def load() -> list[dict[str, Any]]:
        async with create_file_storage(tmp_path / "data") as storage:
            return await storage.load_raw_messages("c")

    check_tags(asyncio.run(load()), [f"t{n}" for n in range(4)], 1, 15)


def run_writers(env: dict[str, str], writers: int, workers: int, count: int) -> list[str]:
    names = [f"p{n}" for n in range(writers)]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CONNECTOME_STORAGE_")} | env
    procs = [
        subprocess.Popen([sys.executable, str(WRITER), name, str(workers), str(count)], env=full_env, stderr=subprocess.PIPE)
        for name in names
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()
    return names


async def test_processes_with_several_coroutines_each(tmp_path: Path) -> None:
    base = tmp_path / "data"
    env = {"CONNECTOME_STORAGE_TYPE": "file", "CONNECTOME_STORAGE_BASE_DIR": str(base)}
    stop = tmp_path / "stop"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CONNECTOME_STORAGE_")} | env
    # A reader loads the history throughout; appends happen in place, so it must never
    # see a torn file or a shrinking history.
    reader = subprocess.Popen([sys.executable, str(READER), str(stop)], env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        names = run_writers(env, writers=4, workers=3, count=6)
    finally:
        stop.touch()
        out, err = reader.communicate(timeout=120)
    assert reader.returncode == 0, err.decode()
    assert int(out) > 0
    async with create_file_storage(base) as storage:
        check_tags(await storage.load_raw_messages("shared"), names, 3, 6)
        check_tags(await storage.load_reasoning_chains("shared-agent"), names, 3, 6)
        check_tags(await storage.load_memories("shared"), names, 3, 6)
        assert await storage.verify() == []


HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True); time.sleep(60)
"""


async def test_a_lock_held_elsewhere_times_out_and_changes_nothing(tmp_path: Path) -> None:
    async with create_file_storage(tmp_path / "data", connection_timeout=0.3) as storage:
        assert isinstance(storage, FileStorage)
        await storage.append_raw_messages("c", [{"n": 1}])
        lock_file = storage._locks.lock_path("conversations/c")
        holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(lock_file)], stdout=subprocess.PIPE)
        try:
            assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
            with pytest.raises(LockTimeoutError, match="conversations/c") as caught:
                await storage.append_raw_messages("c", [{"n": 2}])
            assert caught.value.lock_path == str(lock_file)
            assert await storage.load_raw_messages("c") == [{"n": 1}]
        finally:
            holder.kill()
            holder.wait()
        assert await storage.append_raw_messages("c", [{"n": 2}]) == 2
