"""StorageInterface: every public method written once, over a few backend hooks.

The seven kinds of data come in three shapes, so a backend implements few hooks:

* document, one value per key: conversation document, chunks, system state (and cache
  entries, which get hooks of their own because every engine expires them differently);
* log, an append-only list: raw messages, reasoning chains;
* keyed collection in first-stored order: memories.

This class checks ids and values, does the TTL arithmetic and assembles health and
stats, so every backend behaves the same way. Backends fill in the ``_``-prefixed hooks.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Self, TypeVar, overload

from .codec import check_value
from .config import CommonSettings, resolve_settings
from .conversation_query import MetaQuery, aggregate
from .conversations import ConversationStore, MetaRecord
from .errors import (
    CorruptedDataError,
    InvalidArgumentError,
    InvalidKeyError,
    NotSupportedError,
    SerializationError,
    StorageError,
    StorageNotInitializedError,
)
from .kv import DEFAULT_NAMESPACE, SCAN_BATCH, KeyValueStore, KVRecord, KVSelect
from .messages import MessageSelect, MessageStore
from .naming import check_id

if TYPE_CHECKING:
    from .middleware._chain import Chain
    from .transaction import Op, Transaction
    from .typed import TypedKeyValueStore

M = TypeVar("M")

__all__ = [
    "CAPABILITIES",
    "MAX_TTL_SECONDS",
    "CacheEntry",
    "ChangeEvent",
    "Kind",
    "Problem",
    "StorageInterface",
    "check_ttl",
]

logger = logging.getLogger("connectome_storage")

# How long watch() gathers a burst of changes into one event per file, by default.
DEFAULT_DEBOUNCE_MS = 400


class Kind(enum.Enum):
    """What a stored value is; each backend maps kinds to files, tables or keys."""

    CONVERSATION = "current"  # document, per conversation
    CHUNKS = "chunks"  # document (a list), per conversation
    RAW_MESSAGES = "raw_messages"  # log, per conversation
    MEMORIES = "memories"  # keyed collection, per conversation
    REASONING_CHAINS = "reasoning_chains"  # log, per agent
    CACHE = "cache"  # document with expiry, per cache key
    SYSTEM = "system"  # document, per state key
    KV = "kv"  # key-value entry, per (namespace, key): handled by the _kv_* hooks, never the others
    METADATA = "metadata"  # conversation store metadata, per conversation: the _meta_* hooks
    MESSAGE = "message"  # message store entry, per message id: handled by the _msg_* hooks
    READ_STATE = "read_messages"  # an agent's read message ids: handled by the _msg_* hooks


CONVERSATION_PARTS = (Kind.CONVERSATION, Kind.RAW_MESSAGES, Kind.CHUNKS, Kind.MEMORIES)

# What a backend may do beyond the common contract (``capabilities``, ``supports()``).
# "sharded": data spread over several servers by hash slot (Redis Cluster); a transaction
# may then touch the entities of one slot only (docs/redis.md, "Redis Cluster").
CAPABILITIES = frozenset({"watch", "backups", "native_ttl", "cross_process", "persistent", "lru_eviction", "sharded"})

# The keys of get_storage_stats(), in the order every backend reports them; a backend may
# add its own after these.
STATS_KEYS = (
    "backend", "conversation_count", "expired_conversation_count", "raw_message_count", "memory_count", "chunk_count",
    "agent_count", "reasoning_chain_count", "cache_entry_count", "expired_cache_entry_count",
    "system_state_count", "kv_namespace_count", "kv_entry_count", "expired_kv_entry_count",
    "message_count", "message_read_state_count", "total_bytes", "unreadable_count",
)  # fmt: skip


@dataclass(frozen=True)
class CacheEntry:
    """A cache value with its times in epoch milliseconds (``expires_ms`` None: never)."""

    key: str
    data: Any
    created_ms: int
    expires_ms: int | None

    def expired(self, now_ms: int) -> bool:
        return self.expires_ms is not None and now_ms >= self.expires_ms


@dataclass(frozen=True)
class Problem:
    """One finding of ``verify()``: where (file, key or id) and what is wrong."""

    location: str
    message: str


@dataclass(frozen=True)
class ChangeEvent:
    """One change to a stored entity, as ``watch()`` reports it (docs/watch.md).

    ``kind`` and ``id`` name the entity (``id`` is the original id, not the file name);
    ``change`` is ``"added"``, ``"modified"`` or ``"deleted"``; ``path`` is the file.
    ``own`` is True when the storage object being watched made the change itself.
    ``valid`` is False when the file after the change does not parse or has the wrong
    shape; ``error`` then holds the message a load would raise.
    """

    kind: Kind
    id: str
    change: Literal["added", "modified", "deleted"]
    path: Path
    own: bool = False
    valid: bool = True
    error: str | None = None
    namespace: str | None = None  # the collection of a ``kv`` entry; None for every other kind

    @property
    def kind_name(self) -> str:
        """``conversation``, ``raw_messages``, ``chunks``, ``memories``, ``reasoning_chains``,
        ``cache``, ``system``, ``kv``, ``message`` or ``read_state``."""
        return self.kind.name.lower()

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (``kind`` as ``kind_name``, ``path`` as a string)."""
        return {
            "kind": self.kind_name, "id": self.id, "change": self.change, "path": str(self.path),
            "own": self.own, "valid": self.valid, "error": self.error, "namespace": self.namespace,
        }  # fmt: skip


