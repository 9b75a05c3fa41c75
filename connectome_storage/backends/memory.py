"""MemoryStorage: the whole contract in this process's memory, for tests and short-lived agents.

Every value is kept as its canonical JSON bytes and decoded on each read, so a loaded
value is always a fresh copy (mutating it never changes what is stored) and values obey
exactly the same rules as on the persistent backends (``-0.0``, 64-bit integers, key
order). Every hook runs to completion without awaiting, so on one event loop each
operation is atomic without locks.

``max_conversations`` bounds how many conversations are held: past it, the least recently
used one (stored, loaded or appended, any part) is evicted whole.

A conversation whose metadata has expired reads as missing and is removed whole by the
first write to it or by ``cleanup()``, as the interface's conversation store hooks require.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import functools
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from ..codec import decode, encode
from ..config import CommonSettings
from ..conversations import MetaRecord
from ..errors import ConfigError, LockTimeoutError
from ..interface import CONVERSATION_PARTS, CacheEntry, Kind, StorageInterface
from ..kv import KVRecord, KVSelect
from ..messages import MessageSelect

__all__ = ["MemorySettings", "MemoryStorage"]

H = TypeVar("H", bound=Callable[..., Any])


@dataclasses.dataclass(frozen=True)
class MemorySettings(CommonSettings):
    connection_timeout: float = 30.0
    max_conversations: int | None = None  # None: no bound


class _Gate:
    """Held by the task of an open transaction: other writers wait until it commits."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.owner: asyncio.Task[Any] | None = None

    async def _acquire(self, timeout: float, who: str) -> None:
        try:
            await asyncio.wait_for(self.lock.acquire(), timeout)
        except TimeoutError as e:
            raise LockTimeoutError(
                f"{who} waited {timeout:g} s for a transaction of this memory storage to end; "
                "raise connection_timeout or keep transactions short"
            ) from e

    async def enter(self, timeout: float) -> None:
        await self._acquire(timeout, "a transaction")
        self.owner = asyncio.current_task()

    def leave(self) -> None:
        self.owner = None
        self.lock.release()

    async def wait(self, timeout: float) -> None:
        await self._acquire(timeout, "a write")
        self.lock.release()


def _waits_for_transactions(hook: H) -> H:
    """A write hook that waits while another task's transaction is open."""

    @functools.wraps(hook)
    async def gated(self: MemoryStorage, *args: Any, **kwargs: Any) -> Any:
        gate = self._data.gate
        if gate.owner is not None and gate.owner is not asyncio.current_task():
            await gate.wait(self.settings.connection_timeout)
        return await hook(self, *args, **kwargs)

    return gated  # type: ignore[return-value]


@dataclasses.dataclass
class _Data:
    """Everything one MemoryStorage holds; storages built with ``share_with`` hold the same one."""

    documents: dict[tuple[Kind, str], bytes] = dataclasses.field(default_factory=dict)
    logs: dict[tuple[Kind, str], list[bytes]] = dataclasses.field(default_factory=dict)
    members: dict[str, dict[str, bytes]] = dataclasses.field(default_factory=dict)  # insertion order
    cache: dict[str, tuple[bytes, int, int | None]] = dataclasses.field(default_factory=dict)
    kv: dict[str, dict[str, tuple[bytes, KVRecord]]] = dataclasses.field(default_factory=dict)
    # Conversation metadata: the record without its dict, and the dict's encoded bytes.
    meta: dict[str, tuple[MetaRecord, bytes]] = dataclasses.field(default_factory=dict)
    gate: _Gate = dataclasses.field(default_factory=lambda: _Gate())

    def snapshot(self) -> dict[str, Any]:
        """Every container, copied (a transaction's commit puts them back if it fails)."""
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != "gate"}

    def restore(self, snapshot: dict[str, Any]) -> None:
        for name, value in snapshot.items():
            setattr(self, name, value)

    recency: OrderedDict[str, None] = dataclasses.field(default_factory=OrderedDict)  # oldest first
    messages: dict[str, bytes] = dataclasses.field(default_factory=dict)  # message id -> message
    read_state: dict[str, set[str]] = dataclasses.field(default_factory=dict)  # agent id -> read ids


def _load(raw: bytes) -> Any:
    return decode(raw, "memory")


