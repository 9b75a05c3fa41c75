"""A 5-write transaction against the same five writes done one by one, per backend."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

import orjson

from connectome_storage import StorageInterface

from ..backends import open_storage
from ..context import Context
from ..data import COMPACT, PRETTY, durable_write, fsync_folder, write_synced
from ..harness import Comparison, Section, Variant, compare, each

__all__ = ["BACKENDS", "run"]

# The backends this section measures (each backend's transaction work adds itself here).
BACKENDS: tuple[str, ...] = ("file", "sqlite", "redis", "postgres")

INTRO = """\
One agent turn written five times over: a conversation document, a one-message append to
its raw history, a memory, a system state and a key-value entry (each value about 300
bytes), default (durable) settings, turn after turn over 20 conversations (so each
history grows by one message every 20 turns). The baseline does the five writes one by one, each
durable on its own; the variant does the same five inside `storage.transaction()`, which
commits them all or none (on the file tree: five temp files, one intent journal, the
renames; on SQLite one `BEGIN IMMEDIATE ... COMMIT`; on Redis one `MULTI/EXEC`; on
PostgreSQL the transaction's connection locks each entity, then one `BEGIN ... COMMIT`). Figures
are the median time of one whole turn; the ratio is the transaction's cost against the five
separate writes (below 1: the transaction is cheaper). On the file tree a log appended to
inside a transaction is rewritten whole (outside, an append goes in place), so the
transaction's cost grows with the history's length where the separate append's does not.

`transactions.file.plain` is the file tree's floor: the same five writes into a plain folder
tree (a conversation folder with `current.json`, its raw history and its memories file; a
system-state folder; a key-value folder) by the plainest code, one `asyncio.to_thread` per
turn. The baseline replaces each file durably (temp, fsync, rename, fsync of the folder) and
appends the history line in place (`O_APPEND`, fsync); the variant is the bare
all-or-nothing protocol of the tree's transactions (a fsynced temp per file, the log
rewritten whole, a journal fsynced and renamed into place with its folder fsynced, the
renames, one fsync per touched folder, the journal removed), with no lock, no hash and no
backup. Its ratio is what any journaled commit costs against the separate writes here."""


async def _five_writes(storage: StorageInterface, conversation_id: str, i: int) -> None:
    value = {"round": i, "text": "x" * 300}
    await storage.store_conversation(conversation_id, value)
    await storage.append_raw_messages(conversation_id, [{"role": "user", "round": i, "content": "y" * 300}])
    await storage.store_memory(conversation_id, "m", value)
    await storage.store_system_state(f"state-{conversation_id}", value)
    await storage.kv("turns").set(conversation_id, value)


def _encoded(conversation_id: str, i: int) -> tuple[bytes, bytes, bytes, bytes, bytes]:
    """What ``_five_writes`` stores, as a plain script would encode it: the conversation,
    one history line, the memories file, the system state, the key-value entry."""
    value = {"round": i, "text": "x" * 300}
    message = {"role": "user", "round": i, "content": "y" * 300}
    return (
        orjson.dumps(value, option=PRETTY),
        orjson.dumps(message, option=COMPACT),
        orjson.dumps([{"memory_id": "m", **value}], option=PRETTY),
        orjson.dumps(value, option=PRETTY),
        orjson.dumps({"key": conversation_id, "value": value}, option=PRETTY),
    )


def _plain_targets(root: Path, conversation_id: str) -> tuple[Path, Path, Path, Path, Path]:
    """The five files of one turn in the plain tree, in ``_encoded``'s order."""
    conversation = root / "conversations" / conversation_id
    return (
        conversation / "current.json",
        conversation / "raw_messages.jsonl",
        conversation / "memories.json",
        root / "system" / f"state-{conversation_id}.json",
        root / "kv" / "turns" / f"{conversation_id}.json",
    )


