"""The targets of the benchmark issue, checked against ratios measured in the same run."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Literal

from .context import Sizes
from .harness import Comparison

__all__ = ["Floor", "Target", "evaluate"]

# "As fast with 100,000 conversations as with 100": two runs of the very same operation
# differ by a few percent from noise alone, so "as fast" is read as at least 0.9x.
SAME_SPEED = 0.9


@dataclass(frozen=True)
class Floor:
    """What the plainest code doing the same work reaches, measured in the same run and
    read on the target's own terms: where a target sits against what this machine allows.
    ``comparison`` None: the target's own comparison; ``against`` None: its baseline."""

    variant: str
    comparison: str | None = None
    against: str | None = None


@dataclass
class Target:
    text: str
    comparison: str
    variant: str
    threshold: float
    bound: Literal["at least", "at most"]
    against: str | None = None  # another variant of the comparison, instead of its baseline
    floor: Floor | None = None
    value: float | None = None
    low: float | None = None
    high: float | None = None
    floor_value: float | None = None

    @property
    def met(self) -> bool | None:
        if self.value is None:
            return None
        return self.value >= self.threshold if self.bound == "at least" else self.value <= self.threshold

    @property
    def status(self) -> str:
        return {True: "met", False: "**missed**", None: "not measured"}[self.met]


