"""SqliteStorage: everything in one SQLite database file, shared by many processes.

Schema (``_sqlite_schema``; docs/sqlite.md draws it)::

    conversations(conversation_id PK, document, chunks,   a row while any part is stored
                  created_ms, updated_ms, message_count, ttl, expires_ms, metadata)
    raw_messages(id, conversation_id FK, seq, data)        one row per message
    memories(id, conversation_id FK, memory_id, position, data)
    agents(agent_id PK) <- reasoning_chains(id, agent_id FK, seq, data)
    cache(cache_key PK, data, created_ms, expires_ms)      index on (expires_ms, cache_key)
    system_state(state_key PK, data)
    messages(message_id PK, sender, recipient, timestamp, data)   the message store
    read_messages(agent_id, message_id)                            (_sqlite_messages)

Values go through the serializer chosen by the ``serializer`` option (``serializer.py``):
canonical compact JSON text by default, readable with the sqlite3 shell and
``json_extract``, or msgpack BLOBs. ``meta(name, value)`` records which one wrote the
database (row ``serializer``), and a database is only ever opened with that one.

Each operation is one function run on aiosqlite's worker thread:
one thread hop and one transaction per operation. That thread runs one function at a
time, so coroutines sharing the connection never interleave statements inside each
other's transaction. Writes that queue up while that thread is busy (the previous
commit's fsync) commit together in one transaction, a SAVEPOINT each (``_queue_write``:
group commit); a lone write runs alone at once.

Point reads (one row by its key: a cache entry, a state, a document, one key-value entry,
one message, a conversation's metadata) run on the event loop's thread instead, from a
second connection that only reads (``_point_read``), with WAL only; anything that makes
them wait or fail sends them to the worker thread.

``get_storage_stats`` counts rows with COUNT(*) and finds the rows that would not parse
among ``suspects``, which triggers keep in the writes' own transactions (schema version 6,
``_sqlite_schema.STAT_TRIGGERS``).

``storage.transaction()`` (docs/sqlite.md, "Transactions") holds the connection in one
``BEGIN IMMEDIATE`` from the start of its block to its end: SQLite's write lock makes the
writers of other connections wait (busy_timeout), and an asyncio gate makes the writers of
other coroutines of this storage wait rather than slip their statements into it. Reads
run on, inside it. The commit gathers the statement bodies of every op from the very
hooks that write outside a transaction, runs them in one hop, then COMMIT; any error rolls
all of it back.

A conversation whose ``expires_ms`` has passed (the conversation store's TTL,
``_sqlite_conversations``) is absent: every read of one of its parts filters it out in its
own statement, and every write to one removes it whole first, in the same transaction.
"""

from __future__ import annotations

import asyncio
import contextvars
import errno
import math
import os
import random
import sqlite3
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncGenerator, Callable
from contextlib import suppress
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, cast

from ..config import SqliteSettings
from ..errors import (
    AccessDeniedError,
    ConfigError,
    CorruptedDataError,
    InvalidArgumentError,
    LockTimeoutError,
    StorageError,
    StorageFullError,
    StorageIOError,
    TransactionError,
    UnsupportedFormatError,
    ValueTooLargeError,
)
from ..interface import STATS_KEYS, CacheEntry, Kind, Problem, StorageInterface, logger
from ..serializer import Serializer, make_serializer
from ..transaction import Op
from . import _fs
from ._sqlite_conversations import LIVE, META_COLUMNS, SqliteConversations
from ._sqlite_kv import SqliteKV
from ._sqlite_messages import SqliteMessages
from ._sqlite_schema import (
    APPLICATION_ID,
    CLAIM_SERIALIZER,
    DROP_EXPIRED,
    ENSURE_PARENT,
    FILL_STATS,
    FORGET_SUSPECTS,
    MIGRATIONS,
    PRUNE_CONVERSATION,
    SCHEMA_VERSION,
    SET_MESSAGE_COUNT,
    STAT_TRIGGERS,
    STATS,
)

if TYPE_CHECKING:
    import aiosqlite

    from ..conversations import MetaRecord

    _Collected = tuple["SqliteStorage", list[tuple[str, "Body[Any]"]]]

__all__ = ["SCHEMA_VERSION", "SqliteStorage"]

T = TypeVar("T")
R = TypeVar("R")
Body = Callable[[sqlite3.Connection], T]
# Characters of stored text a point read parses on the event loop's thread (~0.3 ms for
# orjson); a bigger value is parsed on a worker thread.
_LOOP_PARSE_LIMIT = 256 * 1024
# Page cache of the loop's reader, in KiB (SQLite's default is 2,000): the pages of the
# conversations read recently stay in the process, so a point read among 100,000 rows
# does not copy its two leaf pages from the OS for every read. It fills only as pages
# are read, and empties whenever another connection commits (SQLite's rule in WAL).
# Not mmap_size: a file truncated by another process would kill this one with SIGBUS.
_READER_CACHE_KIB = 64 * 1024
# After an error or a slow read on the loop's thread, point reads use the worker for _READER_PAUSE
# seconds; after one that held the loop over _READER_GIVE_UP, for good (_pause_reader).
_READER_PAUSE, _READER_SLOW, _READER_GIVE_UP = 1.0, 0.05, 1.0

# Primary result codes (extended codes carry them in the low byte).
_PERM, _BUSY, _LOCKED, _READONLY, _CORRUPT, _FULL, _CANTOPEN, _TOOBIG, _AUTH, _NOTADB = (
    3,
    5,
    6,
    8,
    11,
    13,
    14,
    18,
    23,
    26,
)
# What the operating system says when permissions, a read-only mount or an immutable file forbid a write.
_DENIED_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})
_HINT = "store the entity again to replace it, or restore a copy made with SqliteStorage.backup()"
_FILE_HINT = (
    "db_path must name a connectome-storage SQLite database (or a new file); if this one is "
    "damaged, restore a copy made with SqliteStorage.backup()"
)
# (table, key column, parent table) of each log.
_LOGS = {
    Kind.RAW_MESSAGES: ("raw_messages", "conversation_id", "conversations"),
    Kind.REASONING_CHAINS: ("reasoning_chains", "agent_id", "agents"),
}
# Conversation parts that are columns of the conversations row.
_COLUMNS = {Kind.CONVERSATION: "document", Kind.CHUNKS: "chunks"}
# Set while a transaction's commit runs its ops through the write hooks: ``_write`` then
# collects each statement body instead of running it (``SqliteStorage._tx_commit``).
ID_PAGE = 1000  # conversation ids per page of migrate's walk
_PLACES = ", ".join("?" * 9)  # conversation_id, document, chunks and the metadata columns
_collecting: contextvars.ContextVar[_Collected | None] = contextvars.ContextVar("sqlite_collecting", default=None)


def _import_aiosqlite() -> Any:
    try:
        import aiosqlite
    except ImportError as e:
        raise ImportError("SqliteStorage needs the aiosqlite package: pip install connectome-storage[sqlite]") from e
    return aiosqlite


