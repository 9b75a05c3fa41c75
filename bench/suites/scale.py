"""Scale: big trees, whole-store operations, migration, and many coroutines at once."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiosqlite
import orjson
import redis.asyncio

from connectome_storage import (
    FileStorage,
    RedisStorage,
    SqliteStorage,
    StorageInterface,
    create_sqlite_storage,
    migrate,
)
from connectome_storage.codec import encode, format_time
from connectome_storage.config import FileSettings
from connectome_storage.interface import Kind
from connectome_storage.naming import encode_name

from ..backends import BACKENDS, open_storage
from ..context import Context
from ..data import PRETTY, cache_value, document, message, messages
from ..floors import durable_write_with_backup
from ..harness import Comparison, Runner, Section, Variant, compare, each, each_sync, throughput

__all__ = ["run"]

INTRO = """\
Trees of {small:,} and {big:,} conversations (one 2 KB document each) on every backend.
They are written straight into the documented layout, without the API's per-write
durability: files written and closed with one `os.sync()` at the end (file backend),
one transaction of plain INSERTs (SQLite), pipelined SET + SADD (Redis). A tree made
through the API holds the same bytes; only making it would take minutes of fsyncs.
Baselines are the plain code a user would write to get the same answer: `os.scandir`
and sort, read and parse every file, `COUNT(*)`, `SMEMBERS`, and so on, named in each
table. Whole-store operations run once per round; `{expired:,}` expired cache entries
are planted (untimed) before each cleanup among {big:,} entries."""

OURS_KEY = "bench:scale:"
ONE_CPU = {
    "file": "Measured with every thread of the bench on one CPU, like the other backends' tables: "
    "the file backend reads on the loop's thread, so for it this only keeps conditions equal.",
    "sqlite": "Measured with every thread of the bench on one CPU, like the other backends' tables: "
    "SqliteStorage's point reads run on the loop's thread (a second, read-only connection), as "
    "the plain SELECT does, so this only keeps conditions equal.",
    "redis": "Measured with every thread of the bench on one CPU, like the other backends' tables "
    "(the redis-server process is not pinned).",
}
NOW_MS = round(time.time() * 1000)


async def run(ctx: Context) -> Section:
    sizes = ctx.sizes
    intro = INTRO.format(small=sizes.small_tree, big=sizes.big_tree, expired=sizes.expired)
    section = Section("scale", "Scale: 100,000 conversations, cleanup, migration, concurrency", intro)
    for backend in BACKENDS:
        await _trees(ctx, section, backend)
    for backend in BACKENDS:
        await _cleanup(ctx, section, backend)
    await _migrate(ctx, section)
    for backend in BACKENDS:
        await _concurrency(ctx, section, backend)
    return section


# ------------------------------------------------------------------ big trees


def _conversation_ids(count: int) -> list[str]:
    return [f"conv_{i:06d}" for i in range(count)]


@contextlib.contextmanager
def _bulk(db_path: Path) -> Iterator[sqlite3.Connection]:
    """One transaction of plain INSERTs, then a checkpoint, a close and an ``os.sync()``,
    so that no checkpoint or writeback of the 200 MB just written is left to run during
    the timed reads (it would keep the other CPU busy, which changes what a thread hop
    costs; docs/performance.md, "thread hops")."""
    conn = sqlite3.connect(db_path)
    try:
        with conn:
            yield conn
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    os.sync()


PLAIN_READ = {
    "file": "plain read + orjson.loads",
    "sqlite": "sqlite3 SELECT by id + orjson.loads on the loop's thread",
    "redis": "redis-py GET + orjson.loads",
}


async def _plain_loader(ctx: Context, storage: StorageInterface, ids: list[str]) -> Runner:
    """Load one conversation document the plain way, without the library."""
    if isinstance(storage, FileStorage):
        root = storage.base_dir

        def read(i: int) -> None:
            with open(root / "conversations" / ids[i % len(ids)] / "current.json", "rb") as f:
                orjson.loads(f.read())

        return each_sync(read)
    if isinstance(storage, SqliteStorage):
        # On the loop's thread, as SqliteStorage's point reads are (a second, read-only
        # connection): a thread hop would cost more than the lookup it is there to show.
        db = sqlite3.connect(f"file:{storage.db_path}?mode=ro", uri=True)

        async def close() -> None:
            db.close()

        ctx.closers.append(close)

        def select(i: int) -> None:
            sql = "SELECT document FROM conversations WHERE conversation_id = ?"
            orjson.loads(db.execute(sql, (ids[i % len(ids)],)).fetchone()[0])

        return each_sync(select)
    assert isinstance(storage, RedisStorage)
    raw: Any = redis.asyncio.Redis.from_url(ctx.redis_url)
    ctx.closers.append(raw.aclose)
    keys = [storage.key_of(Kind.CONVERSATION, conversation_id) for conversation_id in ids]

    async def get(i: int) -> None:
        orjson.loads(await raw.get(keys[i % len(keys)]))

    return each(get)


async def _build_tree(ctx: Context, backend: str, name: str, count: int) -> StorageInterface:
    """A storage holding ``count`` conversations, written without per-item durability."""
    storage = await open_storage(ctx, backend, name)
    ids = _conversation_ids(count)
    if isinstance(storage, FileStorage):
        folder = storage.base_dir / "conversations"
        for i, conversation_id in enumerate(ids):
            (folder / conversation_id).mkdir()
            (folder / conversation_id / "current.json").write_bytes(encode(document(i)))
        os.sync()  # the tree is on disk before anything is timed: no writeback in between
    elif isinstance(storage, SqliteStorage):
        with _bulk(storage.db_path) as conn:
            conn.executemany(
                "INSERT INTO conversations (conversation_id, document) VALUES (?, ?)",
                ((c, encode(document(i), pretty=False)[:-1].decode()) for i, c in enumerate(ids)),
            )
    elif isinstance(storage, RedisStorage):
        index = storage.index_of(Kind.CONVERSATION)
        for start in range(0, count, 1000):
            async with storage.client.pipeline(transaction=False) as pipe:
                for i in range(start, min(count, start + 1000)):
                    pipe.set(storage.key_of(Kind.CONVERSATION, ids[i]), encode(document(i), pretty=False))
                    pipe.sadd(index, ids[i])
                await pipe.execute()
    return storage


async def _trees(ctx: Context, section: Section, backend: str) -> None:
    sizes = ctx.sizes
    started = time.perf_counter()
    small = await _build_tree(ctx, backend, f"tree-{backend}-small", sizes.small_tree)
    big = await _build_tree(ctx, backend, f"tree-{backend}-big", sizes.big_tree)
    section.notes.append(
        f"{backend}: the {sizes.big_tree:,}-conversation tree took "
        f"{time.perf_counter() - started:.1f} s to write directly."
    )
    chosen = random.Random(7)
    small_ids = [f"conv_{chosen.randrange(sizes.small_tree):06d}" for _ in range(4096)]
    big_ids = [f"conv_{chosen.randrange(sizes.big_tree):06d}" for _ in range(4096)]
    # Every id is read once before timing: the first read of a file since it was written
    # updates its atime (relatime), a one-time journal write that would otherwise fall on
    # whichever comparison touches the file first (measured: 0.80x instead of 0.91x).
    warm = len(big_ids)

    def loader(storage: StorageInterface, ids: list[str]) -> Runner:
        async def load(i: int) -> None:
            assert await storage.load_conversation(ids[i % len(ids)]) is not None

        return each(load)

    section.comparisons.append(
        await compare(
            f"scale.load.{backend}", f"{backend}: load_conversation, random ids",
            [Variant(f"{sizes.small_tree:,} conversations", loader(small, small_ids)),
             Variant(f"{sizes.big_tree:,} conversations", loader(big, big_ids))],
            ops=sizes.reads, repeats=sizes.repeats, warmup=warm, one_cpu=True,
            note=ONE_CPU[backend],
        )
    )  # fmt: skip
    # The same reads without the library: how much of the difference is the medium itself
    # (dentry and inode lookups, a deeper B-tree, a bigger hash table).
    section.comparisons.append(
        await compare(
            f"scale.load.{backend}.plain", f"{backend}: {PLAIN_READ[backend]} of the same conversations, random ids",
            [Variant(f"{sizes.small_tree:,} conversations", await _plain_loader(ctx, small, small_ids)),
             Variant(f"{sizes.big_tree:,} conversations", await _plain_loader(ctx, big, big_ids))],
            ops=sizes.reads, repeats=sizes.repeats, warmup=warm, one_cpu=True,
            note=ONE_CPU[backend],
        )
    )  # fmt: skip
    plain_list, plain_stats, list_name, stats_name = await _plain_whole(ctx, backend, big)

    async def ours_list(_first: int, _count: int) -> None:
        assert len(await big.list_conversations()) == sizes.big_tree

    async def ours_stats(_first: int, _count: int) -> None:
        assert (await big.get_storage_stats())["conversation_count"] == sizes.big_tree

    for key, title, baseline, name, ours in [
        ("list", "list_conversations", plain_list, list_name, ours_list),
        ("stats", "get_storage_stats", plain_stats, stats_name, ours_stats),
    ]:
        section.comparisons.append(
            await compare(
                f"scale.{key}.{backend}", f"{backend}: {title} at {sizes.big_tree:,} conversations",
                [Variant(name, throughput(baseline)), Variant(f"{type(big).__name__}.{title}", throughput(ours))],
                ops=1, repeats=sizes.scale_repeats,
            )
        )  # fmt: skip
    await small.shutdown()
    await big.shutdown()


Batch = Callable[[int, int], Awaitable[None]]


async def _plain_whole(ctx: Context, backend: str, big: StorageInterface) -> tuple[Batch, Batch, str, str]:
    """The plain listing and counting a user would write for ``big``'s backend."""
    count = ctx.sizes.big_tree
    if isinstance(big, FileStorage):
        folder = big.base_dir / "conversations"

        def listing() -> list[str]:
            with os.scandir(folder) as entries:
                return sorted(e.name for e in entries if e.is_dir())

        def counting() -> int:
            parsed = 0
            for top in ("conversations", "agents", "cache", "system"):
                for dirpath, _dirs, files in os.walk(big.base_dir / top):
                    for name in files:
                        with open(os.path.join(dirpath, name), "rb") as f:
                            orjson.loads(f.read())
                        parsed += 1
            return parsed

        async def plain_list(_first: int, _count: int) -> None:
            assert len(await asyncio.to_thread(listing)) == count

        async def plain_stats(_first: int, _count: int) -> None:
            assert await asyncio.to_thread(counting) == count

        return plain_list, plain_stats, "os.scandir + sorted (thread)", "os.walk, read + parse every file (thread)"
    if isinstance(big, SqliteStorage):
        db = await aiosqlite.connect(big.db_path)
        ctx.closers.append(db.close)

        async def sql_list(_first: int, _count: int) -> None:
            rows = await db.execute_fetchall("SELECT conversation_id FROM conversations ORDER BY conversation_id")
            assert len(list(rows)) == count

        async def sql_stats(_first: int, _count: int) -> None:
            for table in ("conversations", "raw_messages", "memories", "agents", "reasoning_chains", "cache",
                          "system_state"):  # fmt: skip
                await db.execute_fetchall(f"SELECT COUNT(*) FROM {table}")

        return sql_list, sql_stats, "aiosqlite SELECT ... ORDER BY", "aiosqlite COUNT(*) of each table"
    assert isinstance(big, RedisStorage)
    raw: Any = redis.asyncio.Redis.from_url(ctx.redis_url)
    ctx.closers.append(raw.aclose)
    index = big.index_of(Kind.CONVERSATION)

    async def redis_list(_first: int, _count: int) -> None:
        assert len(sorted(m.decode() for m in await raw.smembers(index))) == count

    async def redis_stats(_first: int, _count: int) -> None:
        members = [m.decode() for m in await raw.smembers(index)]
        for start in range(0, len(members), 500):
            async with raw.pipeline(transaction=False) as pipe:
                for conversation_id in members[start : start + 500]:
                    pipe.llen(big.key_of(Kind.RAW_MESSAGES, conversation_id))
                    pipe.hlen(big.key_of(Kind.MEMORIES, conversation_id))
                await pipe.execute()

    return redis_list, redis_stats, "SMEMBERS + sorted", "SMEMBERS + pipelined LLEN/HLEN per conversation"


