"""Memory: tracemalloc peaks of loading a long history, and of migrating a big tree."""

from __future__ import annotations

import asyncio
import gc
import shutil
import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

from connectome_storage import FileStorage, StorageInterface, create_sqlite_storage, migrate

from ..backends import open_storage
from ..context import Context
from ..data import messages
from ..harness import Runner, Section, Variant, compare
from .scale import MIGRATE_MEMORIES, MIGRATE_MESSAGES, build_migrate_source

__all__ = ["run"]

INTRO = """\
Peak memory allocated by Python (`tracemalloc`: every thread, the storage's worker
threads included) while one call runs, from a collection just before it; the result the
call returns counts, as it is alive at the end. Each figure is one call's peak (the
median over rounds where there are several); the ratio is ours against the baseline
(*cost*: below 1 is less memory). The migration tables copy trees written straight into
the file tree's layout ({messages} messages and {memories} memories per conversation)
into a new SQLite database: a migration that streams needs the same memory at
{small:,} and {big:,} conversations."""

HISTORY_ID = "history"
BACKENDS = ("file", "sqlite", "redis")


async def run(ctx: Context) -> Section:
    small, big = ctx.sizes.memory_migrate
    intro = INTRO.format(messages=MIGRATE_MESSAGES, memories=MIGRATE_MEMORIES, small=small, big=big)
    section = Section("memory", "Memory: a long history, a big migration", intro)
    await _history(ctx, section)
    await _migrate(ctx, section)
    return section


async def peak_bytes(call: Callable[[], Awaitable[Any]]) -> int:
    """The tracemalloc peak while ``await call()`` runs (its result included)."""
    gc.collect()
    tracemalloc.start()
    try:
        result = await call()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del result
    return peak


def _peak(call: Callable[[], Awaitable[Any]]) -> Runner:
    async def run(_first: int, _count: int) -> list[float]:
        return [float(await peak_bytes(call))]

    return run


async def _history(ctx: Context, section: Section) -> None:
    count = ctx.sizes.memory_history
    history = messages(count)
    storages: dict[str, StorageInterface] = {}
    for backend in BACKENDS:
        storage = await open_storage(ctx, backend, f"memory-history-{backend}")
        await storage.store_raw_messages(HISTORY_ID, history)
        storages[backend] = storage
    del history
    files = storages["file"]
    assert isinstance(files, FileStorage)
    path = files.base_dir / "conversations" / HISTORY_ID / "raw_messages.json"

    async def plain() -> Any:
        with open(path, "rb") as f:
            return orjson.loads(f.read())

    def ours(storage: StorageInterface) -> Runner:
        return _peak(lambda: storage.load_raw_messages(HISTORY_ID))

    variants = [Variant("plain read + orjson.loads of the file", _peak(plain))]
    variants += [Variant(f"{type(s).__name__}.load_raw_messages", ours(s)) for s in storages.values()]
    try:
        section.comparisons.append(
            await compare(
                "memory.history", f"peak memory of loading a {count:,}-message history", variants,
                ops=1, repeats=ctx.sizes.scale_repeats, ratio_kind="cost", unit="bytes",
            )
        )  # fmt: skip
    finally:
        for storage in storages.values():
            await storage.shutdown()


async def _migrate(ctx: Context, section: Section) -> None:
    sizes = (small, big) = ctx.sizes.memory_migrate
    sources: dict[int, FileStorage] = {}
    for count in sizes:
        source = FileStorage({"base_dir": ctx.tmp / f"memory-migrate-{count}"})
        await source.initialize()
        await asyncio.to_thread(build_migrate_source, source.base_dir, count)
        sources[count] = source
    targets = iter(range(1, 1_000))
    root = ctx.folder("memory-migrate-targets")

    def copy(count: int) -> Runner:
        async def run(_first: int, _count: int) -> list[float]:
            path = root / f"copy-{next(targets)}.db"
            destination = create_sqlite_storage(path)
            await destination.initialize()
            try:
                peak = await peak_bytes(lambda: migrate(sources[count], destination))
                assert len(await destination.list_conversations()) == count
            finally:
                await destination.shutdown()
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{path}{suffix}").unlink(missing_ok=True)
            return [float(peak)]

        return run

    try:
        section.comparisons.append(
            await compare(
                "memory.migrate", f"peak memory of migrate file -> SQLite, {small:,} and {big:,} conversations",
                [Variant(f"{small:,} conversations", copy(small)), Variant(f"{big:,} conversations", copy(big))],
                # Once each in a real run (minutes at 100,000); the smoke run needs two rounds.
                ops=1, repeats=2 if ctx.smoke else 1, ratio_kind="cost", unit="bytes",
            )
        )  # fmt: skip
    finally:
        for source in sources.values():
            await source.shutdown()
            await asyncio.to_thread(shutil.rmtree, source.base_dir, True)
