"""ReadCache on every backend: copies, own writes, other writers (ttl, or the file tree's
watch), values that expire by themselves, the LRU bound and a read racing a write."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from connectome_storage import StorageInterface, create_memory_storage, migrate
from connectome_storage.errors import InvalidArgumentError
from connectome_storage.middleware import Middleware, MiddlewareContext, ReadCache

from ..conftest import FakeClock
from .conftest import Wrap

Make = Callable[..., StorageInterface]

# Generous bound for a change made elsewhere to reach this process; never a speed claim.
HANG_GUARD_SECONDS = 30.0


async def eventually(read: Callable[[], Awaitable[Any]], expected: Any) -> Any:
    """Poll ``read`` until it returns ``expected``; fail after HANG_GUARD_SECONDS."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + HANG_GUARD_SECONDS
    while True:
        value = await read()
        if value == expected or loop.time() > deadline:
            return value
        await asyncio.sleep(0.02)


async def fill(storage: StorageInterface) -> None:
    await storage.store_conversation("c1", {"title": "one"})
    await storage.store_raw_messages("c1", [{"role": "user", "content": "hi"}])
    await storage.store_memory("c1", "m1", {"fact": "likes tea"})
    await storage.store_chunks("c1", [{"start": 0, "end": 1}])
    await storage.store_reasoning_chain("a1", {"step": 1})
    await storage.store_cache("k1", {"answer": 42})
    await storage.store_system_state("s1", {"mode": "on"})
    await storage.kv("ns").set("key", {"n": 1}, tags={"t": "x"})


async def read_all(storage: StorageInterface) -> dict[str, Any]:
    entry = await storage.kv("ns").get_entry("key")
    return {
        "conversation": await storage.load_conversation("c1"),
        "raw": await storage.load_raw_messages("c1"),
        "memories": await storage.load_memories("c1"),
        "chunks": await storage.load_chunks("c1"),
        "chains": await storage.load_reasoning_chains("a1"),
        "cache": await storage.load_cache("k1"),
        "system": await storage.load_system_state("s1"),
        "kv": await storage.kv("ns").get("key"),
        "entry": None if entry is None else (entry.value, entry.tags),
    }


async def test_hits_return_copies(make_storage: Make) -> None:
    cache = ReadCache(ttl=60)
    async with make_storage(middleware=[cache]) as storage:
        await fill(storage)
        first = await read_all(storage)
        assert cache.stats()["misses"] == 9
        # Mutate everything the first and second reads returned.
        for values in (first, await read_all(storage)):
            values["conversation"]["title"] = "changed"
            values["raw"][0]["content"] = "changed"
            values["raw"].append({"role": "x"})
            values["memories"][0]["fact"] = "changed"
            values["chunks"].clear()
            values["chains"][0]["step"] = 99
            values["cache"]["answer"] = 0
            values["system"]["mode"] = "off"
            values["kv"]["n"] = 0
        entry = await storage.kv("ns").get_entry("key")
        assert entry is not None
        entry.value["n"] = 0
        entry.tags["t"] = "changed"
        assert cache.stats()["hits"] >= 9
        again = await read_all(storage)
    assert again == {
        "conversation": {"title": "one"},
        "raw": [{"role": "user", "content": "hi"}],
        "memories": [{"fact": "likes tea", "memory_id": "m1"}],
        "chunks": [{"start": 0, "end": 1}],
        "chains": [{"step": 1}],
        "cache": {"answer": 42},
        "system": {"mode": "on"},
        "kv": {"n": 1},
        "entry": ({"n": 1}, {"t": "x"}),
    }


async def test_other_writers_are_seen_within_ttl(make_storage: Make, clock: FakeClock, backend: str) -> None:
    if backend == "file":
        pytest.skip("the file tree sees other writers at once (test_file_tree_sees_other_writers_at_once)")
    cache = ReadCache(ttl=30)
    async with make_storage(middleware=[cache]) as reader, make_storage() as writer:
        await fill(writer)
        before = await read_all(reader)
        await writer.store_conversation("c1", {"title": "two"})
        await writer.append_raw_messages("c1", [{"role": "assistant", "content": "hello"}])
        await writer.store_system_state("s1", {"mode": "off"})
        await writer.kv("ns").set("key", {"n": 2})
        await writer.delete_cache("k1")
        clock.advance(29)
        assert await read_all(reader) == before  # served from the cache: within ttl, stale is allowed
        clock.advance(1)
        after = await read_all(reader)
    assert after["conversation"] == {"title": "two"}
    assert len(after["raw"]) == 2
    assert after["system"] == {"mode": "off"}
    assert after["kv"] == {"n": 2}
    assert after["cache"] is None