class SqliteStorage(SqliteConversations, SqliteKV, SqliteMessages, StorageInterface):
    """Stores everything in one SQLite database at ``db_path``.

    Options: ``db_path``, ``enable_wal_mode``, ``synchronous`` (FULL, EXTRA or NORMAL),
    ``connection_timeout`` (seconds to wait for another writer), ``serializer`` (``json``
    or ``msgpack``), ``clock``, ``default_cache_ttl``. Raises ImportError naming the extra
    when aiosqlite (or msgpack, for that serializer) is missing.
    """

    backend_name: ClassVar[str] = "sqlite"
    settings_class: ClassVar[type[SqliteSettings]] = SqliteSettings
    settings: SqliteSettings
    _migrate_batch: ClassVar[int] = 128  # one durable commit per batch (migrate.py)

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__(config)
        self._aiosqlite = _import_aiosqlite()
        self._serializer: Serializer = make_serializer(self.settings.serializer)
        self.db_path = Path(self.settings.db_path)
        self._path = self.db_path.absolute()
        self._db: aiosqlite.Connection | None = None
        self._json1 = False
        self._json_functions = False  # JSON1 there: conversation queries run in SQL
        self._length_limit = 1_000_000_000  # SQLITE_MAX_LENGTH; the connection's own is read at initialize()
        # Held by an open transaction (_tx_begin .. _tx_commit/_tx_abort): the writers of
        # other coroutines wait at it, and a second transaction too.
        self._tx_gate = asyncio.Lock()
        self._tx_owner: asyncio.Task[Any] | None = None  # the task whose block is open
        self._journal_mode = ""
        # Point reads run on the event loop's thread from this second connection (WAL only;
        # see _point_read), which only that thread uses.
        self._reader: sqlite3.Connection | None = None
        self._reader_thread = 0
        self._reader_paused_until = 0.0  # monotonic time before which point reads use the worker
        # Group commit (_write): writes waiting for the next group transaction, and whether a
        # hop that will take them is queued on the connection's thread and not started yet.
        # The lock is shared by the loop's thread (which adds) and the worker (which takes).
        self._group: list[_Queued] = []
        self._group_queued = False
        self._group_lock = threading.Lock()

    # ----------------------------------------------------------------- lifecycle

    async def _open(self) -> None:
        if self._path.is_dir():
            raise ConfigError(
                f"db_path {str(self._path)!r} is a folder; db_path must name a database file, "
                f"e.g. {str(self._path / 'connectome.db')!r}"
            )
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise self._os_error(e, "creating the folder of", self._path) from e
        self._group, self._group_queued = [], False
        # isolation_level=None: the module never opens transactions on its own; each
        # operation says BEGIN / BEGIN IMMEDIATE itself.
        connection = self._aiosqlite.connect(self._path, timeout=self.settings.connection_timeout, isolation_level=None)
        try:
            self._db = await connection
        except sqlite3.Error as e:
            # aiosqlite then stops its worker thread through a future of this loop; wait for
            # the thread, or it may finish after the loop closed and print "Event loop is closed".
            await asyncio.to_thread(connection._thread.join, self.settings.connection_timeout)
            raise self._engine_error(e, "opening") from e
        try:
            await self._run("opening", self._setup)
        except BaseException:
            await self._close()
            raise
        self._open_reader()

    def _open_reader(self) -> None:
        """The loop thread's read-only connection, in WAL mode only (module docstring).

        WAL readers never wait for the writer; with the rollback journal a read would take
        the file's shared lock and could wait for a commit, so there reads stay on the
        worker thread. ``mode=rw`` never creates a file (the database may have been deleted
        meanwhile); busy timeout 0 and ``query_only``: it never waits and never writes.
        Any failure here leaves reads on the worker thread, as they always worked.
        """
        if self._journal_mode != "wal":
            return
        reader: sqlite3.Connection | None = None
        try:
            reader = sqlite3.connect(
                f"{self._path.as_uri()}?mode=rw", uri=True, timeout=0, isolation_level=None, cached_statements=256
            )
            reader.execute("PRAGMA query_only = ON")
            reader.execute(f"PRAGMA cache_size = -{_READER_CACHE_KIB}")
            reader.execute("SELECT COUNT(*) FROM sqlite_master").fetchall()  # opens the WAL index once
        except sqlite3.Error as e:
            logger.info("%s: point reads stay on the worker thread (%s)", self._path, e)
            if reader is not None:
                reader.close()
            return
        self._reader, self._reader_thread = reader, threading.get_ident()

    def _setup(self, conn: sqlite3.Connection) -> None:
        timeout_ms = round(self.settings.connection_timeout * 1000)
        conn.execute(f"PRAGMA busy_timeout = {timeout_ms}")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute(f"PRAGMA synchronous = {self.settings.synchronous}")
        self._length_limit = conn.getlimit(sqlite3.SQLITE_LIMIT_LENGTH)
        # The first read of the header: a file that is not SQLite fails here (NOTADB).
        version, app_id, tables = _header(conn)
        if version > SCHEMA_VERSION:
            raise UnsupportedFormatError(
                f"{self._path} holds schema version {version}, written by a newer "
                f"connectome-storage; this one reads up to {SCHEMA_VERSION}: upgrade the package"
            )
        upgrade = version < SCHEMA_VERSION or app_id != APPLICATION_ID
        if upgrade:
            self._check_ours(version, app_id, tables)  # before anything changes the file
        self._set_journal_mode(conn, timeout_ms)
        if upgrade:
            self._transaction(conn, self._migrate, "BEGIN IMMEDIATE", "upgrading the schema of")
        self._check_serializer(conn)
        try:
            conn.execute("SELECT json_valid('1')").fetchone()
            self._json_functions = True
            # Stats judge rows with json_valid in SQL; msgpack rows are decoded in Python.
            self._json1 = self._serializer.text
        except sqlite3.OperationalError:
            self._json1 = False  # an SQLite built without JSON1: stats read every row instead
        self._keep_stat_triggers(conn)

    def _keep_stat_triggers(self, conn: sqlite3.Connection) -> None:
        """The statistics' triggers (``STAT_TRIGGERS``) exist exactly when the stats count in SQL.

        They judge rows with JSON1, so a msgpack database (whose BLOBs are not JSON) or an
        SQLite without JSON1 has none: there the stats read every entity. Created, with the
        counts filled from the rows already there, in the transaction that checks they are missing.
        """
        names = [name for name, _statement in STAT_TRIGGERS]
        marks = ", ".join("?" * len(names))
        present = f"SELECT COUNT(*) FROM sqlite_master WHERE type = 'trigger' AND name IN ({marks})"
        wanted = len(names) if self._json1 else 0
        if conn.execute(present, names).fetchone()[0] == wanted:
            return

        def body(conn: sqlite3.Connection) -> None:
            if conn.execute(present, names).fetchone()[0] == wanted:
                return  # another process did it
            for name, statement in STAT_TRIGGERS:
                conn.execute(f"DROP TRIGGER IF EXISTS {name}")
                if self._json1:
                    conn.execute(statement)
            for statement in FILL_STATS if self._json1 else ("DELETE FROM suspects",):
                conn.execute(statement)

        self._transaction(conn, body, "BEGIN IMMEDIATE", "preparing the statistics of")

    def _check_serializer(self, conn: sqlite3.Connection) -> None:
        """Refuse a database written with another serializer; claim a new one for ours.

        The meta row is written once: by the schema upgrade for a database that held JSON
        data before the row existed, else by the first storage that opens it (inside
        BEGIN IMMEDIATE, so two processes opening a new file with different serializers
        cannot both win).
        """
        wanted = self._serializer.name
        stored = _stored_serializer(conn)
        if stored is None:

            def claim(conn: sqlite3.Connection) -> str:
                conn.execute(CLAIM_SERIALIZER, (wanted,))
                return _stored_serializer(conn) or wanted

            stored = self._transaction(conn, claim, "BEGIN IMMEDIATE", "recording the serializer of")
        if stored != wanted:
            raise ConfigError(
                f"db_path {str(self._path)!r} was written with serializer={stored!r}, but this storage was "
                f"opened with serializer={wanted!r}; open it with serializer={stored!r} "
                f"(CONNECTOME_STORAGE_SERIALIZER={stored}), or copy it with migrate() into a new database "
                f"that uses {wanted!r}"
            )

    def _set_journal_mode(self, conn: sqlite3.Connection, timeout_ms: int) -> None:
        wanted = "wal" if self.settings.enable_wal_mode else "delete"
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        self._journal_mode = str(mode).lower()
        if mode == wanted:
            return
        # Leaving WAL fails with SQLITE_BUSY while any other connection has the file open,
        # however long one waits; so ask once, without the busy timeout, and run on in WAL
        # (which is safe) if others are there.
        conn.execute(f"PRAGMA busy_timeout = {0 if mode == 'wal' else timeout_ms}")
        try:
            mode = conn.execute(f"PRAGMA journal_mode = {wanted}").fetchone()[0]
        except sqlite3.OperationalError as e:
            if not (_is_busy(e) and mode == "wal"):
                raise
        finally:
            conn.execute(f"PRAGMA busy_timeout = {timeout_ms}")
        self._journal_mode = str(mode).lower()
        if mode != wanted:
            logger.warning("%s stays in journal_mode %s (enable_wal_mode=%s): other connections "
                           "have it open", self._path, mode, self.settings.enable_wal_mode)  # fmt: skip

    def _check_ours(self, version: int, app_id: int, tables: int) -> None:
        if app_id not in (0, APPLICATION_ID) or (app_id == 0 and (version or tables)):
            raise ConfigError(
                f"db_path {str(self._path)!r} is an SQLite database of another application "
                f"(application_id {app_id:#x}, {tables} table(s)); point db_path at a new file"
            )

    def _migrate(self, conn: sqlite3.Connection) -> None:
        # Read again inside the write transaction: another process may have just done it.
        version, app_id, tables = _header(conn)
        if version < SCHEMA_VERSION or app_id != APPLICATION_ID:
            self._check_ours(version, app_id, tables)
        for step in range(version, SCHEMA_VERSION):
            for statement in MIGRATIONS[step]:
                conn.execute(statement)
            logger.info("%s: schema upgraded to version %d", self._path, step + 1)
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    async def _close(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            with suppress(sqlite3.Error):
                reader.close()  # first: the writer's close is the last one, which checkpoints
        db, self._db = self._db, None
        if db is not None:
            try:
                await db.close()
            except sqlite3.Error as e:
                raise self._engine_error(e, "closing") from e

    # ------------------------------------------------------------ running bodies

    async def _hop(self, function: Callable[..., T], *args: Any) -> T:
        """Run ``function(connection, *args)`` on the connection's thread."""
        db = self._db
        if db is None:
            raise StorageIOError(f"the connection to {self._path} is closed")
        # aiosqlite's own queue (its public methods use it too); one hop for the whole
        # operation instead of one per statement, and no interleaving (module docstring).
        result: T = await db._execute(function, db._conn, *args)  # type: ignore[no-untyped-call]
        return result

    async def _run(self, action: str, body: Body[T], begin: str | None = None) -> T:
        """Run ``body`` on the connection's thread inside ``begin`` ... COMMIT (if given)."""
        return await self._hop(self._transaction, body, begin, action)

    async def _read(self, action: str, body: Body[T]) -> T:
        return await self._run(action, body)

    async def _point_read(self, fetch: Body[R], finish: Callable[[R], T]) -> T:
        """A read of one row: ``fetch`` (SQL only, every row fetched) then ``finish`` (parse).

        On the event loop's thread from the reader connection when it can (no hop): WAL,
        no transaction of this storage open (its reads join it on the worker), the loop's
        own thread. Each statement is its own read transaction, so it sees every commit
        made before it, by this storage or any other. Any SQLite error there (SQLITE_BUSY
        while another connection recovers the WAL or rebuilds the -shm, an I/O error, a
        damaged page) sends the read to the worker thread, which waits, retries and names
        the error exactly as before, and the next second of point reads goes there too (so
        does one after a read that took over 50 ms). A value over ``_LOOP_PARSE_LIMIT`` is
        parsed off the loop.
        """
        reader = self._reader
        if (
            reader is not None and not self._tx_gate.locked() and threading.get_ident() == self._reader_thread
            and time.monotonic() >= self._reader_paused_until
        ):  # fmt: skip
            started = time.monotonic()
            try:
                row = fetch(reader)
            except sqlite3.Error:
                self._pause_reader(time.monotonic() - started, failed=True)
            else:
                self._pause_reader(time.monotonic() - started, failed=False)
                if _size(row) <= _LOOP_PARSE_LIMIT:
                    return finish(row)
                return await asyncio.to_thread(finish, row)
        return await self._read("reading", lambda conn: finish(fetch(conn)))

    def _pause_reader(self, elapsed: float, *, failed: bool) -> None:
        """After a loop read that failed or was slow, the next second of point reads goes to
        the worker. One that made the loop wait over ``_READER_GIVE_UP`` (SQLite's own
        retries while a process is stopped inside a WAL restart: about 10 s) ends loop reads
        for good: such a process may stay stopped, and the loop must not stall again."""
        if elapsed > _READER_GIVE_UP:
            self._reader_paused_until = math.inf
            logger.warning(
                "a read of %s held the event loop for %.1f s (another process stopped while restarting the WAL?); "
                "this storage's point reads run on its worker thread from now on",
                self._path,
                elapsed,
            )
        elif failed or elapsed > _READER_SLOW:
            self._reader_paused_until = time.monotonic() + _READER_PAUSE

    async def _write(self, action: str, body: Body[T]) -> T:
        collecting = _collecting.get()
        if collecting is not None and collecting[0] is self:  # a transaction's commit: run later, all at once
            collecting[1].append((action, body))
            return cast(T, None)
        if self._tx_gate.locked():
            await self._wait_for_transaction(action)
        # No await from the gate's check to the queueing below: a transaction that takes the
        # gate later queues its BEGIN behind the hop that will run this write.
        return await self._queue_write(action, body)

    async def _queue_write(self, action: str, body: Body[T]) -> T:
        """Group commit: the write joins the next group transaction, and returns once it committed.

        A write that finds no group hop waiting in the connection's queue queues one (so a
        lone write runs at once, as it always did); the writes that arrive while that hop
        waits or the previous group commits join it, and commit together in its one
        transaction, one fsync for all. The hop takes its writes when it starts (``_commit_group``).
        """
        db = self._db
        if db is None or not db._running:
            raise StorageIOError(f"the connection to {self._path} is closed")
        queued = _Queued(action, body, asyncio.get_running_loop().create_future())
        with self._group_lock:
            self._group.append(queued)
            start, self._group_queued = not self._group_queued, True
        if start:
            # aiosqlite's own queue, as _hop, but without a future of its own: _commit_group
            # settles each write's future itself, and never raises.
            db._tx.put_nowait((None, partial(self._commit_group, db._conn, queued.future.get_loop())))
        return cast(T, await queued.future)

    def _commit_group(self, conn: sqlite3.Connection, loop: asyncio.AbstractEventLoop) -> None:
        """On the connection's thread: commit every queued write, then settle their futures."""
        with self._group_lock:
            group, self._group, self._group_queued = self._group, [], False
        try:
            outcomes = self._run_group(conn, group)
        except BaseException as e:  # every caller must hear of it
            outcomes = [(False, e)] * len(group)
        with suppress(RuntimeError):  # the loop closed meanwhile: nobody waits any more
            loop.call_soon_threadsafe(_settle, group, outcomes)

    def _run_group(self, conn: sqlite3.Connection, group: list[_Queued]) -> list[tuple[bool, Any]]:
        """Each write's (succeeded, result or exception), all committed in one transaction.

        A lone write runs exactly as before. In a group, each write runs in its own
        SAVEPOINT, so one that fails (a constraint, a value over SQLite's limit, a bad
        row) is undone alone and gets its own exception while the others commit. If the
        group's transaction fails as a whole (its COMMIT, an I/O error or a full disk that
        made SQLite end the transaction), nothing of it was stored, and each write runs
        again in a transaction of its own, so each caller gets exactly what it would have
        got alone. A lock timeout is every caller's: it is not run again.
        """
        if len(group) == 1:
            return [self._alone(conn, group[0])]
        try:
            return self._transaction(
                conn, lambda conn: self._savepoints(conn, group), "BEGIN IMMEDIATE", "committing writes to"
            )
        except LockTimeoutError as e:
            return [(False, e)] * len(group)
        except Exception:
            logger.info("a group commit on %s failed as a whole; its %d writes run one by one", self._path, len(group))
            return [self._alone(conn, queued) for queued in group]

    def _alone(self, conn: sqlite3.Connection, queued: _Queued) -> tuple[bool, Any]:
        try:
            # IMMEDIATE takes the write lock up front: a deferred transaction that reads and
            # then writes can hit SQLITE_BUSY in the middle, where waiting cannot help.
            return True, self._transaction(conn, queued.body, "BEGIN IMMEDIATE", queued.action)
        except Exception as e:
            return False, e

    def _savepoints(self, conn: sqlite3.Connection, group: list[_Queued]) -> list[tuple[bool, Any]]:
        outcomes: list[tuple[bool, Any]] = []
        for queued in group:
            conn.execute("SAVEPOINT one_write")
            try:
                result = queued.body(conn)
            except sqlite3.Error as e:
                if _is_busy(e) or not conn.in_transaction:
                    raise  # the whole transaction: _transaction retries it, or _run_group runs each alone
                failure: BaseException = self._engine_error(e, queued.action)
                failure.__cause__ = e
            except OverflowError as e:
                failure = self._overflow_error(e, queued.action)
                failure.__cause__ = e
            except Exception as e:
                failure = e
            else:
                conn.execute("RELEASE one_write")
                outcomes.append((True, result))
                continue
            conn.execute("ROLLBACK TO one_write")
            conn.execute("RELEASE one_write")
            outcomes.append((False, failure))
        return outcomes

    def _transaction(
        self, conn: sqlite3.Connection, body: Body[T], begin: str | None, action: str, keep_open: bool = False
    ) -> T:
        """Retry the whole transaction on SQLITE_BUSY until ``connection_timeout`` passes.

        busy_timeout makes SQLite itself wait for most locks, but some BUSY results come
        back at once (a WAL being recovered, a journal mode change, a commit that found
        readers), so the loop is what guarantees that no caller ever sees "database is
        locked" before the timeout. ``keep_open``: leave the transaction open after the
        body (``_tx_begin``).
        """
        if conn.in_transaction:
            return self._inside_transaction(conn, body, begin, action)
        deadline = time.monotonic() + self.settings.connection_timeout
        pause = 0.002
        while True:
            try:
                if begin:
                    conn.execute(begin)
                try:
                    result = body(conn)
                    if begin and not keep_open:
                        conn.execute("COMMIT")
                    return result
                except BaseException:
                    if conn.in_transaction:
                        with suppress(sqlite3.Error):
                            conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as e:
                left = deadline - time.monotonic()
                if not _is_busy(e) or left <= 0:
                    raise self._engine_error(e, action) from e
            except OverflowError as e:
                raise self._overflow_error(e, action) from e
            time.sleep(min(left, pause * random.uniform(0.5, 1.0)))
            pause = min(pause * 2, 0.1)

    def _inside_transaction(self, conn: sqlite3.Connection, body: Body[T], begin: str | None, action: str) -> T:
        """A read while ``storage.transaction()`` holds the connection (its own reads, or
        another coroutine's): it joins that transaction, and sees what is committed, since
        the transaction's writes only run in its commit hop. Writes never come here: they
        wait at the gate (``_write``)."""
        if begin == "BEGIN IMMEDIATE":
            raise TransactionError(
                f"a write reached {self._path} while a transaction holds its connection; this is a bug "
                "in connectome-storage: please report it"
            )
        try:
            return body(conn)
        except sqlite3.Error as e:
            raise self._engine_error(e, action) from e
        except OverflowError as e:
            raise self._overflow_error(e, action) from e

    def _overflow_error(self, e: OverflowError, action: str) -> StorageError:
        """The sqlite3 module's own check: a string over 2 GiB, an int over 64 bits."""
        if "string" in str(e) or "blob" in str(e):
            return self._too_large(action)
        return InvalidArgumentError(f"a number does not fit SQLite while {action} {self._path}: {e}")

    # ------------------------------------------------------------- transactions
    #
    # One transaction at a time per storage (the gate) and per database (SQLite's write
    # lock, taken by BEGIN IMMEDIATE before the block touches anything): a transaction
    # never holds one lock while waiting for another, so none can deadlock. The whole
    # database is the locked entity, so _tx_touch has nothing to add.

    async def _wait_for_transaction(self, action: str) -> None:
        """A write while a transaction of this storage is open: wait for its end."""
        if self._tx_owner is not None and self._tx_owner is asyncio.current_task():  # it would wait for itself
            raise TransactionError(
                f"{action} {self._path} directly inside the block of its own open transaction: write "
                "through the transaction (tx) instead, or after the block"
            )
        await self._acquire_gate(f"{action} {self._path}")
        self._tx_gate.release()

    async def _acquire_gate(self, who: str) -> None:
        timeout = self.settings.connection_timeout
        try:
            await asyncio.wait_for(self._tx_gate.acquire(), timeout)
        except TimeoutError as e:
            raise LockTimeoutError(
                f"{who} waited connection_timeout={timeout:g}s for a transaction of this storage to end; "
                "raise the timeout or keep transactions short",
                lock_path=str(self._path),
            ) from e

    async def _tx_begin(self) -> Any:
        await self._acquire_gate(f"a transaction on {self._path}")
        self._tx_owner = asyncio.current_task()
        try:
            # Waits (busy_timeout, then the retry loop) while another connection writes.
            await self._hop(self._transaction, _nothing, "BEGIN IMMEDIATE", "starting a transaction on", True)
        except BaseException:
            await self._end_transaction()  # a cancelled hop may still run: roll it back behind it
            raise
        return None

    async def _tx_commit(self, state: Any, ops: list[Op]) -> None:
        try:
            bodies: list[tuple[str, Body[Any]]] = []
            token = _collecting.set((self, bodies))
            try:
                for op in ops:  # the hooks encode their values and hand their bodies to _write
                    await op.apply(self)
            finally:
                _collecting.reset(token)
            await self._hop(self._commit, bodies)
        except BaseException:
            await self._end_transaction(release=False)
            raise
        finally:
            self._tx_owner = None
            self._tx_gate.release()

    async def _tx_abort(self, state: Any) -> None:
        await self._end_transaction()

    def _commit(self, conn: sqlite3.Connection, bodies: list[tuple[str, Body[Any]]]) -> None:
        """Every op's body, then COMMIT, in one hop (no other coroutine's statement between
        them); any error rolls all of it back."""
        if not conn.in_transaction:  # SQLite rolls a transaction back by itself on some I/O errors
            raise StorageIOError(f"SQLite ended the transaction on {self._path} before its commit; retry it")
        action = "committing a transaction on"
        try:
            for step, body in bodies:
                action = step  # named in the error, if this body fails
                body(conn)
            action = "committing a transaction on"
            conn.execute("COMMIT")
        except BaseException as e:
            if conn.in_transaction:
                with suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            if isinstance(e, sqlite3.Error):
                raise self._engine_error(e, action) from e
            if isinstance(e, OverflowError):
                raise self._overflow_error(e, action) from e
            raise

    async def _end_transaction(self, *, release: bool = True) -> None:
        """Roll back whatever the transaction left open on the connection; free the gate."""
        try:
            await self._hop(_roll_back)
        except Exception as e:  # closed: nothing to roll back (a cancelled hop is queued all the same)
            logger.warning("rolling back a transaction on %s: %s", self._path, e)
        finally:
            if release:
                self._tx_owner = None
                self._tx_gate.release()

    def _os_error(self, e: OSError, action: str, path: Path) -> StorageError:
        if e.errno in _DENIED_ERRNOS:
            return AccessDeniedError(
                f"{action} {path} is not permitted ({e.strerror or e}, errno {e.errno}): file permissions, "
                "a read-only mount or an immutable attribute forbid it; SQLite must be able to write the "
                "database and create its -wal/-journal files beside it. Fix the permissions or move db_path"
            )
        return _fs.os_error(e, action, path)

    def _engine_error(self, e: sqlite3.Error, action: str) -> StorageError:
        code = _primary_code(e)
        name = getattr(e, "sqlite_errorname", type(e).__name__)
        if code in (_READONLY, _PERM, _AUTH):
            return AccessDeniedError(
                f"{self._path} cannot be written while {action} it: {e} ({name}); file permissions, a "
                "read-only mount or an immutable attribute forbid it (SQLite must write the database and "
                "create its -wal/-journal files in its folder). Fix the permissions or move db_path"
            )
        if code == _TOOBIG:
            return self._too_large(action)
        if code == _CANTOPEN:  # SQLite says only "unable to open database file": ask the OS why
            try:
                _probe_writable(self._path)
            except OSError as os_error:
                return self._os_error(os_error, action, self._path)
        if _is_busy(e):
            return LockTimeoutError(
                f"{self._path} stayed locked by another writer for connection_timeout="
                f"{self.settings.connection_timeout}s while {action} it; raise the timeout or "
                "find the process holding a long transaction",
                lock_path=str(self._path),
            )
        if code == _FULL:
            return StorageFullError(
                f"no space left while {action} {self._path} ({e}); the transaction was rolled "
                "back and the previous data is intact: free disk space and retry"
            )
        if code in (_CORRUPT, _NOTADB):
            return CorruptedDataError(str(self._path), f"{e} ({name}) while {action} it", hint=_FILE_HINT)
        return StorageIOError(f"SQLite failed while {action} {self._path}: {e} ({name})")

    def _too_large(self, action: str) -> ValueTooLargeError:
        return ValueTooLargeError(
            f"a value is over SQLite's limit of {self._length_limit:,} bytes for one "
            f"string (SQLITE_MAX_LENGTH) while {action} {self._path}; nothing was written. Store it in smaller parts"
        )

    def _dump(self, value: Any) -> str | bytes:
        """A checked value as stored: JSON as TEXT (what json_extract reads), msgpack as a BLOB."""
        data = self._serializer.dumps(value)
        return data.decode() if self._serializer.text else data

    def _parse(self, text: Any, table: str, key: str, shape: type | None = None) -> Any:
        """Decode one stored value; a bad one raises CorruptedDataError naming db, table, key."""
        source = f"{self._path} (table {table}, {key})"
        try:
            value = self._serializer.decode(text, source)
        except CorruptedDataError as e:
            raise CorruptedDataError(source, e.problem, line=e.line, column=e.column, hint=_HINT) from e
        if shape is not None and not isinstance(value, shape):
            expected = "an object" if shape is dict else "an array"
            raise CorruptedDataError(source, f"expected {expected}, found {type(value).__name__}", hint=_HINT)
        return value

    # ---------------------------------------------------------------- documents

    async def _read_document(self, kind: Kind, key: str) -> Any:
        if kind is Kind.SYSTEM:
            sql = "SELECT data FROM system_state WHERE state_key = ?"
        elif kind in _COLUMNS:
            sql = f"SELECT {_COLUMNS[kind]} FROM conversations WHERE conversation_id = ? AND {LIVE}"
        else:
            raise InvalidArgumentError(f"{kind} is not a document")
        params = (key,) if kind is Kind.SYSTEM else (key, self._now_ms())

        def fetch(conn: sqlite3.Connection) -> list[Any]:
            return conn.execute(sql, params).fetchall()

        def finish(rows: list[Any]) -> Any:
            return self._document(kind, key, rows[0][0]) if rows else None

        return await self._point_read(fetch, finish)

    def _document(self, kind: Kind, key: str, text: Any) -> Any:
        """A stored document (system state, conversation document or chunks), checked."""
        if text is None:
            return None
        if kind is Kind.SYSTEM:
            table, label = "system_state", "state_key"
        else:
            table, label = "conversations", f"conversation_id, column {_COLUMNS[kind]}"
        value = self._parse(text, table, f"{label} {key!r}", _SHAPES.get(kind))
        if kind is Kind.CHUNKS:
            self._check_items(value, table, f"{label} {key!r}")
        return value

    async def _write_document(self, kind: Kind, key: str, value: Any) -> None:
        if kind in _LOGS:
            return await self._replace_log(kind, key, value)
        text = self._dump(value)
        if kind is Kind.SYSTEM:
            sql = ("INSERT INTO system_state (state_key, data) VALUES (?, ?) "
                   "ON CONFLICT (state_key) DO UPDATE SET data = excluded.data")  # fmt: skip
        elif kind in _COLUMNS:
            column = _COLUMNS[kind]
            sql = (f"INSERT INTO conversations (conversation_id, {column}) VALUES (?, ?) "
                   f"ON CONFLICT (conversation_id) DO UPDATE SET {column} = excluded.{column}")  # fmt: skip
        else:
            raise InvalidArgumentError(f"{kind} is not a document")
        now_ms = self._now_ms()

        def body(conn: sqlite3.Connection) -> None:
            if kind in _COLUMNS:
                conn.execute(DROP_EXPIRED, (key, now_ms))
            conn.execute(sql, (key, text))

        await self._write("writing", body)

    async def _delete(self, kind: Kind, key: str) -> bool:
        if kind in _COLUMNS:
            column = _COLUMNS[kind]
            sql = f"UPDATE conversations SET {column} = NULL WHERE conversation_id = ? AND {column} IS NOT NULL"
        elif kind is Kind.RAW_MESSAGES:
            sql = "DELETE FROM raw_messages WHERE conversation_id = ?"
        elif kind is Kind.MEMORIES:
            sql = "DELETE FROM memories WHERE conversation_id = ?"
        elif kind is Kind.REASONING_CHAINS:
            sql = "DELETE FROM agents WHERE agent_id = ?"  # cascades to the chains
        elif kind is Kind.CACHE:
            sql = "DELETE FROM cache WHERE cache_key = ?"
        else:
            sql = "DELETE FROM system_state WHERE state_key = ?"
        prune = kind in _COLUMNS or kind in (Kind.RAW_MESSAGES, Kind.MEMORIES)
        now_ms = self._now_ms()

        def body(conn: sqlite3.Connection) -> bool:
            if prune:
                conn.execute(DROP_EXPIRED, (key, now_ms))
            found = conn.execute(sql, (key,)).rowcount > 0
            if found and kind is Kind.RAW_MESSAGES:
                conn.execute(SET_MESSAGE_COUNT, (0, key))
            if found and prune:
                conn.execute(PRUNE_CONVERSATION, {"id": key})
            return found

        return await self._write("deleting from", body)

    # --------------------------------------------------------------------- logs

    async def _read_log(self, kind: Kind, key: str) -> list[Any]:
        if kind is Kind.RAW_MESSAGES:
            now_ms = self._now_ms()
            return await self._read("reading", lambda conn: self._messages(conn, key, now_ms))
        return await self._read("reading", lambda conn: self._log(conn, kind, key, "", ()))

    def _messages(self, conn: sqlite3.Connection, conversation_id: str, now_ms: int | None = None) -> list[Any]:
        """The raw history; with ``now_ms``, [] when the conversation expired (in the same statement)."""
        if now_ms is None:
            return self._log(conn, Kind.RAW_MESSAGES, conversation_id, "", ())
        alive = " AND NOT EXISTS (SELECT 1 FROM conversations AS c WHERE c.conversation_id = ? AND c.expires_ms <= ?)"
        return self._log(conn, Kind.RAW_MESSAGES, conversation_id, alive, (conversation_id, now_ms))

    def _log(self, conn: sqlite3.Connection, kind: Kind, key: str, extra: str, params: tuple[Any, ...]) -> list[Any]:
        table, column, _parent = _LOGS[kind]
        fast = f"SELECT data FROM {table} WHERE {column} = ?{extra} ORDER BY seq"
        precise = f"SELECT seq, data FROM {table} WHERE {column} = ?{extra} ORDER BY seq"
        # A long history is mostly parsing: parse every row with the serializer directly and
        # check the shapes in one pass, and only when something is wrong read again
        # with seq, to name the bad row. Measured on 10,000 messages: 12 ms instead of
        # 18 ms (a CorruptedDataError's location string built for every row, one
        # Python call per row, and the seq column cost the difference).
        texts = conn.execute(fast, (key, *params)).fetchall()
        loads = self._serializer.loads
        try:
            items = [loads(text) for (text,) in texts]
        except self._serializer.errors:  # TypeError among them: a value that is not text
            items = None
        if items is not None and set(map(type, items)) <= {dict}:
            return items
        rows = conn.execute(precise, (key, *params)).fetchall()
        return [self._parse(data, table, f"{column} {key!r}, seq {seq}", dict) for seq, data in rows]

    async def _append_log(self, kind: Kind, key: str, items: list[Any]) -> int:
        table, column, parent = _LOGS[kind]
        texts = [self._dump(item) for item in items]
        # MAX(seq) comes from the (key, seq) index: the cost does not grow with the history,
        # and earlier rows are never touched.
        last = f"SELECT COALESCE(MAX(seq), -1) FROM {table} WHERE {column} = ?"
        insert = f"INSERT INTO {table} ({column}, seq, data) VALUES (?, ?, ?)"
        messages = kind is Kind.RAW_MESSAGES
        now_ms = self._now_ms()

        def body(conn: sqlite3.Connection) -> int:
            if messages:
                conn.execute(DROP_EXPIRED, (key, now_ms))
            conn.execute(ENSURE_PARENT[parent], (key,))
            start = conn.execute(last, (key,)).fetchone()[0] + 1
            conn.executemany(insert, [(key, start + i, text) for i, text in enumerate(texts)])
            count = int(start + len(texts))
            if messages:
                conn.execute(SET_MESSAGE_COUNT, (count, key))
            return count

        return await self._write("appending to", body)

    async def _replace_log(self, kind: Kind, key: str, items: list[Any]) -> None:
        table, column, parent = _LOGS[kind]
        rows = [(key, seq, self._dump(item)) for seq, item in enumerate(items)]
        messages = kind is Kind.RAW_MESSAGES
        now_ms = self._now_ms()

        def body(conn: sqlite3.Connection) -> None:
            if messages:
                conn.execute(DROP_EXPIRED, (key, now_ms))
            conn.execute(ENSURE_PARENT[parent], (key,))
            conn.execute(f"DELETE FROM {table} WHERE {column} = ?", (key,))
            conn.executemany(f"INSERT INTO {table} ({column}, seq, data) VALUES (?, ?, ?)", rows)
            if messages:
                conn.execute(SET_MESSAGE_COUNT, (len(rows), key))

        await self._write("writing", body)

    async def _pop_log(self, kind: Kind, key: str) -> Any:
        table, column, parent = _LOGS[kind]
        newest = f"SELECT id, seq, data FROM {table} WHERE {column} = ? ORDER BY seq DESC LIMIT 1"
        now_ms = self._now_ms()

        def body(conn: sqlite3.Connection) -> Any:
            if parent == "conversations":
                conn.execute(DROP_EXPIRED, (key, now_ms))
            row = conn.execute(newest, (key,)).fetchone()
            if row is None:
                return None
            row_id, seq, data = row
            item = self._parse(data, table, f"{column} {key!r}, seq {seq}", dict)  # a bad row stays put
            conn.execute(f"DELETE FROM {table} WHERE id = ?", (row_id,))
            if parent == "conversations":
                length = conn.execute(f"SELECT COALESCE(MAX(seq), -1) + 1 FROM {table} WHERE {column} = ?", (key,))
                conn.execute(SET_MESSAGE_COUNT, (length.fetchone()[0], key))
                conn.execute(PRUNE_CONVERSATION, {"id": key})
            else:  # an emptied chain history is no stored agent
                conn.execute(
                    "DELETE FROM agents WHERE agent_id = ?1 AND NOT EXISTS "
                    "(SELECT 1 FROM reasoning_chains WHERE agent_id = ?1)", (key,)
                )  # fmt: skip
            return item

        return await self._write("popping from", body)

    # ------------------------------------------------------------------ members

    async def _put_member(self, conversation_id: str, memory_id: str, memory: dict[str, Any]) -> None:
        text = self._dump(memory)
        now_ms = self._now_ms()

        def body(conn: sqlite3.Connection) -> None:
            conn.execute(DROP_EXPIRED, (conversation_id, now_ms))
            conn.execute(ENSURE_PARENT["conversations"], (conversation_id,))
            # The UPSERT's update branch leaves position alone: a replaced memory keeps
            # its place in the order.
            conn.execute(
                """INSERT INTO memories (conversation_id, memory_id, position, data)
                   VALUES (?1, ?2, (SELECT COALESCE(MAX(position), -1) + 1 FROM memories
                                    WHERE conversation_id = ?1), ?3)
                   ON CONFLICT (conversation_id, memory_id) DO UPDATE SET data = excluded.data""",
                (conversation_id, memory_id, text),
            )

        await self._write("writing", body)

    async def _read_members(self, conversation_id: str) -> list[dict[str, Any]]:
        now_ms = self._now_ms()

        return await self._read("reading", lambda conn: self._members(conn, conversation_id, now_ms))

    def _members(self, conn: sqlite3.Connection, conversation_id: str, now_ms: int) -> list[dict[str, Any]]:
        rows = conn.execute(
            "SELECT memory_id, data FROM memories WHERE conversation_id = ?1 AND NOT EXISTS (SELECT 1 FROM "
            "conversations AS c WHERE c.conversation_id = ?1 AND c.expires_ms <= ?2) ORDER BY position",
            (conversation_id, now_ms),
        ).fetchall()
        memories = []
        for memory_id, data in rows:
            where = f"conversation_id {conversation_id!r}, memory_id {memory_id!r}"
            memory = self._parse(data, "memories", where, dict)
            if memory.get("memory_id") != memory_id:
                problem = f"the stored memory carries memory_id {memory.get('memory_id')!r}"
                raise CorruptedDataError(f"{self._path} (table memories, {where})", problem, hint=_HINT)
            memories.append(memory)
        return memories

    async def _conversation_parts(
        self, conversation_id: str, now_ms: int
    ) -> tuple[MetaRecord | None, Any, Any, list[Any], list[dict[str, Any]]]:
        # A transaction's first touch of a conversation: every part in one hop, one snapshot.
        sql = f"SELECT {META_COLUMNS}, document, chunks, {LIVE} FROM conversations WHERE conversation_id = ?"

        def body(conn: sqlite3.Connection) -> tuple[MetaRecord | None, Any, Any, list[Any], list[dict[str, Any]]]:
            row = conn.execute(sql, (now_ms, conversation_id)).fetchone()
            if row is None:  # no part stored (every part's row hangs on this one)
                return None, None, None, [], []
            meta = self._record(conversation_id, row[:6])
            if not row[8]:  # expired: its parts read as missing, its metadata is still returned
                return meta, None, None, [], []
            document = self._document(Kind.CONVERSATION, conversation_id, row[6])
            chunks = self._document(Kind.CHUNKS, conversation_id, row[7])
            return (
                meta,
                document,
                chunks,
                self._messages(conn, conversation_id),
                self._members(conn, conversation_id, now_ms),
            )

        return await self._run("reading", body, "BEGIN")

    async def _replace_conversations(
        self, batch: list[tuple[str, tuple[MetaRecord | None, Any, Any, list[Any], list[dict[str, Any]]]]]
    ) -> bool:
        # migrate's batch: each conversation's rows deleted (the foreign keys cascade to its
        # messages and memories; nothing is read, so damaged rows go too) and inserted again,
        # a few executemany in one group-commit write: all of the batch or none of it.
        dump, rows, messages, memories = self._dump, [], [], []
        for conversation_id, (record, document, chunks, history, members) in batch:
            meta = (None,) * 6 if record is None else self._meta_row(record)[1:]
            rows.append((conversation_id, None if document is None else dump(document),
                         dump(chunks) if chunks else None, *meta))  # fmt: skip
            messages += [(conversation_id, seq, dump(message)) for seq, message in enumerate(history)]
            memories += [(conversation_id, m["memory_id"], position, dump(m)) for position, m in enumerate(members)]
        ids = [(conversation_id,) for conversation_id, _parts in batch]
        insert = f"INSERT INTO conversations (conversation_id, document, chunks, {META_COLUMNS}) VALUES ({_PLACES})"

        def body(conn: sqlite3.Connection) -> None:
            conn.executemany("DELETE FROM conversations WHERE conversation_id = ?", ids)
            conn.executemany(insert, rows)
            conn.executemany("INSERT INTO raw_messages (conversation_id, seq, data) VALUES (?, ?, ?)", messages)
            conn.executemany(
                "INSERT INTO memories (conversation_id, memory_id, position, data) VALUES (?, ?, ?, ?)", memories
            )

        await self._write("writing", body)
        return True

    async def _delete_member(self, conversation_id: str, memory_id: str) -> bool:
        now_ms = self._now_ms()

        def body(conn: sqlite3.Connection) -> bool:
            conn.execute(DROP_EXPIRED, (conversation_id, now_ms))
            cursor = conn.execute(
                "DELETE FROM memories WHERE conversation_id = ? AND memory_id = ?",
                (conversation_id, memory_id),
            )
            if cursor.rowcount == 0:
                return False
            conn.execute(PRUNE_CONVERSATION, {"id": conversation_id})
            return True

        return await self._write("deleting from", body)

    # ------------------------------------------------------------ conversations

    async def _delete_conversation(self, conversation_id: str) -> bool:
        # One statement: the foreign keys cascade to messages and memories; metadata is in
        # the row. RETURNING says whether it was live (not "expires_ms IS NULL OR ...": see
        # _sqlite_kv._kv_delete on SQLite 3.40's IS NULL in RETURNING).
        sql = "DELETE FROM conversations WHERE conversation_id = ? RETURNING coalesce(expires_ms > ?, 1)"
        params = (conversation_id, self._now_ms())
        return await self._write("deleting from", lambda conn: any(alive for (alive,) in conn.execute(sql, params)))

    async def _list_conversations(self) -> list[str]:
        return await self._column(f"SELECT conversation_id FROM conversations WHERE {LIVE}", self._now_ms())

    async def _conversation_ids(self) -> AsyncGenerator[str, None]:
        # migrate's walk: keyset pages of the primary key (expired rows included), no list.
        sql = "SELECT conversation_id FROM conversations WHERE conversation_id > ? ORDER BY conversation_id LIMIT ?"
        after = ""
        while True:
            page = await self._column(sql, after, ID_PAGE)
            for conversation_id in page:
                yield conversation_id
            if len(page) < ID_PAGE:
                return
            after = page[-1]

    async def _list_agents(self) -> list[str]:
        return await self._column("SELECT agent_id FROM agents")

    async def _list_system_states(self) -> list[str]:
        return await self._column("SELECT state_key FROM system_state")

    async def _column(self, sql: str, *args: Any) -> list[Any]:
        return await self._read("reading", lambda conn: [row[0] for row in conn.execute(sql, args)])

    # -------------------------------------------------------------------- cache

    async def _write_cache(self, entry: CacheEntry) -> None:
        row = (entry.key, self._dump(entry.data), entry.created_ms, entry.expires_ms)
        sql = """INSERT INTO cache (cache_key, data, created_ms, expires_ms) VALUES (?, ?, ?, ?)
                 ON CONFLICT (cache_key) DO UPDATE SET data = excluded.data,
                     created_ms = excluded.created_ms, expires_ms = excluded.expires_ms"""
        await self._write("writing", lambda conn: conn.execute(sql, row))

    async def _read_cache(self, cache_key: str) -> CacheEntry | None:
        def fetch(conn: sqlite3.Connection) -> list[Any]:
            return conn.execute(
                "SELECT data, created_ms, expires_ms FROM cache WHERE cache_key = ?", (cache_key,)
            ).fetchall()

        def finish(rows: list[Any]) -> CacheEntry | None:
            if not rows:
                return None
            row = rows[0]
            data = self._parse(row[0], "cache", f"cache_key {cache_key!r}")
            if type(row[1]) is not int or not (row[2] is None or type(row[2]) is int):
                where = f"{self._path} (table cache, cache_key {cache_key!r})"
                raise CorruptedDataError(where, "created_ms and expires_ms must be integers", hint=_HINT)
            return CacheEntry(cache_key, data, row[1], row[2])

        return await self._point_read(fetch, finish)

    async def _list_cache_keys(self, now_ms: int) -> list[str]:
        return await self._column("SELECT cache_key FROM cache WHERE expires_ms IS NULL OR expires_ms > ?", now_ms)

    async def _list_all_cache_keys(self) -> list[str]:
        return await self._column("SELECT cache_key FROM cache")

    async def _delete_expired_cache(self, now_ms: int) -> int:
        sql = "DELETE FROM cache WHERE expires_ms <= ?"
        return await self._write("cleaning the cache of", lambda conn: conn.execute(sql, (now_ms,)).rowcount)

    # ------------------------------------------------------------ health, stats

    async def _probe(self) -> dict[str, Any]:
        def body(conn: sqlite3.Connection) -> dict[str, Any]:
            def pragma(name: str) -> Any:
                return conn.execute(f"PRAGMA {name}").fetchone()[0]

            conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()  # reads page 1 for real
            return {
                "db_path": str(self._path),
                "schema_version": pragma("user_version"),
                "journal_mode": pragma("journal_mode"),
                "synchronous": self.settings.synchronous,
                "serializer": self._serializer.name,
                "page_count": pragma("page_count"),
                "page_size": pragma("page_size"),
                "freelist_count": pragma("freelist_count"),
                "sqlite_version": sqlite3.sqlite_version,
            }

        return await self._run("probing", body, "BEGIN")

    async def _total_bytes(self) -> int:
        total = 0
        for path in (self._path, Path(f"{self._path}-wal")):
            with suppress(FileNotFoundError):
                total += path.stat().st_size
        return total

    async def get_storage_stats(self) -> dict[str, Any]:
        """Counts of every kind of data, from SQL in one read transaction and one hop (``STATS``)."""
        if not self._json1:  # msgpack rows, or an SQLite built without JSON1: every entity is read
            return await super().get_storage_stats()
        self._require_initialized()
        now_ms = self._now_ms()
        counts = await self._run("counting", lambda conn: self._count(conn, now_ms), "BEGIN")
        stats: dict[str, Any] = {"backend": self.backend_name, **counts}
        stats["total_bytes"] = await self._total_bytes()
        # One key order on every backend, so two backends' reports compare line by line.
        ordered = {key: stats.pop(key) for key in STATS_KEYS if key in stats}
        return {**ordered, **stats}

    def _count(self, conn: sqlite3.Connection, now_ms: int) -> dict[str, Any]:
        """Every count of get_storage_stats at ``now_ms``, without decoding a value."""
        now = {"now": now_ms}
        damaged: list[str] = []

        def row(name: str, width: int) -> tuple[int, ...]:
            try:
                return tuple(int(value or 0) for value in conn.execute(STATS[name], now).fetchone())
            except sqlite3.DatabaseError as e:
                if _primary_code(e) not in (_CORRUPT, _NOTADB):
                    raise
                # A damaged page: count this table as one unreadable entity and go on with
                # the others (verify() names the damage).
                damaged.append(name)
                return (0,) * width

        stats: dict[str, Any] = {}
        unreadable = 0
        for name in ("raw_message_count", "memory_count", "reasoning_chain_count"):
            rows, bad = row(name, 2)
            stats[name], unreadable = rows - bad, unreadable + bad
        rows, expired, bad, bad_expired = row("cache", 4)
        stats["cache_entry_count"] = rows - expired - (bad - bad_expired)
        stats["expired_cache_entry_count"] = expired - bad_expired
        unreadable += bad
        rows, expired, items, expired_items, bad = row("conversations", 5)
        stats["conversation_count"], stats["expired_conversation_count"] = rows - expired, expired
        stats["chunk_count"] = items - expired_items
        rows, bad_states = row("system_state", 2)
        stats["system_state_count"] = rows - bad_states
        (stats["agent_count"],) = row("agents", 1)
        namespaces, rows, expired, bad_kv, bad_expired = row("kv", 5)
        stats["kv_namespace_count"], stats["kv_entry_count"] = namespaces, rows - expired - (bad_kv - bad_expired)
        stats["expired_kv_entry_count"] = expired - bad_expired
        messages, readers, problems = self._msg_count(conn)
        stats["message_count"], stats["message_read_state_count"] = messages, readers
        stats["unreadable_count"] = unreadable + bad + bad_states + bad_kv + len(problems) + len(damaged)
        if damaged:
            stats["damaged_tables"] = damaged
        return stats

    async def _cleanup_housekeeping(self, now_ms: int) -> dict[str, int]:
        """Forget the suspect rows (``_sqlite_schema.FORGET_SUSPECTS``) that are gone or fine now."""

        def body(conn: sqlite3.Connection) -> None:
            for statement in FORGET_SUSPECTS:
                conn.execute(statement)

        await self._write("cleaning up", body)
        return {}

    async def verify(self) -> list[Problem]:
        """Rows that do not parse, plus what ``PRAGMA quick_check`` and the foreign key
        check find in the file itself. A damaged page is listed, never raised."""
        self._require_initialized()
        where = str(self._path)
        try:
            problems = await super().verify()
        except CorruptedDataError as e:  # a damaged page under a listing stops the walk
            problems = [Problem(e.path, f"reading every entry stopped early: {e}")]

        def quick_check(conn: sqlite3.Connection) -> list[Problem]:
            rows = conn.execute("PRAGMA quick_check").fetchall()
            return [Problem(where, f"quick_check: {row[0]}") for row in rows if row[0] != "ok"]

        def foreign_key_check(conn: sqlite3.Connection) -> list[Problem]:
            rows = conn.execute("PRAGMA foreign_key_check").fetchall()
            return [Problem(where, f"row {rowid} of {table} has no {parent} row") for table, rowid, parent, _ in rows]

        def body(conn: sqlite3.Connection) -> list[Problem]:
            found: list[Problem] = []
            for name, check in (("quick_check", quick_check), ("foreign_key_check", foreign_key_check)):
                try:
                    found += check(conn)
                except sqlite3.DatabaseError as e:
                    found.append(Problem(where, f"{name} could not finish: {e}; the file is damaged"))
            return found

        try:
            problems.extend(await self._read("checking", body))
        except CorruptedDataError as e:
            problems.append(Problem(where, f"the integrity check could not run: {e}"))
        return problems

    def _capabilities(self) -> frozenset[str]:
        return frozenset({"persistent", "cross_process"})

    # ------------------------------------------------------------------- backup

    async def backup(self, path: str | Path) -> Path:
        """Copy the database to ``path`` while it stays in use (SQLite's online backup).

        The copy is a consistent snapshot in rollback-journal mode, so it is one
        self-contained file; it is written beside ``path`` and renamed into place, so
        ``path`` holds either its old content or the whole copy. Returns ``path``.
        Raises StorageIOError, StorageFullError.
        """
        self._require_initialized()
        db = self._db
        assert db is not None
        target = Path(path).absolute()
        temp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:12]}")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            async with self._aiosqlite.connect(temp, isolation_level=None) as copy:
                await db.backup(copy)
                await copy.execute("PRAGMA journal_mode = DELETE")
            fd = os.open(temp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temp, target)
            _fs.fsync_dir(target.parent)
        except sqlite3.Error as e:
            raise self._engine_error(e, f"backing up to {target} from") from e
        except OSError as e:
            raise _fs.os_error(e, "writing the backup", target) from e
        finally:
            for leftover in (temp, Path(f"{temp}-journal"), Path(f"{temp}-wal"), Path(f"{temp}-shm")):
                with suppress(OSError):
                    leftover.unlink()
        return target

    # ------------------------------------------------------------------ helpers

    def _check_items(self, value: list[Any], table: str, key: str) -> None:
        for index, item in enumerate(value):
            if not isinstance(item, dict):
                where = f"{self._path} (table {table}, {key})"
                raise CorruptedDataError(where, f"item {index} is not an object", hint=_HINT)