def _targets(sizes: Sizes) -> list[Target]:
    short, _middle, long = sizes.histories
    big = sizes.session_histories[1]
    hop = "plain durable write in asyncio.to_thread"
    insert = Floor("one INSERT + COMMIT in asyncio.to_thread")
    targets = [
        Target("FileStorage store >= 0.7x the plain durable write", "files.store",
               "FileStorage.store_conversation", 0.7, "at least",
               floor=Floor("plain durable write with a backup, in asyncio.to_thread")),
        Target("FileStorage store, backups off, >= 0.9x one asyncio.to_thread around a plain durable write",
               "files.store", "FileStorage.store_conversation, no backups", 0.9, "at least",
               against=hop,
               floor=Floor(hop, against=hop)),
        Target("FileStorage load >= 0.5x plain read + orjson.loads", "files.load",
               "FileStorage.load_conversation", 0.5, "at least"),
    ]  # fmt: skip
    for backend in ("file", "sqlite", "redis"):
        for prefix, what in (("append", "append"), ("store.append", "conversation store append")):
            targets.append(
                Target(
                    f"{backend}: {what} to a {long:,} history <= 3x the cost of appending to {short:,}",
                    f"{prefix}.{backend}",
                    f"history {long:,}",
                    3.0,
                    "at most",
                )
            )
    targets += [
        Target("SqliteStorage appends >= 1.5x SQLiteSession.add_items (equal durability)",
               "sqlite.session.append", "SqliteStorage.append_raw_messages", 1.5, "at least",
               floor=insert),
        Target(f"SqliteStorage loads a {big:,}-message history >= 2x faster than get_items",
               f"sqlite.session.load{big}", "SqliteStorage.load_raw_messages", 2.0, "at least",
               floor=Floor("one SELECT + orjson.loads per row in asyncio.to_thread")),
    ]  # fmt: skip
    for key, what, same in [
        ("store", "store_conversation vs SET", True), ("load", "load_conversation vs GET", False),
        ("append", "append vs RPUSH", True), ("history", "load_raw_messages vs LRANGE", False),
        ("cache_set", "store_cache vs SET PX", True), ("cache_get", "load_cache vs GET", False),
    ]:  # fmt: skip
        targets.append(
            Target(
                f"RedisStorage {what} >= 0.8x raw redis-py",
                f"redis.{key}",
                "RedisStorage",
                0.8,
                "at least",
                floor=Floor("raw redis-py, same commands") if same else None,
            )
        )
        if same:
            targets.append(
                Target(f"RedisStorage {what.split(' vs ')[0]} >= 0.8x raw redis-py sending the same commands",
                       f"redis.{key}", "RedisStorage", 0.8, "at least", against="raw redis-py, same commands",
                       floor=Floor("raw redis-py, same commands", against="raw redis-py, same commands"))
            )  # fmt: skip
    targets += [
        Target("kv.get on the file tree >= 20x FileTreeStore.get", "kv_file.get", "kv.get (file tree)", 20.0,
               "at least"),
        Target("kv.set on the file tree >= 1.5x FileTreeStore.put", "kv_file.set", "kv.set (file tree)", 1.5,
               "at least"),
        Target("kv.get on SQLite >= 0.5x diskcache.Cache.get", "kv_sqlite.get.full", "kv.get (SQLite)", 0.5,
               "at least"),
        *[Target(f"SqliteStorage.{name} >= 0.5x diskcache.Cache.get", "sqlite.diskcache.get.full",
                 f"SqliteStorage.{name}", 0.5, "at least")
          for name in ("load_cache", "load_system_state", "load_conversation")],
        Target(f"SQLite get_storage_stats at {sizes.big_tree:,} conversations >= 0.5x a COUNT(*) per table",
               "scale.stats.sqlite", "SqliteStorage.get_storage_stats", 0.5, "at least"),
        Target("kv.set on Redis >= 0.8x raw redis-py sending the same commands", "kv_redis.set", "kv.set", 0.8,
               "at least"),
        Target("kv.get on Redis >= 0.8x raw redis-py sending the same commands", "kv_redis.get", "kv.get", 0.8,
               "at least"),
        Target("ConnectomeSession.add_items on SQLite >= 1.5x SQLiteSession", "adapters_openai.add_items",
               "ConnectomeSession (SQLite)", 1.5, "at least", floor=insert),
        Target("ConnectomeSession.get_items on SQLite >= 1.5x SQLiteSession", "adapters_openai.get_items",
               "ConnectomeSession (SQLite)", 1.5, "at least"),
        Target("ConnectomeSession.add_items on Redis >= 0.9x RedisSession", "adapters_openai.redis.add_items",
               "ConnectomeSession (Redis)", 0.9, "at least"),
        Target("ConnectomeSession.get_items on Redis >= 0.9x RedisSession", "adapters_openai.redis.get_items",
               "ConnectomeSession (Redis)", 0.9, "at least"),
        Target("LangGraph checkpointer put >= 1.0x AsyncSqliteSaver", "adapters_langgraph.put",
               "ConnectomeCheckpointSaver (SQLite)", 1.0, "at least", floor=insert),
        Target("LangGraph checkpointer get_tuple >= 1.0x AsyncSqliteSaver", "adapters_langgraph.get_tuple",
               "ConnectomeCheckpointSaver (SQLite)", 1.0, "at least"),
        Target("an empty middleware chain costs under 5% on a file-tree load (>= 0.95x)", "middleware.load",
               "[Middleware()]", 0.95, "at least"),
        Target("file: a 5-write transaction costs less than the 5 durable writes one by one (< 1x)",
               "transactions.file", "one transaction", 1.0, "at most",
               floor=Floor("the same five as one journaled commit (plain)", comparison="transactions.file.plain")),
        # On one machine a cluster gains little if anything (bench/suites/cluster.py): this bounds its price.
        Target(f"Redis Cluster stores with {sizes.concurrency} clients >= 0.5x one redis-server (same machine)",
               "cluster.store", "Redis Cluster, 3 masters + 3 replicas", 0.5, "at least"),
        Target(f"Redis Cluster appends with {sizes.concurrency} clients >= 0.5x one redis-server (same machine)",
               "cluster.append", "Redis Cluster, 3 masters + 3 replicas", 0.5, "at least"),
    ]  # fmt: skip
    for key, what in [("store", "store_conversation"), ("load", "load_conversation"),
                      ("append", "append_raw_messages"), ("kv_set", "kv.set"), ("kv_get", "kv.get")]:  # fmt: skip
        targets.append(
            Target(f"PostgresStorage {what} >= 0.8x raw asyncpg sending the same statements", f"postgres.{key}",
                   "PostgresStorage", 0.8, "at least")
        )  # fmt: skip
    big_tree, workers = f"{sizes.big_tree:,}", sizes.concurrency
    targets += [
        Target(f"file: list_conversations at {big_tree} conversations >= 0.5x os.scandir + sorted", "scale.list.file",
               "FileStorage.list_conversations", 0.5, "at least"),
        Target(f"file: get_storage_stats at {big_tree} conversations >= 0.8x walk + read + parse", "scale.stats.file",
               "FileStorage.get_storage_stats", 0.8, "at least"),
        Target(f"redis: get_storage_stats at {big_tree} conversations >= 0.8x pipelined counts", "scale.stats.redis",
               "RedisStorage.get_storage_stats", 0.8, "at least"),
        Target(f"file: {workers} coroutines storing to their own conversations >= 2x one coroutine",
               "scale.concurrency.file.store_conversation", f"{workers} coroutines", 2.0, "at least",
               floor=Floor(f"{workers} coroutines", comparison="scale.concurrency.file.plain")),
        Target(f"sqlite: {workers} coroutines appending to {workers} conversations >= 3x {workers} SQLiteSessions "
               "on one file", "sqlite.sessions.concurrent", f"SqliteStorage, {workers} coroutines", 3.0, "at least"),
        Target(f"migrate file -> SQLite of {sizes.migrate:,} conversations >= 0.5x read every file + one executemany "
               "transaction", "scale.migrate", "migrate(FileStorage, SqliteStorage)", 0.5, "at least"),
        Target(f"memory: migrate streams, the peak at {sizes.memory_migrate[1]:,} conversations <= 1.1x the peak "
               f"at {sizes.memory_migrate[0]:,}", "memory.migrate", f"{sizes.memory_migrate[1]:,} conversations", 1.1,
               "at most"),
    ]  # fmt: skip
    for backend in ("file", "sqlite", "redis"):
        targets.append(
            Target(
                f"{backend}: load_conversation with {sizes.big_tree:,} conversations as fast as with "
                f"{sizes.small_tree:,} (>= {SAME_SPEED}x)",
                f"scale.load.{backend}",
                f"{sizes.big_tree:,} conversations",
                SAME_SPEED,
                "at least",
                floor=Floor(f"{sizes.big_tree:,} conversations", comparison=f"scale.load.{backend}.plain"),
            )
        )
    return targets


def evaluate(sizes: Sizes, comparisons: dict[str, Comparison]) -> list[Target]:
    """Every target with its measured median ratio, the range over rounds, and its floor's
    median ratio."""
    targets = _targets(sizes)
    for target in targets:
        comparison = comparisons.get(target.comparison)
        if comparison is None:
            continue
        ratios = _ratios(comparison, target.variant, target.against)
        target.value, target.low, target.high = statistics.median(ratios), min(ratios), max(ratios)
        floor = target.floor
        found = comparisons.get(floor.comparison or target.comparison) if floor is not None else None
        if floor is not None and found is not None and floor.variant in {f.name for f in found.figures}:
            target.floor_value = statistics.median(_ratios(found, floor.variant, floor.against))
    return targets


def _ratios(comparison: Comparison, variant: str, against: str | None) -> list[float]:
    """``variant``'s ratio per round against the baseline, or against another variant of
    the comparison, round by round like the table's."""
    figure = comparison.figure(variant)
    if against is None:
        return figure.ratios
    other = comparison.figure(against).samples
    ratios = [o / m for o, m in zip(other, figure.samples, strict=True)]
    return [1 / r for r in ratios] if comparison.ratio_kind == "cost" else ratios
