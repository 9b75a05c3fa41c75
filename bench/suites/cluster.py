"""RedisStorage on Redis Cluster against RedisStorage on one redis-server, 16 concurrent clients."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from connectome_storage import RedisStorage, create_redis_storage
from tests.redis_server import RedisCluster

from ..backends import open_storage
from ..context import Context
from ..data import document, message
from ..harness import Section, Variant, compare, throughput

__all__ = ["run"]

INTRO = """\
Throughput of {workers} clients storing and appending at once, on a Redis Cluster of three
masters with one replica each (six redis-server processes, started by the bench through
tests/redis_server.py) against the one redis-server of the other sections, in the same run.
The clients are {workers} coroutines sharing one RedisStorage (one connection pool; on the
cluster, one pool per node), as an asyncio service would use it. Coroutines rather than
processes because every server runs on this same machine: {workers} Python processes would
compete for its cores with the six cluster nodes, and the figure would measure the
scheduler more than the storage. On one machine the cluster can gain only by spreading the
work of the single-threaded servers (the Lua scripts of each write) over three master
processes, and it pays for it: every write also goes on to a replica on the same cores, and
the client routes each command by its hash slot. The ratio is what Redis Cluster costs or
gains on one machine, not what it gains when its nodes have machines of their own. Each client writes
conversations of its own (store_conversation of a 2 KB document; append_raw_messages of
one message), spread over the cluster's slots by their ids."""


async def run(ctx: Context) -> Section:
    sizes = ctx.sizes
    workers = sizes.concurrency
    section = Section("cluster", "Redis Cluster against one redis-server", INTRO.format(workers=workers))
    cluster = RedisCluster(ctx.folder("redis-cluster"))
    await asyncio.to_thread(cluster.start)
    ctx.closers.append(lambda: asyncio.to_thread(cluster.stop))
    single = await open_storage(ctx, "redis", "cluster-single")
    sharded = create_redis_storage(cluster.url, key_prefix="bench:cluster:")
    await sharded.initialize()
    assert isinstance(single, RedisStorage) and isinstance(sharded, RedisStorage)
    ids = [[f"c{w:02d}_{k:02d}" for k in range(8)] for w in range(workers)]
    total = workers * sizes.per_coroutine * 4

    def clients(op: Callable[[RedisStorage, int, int], Awaitable[Any]], storage: RedisStorage) -> Any:
        async def many(first: int, count: int) -> None:
            async def client(w: int) -> None:
                for i in range(first + w, first + count, workers):
                    await op(storage, w, i)

            await asyncio.gather(*(client(w) for w in range(workers)))

        return throughput(many)

    async def store(storage: RedisStorage, worker: int, i: int) -> None:
        await storage.store_conversation(ids[worker][i % 8], document(i))

    async def append(storage: RedisStorage, worker: int, i: int) -> None:
        await storage.append_raw_messages(ids[worker][i % 8], [message(i)])

    for name, title, op in (
        ("store", "store_conversation (2 KB)", store),
        ("append", "append_raw_messages (one message)", append),
    ):
        section.comparisons.append(
            await compare(
                f"cluster.{name}", f"{title}, {workers} concurrent clients",
                [Variant("one redis-server", clients(op, single)),
                 Variant("Redis Cluster, 3 masters + 3 replicas", clients(op, sharded))],
                ops=total, repeats=sizes.repeats, warmup=total, unit="rate",
            )
        )  # fmt: skip
    health = await sharded.health_check()
    section.notes.append(f"Cluster as the storage saw it: {health['details'].get('cluster')}.")
    await single.shutdown()
    await sharded.shutdown()
    return section
