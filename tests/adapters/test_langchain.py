"""The LangChain adapters' own behaviour, on every backend: what is stored and how it reads,
TTL, clear() scope, chat history, and sync methods called inside a running event loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, Generation

from connectome_storage import StorageInterface
from connectome_storage.adapters.langchain import (
    CACHE_PREFIX,
    ConnectomeChatMessageHistory,
    ConnectomeLLMCache,
    ConnectomeStore,
)
from connectome_storage.errors import InvalidArgumentError, SerializationError, StorageError

from ..conftest import FakeClock

Make = Callable[..., StorageInterface]
HANG_LIMIT = 60.0  # seconds: a hang detector, not a speed assertion


def run_in_fresh_thread(scenario: Callable[[], Awaitable[Any]]) -> Any:
    """Run ``scenario`` in its own event loop on another thread; fail instead of hanging the suite."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = asyncio.run(scenario())  # type: ignore[arg-type]
        except BaseException as e:
            outcome["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(HANG_LIMIT)
    assert not thread.is_alive(), "a sync adapter method called inside a running event loop hung"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


async def reopened(make_storage: Make, read: Callable[[StorageInterface], Awaitable[Any]]) -> Any:
    async with make_storage() as storage:
        return await read(storage)


# --------------------------------------------------------------------------- store


async def test_store_values_are_kv_entries(make_storage: Make) -> None:
    store = ConnectomeStore(make_storage(), namespace="lc")
    try:
        await store.amset([("user:1", {"name": "Ada"}), ("user:2", [1, 2])])
        store_sync_keys = await asyncio.to_thread(lambda: list(store.yield_keys(prefix="user:")))
        assert store_sync_keys == ["user:1", "user:2"]
    finally:
        await store.aclose()
    entry = await reopened(make_storage, lambda s: s.kv("lc").get_entry("user:1"))
    assert entry.value == {"name": "Ada"}


async def test_store_prefix_is_literal(make_storage: Make) -> None:
    store = ConnectomeStore(make_storage())
    try:
        await store.amset([("a*b", 1), ("axb", 2), ("a[b", 3), ("a?", 4), ("az", 5)])
        assert [k async for k in store.ayield_keys(prefix="a*")] == ["a*b"]
        assert [k async for k in store.ayield_keys(prefix="a[")] == ["a[b"]
        assert [k async for k in store.ayield_keys(prefix="a?")] == ["a?"]
        assert len([k async for k in store.ayield_keys()]) == 5
    finally:
        await store.aclose()


async def test_store_mset_is_all_or_nothing(make_storage: Make) -> None:
    store = ConnectomeStore(make_storage())
    try:
        with pytest.raises(SerializationError):
            await store.amset([("ok", 1), ("bad", b"bytes")])
        assert await store.amget(["ok", "bad"]) == [None, None]
    finally:
        await store.aclose()


# ----------------------------------------------------------------------- LLM cache


async def test_cache_entry_is_readable(make_storage: Make) -> None:
    cache = ConnectomeLLMCache(make_storage())
    generation = ChatGeneration(message=AIMessage(content="Paris"), generation_info={"finish_reason": "stop"})
    try:
        await cache.aupdate("Capital of France?", "model=x", [generation])
        assert await cache.alookup("Capital of France?", "model=x") == [generation]
        assert await cache.alookup("Capital of France?", "model=y") is None
    finally:
        await cache.aclose()
    key = ConnectomeLLMCache.cache_key("Capital of France?", "model=x")
    assert key.startswith(CACHE_PREFIX) and len(key) == len(CACHE_PREFIX) + 64
    stored = await reopened(make_storage, lambda s: s.load_cache(key))
    assert stored["prompt"] == "Capital of France?" and stored["llm_string"] == "model=x"
    assert stored["generations"][0]["kwargs"]["message"]["kwargs"]["content"] == "Paris"


async def test_cache_key_separates_prompt_from_llm_string() -> None:
    assert ConnectomeLLMCache.cache_key("ab", "c") != ConnectomeLLMCache.cache_key("a", "bc")
    assert ConnectomeLLMCache.cache_key("x" * 100_000, "m").startswith(CACHE_PREFIX)


async def test_cache_ttl(make_storage: Make, clock: FakeClock) -> None:
    cache = ConnectomeLLMCache(make_storage(), ttl=60)
    try:
        await cache.aupdate("p", "m", [Generation(text="t")])
        clock.advance(59)
        assert await cache.alookup("p", "m") == [Generation(text="t")]
        clock.advance(2)
        assert await cache.alookup("p", "m") is None
    finally:
        await cache.aclose()


def test_cache_ttl_is_checked() -> None:
    with pytest.raises(InvalidArgumentError):
        ConnectomeLLMCache(None, ttl=0)  # type: ignore[arg-type]


async def test_cache_clear_keeps_other_entries(make_storage: Make) -> None:
    storage = make_storage()
    cache = ConnectomeLLMCache(storage)
    try:
        await cache.aupdate("p1", "m", [Generation(text="1")])
        await cache.aupdate("p2", "m", [Generation(text="2")])
        await cache._bridge.arun(lambda s: s.store_cache("someone-else", {"keep": True}))
        await cache.aclear()
        assert await cache.alookup("p1", "m") is None
        assert await cache._bridge.arun(lambda s: s.list_cache_keys()) == ["someone-else"]
    finally:
        await cache.aclose()


# -------------------------------------------------------------------- chat history


async def test_chat_history_is_stored_as_readable_dicts(make_storage: Make, backend: str, tmp_path: Path) -> None:
    history = ConnectomeChatMessageHistory("chat-1", make_storage())
    try:
        await history.aadd_messages([SystemMessage(content="Be brief."), HumanMessage(content="Hi")])
        await asyncio.to_thread(history.add_ai_message, "Hello!")
        messages = await history.aget_messages()
        assert [type(m) for m in messages] == [SystemMessage, HumanMessage, AIMessage]
        assert await asyncio.to_thread(lambda: history.messages) == messages
    finally:
        await history.aclose()
    stored = await reopened(make_storage, lambda s: s.load_raw_messages("chat-1"))
    assert [(m["type"], m["data"]["content"]) for m in stored] == [
        ("system", "Be brief."),
        ("human", "Hi"),
        ("ai", "Hello!"),
    ]
    if backend == "file":
        path = tmp_path / "storage_data" / "conversations" / "chat-1" / "raw_messages.json"
        assert orjson.loads(path.read_bytes()) == stored


async def test_chat_history_clear(make_storage: Make) -> None:
    history = ConnectomeChatMessageHistory("chat-1", make_storage())
    try:
        await history.aadd_messages([HumanMessage(content="Hi")])
        await history.aclear()
        assert await history.aget_messages() == []
        await history.aadd_messages([])
        assert await history.aget_messages() == []
    finally:
        await history.aclose()


# ------------------------------------------------ sync methods inside a running loop


def test_sync_methods_inside_a_running_loop(make_storage: Make) -> None:
    """Each class's sync forms, called from a coroutine, neither hang nor break the loop."""

    async def scenario() -> tuple[Any, ...]:
        storage = make_storage()
        store, cache = ConnectomeStore(storage), ConnectomeLLMCache(storage)
        history = ConnectomeChatMessageHistory("chat-1", storage)
        try:
            store.mset([("k", {"v": 1})])  # sync, on the loop's own thread
            cache.update("p", "m", [Generation(text="t")])
            history.add_messages([HumanMessage(content="Hi")])
            ticks = 0

            async def ticker() -> None:  # the loop keeps running other work between the calls
                nonlocal ticks
                ticks += 1

            await ticker()
            return (
                store.mget(["k"]),
                list(store.yield_keys()),
                cache.lookup("p", "m"),
                history.messages,
                await store.amget(["k"]),  # async after sync, same objects
                ticks,
            )
        finally:
            cache.clear()
            history.clear()
            await store.aclose()

    got = run_in_fresh_thread(scenario)
    assert got == ([{"v": 1}], ["k"], [Generation(text="t")], [HumanMessage(content="Hi")], [{"v": 1}], 1)


def test_adapters_over_one_storage_share_one_thread(make_storage: Make) -> None:
    storage = make_storage()
    store, history = ConnectomeStore(storage), ConnectomeChatMessageHistory("c", storage)
    try:
        store.mset([("k", 1)])
        history.add_messages([HumanMessage(content="Hi")])
        assert store._bridge._thread is history._bridge._thread is not None
    finally:
        store.close()
    assert not storage._initialized  # close() shut the storage the adapters opened


def test_caller_opened_storage(make_storage: Make) -> None:
    """A storage the caller opened stays on the caller's loop; sync calls inside it fail fast."""

    async def scenario() -> tuple[Any, ...]:
        async with make_storage() as storage:
            store = ConnectomeStore(storage)
            await store.amset([("k", 1)])
            with pytest.raises(StorageError, match="inside the event loop"):
                store.mget(["k"])
            from_thread = await asyncio.to_thread(store.mget, ["k"])  # the loop is free: this works
            await store.aclose()  # leaves the caller's storage open
            return from_thread, storage._initialized, await store.amget(["k"])

    assert run_in_fresh_thread(scenario) == ([1], True, [1])