def plain_five_writes(root: Path, conversation_id: str, i: int) -> None:
    """The five writes one by one, each durable on its own: four files replaced with
    ``durable_write``, the history line appended in place and fsynced."""
    targets = _plain_targets(root, conversation_id)
    data = _encoded(conversation_id, i)
    for index, (path, content) in enumerate(zip(targets, data, strict=True)):
        if index == 1:
            write_synced(path, content, append=True)
        else:
            durable_write(path, content)


def plain_journaled_commit(root: Path, conversation_id: str, i: int) -> None:
    """The same five as one all-or-nothing commit, the file tree's protocol and nothing
    more (connectome_storage/backends/_file_tx.py): a fsynced temp per file (the log
    rewritten whole), a journal naming the temps, fsynced and renamed into place with its
    folder fsynced (the commit point), the renames, one fsync per touched folder, the
    journal removed. No lock, no hash, no backup."""
    targets = _plain_targets(root, conversation_id)
    data = list(_encoded(conversation_id, i))
    log = targets[1]
    with contextlib.suppress(FileNotFoundError):
        data[1] = log.read_bytes() + data[1]
    temps = [path.with_name(f".{path.name}.tx-{i}") for path in targets]
    for temp, content in zip(temps, data, strict=True):
        write_synced(temp, content)
    journals = root / ".transactions"
    pending, journal = journals / f".tmp-{i}", journals / f"{i}.json"
    write_synced(pending, orjson.dumps([str(temp.relative_to(root)) for temp in temps]))
    os.replace(pending, journal)
    fsync_folder(journals)
    for temp, path in zip(temps, targets, strict=True):
        os.replace(temp, path)
    for folder in dict.fromkeys(path.parent for path in targets):
        fsync_folder(folder)
    os.unlink(journal)


async def run(ctx: Context) -> Section:
    sizes = ctx.sizes
    section = Section("transactions", "Transactions", INTRO)
    for backend in BACKENDS:
        storage = await open_storage(ctx, backend, f"transactions-{backend}")

        async def one_by_one(i: int, storage: StorageInterface = storage) -> None:
            await _five_writes(storage, f"separate-{i % sizes.keys}", i)

        async def in_a_transaction(i: int, storage: StorageInterface = storage) -> None:
            async with storage.transaction() as tx:
                await _five_writes(tx, f"transaction-{i % sizes.keys}", i)

        section.comparisons.append(
            await _compare_turns(
                ctx,
                f"transactions.{backend}",
                f"{backend}: five writes of one turn",
                Variant("5 writes one by one", each(one_by_one)),
                Variant("one transaction", each(in_a_transaction)),
            )
        )
        await storage.shutdown()
        if backend == "file":
            section.comparisons.append(await _file_floor(ctx))
    return section


async def _file_floor(ctx: Context) -> Comparison:
    """``transactions.file`` done by the plainest code: the floor of its target."""
    sizes = ctx.sizes
    root = ctx.folder("transactions-plain")
    for prefix in ("separate", "transaction"):
        for n in range(sizes.keys):
            for path in _plain_targets(root, f"{prefix}-{n}"):
                path.parent.mkdir(parents=True, exist_ok=True)
    (root / ".transactions").mkdir(exist_ok=True)

    async def one_by_one(i: int) -> None:
        await asyncio.to_thread(plain_five_writes, root, f"separate-{i % sizes.keys}", i)

    async def journaled(i: int) -> None:
        await asyncio.to_thread(plain_journaled_commit, root, f"transaction-{i % sizes.keys}", i)

    return await _compare_turns(
        ctx,
        "transactions.file.plain",
        "file, plain code: five writes of one turn",
        Variant("5 plain durable writes one by one", each(one_by_one)),
        Variant("the same five as one journaled commit (plain)", each(journaled)),
    )


async def _compare_turns(ctx: Context, key: str, title: str, separate: Variant, together: Variant) -> Comparison:
    """Turns written one way and the other: the cost of ``together`` against ``separate``."""
    sizes = ctx.sizes
    return await compare(
        key, title, [separate, together], ops=sizes.writes, repeats=sizes.repeats, warmup=sizes.writes,
        ratio_kind="cost",
    )  # fmt: skip