@pytest.mark.parametrize("backend", ["file"])
async def test_file_tree_sees_other_writers_at_once(make_storage: Make) -> None:
    """The clock never moves, so only the watch can end the cached values."""
    cache = ReadCache(ttl=3600)
    async with make_storage(middleware=[cache]) as reader, make_storage() as writer:
        await fill(writer)
        await read_all(reader)
        await read_all(reader)
        assert cache.stats()["hits"] == 9
        await writer.store_conversation("c1", {"title": "two"})
        assert await eventually(lambda: reader.load_conversation("c1"), {"title": "two"}) == {"title": "two"}
        await writer.store_memory("c1", "m2", {"fact": "new"})
        expected = [{"fact": "likes tea", "memory_id": "m1"}, {"fact": "new", "memory_id": "m2"}]
        assert await eventually(lambda: reader.load_memories("c1"), expected) == expected
        await writer.kv("ns").set("key", {"n": 2})
        assert await eventually(lambda: reader.kv("ns").get("key"), {"n": 2}) == {"n": 2}
        await writer.delete_conversation("c1")
        assert await eventually(lambda: reader.load_raw_messages("c1"), []) == []
        await writer.store_cache("k1", "other")
        assert await eventually(lambda: reader.load_cache("k1"), "other") == "other"


@pytest.mark.parametrize("backend", ["file"])
async def test_file_tree_sees_another_process_at_once(make_storage: Make, tmp_path: Path) -> None:
    cache = ReadCache(ttl=3600)
    async with make_storage(middleware=[cache]) as reader:
        await reader.store_system_state("s1", {"mode": "on"})
        assert await reader.load_system_state("s1") == {"mode": "on"}
        assert await reader.load_system_state("s1") == {"mode": "on"}
        assert cache.stats()["hits"] == 1
        code = textwrap.dedent(
            """
            import asyncio, sys
            from connectome_storage import create_file_storage

            async def main():
                async with create_file_storage(sys.argv[1]) as storage:
                    await storage.store_system_state("s1", {"mode": "off"})

            asyncio.run(main())
            """
        )
        base_dir = str(reader.settings.base_dir)  # type: ignore[attr-defined]
        done = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-c", code, base_dir], capture_output=True, text=True,
            timeout=HANG_GUARD_SECONDS, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert await eventually(lambda: reader.load_system_state("s1"), {"mode": "off"}) == {"mode": "off"}


async def test_own_writes_invalidate_at_once(make_storage: Make) -> None:
    cache = ReadCache(ttl=3600)
    async with make_storage(middleware=[cache]) as storage:
        await fill(storage)
        await read_all(storage)
        await storage.store_conversation("c1", {"title": "two"})
        assert await storage.load_conversation("c1") == {"title": "two"}
        await storage.append_raw_messages("c1", [{"role": "assistant"}])
        assert len(await storage.load_raw_messages("c1")) == 2
        assert await storage.pop_raw_message("c1") == {"role": "assistant"}
        assert len(await storage.load_raw_messages("c1")) == 1
        await storage.store_memory("c1", "m1", {"fact": "likes coffee"})
        assert await storage.load_memories("c1") == [{"fact": "likes coffee", "memory_id": "m1"}]
        await storage.delete_memory("c1", "m1")
        assert await storage.load_memories("c1") == []
        await storage.store_chunks("c1", [])
        assert await storage.load_chunks("c1") == []
        await storage.store_reasoning_chain("a1", {"step": 2})
        assert len(await storage.load_reasoning_chains("a1")) == 2
        await storage.store_cache("k1", "new")
        assert await storage.load_cache("k1") == "new"
        await storage.delete_cache("k1")
        assert await storage.load_cache("k1") is None
        await storage.store_system_state("s1", 7)
        assert await storage.load_system_state("s1") == 7
        await storage.delete_system_state("s1")
        assert await storage.load_system_state("s1") is None
        kv = storage.kv("ns")
        await kv.set("key", {"n": 2})
        assert await kv.get("key") == {"n": 2}
        await kv.set_many({"key": {"n": 3}})
        assert await kv.get("key") == {"n": 3}
        assert (await kv.get_entry("key")).value == {"n": 3}  # type: ignore[union-attr]
        await kv.delete_many(["key"])
        assert await kv.get("key") is None
        await kv.set("key", 1)
        assert await kv.get("key") == 1
        await kv.clear()
        assert await kv.get("key") is None
        await storage.delete_conversation("c1")
        assert await storage.load_conversation("c1") is None
        assert await storage.load_raw_messages("c1") == []


