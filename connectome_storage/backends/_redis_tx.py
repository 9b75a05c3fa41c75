"""Transactions on Redis (docs/redis.md, "Transactions"): the ``_tx_*`` hooks of RedisStorage.

A transaction takes one connection of the pool for itself (``_tx_begin``). Before the
transaction first reads or writes an entity, ``_tx_touch`` WATCHes that entity's keys on
that connection, and the WATCH is answered before the overlay reads them (the overlay's
reads go through the pool: a read changes nothing, and the WATCH already covers every
change made after it, whoever reads). At commit every op becomes the script call(s) its
hook would send (``Command``: the hooks build the same ones), and they go to the server as
one ``MULTI ... EXEC`` on the watched connection:

- a watched key changed since its WATCH: EXEC answers nil, nothing is applied, and the
  commit raises TransactionError ("changed by another writer; retry the transaction");
- a command refused while queued (an ACL, out of memory, a malformed command): Redis
  discards the whole block (EXECABORT), nothing is applied;
- EXEC runs every command at once, with no other client in between, and the AOF records
  the block as one unit (appendfsync always: durable before the reply);
- a script that fails while EXEC runs (a key of the wrong type the transaction did not
  read, such as a hand-damaged index set) fails alone: Redis does not roll back, so the
  other commands stay applied. Everything that can be checked is checked before EXEC
  (value sizes against proto-max-bulk-len, serialization, the types of every entity key,
  which the overlay reads before it writes; scripts are sent as EVAL, so a flushed script
  cache cannot make one fail), and the commit says plainly when this happened.

No transaction waits for another, so none can deadlock: two transactions that touch the
same entity both run, and the second to commit fails and is retried by its caller.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import StorageError, TransactionError
from ..interface import Kind, StorageInterface

if TYPE_CHECKING:
    from ..transaction import Op

__all__ = ["Command", "RedisTransactions"]

T = TypeVar("T")

logger = logging.getLogger("connectome_storage")


@dataclass(frozen=True, slots=True)
class Command:
    """One script call a write hook makes: run at once by the hook, or queued in the MULTI
    of a transaction's commit. ``key`` is the entity named in errors; ``size`` the longest
    value sent (checked against the server's limit when the command was built)."""

    script: str
    key: str
    keys: Sequence[str]
    args: Sequence[Any]
    size: int = 0


@dataclass
class _Transaction:
    """What ``_tx_begin`` returns: a transactional pipeline that holds one connection of the
    pool from begin to commit or abort, and the keys WATCHed on it."""

    pipe: Any
    watched: set[str] = field(default_factory=set)


class RedisTransactions(StorageInterface):
    """The transaction hooks of RedisStorage (one of its bases)."""

    if TYPE_CHECKING:  # what RedisStorage provides (redis.py); declared here for the type checker
        _redis: Any
        _scripts: dict[str, Any]

        @property
        def client(self) -> Any: ...
        async def _call(
            self, what: str, key: str | None, function: Callable[..., Awaitable[T]], *args: Any, read: bool = False
        ) -> T: ...
        def _translate(self, error: BaseException, what: str, key: str | None) -> StorageError: ...
        def key_of(self, kind: Kind, key: str) -> str: ...
        def _conversation_keys(self, conversation_id: str) -> list[str]: ...
        def kv_key_of(self, namespace: str, key: str) -> str: ...
        def _kv_indexes(self, namespace: str) -> list[str]: ...

    def _entity_keys(self, entity: tuple[str, ...]) -> list[str]:
        """The Redis keys holding one entity of a transaction (transaction.Entity)."""
        kind, *rest = entity
        if kind == "conversation":
            return self._conversation_keys(rest[0])
        if kind == "agent":
            return [self.key_of(Kind.REASONING_CHAINS, rest[0])]
        if kind in ("cache", "system"):
            return [self.key_of(Kind(kind), rest[0])]
        if kind == "kv" and len(rest) == 2:
            return [self.kv_key_of(rest[0], rest[1])]
        if kind == "kv":  # a whole namespace: its key index changes with every entry added or removed
            return self._kv_indexes(rest[0])[:1]
        raise AssertionError(f"a transaction touched an entity Redis does not know: {entity!r}")

    async def _tx_begin(self) -> Any:
        pipe = self.client.pipeline(transaction=True)
        try:
            # The connection WATCH arms on, and EXEC runs on: the transaction's own until it ends.
            pipe.connection = await self._call("starting a transaction", None, pipe.connection_pool.get_connection)
        except BaseException:
            await pipe.reset()
            raise
        return _Transaction(pipe)

    async def _tx_touch(self, state: Any, entity: tuple[str, ...]) -> None:
        tx: _Transaction = state
        keys = [key for key in self._entity_keys(entity) if key not in tx.watched]
        if not keys:
            return
        await self._call(f"watching {keys[0]}", keys[0], tx.pipe.watch, *keys)
        tx.watched.update(keys)

    async def _tx_commit(self, state: Any, ops: list[Op]) -> None:
        tx: _Transaction = state
        try:
            if not ops:
                return
            # Built (sizes checked, values serialized) before anything is sent: a refusal here
            # leaves nothing applied.
            commands = [command for op in ops for command in self._op_commands(op)]
            await self._exec(tx, commands)
        finally:
            await self._release(tx)

    async def _tx_abort(self, state: Any) -> None:
        await self._release(state)

    def _op_commands(self, op: Op) -> list[Command]:
        """The commands of one op: what its hook ``_<name>`` would send (``_<name>_commands``)."""
        builder: Callable[..., list[Command]] = getattr(self, f"_{op.name}_commands")
        return builder(*op.args, **op.options)

    async def _exec(self, tx: _Transaction, commands: list[Command]) -> None:
        pipe, exceptions = tx.pipe, self._redis.exceptions
        pipe.multi()
        for command in commands:
            # EVAL, not EVALSHA: a script missing from the server's cache (restarted, SCRIPT
            # FLUSH) would fail alone inside EXEC, after the others ran.
            source = self._scripts[command.script].script
            pipe.execute_command("EVAL", source, len(command.keys), *command.keys, *command.args)
        what = f"committing a transaction of {len(commands)} writes"
        try:
            results = await pipe.execute(raise_on_error=False)
        except exceptions.WatchError as e:
            if "changed" not in str(e):  # redis-py: the connection broke while keys were watched
                raise _unknown_outcome(what, e) from e
            raise TransactionError(
                f"a key the transaction read or wrote ({_some(tx.watched)}) was changed by another writer "
                "before it committed; nothing of it was applied; retry the transaction"
            ) from e
        except (exceptions.ConnectionError, exceptions.TimeoutError, OSError) as e:
            raise _unknown_outcome(what, e) from e
        except exceptions.RedisError as e:
            # EXECABORT: a command was refused while queued (an ACL, out of memory); Redis
            # discarded the block. The refusal is the first error met.
            command = commands[_failed_index(e, len(commands))]
            raise self._translate(e, f"running {command.script} on {command.key}", command.key) from e
        failed = [(i, r) for i, r in enumerate(results) if isinstance(r, Exception)]
        if failed:
            index, error = failed[0]
            command = commands[index]
            cause = self._translate(error, f"running {command.script} on {command.key}", command.key)
            raise TransactionError(
                f"the transaction's commit ran, but {len(failed)} of its {len(commands)} writes failed inside "
                f"EXEC, the first {command.script} on {command.key} ({type(cause).__name__}: {cause}). Redis does "
                "not roll back: every other write of the transaction was applied. Repair the key named "
                "(verify() lists damaged data) and write the failed part again"
            ) from error

    async def _release(self, tx: _Transaction) -> None:
        """UNWATCH and give the connection back (a broken one is closed, never reused)."""
        try:
            await tx.pipe.reset()
        except Exception as e:  # never hide the error that ended the transaction
            logger.warning("Redis transaction: releasing its connection failed (%s: %s)", type(e).__name__, e)


def _failed_index(error: BaseException, count: int) -> int:
    """Which queued command an EXECABORT named (redis-py: "Command # n (...)"), 0 if unknown."""
    text = str(error)
    marker = "Command # "
    if marker in text:
        number = text.split(marker, 1)[1].split(" ", 1)[0]
        if number.isdigit() and 1 <= int(number) <= count:
            return int(number) - 1
    return 0


def _some(keys: set[str]) -> str:
    names = sorted(keys)
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _unknown_outcome(what: str, error: BaseException) -> TransactionError:
    return TransactionError(
        f"the connection to Redis broke while {what} ({type(error).__name__}: {error}); Redis applies a "
        "transaction whole or not at all, but whether it did is unknown: read the data back before retrying"
    )