# -------------------------------------------------------------------- cleanup


async def _cleanup(ctx: Context, section: Section, backend: str) -> None:
    sizes = ctx.sizes
    live = sizes.big_tree - sizes.expired
    ours = await open_storage(ctx, backend, f"cleanup-{backend}")
    started = time.perf_counter()
    baseline, baseline_name, plant_plain = await _plain_cleanup(ctx, backend, live)
    await _plant_cache(ours, 0, live, expired=False)
    section.notes.append(
        f"{backend}: {2 * live:,} live cache entries (for ours and the baseline) took "
        f"{time.perf_counter() - started:.1f} s to write directly."
    )
    rounds = iter(range(1, 10_000))

    async def ours_cleanup(_first: int, _count: int) -> list[float]:
        start = live + next(rounds) * sizes.expired
        await _plant_cache(ours, start, sizes.expired, expired=True)
        began = time.perf_counter()
        removed = await ours.cleanup_expired_cache()
        elapsed = time.perf_counter() - began
        assert removed == sizes.expired, (removed, sizes.expired)
        return [elapsed]

    async def plain_cleanup(_first: int, _count: int) -> list[float]:
        await plant_plain(sizes.expired)
        began = time.perf_counter()
        removed = await baseline()
        elapsed = time.perf_counter() - began
        assert removed == sizes.expired, (removed, sizes.expired)
        return [elapsed]

    section.comparisons.append(
        await compare(
            f"scale.cleanup.{backend}",
            f"{backend}: cleanup_expired_cache, {sizes.expired:,} expired among {sizes.big_tree:,}",
            [Variant(baseline_name, plain_cleanup),
             Variant(f"{type(ours).__name__}.cleanup_expired_cache", ours_cleanup)],
            ops=1, repeats=sizes.scale_repeats,
        )
    )  # fmt: skip
    await ours.shutdown()


