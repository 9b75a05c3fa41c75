"""Behaviour of the LangGraph adapters: real StateGraphs, the stored tree, sync calls inside a loop, the store.

The checkpointer's conformance with LangGraph's own suite is in test_langgraph_conformance.py.
Every test here runs on every backend (``make_storage``: memory, file, sqlite, redis) unless it
is about the file tree itself.
"""

from __future__ import annotations

import asyncio
import enum
import json
import operator
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Annotated, Any, TypedDict

import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.store.base import BaseStore

from connectome_storage import StorageInterface, create_file_storage
from connectome_storage.adapters.langgraph import ConnectomeCheckpointSaver, ConnectomeStore
from connectome_storage.errors import SerializationError, StorageError

from ..conftest import FakeClock

Make = Callable[..., StorageInterface]
# A hang detector, not a speed assertion: a deadlocked sync call would never return.
HANG_SECONDS = 60


@contextmanager
def hang_guard(seconds: int = HANG_SECONDS) -> Iterator[None]:
    """Raise TimeoutError in this (the main) thread if the body has not finished after ``seconds``."""

    def expired(signum: int, frame: FrameType | None) -> None:
        raise TimeoutError(f"no answer after {seconds} s: the call is deadlocked")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


class Colour(enum.StrEnum):
    RED = "red"


class State(TypedDict):
    count: int
    steps: Annotated[list[str], operator.add]
    messages: Annotated[list[Any], add_messages]


def build_graph(checkpointer: ConnectomeCheckpointSaver, store: BaseStore | None = None) -> Any:
    def bump(state: State) -> dict[str, Any]:
        return {"count": state["count"] + 1, "steps": ["bump"]}

    def reply(state: State) -> dict[str, Any]:
        return {"messages": [AIMessage(content=f"count is {state['count']}", id=f"ai-{state['count']}")]}

    builder = StateGraph(State)
    builder.add_node("bump", bump)
    builder.add_node("reply", reply)
    builder.add_edge(START, "bump")
    builder.add_edge("bump", "reply")
    builder.add_edge("reply", END)
    return builder.compile(checkpointer=checkpointer, store=store)


def turn(n: int) -> dict[str, Any]:
    return {"messages": [HumanMessage(content=f"turn {n}", id=f"human-{n}")]}


THREAD = {"configurable": {"thread_id": "thread-1"}}


# ---------------------------------------------------------------- graphs


async def test_graph_resumes_its_thread_from_a_new_saver(make_storage: Make) -> None:
    first = ConnectomeCheckpointSaver(make_storage())
    out = await build_graph(first).ainvoke({"count": 0, **turn(1)}, THREAD)
    assert out["count"] == 1
    await first.aclose()

    # A new storage object over the same data (as another process would open it) resumes the thread.
    second = ConnectomeCheckpointSaver(make_storage())
    graph = build_graph(second)
    out = await graph.ainvoke(turn(2), THREAD)
    assert out["count"] == 2
    assert out["steps"] == ["bump", "bump"]
    assert [m.content for m in out["messages"]] == ["turn 1", "count is 1", "turn 2", "count is 2"]
    assert isinstance(out["messages"][1], AIMessage)
    history = [snapshot async for snapshot in graph.aget_state_history(THREAD)]
    # Each run: its input (with the start task), then bump and reply, newest first.
    assert [s.metadata["step"] for s in history] == [6, 5, 4, 3, 2, 1, 0, -1]
    other = await graph.aget_state({"configurable": {"thread_id": "thread-2"}})
    assert other.values == {}
    await second.aclose()


async def test_sync_graph_from_plain_thread(make_storage: Make) -> None:
    saver = ConnectomeCheckpointSaver(make_storage())
    graph = build_graph(saver)

    def run() -> dict[str, Any]:
        graph.invoke({"count": 10, **turn(1)}, THREAD)
        return dict(graph.invoke(turn(2), THREAD))

    out = await asyncio.to_thread(run)
    assert out["count"] == 12
    assert len(list(saver.list(THREAD, limit=3))) == 3
    await saver.aclose()


