"""Transactions on PostgreSQL: the ``_tx_*`` hooks of ``PostgresStorage`` (docs/transactions.md).

A transaction takes one pooled connection for itself (``_tx_begin``) and holds its locks
as *session-level* advisory locks on that connection:

- ``pg_advisory_lock(<schema's transaction key>)``: one transaction at a time per schema,
  across every process, so two transactions never wait for each other's entities (no
  deadlock); a second one waits up to ``connection_timeout`` (then LockTimeoutError). In
  one process an asyncio gate comes first, so a waiting transaction holds no connection;
- ``pg_advisory_lock(<entity key>)`` at the first touch of each entity (``_tx_touch``):
  every plain write of that entity takes the same key shared (``PostgresStorage._write``),
  so it waits until the transaction ends; a write already running when the transaction
  touches the entity finishes first (the touch waits for it), so what the transaction then
  reads cannot change under it.

The connection stays in autocommit while the block runs: the transaction's own reads run
on it (``_tx_run``), one statement at a time, seeing what is committed (its own writes
are in the overlay, transaction.py). Session-level locks instead of ``BEGIN`` +
``pg_advisory_xact_lock``: the connection is never "idle in transaction" while user code
runs (no snapshot or xid held, no ``idle_in_transaction_session_timeout`` to hit), a read
that fails on the server (a cast, a corrupt row) does not poison the transaction, and the
reads never need a second pooled connection, which writers waiting on the transaction's
entities could all be holding.

At commit every op's hook hands its statement body to ``_write``, which collects it
(``_collecting``); the bodies then run on the transaction's connection between ``BEGIN``
and ``COMMIT``, and the same round trip as ``COMMIT`` lets every lock go. Any error
before ``COMMIT`` leaves nothing applied (ROLLBACK); a connection lost during ``COMMIT``
itself leaves the outcome unknown, and the error says so. Whatever happens, cancellation
included, the connection goes back to the pool rolled back and with no lock held
(``_let_go``: after a cancelled statement, once asyncpg's cancel request has stopped it
on the server), or is terminated (the server then rolls back and drops its locks).

Writes of several entities take the schema's transaction key shared before anything
else (``_shared_locks``), so they never run beside a transaction: that is what keeps a
plain ``set_many`` and a transaction from deadlocking.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import BackendUnavailableError, LockTimeoutError, StorageError, TransactionError
from ..interface import StorageInterface

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from ..config import PostgresSettings
    from ..transaction import Op

__all__ = ["PostgresTransactions"]

T = TypeVar("T")

logger = logging.getLogger("connectome_storage")

_LOCK = "SELECT pg_advisory_lock($1)"
_UNLOCK_ALL = "SELECT pg_advisory_unlock_all()"
_ROLLBACK_AND_UNLOCK = "ROLLBACK; SELECT pg_advisory_unlock_all()"
_LOST = (
    "the transaction lost its connection, and its locks with it; nothing of it was applied: leave the block and "
    "run the transaction again"
)
# One round trip: the commit, then every lock of the transaction let go.
_COMMIT = "COMMIT; SELECT pg_advisory_unlock_all()"


@dataclass(eq=False)
class _Tx:
    """One open transaction: its connection and what it has locked."""

    storage: PostgresTransactions
    conn: Any  # asyncpg.Connection, acquired from the storage's pool
    owner: asyncio.Task[Any] | None
    keys: set[int] = field(default_factory=set)  # advisory keys held (entities touched)
    use: asyncio.Lock = field(default_factory=asyncio.Lock)  # one statement at a time on conn
    open: bool = True
    broken: bool = False  # the connection was lost, and the locks with it
    committed: bool = False  # COMMIT answered: the locks went with it


# The transaction whose block the current context runs in (reads go to its connection).
_current: contextvars.ContextVar[_Tx | None] = contextvars.ContextVar("connectome_postgres_tx", default=None)


class PostgresTransactions(StorageInterface):
    """Listed among the bases of PostgresStorage (postgres.py)."""

    if TYPE_CHECKING:
        settings: PostgresSettings
        _pool: Any
        _schema: str
        _server: str

        def _lock_key(self, *entity: str) -> int: ...

        def _engine_error(
            self, e: BaseException, action: str, *, sent: bool = True, write: bool = True
        ) -> StorageError: ...

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__(config)
        # In this process one transaction at a time per storage: the others wait here
        # without holding a pooled connection.
        self._tx_gate = asyncio.Lock()
        self._tx_state: _Tx | None = None

    def _where(self) -> str:
        return f"{self._server} (schema {self._schema})"

    # ------------------------------------------------------------------ hooks

    async def _tx_begin(self) -> _Tx:
        timeout = self.settings.connection_timeout
        try:
            await asyncio.wait_for(self._tx_gate.acquire(), timeout)
        except TimeoutError as e:
            raise self._busy(f"waited connection_timeout={timeout:g}s for another transaction of this storage") from e
        try:
            conn = await self._begin_connection()
        except BaseException:
            self._tx_gate.release()
            raise
        state = _Tx(self, conn, asyncio.current_task())
        self._tx_state = state
        _current.set(state)
        return state

    async def _tx_touch(self, state: _Tx, entity: tuple[str, ...]) -> None:
        key = self._lock_key(*entity)
        if key in state.keys:  # two entities may share a key
            return

        async def lock(conn: Any) -> None:
            await conn.execute(_LOCK, key)

        await self._tx_run(state, f"locking {entity[0]} {entity[-1]!r} on", lock)
        state.keys.add(key)

    async def _tx_commit(self, state: _Tx, ops: list[Op]) -> None:
        from .postgres import Body, _collecting

        try:
            bodies: list[tuple[str, Body[Any]]] = []
            token = _collecting.set((self, bodies))  # type: ignore[arg-type]
            try:
                for op in ops:  # each hook encodes its values and hands its statements to _write
                    await op.apply(self)
            finally:
                _collecting.reset(token)
            await self._commit(state, bodies)
        finally:
            await self._tx_end(state)

    async def _tx_abort(self, state: _Tx) -> None:
        await self._tx_end(state)

    # --------------------------------------------------------------- running

    def _own_transaction(self) -> _Tx | None:
        """The open transaction of this storage whose block the caller runs in, if any
        (``PostgresStorage._read`` runs its reads on the transaction's connection)."""
        state = _current.get()
        return state if state is not None and state.open and state.storage is self else None

    async def _tx_run(self, state: _Tx, action: str, body: Callable[[Any], Awaitable[T]]) -> T:
        """Run ``body`` on the transaction's connection. Never retried: a lost connection has
        lost the transaction's locks, so the transaction cannot go on."""
        async with state.use:
            if state.broken or not state.open or _lost(state.conn):
                state.broken = True
                raise BackendUnavailableError(f"{action} {self._where()}: {_LOST}")
            try:
                return await body(state.conn)
            except Exception as e:
                error = self._engine_error(e, action, sent=False, write=False)
                if isinstance(error, BackendUnavailableError):
                    state.broken = True
                    raise BackendUnavailableError(f"{error}; {_LOST}") from e
                raise error from e

    def _shared_locks(self, entities: tuple[tuple[str, ...], ...]) -> list[int]:
        """The advisory keys a plain write takes shared, in the order it takes them.

        A write of one entity takes that entity's key: it waits for a transaction holding
        it, and holds nothing a transaction could wait for meanwhile. A write of several
        entities (``set_many``, and ``kv.clear``, which locks each key it removes) could
        hold one key a transaction wants while it waits for another the transaction holds:
        it takes the schema's transaction key first, so it never runs beside a transaction
        at all (it waits for the one running; the next waits for it). No cycle, no deadlock.
        A write that names no entity (the message store, cleanups) takes nothing: no
        transaction touches what it writes.
        """
        keys = sorted({self._lock_key(*entity) for entity in entities})
        return keys if len(keys) <= 1 else [self._lock_key("transaction"), *keys]

    def _check_not_own_transaction(self, action: str, entities: tuple[tuple[str, ...], ...]) -> None:
        """A plain write, by the task that holds this storage's open transaction, that would
        wait for that transaction (an entity it locked, or any write of several entities)
        would wait for itself: refused at once."""
        state = self._tx_state
        if state is None or not state.open or state.owner is not asyncio.current_task():
            return
        held = [entity for entity in entities if self._lock_key(*entity) in state.keys]
        if held or len(entities) > 1:
            names = ", ".join(f"{entity[0]} {entity[-1]!r}" for entity in held or entities)
            raise TransactionError(
                f"{action} {names} on {self._where()} directly inside the block of its own open transaction "
                "would wait for that transaction: write through the transaction (tx) instead, or after the block"
            )

    # -------------------------------------------------------------- internals

    async def _begin_connection(self) -> Any:
        """A pooled connection holding the schema's transaction lock; connecting is retried
        ``max_retries`` times like any connection (nothing is held between attempts)."""
        pool = self._pool
        if pool is None:
            raise TransactionError(f"the pool of {self._server} is closed: initialize the storage again")
        timeout = self.settings.connection_timeout
        attempts = self.settings.max_retries + 1
        for attempt in range(attempts):
            conn = None
            try:
                conn = await pool.acquire(timeout=timeout)
                await conn.execute(_LOCK, self._lock_key("transaction"))
                return conn
            except BaseException as e:
                if conn is not None:  # it may hold the lock (granted as a cancel arrived)
                    await self._let_go(conn, committed=False)
                if not isinstance(e, Exception):
                    raise
                error = self._engine_error(e, "starting a transaction on", sent=False, write=False)
                if isinstance(error, LockTimeoutError):
                    raise self._busy(
                        f"waited connection_timeout={timeout:g}s for another transaction on this schema to end"
                    ) from e
                if not isinstance(error, BackendUnavailableError) or attempt + 1 == attempts:
                    raise error from e
            await asyncio.sleep(min(2.0, 0.05 * 2**attempt))
        raise AssertionError("unreachable")

    async def _commit(self, state: _Tx, bodies: list[tuple[str, Any]]) -> None:
        """Every body between BEGIN and COMMIT on the transaction's connection."""
        if not bodies:
            return
        async with state.use:
            if state.broken:
                raise TransactionError(
                    f"the transaction on {self._where()} lost its connection before its commit; nothing of it was "
                    "applied: run it again"
                )
            conn, action, committing = state.conn, "starting the commit of a transaction on", False
            try:
                await conn.execute("BEGIN")
                for step, body in bodies:
                    action = step  # named in the error, if this body fails
                    await body(conn)
                action, committing = "committing a transaction on", True
                await conn.execute(_COMMIT)
                state.committed = True
            except Exception as e:
                error = self._engine_error(e, action, sent=False, write=False)
                if committing and isinstance(error, BackendUnavailableError):
                    raise TransactionError(
                        f"the connection to {self._where()} was lost during COMMIT: the transaction was applied "
                        f"whole or not at all, but which is unknown: read the data back before retrying ({e})"
                    ) from e
                raise error from e

    async def _tx_end(self, state: _Tx) -> None:
        """Give the connection back with no lock held (or drop it), and open the gate."""
        state.open = False
        try:
            await self._let_go(state.conn, committed=state.committed)
        finally:
            self._tx_state = None
            self._tx_gate.release()

    async def _let_go(self, conn: Any, *, committed: bool) -> None:
        """Roll back what the connection started and let its locks go, then give it back to
        the pool; terminate it when that fails. After a cancelled statement asyncpg has sent
        the server a cancel request: the next statement waits for it, so the server is not
        left running the interrupted one (terminating at once would drop that request, and
        a server busy with a statement does not notice a closed connection until it ends)."""
        try:
            if not committed and not _lost(conn):
                release = _ROLLBACK_AND_UNLOCK if conn.is_in_transaction() else _UNLOCK_ALL
                await asyncio.wait_for(conn.execute(release), self.settings.connection_timeout)
        except BaseException as e:
            logger.warning("ending a transaction on %s: %r; dropping its connection", self._where(), e)
            _terminate(conn)  # the server rolls back and lets every lock go
            if not isinstance(e, Exception):
                raise
        finally:
            try:
                await self._pool.release(conn)
            except Exception as e:
                logger.warning("giving a transaction's connection back to the pool of %s: %s", self._where(), e)
                _terminate(conn)

    def _busy(self, what: str) -> LockTimeoutError:
        return LockTimeoutError(
            f"a transaction on {self._where()} {what}; raise connection_timeout or keep transactions short",
            lock_path=self._schema,
        )


def _lost(conn: Any) -> bool:
    """Whether the connection is closed (the pool takes a closed one back at once)."""
    try:
        return bool(conn.is_closed())
    except Exception:  # asyncpg: "connection has been released back to the pool"
        return True


def _terminate(conn: Any) -> None:
    """Close the connection at once (the server then rolls back and drops its locks)."""
    try:
        conn.terminate()
    except Exception as e:  # lost already: the pool took it back when it closed
        logger.debug("terminating a transaction's connection: %s", e)
