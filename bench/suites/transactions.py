"""Transactions: a turn of an agent (five writes) in one transaction against the same five
writes one by one, per backend."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from connectome_storage import StorageInterface, create_sqlite_storage

from ..context import Context
from ..harness import Section, Variant, compare, each

__all__ = ["BACKENDS", "run"]

INTRO = """\
One turn of an agent: a 300-byte conversation document, one raw message appended, one
memory, one system state and one key-value entry. The baseline makes the five writes one
by one (five durable commits); the other variant makes them in `storage.transaction()`
(one commit of all five, all or nothing). Each backend at its default durability; the
ratio is the speed of the transaction against the five writes."""

# The backends this section runs: name -> a storage over a fresh place under ``root``.
BACKENDS: dict[str, Callable[[Path], StorageInterface]] = {
    "sqlite": lambda root: create_sqlite_storage(root / "transactions.db"),
}


async def five_writes(storage: StorageInterface, i: int) -> None:
    """The turn: each write to an entity of its own kind, ``i`` making every value new."""
    await storage.store_conversation("doc", {"turn": i, "pad": "x" * 300})
    await storage.append_raw_messages("doc", [{"role": "user", "content": f"message {i}"}])
    await storage.store_memory("doc", "summary", {"turn": i})
    await storage.store_system_state("agent-state", {"turn": i})
    await storage.kv("sessions").set("s1", {"turn": i})


def one_by_one(storage: StorageInterface) -> Callable[[int], Awaitable[None]]:
    async def op(i: int) -> None:
        await five_writes(storage, i)

    return op


def in_a_transaction(storage: StorageInterface) -> Callable[[int], Awaitable[None]]:
    async def op(i: int) -> None:
        async with storage.transaction() as tx:
            await five_writes(tx, i)

    return op


async def run(ctx: Context) -> Section:
    sizes = ctx.sizes
    section = Section("transactions", "Five writes in one transaction against one by one", INTRO)
    for name, build in BACKENDS.items():
        storage = build(ctx.folder(f"transactions-{name}"))
        await storage.initialize()
        try:
            section.comparisons.append(
                await compare(
                    f"transactions.{name}",
                    f"{name}: a turn of five writes (document, message, memory, system state, kv entry)",
                    [
                        Variant("five writes one by one", each(one_by_one(storage)), "five commits"),
                        Variant("storage.transaction()", each(in_a_transaction(storage)), "one commit"),
                    ],
                    ops=sizes.writes,
                    repeats=sizes.repeats,
                    warmup=sizes.keys,
                )
            )
        finally:
            await storage.shutdown()
    return section