async def test_sync_methods_inside_the_running_loop_do_not_deadlock(make_storage: Make) -> None:
    """graph.invoke / get_state called straight from async code, blocking this loop's thread."""
    saver = ConnectomeCheckpointSaver(make_storage())  # unopened: the saver opens it on its own thread
    graph = build_graph(saver)
    with hang_guard():
        graph.invoke({"count": 0, **turn(1)}, THREAD)
        out = graph.invoke(turn(2), THREAD)
        state = graph.get_state(THREAD)
    assert out["count"] == 2
    assert state.values["count"] == 2
    # The async path over the same saver, on this loop, sees the same thread.
    assert (await graph.aget_state(THREAD)).values["count"] == 2
    with hang_guard():
        saver.delete_thread("thread-1")
    assert await saver.aget_tuple(THREAD) is None
    await saver.aclose()


async def test_opened_storage_sync_call_in_its_own_loop_fails_fast(make_storage: Make) -> None:
    async with make_storage() as storage:
        saver = ConnectomeCheckpointSaver(storage)
        await build_graph(saver).ainvoke({"count": 0, **turn(1)}, THREAD)
        with hang_guard(), pytest.raises(StorageError, match="use the async a\\* method"):
            saver.get_tuple(THREAD)
        # From another thread the caller's loop is free to serve the call.
        tup = await asyncio.to_thread(saver.get_tuple, THREAD)
        assert tup is not None and tup.checkpoint["channel_values"]["count"] == 1


# ---------------------------------------------------------------- what is stored


async def test_checkpoint_entry_is_readable_json(tmp_path: Path, clock: FakeClock) -> None:
    storage = create_file_storage(tmp_path / "tree", clock=clock)
    saver = ConnectomeCheckpointSaver(storage)
    await build_graph(saver).ainvoke({"count": 41, **turn(1)}, THREAD)
    tup = await saver.aget_tuple(THREAD)
    assert tup is not None
    await saver.aclose()
    folder = tmp_path / "tree" / "kv" / "langgraph_checkpoints"
    path = folder / f"{tup.config['configurable']['checkpoint_id']}.json"
    files = sorted(folder.iterdir())
    assert len(files) == 4  # input, the start task, bump, reply
    entry = json.loads(next(f for f in files if tup.config["configurable"]["checkpoint_id"] in f.name).read_text())
    assert path.name.endswith(".json")
    value = entry["value"]
    assert value["thread_id"] == "thread-1" and value["checkpoint_ns"] == ""
    assert value["channel_values"]["count"] == 42  # plain JSON, as it is
    assert value["channel_values"]["steps"] == ["bump"]
    # LangChain messages in LangChain's own JSON form, readable and typed.
    messages = value["channel_values"]["messages"]
    assert [m["kwargs"]["content"] for m in messages] == ["turn 1", "count is 42"]
    assert messages[1]["id"][-1] == "AIMessage"
    assert value["encoded"] == {"channel_values": {"messages": "lc"}}
    assert value["metadata"]["step"] == 2
    assert entry["tags"]["thread_id"] == "thread-1"
    assert entry["tags"]["meta:source"] == "s:loop"


async def test_explicit_serde_writes_nothing_in_clear(tmp_path: Path, clock: FakeClock) -> None:
    storage = create_file_storage(tmp_path / "tree", clock=clock)
    saver = ConnectomeCheckpointSaver(storage, serde=JsonPlusSerializer())
    await build_graph(saver).ainvoke({"count": 7, **turn(1)}, THREAD)
    await saver.aclose()
    text = "".join(p.read_text() for p in (tmp_path / "tree" / "kv").rglob("*.json"))
    assert "turn 1" not in text and "count is 8" not in text
    saver = ConnectomeCheckpointSaver(create_file_storage(tmp_path / "tree", clock=clock), serde=JsonPlusSerializer())
    tup = await saver.aget_tuple(THREAD)
    assert tup is not None
    assert tup.checkpoint["channel_values"]["count"] == 8
    assert tup.checkpoint["channel_values"]["messages"][1].content == "count is 8"
    await saver.aclose()