def _envelope_file(key: str, i: int, expires_ms: int | None) -> bytes:
    return encode({
        "cache_key": key, "created_at": format_time(NOW_MS - 10_000),
        "expires_at": None if expires_ms is None else format_time(expires_ms), "data": cache_value(i),
    })  # fmt: skip


async def _plant_cache(storage: StorageInterface, start: int, count: int, *, expired: bool) -> None:
    """Write cache entries straight into ``storage``'s layout (untimed setup)."""
    expires = NOW_MS - 5_000 if expired else None
    keys = [f"llm:answer:{i}" for i in range(start, start + count)]
    if isinstance(storage, FileStorage):
        folder = storage.base_dir / "cache"
        for i, key in enumerate(keys, start):
            (folder / f"{encode_name(key)}.json").write_bytes(_envelope_file(key, i, expires))
        os.sync()
    elif isinstance(storage, SqliteStorage):
        with _bulk(storage.db_path) as conn:
            conn.executemany(
                "INSERT INTO cache (cache_key, data, created_ms, expires_ms) VALUES (?, ?, ?, ?)",
                (
                    (k, orjson.dumps(cache_value(i)).decode(), NOW_MS - 10_000, expires)
                    for i, k in enumerate(keys, start)
                ),
            )
    elif isinstance(storage, RedisStorage):
        index = storage.index_of(Kind.CACHE)
        for first in range(0, count, 1000):
            async with storage.client.pipeline(transaction=False) as pipe:
                for i in range(first, min(count, first + 1000)):
                    envelope = {"created_ms": NOW_MS - 10_000, "expires_ms": expires, "data": cache_value(start + i)}
                    name = storage.key_of(Kind.CACHE, keys[i])
                    # An expired entry is one Redis has already dropped; its id stays in the index.
                    if not expired:
                        pipe.set(name, encode(envelope, pretty=False))
                    pipe.zadd(index, {keys[i]: "+inf" if expires is None else expires})
                await pipe.execute()


