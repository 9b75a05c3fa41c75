"""Transactions (docs/transactions.md): ``async with storage.transaction() as tx:``.

``tx`` is a ``TransactionView``: a storage whose hooks read through an overlay of the
transaction's own writes onto the real storage (so every public method, key-value
collections and the conversation store work unchanged, reading their own writes), and
whose writes go into the overlay and an ordered list of ``Op``s. Nothing reaches the
storage before the block ends: then the backend applies every op at once
(``StorageInterface._tx_commit``: one SQLite transaction, one Redis MULTI/EXEC, one
intent journal on the file tree, one synchronous step in memory), or drops them when the
block raised.

The overlay keeps the storage's own rules, so that what the transaction reads is what the
commit will store: a write to an expired conversation starts it afresh, a change to the
raw history sets the metadata's message count, a replaced memory keeps its place.

Every entity the transaction reads or writes is first ``_tx_touch``-ed: the backend may
lock it (the file tree does) or watch it (Redis), so that writers of it wait for the
transaction, or its commit fails rather than losing their update.
"""

from __future__ import annotations

import contextvars
import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from .conversations import MetaRecord
from .errors import NotSupportedError, StorageError, TransactionError
from .interface import CONVERSATION_PARTS, CacheEntry, Kind, StorageInterface
from .kv import KVRecord, KVSelect

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["Entity", "Op", "Transaction", "TransactionView"]

# What a transaction touches: ("conversation", id), ("agent", id), ("cache", key),
# ("system", key) or ("kv", namespace, key). Conversation parts share one entity, as they
# share one lock on the file tree.
Entity = tuple[str, ...]

OpName = Literal[
    "write_document", "delete", "append_log", "replace_log", "put_member", "delete_member",
    "delete_conversation", "write_cache", "meta_put", "kv_put", "kv_delete", "kv_set_expiry", "kv_clear",
]  # fmt: skip


@dataclass(frozen=True)
class Op:
    """One write of a transaction: the storage hook ``_<name>`` and its arguments, applied
    in order at commit (``kv_put`` records are final: created times already resolved)."""

    name: OpName
    args: tuple[Any, ...]
    entity: Entity
    options: dict[str, Any] = dataclasses.field(default_factory=dict)  # keyword arguments

    async def apply(self, storage: StorageInterface) -> None:
        """Run the op through ``storage``'s own hook (the default, non-atomic commit)."""
        await getattr(storage, f"_{self.name}")(*self.args, **self.options)


_GONE = object()  # a tombstone: removed in this transaction
_UNSET = object()  # not in the overlay: read the storage
_active: contextvars.ContextVar[frozenset[int]] = contextvars.ContextVar("connectome_transactions", default=frozenset())


def _conversation(key: str) -> Entity:
    return ("conversation", key)


def _entity(kind: Kind, key: str) -> Entity:
    if kind in CONVERSATION_PARTS or kind is Kind.METADATA:
        return _conversation(key)
    if kind is Kind.REASONING_CHAINS:
        return ("agent", key)
    return (kind.value, key)


@dataclass
class _Conversation:
    """One conversation as the transaction sees it (every part read once, at first touch)."""

    document: Any
    chunks: Any
    raw: list[Any]
    members: dict[str, dict[str, Any]]
    meta: MetaRecord | None
    expired: bool  # the stored conversation had expired: the first write removes it whole

    def exists(self) -> bool:
        return bool(self.document is not None or self.chunks is not None or self.raw or self.members or self.meta)


