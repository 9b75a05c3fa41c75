"""RedisStorage against raw redis-py sending the commands a user would send by hand."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import redis.asyncio

from connectome_storage import RedisStorage
from connectome_storage.backends._redis_lua import SCRIPTS

from ..backends import open_storage
from ..context import Context
from ..data import cache_value, document, message, messages
from ..harness import Section, Variant, compare, each

__all__ = ["run"]

INTRO = """\
RedisStorage (values checked and encoded with orjson; a write of a conversation part is
one Lua script of three keys, which checks the conversation's expiry on the storage clock,
lists the id and keeps the message count; a Lua script for every cache write, which keeps
the expiry index in step; plain GET/LRANGE for reads, on the default clock) against a
`redis.asyncio.Redis` with its defaults, used two ways: the plain command a user would
send for the same data (SET, GET + `orjson.loads`, RPUSH, LRANGE + `orjson.loads` per
item, SET PX), which is the baseline of each table, and, where RedisStorage sends
something else, the very commands RedisStorage sends (EVALSHA of the same scripts with the
same keys and arguments), so that the table shows what the commands cost and what the
library's Python costs. Both talk to the same redis-server on 127.0.0.1 (no persistence),
started by the bench."""

SAME = "raw redis-py, same commands"


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


async def run(ctx: Context) -> Section:
    sizes = ctx.sizes
    section = Section("redis", "RedisStorage against raw redis-py", INTRO)
    ours = await open_storage(ctx, "redis", "redis-ours")
    assert isinstance(ours, RedisStorage)
    raw: Any = redis.asyncio.Redis.from_url(ctx.redis_url)
    prefix = "bench:redis-raw:"
    ids = [f"conv_{i:03d}" for i in range(sizes.keys)]
    history = sizes.session_histories[0]
    await ours.store_raw_messages("history", messages(history))
    await raw.rpush(f"{prefix}history", *[_dumps(m) for m in messages(history)])
    write_cache = raw.register_script(SCRIPTS["write_cache"])
    cache_index = f"{prefix}idx:cache"
    # What RedisStorage sends for a conversation part: its lean scripts, with the same three
    # keys (metadata, the part, the listing index) and arguments (id, the clock's now, values).
    # Sent with EVALSHA directly, as RedisStorage sends them (not through redis-py's Script).
    conv_set, conv_append = [await raw.script_load(SCRIPTS[name]) for name in ("conv_set", "conv_append")]
    conv_index = f"{prefix}idx:conversations"

    def conv_keys(conversation_id: str, part: str) -> list[str]:
        base = f"{prefix}conv:{{{conversation_id}}}:"
        return [base + "meta", base + part, conv_index]

    async def ours_store(i: int) -> None:
        await ours.store_conversation(ids[i % len(ids)], document(i))

    async def raw_store(i: int) -> None:
        await raw.set(f"{prefix}conv:{ids[i % len(ids)]}", _dumps(document(i)))

    async def same_store(i: int) -> None:
        conversation_id = ids[i % len(ids)]
        now = round(time.time() * 1000)
        await raw.evalsha(
            conv_set, 3, *conv_keys(conversation_id, "current"), conversation_id, now, _dumps(document(i))
        )

    async def ours_load(i: int) -> None:
        assert await ours.load_conversation(ids[i % len(ids)]) is not None

    async def raw_load(i: int) -> None:
        orjson.loads(await raw.get(f"{prefix}conv:{ids[i % len(ids)]}"))

    async def ours_append(i: int) -> None:
        await ours.append_raw_messages("appended", [message(i)])

    async def raw_append(i: int) -> None:
        await raw.rpush(f"{prefix}appended", _dumps(message(i)))

    async def same_append(i: int) -> None:
        now = round(time.time() * 1000)
        await raw.evalsha(conv_append, 3, *conv_keys("appended", "raw"), "appended", now, _dumps(message(i)))

    async def ours_history(i: int) -> None:
        assert len(await ours.load_raw_messages("history")) == history

    async def raw_history(i: int) -> None:
        items = await raw.lrange(f"{prefix}history", 0, -1)
        assert len([orjson.loads(item) for item in items]) == history

    async def ours_cache_set(i: int) -> None:
        await ours.store_cache(f"llm:{ids[i % len(ids)]}", cache_value(i), ttl=3600)

    async def raw_cache_set(i: int) -> None:
        await raw.set(f"{prefix}cache:{ids[i % len(ids)]}", _dumps(cache_value(i)), px=3_600_000)

    async def same_cache_set(i: int) -> None:
        key = ids[i % len(ids)]
        expires = round(time.time() * 1000) + 3_600_000
        envelope = _dumps({"created_ms": expires - 3_600_000, "expires_ms": expires, "data": cache_value(i)})
        await write_cache(keys=[f"{prefix}cache:{key}", cache_index], args=[key, envelope, "3600000", str(expires)])

    async def ours_cache_get(i: int) -> None:
        assert await ours.load_cache(f"llm:{ids[i % len(ids)]}") is not None

    async def raw_cache_get(i: int) -> None:
        orjson.loads(await raw.get(f"{prefix}cache:{ids[i % len(ids)]}"))

    Op = Callable[[int], Awaitable[None]]
    table: list[tuple[str, str, int, Op, Op, Op | None]] = [
        ("store", "store_conversation (2 KB) / SET", sizes.writes * 4, raw_store, ours_store, same_store),
        ("load", "load_conversation (2 KB) / GET", sizes.reads, raw_load, ours_load, None),
        ("append", "append_raw_messages (one message) / RPUSH", sizes.writes * 4, raw_append, ours_append, same_append),
        ("history", f"load_raw_messages ({history:,}) / LRANGE", max(3, sizes.reads // 50), raw_history,
         ours_history, None),
        ("cache_set", "store_cache with a TTL / SET PX", sizes.writes * 4, raw_cache_set, ours_cache_set,
         same_cache_set),
        ("cache_get", "load_cache / GET", sizes.reads, raw_cache_get, ours_cache_get, None),
    ]  # fmt: skip
    for key, title, ops, raw_op, our_op, same_op in table:
        variants = [Variant("raw redis-py, plain command", each(raw_op)), Variant("RedisStorage", each(our_op))]
        if same_op is not None:
            variants.append(Variant(SAME, each(same_op)))
        section.comparisons.append(
            await compare(f"redis.{key}", title, variants, ops=ops, repeats=sizes.repeats, warmup=len(ids))
        )
    info = await raw.info("server")
    section.notes.append(f"redis-server {info.get('redis_version')} with `--save '' --appendonly no`.")
    await raw.aclose()
    await ours.shutdown()
    return section
