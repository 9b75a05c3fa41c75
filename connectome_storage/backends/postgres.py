"""PostgresStorage: the same API on a PostgreSQL server, through asyncpg and its pool.

Tables live in one PostgreSQL schema (the ``schema`` option, ``connectome`` by default),
so one database can hold several storages; every pooled connection has that schema as
its ``search_path``, so the SQL names tables without qualifying them. docs/postgres.md
draws the tables (``_postgres_schema.py`` creates and upgrades them).

Values go through the serializer chosen by the ``serializer`` option (``serializer.py``):
canonical JSON text by default, never ``jsonb`` (jsonb rewrites numbers, ``1e300``
becomes a 301-digit integer and ``-0.0`` becomes ``0``, and refuses ``\\u0000`` in
strings, so a value would not come back equal), or msgpack bytes. Value columns are of
the domain ``stored``, ``text`` or ``bytea`` after the serializer that created the schema
(row ``serializer`` of table ``meta``); a schema is only ever opened with that one.
Queries that need a field of the conversation metadata read it as ``json`` (which keeps
numbers as written), or fall back to the reference implementation in Python where SQL
cannot answer exactly.

How every operation runs (``_read`` and ``_write``):

- a read takes a pooled connection and runs its statement(s) in autocommit;
- a write runs in one transaction on a pooled connection, which first takes a shared
  transaction-scoped advisory lock on each entity it writes (``_shared_locks``), so that
  a ``storage.transaction()`` holding that entity's lock exclusively makes it wait
  (``lock_timeout`` = ``connection_timeout``, then LockTimeoutError);
- inside a transaction's commit, ``_write`` does not run the body: it hands it to the
  commit (``_collecting``), which runs every body on the transaction's own connection
  and then COMMITs (``_postgres_tx.py``).

A failure to connect is retried ``max_retries`` times with exponential backoff; so is a
read whose connection broke; a write whose connection broke after it was sent is never
sent again (it may have been applied): it raises BackendUnavailableError saying so.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import logging
import random
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import orjson

from ..config import PostgresSettings, redact_url
from ..errors import (
    AccessDeniedError,
    BackendUnavailableError,
    ConfigError,
    CorruptedDataError,
    InvalidArgumentError,
    LockTimeoutError,
    StorageError,
    StorageFullError,
    StorageIOError,
    TransactionError,
    ValueTooLargeError,
)
from ..interface import CacheEntry, Kind, Problem, StorageInterface
from ..serializer import make_serializer
from ._postgres_conversations import PostgresConversations
from ._postgres_kv import PostgresKV
from ._postgres_messages import PostgresMessages
from ._postgres_schema import (
    CLAIM_SERIALIZER,
    CREATE_STORED,
    DROP_EXPIRED,
    LOCK_AGENT,
    LOCK_CONVERSATION,
    META_TABLE,
    MIGRATIONS,
    PRUNE_CONVERSATION,
    SCHEMA_VERSION,
    SET_MESSAGE_COUNT,
    STORED_SERIALIZER,
)
from ._postgres_tx import PostgresTransactions

if TYPE_CHECKING:
    from ..conversations import MetaRecord

__all__ = ["Body", "PostgresStorage"]

T = TypeVar("T")
# One operation's statements, run on one connection (asyncpg.Connection).
Body = Callable[[Any], Awaitable[T]]

logger = logging.getLogger("connectome_storage")

_INSTALL_HINT = "PostgresStorage needs the asyncpg package: pip install connectome-storage[postgres]"
_HINT = "store the entity again to replace it, or delete it"
# Backoff between attempts to connect (or to read again): 50 ms, 100 ms, 200 ms ... at most 2 s.
_FIRST_PAUSE = 0.05
_LONGEST_PAUSE = 2.0
# Set by a transaction's commit while it collects the bodies of its ops (_postgres_tx.py).
_collecting: contextvars.ContextVar[tuple[PostgresStorage, list[tuple[str, Body[Any]]]] | None] = (
    contextvars.ContextVar("connectome_postgres_collecting", default=None)
)


class _NotSent(Exception):
    """A write whose BEGIN failed: nothing of it reached the server, so it may be sent again
    (its cause is the error of the connection)."""


def _import_asyncpg() -> Any:
    try:
        import asyncpg  # type: ignore[import-untyped]
    except ImportError as e:
        raise ImportError(_INSTALL_HINT) from e
    return asyncpg


class PostgresStorage(PostgresTransactions, PostgresConversations, PostgresKV, PostgresMessages, StorageInterface):
    """Stores everything in one schema of a PostgreSQL database.

    Options: ``dsn`` (``postgresql://user:password@host:port/database``), ``schema``,
    ``connection_timeout`` (seconds to connect, and to wait for a lock), ``pool_size``,
    ``max_retries``, ``serializer`` (``json`` or ``msgpack``), ``clock``,
    ``default_cache_ttl``. Raises ImportError naming the extra when asyncpg (or msgpack,
    for that serializer) is missing.
    """

    backend_name: ClassVar[str] = "postgres"
    settings_class: ClassVar[type[PostgresSettings]] = PostgresSettings
    settings: PostgresSettings

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__(config)
        self._asyncpg = _import_asyncpg()
        self._serializer = make_serializer(self.settings.serializer)
        # JSON goes to text columns, msgpack to bytea (the domain ``stored`` of the schema).
        self._text = self._serializer.text
        # The JSON path calls orjson itself, as before the option existed (the kv reads).
        self._loads: Callable[[Any], Any] = orjson.loads if self._text else self._serializer.loads
        self._schema = self.settings.schema
        self._server = redact_url(self.settings.dsn)  # for messages: never the password
        self._pool: Any = None  # asyncpg.Pool while initialized

    def __repr__(self) -> str:
        return f"{type(self).__name__}(server={self._server!r}, schema={self._schema!r})"

    # ----------------------------------------------------------------- lifecycle

    async def _open(self) -> None:
        timeout = self.settings.connection_timeout
        server_settings = {
            "search_path": self._schema,
            # A write waiting for a transaction's entity lock gives up after connection_timeout.
            "lock_timeout": str(round(timeout * 1000)),
            "application_name": "connectome-storage",
        }
        self._pool = await self._connecting(
            lambda: self._asyncpg.create_pool(
                self.settings.dsn,
                min_size=1,
                max_size=self.settings.pool_size,
                timeout=timeout,
                server_settings=server_settings,
            )
        )
        try:
            await self._upgrade_schema()
        except BaseException:
            await self._close()
            raise

    async def _upgrade_schema(self) -> None:
        """Create the schema and its tables, or upgrade them, under an advisory lock (two
        processes opening a new database at once: the second waits, then finds it done)."""

        async def body(conn: Any) -> None:
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self._schema}"')
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL, one boolean PRIMARY KEY "
                "DEFAULT true CHECK (one))"
            )
            version = await conn.fetchval("SELECT version FROM schema_version")
            if version is None:
                version = 0
                await conn.execute("INSERT INTO schema_version (version) VALUES (0)")
            if version > SCHEMA_VERSION:
                raise ConfigError(
                    f"schema {self._schema!r} on {self._server} holds version {version}, written by a newer "
                    f"connectome-storage; this one reads up to {SCHEMA_VERSION}: upgrade the package"
                )
            await self._check_serializer(conn, version)
            for step in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[step]:
                    await conn.execute(statement)
                logger.info("%s schema %s upgraded to version %d", self._server, self._schema, step + 1)
            await conn.execute("UPDATE schema_version SET version = $1", SCHEMA_VERSION)

        async def locked(conn: Any) -> None:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", self._lock_key("schema"))
                await body(conn)

        await self._on_connection("preparing the schema of", locked, write=True)

    async def _check_serializer(self, conn: Any, version: int) -> None:
        """Refuse a schema written with another serializer; claim a new one for ours (under
        the schema's advisory lock: two storages opening a new schema with different
        serializers at once, the second finds the first one's row and is refused)."""
        wanted = self._serializer.name
        await conn.execute(META_TABLE)
        stored = await conn.fetchval(STORED_SERIALIZER)
        if stored is None:
            # A schema whose tables exist already but has no row is one written before the
            # option existed: its values are JSON text.
            stored = "json" if version > 0 else wanted
            await conn.execute(CLAIM_SERIALIZER, stored)
            await conn.execute(CREATE_STORED[stored])  # before migration 1 names it
        if stored != wanted:
            raise ConfigError(
                f"schema {self._schema!r} on {self._server} was written with serializer={stored!r}, but this "
                f"storage was opened with serializer={wanted!r}; open it with serializer={stored!r} (or use "
                f"another schema, or copy the data across with migrate)"
            )

    async def _close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), self.settings.connection_timeout)
            except (TimeoutError, OSError, self._asyncpg.PostgresError) as e:
                logger.warning("closing the pool of %s: %s", self._server, e)
                pool.terminate()

    @property
    def pool(self) -> Any:
        """The asyncpg pool in use (only while initialized)."""
        assert self._pool is not None, "PostgresStorage is not initialized"
        return self._pool

    # ------------------------------------------------------------ running bodies

    async def _read(self, action: str, body: Body[T]) -> T:
        """Run ``body`` on a pooled connection (autocommit); retried when the connection broke."""
        own = self._own_transaction()
        if own is not None:  # inside a transaction's block: on its connection (_postgres_tx.py)
            return await self._tx_run(own, action, body)
        return await self._on_connection(action, body, write=False)

    async def _write(self, action: str, body: Body[T], entities: tuple[tuple[str, ...], ...] = ()) -> T:
        """Run ``body`` in one transaction that first takes the shared lock of each of
        ``entities`` (what a ``storage.transaction()`` holding them makes wait)."""
        collecting = _collecting.get()
        if collecting is not None and collecting[0] is self:  # a transaction's commit: run later, all at once
            collecting[1].append((action, body))
            return None  # type: ignore[return-value]
        self._check_not_own_transaction(action, entities)
        keys = self._shared_locks(entities)  # in one global order (_postgres_tx.py)

        async def transaction(conn: Any) -> T:
            begun = False
            try:
                async with conn.transaction():
                    begun = True
                    if keys:
                        await conn.execute(
                            "SELECT pg_advisory_xact_lock_shared(k) FROM unnest($1::bigint[]) AS k", keys
                        )
                    return await body(conn)
            except Exception as e:
                if not begun:  # BEGIN itself failed: none of the write reached the server
                    raise _NotSent from e
                raise

        return await self._on_connection(action, transaction, write=True)

    async def _on_connection(self, action: str, body: Body[T], *, write: bool, attempts: int = 0) -> T:
        """Run ``body`` on a pooled connection, ``attempts`` times at most (0: max_retries + 1)
        while the connection cannot be had or breaks; a write is tried again only when it was
        never sent."""
        pool = self._pool
        if pool is None:
            raise StorageIOError(f"the pool of {self._server} is closed")
        attempts = attempts or self.settings.max_retries + 1
        for attempt in range(attempts):
            sent = False
            try:
                async with pool.acquire(timeout=self.settings.connection_timeout) as conn:
                    sent = True
                    try:
                        return await body(conn)
                    except Exception as e:
                        cause = (e.__cause__ if isinstance(e, _NotSent) else None) or e
                        if self._is_unavailable(cause, getattr(cause, "sqlstate", None) or ""):
                            # Broken (the server went away, or killed this backend): the pool
                            # opens a new connection in its place at the next acquire.
                            conn.terminate()
                        raise
            except Exception as e:
                failure: BaseException = e
                if isinstance(e, _NotSent) and e.__cause__ is not None:
                    failure, sent = e.__cause__, False
                error = self._engine_error(failure, action, sent=sent, write=write)
                retry = isinstance(error, BackendUnavailableError) and (not sent or not write)
                if not retry or attempt + 1 == attempts:
                    raise error from e
            await asyncio.sleep(min(_LONGEST_PAUSE, _FIRST_PAUSE * 2**attempt) * random.uniform(0.5, 1.0))
        raise AssertionError("unreachable")

    async def _connecting(self, connect: Callable[[], Awaitable[T]]) -> T:
        attempts = self.settings.max_retries + 1
        for attempt in range(attempts):
            try:
                return await connect()
            except Exception as e:
                error = self._engine_error(e, "connecting to", sent=False, write=False)
                if not isinstance(error, BackendUnavailableError) or attempt + 1 == attempts:
                    raise error from e
            await asyncio.sleep(min(_LONGEST_PAUSE, _FIRST_PAUSE * 2**attempt) * random.uniform(0.5, 1.0))
        raise AssertionError("unreachable")

    def _lock_key(self, *entity: str) -> int:
        """The 64-bit advisory lock key of ``entity`` in this schema (a collision only makes
        two entities share a lock)."""
        digest = hashlib.blake2b("\x00".join((self._schema, *entity)).encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big", signed=True)

    # -------------------------------------------------------------------- errors

    def _engine_error(self, e: BaseException, action: str, *, sent: bool = True, write: bool = True) -> StorageError:
        """The StorageError for an error of asyncpg, the network or the server; the message
        names the server (password hidden) and what was being done."""
        if isinstance(e, StorageError):
            return e
        asyncpg = self._asyncpg
        where = f"{action} {self._server} (schema {self._schema})"
        sqlstate = getattr(e, "sqlstate", None) or ""
        if isinstance(e, asyncpg.InvalidAuthorizationSpecificationError) or sqlstate == "28P01":
            return AccessDeniedError(f"PostgreSQL refused the login while {where}: check the user and password in dsn")
        if isinstance(e, asyncpg.InsufficientPrivilegeError):
            return AccessDeniedError(
                f"PostgreSQL refused {action} {self._server} (schema {self._schema}): {e}; grant the user "
                f"the rights on schema {self._schema!r} or use a schema it owns"
            )
        if sqlstate == "55P03":  # lock_not_available: lock_timeout passed
            return LockTimeoutError(
                f"{where}: an entity stayed locked by a transaction for connection_timeout="
                f"{self.settings.connection_timeout:g}s; raise the timeout or keep transactions short",
                lock_path=self._schema,
            )
        if sqlstate in ("40001", "40P01"):  # serialization failure, deadlock
            return TransactionError(f"{where} conflicted with another writer ({e}); retry it")
        if sqlstate == "53100":
            return StorageFullError(f"the server ran out of disk space while {where}; nothing was written: free space")
        if sqlstate in ("54000", "54001") or "out of memory" in str(e).lower():
            return ValueTooLargeError(f"a value is over a PostgreSQL limit while {where} ({e}); nothing was written")
        if sqlstate in ("22P02", "22021", "XX001", "XX002") and "invalid input syntax for type json" not in str(e):
            return CorruptedDataError(f"{self._server} (schema {self._schema})", f"{e} while {action}", hint=_HINT)
        if self._is_unavailable(e, sqlstate):
            outcome = (
                "; the write may or may not have been applied (it is not sent again): read it back before retrying"
                if sent and write
                else ""
            )
            return BackendUnavailableError(f"PostgreSQL at {self._server} is unavailable while {where}: {e}{outcome}")
        return StorageIOError(f"PostgreSQL failed while {where}: {e}")

    def _is_unavailable(self, e: BaseException, sqlstate: str) -> bool:
        # InternalClientError: asyncpg's protocol state broke, as when the server killed an
        # idle connection ("cannot switch to state ..."); only a new connection helps.
        network = (
            OSError,
            TimeoutError,
            ConnectionError,
            self._asyncpg.InterfaceError,
            self._asyncpg.InternalClientError,
        )
        return (
            isinstance(e, (*network, self._asyncpg.PostgresConnectionError))
            or sqlstate.startswith("08")  # connection exceptions
            or sqlstate in ("57P01", "57P02", "57P03")  # admin/crash shutdown, cannot connect now
        )

    # -------------------------------------------------------------------- values

    def _dump(self, value: Any) -> str | bytes:
        """A checked value as stored: canonical compact JSON text, or msgpack bytes (bytea)."""
        data = self._serializer.dumps(value)
        return data.decode() if self._text else data

    def _parse(self, text: Any, table: str, key: str, shape: type | None = None) -> Any:
        """Decode one stored value; a bad one raises CorruptedDataError naming schema, table, key."""
        source = f"{self._server} (schema {self._schema}, table {table}, {key})"
        value = self._serializer.decode(text, source)
        if shape is not None and not isinstance(value, shape):
            expected = "an object" if shape is dict else "an array"
            raise CorruptedDataError(source, f"expected {expected}, found {type(value).__name__}", hint=_HINT)
        return value

    # ---------------------------------------------------------------- documents
    #
    # Every write to a part of a conversation first drops the conversation if it expired
    # (DROP_EXPIRED: the write starts a new one), then locks its row (LOCK_CONVERSATION
    # creates it if needed; a removal only locks an existing one, _LOCK_EXISTING): the
    # writers of one conversation queue on that row lock, so each later statement of the
    # transaction reads what the previous writer committed (READ COMMITTED takes a fresh
    # snapshot per statement), and PRUNE_CONVERSATION never judges a row by a stale view.

    async def _read_document(self, kind: Kind, key: str) -> Any:
        params: tuple[Any, ...]
        if kind is Kind.SYSTEM:
            sql, params = _READ_STATE, (key,)
        elif kind in _COLUMNS:
            sql, params = _READ_COLUMN[kind], (key, self._now_ms())
        else:
            raise InvalidArgumentError(f"{kind} is not a document")

        async def body(conn: Any) -> Any:
            return self._document(kind, key, await conn.fetchval(sql, *params))

        return await self._read("reading", body)

    def _document(self, kind: Kind, key: str, text: Any) -> Any:
        """A stored document (system state, conversation document or chunks), checked."""
        if text is None:
            return None
        value = self._parse(text, *_document_place(kind, key), _SHAPES.get(kind))
        if kind is Kind.CHUNKS:
            self._check_items(value, *_document_place(kind, key))
        return value

    async def _write_document(self, kind: Kind, key: str, value: Any) -> None:
        if kind in _LOGS:
            return await self._replace_log(kind, key, value)
        text = self._dump(value)
        if kind is Kind.SYSTEM:
            await self._write("writing", lambda conn: conn.execute(_WRITE_STATE, key, text), (("system", key),))
            return None
        if kind not in _COLUMNS:
            raise InvalidArgumentError(f"{kind} is not a document")
        sql, now_ms = _WRITE_COLUMN[kind], self._now_ms()

        async def body(conn: Any) -> None:
            await conn.execute(DROP_EXPIRED, key, now_ms)
            await conn.execute(sql, key, text)

        await self._write("writing", body, (("conversation", key),))
        return None

    async def _delete(self, kind: Kind, key: str) -> bool:
        if kind is Kind.CACHE:
            return await self._write_flag(_DELETE_CACHE, key, ("cache", key))
        if kind is Kind.SYSTEM:
            return await self._write_flag(_DELETE_STATE, key, ("system", key))
        if kind is Kind.REASONING_CHAINS:
            return await self._write_flag(_DELETE_AGENT, key, ("agent", key))  # cascades to the chains
        sql, now_ms = _DELETE_PART[kind], self._now_ms()

        async def body(conn: Any) -> bool:
            await conn.execute(DROP_EXPIRED, key, now_ms)
            if await conn.fetchval(_LOCK_EXISTING, key) is None:
                return False
            if await conn.fetchval(sql, key) is None:
                return False
            if kind is Kind.RAW_MESSAGES:
                await conn.execute(SET_MESSAGE_COUNT, key, 0)
            await conn.execute(PRUNE_CONVERSATION, key)
            return True

        return await self._write("deleting from", body, (("conversation", key),))

    async def _write_flag(self, sql: str, key: str, entity: tuple[str, ...]) -> bool:
        """Run one statement that returns a row when it changed something."""

        async def body(conn: Any) -> bool:
            return await conn.fetchval(sql, key) is not None

        return await self._write("deleting from", body, (entity,))

    # --------------------------------------------------------------------- logs

    async def _read_log(self, kind: Kind, key: str) -> list[Any]:
        params: tuple[Any, ...]
        if kind is Kind.RAW_MESSAGES:
            sql, params = _READ_MESSAGES, (key, self._now_ms())
        else:
            sql, params = _READ_CHAINS, (key,)

        async def body(conn: Any) -> list[Any]:
            return self._log_items(kind, key, await conn.fetch(sql, *params))

        return await self._read("reading", body)

    def _log_items(self, kind: Kind, key: str, rows: list[Any]) -> list[Any]:
        """Decode a log's (seq, data) rows; the first bad one raises CorruptedDataError naming its seq."""
        loads = self._serializer.loads
        try:  # the common case: one pass, no location strings
            items = [loads(data) for _seq, data in rows]
        except self._serializer.errors:
            items = None
        if items is not None and all(type(item) is dict for item in items):
            return items
        table, column, _lock = _LOGS[kind]
        return [self._parse(data, table, f"{column} {key!r}, seq {seq}", dict) for seq, data in rows]

    async def _append_log(self, kind: Kind, key: str, items: list[Any]) -> int:
        lock = _LOGS[kind][2]
        texts = [self._dump(item) for item in items]
        append, now_ms = _APPEND[kind], self._now_ms()
        messages = kind is Kind.RAW_MESSAGES

        async def body(conn: Any) -> int:
            if messages:
                await conn.execute(DROP_EXPIRED, key, now_ms)
            await conn.execute(lock, key)
            count = int(await conn.fetchval(append, key, texts))
            if messages:
                await conn.execute(SET_MESSAGE_COUNT, key, count)
            return count

        return await self._write("appending to", body, (_log_entity(kind, key),))

    async def _replace_log(self, kind: Kind, key: str, items: list[Any]) -> None:
        lock = _LOGS[kind][2]
        texts = [self._dump(item) for item in items]
        clear, insert, now_ms = _CLEAR_LOG[kind], _INSERT_LOG[kind], self._now_ms()
        messages = kind is Kind.RAW_MESSAGES

        async def body(conn: Any) -> None:
            if messages:
                await conn.execute(DROP_EXPIRED, key, now_ms)
            await conn.execute(lock, key)
            await conn.execute(clear, key)
            await conn.execute(insert, key, texts)
            if messages:
                await conn.execute(SET_MESSAGE_COUNT, key, len(texts))

        await self._write("writing", body, (_log_entity(kind, key),))

    async def _pop_log(self, kind: Kind, key: str) -> Any:
        table, column, _lock = _LOGS[kind]
        messages, now_ms = kind is Kind.RAW_MESSAGES, self._now_ms()

        async def body(conn: Any) -> Any:
            if messages:
                await conn.execute(DROP_EXPIRED, key, now_ms)
            if await conn.fetchval(_LOCK_EXISTING if messages else _LOCK_EXISTING_AGENT, key) is None:
                return None
            row = await conn.fetchrow(_NEWEST[kind], key)
            if row is None:
                return None
            seq, data = row
            item = self._parse(data, table, f"{column} {key!r}, seq {seq}", dict)  # a bad row stays put
            await conn.execute(_DROP_SEQ[kind], key, seq)
            if messages:
                await conn.execute(SET_MESSAGE_COUNT, key, seq)  # seq was the last: the new length
                await conn.execute(PRUNE_CONVERSATION, key)
            else:  # an emptied chain history is no stored agent
                await conn.execute(_PRUNE_AGENT, key)
            return item

        return await self._write("popping from", body, (_log_entity(kind, key),))

    # ------------------------------------------------------------------ members

    async def _put_member(self, conversation_id: str, memory_id: str, memory: dict[str, Any]) -> None:
        text, now_ms = self._dump(memory), self._now_ms()

        async def body(conn: Any) -> None:
            await conn.execute(DROP_EXPIRED, conversation_id, now_ms)
            await conn.execute(LOCK_CONVERSATION, conversation_id)
            await conn.execute(_PUT_MEMORY, conversation_id, memory_id, text)

        await self._write("writing", body, (("conversation", conversation_id),))

    async def _read_members(self, conversation_id: str) -> list[dict[str, Any]]:
        now_ms = self._now_ms()

        async def body(conn: Any) -> list[dict[str, Any]]:
            return self._members(conversation_id, await conn.fetch(_READ_MEMORIES, conversation_id, now_ms))

        return await self._read("reading", body)

    def _members(self, conversation_id: str, rows: Any) -> list[dict[str, Any]]:
        memories = []
        for memory_id, data in rows:
            where = f"conversation_id {conversation_id!r}, memory_id {memory_id!r}"
            memory = self._parse(data, "memories", where, dict)
            if memory.get("memory_id") != memory_id:
                source = f"{self._server} (schema {self._schema}, table memories, {where})"
                problem = f"the stored memory carries memory_id {memory.get('memory_id')!r}"
                raise CorruptedDataError(source, problem, hint=_HINT)
            memories.append(memory)
        return memories

    async def _delete_member(self, conversation_id: str, memory_id: str) -> bool:
        now_ms = self._now_ms()

        async def body(conn: Any) -> bool:
            await conn.execute(DROP_EXPIRED, conversation_id, now_ms)
            if await conn.fetchval(_LOCK_EXISTING, conversation_id) is None:
                return False
            if await conn.fetchval(_DELETE_MEMORY, conversation_id, memory_id) is None:
                return False
            await conn.execute(PRUNE_CONVERSATION, conversation_id)
            return True

        return await self._write("deleting from", body, (("conversation", conversation_id),))

    async def _conversation_parts(
        self, conversation_id: str, now_ms: int
    ) -> tuple[MetaRecord | None, Any, Any, list[Any], list[dict[str, Any]]]:
        # A transaction's first touch of a conversation: every part in one statement (one
        # round trip, one snapshot).
        async def body(conn: Any) -> tuple[MetaRecord | None, Any, Any, list[Any], list[dict[str, Any]]]:
            row = await conn.fetchrow(_PARTS, conversation_id, now_ms)
            if row is None:  # no part stored (every part's row hangs on this one)
                return None, None, None, [], []
            meta = await self._meta_read_row(conversation_id, row)
            if not row["live"]:  # expired: its parts read as missing, its metadata is still returned
                return meta, None, None, [], []
            return (
                meta,
                self._document(Kind.CONVERSATION, conversation_id, row["document"]),
                self._document(Kind.CHUNKS, conversation_id, row["chunks"]),
                self._log_items(
                    Kind.RAW_MESSAGES, conversation_id, list(zip(row["seqs"], row["messages"], strict=True))
                ),
                self._members(conversation_id, list(zip(row["memory_ids"], row["memories"], strict=True))),
            )

        return await self._read("reading", body)

    async def _meta_read_row(self, conversation_id: str, row: Any) -> MetaRecord | None:
        """The metadata of a row that _PARTS read (its columns are the conversations table's):
        decoded by the conversation store's own reader when there is one."""
        decode = getattr(self, "_record", None)
        if decode is None:
            return await self._meta_read(conversation_id, 0, include_expired=True)
        return decode(conversation_id, tuple(row[name] for name in _META_NAMES))  # type: ignore[no-any-return]

    # ------------------------------------------------------------ conversations

    async def _delete_conversation(self, conversation_id: str) -> bool:
        # One statement: the foreign keys cascade to messages and memories; metadata is in the row.
        now_ms = self._now_ms()

        async def body(conn: Any) -> bool:
            return bool(await conn.fetchval(_DELETE_CONVERSATION, conversation_id, now_ms))

        return await self._write("deleting from", body, (("conversation", conversation_id),))

    async def _list_conversations(self) -> list[str]:
        return await self._column(_LIST_CONVERSATIONS, self._now_ms())

    async def _conversation_ids(self) -> AsyncGenerator[str, None]:
        # migrate's walk: keyset pages of the primary key (expired rows included), no list.
        sql = "SELECT conversation_id FROM conversations WHERE conversation_id > $1 ORDER BY conversation_id LIMIT $2"
        after = ""
        while True:
            page = await self._column(sql, after, _ID_PAGE)
            for conversation_id in page:
                yield conversation_id
            if len(page) < _ID_PAGE:
                return
            after = page[-1]

    async def _list_agents(self) -> list[str]:
        return await self._column("SELECT agent_id FROM agents")

    async def _list_system_states(self) -> list[str]:
        return await self._column("SELECT state_key FROM system_state")

    async def _column(self, sql: str, *args: Any) -> list[Any]:
        async def body(conn: Any) -> list[Any]:
            return [row[0] for row in await conn.fetch(sql, *args)]

        return await self._read("reading", body)

    # -------------------------------------------------------------------- cache

    async def _write_cache(self, entry: CacheEntry) -> None:
        params = (entry.key, self._dump(entry.data), entry.created_ms, entry.expires_ms)
        await self._write("writing", lambda conn: conn.execute(_WRITE_CACHE, *params), (("cache", entry.key),))

    async def _read_cache(self, cache_key: str) -> CacheEntry | None:
        async def body(conn: Any) -> CacheEntry | None:
            row = await conn.fetchrow(_READ_CACHE, cache_key)
            if row is None:
                return None
            data = self._parse(row["data"], "cache", f"cache_key {cache_key!r}")
            return CacheEntry(cache_key, data, row["created_ms"], row["expires_ms"])

        return await self._read("reading", body)

    async def _list_cache_keys(self, now_ms: int) -> list[str]:
        return await self._column(_LIVE_CACHE_KEYS, now_ms)

    async def _list_all_cache_keys(self) -> list[str]:
        return await self._column("SELECT cache_key FROM cache")

    async def _delete_expired_cache(self, now_ms: int) -> int:
        # No entity lock: each expired row is deleted under its own row lock, and a
        # transaction that writes one of these keys replaces the row at its commit either way.
        async def body(conn: Any) -> int:
            return int(await conn.fetchval(_DELETE_EXPIRED_CACHE, now_ms))

        return await self._write("cleaning the cache of", body)

    # ------------------------------------------------------------ health, stats

    async def _probe(self) -> dict[str, Any]:
        """One round trip on a pooled connection that reads this schema's version table: a
        server that is up but refuses this user the schema is unhealthy too. Not retried: a
        health check reports the state it finds, at once."""
        started = time.perf_counter()
        row = await self._on_connection("probing", lambda conn: conn.fetchrow(_PROBE), write=False, attempts=1)
        pool = self.pool
        return {
            "server": self._server,
            "schema": self._schema,
            "serializer": self._serializer.name,
            "round_trip_ms": round((time.perf_counter() - started) * 1000, 3),
            "server_version": row["server_version"],
            "schema_version": row["schema_version"],
            "in_recovery": row["in_recovery"],  # a standby: reads work, writes fail
            "pool_size": pool.get_size(),
            "pool_idle": pool.get_idle_size(),
            "pool_max_size": pool.get_max_size(),
        }

    async def _total_bytes(self) -> int:
        async def body(conn: Any) -> int:
            return int(await conn.fetchval(_TOTAL_BYTES, self._schema))

        return await self._read("measuring", body)

    async def _collect_stats(self, now_ms: int) -> dict[str, Any]:
        """Every count in one statement (one snapshot), judged in SQL by json_kind(); rows it
        calls 'unsure' come back whole and are decoded here, so the counts are the reader's.
        On a msgpack schema every value comes back whole (``_STATS_DECODED``)."""

        async def body(conn: Any) -> Any:
            return await conn.fetchrow(_STATS if self._text else _STATS_DECODED, now_ms)

        row = await self._read("counting", body)
        loads, errors = self._serializer.loads, self._serializer.errors

        def good(texts: list[str] | None, shape: type | None) -> int:
            count = 0
            for text in texts or ():
                try:
                    value = loads(text)
                except errors:
                    continue
                count += shape is None or isinstance(value, shape)
            return count

        def good_chunks(texts: list[str] | None) -> tuple[int, int]:
            lists = 0
            items = 0
            for text in texts or ():
                try:
                    value = loads(text)
                except errors:
                    continue
                if isinstance(value, list) and all(isinstance(item, dict) for item in value):
                    lists += 1
                    items += len(value)
            return lists, items

        def good_memories(ids: list[str] | None, texts: list[str] | None) -> int:
            count = 0
            for memory_id, text in zip(ids or (), texts or (), strict=True):
                try:
                    value = loads(text)
                except errors:
                    continue
                count += isinstance(value, dict) and value.get("memory_id") == memory_id
            return count

        unsure = {name: len(row[name] or ()) for name in _UNSURE}
        raw = good(row["raw_unsure"], dict)
        memories = good_memories(row["memory_unsure_ids"], row["memory_unsure"])
        chains = good(row["chain_unsure"], dict)
        documents = good(row["document_unsure"], dict)
        chunk_lists, chunk_items = good_chunks(row["chunks_unsure"])
        states = good(row["state_unsure"], None)
        live_cache = good(row["cache_live_unsure"], None)
        expired_cache = good(row["cache_expired_unsure"], None)
        metadata = good(row["meta_unsure"], dict)
        unreadable = (
            row["raw_bad"] + unsure["raw_unsure"] - raw
            + row["memory_bad"] + unsure["memory_unsure"] - memories
            + row["chain_bad"] + unsure["chain_unsure"] - chains
            + row["document_bad"] + unsure["document_unsure"] - documents
            + row["chunks_bad"] + unsure["chunks_unsure"] - chunk_lists
            + row["meta_bad"] + unsure["meta_unsure"] - metadata
            + row["cache_bad"] + unsure["cache_live_unsure"] - live_cache
            + unsure["cache_expired_unsure"] - expired_cache
            + row["state_bad"] + unsure["state_unsure"] - states
        )  # fmt: skip
        return {
            "conversation_count": row["conversation_count"],
            "expired_conversation_count": row["expired_conversation_count"],
            "raw_message_count": row["raw_good"] + raw,
            "memory_count": row["memory_good"] + memories,
            "chunk_count": row["chunk_count"] + chunk_items,
            "agent_count": row["agent_count"],
            "reasoning_chain_count": row["chain_good"] + chains,
            "cache_entry_count": row["cache_live"] + live_cache,
            "expired_cache_entry_count": row["cache_expired"] + expired_cache,
            "system_state_count": row["state_count"],
            "total_bytes": row["total_bytes"],
            "unreadable_count": unreadable,
        }

    async def _walk_entities(self, problems: list[Problem]) -> Any:
        """verify()'s walk (StorageInterface.verify drains it): on PostgreSQL it yields nothing
        and only finds the problems. One read-only snapshot; SQL (json_kind) picks the rows
        that are not plainly what their reader wants, and only those are decoded here, by
        the very readers a load uses, so each Problem is the error that load raises. On a
        msgpack schema, which SQL cannot read, every row is decoded (``_EVERY_ROW``)."""

        async def body(conn: Any) -> list[Any]:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                statements = _SUSPECTS if self._text else _EVERY_ROW
                return [await conn.fetch(sql, *([self._now_ms()] if "$1" in sql else [])) for sql in statements]

        documents, messages, memories, chains, caches, states = await self._read("verifying", body)
        found: dict[tuple[str, str], Problem] = {}  # (part, key) -> the first error: a load stops there
        for conversation_id, column, text in documents:
            kind = Kind.CONVERSATION if column == "document" else Kind.CHUNKS
            _first_problem(found, (column, conversation_id), self._document, kind, conversation_id, text)
        for conversation_id, seq, text in messages:
            where = ("raw_messages", conversation_id)
            _first_problem(found, where, self._log_items, Kind.RAW_MESSAGES, conversation_id, [(seq, text)])
        for conversation_id, memory_id, text in memories:
            _first_problem(found, ("memories", conversation_id), self._members, conversation_id, [(memory_id, text)])
        for agent_id, seq, text in chains:
            _first_problem(found, ("chains", agent_id), self._log_items, Kind.REASONING_CHAINS, agent_id, [(seq, text)])
        for cache_key, text in caches:
            _first_problem(found, ("cache", cache_key), self._parse, text, "cache", f"cache_key {cache_key!r}")
        for state_key, text in states:
            _first_problem(found, ("system", state_key), self._document, Kind.SYSTEM, state_key, text)
        problems.extend(found.values())
        return
        yield  # an async generator that yields nothing

    def _capabilities(self) -> frozenset[str]:
        return frozenset({"persistent", "cross_process"})

    # ------------------------------------------------------------------ helpers

    def _check_items(self, value: list[Any], table: str, key: str) -> None:
        for index, item in enumerate(value):
            if not isinstance(item, dict):
                source = f"{self._server} (schema {self._schema}, table {table}, {key})"
                raise CorruptedDataError(source, f"item {index} is not an object", hint=_HINT)


# ------------------------------------------------------------ SQL of the core hooks
#
# $n parameters; the tables are unqualified (search_path is the storage's schema). A part of
# a conversation whose expires_ms has passed reads as absent in the very statement that reads it.

_SHAPES: dict[Kind, type] = {Kind.CONVERSATION: dict, Kind.CHUNKS: list}
# Conversation parts that are columns of the conversations row.
_COLUMNS = {Kind.CONVERSATION: "document", Kind.CHUNKS: "chunks"}
# (table, key column, the statement that creates and locks the parent row) of each log.
_LOGS = {
    Kind.RAW_MESSAGES: ("raw_messages", "conversation_id", LOCK_CONVERSATION),
    Kind.REASONING_CHAINS: ("reasoning_chains", "agent_id", LOCK_AGENT),
}
_LIVE = "(expires_ms IS NULL OR expires_ms > $2)"
# No part of conversation $1 is read when it expired at $2.
_NOT_EXPIRED = "NOT EXISTS (SELECT 1 FROM conversations AS c WHERE c.conversation_id = $1 AND c.expires_ms <= $2)"

_READ_STATE = "SELECT data FROM system_state WHERE state_key = $1"
_WRITE_STATE = """INSERT INTO system_state (state_key, data) VALUES ($1, $2)
    ON CONFLICT (state_key) DO UPDATE SET data = excluded.data"""
_READ_COLUMN = {
    kind: f"SELECT {column} FROM conversations WHERE conversation_id = $1 AND {_LIVE}"
    for kind, column in _COLUMNS.items()
}
_WRITE_COLUMN = {
    kind: f"""INSERT INTO conversations (conversation_id, {column}) VALUES ($1, $2)
        ON CONFLICT (conversation_id) DO UPDATE SET {column} = excluded.{column}"""
    for kind, column in _COLUMNS.items()
}
# Lock the row of an existing conversation (or agent) without creating it; NULL when there is none.
_LOCK_EXISTING = "SELECT 1 FROM conversations WHERE conversation_id = $1 FOR UPDATE"
_LOCK_EXISTING_AGENT = "SELECT 1 FROM agents WHERE agent_id = $1 FOR UPDATE"
# Each returns a row when it removed something.
_DELETE_PART = {
    Kind.CONVERSATION: "UPDATE conversations SET document = NULL WHERE conversation_id = $1 AND document IS NOT NULL "
    "RETURNING 1",
    Kind.CHUNKS: "UPDATE conversations SET chunks = NULL WHERE conversation_id = $1 AND chunks IS NOT NULL RETURNING 1",
    Kind.RAW_MESSAGES: "WITH gone AS (DELETE FROM raw_messages WHERE conversation_id = $1 RETURNING 1) "
    "SELECT 1 FROM gone LIMIT 1",
    Kind.MEMORIES: "WITH gone AS (DELETE FROM memories WHERE conversation_id = $1 RETURNING 1) "
    "SELECT 1 FROM gone LIMIT 1",
}
_DELETE_CACHE = "DELETE FROM cache WHERE cache_key = $1 RETURNING 1"
_DELETE_STATE = "DELETE FROM system_state WHERE state_key = $1 RETURNING 1"
_DELETE_AGENT = "DELETE FROM agents WHERE agent_id = $1 RETURNING 1"

_READ_MESSAGES = f"SELECT seq, data FROM raw_messages WHERE conversation_id = $1 AND {_NOT_EXPIRED} ORDER BY seq"
_READ_CHAINS = "SELECT seq, data FROM reasoning_chains WHERE agent_id = $1 ORDER BY seq"
# Appends after the last seq (read from the primary key index, under the parent's row lock)
# and returns the new length. unnest WITH ORDINALITY keeps the items' order.
_APPEND = {
    kind: f"""WITH last AS (SELECT COALESCE(MAX(seq), -1) AS seq FROM {table} WHERE {column} = $1),
        added AS (INSERT INTO {table} ({column}, seq, data)
            SELECT $1, last.seq + item.n, item.data FROM last, unnest($2::stored[]) WITH ORDINALITY AS item(data, n)
            RETURNING seq)
        SELECT MAX(seq) + 1 FROM added"""
    for kind, (table, column, _lock) in _LOGS.items()
}
_CLEAR_LOG = {kind: f"DELETE FROM {table} WHERE {column} = $1" for kind, (table, column, _lock) in _LOGS.items()}
_INSERT_LOG = {
    kind: f"""INSERT INTO {table} ({column}, seq, data)
        SELECT $1, item.n - 1, item.data FROM unnest($2::stored[]) WITH ORDINALITY AS item(data, n)"""
    for kind, (table, column, _lock) in _LOGS.items()
}
_NEWEST = {
    kind: f"SELECT seq, data FROM {table} WHERE {column} = $1 ORDER BY seq DESC LIMIT 1"
    for kind, (table, column, _lock) in _LOGS.items()
}
_DROP_SEQ = {
    kind: f"DELETE FROM {table} WHERE {column} = $1 AND seq = $2" for kind, (table, column, _lock) in _LOGS.items()
}
_PRUNE_AGENT = """DELETE FROM agents AS a WHERE a.agent_id = $1
    AND NOT EXISTS (SELECT 1 FROM reasoning_chains AS r WHERE r.agent_id = $1)"""

# The update branch leaves position alone: a replaced memory keeps its place in the order.
_PUT_MEMORY = """INSERT INTO memories (conversation_id, memory_id, position, data)
    VALUES ($1, $2, (SELECT COALESCE(MAX(position), -1) + 1 FROM memories WHERE conversation_id = $1), $3)
    ON CONFLICT (conversation_id, memory_id) DO UPDATE SET data = excluded.data"""
_READ_MEMORIES = f"SELECT memory_id, data FROM memories WHERE conversation_id = $1 AND {_NOT_EXPIRED} ORDER BY position"
_DELETE_MEMORY = "DELETE FROM memories WHERE conversation_id = $1 AND memory_id = $2 RETURNING 1"

_META_NAMES = ("created_ms", "updated_ms", "message_count", "ttl", "expires_ms", "metadata")
# Every part of one conversation, in one statement (a transaction's first touch of it).
_PARTS = f"""SELECT {", ".join(_META_NAMES)}, document, chunks, {_LIVE} AS live,
    ARRAY(SELECT seq FROM raw_messages AS r WHERE r.conversation_id = $1 ORDER BY seq) AS seqs,
    ARRAY(SELECT data FROM raw_messages AS r WHERE r.conversation_id = $1 ORDER BY seq) AS messages,
    ARRAY(SELECT memory_id FROM memories AS m WHERE m.conversation_id = $1 ORDER BY position) AS memory_ids,
    ARRAY(SELECT data FROM memories AS m WHERE m.conversation_id = $1 ORDER BY position) AS memories
    FROM conversations WHERE conversation_id = $1"""
# True when the conversation was live (its rows go either way; the foreign keys cascade).
_DELETE_CONVERSATION = (
    "DELETE FROM conversations WHERE conversation_id = $1 RETURNING expires_ms IS NULL OR expires_ms > $2"
)
_ID_PAGE = 1000  # conversation ids per page of migrate's walk
_LIST_CONVERSATIONS = "SELECT conversation_id FROM conversations WHERE expires_ms IS NULL OR expires_ms > $1"

_WRITE_CACHE = """INSERT INTO cache (cache_key, data, created_ms, expires_ms) VALUES ($1, $2, $3, $4)
    ON CONFLICT (cache_key) DO UPDATE SET data = excluded.data, created_ms = excluded.created_ms,
        expires_ms = excluded.expires_ms"""
_READ_CACHE = "SELECT data, created_ms, expires_ms FROM cache WHERE cache_key = $1"
_LIVE_CACHE_KEYS = "SELECT cache_key FROM cache WHERE expires_ms IS NULL OR expires_ms > $1"
_DELETE_EXPIRED_CACHE = "WITH gone AS (DELETE FROM cache WHERE expires_ms <= $1 RETURNING 1) SELECT count(*) FROM gone"

_PROBE = """SELECT current_setting('server_version') AS server_version, pg_is_in_recovery() AS in_recovery,
    (SELECT version FROM schema_version) AS schema_version"""
# Tables with their indexes and TOAST, of this schema only ($1: the schema).
_TOTAL_BYTES = """SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0)::bigint FROM pg_class AS c
    JOIN pg_namespace AS n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relkind = 'r'"""

# get_storage_stats in one statement ($1: now). json_kind judges each row in SQL ('unsure'
# rows come back whole, for Python to decode); parts of a conversation expired at $1 are
# absent, so they are not counted. A row whose json_kind is not the one its reader wants
# is unreadable, as that reader would raise.
_BAD = "(k IS NULL OR k NOT IN ({want}, 'unsure'))"
_LIVE_PART = (
    "NOT EXISTS (SELECT 1 FROM conversations AS c WHERE c.conversation_id = t.conversation_id AND c.expires_ms <= $1)"
)
_META_KIND = """json_kind(metadata) AS mk, created_ms IS NOT NULL AND updated_ms IS NOT NULL AND message_count >= 0
                    AND (ttl IS NULL OR (ttl > 0 AND ttl < 'Infinity')) AS columns_ok"""
_META_COUNTS = """count(*) FILTER (WHERE metadata IS NOT NULL AND NOT (columns_ok AND mk IS NOT DISTINCT FROM 'object')
            AND NOT (columns_ok AND mk IS NOT DISTINCT FROM 'unsure')) AS meta_bad,
        array_agg(metadata) FILTER (WHERE metadata IS NOT NULL AND columns_ok AND mk = 'unsure') AS meta_unsure"""
_AGENTS_AND_SIZE = """(SELECT count(*) AS agent_count FROM agents) AS agents,
    (SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0)::bigint AS total_bytes FROM pg_class AS c
        JOIN pg_namespace AS n ON n.oid = c.relnamespace
        WHERE n.nspname = current_schema() AND c.relkind = 'r') AS size"""
_STATS = f"""SELECT * FROM
    (SELECT count(*) FILTER (WHERE k = 'object') AS raw_good,
        count(*) FILTER (WHERE {_BAD.format(want="'object'")}) AS raw_bad,
        array_agg(data) FILTER (WHERE k = 'unsure') AS raw_unsure
        FROM (SELECT json_kind(data) AS k, data FROM raw_messages AS t WHERE {_LIVE_PART}) AS s) AS raw,
    (SELECT count(*) FILTER (WHERE k = 'object' AND same_id) AS memory_good,
        count(*) FILTER (WHERE {_BAD.format(want="'object'")} OR (k = 'object' AND NOT same_id)) AS memory_bad,
        array_agg(data) FILTER (WHERE k = 'unsure') AS memory_unsure,
        array_agg(memory_id) FILTER (WHERE k = 'unsure') AS memory_unsure_ids
        FROM (SELECT k, data, memory_id, CASE WHEN k = 'object' THEN
                json_typeof(data::json -> 'memory_id') IS NOT DISTINCT FROM 'string'
                AND data::json ->> 'memory_id' = memory_id END AS same_id
            FROM (SELECT json_kind(data) AS k, data, memory_id FROM memories AS t WHERE {_LIVE_PART}) AS m
        ) AS s) AS mem,
    (SELECT count(*) FILTER (WHERE k = 'object') AS chain_good,
        count(*) FILTER (WHERE {_BAD.format(want="'object'")}) AS chain_bad,
        array_agg(data) FILTER (WHERE k = 'unsure') AS chain_unsure
        FROM (SELECT json_kind(data) AS k, data FROM reasoning_chains) AS s) AS chains,
    (SELECT count(*) FILTER (WHERE live) AS conversation_count,
        count(*) FILTER (WHERE NOT live) AS expired_conversation_count,
        count(*) FILTER (WHERE live AND document IS NOT NULL AND (dk IS NULL OR dk NOT IN ('object', 'unsure')))
            AS document_bad,
        array_agg(document) FILTER (WHERE live AND dk = 'unsure') AS document_unsure,
        COALESCE(SUM(items) FILTER (WHERE live AND ck = 'array' AND stray = 0), 0)::bigint AS chunk_count,
        count(*) FILTER (WHERE live AND chunks IS NOT NULL
            AND (ck IS NULL OR ck NOT IN ('array', 'unsure') OR (ck = 'array' AND stray > 0))) AS chunks_bad,
        array_agg(chunks) FILTER (WHERE live AND ck = 'unsure') AS chunks_unsure,
        {_META_COUNTS}
        FROM (SELECT document, chunks, metadata, expires_ms IS NULL OR expires_ms > $1 AS live,
                json_kind(document) AS dk, json_kind(chunks) AS ck, {_META_KIND},
                (SELECT count(*) FROM json_array_elements(CASE WHEN json_kind(chunks) = 'array' THEN chunks::json END))
                    AS items,
                (SELECT count(*) FROM json_array_elements(CASE WHEN json_kind(chunks) = 'array' THEN chunks::json END)
                    AS e WHERE json_typeof(e) <> 'object') AS stray
            FROM conversations) AS s) AS conv,
    (SELECT count(*) FILTER (WHERE k NOT IN ('unsure') AND live) AS cache_live,
        count(*) FILTER (WHERE k NOT IN ('unsure') AND NOT live) AS cache_expired,
        count(*) FILTER (WHERE k IS NULL) AS cache_bad,
        array_agg(data) FILTER (WHERE k = 'unsure' AND live) AS cache_live_unsure,
        array_agg(data) FILTER (WHERE k = 'unsure' AND NOT live) AS cache_expired_unsure
        FROM (SELECT json_kind(data) AS k, data, expires_ms IS NULL OR expires_ms > $1 AS live FROM cache) AS s
    ) AS cache,
    (SELECT count(*) AS state_count, count(*) FILTER (WHERE k IS NULL) AS state_bad,
        array_agg(data) FILTER (WHERE k = 'unsure') AS state_unsure
        FROM (SELECT json_kind(data) AS k, data FROM system_state) AS s) AS states,
    {_AGENTS_AND_SIZE}"""
# The same columns for a msgpack schema: SQL cannot read msgpack, so every stored value
# comes back whole ('unsure' to the caller) and Python decodes it, as a load would; the
# metadata, JSON whatever the serializer, is still judged in SQL. Reads every value: a
# msgpack schema's stats cost a scan of all its data (docs/postgres.md, "Serializer").
_STATS_DECODED = f"""SELECT * FROM
    (SELECT 0 AS raw_good, 0 AS raw_bad, array_agg(data) AS raw_unsure
        FROM raw_messages AS t WHERE {_LIVE_PART}) AS raw,
    (SELECT 0 AS memory_good, 0 AS memory_bad, array_agg(data) AS memory_unsure,
        array_agg(memory_id) AS memory_unsure_ids FROM memories AS t WHERE {_LIVE_PART}) AS mem,
    (SELECT 0 AS chain_good, 0 AS chain_bad, array_agg(data) AS chain_unsure FROM reasoning_chains) AS chains,
    (SELECT count(*) FILTER (WHERE live) AS conversation_count,
        count(*) FILTER (WHERE NOT live) AS expired_conversation_count,
        0 AS document_bad, array_agg(document) FILTER (WHERE live AND document IS NOT NULL) AS document_unsure,
        0 AS chunk_count, 0 AS chunks_bad,
        array_agg(chunks) FILTER (WHERE live AND chunks IS NOT NULL) AS chunks_unsure,
        {_META_COUNTS}
        FROM (SELECT document, chunks, metadata, expires_ms IS NULL OR expires_ms > $1 AS live, {_META_KIND}
            FROM conversations) AS s) AS conv,
    (SELECT 0 AS cache_live, 0 AS cache_expired, 0 AS cache_bad,
        array_agg(data) FILTER (WHERE live) AS cache_live_unsure,
        array_agg(data) FILTER (WHERE NOT live) AS cache_expired_unsure
        FROM (SELECT data, expires_ms IS NULL OR expires_ms > $1 AS live FROM cache) AS s) AS cache,
    (SELECT count(*) AS state_count, 0 AS state_bad, array_agg(data) AS state_unsure FROM system_state) AS states,
    {_AGENTS_AND_SIZE}"""
_UNSURE = (
    "raw_unsure", "memory_unsure", "chain_unsure", "document_unsure", "chunks_unsure", "meta_unsure",
    "cache_live_unsure", "cache_expired_unsure", "state_unsure",
)  # fmt: skip

# verify(): the rows whose json_kind is not plainly what their reader wants (and 'unsure'
# ones), in the order a load meets them; Python decodes these few with the readers themselves.
_SUSPECTS = (
    """SELECT conversation_id, part, text FROM conversations,
        LATERAL (VALUES ('document', document, 'object'), ('chunks', chunks, 'array')) AS p(part, text, want)
        WHERE (expires_ms IS NULL OR expires_ms > $1) AND text IS NOT NULL
        AND (json_kind(text) IS DISTINCT FROM want OR CASE WHEN part = 'chunks' AND json_kind(text) = 'array'
            THEN EXISTS (SELECT 1 FROM json_array_elements(text::json) AS e WHERE json_typeof(e) <> 'object') END)
        ORDER BY conversation_id, part""",
    f"""SELECT conversation_id, seq, data FROM raw_messages AS t
        WHERE json_kind(data) IS DISTINCT FROM 'object' AND {_LIVE_PART} ORDER BY conversation_id, seq""",
    f"""SELECT conversation_id, memory_id, data FROM memories AS t
        WHERE {_LIVE_PART} AND (json_kind(data) IS DISTINCT FROM 'object'
            OR CASE WHEN json_kind(data) = 'object'
                THEN json_typeof(data::json -> 'memory_id') IS DISTINCT FROM 'string'
                OR data::json ->> 'memory_id' <> memory_id END)
        ORDER BY conversation_id, position""",
    """SELECT agent_id, seq, data FROM reasoning_chains WHERE json_kind(data) IS DISTINCT FROM 'object'
        ORDER BY agent_id, seq""",
    "SELECT cache_key, data FROM cache WHERE json_kind(data) IS NULL OR json_kind(data) = 'unsure' ORDER BY cache_key",
    "SELECT state_key, data FROM system_state WHERE json_kind(data) IS NULL OR json_kind(data) = 'unsure'",
)


# verify() on a msgpack schema: the same columns, every row (SQL cannot judge msgpack).
_EVERY_ROW = (
    """SELECT conversation_id, part, text FROM conversations,
        LATERAL (VALUES ('document', document), ('chunks', chunks)) AS p(part, text)
        WHERE (expires_ms IS NULL OR expires_ms > $1) AND text IS NOT NULL ORDER BY conversation_id, part""",
    f"SELECT conversation_id, seq, data FROM raw_messages AS t WHERE {_LIVE_PART} ORDER BY conversation_id, seq",
    f"""SELECT conversation_id, memory_id, data FROM memories AS t WHERE {_LIVE_PART}
        ORDER BY conversation_id, position""",
    "SELECT agent_id, seq, data FROM reasoning_chains ORDER BY agent_id, seq",
    "SELECT cache_key, data FROM cache ORDER BY cache_key",
    "SELECT state_key, data FROM system_state",
)


def _document_place(kind: Kind, key: str) -> tuple[str, str]:
    """(table, key description) that an error about a stored document names."""
    if kind is Kind.SYSTEM:
        return "system_state", f"state_key {key!r}"
    return "conversations", f"conversation_id {key!r}, column {_COLUMNS[kind]}"


def _first_problem(found: dict[tuple[str, str], Problem], where: tuple[str, str], read: Any, *args: Any) -> None:
    """Record the CorruptedDataError that ``read(*args)`` raises as the Problem of ``where``,
    unless an earlier row of it already failed (a load stops at its first bad row)."""
    if where in found:
        return
    try:
        read(*args)
    except CorruptedDataError as e:
        found[where] = Problem(e.path, str(e))


def _log_entity(kind: Kind, key: str) -> tuple[str, str]:
    return ("conversation", key) if kind is Kind.RAW_MESSAGES else ("agent", key)