PlainCleanup = tuple[Callable[[], Awaitable[int]], str, Callable[[int], Awaitable[None]]]


async def _plain_cleanup(ctx: Context, backend: str, live: int) -> PlainCleanup:
    """(cleanup, its name, plant(count)) for the plain code on a copy of the same data."""
    planted = iter(range(1, 10_000))
    if backend == "file":
        folder = ctx.folder("cleanup-plain/cache")
        for i in range(live):
            key = f"llm:answer:{i}"
            (folder / f"{encode_name(key)}.json").write_bytes(_envelope_file(key, i, None))
        os.sync()

        def sweep() -> int:
            removed = 0
            with os.scandir(folder) as entries:
                for entry in entries:
                    with open(entry.path, "rb") as f:
                        envelope = orjson.loads(f.read())
                    if envelope["expires_at"] is not None and envelope["expires_at"] <= format_time(NOW_MS):
                        os.unlink(entry.path)
                        removed += 1
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)  # one fsync makes every unlink durable
            finally:
                os.close(fd)
            return removed

        async def plant_files(count: int) -> None:
            start = live + next(planted) * count
            for i in range(start, start + count):
                key = f"llm:answer:{i}"
                (folder / f"{encode_name(key)}.json").write_bytes(_envelope_file(key, i, NOW_MS - 5_000))
            os.sync()

        async def cleanup_files() -> int:
            return await asyncio.to_thread(sweep)

        return cleanup_files, "scandir, read + parse each, unlink expired, one folder fsync (thread)", plant_files
    if backend == "sqlite":
        storage = await open_storage(ctx, "sqlite", "cleanup-plain-sqlite")
        await _plant_cache(storage, 0, live, expired=False)
        await storage.shutdown()
        assert isinstance(storage, SqliteStorage)
        db = await aiosqlite.connect(storage.db_path, isolation_level=None)
        ctx.closers.append(db.close)
        await db.execute("PRAGMA synchronous = FULL")
        await db.execute("PRAGMA journal_mode = WAL")

        async def plant_rows(count: int) -> None:
            await _plant_cache(storage, live + next(planted) * count, count, expired=True)

        async def delete_rows() -> int:
            await db.execute("BEGIN IMMEDIATE")
            cursor = await db.execute("DELETE FROM cache WHERE expires_ms <= ?", (NOW_MS,))
            await db.execute("COMMIT")
            return cursor.rowcount

        return delete_rows, "aiosqlite DELETE ... WHERE expires_ms <= now", plant_rows
    raw: Any = redis.asyncio.Redis.from_url(ctx.redis_url)
    ctx.closers.append(raw.aclose)
    index = "bench:cleanup-plain:idx"
    for first in range(0, live, 1000):
        async with raw.pipeline(transaction=False) as pipe:
            for i in range(first, min(live, first + 1000)):
                pipe.set(f"bench:cleanup-plain:{i}", orjson.dumps(cache_value(i)))
                pipe.zadd(index, {str(i): "+inf"})
            await pipe.execute()

    async def plant_keys(count: int) -> None:
        start = live + next(planted) * count
        await raw.zadd(index, {str(i): NOW_MS - 5_000 for i in range(start, start + count)})

    async def expire_keys() -> int:
        expired = await raw.zrangebyscore(index, "-inf", NOW_MS)
        async with raw.pipeline(transaction=False) as pipe:
            for member in expired:
                pipe.delete(f"bench:cleanup-plain:{member.decode()}")
            pipe.zrem(index, *expired)
            await pipe.execute()
        return len(expired)

    return expire_keys, "ZRANGEBYSCORE + pipelined DEL, ZREM", plant_keys


