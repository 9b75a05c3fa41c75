"""RedisStorage against raw redis-py sending the commands a user would send by hand."""

from __future__ import annotations

from typing import Any

import orjson
import redis.asyncio

from ..backends import open_storage
from ..context import Context
from ..data import cache_value, document, message, messages
from ..harness import Section, Variant, compare, each

__all__ = ["run"]

INTRO = """\
RedisStorage (one Lua script per write: the value and its listing index change in one
atomic round trip; plain GET/LRANGE for reads; values checked and encoded with orjson)
against a `redis.asyncio.Redis` with its defaults sending the plain command for the same
data: SET, GET + `orjson.loads`, RPUSH, LRANGE + `orjson.loads` per item, SET PX. Both
talk to the same redis-server on 127.0.0.1 (no persistence), started by the bench."""


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


async def run(ctx: Context) -> Section:
    sizes = ctx.sizes
    section = Section("redis", "RedisStorage against raw redis-py", INTRO)
    ours = await open_storage(ctx, "redis", "redis-ours")
    raw: Any = redis.asyncio.Redis.from_url(ctx.redis_url)
    prefix = "bench:redis-raw:"
    ids = [f"conv_{i:03d}" for i in range(sizes.keys)]
    history = sizes.session_histories[0]
    await ours.store_raw_messages("history", messages(history))
    await raw.rpush(f"{prefix}history", *[_dumps(m) for m in messages(history)])

    async def ours_store(i: int) -> None:
        await ours.store_conversation(ids[i % len(ids)], document(i))

    async def raw_store(i: int) -> None:
        await raw.set(f"{prefix}conv:{ids[i % len(ids)]}", _dumps(document(i)))

    async def ours_load(i: int) -> None:
        assert await ours.load_conversation(ids[i % len(ids)]) is not None

    async def raw_load(i: int) -> None:
        orjson.loads(await raw.get(f"{prefix}conv:{ids[i % len(ids)]}"))

    async def ours_append(i: int) -> None:
        await ours.append_raw_messages("appended", [message(i)])

    async def raw_append(i: int) -> None:
        await raw.rpush(f"{prefix}appended", _dumps(message(i)))

    async def ours_history(i: int) -> None:
        assert len(await ours.load_raw_messages("history")) == history

    async def raw_history(i: int) -> None:
        items = await raw.lrange(f"{prefix}history", 0, -1)
        assert len([orjson.loads(item) for item in items]) == history

    async def ours_cache_set(i: int) -> None:
        await ours.store_cache(f"llm:{ids[i % len(ids)]}", cache_value(i), ttl=3600)

    async def raw_cache_set(i: int) -> None:
        await raw.set(f"{prefix}cache:{ids[i % len(ids)]}", _dumps(cache_value(i)), px=3_600_000)

    async def ours_cache_get(i: int) -> None:
        assert await ours.load_cache(f"llm:{ids[i % len(ids)]}") is not None

    async def raw_cache_get(i: int) -> None:
        orjson.loads(await raw.get(f"{prefix}cache:{ids[i % len(ids)]}"))

    for key, title, ops, raw_op, our_op in [
        ("store", "store_conversation (2 KB) / SET", sizes.writes * 4, raw_store, ours_store),
        ("load", "load_conversation (2 KB) / GET", sizes.reads, raw_load, ours_load),
        ("append", "append_raw_messages (one message) / RPUSH", sizes.writes * 4, raw_append, ours_append),
        ("history", f"load_raw_messages ({history:,}) / LRANGE", max(3, sizes.reads // 50), raw_history, ours_history),
        ("cache_set", "store_cache with a TTL / SET PX", sizes.writes * 4, raw_cache_set, ours_cache_set),
        ("cache_get", "load_cache / GET", sizes.reads, raw_cache_get, ours_cache_get),
    ]:  # fmt: skip
        variants = [Variant("raw redis-py", each(raw_op)), Variant("RedisStorage", each(our_op))]
        section.comparisons.append(
            await compare(f"redis.{key}", title, variants, ops=ops, repeats=sizes.repeats, warmup=len(ids))
        )
    info = await raw.info("server")
    section.notes.append(f"redis-server {info.get('redis_version')} with `--save '' --appendonly no`.")
    await raw.aclose()
    await ours.shutdown()
    return section
