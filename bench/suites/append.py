"""Appending one message to histories of 100, 1,000 and 10,000 messages, every backend:
the raw history, and the conversation store (which also updates the metadata)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from ..backends import BACKENDS, open_storage
from ..context import Context
from ..data import message, messages
from ..harness import Runner, Section, Variant, compare, time_each

__all__ = ["run"]

INTRO = """\
`append_raw_messages` of one 500-byte message to a history that already holds 100, 1,000
or 10,000 messages, default settings. Each round appends to a history of its own, built
beforehand with `store_raw_messages` plus one append (so the file backend's journal is
in its steady state), so the history grows only by the appends of one batch. Figures
are the median append; the ratio is the cost against the shortest history
(target: at most 3x at 10,000). The `store.append` rows do the same through
`conversation_store().append` on histories saved with `store.save`: the metadata's
count and time change with every append, and the history is never read."""


async def run(ctx: Context) -> Section:
    sizes = ctx.sizes
    section = Section("append", "Appending to a long history", INTRO)
    rounds = sizes.repeats + 1  # one history per round, and one for the warmup batch
    for backend in BACKENDS:
        storage = await open_storage(ctx, backend, f"append-{backend}")
        store = storage.conversation_store()
        kinds: list[tuple[str, str, Callable[[str, list[dict[str, Any]]], Awaitable[Any]], Any]] = [
            ("append", "append one message", storage.append_raw_messages, storage.store_raw_messages),
            ("store.append", "conversation store: append one message", store.append, store.save),
        ]
        for prefix, title, append, replace in kinds:
            variants = []
            for size in sizes.histories:
                pool = [f"{prefix}{size}_{k}" for k in range(rounds)]
                for conversation_id in pool:
                    await replace(conversation_id, messages(size - 1))
                    await append(conversation_id, [message(size - 1)])
                variants.append(Variant(f"history {size:,}", _appender(append, pool, size)))
            section.comparisons.append(
                await compare(
                    f"{prefix}.{backend}",
                    f"{backend}: {title}",
                    variants,
                    ops=sizes.appends,
                    repeats=sizes.repeats,
                    warmup=sizes.appends,
                    ratio_kind="cost",
                )
            )
        await storage.shutdown()
    return section


def _appender(append_to: Callable[[str, list[dict[str, Any]]], Awaitable[Any]], pool: list[str], size: int) -> Runner:
    histories = iter(pool)

    async def run(first: int, count: int) -> list[float]:
        conversation_id = next(histories)  # a fresh history of exactly ``size`` messages

        async def append(i: int) -> None:
            await append_to(conversation_id, [message(size + i)])

        return await time_each(append, first, count)

    return run
