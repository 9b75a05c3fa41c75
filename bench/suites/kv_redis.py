"""Key-value collections on Redis: kv.set/get against raw redis-py sending the same commands,
and how queries and scans of one namespace scale (1k, 10k, 100k entries)."""

from __future__ import annotations

import time
from typing import Any

import orjson
import redis.asyncio

from connectome_storage import RedisStorage, create_redis_storage
from connectome_storage.backends._redis_kv_lua import KV_SCRIPTS

from ..backends import open_storage
from ..context import Context
from ..harness import Section, Variant, compare, each
from .kv_scan import timed, timed_scan

__all__ = ["run", "scaling"]

INTRO = """\
`kv.set` (a 1 KB value with two tags) and `kv.get` on Redis (one hash per entry, a set per
tag value, a key zset and an expiry zset per namespace, all written by one Lua script;
a read is one HMGET) against a `redis.asyncio.Redis` sending the very same commands by hand:
EVALSHA of the same script with arguments built inline, and HMGET + `orjson.loads` of the
value and tags. A plain HSET of the value alone (no tags, no indexes, no times) is shown
for reference. The ratio is what the library's Python costs on top of the commands. The
scaling figures time `query(tags=..., limit=10)` (SINTER of the tag sets, then the matching
entries), `query(prefix=..., limit=10)` (ZRANGEBYLEX, stops after 10), `count()` and a whole
`scan()` (batches of 256 along the key zset), and measure the scan's peak of Python
allocations with tracemalloc."""

SCALES_FULL = (1_000, 10_000, 100_000)
SCALES_SMOKE = (100, 300)
SAME = "raw redis-py, same commands"


def _value(i: int) -> dict[str, Any]:
    return {"index": i, "text": "x" * 1000}


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


async def run(ctx: Context) -> Section:
    sizes = ctx.sizes
    section = Section("kv_redis", "Key-value entries on Redis against raw redis-py", INTRO)
    ours = await open_storage(ctx, "redis", "kv-redis-ours")
    assert isinstance(ours, RedisStorage)
    kv = ours.kv("sessions")
    raw: Any = redis.asyncio.Redis.from_url(ctx.redis_url)
    put = raw.register_script(KV_SCRIPTS["kv_put"])
    keys = [f"user:{i:03d}" for i in range(sizes.keys)]
    base = "bench:kv-redis-raw:kv:{sessions}:"
    indexes = [base + "keys", base + "exp", base + "etags", "bench:kv-redis-raw:idx:kv"]
    tags = {"type": "web", "user": "x"}

    async def ours_set(i: int) -> None:
        await kv.set(keys[i % len(keys)], _value(i), tags=tags)

    async def same_set(i: int) -> None:
        now = round(time.time() * 1000)
        args = [base, "sessions", now, 0, keys[i % len(keys)], _dumps(_value(i)), _dumps(tags), now, now, "", 2,
                "type", "web", "user", "x"]  # fmt: skip
        await put(keys=indexes, args=args)

    async def plain_set(i: int) -> None:
        await raw.hset(f"{base}plain:{keys[i % len(keys)]}", "value", _dumps(_value(i)))

    async def ours_get(i: int) -> None:
        assert await kv.get(keys[i % len(keys)]) is not None

    async def same_get(i: int) -> None:
        key = keys[i % len(keys)].replace(":", "%3A")
        fields = await raw.hmget(f"{base}e:{key}", "value", "tags", "created_ms", "updated_ms", "expires_ms")
        assert orjson.loads(fields[0]) is not None and orjson.loads(fields[1]) is not None

    setters = [Variant(SAME, each(same_set)), Variant("kv.set", each(ours_set)),
               Variant("raw HSET of the value alone", each(plain_set), "no tags, times or indexes")]  # fmt: skip
    getters = [Variant(SAME, each(same_get)), Variant("kv.get", each(ours_get))]
    section.comparisons.append(
        await compare(
            "kv_redis.set",
            "store a 1 KB value with 2 tags",
            setters,
            ops=sizes.writes * 4,
            repeats=sizes.repeats,
            warmup=len(keys),
        )
    )
    section.comparisons.append(
        await compare(
            "kv_redis.get", "load a 1 KB value", getters, ops=sizes.reads, repeats=sizes.repeats, warmup=len(keys)
        )
    )
    await kv.clear()
    await raw.aclose()
    await ours.shutdown()
    for line in await scaling(ctx.redis_url, SCALES_SMOKE if ctx.smoke else SCALES_FULL):
        section.notes.append(line)
    return section


async def scaling(url: str, scales: tuple[int, ...]) -> list[str]:
    """One line per size: query by tag, query by prefix, count, scan time, scan peak memory."""
    lines = []
    for count in scales:
        async with create_redis_storage(url, key_prefix=f"bench:kv-redis-scale-{count}:") as storage:
            kv = storage.kv("big")
            await kv.clear()
            for start in range(0, count, 1000):
                batch = range(start, min(count, start + 1000))
                # 1% of the entries carry type=web: the query's tag set is small, the namespace not.
                for kind in ("web", "api"):
                    items = {
                        f"user:{i:06d}": {"index": i, "name": f"n{i}"}
                        for i in batch
                        if (i % 100 == 0) == (kind == "web")
                    }
                    if items:
                        await kv.set_many(items, tags={"type": kind, "shard": str(start % 7)})
            query_s, hits = await timed(kv.query(tags={"type": "web"}, limit=10))
            assert len(hits) == min(10, -(-count // 100))
            page_s, page = await timed(kv.query(prefix="user:0", limit=10))
            assert len(page) == 10
            count_s, counted = await timed(kv.count())
            assert counted == count
            scan_s, peak, seen = await timed_scan(kv)
            assert seen == count
            await kv.clear()
        lines.append(
            f"{count:>7,} entries: query(tags=..., limit=10) {query_s * 1000:,.1f} ms; "
            f"query(prefix=..., limit=10) {page_s * 1000:,.1f} ms; count() {count_s * 1000:,.0f} ms; "
            f"scan() {scan_s:,.2f} s ({count / scan_s:,.0f} entries/s); scan peak {peak / 1024:,.0f} KiB"
        )
    return lines