class TransactionView(StorageInterface):
    """The storage as one transaction sees it. Use it like the storage; it is valid inside
    the ``async with`` block only."""

    def __init__(self, base: StorageInterface, state: Any) -> None:
        # Not StorageInterface.__init__: the settings are the storage's, already checked.
        self._base = base
        self._state = state  # the backend's: what _tx_begin returned (a connection, locks)
        self.settings = base.settings
        self.backend_name = base.backend_name  # type: ignore[misc]
        self._initialized = True
        self._closed = False
        self.ops: list[Op] = []
        self._touched: set[Entity] = set()
        self._conversations: dict[str, _Conversation] = {}
        self._documents: dict[tuple[Kind, str], Any] = {}  # SYSTEM values, or _GONE
        self._logs: dict[tuple[Kind, str], list[Any]] = {}  # reasoning chains
        self._cache: dict[str, Any] = {}  # CacheEntry or _GONE
        self._kv: dict[tuple[str, str], Any] = {}  # KVRecord or _GONE
        self._cleared: set[str] = set()  # namespaces cleared in this transaction
        if base._chain is not None:
            from .middleware._chain import install_in_transaction

            install_in_transaction(self, base._chain)

    # ------------------------------------------------------------ plumbing

    def _require_initialized(self) -> None:
        if self._closed:
            raise TransactionError("this transaction has ended: use the storage, or open a new transaction")

    async def _touch(self, entity: Entity) -> None:
        if entity not in self._touched:
            await self._base._tx_touch(self._state, entity)
            self._touched.add(entity)

    def _record(self, name: OpName, entity: Entity, *args: Any, **options: Any) -> None:
        self.ops.append(Op(name, args, entity, options))

    def transaction(self) -> Transaction:
        raise TransactionError("transactions do not nest: use the transaction you are in")

    async def _open(self) -> None:
        pass

    async def _close(self) -> None:
        pass

    def _capabilities(self) -> frozenset[str]:
        return self._base.capabilities

    def _not_here(self, what: str) -> NotSupportedError:
        return NotSupportedError(f"{what} is not available inside a transaction; call it on the storage")

    async def health_check(self) -> dict[str, Any]:
        raise self._not_here("health_check()")

    async def get_storage_stats(self) -> dict[str, Any]:
        raise self._not_here("get_storage_stats()")

    async def verify(self) -> Any:
        raise self._not_here("verify()")

    async def cleanup(self) -> dict[str, int]:
        raise self._not_here("cleanup()")

    async def cleanup_expired_cache(self) -> int:
        raise self._not_here("cleanup_expired_cache()")

    def message_store(self) -> Any:
        raise self._not_here("the message store")

    async def _probe(self) -> dict[str, Any]:
        raise self._not_here("health_check()")

    async def _total_bytes(self) -> int:
        raise self._not_here("get_storage_stats()")

    async def _delete_expired_cache(self, now_ms: int) -> int:
        raise self._not_here("cleanup_expired_cache()")

    async def _expired_conversations(self, now_ms: int) -> list[str]:
        raise self._not_here("cleanup()")

    # -------------------------------------------------------- conversations

    async def _conv(self, conversation_id: str) -> _Conversation:
        state = self._conversations.get(conversation_id)
        if state is None:
            await self._touch(_conversation(conversation_id))
            now_ms = self._now_ms()
            stored, document, chunks, raw, members = await self._base._conversation_parts(conversation_id, now_ms)
            state = _Conversation(
                document=document,
                chunks=chunks,
                raw=raw,
                members={m["memory_id"]: m for m in members},
                meta=stored,
                expired=stored is not None and stored.expired(now_ms),
            )
            if state.expired:  # the storage reads it as missing; so does the transaction
                state.document, state.chunks, state.raw, state.members, state.meta = None, None, [], {}, None
            self._conversations[conversation_id] = state
        return state

    def _starting_write(self, conversation_id: str, state: _Conversation) -> None:
        """The first write to an expired conversation removes it whole, as the storage would."""
        if state.expired:
            state.expired = False
            self._record("delete_conversation", _conversation(conversation_id), conversation_id)

    def _count_messages(self, conversation_id: str, state: _Conversation) -> None:
        if state.meta is not None:
            state.meta = dataclasses.replace(state.meta, message_count=len(state.raw))

    async def _read_document(self, kind: Kind, key: str) -> Any:
        if kind is Kind.CONVERSATION:
            return _copy((await self._conv(key)).document)
        if kind is Kind.CHUNKS:
            return _copy((await self._conv(key)).chunks)
        await self._touch(_entity(kind, key))
        value = self._documents.get((kind, key), _UNSET)
        if value is _UNSET:
            return await self._base._read_document(kind, key)
        return None if value is _GONE else _copy(value)

    async def _write_document(self, kind: Kind, key: str, value: Any) -> None:
        if kind in (Kind.CONVERSATION, Kind.CHUNKS):
            state = await self._conv(key)
            self._starting_write(key, state)
            if kind is Kind.CONVERSATION:
                state.document = _copy(value)
            else:
                state.chunks = _copy(value)
        else:
            await self._touch(_entity(kind, key))
            self._documents[(kind, key)] = _copy(value)
        self._record("write_document", _entity(kind, key), kind, key, _copy(value))

    async def _delete(self, kind: Kind, key: str) -> bool:
        entity = _entity(kind, key)
        if kind is Kind.CACHE:
            found = await self._read_cache(key) is not None
            self._cache[key] = _GONE
        elif kind is Kind.REASONING_CHAINS:
            found = bool(await self._read_log(kind, key))
            self._logs[(kind, key)] = []
        elif kind in CONVERSATION_PARTS:
            state = await self._conv(key)
            self._starting_write(key, state)
            if kind is Kind.CONVERSATION:
                found, state.document = state.document is not None, None
            elif kind is Kind.CHUNKS:
                found, state.chunks = state.chunks is not None, None
            else:  # RAW_MESSAGES
                found, state.raw = bool(state.raw), []
                self._count_messages(key, state)
        else:
            found = await self._read_document(kind, key) is not None
            self._documents[(kind, key)] = _GONE
        self._record("delete", entity, kind, key)
        return found

    async def _read_log(self, kind: Kind, key: str) -> list[Any]:
        if kind is Kind.RAW_MESSAGES:
            return _copy((await self._conv(key)).raw)  # type: ignore[no-any-return]
        await self._touch(_entity(kind, key))
        if (kind, key) not in self._logs:
            self._logs[(kind, key)] = await self._base._read_log(kind, key)
        return _copy(self._logs[(kind, key)])  # type: ignore[no-any-return]

    async def _log(self, kind: Kind, key: str) -> list[Any]:
        """The log itself (not a copy), for the writes below."""
        if kind is Kind.RAW_MESSAGES:
            state = await self._conv(key)
            self._starting_write(key, state)
            return state.raw
        await self._read_log(kind, key)
        return self._logs[(kind, key)]

    async def _append_log(self, kind: Kind, key: str, items: list[Any]) -> int:
        log = await self._log(kind, key)
        log.extend(_copy(items))
        if kind is Kind.RAW_MESSAGES:
            self._count_messages(key, self._conversations[key])
        self._record("append_log", _entity(kind, key), kind, key, _copy(items))
        return len(log)

    async def _replace_log(self, kind: Kind, key: str, items: list[Any]) -> None:
        log = await self._log(kind, key)
        log[:] = _copy(items)
        if kind is Kind.RAW_MESSAGES:
            self._count_messages(key, self._conversations[key])
        self._record("replace_log", _entity(kind, key), kind, key, _copy(items))

    async def _pop_log(self, kind: Kind, key: str) -> Any:
        log = await self._log(kind, key)
        if not log:
            return None
        item = log.pop()
        if kind is Kind.RAW_MESSAGES:
            self._count_messages(key, self._conversations[key])
        if log:
            self._record("replace_log", _entity(kind, key), kind, key, _copy(log))
        else:
            self._record("delete", _entity(kind, key), kind, key)
        return item

    async def _put_member(self, conversation_id: str, memory_id: str, memory: dict[str, Any]) -> None:
        state = await self._conv(conversation_id)
        self._starting_write(conversation_id, state)
        state.members[memory_id] = _copy(memory)  # a replaced memory keeps its place (dict order)
        self._record("put_member", _conversation(conversation_id), conversation_id, memory_id, _copy(memory))

    async def _read_members(self, conversation_id: str) -> list[dict[str, Any]]:
        return _copy(list((await self._conv(conversation_id)).members.values()))  # type: ignore[no-any-return]

    async def _delete_member(self, conversation_id: str, memory_id: str) -> bool:
        state = await self._conv(conversation_id)
        self._starting_write(conversation_id, state)
        found = state.members.pop(memory_id, None) is not None
        self._record("delete_member", _conversation(conversation_id), conversation_id, memory_id)
        return found

    async def _delete_conversation(self, conversation_id: str) -> bool:
        state = await self._conv(conversation_id)
        live = state.exists()
        state.document, state.chunks, state.raw, state.members, state.meta = None, None, [], {}, None
        state.expired = False
        self._record("delete_conversation", _conversation(conversation_id), conversation_id)
        return live

    async def _list_conversations(self) -> list[str]:
        listed = set(await self._base._list_conversations())
        for conversation_id, state in self._conversations.items():
            if state.exists():
                listed.add(conversation_id)
            else:
                listed.discard(conversation_id)
        return sorted(listed)

    async def _conversation_exists(self, conversation_id: str, now_ms: int) -> bool:
        return (await self._conv(conversation_id)).exists()

    # ------------------------------------------------------ conversation store

    async def _meta_read(
        self, conversation_id: str, now_ms: int, *, include_expired: bool = False
    ) -> MetaRecord | None:
        return _copy_record((await self._conv(conversation_id)).meta)

    async def _meta_put(self, conversation_id: str, record: MetaRecord | None) -> None:
        state = await self._conv(conversation_id)
        if record is not None:
            self._starting_write(conversation_id, state)
        state.meta = _copy_record(record)
        self._record("meta_put", _conversation(conversation_id), conversation_id, _copy_record(record))

    async def _conversation_load(
        self, conversation_id: str, now_ms: int, *, include_expired: bool
    ) -> tuple[MetaRecord, list[dict[str, Any]]] | None:
        state = await self._conv(conversation_id)
        if not state.exists():
            return None
        record = state.meta or MetaRecord(conversation_id, None, None, None, None, None, None)
        return _copy_record(record), _copy(state.raw)  # type: ignore[return-value]

    # -------------------------------------------------------- agents, states

    async def _list_agents(self) -> list[str]:
        listed = set(await self._base._list_agents())
        for (_kind, key), log in self._logs.items():
            (listed.add if log else listed.discard)(key)
        return sorted(listed)

    async def _list_system_states(self) -> list[str]:
        listed = set(await self._base._list_system_states())
        for (kind, key), value in self._documents.items():
            if kind is Kind.SYSTEM:
                (listed.discard if value is _GONE else listed.add)(key)
        return sorted(listed)

    # ------------------------------------------------------------------ cache

    async def _write_cache(self, entry: CacheEntry) -> None:
        await self._touch(("cache", entry.key))
        entry = dataclasses.replace(entry, data=_copy(entry.data))
        self._cache[entry.key] = entry
        self._record("write_cache", ("cache", entry.key), entry)

    async def _read_cache(self, cache_key: str) -> CacheEntry | None:
        await self._touch(("cache", cache_key))
        entry = self._cache.get(cache_key)
        if entry is None:
            return await self._base._read_cache(cache_key)
        return None if entry is _GONE else dataclasses.replace(entry, data=_copy(entry.data))

    async def _list_all_cache_keys(self) -> list[str]:
        listed = set(await self._base._list_all_cache_keys())
        for key, entry in self._cache.items():
            (listed.discard if entry is _GONE else listed.add)(key)
        return sorted(listed)

    async def _list_cache_keys(self, now_ms: int) -> list[str]:
        keys = []
        for key in await self._list_all_cache_keys():
            entry = self._cache.get(key)
            if entry is None:
                if key in await self._base._list_cache_keys(now_ms):
                    keys.append(key)
            elif not entry.expired(now_ms):
                keys.append(key)
        return keys

    # ---------------------------------------------------- key-value collections

    async def _kv_records(self, namespace: str, keys: Iterable[str]) -> dict[str, KVRecord]:
        """Records of ``keys`` as the transaction sees them, expired ones included."""
        keys = list(keys)
        for key in keys:
            await self._touch(("kv", namespace, key))
        missing = [k for k in keys if (namespace, k) not in self._kv and namespace not in self._cleared]
        found = await self._base._kv_get(namespace, missing) if missing else {}
        records = {}
        for key in keys:
            record = self._kv.get((namespace, key), found.get(key))
            if record is not None and record is not _GONE:
                records[key] = _copy_kv(record)
        return records

    async def _kv_get(self, namespace: str, keys: list[str]) -> dict[str, KVRecord]:
        return await self._kv_records(namespace, keys)

    async def _kv_put(self, namespace: str, records: list[KVRecord], now_ms: int, *, if_not_exists: bool) -> bool:
        held = await self._kv_records(namespace, [r.key for r in records])
        if if_not_exists and any(not held[r.key].expired(now_ms) for r in records if r.key in held):
            return False
        final = []
        for record in records:
            previous = held.get(record.key)
            if previous is not None and not previous.expired(now_ms):
                record = dataclasses.replace(record, created_ms=previous.created_ms)
            final.append(_copy_kv(record))
            self._kv[(namespace, record.key)] = _copy_kv(record)
        self._record("kv_put", ("kv", namespace), namespace, final, now_ms, if_not_exists=False)
        return True

    async def _kv_delete(self, namespace: str, keys: list[str], now_ms: int) -> int:
        held = await self._kv_records(namespace, keys)
        for key in keys:
            self._kv[(namespace, key)] = _GONE
        self._record("kv_delete", ("kv", namespace), namespace, list(keys), now_ms)
        return sum(1 for record in held.values() if not record.expired(now_ms))

    async def _kv_set_expiry(self, namespace: str, key: str, expires_ms: int | None, now_ms: int) -> bool:
        record = (await self._kv_records(namespace, [key])).get(key)
        if record is None or record.expired(now_ms):
            return False
        self._kv[(namespace, key)] = dataclasses.replace(record, expires_ms=expires_ms)
        self._record("kv_set_expiry", ("kv", namespace), namespace, key, expires_ms, now_ms)
        return True

    async def _kv_all(self, namespace: str, now_ms: int) -> list[KVRecord]:
        """Every live record of the namespace as the transaction sees it (queries read it whole)."""
        base: list[KVRecord] = []
        if namespace not in self._cleared:
            base = await self._base._kv_select(namespace, KVSelect(), now_ms)
        merged = {record.key: record for record in base}
        for (ns, key), record in self._kv.items():
            if ns == namespace:
                if record is _GONE:
                    merged.pop(key, None)
                else:
                    merged[key] = record
        return [_copy_kv(r) for r in merged.values() if not r.expired(now_ms)]

    async def _kv_select(self, namespace: str, select: KVSelect, now_ms: int) -> list[KVRecord]:
        return select.apply(await self._kv_all(namespace, now_ms), now_ms)

    async def _kv_namespaces(self, now_ms: int) -> list[str]:
        names = set(await self._base._kv_namespaces(now_ms)) | {ns for ns, _ in self._kv} | self._cleared
        return sorted([ns for ns in names if await self._kv_all(ns, now_ms)])

    async def _kv_clear(self, namespace: str, now_ms: int) -> int:
        live = await self._kv_all(namespace, now_ms)
        for key in [k for ns, k in self._kv if ns == namespace]:
            del self._kv[(namespace, key)]
        self._cleared.add(namespace)
        self._record("kv_clear", ("kv", namespace), namespace, now_ms)
        return len(live)

    async def _kv_remove_expired(self, namespace: str | None, now_ms: int) -> int:
        raise self._not_here("removing expired entries")


