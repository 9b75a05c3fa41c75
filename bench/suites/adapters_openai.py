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

from connectome_storage import create_redis_storage, create_sqlite_storage

from ..context import FULL, SMOKE, Context
from ..harness import Section, Variant, compare, each

__all__ = ["run"]

INTRO = """\
`ConnectomeSession.add_items` (one item per call: a turn's message) and `get_items()` of a
100-item history on SQLite, against the SDK's `SQLiteSession` on a file database, and on
Redis, against the SDK's `RedisSession` on the same server, in the same run. Ratios
against the SDK's sessions."""

HISTORY = 100


def _item(i: int) -> Any:
    return {"role": "user", "content": f"message {i}: " + "x" * 200}


async def run(ctx: Context) -> Section:
    section = Section(
        "adapters_openai", "OpenAI Agents session against SQLiteSession (SQLite) and RedisSession (Redis)", INTRO
    )
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
    if ctx.redis_url:
        section.comparisons += await _on_redis(ctx, ConnectomeSession)
    return section


async def _on_redis(ctx: Context, session_class: Any) -> list[Any]:
    """ConnectomeSession on RedisStorage against the SDK's RedisSession, on the same server."""
    import redis.asyncio
    from agents.extensions.memory.redis_session import RedisSession

    sizes = ctx.sizes
    client: Any = redis.asyncio.Redis.from_url(ctx.redis_url)
    comparisons = []
    async with create_redis_storage(ctx.redis_url, key_prefix="bench:adapters-ours:") as storage:
        ours_add, ours_get = session_class("add", storage), session_class("get", storage)
        sdk_add = RedisSession("add", redis_client=client, key_prefix="bench:adapters-sdk")
        sdk_get = RedisSession("get", redis_client=client, key_prefix="bench:adapters-sdk")
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

        for key, what, variants, ops in [
            ("adapters_openai.redis.add_items", "add one item, Redis",
             [Variant("RedisSession.add_items", each(add_sdk)), Variant("ConnectomeSession (Redis)", each(add_ours))],
             sizes.writes),
            ("adapters_openai.redis.get_items", f"get a {HISTORY}-item history, Redis",
             [Variant("RedisSession.get_items", each(get_sdk)), Variant("ConnectomeSession (Redis)", each(get_ours))],
             sizes.reads),
        ]:  # fmt: skip
            comparisons.append(await compare(key, what, variants, ops=ops, repeats=sizes.repeats, warmup=5))
        await sdk_add.clear_session()
        await sdk_get.clear_session()
        await ours_add.clear_session()
        await ours_get.clear_session()
    await client.aclose()
    return comparisons


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
