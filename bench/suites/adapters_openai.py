"""The OpenAI Agents SDK session: ConnectomeSession on SQLite against the SDK's own SQLiteSession.

A section of ``python -m bench`` (alone: ``python -m bench --only adapters_openai [--smoke]``).
The adapter needs the SDK itself, so without it (a smoke run without peers) the section
only says so.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from connectome_storage import create_redis_storage, create_sqlite_storage

from ..context import Context
from ..floors import PlainLog
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

    root = ctx.folder("adapters_openai")
    async with create_sqlite_storage(root / "ours.db") as storage:
        sdk: list[Any] = [SQLiteSession(name, root / "sdk.db") for name in ("add", "get")]
        ours = [ConnectomeSession(name, storage) for name in ("add", "get")]
        floor = PlainLog(root / "floor.db")
        section.comparisons += await _compare(ctx, "adapters_openai", "SQLiteSession", "SQLite", sdk, ours, floor)
        floor.close()
        for session in sdk:
            session.close()
    if ctx.redis_url:
        import redis.asyncio
        from agents.extensions.memory.redis_session import RedisSession

        client: Any = redis.asyncio.Redis.from_url(ctx.redis_url)
        async with create_redis_storage(ctx.redis_url, key_prefix="bench:adapters-ours:") as storage:
            sdk = [RedisSession(name, redis_client=client, key_prefix="bench:adapters-sdk") for name in ("add", "get")]
            ours = [ConnectomeSession(name, storage) for name in ("add", "get")]
            section.comparisons += await _compare(ctx, "adapters_openai.redis", "RedisSession", "Redis", sdk, ours)
            for session in [*sdk, *ours]:
                await session.clear_session()
        await client.aclose()
    return section


async def _compare(
    ctx: Context, key: str, peer: str, backend: str, sdk: list[Any], ours: list[Any], floor: PlainLog | None = None
) -> list[Any]:
    """add_items and get_items of ours against the SDK's session; each list is (add, get).
    ``floor``: also time one INSERT + COMMIT of the item at the same durability."""
    sizes = ctx.sizes
    (sdk_add, sdk_get), (ours_add, ours_get) = sdk, ours
    for session in (sdk_get, ours_get):
        await session.add_items([_item(i) for i in range(HISTORY)])

    def adder(session: Any) -> Any:
        async def add(i: int) -> None:
            await session.add_items([_item(i)])

        return add

    def getter(session: Any) -> Any:
        async def get(i: int) -> None:
            assert len(await session.get_items()) == HISTORY

        return get

    adds = [
        Variant(f"{peer}.add_items", each(adder(sdk_add))),
        Variant(f"ConnectomeSession ({backend})", each(adder(ours_add))),
    ]
    if floor is not None:

        async def floor_add(i: int) -> None:
            await asyncio.to_thread(floor.commit, orjson.dumps(_item(i)).decode())

        adds.append(Variant("one INSERT + COMMIT in asyncio.to_thread", each(floor_add), "floor"))
    gets = [
        Variant(f"{peer}.get_items", each(getter(sdk_get))),
        Variant(f"ConnectomeSession ({backend})", each(getter(ours_get))),
    ]
    return [
        await compare(f"{key}.add_items", f"add one item ({backend})", adds, ops=sizes.writes, repeats=sizes.repeats,
                      warmup=5),
        await compare(f"{key}.get_items", f"get a {HISTORY}-item history ({backend})", gets, ops=sizes.reads,
                      repeats=sizes.repeats, warmup=5),
    ]  # fmt: skip