class Transaction:
    """``storage.transaction()``: ``async with`` it to get a ``TransactionView``; leaving the
    block commits, an exception rolls back and propagates."""

    def __init__(self, storage: StorageInterface) -> None:
        self._storage = storage
        self._view: TransactionView | None = None
        self._token: contextvars.Token[frozenset[int]] | None = None

    async def __aenter__(self) -> TransactionView:
        storage = self._storage
        storage._require_initialized()
        if id(storage) in _active.get() or self._view is not None:
            raise TransactionError(
                "a transaction is already open on this storage in this task: transactions do not nest"
            )
        state = await storage._tx_begin()
        self._token = _active.set(_active.get() | {id(storage)})
        self._view = TransactionView(storage, state)
        return self._view

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        view, storage = self._view, self._storage
        assert view is not None and self._token is not None
        view._closed = True
        _active.reset(self._token)
        if exc is not None:
            await storage._tx_abort(view._state)
            return
        from .middleware._chain import whole_store

        try:
            # One whole-store write for the storage's middleware: a read cache drops what it holds.
            await whole_store(storage, "transaction", True, lambda: storage._tx_commit(view._state, view.ops))
        except TransactionError:
            raise
        except StorageError as e:
            raise TransactionError(
                f"the transaction's commit could not complete ({type(e).__name__}: {e}); nothing of it was applied"
            ) from e


def _copy(value: Any) -> Any:
    """A deep copy of a JSON value (a stored value is never shared with the caller)."""
    import orjson

    return value if value is None else orjson.loads(orjson.dumps(value))


def _copy_record(record: MetaRecord | None) -> MetaRecord | None:
    return None if record is None else dataclasses.replace(record, metadata=_copy(record.metadata))


def _copy_kv(record: KVRecord) -> KVRecord:
    return dataclasses.replace(record, value=_copy(record.value), tags=dict(record.tags))
