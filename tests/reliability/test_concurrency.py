"""Concurrent writers lose nothing: coroutines, threads, storage objects and processes."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from connectome_storage import create_file_storage, create_storage_from_env
from connectome_storage.backends.file import FileStorage
from connectome_storage.errors import LockTimeoutError

from ..conftest import postgres_schema

WRITER = Path(__file__).with_name("writer.py")
READER = Path(__file__).with_name("reader.py")
# Seconds after which a process is taken to hang: a guard against a deadlock blocking the
# suite forever, not a measure of speed (the short form takes about a second).
HANG = 600


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


def clean_env(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CONNECTOME_STORAGE_")} | env


def run_writers(env: dict[str, str], go: Path, writers: int, workers: int, count: int) -> tuple[list[str], list[int]]:
    """Run ``writers`` writer.py processes, started together once all are ready (``go``);
    return their names and the append totals they saw."""
    names = [f"p{n}" for n in range(writers)]
    procs = [
        subprocess.Popen(
            [sys.executable, str(WRITER), name, str(workers), str(count), str(go)],
            env=clean_env(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for name in names
    ]
    for proc in procs:
        assert proc.stdout is not None
        if proc.stdout.readline() != b"ready\n":
            _, err = proc.communicate()
            raise AssertionError(f"a writer did not start: {err.decode()}")
    go.touch()
    totals: list[int] = []
    spans: list[tuple[float, float]] = []
    for proc in procs:
        out, err = proc.communicate(timeout=HANG)
        assert proc.returncode == 0, err.decode()
        report = json.loads(out)
        totals += report["totals"]
        spans.append((report["started"], report["finished"]))
    # The writers really ran at once: each began before any had finished.
    assert max(start for start, _ in spans) < min(end for _, end in spans)
    return names, totals


def backend_env(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> dict[str, str]:
    """CONNECTOME_STORAGE_* variables that point every process at one fresh storage."""
    if backend == "file":
        return {"CONNECTOME_STORAGE_TYPE": "file", "CONNECTOME_STORAGE_BASE_DIR": str(tmp_path / "data")}
    if backend == "sqlite":
        return {"CONNECTOME_STORAGE_TYPE": "sqlite", "CONNECTOME_STORAGE_DB_PATH": str(tmp_path / "shared.db")}
    if backend == "postgres":  # the session's server, a schema of this test's own
        return {
            "CONNECTOME_STORAGE_TYPE": "postgres",
            "CONNECTOME_STORAGE_POSTGRES_DSN": request.getfixturevalue("postgres_server").dsn,
            "CONNECTOME_STORAGE_POSTGRES_SCHEMA": postgres_schema(tmp_path),
        }
    return {
        "CONNECTOME_STORAGE_TYPE": "redis",
        "CONNECTOME_STORAGE_REDIS_URL": request.getfixturevalue("redis_server").url,
        "CONNECTOME_STORAGE_KEY_PREFIX": f"test:concurrency:{uuid.uuid4().hex}:",
    }


async def hammer(env: dict[str, str], stop: Path, writers: int, workers: int, count: int) -> None:
    """``writers`` processes of ``workers`` coroutines each, plus a reader; then check all."""
    # A reader loads the history throughout; on the file backend appends happen in place,
    # so it must never see a torn file; on no backend may the history shrink.
    reader = subprocess.Popen(
        [sys.executable, str(READER), str(stop)], env=clean_env(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        names, totals = run_writers(env, stop.with_name("go"), writers, workers, count)
    finally:
        stop.touch()
        out, err = reader.communicate(timeout=HANG)
    assert reader.returncode == 0, err.decode()
    assert int(out) > 0
    items = writers * workers * count
    # Every append saw a distinct total: no two appends interleaved or were counted twice.
    assert sorted(totals) == list(range(1, items + 1))
    async with create_storage_from_env(env) as storage:
        check_tags(await storage.load_raw_messages("shared"), names, workers, count)
        check_tags(await storage.load_reasoning_chains("shared-agent"), names, workers, count)
        memories = await storage.load_memories("shared")
        hot = [m for m in memories if m["memory_id"] == "hot"]
        check_tags([m for m in memories if m["memory_id"] != "hot"], names, workers, count)
        # The last write to "hot" was some coroutine's last write: its seq is count - 1.
        assert len(hot) == 1 and hot[0]["seq"] == count - 1 and hot[0]["writer"] in names
        assert await storage.verify() == []
        stats = await storage.get_storage_stats()
        assert (stats["raw_message_count"], stats["memory_count"], stats["reasoning_chain_count"]) == (
            items,
            items + 1,
            items,
        )


@pytest.mark.parametrize("backend", ["file", "sqlite", "redis", "postgres"])
async def test_processes_with_several_coroutines_each(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    await hammer(backend_env(backend, tmp_path, request), tmp_path / "stop", writers=4, workers=3, count=6)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["file", "sqlite", "redis", "postgres"])
async def test_processes_long_form(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    writers, workers, count = (int(n) for n in request.config.getoption("--concurrency").split("x"))
    await hammer(backend_env(backend, tmp_path, request), tmp_path / "stop", writers, workers, count)
    print(
        f"{backend}: {writers} processes x {workers} coroutines x {count} rounds: {writers * workers * count} "
        "appends, chains and memories each, all present, each writer's order kept"
    )


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
