"""LangChain: ``ConnectomeStore``, ``ConnectomeLLMCache`` and ``ConnectomeChatMessageHistory``.

```python
from langchain_core.globals import set_llm_cache
from connectome_storage import create_storage_from_env
from connectome_storage.adapters.langchain import ConnectomeLLMCache, ConnectomeStore

storage = create_storage_from_env()          # not initialized: the adapters open it
set_llm_cache(ConnectomeLLMCache(storage, ttl=3600))
store = ConnectomeStore(storage)             # BaseStore[str, Any] over storage.kv("langchain")
store.mset([("user:1", {"name": "Ada"})])
```

LangChain calls both the sync and the async forms of these classes, sync ones often from
inside a running event loop. A storage's connections (aiosqlite, the Redis asyncio client)
belong to the loop they were opened on, so the adapters never run storage work on the
caller's loop unless the caller opened the storage there:

- Given an *unopened* storage (the recommended way), the adapters open it on a private
  event-loop thread and run every call there: a sync method waits for it (from any thread,
  inside a running loop too, without blocking that loop's other work on the storage), an
  async method awaits it through ``asyncio.wrap_future``. Every adapter over the same
  storage shares that one thread; ``close()`` (or ``aclose()``) shuts the storage down.
- Given a storage the caller already opened, async methods await it directly on the
  caller's loop. Sync methods then need that loop to be running in another thread; called
  on the loop's own thread they raise ``StorageError`` at once instead of hanging.

Needs the ``langchain`` extra (``pip install connectome-storage[langchain]``).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from ..interface import StorageInterface, check_ttl
from ..naming import check_id
from ._bridge import StorageBridge

try:
    from langchain_core._api import suppress_langchain_beta_warning
    from langchain_core.caches import RETURN_VAL_TYPE, BaseCache
    from langchain_core.chat_history import BaseChatMessageHistory
    from langchain_core.load import dumpd, load
    from langchain_core.messages import BaseMessage, message_to_dict, messages_from_dict
    from langchain_core.outputs import Generation
    from langchain_core.stores import BaseStore
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "connectome_storage.adapters.langchain needs langchain-core: pip install 'connectome-storage[langchain]'"
    ) from e

__all__ = ["ConnectomeChatMessageHistory", "ConnectomeLLMCache", "ConnectomeStore"]

logger = logging.getLogger("connectome_storage")

# Cache keys of ConnectomeLLMCache: this prefix and the sha256 of (llm_string, prompt), so
# that clear() finds its own entries among everything else in the storage's cache.
CACHE_PREFIX = "langchain-llm-"


class _Adapter:
    """What the three classes share: the bridge and the close methods."""

    _bridge: StorageBridge

    def close(self) -> None:
        """Shut down the storage if the adapters opened it (every adapter over it stops with it)."""
        self._bridge.close()

    async def aclose(self) -> None:
        """``close()`` for async code."""
        await self._bridge.aclose()


# ------------------------------------------------------------------ ConnectomeStore


def _glob_prefix(prefix: str) -> str:
    """A glob matching every key that starts with ``prefix`` (its own glob characters made literal)."""
    return "".join(f"[{char}]" if char in "*?[" else char for char in prefix) + "*"


class ConnectomeStore(_Adapter, BaseStore[str, Any]):
    """LangChain ``BaseStore[str, Any]`` over the key-value collection ``storage.kv(namespace)``.

    Values are JSON (dict, list, str, int, float, bool, None); anything else raises
    ``SerializationError`` and nothing is written. ``mset`` is all or nothing.
    """

    def __init__(self, storage: StorageInterface, namespace: str = "langchain") -> None:
        self.namespace = check_id(namespace, "namespace")
        self._bridge = StorageBridge(storage)

    def __repr__(self) -> str:
        return f"ConnectomeStore({self._bridge.storage!r}, {self.namespace!r})"

    async def _mget(self, storage: StorageInterface, keys: list[str]) -> list[Any]:
        found = await storage.kv(self.namespace).get_many(keys)
        return [found.get(key) for key in keys]

    async def _mset(self, storage: StorageInterface, pairs: list[tuple[str, Any]]) -> None:
        await storage.kv(self.namespace).set_many(pairs)

    async def _mdelete(self, storage: StorageInterface, keys: list[str]) -> None:
        await storage.kv(self.namespace).delete_many(keys)

    async def _keys(self, storage: StorageInterface, prefix: str | None) -> list[str]:
        return await storage.kv(self.namespace).keys(_glob_prefix(prefix or ""))

    def mget(self, keys: Sequence[str]) -> list[Any]:
        keys = list(keys)
        return self._bridge.run(lambda s: self._mget(s, keys))

    async def amget(self, keys: Sequence[str]) -> list[Any]:
        keys = list(keys)
        return await self._bridge.arun(lambda s: self._mget(s, keys))

    def mset(self, key_value_pairs: Sequence[tuple[str, Any]]) -> None:
        pairs = list(key_value_pairs)
        self._bridge.run(lambda s: self._mset(s, pairs))

    async def amset(self, key_value_pairs: Sequence[tuple[str, Any]]) -> None:
        pairs = list(key_value_pairs)
        await self._bridge.arun(lambda s: self._mset(s, pairs))

    def mdelete(self, keys: Sequence[str]) -> None:
        keys = list(keys)
        self._bridge.run(lambda s: self._mdelete(s, keys))

    async def amdelete(self, keys: Sequence[str]) -> None:
        keys = list(keys)
        await self._bridge.arun(lambda s: self._mdelete(s, keys))

    def yield_keys(self, *, prefix: str | None = None) -> Iterator[str]:
        """Sorted keys (those starting with ``prefix`` when given)."""
        yield from self._bridge.run(lambda s: self._keys(s, prefix))

    async def ayield_keys(self, *, prefix: str | None = None) -> AsyncIterator[str]:
        for key in await self._bridge.arun(lambda s: self._keys(s, prefix)):
            yield key


# --------------------------------------------------------------- ConnectomeLLMCache


class ConnectomeLLMCache(_Adapter, BaseCache):
    """LangChain ``BaseCache`` over the storage's LLM generation cache.

    One cache entry per (prompt, llm_string) under ``langchain-llm-<sha256>`` (ids have a
    length limit; prompts do not). The stored value stays readable: ``{"prompt",
    "llm_string", "generations"}``, the generations in LangChain's own JSON form
    (``langchain_core.load.dumpd``). ``ttl`` seconds (None: the storage's
    ``default_cache_ttl``). ``clear()`` removes this adapter's entries only.
    """

    def __init__(self, storage: StorageInterface, *, ttl: float | None = None) -> None:
        self.ttl = None if ttl is None else check_ttl(ttl)
        self._bridge = StorageBridge(storage)

    def __repr__(self) -> str:
        return f"ConnectomeLLMCache({self._bridge.storage!r}, ttl={self.ttl!r})"

    @staticmethod
    def cache_key(prompt: str, llm_string: str) -> str:
        """The storage cache key of one (prompt, llm_string)."""
        digest = hashlib.sha256()
        for part in (llm_string, prompt):  # length-prefixed, so no two pairs share a hash input
            data = part.encode("utf-8", "surrogatepass")
            digest.update(len(data).to_bytes(8, "big"))
            digest.update(data)
        return CACHE_PREFIX + digest.hexdigest()

    async def _lookup(self, storage: StorageInterface, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        stored = await storage.load_cache(self.cache_key(prompt, llm_string))
        if not isinstance(stored, dict) or stored.get("prompt") != prompt or stored.get("llm_string") != llm_string:
            return None
        with suppress_langchain_beta_warning():  # load() is marked beta; dumpd's output is its stable input
            generations = [load(item, allowed_objects="core") for item in stored.get("generations", [])]
        if not all(isinstance(g, Generation) for g in generations):
            logger.warning("langchain cache entry for %r holds something other than generations", prompt[:80])
            return None
        return generations

    async def _update(
        self, storage: StorageInterface, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE
    ) -> None:
        value = {"prompt": prompt, "llm_string": llm_string, "generations": [dumpd(g) for g in return_val]}
        await storage.store_cache(self.cache_key(prompt, llm_string), value, ttl=self.ttl)

    async def _clear(self, storage: StorageInterface) -> None:
        for key in await storage.list_cache_keys():
            if key.startswith(CACHE_PREFIX):
                await storage.delete_cache(key)
        # Expired entries are not listed; removing them is what cleanup is for anyway.
        await storage.cleanup_expired_cache()

    def lookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        return self._bridge.run(lambda s: self._lookup(s, prompt, llm_string))

    async def alookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        return await self._bridge.arun(lambda s: self._lookup(s, prompt, llm_string))

    def update(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        self._bridge.run(lambda s: self._update(s, prompt, llm_string, return_val))

    async def aupdate(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        await self._bridge.arun(lambda s: self._update(s, prompt, llm_string, return_val))

    def clear(self, **kwargs: Any) -> None:
        """Remove every entry this cache stored (other cache entries stay)."""
        self._bridge.run(self._clear)

    async def aclear(self, **kwargs: Any) -> None:
        await self._bridge.arun(self._clear)


# ------------------------------------------------------ ConnectomeChatMessageHistory


class ConnectomeChatMessageHistory(_Adapter, BaseChatMessageHistory):
    """LangChain ``BaseChatMessageHistory`` over the raw messages of conversation ``session_id``.

    Each message is stored as LangChain's readable dict (``message_to_dict``:
    ``{"type": "human", "data": {"content": ...}}``), oldest first.
    """

    def __init__(self, session_id: str, storage: StorageInterface) -> None:
        self.session_id = check_id(session_id, "session_id")
        self._bridge = StorageBridge(storage)

    def __repr__(self) -> str:
        return f"ConnectomeChatMessageHistory({self.session_id!r}, {self._bridge.storage!r})"

    async def _load(self, storage: StorageInterface) -> list[BaseMessage]:
        return messages_from_dict(await storage.load_raw_messages(self.session_id))

    async def _append(self, storage: StorageInterface, messages: list[BaseMessage]) -> None:
        if messages:
            await storage.append_raw_messages(self.session_id, [message_to_dict(m) for m in messages])

    async def _clear(self, storage: StorageInterface) -> None:
        await storage.store_raw_messages(self.session_id, [])

    @property
    def messages(self) -> list[BaseMessage]:  # type: ignore[override]
        return self._bridge.run(self._load)

    async def aget_messages(self) -> list[BaseMessage]:
        return await self._bridge.arun(self._load)

    def add_messages(self, messages: Sequence[BaseMessage]) -> None:
        batch = list(messages)
        self._bridge.run(lambda s: self._append(s, batch))

    async def aadd_messages(self, messages: Sequence[BaseMessage]) -> None:
        batch = list(messages)
        await self._bridge.arun(lambda s: self._append(s, batch))

    def clear(self) -> None:
        self._bridge.run(self._clear)

    async def aclear(self) -> None:
        await self._bridge.arun(self._clear)
