"""How a storage runs its middleware around every public method.

``install`` is called by ``StorageInterface.__init__`` only when ``middleware`` is
non-empty, so a storage without middleware has nothing installed and pays nothing. It
looks once at which hooks each middleware overrides; when none overrides a per-call hook
(``Middleware()`` itself, or one that only uses ``attach``/``on_open``/``on_close``), no
public method is wrapped either. Otherwise each public method gets an instance attribute
that runs the chain and then the class's own method, and ``storage.kv(...)`` returns a
``KeyValueStore`` whose methods do the same.

Value hooks work per stored item (a document, each raw message, chunk, memory and
reasoning chain, a cache entry's data, a system state, a key-value entry's value), so
every shape rule of the storage still holds after a middleware changed a value. Ids,
listings, stats, tags and times never go through ``before_write``/``after_read``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ..codec import check_value
from ..errors import ConfigError
from ..kv import DEFAULT_NAMESPACE, Entry, KeyValueStore
from ..naming import check_id
from ._base import CALL_HOOKS, Middleware, MiddlewareContext

if TYPE_CHECKING:
    from ..interface import StorageInterface

__all__ = ["Chain", "bare", "check_middleware", "install", "whole_store"]

logger = logging.getLogger("connectome_storage")

Call = Callable[[], Awaitable[Any]]


def check_middleware(value: Any, name: str) -> tuple[Middleware, ...]:
    """The ``middleware`` option: a list or tuple of Middleware instances (ConfigError otherwise)."""
    if value is None:
        return ()
    if not isinstance(value, list | tuple):
        raise ConfigError(f"{name} must be a list of Middleware instances, got a {type(value).__name__}")
    for index, item in enumerate(value):
        if not isinstance(item, Middleware):
            hint = " (a class: call it, e.g. Compression())" if isinstance(item, type) else ""
            raise ConfigError(
                f"{name}[{index}] is a {type(item).__name__}, not a Middleware instance{hint}; "
                "every item must be an instance of a connectome_storage.middleware.Middleware subclass"
            )
    return tuple(value)


def _overrides(middleware: Middleware, hook: str) -> bool:
    return getattr(type(middleware), hook) is not getattr(Middleware, hook)


def _hooks(middleware: tuple[Middleware, ...], hook: str, *, reverse: bool = False) -> list[Any]:
    ordered = reversed(middleware) if reverse else iter(middleware)
    return [getattr(m, hook) for m in ordered if _overrides(m, hook)]


class Chain:
    """The hooks of one storage's middleware, resolved once, and how a call runs them."""

    def __init__(self, storage: StorageInterface, middleware: tuple[Middleware, ...]) -> None:
        self.middleware = middleware
        self.backend = storage.backend_name
        # List order on the way in, reverse order on the way out.
        self.before_call = _hooks(middleware, "before_call")
        self.before_write = _hooks(middleware, "before_write")
        self.around = _hooks(middleware, "around")
        self.after_read = _hooks(middleware, "after_read", reverse=True)
        self.after_write = _hooks(middleware, "after_write", reverse=True)
        self.on_error = _hooks(middleware, "on_error", reverse=True)
        self.after_call = _hooks(middleware, "after_call", reverse=True)
        self.on_open = _hooks(middleware, "on_open")
        self.on_close = _hooks(middleware, "on_close", reverse=True)
        self.active = any(_overrides(m, hook) for m in middleware for hook in CALL_HOOKS)
        self.originals: dict[str, Any] = {}

    def context(
        self, operation: str, kind: str, key: Any = None, *, write: bool = False, namespace: str | None = None
    ) -> MiddlewareContext:
        return MiddlewareContext(
            operation, kind, key if isinstance(key, str) else None, self.backend, namespace, write, time.perf_counter()
        )

    async def run(self, ctx: MiddlewareContext, body: Call) -> Any:
        """``before_call``, ``body`` (which runs the value hooks and ``around``), ``after_write``;
        ``on_error`` when anything raised; ``after_call`` always, last."""
        try:
            for hook in self.before_call:
                await hook(ctx)
            result = await body()
            if ctx.write:
                for hook in self.after_write:
                    await hook(ctx)
        except BaseException as error:
            # Every layer hears of the failure, and the caller gets the original error even
            # when a hook fails while reporting it.
            for hook in self.on_error:
                await _quietly(hook, ctx, error)
            for hook in self.after_call:
                await _quietly(hook, ctx, error)
            raise
        failure: Exception | None = None
        for hook in self.after_call:
            try:
                await hook(ctx, None)
            except Exception as e:  # the others still run; the first failure is raised after
                failure = failure or e
        if failure is not None:
            raise failure
        return result

    def call(self, ctx: MiddlewareContext, inner: Call) -> Awaitable[Any]:
        """``inner`` (the backend) wrapped in every ``around``, the first middleware outermost."""
        return self._around(ctx, inner, 0)

    def _around(self, ctx: MiddlewareContext, inner: Call, index: int) -> Awaitable[Any]:
        if index == len(self.around):
            return inner()
        return self.around[index](ctx, lambda: self._around(ctx, inner, index + 1))  # type: ignore[no-any-return]

    async def write_value(self, ctx: MiddlewareContext, value: Any) -> Any:
        for hook in self.before_write:
            value = await hook(ctx, value)
        return value

    async def read_value(self, ctx: MiddlewareContext, value: Any) -> Any:
        for hook in self.after_read:
            value = await hook(ctx, value)
        return value

    async def write_memory(self, ctx: MiddlewareContext, memory: dict[str, Any]) -> Any:
        # The memory_id stays plain beside the transformed value: the storage adds it back.
        return await self.write_value(ctx, {k: v for k, v in memory.items() if k != "memory_id"})

    async def read_memory(self, ctx: MiddlewareContext, memory: Any) -> Any:
        if not isinstance(memory, dict) or "memory_id" not in memory:
            return await self.read_value(ctx, memory)
        memory_id = memory["memory_id"]
        value = await self.read_value(ctx, {k: v for k, v in memory.items() if k != "memory_id"})
        return {**value, "memory_id": memory_id} if isinstance(value, dict) else value


