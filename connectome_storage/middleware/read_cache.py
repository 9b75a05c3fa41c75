"""``ReadCache``: an in-process LRU of loaded values in front of any backend.

Correctness comes before hit rate:

* This process's writes invalidate at once. A write to any part of a conversation drops
  every cached part of it; a write the cache cannot place (a whole-store call such as
  ``cleanup()``, a batch of key-value entries) drops everything it might touch, or the
  whole cache. Invalidation happens both before and after the write, and a read that was
  in flight while anything was invalidated does not fill the cache with what it read.
* Other processes' writes are seen within ``ttl`` seconds, measured by the storage's own
  ``clock``. On a backend that can ``watch()`` (the file tree), a background task drops
  the entries of every entity that changes, so there they are seen as soon as the change
  is reported.
* A value that expires by itself (a cache entry, a key-value entry with a ttl, any part
  of a conversation with a TTL) is never served past its own expiry.
* Every value handed out is a copy: mutating it never changes the cache or the store.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import TYPE_CHECKING, Any

import orjson

from ..errors import ConfigError, InvalidArgumentError
from ..interface import MAX_TTL_SECONDS
from ..kv import Entry
from ._base import Middleware, MiddlewareContext

if TYPE_CHECKING:
    from ..interface import ChangeEvent, StorageInterface

__all__ = ["ReadCache"]

logger = logging.getLogger("connectome_storage")

# The point reads the cache answers, and the group of entities ("scope") each one reads:
# a write to any member of a scope drops every cached read of that scope.
_SCOPE_OF_KIND = {
    "conversation": "conversation",
    "raw_messages": "conversation",
    "chunks": "conversation",
    "memories": "conversation",
    "reasoning_chains": "agent",
    "cache": "cache",
    "system": "system",
    "kv": "kv",
}
_CACHED_READS = frozenset(
    {
        "load_conversation",
        "load_raw_messages",
        "load_memories",
        "load_chunks",
        "load_reasoning_chains",
        "load_cache",
        "load_system_state",
        "kv.get",
        "kv.get_entry",
    }
)
# How long the watch gathers a burst of changes (ms): short, since every event only drops entries.
_WATCH_DEBOUNCE_MS = 50
# How long on_open waits for the watch to start before serving from the cache anyway
# (until it has started, nothing is cached, so nothing stale can be served meanwhile).
_WATCH_START_TIMEOUT = 30.0

Scope = tuple[str, str | None, str]  # (scope name, kv namespace or None, id)
CacheKey = tuple[str, str | None, str]  # (operation, kv namespace or None, id)


@dataclasses.dataclass
class _Cached:
    value: Any
    deadline_ms: int  # storage-clock epoch ms from which the entry is no longer served
    scope: Scope


def _copy(value: Any) -> Any:
    """A deep copy of a loaded value: JSON through orjson (fast, exact for every value the
    storage accepts), an ``Entry`` field by field, anything else with ``copy.deepcopy``."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, Entry):
        return dataclasses.replace(value, value=_copy(value.value), tags=dict(value.tags))
    if isinstance(value, dict | list):
        try:
            return orjson.loads(orjson.dumps(value))
        except (TypeError, orjson.JSONEncodeError):
            pass  # not plain JSON (a typed collection's model inside): the slow, general way
    return copy.deepcopy(value)