# -------------------------------------------------------------------- migrate


MIGRATE_MESSAGES = 10
MIGRATE_MEMORIES = 2


def migrate_conversation(i: int) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """Conversation ``i`` of a migration source: (document, raw history, memories with their ids)."""
    memories = [{"memory_id": f"mem_{m}", "text": message(m)["content"][:200]} for m in range(MIGRATE_MEMORIES)]
    return document(i), messages(MIGRATE_MESSAGES, i * MIGRATE_MESSAGES), memories


def build_migrate_source(base_dir: Path, count: int) -> None:
    """``count`` conversations (``conv_000000`` ...) written straight into the file tree's
    documented layout, then one ``os.sync()``: the bytes the API writes (tests/test_migrate_memory.py
    compares them with a tree built through ``store_conversation``, ``store_raw_messages`` and
    ``store_memory``), without the minutes of per-write fsyncs. ``base_dir`` is an
    initialized tree."""
    folder = base_dir / "conversations"
    folder.mkdir(exist_ok=True)
    for i in range(count):
        document_value, history, memories = migrate_conversation(i)
        path = folder / f"conv_{i:06d}"
        path.mkdir()
        (path / "current.json").write_bytes(encode(document_value))
        (path / "raw_messages.json").write_bytes(encode(history))
        (path / "memories.json").write_bytes(encode(memories))
    os.sync()  # on disk before anything is timed: no writeback in between