async def test_values_that_are_not_json_round_trip(make_storage: Make) -> None:
    saver = ConnectomeCheckpointSaver(make_storage())
    values = {
        "set": {1, 2}, "bytes": b"\x00\xff", "frozen": frozenset({"x"}), "float": 1.5, "text": "ok",
        "enum": Colour.RED, "nested_enum": {"colour": Colour.RED},
    }  # fmt: skip
    config = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
    checkpoint = {
        "v": 4, "id": "1f0c0a1e-0000-6000-8000-000000000001", "ts": "2026-11-21T09:30:00+00:00",
        "channel_values": values, "channel_versions": dict.fromkeys(values, 1), "versions_seen": {},
        "updated_channels": None,
    }  # fmt: skip
    stored = await saver.aput(config, checkpoint, {"source": "input", "step": -1}, dict.fromkeys(values, 1))  # type: ignore[arg-type]
    await saver.aput_writes(stored, [("set", {3})], "task-1")
    tup = await saver.aget_tuple(stored)
    assert tup is not None
    assert tup.checkpoint["channel_values"] == values
    assert type(tup.checkpoint["channel_values"]["frozen"]) is frozenset
    # An enum is a str to JSON, but must come back an enum: the serde keeps it, not plain JSON.
    assert type(tup.checkpoint["channel_values"]["enum"]) is Colour
    assert type(tup.checkpoint["channel_values"]["nested_enum"]["colour"]) is Colour
    assert tup.pending_writes == [("task-1", "set", {3})]
    # What even LangGraph's serializer cannot hold fails as a StorageError naming the channel.
    bad = {**checkpoint, "id": "1f0c0a1e-0000-6000-8000-000000000002", "channel_values": {"huge": 2**70}}
    with pytest.raises(SerializationError, match="channel 'huge'"):
        await saver.aput(config, bad, {"source": "input", "step": -1}, {"huge": 1})  # type: ignore[arg-type]
    await saver.aclose()


async def test_list_filters_by_metadata_before_and_limit(make_storage: Make) -> None:
    saver = ConnectomeCheckpointSaver(make_storage())
    graph = build_graph(saver)
    for n in range(3):
        await graph.ainvoke({"count": 0, **turn(n)} if n == 0 else turn(n), THREAD)
    everything = [t async for t in saver.alist(THREAD)]
    ids = [t.config["configurable"]["checkpoint_id"] for t in everything]
    assert ids == sorted(ids, reverse=True) and len(ids) == 12  # 4 a run: input, start task, bump, reply
    inputs = [t async for t in saver.alist(THREAD, filter={"source": "input"})]
    assert len(inputs) == 3 and all(t.metadata["source"] == "input" for t in inputs)
    by_step = [t async for t in saver.alist(THREAD, filter={"step": 4, "source": "loop"})]
    assert [t.metadata["step"] for t in by_step] == [4]
    before = {"configurable": {"thread_id": "thread-1", "checkpoint_id": ids[3]}}
    page = [t.config["configurable"]["checkpoint_id"] async for t in saver.alist(THREAD, before=before, limit=2)]
    assert page == ids[4:6]
    # A filter value no tag can carry (a dict) is checked on the stored metadata instead.
    parents = [t async for t in saver.alist(THREAD, filter={"parents": {}}, limit=1)]
    assert len(parents) == 1 and parents[0].config["configurable"]["checkpoint_id"] == ids[0]
    # Across threads: newest first by checkpoint id.
    await graph.ainvoke({"count": 0, **turn(9)}, {"configurable": {"thread_id": "thread-2"}})
    across = [t.config["configurable"]["checkpoint_id"] async for t in saver.alist(None, limit=5)]
    assert across == sorted(across, reverse=True) and len(across) == 5
    await saver.aclose()


# ---------------------------------------------------------------- the store


async def test_store_get_put_delete_and_search(make_storage: Make, clock: FakeClock) -> None:
    store = ConnectomeStore(make_storage())
    await store.aput(("users", "ada"), "prefs", {"theme": "dark", "score": 5, "nested": {"lang": "en"}})
    clock.advance(1)
    await store.aput(("users", "ada"), "profile", {"theme": "light", "score": 9})
    clock.advance(1)
    await store.aput(("users", "bob"), "prefs", {"theme": "dark", "score": 7})
    await store.aput(("usersX",), "prefs", {"theme": "dark", "score": 1})

    item = await store.aget(("users", "ada"), "prefs")
    assert item is not None and item.value["theme"] == "dark" and item.namespace == ("users", "ada")
    assert await store.aget(("users", "ada"), "missing") is None

    found = await store.asearch(("users",))
    assert [(i.namespace, i.key) for i in found] == [
        (("users", "bob"), "prefs"), (("users", "ada"), "profile"), (("users", "ada"), "prefs"),
    ]  # fmt: skip
    assert [i.key for i in await store.asearch(("users",), filter={"theme": "dark"})] == ["prefs", "prefs"]
    assert [i.namespace for i in await store.asearch(("users",), filter={"score": {"$gte": 6}})] == [
        ("users", "bob"), ("users", "ada"),
    ]  # fmt: skip
    assert [i.key for i in await store.asearch(("users",), filter={"nested": {"lang": "en"}})] == ["prefs"]
    paged = await store.asearch(("users",), filter={"theme": "dark"}, limit=1, offset=1)
    assert [(i.namespace, i.key) for i in paged] == [(("users", "ada"), "prefs")]
    assert [i.key for i in await store.asearch(("users",), limit=2, offset=1)] == ["profile", "prefs"]
    assert len(await store.asearch(())) == 4

    await store.adelete(("users", "ada"), "prefs")
    assert await store.aget(("users", "ada"), "prefs") is None
    await store.aclose()


