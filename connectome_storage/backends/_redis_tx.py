"""Transactions on Redis (docs/redis.md, "Transactions"): the ``_tx_*`` hooks of RedisStorage.

A transaction takes one connection for itself when it first touches an entity (on Redis
Cluster, a connection to the master serving that entity's hash slot). Before the
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

On Redis Cluster, MULTI/EXEC runs on one node and every key in it must be in one hash slot:
a transaction may touch the entities of one slot (one conversation, one namespace, or any
entities whose bucket tags share it; _redis_layout.py). Touching an entity of a second slot
raises TransactionError at that touch, before anything was sent for it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import StorageError, StorageIOError, TransactionError
from ..interface import Kind, StorageInterface
from ._redis_cluster import Held, wait_command

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
    """What ``_tx_begin`` returns: the connection the transaction holds from its first touch
    to its commit or abort, the keys WATCHed on it, and (on a cluster) their hash slot."""

    held: Held | None = None
    watched: set[str] = field(default_factory=set)
    slot: int | None = None
    first: str = ""  # the first key watched: names the slot in messages


class RedisTransactions(StorageInterface):
    """The transaction hooks of RedisStorage (one of its bases)."""

    if TYPE_CHECKING:  # what RedisStorage provides (redis.py); declared here for the type checker
        _redis: Any
        _scripts: dict[str, Any]
        _cluster: bool
        _server: str

        @property
        def client(self) -> Any: ...
        async def _call(
            self, what: str, key: str | None, function: Callable[..., Awaitable[T]], *args: Any, read: bool = False
        ) -> T: ...
        def _translate(self, error: BaseException, what: str, key: str | None) -> StorageError: ...
        async def _relearn_cluster(self) -> None: ...
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
        # The connection is taken at the first touch: on a cluster, the entity decides the node.
        return _Transaction()

    async def _tx_touch(self, state: Any, entity: tuple[str, ...]) -> None:
        tx: _Transaction = state
        keys = [key for key in self._entity_keys(entity) if key not in tx.watched]
        if not keys:
            return
        if self._cluster:
            self._check_slot(tx, keys[0])
        if tx.held is None:
            tx.held = await self._call("starting a transaction", keys[0], Held.take, self.client, keys[0])
        (reply,) = await self._tx_send(tx, f"watching {keys[0]}", keys[0], [("WATCH", *keys)])
        if isinstance(reply, Exception):
            raise self._translate(reply, f"watching {keys[0]}", keys[0]) from reply
        tx.watched.update(keys)

    def _check_slot(self, tx: _Transaction, key: str) -> None:
        """On a cluster, refuse an entity outside the slot of the first one the transaction touched."""
        slot = self.client.keyslot(key)
        if tx.slot is None:
            tx.slot, tx.first = slot, key
        elif slot != tx.slot:
            raise TransactionError(
                f"{key} is in hash slot {slot}, but this transaction already touched {tx.first} in slot "
                f"{tx.slot}: Redis Cluster transactions are limited to one hash slot, and nothing of this "
                "transaction was applied. Keep the data of one transaction in one conversation or one key-value "
                "namespace, or use a single Redis server, SQLite or PostgreSQL for transactions across entities"
            )

    async def _tx_send(self, tx: _Transaction, what: str, key: str, commands: list[tuple[Any, ...]]) -> list[Any]:
        assert tx.held is not None
        try:
            return await self._call(what, key, tx.held.send, commands)
        except StorageError:
            await self._relearn_cluster()
            raise

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
        assert tx.held is not None, "every op touched its entity first"
        # EVAL, not EVALSHA: a script missing from the server's cache (restarted, SCRIPT
        # FLUSH) would fail alone inside EXEC, after the others ran.
        sent: list[tuple[Any, ...]] = [("MULTI",)]
        sent += [("EVAL", self._scripts[c.script].script, len(c.keys), *c.keys, *c.args) for c in commands]
        sent.append(("EXEC",))
        wanted = self.settings.wait_replicas  # type: ignore[attr-defined]
        if wanted:  # WAIT counts the replicas that received this connection's writes: EXEC's
            sent.append(wait_command(wanted, self.settings.connection_timeout))  # type: ignore[attr-defined]
        what = f"committing a transaction of {len(commands)} writes"
        exceptions = self._redis.exceptions
        try:
            replies = await tx.held.send(sent)
        except (exceptions.ConnectionError, exceptions.TimeoutError, OSError) as e:
            await self._relearn_cluster()
            raise _unknown_outcome(what, e) from e
        queued, results = replies[1 : len(commands) + 1], replies[len(commands) + 1]
        if isinstance(results, Exception):
            # EXECABORT: a command was refused while queued (an ACL, out of memory); Redis
            # discarded the block. The refusal is the first error met.
            index = next((i for i, reply in enumerate(queued) if isinstance(reply, Exception)), 0)
            error = queued[index] if isinstance(queued[index], Exception) else results
            command = commands[index]
            raise self._translate(error, f"running {command.script} on {command.key}", command.key) from error
        if results is None:
            raise TransactionError(
                f"a key the transaction read or wrote ({_some(tx.watched)}) was changed by another writer "
                "before it committed; nothing of it was applied; retry the transaction"
            )
        tx.watched.clear()  # EXEC unwatched them
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
        if wanted and int(replies[-1]) < wanted:
            raise StorageIOError(
                f"the transaction was committed on Redis at {self._server}, but only {replies[-1]} of the {wanted} "
                "replicas it waits for (wait_replicas) acknowledged it within connection_timeout; it may be lost "
                "if the master fails now. Check the replicas (INFO replication), or lower wait_replicas"
            )

    async def _release(self, tx: _Transaction) -> None:
        """UNWATCH and give the connection back (a broken one is closed, never reused)."""
        held, tx.held = tx.held, None
        if held is None:
            return
        try:
            if tx.watched and not held.broken:
                await held.send([("UNWATCH",)])
        except Exception as e:  # never hide the error that ended the transaction
            logger.warning("Redis transaction: releasing its connection failed (%s: %s)", type(e).__name__, e)
        finally:
            await held.release()


def _some(keys: set[str]) -> str:
    names = sorted(keys)
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _unknown_outcome(what: str, error: BaseException) -> TransactionError:
    return TransactionError(
        f"the connection to Redis broke while {what} ({type(error).__name__}: {error}); Redis applies a "
        "transaction whole or not at all, but whether it did is unknown: read the data back before retrying"
    )
