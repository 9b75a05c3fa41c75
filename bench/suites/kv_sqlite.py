"""Key-value collections on SQLite: kv.set/get against diskcache.Cache.set/get at the same
synchronous level, and how tag queries and scans of one namespace scale."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any, TypeVar

import orjson

from connectome_storage import SqliteStorage

from ..context import Context
from ..harness import Section, Variant, compare, each, each_sync
from .kv_scan import timed, timed_scan

__all__ = ["run", "scaling"]

T = TypeVar("T")

INTRO = """\
`kv.set` and `kv.get` of a 1 KB value with one tag on SQLite (one row in `kv`, one in
`kv_tags`, one transaction and one worker-thread hop per call, WAL) against
`diskcache.Cache.set`/`get` (a synchronous library, called on the event loop's thread) at
the same `synchronous` level, FULL and NORMAL. Ratios against diskcache in the same run.
The scaling figures time `query(tags=..., limit=10)` (an index range of `kv_tags`, joined
row by row), `query(tags=..., order_by="updated_at", limit=10)`, `count_query(tags=...)`
and a whole `scan()` (pages of 256 keys, each one statement), and the scan's peak of
Python allocations measured with tracemalloc."""

_SELECT = "SELECT value FROM kv WHERE namespace = 'sessions' AND key = ?"
SCALES_FULL = (1_000, 10_000, 100_000)
SCALES_SMOKE = (100, 300)


def _value(i: int) -> dict[str, Any]:
    return {"index": i, "text": "x" * 1000}


async def run(ctx: Context) -> Section:
    sizes = ctx.sizes
    root = ctx.folder("kv_sqlite")
    keys = [f"user:{i:03d}" for i in range(sizes.keys)]
    section = Section("kv_sqlite", "Key-value entries on SQLite against diskcache", INTRO)
    module = ctx.peer("diskcache")
    if module is None:
        section.notes.append("diskcache is not installed: it was skipped (smoke run).")
    # diskcache runs synchronous=NORMAL by default; each mode is compared with the other
    # library in that same mode, so durability is equal within a table.
    for mode, level in (("FULL", 2), ("NORMAL", 1)):
        storage = SqliteStorage({"db_path": root / f"ours-{mode}.db", "synchronous": mode})
        await storage.initialize()
        kv = storage.kv("sessions")
        cache = module.Cache(str(root / f"diskcache-{mode}"), sqlite_synchronous=level) if module else None

        async def ours_set(i: int, kv: Any = kv) -> None:
            await kv.set(keys[i % len(keys)], _value(i), tags={"type": "web"})

        async def ours_get(i: int, kv: Any = kv) -> None:
            assert await kv.get(keys[i % len(keys)]) is not None

        def disk_set(i: int, cache: Any = cache) -> None:
            cache.set(keys[i % len(keys)], _value(i))

        def disk_get(i: int, cache: Any = cache) -> None:
            assert cache.get(keys[i % len(keys)]) is not None

        async def hop_get(i: int, storage: Any = storage) -> None:
            # The floor of any aiosqlite reader: the same indexed SELECT, one worker-thread hop.
            key = keys[i % len(keys)]
            rows = await storage._read("reading", lambda conn: conn.execute(_SELECT, (key,)).fetchall())
            assert orjson.loads(rows[0][0]) is not None

        if cache is not None:  # a comparison needs its baseline
            setters = [Variant("diskcache.Cache.set (sync)", each_sync(disk_set), "pickled value, no tags"),
                       Variant("kv.set (SQLite)", each(ours_set))]  # fmt: skip
            getters = [
                Variant("diskcache.Cache.get (sync)", each_sync(disk_get)),
                Variant("kv.get (SQLite)", each(ours_get)),
                Variant("the same SELECT through aiosqlite", each(hop_get), "the floor: one worker-thread hop"),
            ]
            section.comparisons.append(
                await compare(
                    f"kv_sqlite.set.{mode.lower()}", f"store a 1 KB value, synchronous={mode}", setters,
                    ops=sizes.writes, repeats=sizes.repeats, warmup=len(keys),
                )
            )  # fmt: skip
            section.comparisons.append(
                await compare(
                    f"kv_sqlite.get.{mode.lower()}", f"load a 1 KB value, synchronous={mode}", getters,
                    ops=sizes.reads, repeats=sizes.repeats, warmup=len(keys),
                )
            )  # fmt: skip
            cache.close()
        else:
            section.notes.append("diskcache is not installed: the comparison was skipped (smoke run).")
        await storage.shutdown()
    for line in await scaling(root / "scale", SCALES_SMOKE if ctx.smoke else SCALES_FULL):
        section.notes.append(line)
    return section


def _fill(path: Path, namespace: str, count: int) -> None:
    """Insert ``count`` entries straight into the tables (the rows kv.set writes, in one
    transaction: the point is the size of the namespace, not how it was filled)."""
    now = round(time.time() * 1000)
    with sqlite3.connect(path, isolation_level=None) as conn:
        conn.execute("BEGIN")
        for i in range(count):
            key = f"user:{i:06d}"
            tags = {"type": "web" if i % 100 == 0 else "api", "shard": str(i % 7)}
            value = orjson.dumps({"index": i, "name": f"n{i}"}).decode()
            labels = orjson.dumps(tags, option=orjson.OPT_SORT_KEYS).decode()
            conn.execute(
                "INSERT INTO kv VALUES (?, ?, ?, ?, ?, ?, NULL)", (namespace, key, value, labels, now, now + i)
            )
            conn.executemany(
                "INSERT INTO kv_tags VALUES (?, ?, ?, ?)", [(namespace, n, v, key) for n, v in tags.items()]
            )
        conn.execute("COMMIT")
    conn.close()


async def scaling(base: Path, scales: tuple[int, ...]) -> list[str]:
    """One line per size: tag queries, count, scan time, scan peak memory."""
    lines = []
    base.mkdir(parents=True, exist_ok=True)
    for count in scales:
        path = base / f"n{count}.db"
        async with SqliteStorage({"db_path": path}):
            pass  # the schema
        await asyncio.to_thread(_fill, path, "big", count)
        async with SqliteStorage({"db_path": path}) as storage:
            kv = storage.kv("big")
            web = {"type": "web"}
            await kv.query(tags=web, limit=10)  # warm the page cache
            query_s, hits = await timed(kv.query(tags=web, limit=10))
            assert len(hits) == min(10, -(-count // 100))
            updated_s, hits = await timed(kv.query(tags=web, order_by="updated_at", limit=10))
            assert len(hits) == min(10, -(-count // 100))
            count_s, counted = await timed(kv.count_query(tags=web))
            assert counted == -(-count // 100)
            scan_s, peak, seen = await timed_scan(kv)
            assert seen == count
        lines.append(
            f"{count:>7,} entries: query(tags=..., limit=10) {query_s * 1000:,.2f} ms; "
            f"same in updated_at order {updated_s * 1000:,.2f} ms; count_query(tags=...) {count_s * 1000:,.2f} ms; "
            f"scan() {scan_s:,.2f} s ({count / scan_s:,.0f} entries/s); scan peak {peak / 1024:,.0f} KiB"
        )
    return lines