class StorageInterface(ABC):
    """The abstract base every backend subclasses.

    ``config`` is a dict of the options the backend takes (its ``settings_class``);
    unknown keys and unparseable values raise ConfigError.
    """

    backend_name: ClassVar[str] = "custom"
    settings_class: ClassVar[type[CommonSettings]] = CommonSettings

    # The middleware chain (docs/middleware.md), when the ``middleware`` option is non-empty.
    _chain: Chain | None = None
    # ``migrate`` into this storage writes up to this many conversations per durable
    # all-or-nothing write (``_replace_conversations``); 0 (the default): each part by its
    # own write, as the public methods do. For a backend whose writes cost one durable
    # commit whatever they hold, and may hold many entities.
    _migrate_batch: ClassVar[int] = 0

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        self.settings = resolve_settings(self.settings_class, config, self.backend_name)
        self._initialized = False
        if self.settings.middleware:
            # Only then: a storage without middleware has nothing installed and pays nothing.
            from .middleware._chain import install

            self._chain = install(self, self.settings.middleware)

    # ----------------------------------------------------------------- lifecycle

    async def initialize(self) -> bool:
        """Create folders / schema / connections; safe to call again."""
        if not self._initialized:
            await self._open()
            self._initialized = True
        return True

    async def shutdown(self) -> None:
        """Release resources; safe to call again; never closes a client the caller passed in."""
        if self._initialized:
            self._initialized = False
            await self._close()

    async def __aenter__(self) -> Self:
        await self.initialize()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.shutdown()

    def _require_initialized(self) -> None:
        if not self._initialized:
            raise StorageNotInitializedError(
                f"{type(self).__name__} is not initialized: call `await storage.initialize()` "
                "first, or use `async with storage:`"
            )

    def _now_ms(self) -> int:
        return round(self.settings.clock() * 1000)

    @property
    def capabilities(self) -> frozenset[str]:
        """What this backend does beyond the common contract (a subset of CAPABILITIES)."""
        return self._capabilities()

    def supports(self, name: str) -> bool:
        """``name in capabilities``; an unknown name raises InvalidArgumentError listing the known ones."""
        if name not in CAPABILITIES:
            raise InvalidArgumentError(
                f"unknown capability {name!r}; the known ones are {', '.join(sorted(CAPABILITIES))}"
            )
        return name in self.capabilities

    def _capabilities(self) -> frozenset[str]:
        """Backends override this; the default claims nothing beyond the contract."""
        return frozenset()

    # ------------------------------------------------------------- conversations

    async def store_conversation(self, conversation_id: str, data: dict[str, Any]) -> bool:
        """Replace the conversation document (``current.json``)."""
        self._require_initialized()
        check_id(conversation_id, "conversation_id")
        _check_dict(data, "data")
        await self._write_document(Kind.CONVERSATION, conversation_id, data)
        return True

    async def load_conversation(self, conversation_id: str) -> dict[str, Any] | None:
        """The conversation document, or None if it was never stored."""
        self._require_initialized()
        check_id(conversation_id, "conversation_id")
        return await self._read_document(Kind.CONVERSATION, conversation_id)  # type: ignore[no-any-return]

    async def list_conversations(self) -> list[str]:
        """Sorted ids of conversations that have any stored part."""
        self._require_initialized()
        return sorted(await self._list_conversations())

    async def delete_conversation(self, conversation_id: str) -> bool:
        """Remove every part of a conversation; False if it had none."""
        self._require_initialized()
        check_id(conversation_id, "conversation_id")
        return await self._delete_conversation(conversation_id)

    async def store_raw_messages(self, conversation_id: str, messages: list[dict[str, Any]]) -> bool:
        """Replace the raw message history; ``[]`` removes it."""
        self._require_initialized()
        check_id(conversation_id, "conversation_id")
        _check_dict_list(messages, "messages")
        if messages:
            await self._replace_log(Kind.RAW_MESSAGES, conversation_id, list(messages))
        else:
            await self._delete(Kind.RAW_MESSAGES, conversation_id)
        return True

    async def append_raw_messages(self, conversation_id: str, messages: list[dict[str, Any]]) -> int:
        """Append to the raw history; returns the new total number of messages."""
        self._require_initialized()
        check_id(conversation_id, "conversation_id")
        _check_dict_list(messages, "messages")
        if not messages:
            return len(await self._read_log(Kind.RAW_MESSAGES, conversation_id))
        return await self._append_log(Kind.RAW_MESSAGES, conversation_id, list(messages))

    async def load_raw_messages(self, conversation_id: str) -> list[dict[str, Any]]:
        """The raw history, oldest first; ``[]`` when none."""
        self._require_initialized()
        check_id(conversation_id, "conversation_id")
        return await self._read_log(Kind.RAW_MESSAGES, conversation_id)

    async def pop_raw_message(self, conversation_id: str) -> dict[str, Any] | None:
        """Remove and return the newest raw message (None when there is none).

        One atomic step against concurrent appends by any process: a message appended at
        the same time is either popped or kept, never lost.
        """
        self._require_initialized()
        check_id(conversation_id, "conversation_id")
        return await self._pop_log(Kind.RAW_MESSAGES, conversation_id)  # type: ignore[no-any-return]

    async def store_memory(self, conversation_id: str, memory_id: str, memory: dict[str, Any]) -> bool:
        """Insert or replace one memory; a replaced memory keeps its place in the order."""
        self._require_initialized()
        check_id(conversation_id, "conversation_id")
        check_id(memory_id, "memory_id")
        _check_dict(memory, "memory")
        if memory.get("memory_id", memory_id) != memory_id:
            raise InvalidKeyError(
                f"memory carries memory_id {memory['memory_id']!r} but is stored under "
                f"{memory_id!r}; make them match or drop the key from the dict"
            )
        await self._put_member(conversation_id, memory_id, {**memory, "memory_id": memory_id})
        return True

    async def load_memories(self, conversation_id: str) -> list[dict[str, Any]]:
        """Memories in first-stored order, each with its ``"memory_id"``."""
        self._require_initialized()
        check_id(conversation_id, "conversation_id")
        return await self._read_members(conversation_id)

    async def delete_memory(self, conversation_id: str, memory_id: str) -> bool:
        """Remove one memory; False if it was not there."""
        self._require_initialized()
        check_id(conversation_id, "conversation_id")
        check_id(memory_id, "memory_id")
        return await self._delete_member(conversation_id, memory_id)

    async def store_chunks(self, conversation_id: str, chunks: list[dict[str, Any]]) -> bool:
        """Replace the chunking decisions; ``[]`` removes them."""
        self._require_initialized()
        check_id(conversation_id, "conversation_id")
        _check_dict_list(chunks, "chunks")
        if chunks:
            await self._write_document(Kind.CHUNKS, conversation_id, list(chunks))
        else:
            await self._delete(Kind.CHUNKS, conversation_id)
        return True

    async def load_chunks(self, conversation_id: str) -> list[dict[str, Any]]:
        """The chunking decisions; ``[]`` when none."""
        self._require_initialized()
        check_id(conversation_id, "conversation_id")
        chunks = await self._read_document(Kind.CHUNKS, conversation_id)
        return chunks if chunks is not None else []

    # -------------------------------------------------------------------- agents

    async def store_reasoning_chain(self, agent_id: str, chain: dict[str, Any]) -> bool:
        """Append one reasoning chain to the agent's history."""
        self._require_initialized()
        check_id(agent_id, "agent_id")
        _check_dict(chain, "chain")
        await self._append_log(Kind.REASONING_CHAINS, agent_id, [chain])
        return True

    async def load_reasoning_chains(self, agent_id: str) -> list[dict[str, Any]]:
        """The agent's chains, oldest first; ``[]`` when none."""
        self._require_initialized()
        check_id(agent_id, "agent_id")
        return await self._read_log(Kind.REASONING_CHAINS, agent_id)

    async def list_agents(self) -> list[str]:
        """Sorted ids of agents with stored reasoning chains."""
        self._require_initialized()
        return sorted(await self._list_agents())

    # --------------------------------------------------------------------- cache

    async def store_cache(self, cache_key: str, data: Any, ttl: float | None = None) -> bool:
        """Store a cache value; ``ttl`` seconds (None: the configured default, else forever)."""
        self._require_initialized()
        check_id(cache_key, "cache_key")
        check_value(data, "data")
        ttl = self.settings.default_cache_ttl if ttl is None else check_ttl(ttl)
        now = self._now_ms()
        expires = None if ttl is None else now + max(1, round(ttl * 1000))
        await self._write_cache(CacheEntry(cache_key, data, now, expires))
        return True

    async def load_cache(self, cache_key: str) -> Any:
        """The cached value, or None when missing or expired."""
        self._require_initialized()
        check_id(cache_key, "cache_key")
        entry = await self._read_cache(cache_key)
        if entry is None or entry.expired(self._now_ms()):
            return None
        return entry.data

    async def delete_cache(self, cache_key: str) -> bool:
        """Remove a cache entry (expired or not); False if there was none."""
        self._require_initialized()
        check_id(cache_key, "cache_key")
        return await self._delete(Kind.CACHE, cache_key)

    async def list_cache_keys(self) -> list[str]:
        """Sorted keys of unexpired cache entries."""
        self._require_initialized()
        return sorted(await self._list_cache_keys(self._now_ms()))

    async def cleanup_expired_cache(self) -> int:
        """Remove expired cache entries; returns how many were removed."""
        self._require_initialized()
        return await self._delete_expired_cache(self._now_ms())

    async def cleanup(self) -> dict[str, int]:
        """All housekeeping at once; returns how many of each thing it removed.

        Always ``expired_cache``, ``expired_conversations`` and ``expired_kv_entries``;
        backends add their own counts (the file tree: ``temp_files``, ``backups``,
        ``lock_files``, ``recovered_appends``).
        """
        self._require_initialized()
        now_ms = self._now_ms()
        removed = {
            "expired_cache": await self._delete_expired_cache(now_ms),
            "expired_conversations": await self._remove_expired_conversations(now_ms),
            "expired_kv_entries": await self._kv_remove_expired(None, now_ms),
        }
        removed.update(await self._cleanup_housekeeping(now_ms))
        return removed

    # -------------------------------------------------------------- system state

    async def store_system_state(self, state_key: str, data: Any) -> bool:
        """Store any JSON value under ``state_key``."""
        self._require_initialized()
        check_id(state_key, "state_key")
        check_value(data, "data")
        await self._write_document(Kind.SYSTEM, state_key, data)
        return True

    async def load_system_state(self, state_key: str) -> Any:
        """The stored value, or None."""
        self._require_initialized()
        check_id(state_key, "state_key")
        return await self._read_document(Kind.SYSTEM, state_key)

    async def delete_system_state(self, state_key: str) -> bool:
        """Remove a state value; False if there was none."""
        self._require_initialized()
        check_id(state_key, "state_key")
        return await self._delete(Kind.SYSTEM, state_key)

    async def list_system_states(self) -> list[str]:
        """Sorted state keys."""
        self._require_initialized()
        return sorted(await self._list_system_states())

    # ------------------------------------------------------------ transactions

    def transaction(self) -> Transaction:
        """``async with storage.transaction() as tx:``: every write through ``tx`` happens
        together or not at all (docs/transactions.md); ``tx`` reads its own writes."""
        from .transaction import Transaction

        return Transaction(self)

    # ------------------------------------------------------- conversation store

    def conversation_store(self, default_ttl: float | None = None) -> ConversationStore:
        """Conversations with metadata, TTL and queries over this storage (docs/conversations.md)."""
        return self._make_conversation_store(default_ttl)

    def _make_conversation_store(self, default_ttl: float | None) -> ConversationStore:
        """The store (the middleware chain puts its own in its place)."""
        return ConversationStore(self, default_ttl)

    # -------------------------------------------------- key-value collections

    @overload
    def kv(self, namespace: str = DEFAULT_NAMESPACE) -> KeyValueStore: ...
    @overload
    def kv(
        self, namespace: str = DEFAULT_NAMESPACE, *, model: type[M], version: int = 1,
        upgrade: Mapping[int, Callable[[Any], Any]] | None = None,
    ) -> TypedKeyValueStore[M]: ...  # fmt: skip
    def kv(
        self, namespace: str = DEFAULT_NAMESPACE, *, model: type[Any] | None = None, version: int = 1,
        upgrade: Mapping[int, Callable[[Any], Any]] | None = None,
    ) -> KeyValueStore | TypedKeyValueStore[Any]:  # fmt: skip
        """A KeyValueStore over one namespace (docs/kv.md); InvalidKeyError for a bad name.

        With ``model`` (a pydantic model or a dataclass), a TypedKeyValueStore that validates
        values and returns instances of it, at schema ``version`` with ``upgrade`` functions
        for older entries (docs/kv.md, "Typed collections").
        """
        if model is None:
            if version != 1 or upgrade:
                raise InvalidArgumentError("version and upgrade apply to a typed collection: pass model= too")
            return self._plain_kv(namespace)
        from .typed import TypedKeyValueStore

        return TypedKeyValueStore(self, namespace, model, version=version, upgrade=upgrade)

    def _plain_kv(self, namespace: str) -> KeyValueStore:
        """The untyped store of a namespace (the middleware chain puts its own in its place)."""
        return KeyValueStore(self, namespace)

    async def list_namespaces(self) -> list[str]:
        """Sorted namespaces that hold a live key-value entry."""
        self._require_initialized()
        return sorted(await self._kv_namespaces(self._now_ms()))

    # ------------------------------------------------ message store (docs/messages.md)

    def message_store(self) -> MessageStore:
        """The MessageStore of this storage: messages agents send each other, with read state."""
        return self._make_message_store()

    def _make_message_store(self) -> MessageStore:
        """The store (the middleware chain puts its own in its place)."""
        return MessageStore(self)

    # -------------------------------------------------------------------- health

    async def health_check(self) -> dict[str, Any]:
        """Probe the backend for real; a dead backend is reported, never raised."""
        started = time.perf_counter()
        report: dict[str, Any] = {"status": "healthy", "backend": self.backend_name}
        try:
            self._require_initialized()
            details = await self._probe()
        except (TimeoutError, StorageError, OSError) as e:
            report["status"] = "unhealthy"
            details = {"error": str(e), "error_type": type(e).__name__}
        report["latency_ms"] = round((time.perf_counter() - started) * 1000, 3)
        report["details"] = details
        return report

    async def get_storage_stats(self) -> dict[str, Any]:
        """Counts of every kind of data; corrupt entities are counted as unreadable."""
        self._require_initialized()
        now_ms = self._now_ms()
        stats = {"backend": self.backend_name, **await self._collect_stats(now_ms)}
        if "expired_conversation_count" not in stats:  # not setdefault: its argument is awaited either way
            stats["expired_conversation_count"] = await self._count_expired_conversations(now_ms)
        namespaces, live, expired, unreadable = await self._kv_stats(now_ms)
        stats.update(kv_namespace_count=namespaces, kv_entry_count=live, expired_kv_entry_count=expired)
        stats["unreadable_count"] = stats.get("unreadable_count", 0) + unreadable
        messages, read_states, problems = await self._msg_census()
        stats.update(message_count=messages, message_read_state_count=read_states)
        stats["unreadable_count"] += len(problems)
        # One key order on every backend, so two backends' reports compare line by line.
        ordered = {key: stats.pop(key) for key in STATS_KEYS if key in stats}
        return {**ordered, **stats}

    async def verify(self) -> list[Problem]:
        """Read every stored entity and report each that does not parse; [] when all is well."""
        self._require_initialized()
        problems: list[Problem] = []
        async for _ in self._walk_entities(problems):
            pass
        return problems + (await self._msg_census())[2]

    async def watch(
        self,
        *,
        debounce_ms: int = DEFAULT_DEBOUNCE_MS,
        stop_event: asyncio.Event | None = None,
        ready: asyncio.Event | None = None,
    ) -> AsyncIterator[ChangeEvent]:
        """Report changes to stored data, by anyone, as they happen (docs/watch.md).

        Only the file backend can watch (FileStorage overrides this); elsewhere the first
        iteration raises NotSupportedError.
        """
        raise NotSupportedError(
            f"watch() is supported on the file backend only; {type(self).__name__} "
            f"({self.backend_name}) cannot report live changes"
        )
        yield  # never reached: it makes this an async generator, so the error comes at iteration

    # -------------------------------------------------- generic stats and verify

    async def _collect_stats(self, now_ms: int) -> dict[str, Any]:
        """Count by reading everything; backends with native counters override this."""
        stats = dict.fromkeys(
            [
                "conversation_count", "raw_message_count", "memory_count", "chunk_count",
                "agent_count", "reasoning_chain_count", "cache_entry_count",
                "expired_cache_entry_count", "system_state_count",
            ],
            0,
        )  # fmt: skip
        problems: list[Problem] = []
        counters = {
            Kind.RAW_MESSAGES: "raw_message_count",
            Kind.MEMORIES: "memory_count",
            Kind.CHUNKS: "chunk_count",
            Kind.REASONING_CHAINS: "reasoning_chain_count",
        }
        async for kind, _key, value in self._walk_entities(problems):
            if kind in counters:
                stats[counters[kind]] += len(value)
            elif kind is Kind.CACHE:
                expired = value.expired(now_ms)
                stats["expired_cache_entry_count" if expired else "cache_entry_count"] += 1
        stats["conversation_count"] = len(await self._list_conversations())
        stats["agent_count"] = len(await self._list_agents())
        stats["system_state_count"] = len(await self._list_system_states())
        stats["total_bytes"] = await self._total_bytes()
        stats["unreadable_count"] = len(problems)
        return stats

    async def _walk_entities(self, problems: list[Problem]) -> Any:
        """Yield (kind, key, value) for everything stored; unreadable ones go to ``problems``."""
        readers = {
            Kind.CONVERSATION: lambda c: self._read_document(Kind.CONVERSATION, c),
            Kind.RAW_MESSAGES: lambda c: self._read_log(Kind.RAW_MESSAGES, c),
            Kind.CHUNKS: lambda c: self._read_document(Kind.CHUNKS, c),
            Kind.MEMORIES: self._read_members,
        }
        for conversation_id in await self._list_conversations():
            for kind, read in readers.items():
                try:
                    value = await read(conversation_id)
                except CorruptedDataError as e:
                    problems.append(Problem(e.path, str(e)))
                    continue
                if value is not None:
                    yield kind, conversation_id, value
        for agent_id in await self._list_agents():
            try:
                yield Kind.REASONING_CHAINS, agent_id, await self._read_log(Kind.REASONING_CHAINS, agent_id)
            except CorruptedDataError as e:
                problems.append(Problem(e.path, str(e)))
        for cache_key in await self._list_all_cache_keys():
            try:
                entry = await self._read_cache(cache_key)
            except CorruptedDataError as e:
                problems.append(Problem(e.path, str(e)))
                continue
            if entry is not None:
                yield Kind.CACHE, cache_key, entry
        for state_key in await self._list_system_states():
            try:
                yield Kind.SYSTEM, state_key, await self._read_document(Kind.SYSTEM, state_key)
            except CorruptedDataError as e:
                problems.append(Problem(e.path, str(e)))

    # --------------------------------------------------------------------- hooks

    @abstractmethod
    async def _open(self) -> None:
        """Create folders, schema or connections."""

    @abstractmethod
    async def _close(self) -> None:
        """Release what ``_open`` acquired."""

    @abstractmethod
    async def _read_document(self, kind: Kind, key: str) -> Any:
        """CONVERSATION, CHUNKS or SYSTEM value, or None."""

    @abstractmethod
    async def _write_document(self, kind: Kind, key: str, value: Any) -> None:
        """Replace a CONVERSATION, CHUNKS or SYSTEM value."""

    @abstractmethod
    async def _delete(self, kind: Kind, key: str) -> bool:
        """Remove one stored part of any kind but MEMORIES members; False if absent."""

    @abstractmethod
    async def _read_log(self, kind: Kind, key: str) -> list[Any]:
        """RAW_MESSAGES or REASONING_CHAINS, oldest first; [] when none."""

    @abstractmethod
    async def _append_log(self, kind: Kind, key: str, items: list[Any]) -> int:
        """Append ``items`` (non-empty); return the new length."""

    @abstractmethod
    async def _replace_log(self, kind: Kind, key: str, items: list[Any]) -> None:
        """Replace a log with ``items`` (non-empty)."""

    @abstractmethod
    async def _put_member(self, conversation_id: str, memory_id: str, memory: dict[str, Any]) -> None:
        """Insert or replace (in place) one memory."""

    @abstractmethod
    async def _read_members(self, conversation_id: str) -> list[dict[str, Any]]:
        """Memories in first-stored order."""

    @abstractmethod
    async def _delete_member(self, conversation_id: str, memory_id: str) -> bool:
        """Remove one memory; False if absent."""

    @abstractmethod
    async def _delete_conversation(self, conversation_id: str) -> bool:
        """Remove every part at once; False if nothing was stored."""

    @abstractmethod
    async def _list_conversations(self) -> list[str]:
        """Ids of conversations with any stored part."""

    @abstractmethod
    async def _list_agents(self) -> list[str]:
        """Ids of agents with reasoning chains."""

    @abstractmethod
    async def _list_system_states(self) -> list[str]:
        """State keys."""

    @abstractmethod
    async def _write_cache(self, entry: CacheEntry) -> None:
        """Store a cache entry, replacing any other under its key."""

    @abstractmethod
    async def _read_cache(self, cache_key: str) -> CacheEntry | None:
        """The entry, expired or not, or None."""

    @abstractmethod
    async def _list_cache_keys(self, now_ms: int) -> list[str]:
        """Keys of entries unexpired at ``now_ms``."""

    @abstractmethod
    async def _list_all_cache_keys(self) -> list[str]:
        """Keys of every entry, expired ones included."""

    @abstractmethod
    async def _delete_expired_cache(self, now_ms: int) -> int:
        """Remove entries expired at ``now_ms``; return how many."""

    @abstractmethod
    async def _probe(self) -> dict[str, Any]:
        """Exercise the backend for real; return details; raise if it is unusable."""

    @abstractmethod
    async def _total_bytes(self) -> int:
        """Bytes the stored data occupies."""

    async def _pop_log(self, kind: Kind, key: str) -> Any:
        """Remove and return the last item of a log atomically (None when empty); an emptied
        log is removed like ``store_raw_messages(id, [])`` removes it."""
        raise NotSupportedError(f"{type(self).__name__} ({self.backend_name}) cannot pop from a log")

    # --------------------------------------- transaction hooks (docs/transactions.md)
    #
    # A transaction collects its writes as Ops (connectome_storage/transaction.py) and hands
    # them to ``_tx_commit`` when its block ends. ``state`` is what ``_tx_begin`` returned.
    # The defaults are for a backend that cannot do better: the ops are applied one by one,
    # so a failure or a crash half-way leaves the first ones applied. Every backend of this
    # package overrides them.

    async def _tx_begin(self) -> Any:
        """Start a transaction (take what keeps its entities' other writers waiting)."""
        return None

    async def _tx_touch(self, state: Any, entity: tuple[str, ...]) -> None:  # noqa: B027
        """The transaction is about to read or write ``entity`` for the first time (lock or
        watch it)."""

    async def _tx_commit(self, state: Any, ops: list[Op]) -> None:
        """Apply ``ops`` in order, all or none, and release what ``_tx_begin`` took."""
        for op in ops:
            await op.apply(self)

    async def _conversation_parts(
        self, conversation_id: str, now_ms: int
    ) -> tuple[MetaRecord | None, Any, Any, list[Any], list[dict[str, Any]]]:
        """(metadata even if expired, document, chunks, raw history, memories) of one
        conversation: what a transaction reads when it first touches it. Backends that can
        read them in one round trip override this."""
        return (
            await self._meta_read(conversation_id, now_ms, include_expired=True),
            await self._read_document(Kind.CONVERSATION, conversation_id),
            await self._read_document(Kind.CHUNKS, conversation_id),
            await self._read_log(Kind.RAW_MESSAGES, conversation_id),
            await self._read_members(conversation_id),
        )

    async def _tx_abort(self, state: Any) -> None:  # noqa: B027
        """Drop the transaction: release what ``_tx_begin`` and ``_tx_touch`` took."""

    async def _cleanup_housekeeping(self, now_ms: int) -> dict[str, int]:
        """Backend-specific housekeeping for ``cleanup()``; counts by what was removed."""
        return {}

    # ------------------------------------------------ migrate hooks (migrate.py)
    #
    # ``migrate`` walks a source's conversations with ``_conversation_ids`` and reads each
    # one whole with ``_conversation_parts`` (above), past the middleware, judging expiry
    # itself from the metadata that comes back.

    async def _conversation_ids(self) -> AsyncGenerator[str, None]:
        """Every conversation with a stored part, expired ones not yet removed included, each
        once, in no particular order. The default lists them all first; a backend that can
        stream them (pages of a table, a folder scan) overrides this so that memory does not
        grow with their number. An id added or removed meanwhile may be seen or not."""
        listed = {*await self._list_conversations(), *await self._expired_conversations(self._now_ms())}
        for conversation_id in sorted(listed):
            yield conversation_id

    async def _replace_conversations(
        self, batch: list[tuple[str, tuple[MetaRecord | None, Any, Any, list[Any], list[dict[str, Any]]]]]
    ) -> bool:
        """Replace each conversation of ``batch`` whole (id, and its parts as
        ``_conversation_parts`` returns them: metadata, document, chunks, raw history,
        memories; values already checked) in one durable, all-or-nothing write: afterwards
        the storage holds exactly these parts for these ids, whatever it held before,
        damaged or not. For a destination with ``_migrate_batch`` set; False (the default):
        not done, and ``migrate`` writes them one part at a time."""
        return False

    # ------------------------------------ conversation store hooks (docs/conversations.md)
    #
    # A conversation's metadata is one more part of it, held as a MetaRecord (epoch ms).
    # Besides these hooks, a backend that stores metadata owes the hooks of the storage methods three
    # things, inside their own read or write step (a separate check per call would cost a
    # round trip):
    #
    # * an expired conversation (``expires_ms <= now``) is absent: its parts read as
    #   missing, ``_list_conversations`` leaves it out, and a write to any of its parts first
    #   removes it whole, so the write starts a new conversation (what Redis's native expiry
    #   does by itself);
    # * ``_delete_conversation`` removes metadata too, expired or not, and returns True only
    #   when the conversation was live;
    # * a write that changes the raw history of a conversation with metadata (append,
    #   replace, pop, removal) sets its ``message_count`` to the new length, in the same
    #   atomic step where the engine allows.
    #
    # The defaults compose the other hooks: correct, but neither atomic nor one round trip.
    # A backend without a place for metadata keeps the defaults of ``_meta_read`` (none
    # stored), ``_expired_conversations`` (so none expired) and ``_meta_put`` (refused).

    async def _meta_read(
        self, conversation_id: str, now_ms: int, *, include_expired: bool = False
    ) -> MetaRecord | None:
        """The stored metadata; None when there is none, or it expired (unless ``include_expired``)."""
        return None

    async def _meta_put(self, conversation_id: str, record: MetaRecord | None) -> None:
        """Store ``record`` as it is (None: remove the metadata) and apply its expiry to the
        whole conversation (Redis: every key of it). ``migrate`` writes it after the other parts."""
        raise NotSupportedError(f"{type(self).__name__} ({self.backend_name}) cannot store conversation metadata")

    async def _expired_conversations(self, now_ms: int) -> list[str]:
        """Ids of conversations expired at ``now_ms`` and not yet removed."""
        return []

    async def _conversation_load(
        self, conversation_id: str, now_ms: int, *, include_expired: bool
    ) -> tuple[MetaRecord, list[dict[str, Any]]] | None:
        """(metadata, raw history), or None when the conversation is missing (or expired,
        unless ``include_expired``: backends that keep expired data override this to read
        it); without metadata, ``MetaRecord(id, None, ...)``."""
        record = await self._meta_read(conversation_id, now_ms)
        if record is None:
            if not await self._conversation_exists(conversation_id, now_ms):
                return None
            record = MetaRecord(conversation_id, None, None, None, None, None, None)
        return record, await self._read_log(Kind.RAW_MESSAGES, conversation_id)

    async def _conversation_save(self, record: MetaRecord, messages: list[dict[str, Any]], now_ms: int) -> None:
        """Replace the raw history with ``messages`` (``[]`` removes it) and store ``record``."""
        if messages:
            await self._replace_log(Kind.RAW_MESSAGES, record.conversation_id, messages)
        else:
            await self._delete(Kind.RAW_MESSAGES, record.conversation_id)
        await self._meta_put(record.conversation_id, record)

    async def _conversation_append(
        self, created: MetaRecord, messages: list[dict[str, Any]], now_ms: int, *, update_timestamp: bool
    ) -> MetaRecord:
        """Append ``messages`` (maybe none) without reading the history, and return the stored
        metadata: ``created`` with the new count when the conversation had none (or had
        expired), else the stored one with the new count and, if ``update_timestamp``,
        ``updated_ms = now_ms``."""
        conversation_id = created.conversation_id
        if messages:
            count = await self._append_log(Kind.RAW_MESSAGES, conversation_id, messages)
        else:
            count = len(await self._read_log(Kind.RAW_MESSAGES, conversation_id))
        previous = await self._meta_read(conversation_id, now_ms)
        if previous is None or previous.created_ms is None:
            record = dataclasses.replace(created, message_count=count)
        else:
            updated = now_ms if update_timestamp else previous.updated_ms
            record = dataclasses.replace(previous, message_count=count, updated_ms=updated)
        await self._meta_put(conversation_id, record)
        return record

    async def _conversation_set_expiry(
        self, conversation_id: str, ttl: float | None, expires_ms: int | None, now_ms: int
    ) -> bool:
        """Set ``ttl`` and ``expires_ms`` of a live conversation, creating its metadata when it
        has none (times now, the history's length); False when it is missing or expired."""
        record = await self._meta_read(conversation_id, now_ms)
        if record is None:
            if not await self._conversation_exists(conversation_id, now_ms):
                return False
            count = len(await self._read_log(Kind.RAW_MESSAGES, conversation_id))
            record = MetaRecord(conversation_id, now_ms, now_ms, count, None, None, {})
        await self._meta_put(conversation_id, dataclasses.replace(record, ttl=ttl, expires_ms=expires_ms))
        return True

    async def _conversation_exists(self, conversation_id: str, now_ms: int) -> bool:
        """Whether any part of the conversation is stored and it has not expired."""
        return conversation_id in await self._list_conversations()

    async def _meta_scan(self, now_ms: int) -> list[MetaRecord]:
        """The metadata of every live conversation (an empty record for one without)."""
        records = []
        for conversation_id in await self._list_conversations():
            record = await self._meta_read(conversation_id, now_ms)
            records.append(record or MetaRecord(conversation_id, None, None, None, None, None, None))
        return records

    async def _meta_query(self, query: MetaQuery, now_ms: int) -> list[MetaRecord]:
        """Live records matching ``query``, ordered and paged (``MetaQuery.apply`` is the reference)."""
        return query.apply(await self._meta_scan(now_ms))

    async def _meta_count(self, query: MetaQuery, now_ms: int) -> int:
        """How many live records match ``query`` (unpaged)."""
        return len(await self._meta_query(query, now_ms))

    async def _meta_aggregate(
        self, query: MetaQuery, group_by: str | None, measures: dict[str, tuple[str, str | None]], now_ms: int
    ) -> dict[Any, dict[str, Any]]:
        """``conversation_query.aggregate`` over the matching records (times in epoch ms)."""
        return aggregate(await self._meta_query(query, now_ms), group_by, measures)

    async def _remove_expired_conversations(self, now_ms: int) -> int:
        """Remove every expired conversation whole; return how many."""
        expired = await self._expired_conversations(now_ms)
        for conversation_id in expired:
            await self._delete_conversation(conversation_id)
        return len(expired)

    async def _count_expired_conversations(self, now_ms: int) -> int:
        return len(await self._expired_conversations(now_ms))

    # ------------------------------------------------ key-value hooks (docs/kv.md)
    #
    # Records carry epoch-millisecond times; ``now_ms`` is the storage clock's reading for
    # the call. "Live" means not expired at ``now_ms``. A backend without collections
    # inherits these: the reads find nothing and the writes raise NotSupportedError.

    # How many entries KeyValueStore.scan and migrate ask _kv_select for at a time.
    _kv_scan_batch: ClassVar[int] = SCAN_BATCH

    def _kv_unsupported(self) -> NotSupportedError:
        return NotSupportedError(
            f"{type(self).__name__} ({self.backend_name}) does not implement key-value collections"
        )

    async def _kv_get(self, namespace: str, keys: list[str]) -> dict[str, KVRecord]:
        """Records stored under ``keys`` (distinct), expired ones included or not."""
        raise self._kv_unsupported()

    async def _kv_put(self, namespace: str, records: list[KVRecord], now_ms: int, *, if_not_exists: bool) -> bool:
        """Store ``records`` (distinct keys) all or nothing, one atomic step per entry at least.

        A record replacing a live entry keeps that entry's ``created_ms``; an expired entry is
        replaced whole. With ``if_not_exists`` (one record), a live entry wins: return False and
        change nothing; the check and the write must be one atomic step across processes.
        """
        raise self._kv_unsupported()

    async def _kv_delete(self, namespace: str, keys: list[str], now_ms: int) -> int:
        """Remove ``keys`` (distinct), expired ones too; return how many were live."""
        raise self._kv_unsupported()

    async def _kv_select(self, namespace: str, select: KVSelect, now_ms: int) -> list[KVRecord]:
        """Live records matching ``select``, ordered and paged (``KVSelect.apply`` is the reference)."""
        raise self._kv_unsupported()

    async def _kv_keys(self, namespace: str, select: KVSelect, now_ms: int) -> list[str]:
        """Keys of ``_kv_select``; backends that can list keys without values override this."""
        return [record.key for record in await self._kv_select(namespace, select, now_ms)]

    async def _kv_count(self, namespace: str, select: KVSelect, now_ms: int) -> int:
        """How many live records match ``select`` (its limit and offset are None and 0)."""
        return len(await self._kv_keys(namespace, select, now_ms))

    async def _kv_set_expiry(self, namespace: str, key: str, expires_ms: int | None, now_ms: int) -> bool:
        """Set (or with None remove) a live entry's expiry, touching nothing else; False when not live."""
        raise self._kv_unsupported()

    async def _kv_namespaces(self, now_ms: int) -> list[str]:
        """Namespaces holding a live entry."""
        return []

    async def _kv_clear(self, namespace: str, now_ms: int) -> int:
        """Remove every entry of a namespace; return how many were live."""
        raise self._kv_unsupported()

    async def _kv_remove_expired(self, namespace: str | None, now_ms: int) -> int:
        """Remove expired entries of one namespace (None: all); return how many."""
        return 0

    async def _kv_stats(self, now_ms: int) -> tuple[int, int, int, int]:
        """(namespaces with a live entry, live entries, expired entries not yet removed,
        entries that cannot be read); it never raises for a damaged entry."""
        return (0, 0, 0, 0)

    # ------------------------------------------- message store hooks (docs/messages.md)
    #
    # Messages are dicts already checked by MessageStore (``id``, ``from``, ``to`` and
    # ``timestamp`` present); a backend encodes a message before its first await, so the
    # caller mutating its dict later changes nothing stored, and returns fresh copies.
    # A message that cannot be read raises CorruptedDataError (``check_stored_message``).
    # A backend without a message store inherits these: the reads find nothing and the
    # writes raise NotSupportedError.

    def _msg_unsupported(self) -> NotSupportedError:
        return NotSupportedError(f"{type(self).__name__} ({self.backend_name}) does not implement the message store")

    async def _msg_put(self, message: dict[str, Any], *, if_absent: bool) -> bool:
        """Store ``message`` under its id. With ``if_absent``, an id already stored (readable
        or not) wins: return False and change nothing, the check and the write one atomic
        step across processes. Without, replace it (migrate) and return True."""
        raise self._msg_unsupported()

    async def _msg_get(self, message_id: str) -> dict[str, Any] | None:
        """The stored message, or None."""
        return None

    async def _msg_ids(self) -> list[str]:
        """Ids of every stored message, unreadable ones included."""
        return []

    async def _msg_select(self, select: MessageSelect) -> list[dict[str, Any]]:
        """Messages matching ``select`` (a superset and any order will do: the caller applies
        ``select`` again); backends with indexes override this scan of every message."""
        messages = [await self._msg_get(message_id) for message_id in await self._msg_ids()]
        return select.apply(m for m in messages if m is not None)

    async def _msg_readers(self) -> list[str]:
        """Agents with a stored read state."""
        return []

    async def _msg_read_ids(self, agent_id: str) -> list[str]:
        """The agent's read message ids, sorted; [] when none."""
        return []

    async def _msg_add_read(self, agent_id: str, ids: list[str]) -> None:
        """Add ``ids`` (sorted, distinct, non-empty) to the read set: one atomic union
        across processes, so concurrent calls for one agent never lose an id."""
        raise self._msg_unsupported()

    async def _msg_set_read(self, agent_id: str, ids: list[str]) -> None:
        """Replace the read set with ``ids`` (sorted, distinct); [] removes it (migrate)."""
        raise self._msg_unsupported()

    async def _msg_unread(self, agent_id: str) -> set[str]:
        """Ids addressed to the agent not in its read set."""
        read = set(await self._msg_read_ids(agent_id))
        return {m["id"] for m in await self._msg_select(MessageSelect(to=agent_id))} - read

    async def _msg_census(self) -> tuple[int, int, list[Problem]]:
        """(readable messages, agents with a read state, a Problem per unreadable message or
        read state) for stats and verify; never raises for a damaged entity."""
        messages, problems = 0, []
        for message_id in await self._msg_ids():
            try:
                messages += await self._msg_get(message_id) is not None
            except StorageError as e:
                problems.append(Problem(getattr(e, "path", None) or f"message {message_id}", str(e)))
        readers = 0
        for agent_id in await self._msg_readers():
            try:
                await self._msg_read_ids(agent_id)
                readers += 1
            except StorageError as e:
                problems.append(Problem(getattr(e, "path", None) or f"read state of {agent_id}", str(e)))
        return messages, readers, problems


def _check_dict(value: Any, where: str) -> None:
    if not isinstance(value, dict):
        raise SerializationError(f"{where} must be a dict, got {type(value).__name__}", location=where)
    check_value(value, where)


def _check_dict_list(value: Any, where: str) -> None:
    if not isinstance(value, list):
        raise SerializationError(f"{where} must be a list of dicts, got {type(value).__name__}", location=where)
    for index, item in enumerate(value):
        _check_dict(item, f"{where}[{index}]")


# The longest ttl any backend takes: every engine can hold the expiry time it gives (the
# file tree writes it as an ISO 8601 year, Redis as milliseconds, SQLite as an int64).
MAX_TTL_SECONDS = 100 * 365.25 * 24 * 3600  # 100 years: 3,155,760,000 s


def check_ttl(ttl: Any, where: str = "ttl") -> float:
    """``ttl`` as float seconds; InvalidArgumentError unless it is a number in (0, 100 years]."""
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0 < ttl <= MAX_TTL_SECONDS:
        raise InvalidArgumentError(
            f"{where} must be a number of seconds greater than 0 and at most 100 years "
            f"({MAX_TTL_SECONDS:,.0f} s), got {ttl!r}"
        )
    return float(ttl)