async def test_a_write_to_one_part_drops_the_whole_conversation(make_storage: Make, backend: str) -> None:
    if backend == "file":
        pytest.skip("on the file tree the watch would drop it anyway, which proves nothing here")
    cache = ReadCache(ttl=3600)
    async with make_storage(middleware=[cache]) as storage, make_storage() as other:
        await fill(storage)
        await read_all(storage)
        # Another writer changes parts behind the cache's back ...
        await other.store_conversation("c1", {"title": "behind"})
        await other.store_chunks("c1", [{"start": 5, "end": 6}])
        await other.store_system_state("s1", "behind")
        assert await storage.load_conversation("c1") == {"title": "one"}
        # ... and this process writes one other part of the same conversation: every part
        # of it is read again, while other entities stay cached.
        await storage.store_memory("c1", "m2", {"fact": "x"})
        assert await storage.load_conversation("c1") == {"title": "behind"}
        assert await storage.load_chunks("c1") == [{"start": 5, "end": 6}]
        assert await storage.load_system_state("s1") == {"mode": "on"}
        # A whole-store write (cleanup) drops everything.
        await storage.cleanup()
        assert await storage.load_system_state("s1") == "behind"


async def test_values_that_expire_by_themselves_expire_in_the_cache(make_storage: Make, clock: FakeClock) -> None:
    cache = ReadCache(ttl=3600)
    async with make_storage(middleware=[cache]) as storage:
        await storage.store_cache("k1", {"answer": 42}, ttl=10)
        await storage.kv("ns").set("key", "v", ttl=10)
        await storage.kv("ns").set("entry", "v", ttl=10)
        await storage.conversation_store().save("c1", [{"n": 1}], ttl=10)
        await storage.store_chunks("c1", [{"c": 1}])
        for _ in range(2):
            assert await storage.load_cache("k1") == {"answer": 42}
            assert await storage.kv("ns").get("key") == "v"
            assert (await storage.kv("ns").get_entry("entry")).value == "v"  # type: ignore[union-attr]
            assert await storage.load_raw_messages("c1") == [{"n": 1}]
            assert await storage.load_chunks("c1") == [{"c": 1}]
        assert cache.stats()["hits"] == 5
        clock.advance(10)
        assert await storage.load_cache("k1") is None
        assert await storage.kv("ns").get("key") is None
        assert await storage.kv("ns").get_entry("entry") is None
        assert await storage.load_raw_messages("c1") == []  # the conversation expired whole
        assert await storage.load_chunks("c1") == []


async def test_lru_keeps_at_most_max_entries(make_storage: Make) -> None:
    cache = ReadCache(ttl=3600, max_entries=2)
    async with make_storage(middleware=[cache]) as storage:
        for key in ("a", "b", "c"):
            await storage.store_system_state(key, key)
        for key in ("a", "b", "a", "c"):  # "b" is the least recently used when "c" comes in
            await storage.load_system_state(key)
        assert cache.stats() == {"entries": 2, "hits": 1, "misses": 3}
        await storage.load_system_state("a")
        await storage.load_system_state("b")
        assert cache.stats() == {"entries": 2, "hits": 2, "misses": 4}


class Gate(Middleware):
    """Holds one read after the backend answered, until the test lets it go."""

    def __init__(self) -> None:
        self.hold = False
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def around(self, ctx: MiddlewareContext, call: Callable[[], Awaitable[Any]]) -> Any:
        result = await call()
        if self.hold and not ctx.write:
            self.hold = False
            self.entered.set()
            await self.release.wait()
        return result


async def test_a_read_racing_a_write_does_not_cache_the_old_value(make_storage: Make) -> None:
    cache, gate = ReadCache(ttl=3600), Gate()
    async with make_storage(middleware=[cache, gate]) as storage:
        await storage.store_conversation("c1", {"v": 1})
        gate.hold = True
        read = asyncio.create_task(storage.load_conversation("c1"))
        await asyncio.wait_for(gate.entered.wait(), HANG_GUARD_SECONDS)
        await storage.store_conversation("c1", {"v": 2})  # lands while the read holds {"v": 1}
        gate.release.set()
        assert await read == {"v": 1}
        assert await storage.load_conversation("c1") == {"v": 2}


async def test_migrate_into_a_cached_storage_drops_everything(make_storage: Make, backend: str) -> None:
    if backend == "memory":
        pytest.skip("a memory storage built by make_storage shares the source's data")
    cache = ReadCache(ttl=3600)
    async with make_storage(middleware=[cache]) as destination, create_memory_storage() as source:
        await destination.store_system_state("s1", "old")
        assert await destination.load_system_state("s1") == "old"
        await source.store_system_state("s1", "new")
        await migrate(source, destination)
        assert await destination.load_system_state("s1") == "new"