_SHAPES: dict[Kind, type] = {Kind.CONVERSATION: dict, Kind.CHUNKS: list}


class _Queued:
    """A write waiting for its group transaction (``SqliteStorage._queue_write``)."""

    __slots__ = ("action", "body", "future")

    def __init__(self, action: str, body: Body[Any], future: asyncio.Future[Any]) -> None:
        self.action, self.body, self.future = action, body, future


def _settle(group: list[_Queued], outcomes: list[tuple[bool, Any]]) -> None:
    """On the loop's thread: hand each write of a group its own result or exception."""
    for queued, (succeeded, value) in zip(group, outcomes, strict=True):
        if queued.future.done():  # its caller was cancelled; the write itself ran
            continue
        if succeeded:
            queued.future.set_result(value)
        else:
            queued.future.set_exception(value)


def _nothing(conn: sqlite3.Connection) -> None:
    pass


def _roll_back(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        conn.execute("ROLLBACK")


def _stored_serializer(conn: sqlite3.Connection) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE name = 'serializer'").fetchone()
    return None if row is None else str(row[0])


def _header(conn: sqlite3.Connection) -> tuple[int, int, int]:
    """(user_version, application_id, number of tables) of the open database."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    tables = conn.execute("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
    return int(version), int(app_id), int(tables)


def _probe_writable(path: Path) -> None:
    """Raise the OSError that keeps SQLite from opening ``path`` for writing, if any: the
    file itself, then its folder (where SQLite creates its -wal and -journal files)."""
    existed = path.exists()
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o644))
    if not existed:
        path.unlink()
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.probe-", dir=path.parent)
    os.close(fd)
    os.unlink(name)


def _primary_code(e: sqlite3.Error) -> int | None:
    code = getattr(e, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


def _is_busy(e: sqlite3.Error) -> bool:
    code = _primary_code(e)
    if code is not None:
        return code in (_BUSY, _LOCKED)
    return "locked" in str(e) or "busy" in str(e)


def _size(rows: Any) -> int:
    """Characters (or bytes) of the text and BLOB values in fetched rows."""
    return sum(len(value) for row in rows for value in row if isinstance(value, str | bytes))
