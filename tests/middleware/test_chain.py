"""The middleware chain: order, per-item values, hooks not overridden, around, errors, and
that every public method (section 2 and key-value) passes through it, on every backend."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from connectome_storage import StorageInterface, create_memory_storage, migrate
from connectome_storage.errors import ConfigError, InvalidKeyError, StorageNotInitializedError
from connectome_storage.middleware import Middleware, MiddlewareContext

from .conftest import Recorder, Wrap

MakeStorage = Callable[..., StorageInterface]

STORAGE_OPERATIONS = {
    "store_conversation", "load_conversation", "list_conversations", "delete_conversation",
    "store_raw_messages", "append_raw_messages", "load_raw_messages", "pop_raw_message",
    "store_memory", "load_memories", "delete_memory", "store_chunks", "load_chunks",
    "store_reasoning_chain", "load_reasoning_chains", "list_agents",
    "store_cache", "load_cache", "delete_cache", "list_cache_keys", "cleanup_expired_cache",
    "store_system_state", "load_system_state", "delete_system_state", "list_system_states",
    "list_namespaces", "health_check", "get_storage_stats", "verify", "cleanup",
}  # fmt: skip
KV_OPERATIONS = {
    f"kv.{name}"
    for name in (
        "set", "get", "get_entry", "exists", "delete", "get_many", "set_many", "delete_many", "keys",
        "scan", "count", "find_by_tag", "query", "count_query", "expire", "persist", "ttl", "clear", "cleanup",
    )
}  # fmt: skip
# The store's delete, list and get_stats call the storage's own public methods (above).
STORE_OPERATIONS = {
    f"conversation_store.{name}"
    for name in ("save", "append", "load", "exists", "clear", "cleanup", "get_ttl", "set_ttl", "query", "count",
                 "aggregate")
}  # fmt: skip


async def exercise(storage: StorageInterface) -> None:
    """Call every public data method once (the kv ones too)."""
    await storage.store_conversation("c1", {"title": "t"})
    await storage.load_conversation("c1")
    await storage.list_conversations()
    await storage.store_raw_messages("c1", [{"n": 1}, {"n": 2}])
    await storage.append_raw_messages("c1", [{"n": 3}])
    await storage.load_raw_messages("c1")
    await storage.pop_raw_message("c1")
    await storage.store_memory("c1", "m1", {"text": "x"})
    await storage.load_memories("c1")
    await storage.delete_memory("c1", "m1")
    await storage.store_chunks("c1", [{"c": 1}])
    await storage.load_chunks("c1")
    await storage.store_reasoning_chain("a1", {"step": 1})
    await storage.load_reasoning_chains("a1")
    await storage.list_agents()
    await storage.store_cache("k1", {"v": 1}, ttl=60)
    await storage.load_cache("k1")
    await storage.list_cache_keys()
    await storage.delete_cache("k1")
    await storage.cleanup_expired_cache()
    await storage.store_system_state("s1", [1, 2])
    await storage.load_system_state("s1")
    await storage.list_system_states()
    await storage.delete_system_state("s1")
    await storage.delete_conversation("c1")
    kv = storage.kv("ns")
    await kv.set("a", {"v": 1}, tags={"t": "1"})
    await kv.get("a")
    await kv.get_entry("a")
    await kv.exists("a")
    await kv.set_many({"b": 2, "c": 3})
    await kv.get_many(["a", "b"])
    await kv.keys()
    await kv.count()
    assert [key async for key, _ in kv.scan()] == ["a", "b", "c"]
    await kv.find_by_tag("t", "1")
    await kv.query(prefix="a")
    await kv.count_query(prefix="a")
    await kv.expire("a", 60)
    await kv.persist("a")
    await kv.ttl("a")
    await kv.delete("c")
    await kv.delete_many(["b"])
    await kv.cleanup()
    await kv.clear()
    store = storage.conversation_store()
    await store.save("s1", [{"n": 1}], metadata={"k": "v"})
    await store.append("s1", [{"n": 2}])
    await store.load("s1")
    await store.exists("s1")
    await store.set_ttl("s1", 60)
    await store.get_ttl("s1")
    await store.query().where("metadata.k", "==", "v").all()
    await store.query().count()
    await store.query().aggregate(n="count")
    await store.list()
    await store.get_stats()
    await store.cleanup()
    await store.delete("s1")
    await store.clear()
    await storage.list_namespaces()
    await storage.health_check()
    await storage.get_storage_stats()
    await storage.verify()
    await storage.cleanup()


async def test_every_public_method_passes_through_the_chain(make_storage: MakeStorage) -> None:
    log: list[tuple[str, str, str]] = []
    recorder = Recorder("A", log)
    async with make_storage(middleware=[recorder]) as storage:
        await exercise(storage)
    seen_before = {op for _name, hook, op in log if hook == "before_call"}
    seen_after = {op for _name, hook, op in log if hook == "after_call"}
    assert seen_before == STORAGE_OPERATIONS | KV_OPERATIONS | STORE_OPERATIONS
    assert seen_after == seen_before
    assert all(error is None for error in recorder.errors)
    # The context names what each call is about.
    by_operation = {ctx.operation: ctx for ctx in recorder.contexts}
    assert by_operation["store_memory"].kind == "memories"
    assert by_operation["store_memory"].key == "c1"
    assert by_operation["store_memory"].write is True
    assert by_operation["load_cache"].kind == "cache" and by_operation["load_cache"].write is False
    assert by_operation["kv.set"].kind == "kv" and by_operation["kv.set"].namespace == "ns"
    assert by_operation["kv.set"].key == "a"
    assert by_operation["get_storage_stats"].kind == "storage" and by_operation["get_storage_stats"].key is None
    assert by_operation["list_conversations"].key is None
    assert all(ctx.backend == storage.backend_name for ctx in recorder.contexts)
    assert all(ctx.namespace is None for ctx in recorder.contexts if ctx.kind != "kv")


async def test_list_order_in_and_reverse_order_out(make_storage: MakeStorage) -> None:
    log: list[tuple[str, str, str]] = []
    async with make_storage(middleware=[Recorder("A", log), Recorder("B", log)]) as storage:
        log.clear()
        await storage.store_conversation("c1", {"x": 1})
        assert [(name, hook) for name, hook, _op in log] == [
            ("A", "before_call"), ("B", "before_call"),
            ("A", "before_write"), ("B", "before_write"),
            ("A", "around:start"), ("B", "around:start"), ("B", "around:end"), ("A", "around:end"),
            ("B", "after_write"), ("A", "after_write"),
            ("B", "after_call"), ("A", "after_call"),
        ]  # fmt: skip
        log.clear()
        await storage.load_conversation("c1")
        assert [(name, hook) for name, hook, _op in log] == [
            ("A", "before_call"), ("B", "before_call"),
            ("A", "around:start"), ("B", "around:start"), ("B", "around:end"), ("A", "around:end"),
            ("B", "after_read"), ("A", "after_read"),
            ("B", "after_call"), ("A", "after_call"),
        ]  # fmt: skip


async def test_values_are_transformed_per_item_and_keep_every_shape(make_storage: MakeStorage) -> None:
    outer, inner = Wrap("outer"), Wrap("inner")
    async with make_storage(middleware=[outer, inner]) as storage:
        await storage.store_conversation("c1", {"title": "t"})
        await storage.store_raw_messages("c1", [{"n": 1}, {"n": 2}])
        assert await storage.append_raw_messages("c1", [{"n": 3}]) == 3
        await storage.store_memory("c1", "m1", {"text": "one"})
        await storage.store_memory("c1", "m2", {"text": "two", "memory_id": "m2"})
        await storage.store_memory("c1", "m1", {"text": "one again"})
        await storage.store_chunks("c1", [{"c": 1}, {"c": 2}])
        await storage.store_reasoning_chain("a1", {"step": 1})
        await storage.store_reasoning_chain("a1", {"step": 2})
        await storage.store_cache("k1", "text", ttl=60)
        await storage.store_system_state("s1", 42)
        await storage.kv("ns").set("a", [1, 2], tags={"t": "x"})
        await storage.kv("ns").set_many({"b": "B", "c": None})

        # Read back through the chain: what was stored.
        assert await storage.load_conversation("c1") == {"title": "t"}
        assert await storage.load_raw_messages("c1") == [{"n": 1}, {"n": 2}, {"n": 3}]
        assert await storage.pop_raw_message("c1") == {"n": 3}
        assert await storage.load_memories("c1") == [
            {"text": "one again", "memory_id": "m1"}, {"text": "two", "memory_id": "m2"}
        ]  # fmt: skip
        assert await storage.load_chunks("c1") == [{"c": 1}, {"c": 2}]
        assert await storage.load_reasoning_chains("a1") == [{"step": 1}, {"step": 2}]
        assert await storage.load_cache("k1") == "text"
        assert await storage.load_system_state("s1") == 42
        kv = storage.kv("ns")
        assert await kv.get("a") == [1, 2]
        assert await kv.get_many(["a", "b", "c"]) == {"a": [1, 2], "b": "B", "c": None}
        assert [(k, v) async for k, v in kv.scan()] == [("a", [1, 2]), ("b", "B"), ("c", None)]
        assert [entry.value for entry in await kv.query(tags={"t": "x"})] == [[1, 2]]
        entry = await kv.get_entry("a")
        assert entry is not None and entry.value == [1, 2] and entry.tags == {"t": "x"}

    # One before_write per item; the memory's id stays out of the value; each kv entry's own key.
    assert [value for _key, value in outer.written[:4]] == [{"title": "t"}, {"n": 1}, {"n": 2}, {"n": 3}]
    assert outer.written[4] == ("c1", {"text": "one"})
    assert outer.written[5] == ("c1", {"text": "two"})
    assert [key for key, _value in outer.written[-3:]] == ["a", "b", "c"]

    # The same data without middleware: the stored form (the outer layer transforms first,
    # the inner one, nearer the backend, last), and every shape rule held (a dict per
    # message, the memory id plain beside the value).
    def wrapped(value: Any) -> dict[str, Any]:
        return {"$wrapped": ["inner", {"$wrapped": ["outer", value]}]}

    async with make_storage() as plain:
        assert await plain.load_conversation("c1") == wrapped({"title": "t"})
        assert await plain.load_raw_messages("c1") == [wrapped({"n": 1}), wrapped({"n": 2})]
        assert await plain.load_memories("c1") == [
            {**wrapped({"text": "one again"}), "memory_id": "m1"}, {**wrapped({"text": "two"}), "memory_id": "m2"}
        ]  # fmt: skip
        assert await plain.load_chunks("c1") == [wrapped({"c": 1}), wrapped({"c": 2})]
        assert await plain.load_reasoning_chains("a1") == [wrapped({"step": 1}), wrapped({"step": 2})]
        assert await plain.load_cache("k1") == wrapped("text")
        assert await plain.load_system_state("s1") == wrapped(42)
        entry = await plain.kv("ns").get_entry("a")
        assert entry is not None and entry.value == wrapped([1, 2]) and entry.tags == {"t": "x"}
        assert await plain.kv("ns").find_by_tag("t", "x") == ["a"]


async def test_the_conversation_store_passes_messages_through_the_value_hooks(make_storage: MakeStorage) -> None:
    wrap = Wrap("w")
    async with make_storage(middleware=[wrap]) as storage:
        store = storage.conversation_store()
        saved = await store.save("c1", [{"n": 1}], metadata={"team": "blue"})
        assert saved.messages == [{"n": 1}]  # the caller's messages, not the stored form
        await store.append("c1", [{"n": 2}])
        loaded = await store.load("c1")
        assert loaded is not None and loaded.messages == [{"n": 1}, {"n": 2}]
        assert await storage.load_raw_messages("c1") == [{"n": 1}, {"n": 2}]
    assert wrap.written == [("c1", {"n": 1}), ("c1", {"n": 2})]  # messages only: metadata is not a value
    async with make_storage() as plain:
        assert await plain.load_raw_messages("c1") == [{"$wrapped": ["w", {"n": 1}]}, {"$wrapped": ["w", {"n": 2}]}]
        plain_loaded = await plain.conversation_store().load("c1")
        assert plain_loaded is not None and plain_loaded.metadata.metadata == {"team": "blue"}


async def test_a_hook_not_overridden_is_never_called(
    make_storage: MakeStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []

    def counting(hook: str) -> Any:
        original = getattr(Middleware, hook)

        async def hooked(self: Middleware, *args: Any) -> Any:
            calls.append(hook)
            return await original(self, *args)

        return hooked

    for hook in ("before_call", "before_write", "after_read", "after_write", "on_error", "after_call", "around"):
        monkeypatch.setattr(Middleware, hook, counting(hook))

    class OnlyBefore(Middleware):
        def __init__(self) -> None:
            self.seen = 0

        async def before_call(self, ctx: MiddlewareContext) -> None:
            self.seen += 1

    only = OnlyBefore()
    async with make_storage(middleware=[Middleware(), only]) as storage:
        await exercise(storage)
        with pytest.raises(InvalidKeyError):
            await storage.load_conversation("")
    assert only.seen > len(STORAGE_OPERATIONS)
    assert calls == []  # the base class's hooks (here counting) were never run


async def test_a_middleware_overriding_nothing_installs_nothing(make_storage: MakeStorage) -> None:
    storage = make_storage(middleware=[Middleware()])
    assert "load_conversation" not in vars(storage) and "kv" not in vars(storage)
    async with storage:
        await storage.store_conversation("c1", {"a": 1})
        assert await storage.load_conversation("c1") == {"a": 1}
    with_hook = make_storage(middleware=[Recorder("A", [])])
    assert "load_conversation" in vars(with_hook)


class Memo(Middleware):
    """An ``around`` that answers repeated reads itself and changes what it returns."""

    def __init__(self) -> None:
        self.cache: dict[tuple[str, str | None], Any] = {}
        self.backend_calls = 0

    async def around(self, ctx: MiddlewareContext, call: Callable[[], Awaitable[Any]]) -> Any:
        if ctx.operation != "load_system_state":
            return await call()
        if (ctx.operation, ctx.key) in self.cache:
            return self.cache[(ctx.operation, ctx.key)]
        self.backend_calls += 1
        result = await call()
        self.cache[(ctx.operation, ctx.key)] = {"memo": result}
        return {"memo": result}


async def test_around_wraps_the_backend_and_can_answer_itself(make_storage: MakeStorage) -> None:
    log: list[tuple[str, str, str]] = []
    memo = Memo()
    async with make_storage(middleware=[Recorder("A", log), memo]) as storage:
        await storage.store_system_state("s", 1)
        assert await storage.load_system_state("s") == {"memo": 1}
        await storage.store_system_state("s", 2)  # a stale answer: this around never invalidates
        assert await storage.load_system_state("s") == {"memo": 1}
        assert memo.backend_calls == 1
        # The outer layer saw the inner around's answer through its own after_read.
        assert ("A", "after_read", "load_system_state") in log


class Failing(Middleware):
    def __init__(self) -> None:
        self.errors: list[BaseException] = []

    async def on_error(self, ctx: MiddlewareContext, error: BaseException) -> None:
        self.errors.append(error)
        raise RuntimeError("a broken on_error must not hide the real error")


async def test_errors_propagate_after_on_error(make_storage: MakeStorage) -> None:
    log: list[tuple[str, str, str]] = []
    outer, failing = Recorder("A", log), Failing()
    storage = make_storage(middleware=[outer, failing])
    with pytest.raises(StorageNotInitializedError):
        await storage.load_conversation("c1")
    assert isinstance(failing.errors[-1], StorageNotInitializedError)
    async with storage:
        log.clear()
        with pytest.raises(InvalidKeyError):
            await storage.store_conversation("bad\x00id", {"a": 1})
        assert [(name, hook) for name, hook, _op in log] == [
            ("A", "before_call"),
            ("A", "on_error"),
            ("A", "after_call"),
        ]
        assert isinstance(outer.errors[-1], InvalidKeyError)
        assert isinstance(failing.errors[-1], InvalidKeyError)
        with pytest.raises(InvalidKeyError):
            await storage.kv("ns").set("", 1)
        assert isinstance(outer.errors[-1], InvalidKeyError)
        assert await storage.list_conversations() == []  # nothing was written
        assert outer.errors[-1] is None


async def test_values_are_checked_before_a_middleware_sees_them(make_storage: MakeStorage) -> None:
    wrap = Wrap()
    async with make_storage(middleware=[wrap]) as storage:
        from connectome_storage.errors import SerializationError

        with pytest.raises(SerializationError):
            await storage.store_conversation("c1", {"x": float("nan")})
        with pytest.raises(SerializationError):
            await storage.store_raw_messages("c1", [{"a": 1}, "not a dict"])  # type: ignore[list-item]
        with pytest.raises(InvalidKeyError):
            await storage.store_memory("c1", "m1", {"memory_id": "m2"})
        with pytest.raises(SerializationError):
            await storage.kv().set("k", {1: 2})
        assert wrap.written == []
        assert await storage.list_conversations() == []


class Lifecycle(Middleware):
    def __init__(self) -> None:
        self.events: list[str] = []

    def attach(self, storage: StorageInterface) -> None:
        self.events.append(f"attach:{storage.backend_name}")

    async def on_open(self, storage: StorageInterface) -> None:
        self.events.append("open")

    async def on_close(self, storage: StorageInterface) -> None:
        self.events.append("close")


async def test_attach_open_and_close(make_storage: MakeStorage) -> None:
    life = Lifecycle()
    storage = make_storage(middleware=[life])
    assert life.events == [f"attach:{storage.backend_name}"]
    async with storage:
        await storage.initialize()  # already open: no second on_open
    await storage.shutdown()  # already closed: no second on_close
    assert life.events == [f"attach:{storage.backend_name}", "open", "close"]


async def test_migrate_copies_stored_values_as_they_are(make_storage: MakeStorage) -> None:
    log: list[tuple[str, str, str]] = []
    async with make_storage(middleware=[Wrap(), Recorder("src", log)]) as source:
        await source.store_conversation("c1", {"title": "t"})
        await source.store_memory("c1", "m1", {"text": "x"})
        await source.store_cache("k", 1)
        await source.kv("ns").set("a", "v")
        log.clear()
        recorder = Recorder("dst", log)
        async with create_memory_storage(middleware=[recorder]) as destination:
            report = await migrate(source, destination)
            assert (report.conversations, report.memories, report.cache_entries, report.kv_entries) == (1, 1, 1, 1)
            # One whole-store call on each side, the destination's inside the source's; no
            # value hook ran.
            assert log == [
                ("src", "before_call", "migrate"), ("src", "around:start", "migrate"),
                ("dst", "before_call", "migrate"), ("dst", "around:start", "migrate"),
                ("dst", "around:end", "migrate"), ("dst", "after_write", "migrate"), ("dst", "after_call", "migrate"),
                ("src", "around:end", "migrate"), ("src", "after_call", "migrate"),
            ]  # fmt: skip
            assert recorder.contexts[0].kind == "storage" and recorder.contexts[0].write
            # Stored values arrive as stored: still wrapped.
            assert await destination.load_conversation("c1") == {"$wrapped": ["w", {"title": "t"}]}
            assert await destination.load_memories("c1") == [{"$wrapped": ["w", {"text": "x"}], "memory_id": "m1"}]
            assert await destination.kv("ns").get("a") == {"$wrapped": ["w", "v"]}


@pytest.mark.parametrize("bad", [[object()], "Middleware", [Middleware], 3])
def test_the_option_takes_middleware_instances_only(bad: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        create_memory_storage(middleware=bad)
    assert "middleware" in str(caught.value)
    name = type(bad[0]).__name__ if isinstance(bad, list) else type(bad).__name__
    assert name in str(caught.value)


def test_the_context_is_a_frozen_record() -> None:
    ctx = MiddlewareContext("load_cache", "cache", "k", "file", None, False, time.perf_counter())
    with pytest.raises(AttributeError):
        ctx.key = "other"  # type: ignore[misc]


DOCS = Path(__file__).resolve().parents[2] / "docs" / "middleware.md"


@pytest.mark.parametrize("section", ["Middleware", "A custom middleware", "Encryption", "Compression"])
def test_the_docs_examples_run(section: str, tmp_path: Path) -> None:
    """Every python block of these sections of docs/middleware.md, as it is, in a fresh interpreter."""
    text = DOCS.read_text("utf-8")
    parts = {part.split("\n", 1)[0].strip("# "): part for part in ("\n" + text).split("\n## ")}
    body = parts[section] if section != "Middleware" else text.split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", body, re.S)
    assert blocks, section
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CONNECTOME_STORAGE_")}
    clean["PYTHONPATH"] = str(DOCS.parents[1])
    for code in blocks:
        result = subprocess.run(
            [sys.executable, "-c", code], cwd=tmp_path, env=clean, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stderr
    if section == "A custom middleware":
        assert "refused:" in result.stdout and "[] 3" in result.stdout
    if section == "Encryption":
        assert "DecryptionError: cannot decrypt the memories of conversation 'c1'" in result.stdout
        assert "['alice']" in result.stdout
