"""FileStorage store/load against the plain way to do it, and py-key-value's FileTreeStore."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from connectome_storage import create_file_storage
from connectome_storage.config import FileSettings

from ..context import Context
from ..data import PRETTY, document, durable_write
from ..floors import durable_write_with_backup
from ..harness import Section, Variant, compare, each, each_sync

__all__ = ["run"]

INTRO = """\
`store_conversation` of a 2 KB document with the default settings (pretty JSON,
backups kept, per-entity lock, durable atomic write in one worker thread) against the
plain synchronous durable write of the same bytes (`orjson.dumps` with the same options,
temp file, write, fsync, `os.replace`, fsync of the folder, on the event loop's thread)
and against py-key-value's `FileTreeStore.put` (aiofile writes, fsync of the file,
rename; it does not fsync the folder, so a crash can lose the rename: less durable).
`load_conversation` against `open().read()` + `orjson.loads`, and `FileTreeStore.get`.
Writes cycle over a few conversation ids; every write holds different bytes."""


async def run(ctx: Context) -> Section:
    sizes = ctx.sizes
    root = ctx.folder("files")
    ids = [f"conv_{i:03d}" for i in range(sizes.keys)]
    section = Section("files", "FileStorage against a plain durable write and FileTreeStore", INTRO)

    storage = create_file_storage(root / "ours")
    await storage.initialize()
    bare = create_file_storage(root / "ours-no-backups", create_backups=False)
    await bare.initialize()
    plain, plain_kept = root / "plain", root / "plain-with-backups"
    for conversation_id in ids:
        (plain / conversation_id).mkdir(parents=True, exist_ok=True)
        (plain_kept / conversation_id / "backups").mkdir(parents=True, exist_ok=True)
    keep = FileSettings().max_backup_files
    filetree = ctx.peer("kv")
    kv: Any = None
    if filetree is not None:
        kv = filetree.FileTreeStore(data_directory=root / "kv")
    else:
        section.notes.append("py-key-value-aio is not installed: FileTreeStore was skipped (smoke run).")

    async def ours_store(i: int) -> None:
        await storage.store_conversation(ids[i % len(ids)], document(i))

    async def bare_store(i: int) -> None:
        await bare.store_conversation(ids[i % len(ids)], document(i))

    def plain_store(i: int) -> None:
        conversation_id = ids[i % len(ids)]
        durable_write(plain / conversation_id / "current.json", orjson.dumps(document(i), option=PRETTY))

    async def kv_put(i: int) -> None:
        await kv.put(ids[i % len(ids)], document(i), collection="conversations")

    async def plain_store_thread(i: int) -> None:
        await asyncio.to_thread(plain_store, i)

    async def plain_kept_thread(i: int) -> None:
        folder = plain_kept / ids[i % len(ids)]
        data = orjson.dumps(document(i), option=PRETTY)
        await asyncio.to_thread(durable_write_with_backup, folder / "current.json", data, folder / "backups", keep)

    writers = [
        Variant("plain durable write (sync)", each_sync(plain_store)),
        Variant("FileStorage.store_conversation", each(ours_store)),
        Variant("FileStorage.store_conversation, no backups", each(bare_store), "create_backups=False"),
        # What any asyncio library pays at least: the same write, one thread hop away.
        Variant(
            "plain durable write in asyncio.to_thread", each(plain_store_thread), "floor without blocking the loop"
        ),
        # The same with the work of backups on: the floor of a store at default settings.
        Variant(
            "plain durable write with a backup, in asyncio.to_thread",
            each(plain_kept_thread),
            f"floor with backups: a hard link kept, {keep} at most",
        ),
    ]
    if kv is not None:
        writers.append(Variant("FileTreeStore.put", each(kv_put), "no folder fsync"))
    section.comparisons.append(
        await compare(
            "files.store",
            "store a 2 KB conversation document (durable)",
            writers,
            ops=sizes.writes,
            repeats=sizes.repeats,
            warmup=len(ids),
        )
    )

    # Every id now exists in every store (the warmup wrote each one).
    async def ours_load(i: int) -> None:
        assert await storage.load_conversation(ids[i % len(ids)]) is not None

    def plain_load(i: int) -> None:
        with open(plain / ids[i % len(ids)] / "current.json", "rb") as f:
            orjson.loads(f.read())

    async def kv_get(i: int) -> None:
        assert await kv.get(ids[i % len(ids)], collection="conversations") is not None

    readers = [
        Variant("plain read + orjson.loads (sync)", each_sync(plain_load)),
        Variant("FileStorage.load_conversation", each(ours_load)),
    ]
    if kv is not None:
        readers.append(Variant("FileTreeStore.get", each(kv_get)))
    section.comparisons.append(
        await compare(
            "files.load",
            "load a 2 KB conversation document",
            readers,
            ops=sizes.reads,
            repeats=sizes.repeats,
            warmup=len(ids),
        )
    )
    await storage.shutdown()
    await bare.shutdown()
    return section
