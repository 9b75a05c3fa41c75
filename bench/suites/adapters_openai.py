"""The OpenAI Agents SDK session: ConnectomeSession on SQLite against the SDK's own SQLiteSession.

A section of ``python -m bench``; alone: ``python -m bench.suites.adapters_openai [--smoke]``.
The adapter needs the SDK itself, so without it (a smoke run without peers) the section
only says so.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from connectome_storage import create_sqlite_storage

from ..context import FULL, SMOKE, Context
from ..harness import Section, Variant, compare, each

__all__ = ["run"]

INTRO = """\
`ConnectomeSession.add_items` (one item per call: a turn's message) and `get_items()` of a
100-item history on SQLite, against the SDK's `SQLiteSession` on a file database in the
same run. Ratios against SQLiteSession."""

HISTORY = 100


def _item(i: int) -> Any:
    return {"role": "user", "content": f"message {i}: " + "x" * 200}


async def run(ctx: Context) -> Section:
    section = Section("adapters_openai", "OpenAI Agents session on SQLite against SQLiteSession", INTRO)
    if ctx.peer("agents") is None:
        section.notes.append("openai-agents is not installed: the adapter and its peer were skipped (smoke run).")
        return section
    from agents.memory.sqlite_session import SQLiteSession

    from connectome_storage.adapters.openai_agents import ConnectomeSession

    sizes = ctx.sizes
    root = ctx.folder("adapters_openai")
    async with create_sqlite_storage(root / "ours.db") as storage:
        ours_add, ours_get = ConnectomeSession("add", storage), ConnectomeSession("get", storage)
        sdk_add = SQLiteSession("add", root / "sdk.db")
        sdk_get = SQLiteSession("get", root / "sdk.db")
        await ours_get.add_items([_item(i) for i in range(HISTORY)])
        await sdk_get.add_items([_item(i) for i in range(HISTORY)])

        async def add_ours(i: int) -> None:
            await ours_add.add_items([_item(i)])

        async def add_sdk(i: int) -> None:
            await sdk_add.add_items([_item(i)])

        async def get_ours(i: int) -> None:
            assert len(await ours_get.get_items()) == HISTORY

        async def get_sdk(i: int) -> None:
            assert len(await sdk_get.get_items()) == HISTORY

        section.comparisons.append(
            await compare(
                "adapters_openai.add_items",
                "add one item",
                [
                    Variant("SQLiteSession.add_items", each(add_sdk)),
                    Variant("ConnectomeSession (SQLite)", each(add_ours)),
                ],
                ops=sizes.writes,
                repeats=sizes.repeats,
                warmup=5,
            )
        )
        section.comparisons.append(
            await compare(
                "adapters_openai.get_items",
                f"get a {HISTORY}-item history",
                [
                    Variant("SQLiteSession.get_items", each(get_sdk)),
                    Variant("ConnectomeSession (SQLite)", each(get_ours)),
                ],
                ops=sizes.reads,
                repeats=sizes.repeats,
                warmup=5,
            )
        )
        sdk_add.close()
        sdk_get.close()
    return section


async def _main(smoke: bool) -> None:
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as scratch:
        ctx = Context(sizes=SMOKE if smoke else FULL, smoke=smoke, tmp=Path(scratch), redis_url="")
        section = await run(ctx)
        for comparison in section.comparisons:
            for figure in comparison.figures:
                ratio = f"ratio {figure.ratio:.2f}x" if figure.ratios else "baseline"
                print(f"{comparison.key}: {figure.name}: {figure.median * 1e6:,.0f} us/op, {ratio}")


if __name__ == "__main__":
    asyncio.run(_main("--smoke" in sys.argv[1:]))