async def test_memory_lru_eviction_is_not_hidden_by_the_cache() -> None:
    cache = ReadCache(ttl=3600)
    async with create_memory_storage(max_conversations=1, middleware=[cache]) as storage:
        await storage.store_conversation("c1", {"v": 1})
        assert await storage.load_conversation("c1") == {"v": 1}
        await storage.store_conversation("c2", {"v": 2})  # evicts c1
        assert await storage.load_conversation("c1") is None


async def test_closing_stops_the_watch_and_forgets(make_storage: Make, backend: str) -> None:
    cache = ReadCache(ttl=3600)
    storage = make_storage(middleware=[cache])
    async with storage:
        await storage.store_system_state("s1", 1)
        await storage.load_system_state("s1")
        watching = cache._watch_task is not None
        assert watching == (backend == "file")
        assert cache.stats()["entries"] == 1
    assert cache._watch_task is None
    assert cache.stats()["entries"] == 0
    tasks = [t for t in asyncio.all_tasks() if "ReadCache" in t.get_name()]
    assert tasks == []


@pytest.mark.parametrize("ttl", [0, -1, "5", True, float("nan")])
def test_bad_ttl_is_refused(ttl: Any) -> None:
    with pytest.raises(InvalidArgumentError, match="ttl"):
        ReadCache(ttl=ttl)


@pytest.mark.parametrize("max_entries", [0, 1.5, None])
def test_bad_max_entries_is_refused(max_entries: Any) -> None:
    with pytest.raises(InvalidArgumentError, match="max_entries"):
        ReadCache(ttl=1, max_entries=max_entries)


async def test_value_layers_run_on_every_hit(make_storage: Make, backend: str) -> None:
    """Value hooks run outside every ``around``: the cache holds values as stored (wrapped
    here) and each hit is unwrapped again, wherever ReadCache stands in the list."""
    for order in ("cache first", "cache last"):
        wrap, cache = Wrap(), ReadCache(ttl=3600)
        layers: list[Middleware] = [cache, wrap] if order == "cache first" else [wrap, cache]
        async with make_storage(middleware=layers) as storage:
            await storage.store_conversation(f"c-{order}", {"secret": order})
            for _ in range(3):
                doc = await storage.load_conversation(f"c-{order}")
                assert doc == {"secret": order}
                doc["secret"] = "mutated"
            assert cache.stats()["hits"] == 2
            [held] = [c.value for c in cache._entries.values()]
            assert held == {"$wrapped": ["w", {"secret": order}]}


async def test_reopened_cache_starts_empty_and_works(make_storage: Make) -> None:
    cache = ReadCache(ttl=3600)
    storage = make_storage(middleware=[cache])
    async with storage:
        await storage.store_system_state("s1", 1)
        assert await storage.load_system_state("s1") == 1
    async with make_storage() as other:
        await other.store_system_state("s1", 2)  # while the cached storage is closed
    async with storage:
        assert await storage.load_system_state("s1") == 2
        assert await storage.load_system_state("s1") == 2
        assert cache.stats()["hits"] == 1


@pytest.mark.parametrize("backend", ["file"])
async def test_a_lost_watch_falls_back_to_ttl(
    make_storage: Make, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    cache = ReadCache(ttl=30)
    async with make_storage(middleware=[cache]) as reader, make_storage() as writer:
        await reader.store_system_state("s1", 1)
        assert await reader.load_system_state("s1") == 1
        task = cache._watch_task
        assert task is not None
        reader._own.stop_all()  # type: ignore[attr-defined]  # what shutdown does to every watch
        await asyncio.wait_for(asyncio.shield(task), HANG_GUARD_SECONDS)
        assert "watching file stopped" in caplog.text
        assert cache.stats()["entries"] == 0
        assert await reader.load_system_state("s1") == 1
        await writer.store_system_state("s1", 2)
        await asyncio.sleep(0.3)  # no watch any more: nothing drops the value early
        assert await reader.load_system_state("s1") == 1
        clock.advance(30)
        assert await reader.load_system_state("s1") == 2


async def test_with_encryption_the_cache_holds_no_plaintext(make_storage: Make) -> None:
    from connectome_storage.middleware import Encryption

    secret = "the vault code is 7391"
    cache = ReadCache(ttl=3600)
    async with make_storage(middleware=[cache, Encryption(os.urandom(32))]) as storage:
        await storage.store_memory("c1", "m1", {"text": secret})
        await storage.kv("ns").set("k", {"text": secret})
        for _ in range(2):
            assert await storage.load_memories("c1") == [{"text": secret, "memory_id": "m1"}]
            assert await storage.kv("ns").get("k") == {"text": secret}
        assert cache.stats()["hits"] == 2
        held = repr(list(cache._entries.values()))
        assert "$encrypted" in held and secret not in held