async def _migrate(ctx: Context, section: Section) -> None:
    sizes = ctx.sizes
    source = FileStorage({"base_dir": ctx.tmp / "migrate-source"})
    await source.initialize()
    await asyncio.to_thread(build_migrate_source, source.base_dir, sizes.migrate)
    targets = iter(range(1, 10_000))
    root = ctx.folder("migrate-targets")

    def drop(db_path: Path) -> None:
        """Each round's copy is removed once timed (10,000 conversations are about 100 MB)."""
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db_path}{suffix}").unlink(missing_ok=True)

    async def ours(_first: int, count: int) -> list[float]:
        path = root / f"ours-{next(targets)}.db"
        destination = create_sqlite_storage(path)
        await destination.initialize()
        began = time.perf_counter()
        report = await migrate(source, destination)
        elapsed = time.perf_counter() - began
        assert report.conversations == sizes.migrate
        assert report.raw_messages == sizes.migrate * MIGRATE_MESSAGES
        await destination.shutdown()
        drop(path)
        return [elapsed / sizes.migrate]

    async def plain(_first: int, count: int) -> list[float]:
        made = SqliteStorage({"db_path": root / f"plain-{next(targets)}.db"})  # the same schema
        await made.initialize()
        await made.shutdown()
        began = time.perf_counter()
        await asyncio.to_thread(_plain_migrate, source.base_dir, made.db_path)
        elapsed = time.perf_counter() - began
        async with SqliteStorage({"db_path": made.db_path}) as copied:  # the plain copy reads back through the API
            last = f"conv_{sizes.migrate - 1:06d}"
            assert len(await copied.list_conversations()) == sizes.migrate
            assert (await copied.load_conversation(last), await copied.load_raw_messages(last),
                    await copied.load_memories(last)) == migrate_conversation(sizes.migrate - 1)  # fmt: skip
        drop(made.db_path)
        return [elapsed / sizes.migrate]

    section.comparisons.append(
        await compare(
            "scale.migrate", f"migrate file -> SQLite, {sizes.migrate:,} conversations "
            f"({MIGRATE_MESSAGES} messages, {MIGRATE_MEMORIES} memories each)",
            [Variant("plain script: read + parse every file, then one transaction of executemany INSERTs (thread)",
                     plain),
             Variant("migrate(FileStorage, SqliteStorage)", ours)],
            ops=1, repeats=sizes.scale_repeats, unit="rate", rate_label="conversations/s",
        )
    )  # fmt: skip
    await source.shutdown()


