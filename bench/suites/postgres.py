"""PostgresStorage against raw asyncpg sending the same statements, and against the OpenAI
Agents SDK's SQLAlchemySession, all on one PostgreSQL server the bench starts."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import orjson

from connectome_storage import PostgresStorage
from connectome_storage.backends import _postgres_kv as pg_kv
from connectome_storage.backends import postgres as pg
from connectome_storage.backends._postgres_schema import (
    CREATE_STORED,
    DROP_EXPIRED,
    LOCK_CONVERSATION,
    MIGRATIONS,
    SET_MESSAGE_COUNT,
)
from connectome_storage.codec import compact_text
from connectome_storage.interface import Kind

from ..backends import open_storage, postgres_dsn
from ..context import Context
from ..data import document, message, messages
from ..harness import Section, Variant, compare, each

__all__ = ["run"]

INTRO = """\
PostgresStorage (asyncpg pool; values checked and encoded as canonical JSON text; every
write one transaction that first takes the entity's advisory lock shared, so that a
`storage.transaction()` holding that entity makes it wait) against an asyncpg pool of the
same size on the same server (127.0.0.1, `fsync=on`, default `synchronous_commit`),
used two ways: the very statements PostgresStorage sends, in the same transaction (the
baseline of each table: what is left is the library's Python), and the one statement a
user would write by hand (an autocommitted upsert, `orjson` for the values), which shows
what the advisory lock, the expiry check and the message count cost. Where the peer is
installed, the OpenAI Agents SDK's `SQLAlchemySession` (SQLAlchemy's asyncio engine over
asyncpg, `postgresql+asyncpg://`) appends and loads a history on the same server.
Figures are the median time of one operation, one coroutine."""

SAME = "raw asyncpg, same statements"
HAND = "raw asyncpg, one statement by hand"
LOCK_SHARED = "SELECT pg_advisory_xact_lock_shared(k) FROM unnest($1::bigint[]) AS k"
RAW_SCHEMA = "bench_raw"
KV_INSERT = (
    "INSERT INTO kv (namespace, key, value, tags, created_ms, updated_ms) VALUES ('bench', $1, $2, '{}', $3, $3)"
)


def _dumps(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


async def run(ctx: Context) -> Section:
    sizes = ctx.sizes
    section = Section("postgres", "PostgresStorage against raw asyncpg", INTRO)
    dsn = await postgres_dsn(ctx)
    ours = await open_storage(ctx, "postgres", "bench_ours")
    assert isinstance(ours, PostgresStorage)
    pool: Any = await asyncpg.create_pool(
        dsn, min_size=1, max_size=ours.settings.pool_size, server_settings={"search_path": RAW_SCHEMA}
    )
    await _raw_schema(pool)
    ids = [f"conv_{i:03d}" for i in range(sizes.keys)]
    lock_keys = {cid: ours._lock_key("conversation", cid) for cid in ids}
    kv_lock_keys = {cid: ours._lock_key("kv", "bench", cid) for cid in ids}
    history = sizes.session_histories[0]
    await ours.store_raw_messages("history", messages(history))
    for cid in ids:
        await ours.store_conversation(cid, document(0))
        await ours.kv("bench").set(cid, document(0))
    await _raw_seed(pool, ids)
    write_doc, read_doc = pg._WRITE_COLUMN[Kind.CONVERSATION], pg._READ_COLUMN[Kind.CONVERSATION]
    append_sql = pg._APPEND[Kind.RAW_MESSAGES]
    kv_get_sql = f"SELECT {pg_kv._COLUMNS} FROM kv WHERE namespace = $1 AND key = $2"
    empty = compact_text({})

    def now_ms() -> int:
        return round(time.time() * 1000)

    # ------------------------------------------------------------ store
    async def ours_store(i: int) -> None:
        await ours.store_conversation(ids[i % len(ids)], document(i))

    async def same_store(i: int) -> None:
        cid = ids[i % len(ids)]
        text, now = _dumps(document(i)), now_ms()
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(LOCK_SHARED, [lock_keys[cid]])
            await conn.execute(DROP_EXPIRED, cid, now)
            await conn.execute(write_doc, cid, text)

    async def hand_store(i: int) -> None:
        await pool.execute(write_doc, ids[i % len(ids)], _dumps(document(i)))

    # ------------------------------------------------------------- load
    async def ours_load(i: int) -> None:
        assert await ours.load_conversation(ids[i % len(ids)]) is not None

    async def same_load(i: int) -> None:
        orjson.loads(await pool.fetchval(read_doc, ids[i % len(ids)], now_ms()))

    # ----------------------------------------------------------- append
    async def ours_append(i: int) -> None:
        await ours.append_raw_messages(ids[i % len(ids)], [message(i)])

    async def same_append(i: int) -> None:
        cid = ids[i % len(ids)]
        texts, now = [_dumps(message(i))], now_ms()
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(LOCK_SHARED, [lock_keys[cid]])
            await conn.execute(DROP_EXPIRED, cid, now)
            await conn.execute(LOCK_CONVERSATION, cid)
            count = await conn.fetchval(append_sql, cid, texts)
            await conn.execute(SET_MESSAGE_COUNT, cid, count)

    async def hand_append(i: int) -> None:
        await pool.execute(
            "INSERT INTO raw_messages (conversation_id, seq, data) SELECT $1, COALESCE(MAX(seq), -1) + 1, $2 "
            "FROM raw_messages WHERE conversation_id = $1",
            ids[i % len(ids)],
            _dumps(message(i)),
        )

    # ------------------------------------------------------------ kv set
    async def ours_kv_set(i: int) -> None:
        await ours.kv("bench").set(ids[i % len(ids)], document(i))

    async def same_kv_set(i: int) -> None:
        key = ids[i % len(ids)]
        text, now = _dumps(document(i)), now_ms()
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(LOCK_SHARED, [kv_lock_keys[key]])
            rows = await conn.fetch(pg_kv._UPSERT, "bench", [key], [text], [empty], now, [now], [now], [None])
            await conn.execute(pg_kv._DROP_TAGS, "bench", [row[0] for row in rows], [], [], [])

    async def hand_kv_set(i: int) -> None:
        await pool.execute(
            KV_INSERT
            + " ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value, updated_ms = excluded.updated_ms",
            ids[i % len(ids)],
            _dumps(document(i)),
            now_ms(),
        )

    # ------------------------------------------------------------ kv get
    async def ours_kv_get(i: int) -> None:
        assert await ours.kv("bench").get(ids[i % len(ids)]) is not None

    async def same_kv_get(i: int) -> None:
        row = await pool.fetchrow(kv_get_sql, "bench", ids[i % len(ids)])
        orjson.loads(row[1]), orjson.loads(row[2])

    Op = Callable[[int], Awaitable[None]]
    table: list[tuple[str, str, int, Op, Op, Op | None]] = [
        ("store", "store_conversation (2 KB)", sizes.writes * 2, same_store, ours_store, hand_store),
        ("load", "load_conversation (2 KB)", sizes.reads, same_load, ours_load, None),
        ("append", "append_raw_messages (one message)", sizes.writes * 2, same_append, ours_append, hand_append),
        ("kv_set", "kv.set (2 KB)", sizes.writes * 2, same_kv_set, ours_kv_set, hand_kv_set),
        ("kv_get", "kv.get (2 KB)", sizes.reads, same_kv_get, ours_kv_get, None),
    ]
    for key, title, ops, same_op, our_op, hand_op in table:
        variants = [Variant(SAME, each(same_op)), Variant("PostgresStorage", each(our_op))]
        if hand_op is not None:
            variants.append(Variant(HAND, each(hand_op)))
        section.comparisons.append(
            await compare(f"postgres.{key}", title, variants, ops=ops, repeats=sizes.repeats, warmup=len(ids))
        )
    await _against_sqlalchemy_session(ctx, section, ours, dsn, history)
    version = await pool.fetchval("SHOW server_version")
    section.notes.append(f"PostgreSQL {version}, asyncpg {asyncpg.__version__}, pool_size {ours.settings.pool_size}.")
    await pool.close()
    await ours.shutdown()
    return section


async def _raw_schema(pool: Any) -> None:
    """The storage's own tables and indexes, in a schema of their own."""
    async with pool.acquire() as conn:
        await conn.execute(f"DROP SCHEMA IF EXISTS {RAW_SCHEMA} CASCADE")
        await conn.execute(f"CREATE SCHEMA {RAW_SCHEMA}")
        await conn.execute(CREATE_STORED["json"])  # the value columns' type, as the storage makes it
        for migration in MIGRATIONS:
            for statement in migration:
                await conn.execute(statement)