async def _quietly(hook: Any, ctx: MiddlewareContext, error: BaseException) -> None:
    try:
        await hook(ctx, error)
    except Exception:
        logger.exception(
            "middleware hook %s failed while %s was failing; the original error propagates", hook, ctx.operation
        )


# ----------------------------------------------------------- the public methods
#
# name -> (kind, key parameter, write, value shape in, value shape out). Shapes: "dict" (one
# dict value), "any" (one JSON value), "dicts" (a list of dict items, each a value),
# "memory" (one memory dict), None (no value). The value argument is the one after the key.

_IN_DICT, _IN_ANY, _IN_DICTS, _IN_MEMORY = "dict", "any", "dicts", "memory"
_OUT_ONE, _OUT_LIST, _OUT_MEMORIES = "one", "list", "memories"

_METHODS: dict[str, tuple[str, str | None, bool, str | None, str | None]] = {
    "store_conversation": ("conversation", "conversation_id", True, _IN_DICT, None),
    "load_conversation": ("conversation", "conversation_id", False, None, _OUT_ONE),
    "list_conversations": ("conversation", None, False, None, None),
    "delete_conversation": ("conversation", "conversation_id", True, None, None),
    "store_raw_messages": ("raw_messages", "conversation_id", True, _IN_DICTS, None),
    "append_raw_messages": ("raw_messages", "conversation_id", True, _IN_DICTS, None),
    "load_raw_messages": ("raw_messages", "conversation_id", False, None, _OUT_LIST),
    "pop_raw_message": ("raw_messages", "conversation_id", True, None, _OUT_ONE),
    "store_memory": ("memories", "conversation_id", True, _IN_MEMORY, None),
    "load_memories": ("memories", "conversation_id", False, None, _OUT_MEMORIES),
    "delete_memory": ("memories", "conversation_id", True, None, None),
    "store_chunks": ("chunks", "conversation_id", True, _IN_DICTS, None),
    "load_chunks": ("chunks", "conversation_id", False, None, _OUT_LIST),
    "store_reasoning_chain": ("reasoning_chains", "agent_id", True, _IN_DICT, None),
    "load_reasoning_chains": ("reasoning_chains", "agent_id", False, None, _OUT_LIST),
    "list_agents": ("reasoning_chains", None, False, None, None),
    "store_cache": ("cache", "cache_key", True, _IN_ANY, None),
    "load_cache": ("cache", "cache_key", False, None, _OUT_ONE),
    "delete_cache": ("cache", "cache_key", True, None, None),
    "list_cache_keys": ("cache", None, False, None, None),
    "cleanup_expired_cache": ("cache", None, True, None, None),
    "store_system_state": ("system", "state_key", True, _IN_ANY, None),
    "load_system_state": ("system", "state_key", False, None, _OUT_ONE),
    "delete_system_state": ("system", "state_key", True, None, None),
    "list_system_states": ("system", None, False, None, None),
    "list_namespaces": ("kv", None, False, None, None),
    "health_check": ("storage", None, False, None, None),
    "get_storage_stats": ("storage", None, False, None, None),
    "verify": ("storage", None, False, None, None),
    "cleanup": ("storage", None, True, None, None),
    # Backend-specific public methods, wrapped when the backend has them.
    "list_backups": ("storage", None, False, None, None),
    "restore_backup": ("storage", None, True, None, None),
    "backup": ("storage", None, False, None, None),
}