class MemoryStorage(StorageInterface):
    """Holds everything in memory; nothing survives the process.

    Options: ``max_conversations`` (int > 0 or None), ``connection_timeout``, ``clock``,
    ``default_cache_ttl``.
    """

    backend_name: ClassVar[str] = "memory"
    settings_class: ClassVar[type[MemorySettings]] = MemorySettings
    settings: MemorySettings

    def __init__(self, config: dict[str, Any] | None = None, *, share_with: MemoryStorage | None = None) -> None:
        super().__init__(config)
        limit = self.settings.max_conversations
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ConfigError(f"max_conversations={limit!r} must be a whole number of 1 or more, or None")
        # share_with: a second object over the same data, as a second process would open the
        # same file tree (the conformance suite builds storages this way).
        self._data: _Data = share_with._data if share_with is not None else _Data()

    def _capabilities(self) -> frozenset[str]:
        return frozenset({"lru_eviction"}) if self.settings.max_conversations is not None else frozenset()

    def size(self) -> int:
        """How many conversations are held."""
        self._require_initialized()
        return len(self._data.recency)

    # -------------------------------------------------------------- lifecycle

    async def _open(self) -> None:
        pass

    async def _close(self) -> None:
        pass

    # ------------------------------------------------------------ transactions
    #
    # Copy on write: the commit runs every op without awaiting anything (each hook runs to
    # completion), so no other task sees half of it; if one fails, the copy taken before is
    # put back. Writers of other tasks wait at the gate while a transaction is open.

    async def _tx_begin(self) -> Any:
        await self._data.gate.enter(self.settings.connection_timeout)
        return None

    async def _tx_commit(self, state: Any, ops: list[Any]) -> None:
        data = self._data
        try:
            before = data.snapshot()
            try:
                for op in ops:
                    await op.apply(self)
            except BaseException:
                data.restore(before)
                raise
        finally:
            data.gate.leave()

    async def _tx_abort(self, state: Any) -> None:
        self._data.gate.leave()

    # ------------------------------------------------------------ recency (LRU)

    def _touch(self, conversation_id: str) -> None:
        """Mark a conversation used; evict the least recently used ones past the bound."""
        recency = self._data.recency
        if conversation_id not in recency:
            if not self._has_parts(conversation_id):
                return
            recency[conversation_id] = None
        recency.move_to_end(conversation_id)
        limit = self.settings.max_conversations
        while limit is not None and len(recency) > limit:
            oldest = next(iter(recency))
            self._drop_conversation(oldest)

    def _has_parts(self, conversation_id: str) -> bool:
        data = self._data
        return (
            (Kind.CONVERSATION, conversation_id) in data.documents
            or (Kind.CHUNKS, conversation_id) in data.documents
            or (Kind.RAW_MESSAGES, conversation_id) in data.logs
            or conversation_id in data.members
            or conversation_id in data.meta
        )

    def _settle(self, kind: Kind, key: str) -> None:
        """After a write or delete of a conversation part: keep recency in step."""
        if kind not in CONVERSATION_PARTS:
            return
        if self._has_parts(key):
            self._touch(key)
        else:
            self._data.recency.pop(key, None)

    def _drop_conversation(self, conversation_id: str) -> bool:
        """Remove every part; True when the conversation was live."""
        data = self._data
        live = self._has_parts(conversation_id) and not self._expired(conversation_id)
        data.documents.pop((Kind.CONVERSATION, conversation_id), None)
        data.documents.pop((Kind.CHUNKS, conversation_id), None)
        data.logs.pop((Kind.RAW_MESSAGES, conversation_id), None)
        data.members.pop(conversation_id, None)
        data.meta.pop(conversation_id, None)
        data.recency.pop(conversation_id, None)
        return live

    # ------------------------------------------------------------------ expiry

    def _expired(self, conversation_id: str) -> bool:
        stored = self._data.meta.get(conversation_id)
        return stored is not None and stored[0].expired(self._now_ms())

    def _readable(self, kind: Kind, key: str) -> bool:
        """False for a part of an expired conversation: it reads as missing."""
        return kind not in CONVERSATION_PARTS or not self._expired(key)

    def _writable(self, kind: Kind, key: str) -> None:
        """Before a write to a part: an expired conversation is removed whole first."""
        if kind in CONVERSATION_PARTS and self._expired(key):
            self._drop_conversation(key)

    def _count_messages(self, conversation_id: str) -> None:
        """After a change to the raw history: the metadata's message_count follows."""
        stored = self._data.meta.get(conversation_id)
        if stored is not None:
            count = len(self._data.logs.get((Kind.RAW_MESSAGES, conversation_id), ()))
            self._data.meta[conversation_id] = (dataclasses.replace(stored[0], message_count=count), stored[1])

    # -------------------------------------------------------------- documents

    async def _read_document(self, kind: Kind, key: str) -> Any:
        raw = self._data.documents.get((kind, key))
        if raw is None or not self._readable(kind, key):
            return None
        if kind in CONVERSATION_PARTS:
            self._touch(key)
        return _load(raw)

    @_waits_for_transactions
    async def _write_document(self, kind: Kind, key: str, value: Any) -> None:
        self._writable(kind, key)
        self._data.documents[(kind, key)] = encode(value, pretty=False)
        self._settle(kind, key)

    @_waits_for_transactions
    async def _delete(self, kind: Kind, key: str) -> bool:
        data = self._data
        if kind is Kind.CACHE:
            return data.cache.pop(key, None) is not None
        self._writable(kind, key)
        if kind in (Kind.RAW_MESSAGES, Kind.REASONING_CHAINS):
            found = data.logs.pop((kind, key), None) is not None
            if kind is Kind.RAW_MESSAGES:
                self._count_messages(key)
        else:
            found = data.documents.pop((kind, key), None) is not None
        self._settle(kind, key)
        return found

    # ------------------------------------------------------------------- logs

    async def _read_log(self, kind: Kind, key: str) -> list[Any]:
        items = self._data.logs.get((kind, key))
        if items is None or not self._readable(kind, key):
            return []
        if kind in CONVERSATION_PARTS:
            self._touch(key)
        return [_load(raw) for raw in items]

    @_waits_for_transactions
    async def _append_log(self, kind: Kind, key: str, items: list[Any]) -> int:
        self._writable(kind, key)
        log = self._data.logs.setdefault((kind, key), [])
        log.extend(encode(item, pretty=False) for item in items)
        self._after_log_write(kind, key)
        return len(log)

    @_waits_for_transactions
    async def _replace_log(self, kind: Kind, key: str, items: list[Any]) -> None:
        self._writable(kind, key)
        self._data.logs[(kind, key)] = [encode(item, pretty=False) for item in items]
        self._after_log_write(kind, key)

    @_waits_for_transactions
    async def _pop_log(self, kind: Kind, key: str) -> Any:
        self._writable(kind, key)
        items = self._data.logs.get((kind, key))
        if not items:
            return None
        raw = items.pop()
        if not items:
            del self._data.logs[(kind, key)]
        self._after_log_write(kind, key)
        return _load(raw)

    def _after_log_write(self, kind: Kind, key: str) -> None:
        if kind is Kind.RAW_MESSAGES:
            self._count_messages(key)
        self._settle(kind, key)

    # --------------------------------------------------------------- memories

    @_waits_for_transactions
    async def _put_member(self, conversation_id: str, memory_id: str, memory: dict[str, Any]) -> None:
        self._writable(Kind.MEMORIES, conversation_id)
        self._data.members.setdefault(conversation_id, {})[memory_id] = encode(memory, pretty=False)
        self._settle(Kind.MEMORIES, conversation_id)

    async def _read_members(self, conversation_id: str) -> list[dict[str, Any]]:
        members = self._data.members.get(conversation_id)
        if not members or self._expired(conversation_id):
            return []
        self._touch(conversation_id)
        return [_load(raw) for raw in members.values()]

    @_waits_for_transactions
    async def _delete_member(self, conversation_id: str, memory_id: str) -> bool:
        self._writable(Kind.MEMORIES, conversation_id)
        members = self._data.members.get(conversation_id)
        if members is None or members.pop(memory_id, None) is None:
            return False
        if not members:
            del self._data.members[conversation_id]
        self._settle(Kind.MEMORIES, conversation_id)
        return True

    @_waits_for_transactions
    async def _delete_conversation(self, conversation_id: str) -> bool:
        return self._drop_conversation(conversation_id)

    # ---------------------------------------------------------------- listing

    async def _list_conversations(self) -> list[str]:
        return [key for key in self._data.recency if not self._expired(key)]

    # ------------------------------------------------------ conversation store

    async def _meta_read(
        self, conversation_id: str, now_ms: int, *, include_expired: bool = False
    ) -> MetaRecord | None:
        stored = self._data.meta.get(conversation_id)
        if stored is None or (stored[0].expired(now_ms) and not include_expired):
            return None
        self._touch(conversation_id)
        return dataclasses.replace(stored[0], metadata=_load(stored[1]))

    @_waits_for_transactions
    async def _meta_put(self, conversation_id: str, record: MetaRecord | None) -> None:
        if record is None:
            self._data.meta.pop(conversation_id, None)
            self._settle(Kind.CONVERSATION, conversation_id)
            return
        self._writable(Kind.CONVERSATION, conversation_id)
        metadata = encode(record.metadata or {}, pretty=False)
        self._data.meta[conversation_id] = (dataclasses.replace(record, metadata=None), metadata)
        self._settle(Kind.CONVERSATION, conversation_id)

    async def _conversation_load(
        self, conversation_id: str, now_ms: int, *, include_expired: bool
    ) -> tuple[MetaRecord, list[dict[str, Any]]] | None:
        if not self._has_parts(conversation_id):
            return None
        record = await self._meta_read(conversation_id, now_ms, include_expired=include_expired)
        if record is None:
            if self._expired(conversation_id):
                return None
            record = MetaRecord(conversation_id, None, None, None, None, None, None)
        self._touch(conversation_id)
        raw = self._data.logs.get((Kind.RAW_MESSAGES, conversation_id), [])
        return record, [_load(item) for item in raw]

    async def _conversation_exists(self, conversation_id: str, now_ms: int) -> bool:
        return self._has_parts(conversation_id) and not self._expired(conversation_id)

    async def _expired_conversations(self, now_ms: int) -> list[str]:
        return [key for key, (record, _) in self._data.meta.items() if record.expired(now_ms)]

    async def _list_agents(self) -> list[str]:
        return [key for kind, key in self._data.logs if kind is Kind.REASONING_CHAINS]

    async def _list_system_states(self) -> list[str]:
        return [key for kind, key in self._data.documents if kind is Kind.SYSTEM]

    # ------------------------------------------------------------------ cache

    @_waits_for_transactions
    async def _write_cache(self, entry: CacheEntry) -> None:
        self._data.cache[entry.key] = (encode(entry.data, pretty=False), entry.created_ms, entry.expires_ms)

    async def _read_cache(self, cache_key: str) -> CacheEntry | None:
        stored = self._data.cache.get(cache_key)
        if stored is None:
            return None
        raw, created_ms, expires_ms = stored
        return CacheEntry(cache_key, _load(raw), created_ms, expires_ms)

    async def _list_cache_keys(self, now_ms: int) -> list[str]:
        return [key for key, (_, _, expires) in self._data.cache.items() if expires is None or expires > now_ms]

    async def _list_all_cache_keys(self) -> list[str]:
        return list(self._data.cache)

    @_waits_for_transactions
    async def _delete_expired_cache(self, now_ms: int) -> int:
        cache = self._data.cache
        expired = [key for key, (_, _, expires) in cache.items() if expires is not None and expires <= now_ms]
        for key in expired:
            del cache[key]
        return len(expired)

    # ------------------------------------------------------------ health, size

    async def _probe(self) -> dict[str, Any]:
        return {"conversations": len(self._data.recency), "max_conversations": self.settings.max_conversations}

    async def _total_bytes(self) -> int:
        data = self._data
        total = sum(map(len, data.documents.values()))
        total += sum(len(raw) for log in data.logs.values() for raw in log)
        total += sum(len(raw) for members in data.members.values() for raw in members.values())
        total += sum(len(raw) for raw, _, _ in data.cache.values())
        total += sum(len(raw) for raw in data.messages.values())
        total += sum(len(message_id) for ids in data.read_state.values() for message_id in ids)
        return total + sum(len(raw) for entries in data.kv.values() for raw, _ in entries.values())

    # -------------------------------------------------- key-value collections
    #
    # An entry is kept as (encoded value, record without its value): filters and ordering
    # never need the value, so only what a call returns is decoded.

    @staticmethod
    def _decoded(raw: bytes, record: KVRecord) -> KVRecord:
        return dataclasses.replace(record, value=_load(raw), tags=dict(record.tags))

    async def _kv_get(self, namespace: str, keys: list[str]) -> dict[str, KVRecord]:
        entries = self._data.kv.get(namespace, {})
        return {key: self._decoded(*entries[key]) for key in keys if key in entries}

    @_waits_for_transactions
    async def _kv_put(self, namespace: str, records: list[KVRecord], now_ms: int, *, if_not_exists: bool) -> bool:
        entries = self._data.kv.setdefault(namespace, {})
        encoded = [encode(record.value, pretty=False) for record in records]  # every value before any write
        for raw, record in zip(encoded, records, strict=True):
            old = entries.get(record.key)
            if old is not None and not old[1].expired(now_ms):
                if if_not_exists:
                    return False
                record = dataclasses.replace(record, created_ms=old[1].created_ms)
            entries[record.key] = (raw, dataclasses.replace(record, value=None, tags=dict(record.tags)))
        return True

    @_waits_for_transactions
    async def _kv_delete(self, namespace: str, keys: list[str], now_ms: int) -> int:
        entries = self._data.kv.get(namespace, {})
        live = 0
        for key in keys:
            old = entries.pop(key, None)
            live += old is not None and not old[1].expired(now_ms)
        self._prune_namespace(namespace)
        return live

    def _prune_namespace(self, namespace: str) -> None:
        if not self._data.kv.get(namespace, True):
            del self._data.kv[namespace]

    async def _kv_select(self, namespace: str, select: KVSelect, now_ms: int) -> list[KVRecord]:
        entries = self._data.kv.get(namespace, {})
        chosen = select.apply((record for _, record in entries.values()), now_ms)
        return [self._decoded(entries[record.key][0], record) for record in chosen]

    @_waits_for_transactions
    async def _kv_set_expiry(self, namespace: str, key: str, expires_ms: int | None, now_ms: int) -> bool:
        entries = self._data.kv.get(namespace, {})
        old = entries.get(key)
        if old is None or old[1].expired(now_ms):
            return False
        entries[key] = (old[0], dataclasses.replace(old[1], expires_ms=expires_ms))
        return True

    async def _kv_namespaces(self, now_ms: int) -> list[str]:
        return [
            name
            for name, entries in self._data.kv.items()
            if any(not record.expired(now_ms) for _, record in entries.values())
        ]

    @_waits_for_transactions
    async def _kv_clear(self, namespace: str, now_ms: int) -> int:
        entries = self._data.kv.pop(namespace, {})
        return sum(not record.expired(now_ms) for _, record in entries.values())

    @_waits_for_transactions
    async def _kv_remove_expired(self, namespace: str | None, now_ms: int) -> int:
        removed = 0
        for name in [namespace] if namespace is not None else list(self._data.kv):
            entries = self._data.kv.get(name, {})
            expired = [key for key, (_, record) in entries.items() if record.expired(now_ms)]
            for key in expired:
                del entries[key]
            removed += len(expired)
            if name in self._data.kv:
                self._prune_namespace(name)
        return removed

    async def _kv_stats(self, now_ms: int) -> tuple[int, int, int, int]:
        live = expired = 0
        for entries in self._data.kv.values():
            for _, record in entries.values():
                if record.expired(now_ms):
                    expired += 1
                else:
                    live += 1
        return (len(await self._kv_namespaces(now_ms)), live, expired, 0)

    # ------------------------------------------------------------ message store
    #
    # Messages are kept as canonical bytes (a copy in, a fresh copy out); each hook runs
    # without awaiting, so save-if-absent and the read-set union are atomic on the loop.

    @_waits_for_transactions
    async def _msg_put(self, message: dict[str, Any], *, if_absent: bool) -> bool:
        message_id = message["id"]
        if if_absent and message_id in self._data.messages:
            return False
        self._data.messages[message_id] = encode(message, pretty=False)
        return True

    async def _msg_get(self, message_id: str) -> dict[str, Any] | None:
        raw = self._data.messages.get(message_id)
        return None if raw is None else _load(raw)

    async def _msg_ids(self) -> list[str]:
        return list(self._data.messages)

    async def _msg_select(self, select: MessageSelect) -> list[dict[str, Any]]:
        return select.apply(_load(raw) for raw in self._data.messages.values())

    async def _msg_readers(self) -> list[str]:
        return list(self._data.read_state)

    async def _msg_read_ids(self, agent_id: str) -> list[str]:
        return sorted(self._data.read_state.get(agent_id, ()))

    @_waits_for_transactions
    async def _msg_add_read(self, agent_id: str, ids: list[str]) -> None:
        self._data.read_state.setdefault(agent_id, set()).update(ids)

    @_waits_for_transactions
    async def _msg_set_read(self, agent_id: str, ids: list[str]) -> None:
        if ids:
            self._data.read_state[agent_id] = set(ids)
        else:
            self._data.read_state.pop(agent_id, None)
