"""Key-value collections on the file tree: kv.set/get against py-key-value's FileTreeStore,
and how queries and scans of one namespace scale (1k, 10k, 100k entries)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from connectome_storage import create_file_storage
from connectome_storage.backends._file_kv import entry_bytes
from connectome_storage.kv import KVRecord
from connectome_storage.naming import encode_name

from ..context import Context
from ..data import durable_write
from ..harness import Section, Variant, compare, each
from .kv_scan import timed, timed_scan

__all__ = ["run", "scaling"]

INTRO = """\
`kv.set` and `kv.get` of a 1 KB value on the file tree (one canonical JSON file per entry,
per-entry lock, backup of the replaced version, durable atomic write: temp file, fsync,
replace, fsync of the folder) against py-key-value's `FileTreeStore.put`/`get` (aiofile,
fsync of the file, rename, no folder fsync). Ratios against FileTreeStore in the same run.
The scaling figures time `query(tags=..., limit=10)` (reads every file of the namespace)
and a whole `scan()` (reads each file once, listing the folder once per batch of 256), and
measure the peak of Python allocations of a second scan with tracemalloc."""

SCALES_FULL = (1_000, 10_000, 100_000)
SCALES_SMOKE = (100, 300)


def _value(i: int) -> dict[str, Any]:
    return {"index": i, "text": "x" * 1000}


async def run(ctx: Context) -> Section:
    sizes = ctx.sizes
    root = ctx.folder("kv_file")
    keys = [f"user:{i:03d}" for i in range(sizes.keys)]
    section = Section("kv_file", "Key-value entries on the file tree against FileTreeStore", INTRO)
    storage = create_file_storage(root / "ours")
    await storage.initialize()
    kv = storage.kv("sessions")
    bare = create_file_storage(root / "ours-no-backups", create_backups=False)
    await bare.initialize()
    plain = root / "plain"
    plain.mkdir(parents=True, exist_ok=True)
    peer = ctx.peer("kv")
    tree: Any = peer.FileTreeStore(data_directory=root / "filetree") if peer is not None else None
    if tree is None:
        section.notes.append("py-key-value-aio is not installed: FileTreeStore was skipped (smoke run).")

    async def ours_set(i: int) -> None:
        await kv.set(keys[i % len(keys)], _value(i), tags={"type": "web"})

    async def tree_put(i: int) -> None:
        await tree.put(keys[i % len(keys)], _value(i), collection="sessions")

    async def bare_set(i: int) -> None:
        await bare.kv("sessions").set(keys[i % len(keys)], _value(i), tags={"type": "web"})

    async def plain_set_thread(i: int) -> None:
        # The floor: the same entry's bytes written durably (temp, fsync, replace, folder
        # fsync) in one thread hop, with no lock, no read of the old entry, no backup.
        record = KVRecord(keys[i % len(keys)], _value(i), {"type": "web"}, 0, 0, None)
        path = plain / f"{encode_name(record.key)}.json"
        await asyncio.to_thread(durable_write, path, entry_bytes(record, True))

    async def ours_get(i: int) -> None:
        assert await kv.get(keys[i % len(keys)]) is not None

    async def tree_get(i: int) -> None:
        assert await tree.get(keys[i % len(keys)], collection="sessions") is not None

    if tree is not None:  # a comparison needs its baseline
        setters = [
            Variant("FileTreeStore.put", each(tree_put), "no folder fsync"),
            Variant("kv.set (file tree)", each(ours_set)),
            Variant("kv.set, no backups", each(bare_set), "create_backups=False"),
            Variant("plain durable write in asyncio.to_thread", each(plain_set_thread), "the floor: no lock"),
        ]
        getters = [Variant("FileTreeStore.get", each(tree_get)), Variant("kv.get (file tree)", each(ours_get))]
        section.comparisons.append(
            await compare(
                "kv_file.set", "store a 1 KB value", setters, ops=sizes.writes, repeats=sizes.repeats, warmup=len(keys)
            )
        )
        section.comparisons.append(
            await compare(
                "kv_file.get", "load a 1 KB value", getters, ops=sizes.reads, repeats=sizes.repeats, warmup=len(keys)
            )
        )
    await storage.shutdown()
    await bare.shutdown()
    for line in await scaling(root / "scale", SCALES_SMOKE if ctx.smoke else SCALES_FULL):
        section.notes.append(line)
    return section


def _fill(base: Path, namespace: str, count: int) -> None:
    """Write ``count`` entries straight into the tree (the bytes kv.set writes, without a
    durable write each: the point is the size of the folder, not how it was filled)."""
    folder = base / "kv" / encode_name(namespace)
    folder.mkdir(parents=True, exist_ok=True)
    now = round(time.time() * 1000)
    for i in range(count):
        key = f"user:{i:06d}"
        tags = {"type": "web" if i % 100 == 0 else "api", "shard": str(i % 7)}
        record = KVRecord(key, {"index": i, "name": f"n{i}"}, tags, now, now + i, None)
        (folder / f"{encode_name(key)}.json").write_bytes(entry_bytes(record, True))


async def scaling(base: Path, scales: tuple[int, ...]) -> list[str]:
    """One line per size: query by tag, count, scan time, scan peak memory."""
    lines = []
    for count in scales:
        tree = base / f"n{count}"
        await asyncio.to_thread(_fill, tree, "big", count)
        async with create_file_storage(tree) as storage:
            kv = storage.kv("big")
            query_s, hits = await timed(kv.query(tags={"type": "web"}, limit=10))
            assert len(hits) == min(10, -(-count // 100))
            page_s, page = await timed(kv.query(prefix="user:0", limit=10))
            assert len(page) == 10
            scan_s, peak, seen = await timed_scan(kv)
            assert seen == count
        lines.append(
            f"{count:>7,} entries: query(tags=..., limit=10) {query_s * 1000:,.0f} ms; "
            f"query(prefix=..., limit=10) {page_s * 1000:,.1f} ms; "
            f"scan() {scan_s:,.2f} s ({count / scan_s:,.0f} entries/s); scan peak {peak / 1024:,.0f} KiB"
        )
    return lines