def install(storage: StorageInterface, middleware: tuple[Middleware, ...]) -> Chain:
    """Attach ``middleware`` to ``storage`` and wrap its public methods (see the module doc)."""
    chain = Chain(storage, middleware)
    for item in middleware:
        if _overrides(item, "attach"):
            item.attach(storage)
    if chain.on_open or chain.on_close:
        _wrap_lifecycle(storage, chain)
    if chain.active:
        _wrap_methods(storage, chain)
    return chain


def install_in_transaction(view: StorageInterface, storage_chain: Chain) -> None:
    """Run the storage's middleware in a transaction view (docs/transactions.md): the same
    middleware objects, but no ``around`` (a read cache must neither serve a transaction
    what others see nor keep what it has not committed yet) and no attach or lifecycle."""
    if not storage_chain.active:
        return
    chain = Chain(view, storage_chain.middleware)
    chain.around = []
    view._chain = chain
    _wrap_methods(view, chain)


def _wrap_methods(storage: StorageInterface, chain: Chain) -> None:
    cls = type(storage)
    for name, spec in _METHODS.items():
        if getattr(cls, name, None) is None:
            continue
        original = getattr(storage, name)
        chain.originals[name] = original
        setattr(storage, name, _wrap(chain, name, original, *spec))
    storage._plain_kv = lambda namespace: ChainedKeyValueStore(storage, chain, namespace)  # type: ignore[method-assign]
    from ._conversations import ChainedConversationStore

    storage._make_conversation_store = lambda ttl: ChainedConversationStore(storage, chain, ttl)  # type: ignore[method-assign,assignment]
    from ._messages import ChainedMessageStore

    storage._make_message_store = lambda: ChainedMessageStore(storage, chain)  # type: ignore[method-assign]


def _wrap_lifecycle(storage: StorageInterface, chain: Chain) -> None:
    initialize, shutdown = storage.initialize, storage.shutdown

    async def opened() -> bool:
        was_open = storage._initialized
        result = await initialize()
        if not was_open:
            for hook in chain.on_open:
                await hook(storage)
        return result

    async def closed() -> None:
        if not storage._initialized:
            return
        try:
            for hook in chain.on_close:
                await hook(storage)
        finally:
            await shutdown()

    storage.initialize = opened  # type: ignore[method-assign]
    storage.shutdown = closed  # type: ignore[method-assign]


def _argument(args: tuple[Any, ...], kwargs: dict[str, Any], index: int, name: str) -> Any:
    return args[index] if len(args) > index else kwargs.get(name)