async def test_store_list_namespaces(make_storage: Make) -> None:
    store = ConnectomeStore(make_storage())
    for ns in [("a", "b", "c"), ("a", "b", "d"), ("a", "x"), ("z", "b", "c")]:
        await store.aput(ns, "k", {"v": 1})
    assert await store.alist_namespaces() == [("a", "b", "c"), ("a", "b", "d"), ("a", "x"), ("z", "b", "c")]
    assert await store.alist_namespaces(prefix=("a", "b")) == [("a", "b", "c"), ("a", "b", "d")]
    assert await store.alist_namespaces(suffix=("c",)) == [("a", "b", "c"), ("z", "b", "c")]
    assert await store.alist_namespaces(prefix=("*", "b")) == [("a", "b", "c"), ("a", "b", "d"), ("z", "b", "c")]
    assert await store.alist_namespaces(max_depth=2) == [("a", "b"), ("a", "x"), ("z", "b")]
    assert await store.alist_namespaces(limit=2, offset=1) == [("a", "b", "d"), ("a", "x")]
    await store.aclose()


async def test_store_ttl_in_minutes_refreshed_on_read(make_storage: Make, clock: FakeClock) -> None:
    store = ConnectomeStore(make_storage())
    assert store.supports_ttl
    await store.aput(("s",), "kept", {"v": 1}, ttl=1)
    await store.aput(("s",), "unread", {"v": 2}, ttl=1)
    await store.aput(("s",), "forever", {"v": 3})
    clock.advance(50)
    assert await store.aget(("s",), "kept") is not None  # refreshes: another minute from now
    assert await store.aget(("s",), "unread", refresh_ttl=False) is not None
    clock.advance(50)
    assert await store.aget(("s",), "kept") is not None
    assert await store.aget(("s",), "unread") is None
    clock.advance(61)
    assert await store.aget(("s",), "kept") is None
    assert [i.key for i in await store.asearch(("s",))] == ["forever"]
    await store.aclose()


async def test_store_sync_inside_running_loop_and_through_a_graph(make_storage: Make) -> None:
    storage = make_storage()
    store = ConnectomeStore(storage)
    saver = ConnectomeCheckpointSaver(storage)  # the same storage: one private loop for both

    def remember(state: State, *, store: BaseStore) -> dict[str, Any]:
        seen = store.get(("memories", "ada"), "visits")
        visits = (seen.value["n"] if seen else 0) + 1
        store.put(("memories", "ada"), "visits", {"n": visits})
        return {"count": visits}

    builder = StateGraph(State)
    builder.add_node("remember", remember)
    builder.add_edge(START, "remember")
    graph = builder.compile(checkpointer=saver, store=store)
    with hang_guard():
        graph.invoke({"count": 0, "steps": [], "messages": []}, {"configurable": {"thread_id": "a"}})
        out = graph.invoke({"count": 0}, {"configurable": {"thread_id": "b"}})
        assert store.get(("memories", "ada"), "visits").value == {"n": 2}  # type: ignore[union-attr]
    assert out["count"] == 2
    item = await store.aget(("memories", "ada"), "visits")
    assert item is not None and item.value == {"n": 2}
    await store.aclose()


async def test_langchain_and_langgraph_adapters_share_one_storage(make_storage: Make) -> None:
    """Both frameworks' adapters over one unopened storage: one private loop, so Redis connections never mix loops."""
    from connectome_storage.adapters.langchain import ConnectomeStore as LangChainStore

    storage = make_storage()
    docs = LangChainStore(storage)
    saver = ConnectomeCheckpointSaver(storage)
    with hang_guard():
        docs.mset([("doc:1", {"title": "notes"})])
        build_graph(saver).invoke({"count": 0, **turn(1)}, THREAD)
        assert docs.mget(["doc:1"]) == [{"title": "notes"}]
    assert (await saver.aget_tuple(THREAD)) is not None
    assert await docs.amget(["doc:1"]) == [{"title": "notes"}]
    saver.close()  # shuts the storage down for both