async def _raw_seed(pool: Any, ids: list[str]) -> None:
    now = round(time.time() * 1000)
    for cid in ids:
        await pool.execute(pg._WRITE_COLUMN[Kind.CONVERSATION], cid, _dumps(document(0)))
        await pool.execute(
            KV_INSERT,
            cid,
            _dumps(document(0)),
            now,
        )


async def _against_sqlalchemy_session(
    ctx: Context, section: Section, ours: PostgresStorage, dsn: str, history: int
) -> None:
    """The OpenAI Agents SDK's SQLAlchemySession on the same server, when it is installed."""
    try:
        from agents.extensions.memory.sqlalchemy_session import SQLAlchemySession
    except ImportError as e:
        if not ctx.smoke:
            raise SystemExit(
                f"SQLAlchemySession is missing ({e}); install the bench extra: pip install -e '.[bench]'"
            ) from e
        if "openai-agents" not in ctx.missing_peers:  # the SDK is there, SQLAlchemy is not
            ctx.missing_peers["openai-agents[sqlalchemy]"] = f"{type(e).__name__}: {e}"
        return
    sizes = ctx.sizes
    url = "postgresql+asyncpg://" + dsn.split("://", 1)[1]
    appended = SQLAlchemySession.from_url("appended", url=url, create_tables=True)
    loaded = SQLAlchemySession.from_url("history", url=url, create_tables=True)
    await loaded.clear_session()
    await loaded.add_items(messages(history))  # type: ignore[arg-type]

    async def session_add(i: int) -> None:
        await appended.add_items([message(i)])  # type: ignore[list-item]

    async def ours_add(i: int) -> None:
        await ours.append_raw_messages("appended", [message(i)])

    async def session_get(i: int) -> None:
        assert len(await loaded.get_items()) == history

    async def ours_get(i: int) -> None:
        assert len(await ours.load_raw_messages("history")) == history

    for key, title, ops, theirs, mine in [
        ("session.append", "append one message: SQLAlchemySession.add_items", sizes.writes * 2, session_add, ours_add),
        (f"session.load{history}", f"load a {history:,}-message history: get_items", max(3, sizes.reads // 50),
         session_get, ours_get),
    ]:  # fmt: skip
        section.comparisons.append(
            await compare(
                f"postgres.{key}",
                title,
                [Variant("SQLAlchemySession", each(theirs)), Variant("PostgresStorage", each(mine))],
                ops=ops,
                repeats=sizes.repeats,
                warmup=3,
            )
        )
    for session in (appended, loaded):
        await session.engine.dispose()
