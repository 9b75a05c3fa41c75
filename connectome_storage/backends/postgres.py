"""PostgresStorage: the same API on a PostgreSQL server, through asyncpg and its pool.

Tables live in one PostgreSQL schema (the ``schema`` option, ``connectome`` by default),
so one database can hold several storages; every pooled connection has that schema as
its ``search_path``, so the SQL names tables without qualifying them. docs/postgres.md
draws the tables (``_postgres_schema.py`` creates and upgrades them).

Values are kept as their canonical JSON text (``text`` columns), never as ``jsonb``:
jsonb rewrites numbers (``1e300`` becomes a 301-digit integer, ``-0.0`` becomes ``0``)
and refuses ``\\u0000`` in strings, so a value would not come back equal. Queries that
need a field of a value read it with ``value::jsonb`` where that is exact, or fall back
to the reference implementation in Python where it is not.

How every operation runs (``_read`` and ``_write``):

- a read takes a pooled connection and runs its statement(s) in autocommit;
- a write runs in one transaction on a pooled connection, which first takes a shared
  transaction-scoped advisory lock on each entity it writes (``_entity_lock``), so that
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
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, TypeVar

from ..config import PostgresSettings, redact_url
from ..errors import (
    AccessDeniedError,
    BackendUnavailableError,
    ConfigError,
    CorruptedDataError,
    LockTimeoutError,
    StorageError,
    StorageFullError,
    StorageIOError,
    TransactionError,
    ValueTooLargeError,
)
from ..interface import StorageInterface
from ..serializer import make_serializer
from ._postgres_conversations import PostgresConversations
from ._postgres_kv import PostgresKV
from ._postgres_messages import PostgresMessages
from ._postgres_schema import MIGRATIONS, SCHEMA_VERSION
from ._postgres_tx import PostgresTransactions

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
    ``max_retries``, ``clock``, ``default_cache_ttl``. Raises ImportError naming the extra
    when asyncpg is missing.
    """

    backend_name: ClassVar[str] = "postgres"
    settings_class: ClassVar[type[PostgresSettings]] = PostgresSettings
    settings: PostgresSettings

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__(config)
        self._asyncpg = _import_asyncpg()
        self._serializer = make_serializer("json")
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
        keys = sorted({self._lock_key(*entity) for entity in entities})

        async def transaction(conn: Any) -> T:
            async with conn.transaction():
                if keys:
                    await conn.execute("SELECT pg_advisory_xact_lock_shared(k) FROM unnest($1::bigint[]) AS k", keys)
                return await body(conn)

        return await self._on_connection(action, transaction, write=True)

    async def _on_connection(self, action: str, body: Body[T], *, write: bool) -> T:
        pool = self._pool
        if pool is None:
            raise StorageIOError(f"the pool of {self._server} is closed")
        attempts = self.settings.max_retries + 1
        for attempt in range(attempts):
            sent = False
            try:
                async with pool.acquire(timeout=self.settings.connection_timeout) as conn:
                    sent = True
                    return await body(conn)
            except Exception as e:
                error = self._engine_error(e, action, sent=sent, write=write)
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
        network = (OSError, TimeoutError, ConnectionError, self._asyncpg.InterfaceError)
        return (
            isinstance(e, (*network, self._asyncpg.PostgresConnectionError))
            or sqlstate.startswith("08")  # connection exceptions
            or sqlstate in ("57P01", "57P02", "57P03")  # admin/crash shutdown, cannot connect now
        )

    # -------------------------------------------------------------------- values

    def _dump(self, value: Any) -> str:
        """A checked value as stored: its canonical compact JSON text."""
        return self._serializer.dumps(value).decode()

    def _parse(self, text: Any, table: str, key: str, shape: type | None = None) -> Any:
        """Decode one stored value; a bad one raises CorruptedDataError naming schema, table, key."""
        source = f"{self._server} (schema {self._schema}, table {table}, {key})"
        value = self._serializer.decode(text, source)
        if shape is not None and not isinstance(value, shape):
            expected = "an object" if shape is dict else "an array"
            raise CorruptedDataError(source, f"expected {expected}, found {type(value).__name__}", hint=_HINT)
        return value