def _with_argument(
    args: tuple[Any, ...], kwargs: dict[str, Any], index: int, name: str, value: Any
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if len(args) > index:
        return (*args[:index], value, *args[index + 1 :]), kwargs
    return args, {**kwargs, name: value}


_VALUE_PARAMETER = {
    "store_conversation": "data", "store_raw_messages": "messages", "append_raw_messages": "messages",
    "store_memory": "memory", "store_chunks": "chunks", "store_reasoning_chain": "chain",
    "store_cache": "data", "store_system_state": "data",
}  # fmt: skip


def _wrap(
    chain: Chain, name: str, original: Any, kind: str, key_name: str | None, write: bool,
    shape_in: str | None, shape_out: str | None,
) -> Any:  # fmt: skip
    storage = original.__self__
    value_index = 2 if shape_in == _IN_MEMORY else 1
    value_name = _VALUE_PARAMETER.get(name, "")

    async def method(*args: Any, **kwargs: Any) -> Any:
        key = _argument(args, kwargs, 0, key_name) if key_name else None
        ctx = chain.context(name, kind, key, write=write)

        async def body() -> Any:
            call_args, call_kwargs = args, kwargs
            if shape_in is not None and chain.before_write:
                value = _argument(args, kwargs, value_index, value_name)
                value = await _write_values(chain, ctx, storage, name, key, key_name, shape_in, args, kwargs, value)
                call_args, call_kwargs = _with_argument(args, kwargs, value_index, value_name, value)
            result = await chain.call(ctx, lambda: original(*call_args, **call_kwargs))
            if shape_out is None or not chain.after_read:
                return result
            if shape_out == _OUT_ONE:
                return None if result is None else await chain.read_value(ctx, result)
            if shape_out == _OUT_LIST:
                return [await chain.read_value(ctx, item) for item in result]
            return [await chain.read_memory(ctx, item) for item in result]

        return await chain.run(ctx, body)

    method.__name__ = name
    method.__doc__ = original.__doc__
    return method


async def _write_values(
    chain: Chain, ctx: MiddlewareContext, storage: StorageInterface, name: str, key: Any, key_name: str | None,
    shape: str, args: tuple[Any, ...], kwargs: dict[str, Any], value: Any,
) -> Any:  # fmt: skip
    """The value(s) of a store call after ``before_write``, checked first as the storage checks
    them, so a middleware only ever sees a value the storage would accept."""
    from ..interface import _check_dict, _check_dict_list  # the storage's own checks and messages

    storage._require_initialized()
    check_id(key, key_name or "key")
    if shape == _IN_DICTS:
        _check_dict_list(value, _VALUE_PARAMETER[name])
        return [await chain.write_value(ctx, item) for item in value]
    if shape == _IN_MEMORY:
        memory_id = _argument(args, kwargs, 1, "memory_id")
        check_id(memory_id, "memory_id")
        _check_dict(value, "memory")
        if value.get("memory_id", memory_id) != memory_id:
            return value  # the storage refuses it with its own message
        return await chain.write_memory(ctx, value)
    if shape == _IN_DICT:
        _check_dict(value, _VALUE_PARAMETER[name])
    else:
        check_value(value, "data")
    return await chain.write_value(ctx, value)


def bare(storage: StorageInterface) -> StorageInterface:
    """``storage`` with its public methods as the class defines them, past the middleware
    (migrate and rotate-key copy stored values as they are)."""
    chain: Chain | None = getattr(storage, "_chain", None)
    if chain is None or not chain.originals:
        return storage
    return _Bare(storage, chain.originals)  # type: ignore[return-value]


class _Bare:
    def __init__(self, storage: StorageInterface, originals: dict[str, Any]) -> None:
        self._storage = storage
        self._originals = originals

    def __getattr__(self, name: str) -> Any:
        original = self._originals.get(name)
        return original if original is not None else getattr(self._storage, name)


async def whole_store(storage: StorageInterface, operation: str, write: bool, call: Call) -> Any:
    """Run ``call`` as one whole-store operation of ``storage``'s chain (kind ``"storage"``)."""
    chain: Chain | None = getattr(storage, "_chain", None)
    if chain is None or not chain.active:
        return await call()
    ctx = chain.context(operation, "storage", write=write)
    return await chain.run(ctx, lambda: chain.call(ctx, call))


# ------------------------------------------------------- key-value collections


class ChainedKeyValueStore(KeyValueStore):
    """A KeyValueStore whose every public method goes through the storage's middleware."""

    def __init__(self, storage: StorageInterface, chain: Chain, namespace: str = DEFAULT_NAMESPACE) -> None:
        super().__init__(storage, namespace)
        self._chain = chain

    def _ctx(self, operation: str, key: Any = None, *, write: bool = False) -> MiddlewareContext:
        return self._chain.context(f"kv.{operation}", "kv", key, write=write, namespace=self.namespace)

    async def _run(self, ctx: MiddlewareContext, inner: Call) -> Any:
        chain = self._chain
        return await chain.run(ctx, lambda: chain.call(ctx, inner))

    def _entry_ctx(self, ctx: MiddlewareContext, key: str) -> MiddlewareContext:
        return ctx if ctx.key == key else dataclasses.replace(ctx, key=key)

    async def _read(self, ctx: MiddlewareContext, key: str, value: Any) -> Any:
        if not self._chain.after_read:
            return value
        return await self._chain.read_value(self._entry_ctx(ctx, key), value)

    async def _read_entry(self, ctx: MiddlewareContext, entry: Entry) -> Entry:
        if not self._chain.after_read:
            return entry
        return dataclasses.replace(entry, value=await self._read(ctx, entry.key, entry.value))

    async def _write(self, ctx: MiddlewareContext, key: Any, value: Any) -> Any:
        if not self._chain.before_write:
            return value
        self._now()  # refuses an unopened storage before a middleware sees the value
        check_id(key, "key")
        check_value(value, "value")
        return await self._chain.write_value(self._entry_ctx(ctx, key), value)

    async def set(
        self, key: str, value: Any, *, ttl: float | None = None, tags: Mapping[str, str] | None = None,
        if_not_exists: bool = False,
    ) -> bool:  # fmt: skip
        ctx = self._ctx("set", key, write=True)

        async def body() -> bool:
            stored = await self._write(ctx, key, value)
            return await self._chain.call(  # type: ignore[no-any-return]
                ctx, lambda: KeyValueStore.set(self, key, stored, ttl=ttl, tags=tags, if_not_exists=if_not_exists)
            )

        return await self._chain.run(ctx, body)  # type: ignore[no-any-return]

    async def get(self, key: str) -> Any:
        ctx = self._ctx("get", key)

        async def body() -> Any:
            value = await self._chain.call(ctx, lambda: KeyValueStore.get(self, key))
            return None if value is None else await self._read(ctx, key, value)

        return await self._chain.run(ctx, body)

    async def get_entry(self, key: str) -> Entry | None:
        ctx = self._ctx("get_entry", key)

        async def body() -> Entry | None:
            entry = await self._chain.call(ctx, lambda: KeyValueStore.get_entry(self, key))
            return None if entry is None else await self._read_entry(ctx, entry)

        return await self._chain.run(ctx, body)  # type: ignore[no-any-return]

    async def exists(self, key: str) -> bool:
        return await self._run(self._ctx("exists", key), lambda: KeyValueStore.exists(self, key))  # type: ignore[no-any-return]

    async def delete(self, key: str) -> bool:
        return await self._run(self._ctx("delete", key, write=True), lambda: KeyValueStore.delete(self, key))  # type: ignore[no-any-return]

    async def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        ctx = self._ctx("get_many")

        async def body() -> dict[str, Any]:
            found: dict[str, Any] = await self._chain.call(ctx, lambda: KeyValueStore.get_many(self, keys))
            return {key: await self._read(ctx, key, value) for key, value in found.items()}

        return await self._chain.run(ctx, body)  # type: ignore[no-any-return]

    async def set_many(
        self, items: Mapping[str, Any] | Iterable[tuple[str, Any]], *, ttl: float | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:  # fmt: skip
        ctx = self._ctx("set_many", write=True)

        async def body() -> None:
            pairs = list(items.items() if isinstance(items, Mapping) else items)
            if self._chain.before_write and all(isinstance(p, tuple) and len(p) == 2 for p in pairs):
                pairs = [(key, await self._write(ctx, key, value)) for key, value in pairs]
            await self._chain.call(ctx, lambda: KeyValueStore.set_many(self, pairs, ttl=ttl, tags=tags))

        await self._chain.run(ctx, body)

    async def delete_many(self, keys: Iterable[str]) -> int:
        ctx = self._ctx("delete_many", write=True)
        return await self._run(ctx, lambda: KeyValueStore.delete_many(self, keys))  # type: ignore[no-any-return]

    async def keys(self, pattern: str = "*") -> list[str]:
        return await self._run(self._ctx("keys"), lambda: KeyValueStore.keys(self, pattern))  # type: ignore[no-any-return]

    async def count(self, pattern: str = "*") -> int:
        return await self._run(self._ctx("count"), lambda: KeyValueStore.count(self, pattern))  # type: ignore[no-any-return]

    async def scan(self, pattern: str = "*") -> AsyncIterator[tuple[str, Any]]:
        """As ``KeyValueStore.scan``; ``before_call`` runs at the first step and ``after_call``
        when the iteration ends. A stream has no single awaitable, so ``around`` does not
        wrap a scan."""
        chain = self._chain
        ctx = self._ctx("scan")
        for hook in chain.before_call:
            await hook(ctx)
        error: BaseException | None = None
        try:
            async for key, value in KeyValueStore.scan(self, pattern):
                yield key, await self._read(ctx, key, value)
        except GeneratorExit:  # the caller stopped iterating early: not an error
            raise
        except BaseException as e:
            error = e
            for on_error in chain.on_error:
                await _quietly(on_error, ctx, e)
            raise
        finally:
            for after_call in chain.after_call:
                await _quietly(after_call, ctx, error)  # type: ignore[arg-type]

    async def find_by_tag(self, name: str, value: str) -> list[str]:
        ctx = self._ctx("find_by_tag")
        return await self._run(ctx, lambda: KeyValueStore.find_by_tag(self, name, value))  # type: ignore[no-any-return]

    async def query(self, **filters: Any) -> list[Entry]:
        ctx = self._ctx("query")

        async def body() -> list[Entry]:
            entries: list[Entry] = await self._chain.call(ctx, lambda: KeyValueStore.query(self, **filters))
            return [await self._read_entry(ctx, entry) for entry in entries]

        return await self._chain.run(ctx, body)  # type: ignore[no-any-return]

    async def count_query(self, **filters: Any) -> int:
        return await self._run(self._ctx("count_query"), lambda: KeyValueStore.count_query(self, **filters))  # type: ignore[no-any-return]

    async def expire(self, key: str, ttl: float) -> bool:
        ctx = self._ctx("expire", key, write=True)
        return await self._run(ctx, lambda: KeyValueStore.expire(self, key, ttl))  # type: ignore[no-any-return]

    async def persist(self, key: str) -> bool:
        ctx = self._ctx("persist", key, write=True)
        return await self._run(ctx, lambda: KeyValueStore.persist(self, key))  # type: ignore[no-any-return]

    async def ttl(self, key: str) -> float:
        return await self._run(self._ctx("ttl", key), lambda: KeyValueStore.ttl(self, key))  # type: ignore[no-any-return]

    async def clear(self) -> int:
        return await self._run(self._ctx("clear", write=True), lambda: KeyValueStore.clear(self))  # type: ignore[no-any-return]

    async def cleanup(self) -> int:
        return await self._run(self._ctx("cleanup", write=True), lambda: KeyValueStore.cleanup(self))  # type: ignore[no-any-return]
