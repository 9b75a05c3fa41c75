"""SqliteStorage against raw aiosqlite, the OpenAI Agents SDK's SQLiteSession, and diskcache."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import aiosqlite
import orjson

from connectome_storage import SqliteStorage, create_sqlite_storage
from connectome_storage.backends._sqlite_schema import ENSURE_PARENT

from ..context import Context
from ..data import cache_value, document, message, messages
from ..floors import PlainLog
from ..harness import Section, Variant, compare, each, each_sync, throughput

__all__ = ["run"]

INTRO = """\
SqliteStorage with its defaults (WAL, `synchronous=FULL`, one transaction and one
worker-thread hop per operation) against the same SQL statements sent through
aiosqlite's public API as a user would write them (one `await` per statement, so one
thread hop each), against the OpenAI Agents SDK's `SQLiteSession` (thread-local
sqlite3 connections via `asyncio.to_thread`, stdlib `json`), and against diskcache for
the LLM cache (a synchronous library, called on the event loop's thread; SqliteStorage's
point reads run there too, from a second read-only connection, see docs/sqlite.md). The journal
and synchronous modes each one ran with are read back from its own connection and
listed below the tables."""

# The statements SqliteStorage runs, as a user would send them one by one.
STORE = ("INSERT INTO conversations (conversation_id, document) VALUES (?, ?) "
         "ON CONFLICT (conversation_id) DO UPDATE SET document = excluded.document")  # fmt: skip
LOAD = "SELECT document FROM conversations WHERE conversation_id = ?"
LAST = "SELECT COALESCE(MAX(seq), -1) FROM raw_messages WHERE conversation_id = ?"
INSERT = "INSERT INTO raw_messages (conversation_id, seq, data) VALUES (?, ?, ?)"
HISTORY = "SELECT seq, data FROM raw_messages WHERE conversation_id = ? ORDER BY seq"


def _dumps(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


async def run(ctx: Context) -> Section:
    section = Section("sqlite", "SqliteStorage against raw aiosqlite, SQLiteSession and diskcache", INTRO)
    root = ctx.folder("sqlite")
    ours = SqliteStorage({"db_path": root / "ours.db"})
    await ours.initialize()
    await _against_raw(ctx, section, ours, root)
    await _against_session(ctx, section, ours, root)
    await _against_diskcache(ctx, section, ours, root)
    section.notes.insert(0, f"SqliteStorage: {await _modes(ours)}.")
    await ours.shutdown()
    return section


async def _modes(storage: SqliteStorage) -> str:
    details = (await storage.health_check())["details"]
    return f"journal_mode={details['journal_mode']}, synchronous={details['synchronous']}"


def _pragmas(conn: sqlite3.Connection) -> str:
    levels = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
    journal = conn.execute("PRAGMA journal_mode").fetchone()[0]
    synchronous = conn.execute("PRAGMA synchronous").fetchone()[0]
    return f"journal_mode={journal}, synchronous={levels.get(synchronous, synchronous)}"


async def _against_raw(ctx: Context, section: Section, ours: SqliteStorage, root: Path) -> None:
    sizes = ctx.sizes
    # The same schema, made by the library, then driven by hand with the same pragmas.
    raw_path = root / "raw.db"
    made = create_sqlite_storage(raw_path)
    await made.initialize()
    await made.shutdown()
    db = await aiosqlite.connect(raw_path, isolation_level=None)
    await db.execute("PRAGMA busy_timeout = 30000")
    await db.execute("PRAGMA foreign_keys = ON")
    await db.execute("PRAGMA synchronous = FULL")
    await db.execute("PRAGMA journal_mode = WAL")
    ids = [f"conv_{i:03d}" for i in range(sizes.keys)]
    history = sizes.session_histories[0]

    async def ours_store(i: int) -> None:
        await ours.store_conversation(ids[i % len(ids)], document(i))

    async def raw_store(i: int) -> None:
        await db.execute("BEGIN IMMEDIATE")
        await db.execute(STORE, (ids[i % len(ids)], _dumps(document(i))))
        await db.execute("COMMIT")

    async def ours_load(i: int) -> None:
        assert await ours.load_conversation(ids[i % len(ids)]) is not None

    async def raw_load(i: int) -> None:
        rows = await db.execute_fetchall(LOAD, (ids[i % len(ids)],))
        orjson.loads(next(iter(rows))[0])

    async def ours_append(i: int) -> None:
        await ours.append_raw_messages("history", [message(history + i)])

    async def raw_append(i: int) -> None:
        await db.execute("BEGIN IMMEDIATE")
        await db.execute(ENSURE_PARENT["conversations"], ("history",))
        last = next(iter(await db.execute_fetchall(LAST, ("history",))))[0]
        await db.execute(INSERT, ("history", last + 1, _dumps(message(history + i))))
        await db.execute("COMMIT")

    async def ours_history(i: int) -> None:
        assert len(await ours.load_raw_messages("history")) >= history

    async def raw_history(i: int) -> None:
        rows = await db.execute_fetchall(HISTORY, ("history",))
        assert len([orjson.loads(data) for _seq, data in rows]) >= history

    await ours.store_raw_messages("history", messages(history))
    await db.execute("BEGIN IMMEDIATE")
    await db.execute(ENSURE_PARENT["conversations"], ("history",))
    await db.executemany(INSERT, [("history", seq, _dumps(m)) for seq, m in enumerate(messages(history))])
    await db.execute("COMMIT")
    raw = "raw aiosqlite, same statements"
    for key, title, ops, pair in [
        ("sqlite.raw.store", "store_conversation (2 KB)", sizes.writes, (raw_store, ours_store)),
        ("sqlite.raw.load", "load_conversation (2 KB)", sizes.reads, (raw_load, ours_load)),
        ("sqlite.raw.append", f"append one message to ~{history:,}", sizes.writes, (raw_append, ours_append)),
        ("sqlite.raw.history", f"load a history of ~{history:,} messages", max(3, sizes.reads // 50),
         (raw_history, ours_history)),
    ]:  # fmt: skip
        variants = [Variant(raw, each(pair[0])), Variant("SqliteStorage", each(pair[1]))]
        section.comparisons.append(await compare(key, title, variants, ops=ops, repeats=sizes.repeats, warmup=len(ids)))
    section.notes.append(
        f"raw aiosqlite: {await _raw_pragmas(db)}; a store is 3 awaits (BEGIN IMMEDIATE, "
        "UPSERT, COMMIT), an append 5, a load 1 (`execute_fetchall`)."
    )
    await db.close()


async def _raw_pragmas(db: aiosqlite.Connection) -> str:
    # Read on aiosqlite's own thread, where its connection lives.
    text: str = await db._execute(_pragmas, db._conn)  # type: ignore[no-untyped-call]
    return text


async def _against_session(ctx: Context, section: Section, ours: SqliteStorage, root: Path) -> None:
    sizes = ctx.sizes
    module = ctx.peer("agents")
    if module is None:
        section.notes.append("openai-agents is not installed: SQLiteSession was skipped (smoke run).")
        return
    append_size = sizes.session_histories[0]
    session = module.SQLiteSession("append", root / "session.db")
    await session.add_items(messages(append_size))
    await ours.store_raw_messages("session-append", messages(append_size))

    async def ours_append(i: int) -> None:
        await ours.append_raw_messages("session-append", [message(append_size + i)])

    async def session_append(i: int) -> None:
        await session.add_items([message(append_size + i)])

    # The floor for any asyncio library at this durability: one INSERT committed (one
    # WAL fsync) on a worker thread, with no checks, no index lookup, no parent row.
    floor = PlainLog(root / "floor.db")

    def floor_commit(i: int) -> None:
        floor.commit(_dumps(message(i)))

    async def floor_append(i: int) -> None:
        await asyncio.to_thread(floor_commit, i)

    section.comparisons.append(
        await compare(
            "sqlite.session.append", f"append one message to ~{append_size:,} (equal durability)",
            [Variant("SQLiteSession.add_items", each(session_append)),
             Variant("SqliteStorage.append_raw_messages", each(ours_append)),
             Variant("one INSERT + COMMIT in asyncio.to_thread", each(floor_append), "floor"),
             Variant("one INSERT + COMMIT on the loop's thread", each_sync(floor_commit), "floor, blocks the loop")],
            ops=sizes.writes, repeats=sizes.repeats, warmup=5,
        )
    )  # fmt: skip
    floor.close()
    await _concurrent_sessions(ctx, section, ours, root, module)
    # The floor of a load: the rows of one indexed SELECT, each parsed, on a worker thread.
    plain = sqlite3.connect(root / "floor.db", isolation_level=None, check_same_thread=False)
    plain.execute("CREATE TABLE IF NOT EXISTS history (name TEXT, seq INTEGER, data TEXT, PRIMARY KEY (name, seq))")
    for size in sizes.session_histories:
        loaded = module.SQLiteSession(f"load{size}", root / "session.db")
        await loaded.add_items(messages(size))
        await ours.store_raw_messages(f"load{size}", messages(size))
        with plain:
            plain.executemany(
                "INSERT INTO history VALUES (?, ?, ?)",
                [(f"load{size}", n, _dumps(m)) for n, m in enumerate(messages(size))],
            )

        async def ours_load(i: int, size: int = size) -> None:
            assert len(await ours.load_raw_messages(f"load{size}")) == size

        async def session_load(i: int, session: Any = loaded, size: int = size) -> None:
            assert len(await session.get_items()) == size

        def plain_read(size: int) -> list[Any]:
            rows = plain.execute("SELECT data FROM history WHERE name = ? ORDER BY seq", (f"load{size}",))
            return [orjson.loads(data) for (data,) in rows]

        async def plain_load(i: int, size: int = size) -> None:
            assert len(await asyncio.to_thread(plain_read, size)) == size

        section.comparisons.append(
            await compare(
                f"sqlite.session.load{size}", f"load a history of {size:,} messages",
                [Variant("SQLiteSession.get_items", each(session_load)),
                 Variant("SqliteStorage.load_raw_messages", each(ours_load)),
                 Variant("one SELECT + orjson.loads per row in asyncio.to_thread", each(plain_load), "floor")],
                ops=max(3, sizes.reads // (size // 10)), repeats=sizes.repeats, warmup=2,
            )
        )  # fmt: skip
        loaded.close()
    plain.close()
    section.notes.append(
        f"SQLiteSession: {_pragmas(session._get_connection())} (sqlite3 defaults, its own WAL pragma)."
    )
    session.close()


async def _concurrent_sessions(ctx: Context, section: Section, ours: SqliteStorage, root: Path, module: Any) -> None:
    """16 coroutines, each appending a few messages at a time to its own conversation.

    SQLiteSession: one session per conversation, all on one database file (each commit is
    its own transaction, on the threads of ``asyncio.to_thread``, WAL and sqlite3's default
    ``synchronous=FULL``: the durability of SqliteStorage's defaults, as in
    ``sqlite.session.append``). SqliteStorage: one storage, whose writes that arrive while
    a commit is in flight commit together in the next transaction (group commit).
    """
    sizes = ctx.sizes
    workers, per_call = sizes.concurrency, 3
    total = workers * sizes.per_coroutine
    sessions = [module.SQLiteSession(f"concurrent{w}", root / "sessions.db") for w in range(workers)]
    ids = [f"concurrent{w}" for w in range(workers)]

    def batch(i: int) -> list[dict[str, Any]]:
        return [message(per_call * i + k) for k in range(per_call)]

    async def session_add(worker: int, i: int) -> None:
        await sessions[worker].add_items(batch(i))

    async def ours_append(worker: int, i: int) -> None:
        await ours.append_raw_messages(ids[worker], batch(i))

    def concurrently(op: Any) -> Any:
        async def many(first: int, count: int) -> None:
            async def worker(w: int) -> None:
                for i in range(first + w, first + count, workers):
                    await op(w, i)

            await asyncio.gather(*(worker(w) for w in range(workers)))

        return throughput(many)

    section.comparisons.append(
        await compare(
            "sqlite.sessions.concurrent",
            f"{workers} coroutines appending {per_call} messages at a time to their own conversations "
            "(equal durability)",
            [Variant(f"{workers} SQLiteSessions on one file", concurrently(session_add)),
             Variant(f"SqliteStorage, {workers} coroutines", concurrently(ours_append))],
            ops=total, repeats=sizes.repeats, warmup=total, unit="rate", rate_label="calls/s",
        )
    )  # fmt: skip
    section.notes.append(
        f"{workers} SQLiteSessions: {_pragmas(sessions[0]._get_connection())}, one file, a connection per "
        "thread of asyncio.to_thread's pool."
    )
    for session in sessions:
        session.close()


async def _against_diskcache(ctx: Context, section: Section, ours: SqliteStorage, root: Path) -> None:
    sizes = ctx.sizes
    module = ctx.peer("diskcache")
    if module is None:
        section.notes.append("diskcache is not installed: it was skipped (smoke run).")
        return
    keys = [f"llm:answer:{i}" for i in range(sizes.keys)]
    # diskcache runs synchronous=NORMAL by default; each mode is compared with the other
    # library in that same mode, so durability is equal within a table.
    for mode, level in (("FULL", 2), ("NORMAL", 1)):
        cache = module.Cache(str(root / f"diskcache-{mode}"), sqlite_synchronous=level)
        storage = ours if mode == "FULL" else SqliteStorage({"db_path": root / "ours-normal.db", "synchronous": mode})
        await storage.initialize()

        async def ours_set(i: int, storage: Any = storage) -> None:
            await storage.store_cache(keys[i % len(keys)], cache_value(i))

        def disk_set(i: int, cache: Any = cache) -> None:
            cache.set(keys[i % len(keys)], cache_value(i))

        async def ours_get(i: int, storage: Any = storage) -> None:
            assert await storage.load_cache(keys[i % len(keys)]) is not None

        async def ours_state(i: int, storage: Any = storage) -> None:
            assert await storage.load_system_state(keys[i % len(keys)]) is not None

        async def ours_document(i: int, storage: Any = storage) -> None:
            assert await storage.load_conversation(keys[i % len(keys)]) is not None

        def disk_get(i: int, cache: Any = cache) -> None:
            assert cache.get(keys[i % len(keys)]) is not None

        section.comparisons.append(
            await compare(
                f"sqlite.diskcache.set.{mode.lower()}", f"cache set, synchronous={mode}",
                [Variant("diskcache.Cache.set (sync)", each_sync(disk_set)),
                 Variant("SqliteStorage.store_cache", each(ours_set))],
                ops=sizes.writes, repeats=sizes.repeats, warmup=len(keys),
            )
        )  # fmt: skip
        for i, key in enumerate(keys):  # the same values as system states and documents
            await storage.store_system_state(key, cache_value(i))
            await storage.store_conversation(key, {"value": cache_value(i)})
        section.comparisons.append(
            await compare(
                f"sqlite.diskcache.get.{mode.lower()}", f"cache get, synchronous={mode}",
                [Variant("diskcache.Cache.get (sync)", each_sync(disk_get)),
                 Variant("SqliteStorage.load_cache", each(ours_get)),
                 Variant("SqliteStorage.load_system_state", each(ours_state), "same value"),
                 Variant("SqliteStorage.load_conversation", each(ours_document), "same value as a document")],
                ops=sizes.reads, repeats=sizes.repeats, warmup=len(keys),
            )
        )  # fmt: skip
        section.notes.append(f"diskcache ({mode}): {_pragmas(cache._con)}.")
        cache.close()
        if storage is not ours:
            section.notes.append(f"SqliteStorage ({mode}): {await _modes(storage)}.")
            await storage.shutdown()