def _plain_migrate(base_dir: Path, db_path: Path) -> None:
    """What a user would write: read and parse every conversation's document, messages and
    memories, then insert them all in ONE transaction of ``executemany`` INSERTs into the
    SQLite schema (WAL, synchronous=FULL), durable at its commit."""

    def read(path: str) -> Any:
        try:
            with open(path, "rb") as f:
                return orjson.loads(f.read())
        except FileNotFoundError:
            return None

    def text(value: Any) -> str:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()

    conversations: list[tuple[str, str | None]] = []
    history_rows: list[tuple[str, int, str]] = []
    memory_rows: list[tuple[str, str, int, str]] = []
    with os.scandir(base_dir / "conversations") as entries:
        folders = sorted(e.path for e in entries if e.is_dir())
    for folder in folders:
        conversation_id = os.path.basename(folder)
        document_value = read(os.path.join(folder, "current.json"))
        conversations.append((conversation_id, None if document_value is None else text(document_value)))
        history = read(os.path.join(folder, "raw_messages.json")) or []
        history_rows += [(conversation_id, seq, text(m)) for seq, m in enumerate(history)]
        memories = read(os.path.join(folder, "memories.json")) or []
        memory_rows += [(conversation_id, m["memory_id"], position, text(m)) for position, m in enumerate(memories)]
    conn = sqlite3.connect(db_path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO conversations (conversation_id, document) VALUES (?, ?)", conversations)
        conn.executemany("INSERT INTO raw_messages (conversation_id, seq, data) VALUES (?, ?, ?)", history_rows)
        conn.executemany(
            "INSERT INTO memories (conversation_id, memory_id, position, data) VALUES (?, ?, ?, ?)", memory_rows
        )
        conn.execute("COMMIT")
    finally:
        conn.close()


# ---------------------------------------------------------------- concurrency


def _one_and_many(op: Callable[[int, int], Awaitable[Any]], workers: int) -> list[Variant]:
    """One coroutine doing every operation, and ``workers`` coroutines sharing them."""

    async def one(first: int, count: int) -> None:
        for i in range(first, first + count):
            await op(i % workers, i)

    async def many(first: int, count: int) -> None:
        async def worker(w: int) -> None:
            for i in range(first + w, first + count, workers):
                await op(w, i)

        await asyncio.gather(*(worker(w) for w in range(workers)))

    return [Variant("1 coroutine", throughput(one)), Variant(f"{workers} coroutines", throughput(many))]


async def _plain_concurrency(ctx: Context, ids: list[list[str]], total: int) -> Comparison:
    """The file tree row's floor: the same stores, backups kept as by default, written by
    ``durable_write_with_backup`` on a pool of as many threads as coroutines."""
    sizes, workers = ctx.sizes, len(ids)
    root = ctx.folder("concurrency-plain")
    targets = {}
    for conversation_id in (c for row in ids for c in row):
        (root / conversation_id).mkdir()
        (root / ".backups" / conversation_id).mkdir(parents=True)
        targets[conversation_id] = (root / conversation_id / "current.json", root / ".backups" / conversation_id)
    keep = FileSettings().max_backup_files
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(workers) as pool:

        def store(worker: int, i: int) -> Awaitable[None]:
            path, backups = targets[ids[worker][i % 4]]
            data = orjson.dumps(document(i), option=PRETTY)
            return loop.run_in_executor(pool, durable_write_with_backup, path, data, backups, keep)

        return await compare(
            "scale.concurrency.file.plain", f"file: durable_write_with_backup, {workers} threads vs one (the floor)",
            _one_and_many(store, workers), ops=total, repeats=sizes.repeats, warmup=total, unit="rate",
        )  # fmt: skip


async def _concurrency(ctx: Context, section: Section, backend: str) -> None:
    sizes = ctx.sizes
    storage = await open_storage(ctx, backend, f"concurrency-{backend}")
    workers = sizes.concurrency
    ids = [[f"c{w:02d}_{k:02d}" for k in range(4)] for w in range(workers)]
    total = workers * sizes.per_coroutine

    def store(worker: int, i: int) -> Awaitable[bool]:
        return storage.store_conversation(ids[worker][i % 4], document(i))

    async def load(worker: int, i: int) -> None:
        assert await storage.load_conversation(ids[worker][i % 4]) is not None

    for name, op in (("store_conversation", store), ("load_conversation", load)):
        section.comparisons.append(
            await compare(
                f"scale.concurrency.{backend}.{name}", f"{backend}: {name}, {workers} coroutines vs one",
                _one_and_many(op, workers), ops=total, repeats=sizes.repeats, warmup=total, unit="rate",
            )
        )  # fmt: skip
        if backend == "file" and name == "store_conversation":
            section.comparisons.append(await _plain_concurrency(ctx, ids, total))
    await storage.shutdown()
