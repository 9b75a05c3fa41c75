"""A 5-write transaction against the same five writes done one by one, per backend."""

from __future__ import annotations

from connectome_storage import StorageInterface

from ..backends import open_storage
from ..context import Context
from ..harness import Section, Variant, compare, each

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
transaction's cost grows with the history's length where the separate append's does not."""


async def _five_writes(storage: StorageInterface, conversation_id: str, i: int) -> None:
    value = {"round": i, "text": "x" * 300}
    await storage.store_conversation(conversation_id, value)
    await storage.append_raw_messages(conversation_id, [{"role": "user", "round": i, "content": "y" * 300}])
    await storage.store_memory(conversation_id, "m", value)
    await storage.store_system_state(f"state-{conversation_id}", value)
    await storage.kv("turns").set(conversation_id, value)


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
            await compare(
                f"transactions.{backend}",
                f"{backend}: five writes of one turn",
                [
                    Variant("5 writes one by one", each(one_by_one)),
                    Variant("one transaction", each(in_a_transaction)),
                ],
                ops=sizes.writes,
                repeats=sizes.repeats,
                warmup=sizes.writes,
                ratio_kind="cost",
            )
        )
        await storage.shutdown()
    return section