class ReadCache(Middleware):
    """Serve point reads from memory; see the module docstring for what stays correct.

    ``ttl``: seconds a cached value may be served before it is read again (how stale
    another process's write can look, except on the file tree, which reports changes).
    ``max_entries``: how many values are kept; the least recently used go first.

    One ReadCache serves one storage. ``stats()`` reports hits, misses and entries.
    """

    def __init__(self, ttl: float, max_entries: int = 10_000) -> None:
        if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0 < ttl <= MAX_TTL_SECONDS:
            raise InvalidArgumentError(
                f"ReadCache ttl must be a number of seconds > 0 (at most 100 years), got {ttl!r}"
            )
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise InvalidArgumentError(f"ReadCache max_entries must be an int >= 1, got {max_entries!r}")
        self.ttl = float(ttl)
        self.max_entries = max_entries
        self._ttl_ms = max(1, round(self.ttl * 1000))
        self._storage: StorageInterface | None = None
        self._entries: OrderedDict[CacheKey, _Cached] = OrderedDict()
        self._by_scope: dict[Scope, set[CacheKey]] = {}
        # Bumped by every invalidation: a read fills the cache only if it did not move
        # while the read ran, so a value read before a concurrent write is never kept.
        self._epoch = 0
        self._active = False  # open, and (where it can) watching: only then is anything cached
        self._evicting = False  # the backend drops conversations by itself (memory's LRU)
        self._watch_task: asyncio.Task[None] | None = None
        self._waiter: asyncio.Future[Any] | None = None  # a watch still starting after on_open
        self._hits = 0
        self._misses = 0

    def __repr__(self) -> str:
        return f"ReadCache(ttl={self.ttl!r}, max_entries={self.max_entries!r})"

    # ---------------------------------------------------------------- lifecycle

    def attach(self, storage: StorageInterface) -> None:
        if self._storage is not None and self._storage is not storage:
            raise ConfigError("a ReadCache serves one storage; give each storage its own ReadCache(...)")
        self._storage = storage

    async def on_open(self, storage: StorageInterface) -> None:
        self.clear()  # anything may have changed while the storage was closed
        self._evicting = storage.supports("lru_eviction")
        if storage.supports("watch"):
            ready = asyncio.Event()
            self._watch_task = asyncio.create_task(
                self._watch(storage, ready), name="connectome_storage ReadCache watch"
            )
            waiter = asyncio.ensure_future(ready.wait())
            await asyncio.wait({waiter, self._watch_task}, timeout=_WATCH_START_TIMEOUT, return_when="FIRST_COMPLETED")
            # Watching, or the watch failed (it logged why) and ttl alone applies; a watch
            # still starting after all that time caches nothing until it has started.
            self._active = ready.is_set() or self._watch_task.done()
            if self._active:
                waiter.cancel()
            else:
                logger.warning(
                    "ReadCache: watching %s has not started yet; nothing is cached until it has",
                    storage.backend_name,
                )
                waiter.add_done_callback(lambda done: self._late_start(storage, done))
                self._waiter = waiter
        else:
            self._active = True

    def _late_start(self, storage: StorageInterface, waiter: asyncio.Future[Any]) -> None:
        if not waiter.cancelled() and storage._initialized and self._watch_task is not None:
            self._active = True

    async def on_close(self, storage: StorageInterface) -> None:
        self._active = False
        if self._waiter is not None:
            self._waiter.cancel()
            self._waiter = None
        task, self._watch_task = self._watch_task, None
        if task is not None:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
        self.clear()

    async def _watch(self, storage: StorageInterface, ready: asyncio.Event) -> None:
        try:
            async for event in storage.watch(debounce_ms=_WATCH_DEBOUNCE_MS, ready=ready):
                self._on_change(event)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the tree vanished, the OS ran out of watches: fall back to ttl
            self._watch_lost(storage, f"{type(e).__name__}: {e}")
        else:
            if storage._initialized:  # ended while the storage is still open
                self._watch_lost(storage, "the watch ended")

    def _watch_lost(self, storage: StorageInterface, why: str) -> None:
        logger.warning(
            "ReadCache: watching %s stopped (%s); other processes' changes are now seen within ttl=%s s",
            storage.backend_name, why, self.ttl,
        )  # fmt: skip
        self._invalidate_all()
        self._active = storage._initialized

    def _on_change(self, event: ChangeEvent) -> None:
        self._invalidate(event.kind_name, event.id, event.namespace)

    # --------------------------------------------------------------------- calls

    async def around(self, ctx: MiddlewareContext, call: Callable[[], Awaitable[Any]]) -> Any:
        if ctx.write:
            return await self._write(ctx, call)
        if ctx.operation not in _CACHED_READS or ctx.key is None or not self._active:
            return await call()
        return await self._read(ctx, call)

    async def _write(self, ctx: MiddlewareContext, call: Callable[[], Awaitable[Any]]) -> Any:
        # Before: a read that starts now must not find the old value. After (even on
        # failure, which may have changed part of it): a read that ran meanwhile and
        # cached what it saw half-way is dropped too.
        self._invalidate_for(ctx)
        try:
            return await call()
        finally:
            self._invalidate_for(ctx)

    async def _read(self, ctx: MiddlewareContext, call: Callable[[], Awaitable[Any]]) -> Any:
        storage = self._storage
        assert storage is not None and ctx.key is not None  # attach() ran; around() checked the key
        cache_key: CacheKey = (ctx.operation, ctx.namespace, ctx.key)
        now_ms = storage._now_ms()
        cached = self._entries.get(cache_key)
        if cached is not None:
            if now_ms < cached.deadline_ms:
                self._entries.move_to_end(cache_key)
                self._hits += 1
                return _copy(cached.value)
            self._drop(cache_key)
        self._misses += 1
        epoch = self._epoch
        value = await call()
        deadline_ms = now_ms + self._ttl_ms  # from before the read: never older than ttl when served
        expiry = await self._own_expiry(ctx, value)
        if expiry is False:
            return value  # missing by the time we looked: do not remember anything
        if expiry is not None:
            deadline_ms = min(deadline_ms, expiry)
        if epoch == self._epoch and self._active:
            self._put(cache_key, _Cached(_copy(value), deadline_ms, self._scope(ctx.kind, ctx.key, ctx.namespace)))
        return value

    async def _own_expiry(self, ctx: MiddlewareContext, value: Any) -> int | bool | None:
        """The epoch ms at which the value read expires by itself; None: never; False: it is
        gone now. Cache and key-value values come back without their expiry, so it is
        looked up in the backend's record (an extra read on a miss, never on a hit)."""
        storage = self._storage
        assert storage is not None and ctx.key is not None
        if ctx.operation == "kv.get_entry":
            entry = value
            if isinstance(entry, Entry) and entry.expires_at is not None:
                return round(entry.expires_at.timestamp() * 1000)
            return None
        if value is None:
            return None  # a miss is remembered for ttl like any value (the writes that end it invalidate)
        if ctx.operation == "load_cache":
            record = await storage._read_cache(ctx.key)
            return False if record is None else record.expires_ms
        if ctx.operation == "kv.get":
            records = await storage._kv_get(ctx.namespace or "", [ctx.key])
            kv_record = records.get(ctx.key)
            return False if kv_record is None else kv_record.expires_ms
        if _SCOPE_OF_KIND[ctx.kind] == "conversation":  # a conversation with a TTL expires whole
            metadata = await storage._meta_read(ctx.key, storage._now_ms())
            return None if metadata is None else metadata.expires_ms
        return None

    # ------------------------------------------------------------- bookkeeping

    @staticmethod
    def _scope(kind: str, key: str, namespace: str | None) -> Scope:
        return (_SCOPE_OF_KIND[kind], namespace if kind == "kv" else None, key)

    def _put(self, cache_key: CacheKey, cached: _Cached) -> None:
        if cache_key in self._entries:
            self._drop(cache_key)
        self._entries[cache_key] = cached
        self._by_scope.setdefault(cached.scope, set()).add(cache_key)
        while len(self._entries) > self.max_entries:
            self._drop(next(iter(self._entries)))

    def _drop(self, cache_key: CacheKey) -> None:
        cached = self._entries.pop(cache_key, None)
        if cached is None:
            return
        members = self._by_scope.get(cached.scope)
        if members is not None:
            members.discard(cache_key)
            if not members:
                del self._by_scope[cached.scope]

    def _invalidate_for(self, ctx: MiddlewareContext) -> None:
        if self._evicting or ctx.kind not in _SCOPE_OF_KIND:
            # A whole-store call (cleanup, migrate), an unknown kind, or a backend that
            # evicts other conversations when one is written: drop everything.
            self._invalidate_all()
        elif ctx.key is None:
            self._invalidate_group(ctx.kind, ctx.namespace)
        else:
            self._invalidate(ctx.kind, ctx.key, ctx.namespace)

    def _invalidate(self, kind: str, key: str, namespace: str | None) -> None:
        self._epoch += 1
        if kind not in _SCOPE_OF_KIND:
            self.clear()
            return
        for cache_key in list(self._by_scope.get(self._scope(kind, key, namespace), ())):
            self._drop(cache_key)

    def _invalidate_group(self, kind: str, namespace: str | None) -> None:
        """A write about many ids of one kind at once (``kv.set_many``, ``kv.clear``)."""
        self._epoch += 1
        name = _SCOPE_OF_KIND[kind]
        for scope in [s for s in self._by_scope if s[0] == name and (kind != "kv" or s[1] == namespace)]:
            for cache_key in list(self._by_scope.get(scope, ())):
                self._drop(cache_key)

    def _invalidate_all(self) -> None:
        self._epoch += 1
        self.clear()

    # ------------------------------------------------------------------ public

    def clear(self) -> None:
        """Forget every cached value."""
        self._epoch += 1
        self._entries.clear()
        self._by_scope.clear()

    def stats(self) -> dict[str, int]:
        """``{"entries", "hits", "misses"}`` since the cache was created."""
        return {"entries": len(self._entries), "hits": self._hits, "misses": self._misses}
