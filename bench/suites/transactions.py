"""Transactions: one agent turn of five writes (a conversation document, a raw message
append, a memory, a system state, a key-value entry) as one transaction, against the same
five writes made one by one, per backend."""

from __future__ import annotations

from connectome_storage import StorageInterface

from ..backends import open_storage
from ..context import Context
from ..harness import Section, Variant, compare, each

__all__ = ["BACKENDS", "run"]

# Each backend's helper adds its own name here.
BACKENDS = ("redis", "sqlite")

INTRO = """\
One agent turn writes five things: the conversation document, one raw message appended to
its history, a memory, a system state and a key-value entry. "one by one" makes the five
calls on the storage, each its own durable write; "one transaction" makes them inside
`async with storage.transaction() as tx:`, which reads nothing back and commits them at
once (Redis: the keys of every entity touched are WATCHed on a connection of the
transaction's own, then all five scripts go as one MULTI/EXEC). A ratio over 1 means the
transaction is faster than the five separate writes."""


async def _turn(storage: StorageInterface, i: int) -> None:
    conversation = f"c{i % 20}"
    await storage.store_conversation(conversation, {"turn": i, "title": "a conversation"})
    await storage.append_raw_messages(conversation, [{"role": "user", "content": f"message {i}"}])
    await storage.store_memory(conversation, "m1", {"turn": i, "text": "a memory"})
    await storage.store_system_state("agent-state", {"turn": i})
    await storage.kv("sessions").set(f"s{i % 20}", {"turn": i})


async def run(ctx: Context) -> Section:
    section = Section("transactions", "Five writes in one transaction against the same five one by one", INTRO)
    sizes = ctx.sizes
    for backend in BACKENDS:
        storage = await open_storage(ctx, backend, f"transactions-{backend}")

        async def one_by_one(i: int, storage: StorageInterface = storage) -> None:
            await _turn(storage, i)

        async def in_a_transaction(i: int, storage: StorageInterface = storage) -> None:
            async with storage.transaction() as tx:
                await _turn(tx, i)

        variants = [Variant("one by one", each(one_by_one)), Variant("one transaction", each(in_a_transaction))]
        section.comparisons.append(
            await compare(
                f"transactions.{backend}",
                f"{backend}: five writes of one agent turn",
                variants,
                ops=sizes.writes,
                repeats=sizes.repeats,
                warmup=sizes.keys,
            )
        )
        await storage.shutdown()
    return section
