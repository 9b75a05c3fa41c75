"""migrate(): a file tree through SQLite, Redis or memory and back is byte-identical; re-running changes nothing."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from connectome_storage import (
    FileStorage,
    MigrationReport,
    StorageInterface,
    create_file_storage,
    create_sqlite_storage,
    migrate,
)
from connectome_storage.backends import _file_parts
from connectome_storage.backends import postgres as postgres_backend
from connectome_storage.backends import sqlite as sqlite_backend
from connectome_storage.backends.memory import MemoryStorage
from connectome_storage.codec import encode
from connectome_storage.errors import CorruptedDataError, StorageError, StorageIOError, StorageNotInitializedError
from connectome_storage.interface import CacheEntry

from .backends.test_file_append import cut_short_append
from .conftest import BACKENDS, FakeClock
from .redis_server import redis_cluster  # noqa: F401  (the session's Redis Cluster, for make_middle)

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DATA = ROOT / "sample_data"
DATA_FOLDERS = ("conversations", "cache", "agents", "system")
STATES: list[tuple[str, Any]] = [
    ("config", {"model": "x", "temperature": 0.2}),
    ("counter", 41),
    ("flag", False),
    ("nothing", None),
    ("list", [1, "two", {"three": 3.0}]),
]
UNUSUAL_IDS = ["../../etc/passwd", "ümlaut-日本語-🙂", "CON", "with space", "100%", "%41", ".hidden"]


def tree(root: Path, folders: tuple[str, ...] | None = None) -> dict[str, bytes | None]:
    """Every entry under ``root`` (folders as None, files as bytes), skipping the hidden
    housekeeping entries at the root (format marker, locks, backups)."""
    entries: dict[str, bytes | None] = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if relative.parts[0].startswith(".") or (folders and relative.parts[0] not in folders):
            continue
        entries[relative.as_posix()] = path.read_bytes() if path.is_file() else None
    return entries


async def populate(storage: StorageInterface, clock: FakeClock | None = None) -> dict[str, int]:
    """A varied store; returns what migrate should report copying (``clock``, when given, is
    moved on between a key-value entry's creation and its update)."""
    expected = dict.fromkeys(["conversations", "conversation_metadata", "raw_messages", "memories", "chunks",
                              "reasoning_chains", "cache_entries", "system_states", "kv_entries", "messages",
                              "read_states"], 0)  # fmt: skip
    for index, conversation_id in enumerate(["conv_001", "conv_002", *UNUSUAL_IDS]):
        await storage.store_conversation(conversation_id, {"title": f"#{index}", "id": conversation_id, "n": index})
        await storage.store_raw_messages(conversation_id, [{"role": "user", "content": f"hello {index}"}])
        await storage.append_raw_messages(conversation_id, [{"role": "assistant", "n": n} for n in range(index)])
        expected["raw_messages"] += 1 + index
        if index % 2 == 0:
            await storage.store_chunks(conversation_id, [{"start": 0, "end": index}, {"start": index, "end": 99}])
            expected["chunks"] += 1
        if index % 3 == 0:
            # Stored out of id order, then one replaced: first-stored order must survive.
            await storage.store_memory(conversation_id, "m2", {"text": "two", "score": 0.5})
            await storage.store_memory(conversation_id, "m1", {"text": "one"})
            await storage.store_memory(conversation_id, conversation_id, {"text": "named like the conversation"})
            await storage.store_memory(conversation_id, "m2", {"text": "two, replaced", "tags": ["x"]})
            expected["memories"] += 3
        expected["conversations"] += 1
    # Conversations that have one part only.
    await storage.append_raw_messages("only-messages", [{"n": 1}])
    await storage.store_memory("only-memories", "m", {"v": None})
    await storage.store_chunks("only-chunks", [{"c": 1}])
    expected["conversations"] += 3
    expected["raw_messages"] += 1
    expected["memories"] += 1
    expected["chunks"] += 1
    # Conversation store metadata: one saved with a TTL and appended to, one given a TTL
    # after the fact, one with metadata and no messages.
    store = storage.conversation_store()
    await store.save("with-metadata", [{"n": 0}], ttl=86400, metadata={"userId": "u1", "deep": {"a": [1, 2.5]}})
    if clock is not None:
        clock.advance(2)
    await store.append("with-metadata", [{"n": 1}, {"n": 2}])
    await store.set_ttl(UNUSUAL_IDS[0], 7200)
    await store.save("only-metadata", [], metadata={"empty": True})
    expected["conversations"] += 2
    expected["conversation_metadata"] += 3
    expected["raw_messages"] += 3
    for agent_id in ["planner", *UNUSUAL_IDS[:3]]:
        for step in range(3):
            await storage.store_reasoning_chain(agent_id, {"agent": agent_id, "step": step, "thoughts": ["a", "b"]})
        expected["reasoning_chains"] += 3
    for cache_key in ["prompt:1", *UNUSUAL_IDS]:
        await storage.store_cache(cache_key, {"completion": cache_key, "tokens": 12})
        await storage.store_cache(f"ttl:{cache_key}", [cache_key, 1.5], ttl=3600)
        expected["cache_entries"] += 2
    for state_key, value in [*STATES, *((k, k) for k in UNUSUAL_IDS)]:
        await storage.store_system_state(state_key, value)
        expected["system_states"] += 1
    for namespace in ["sessions", *UNUSUAL_IDS[:3]]:
        kv = storage.kv(namespace)
        await kv.set("user:1", {"name": "Alice", "score": 1.0}, tags={"type": "web", "user": "1"})
        await kv.set("ttl", [namespace], ttl=3600)
        await kv.set_many({key: {"key": key} for key in UNUSUAL_IDS}, tags={"batch": "x"})
        if clock is not None:
            clock.advance(1.5)
        await kv.set("user:1", {"name": "Alice", "score": 2.5}, tags={"type": "api"})  # created_at survives
        expected["kv_entries"] += 2 + len(UNUSUAL_IDS)
    bus = storage.message_store()
    sent = [await bus.save({"from": "planner", "to": "coder", "content": "go", "n": 1.5})]
    sent.append(await bus.save({"from": "coder", "to": "*", "content": {"done": [1, 2]}}))
    for unusual in UNUSUAL_IDS[:3]:  # odd ids for the message, the sender and the recipient
        sent.append(await bus.save({"id": unusual, "from": unusual, "to": UNUSUAL_IDS[-1], "timestamp": "t"}))
    expected["messages"] += len(sent)
    await bus.mark_read("coder", sent[:2])
    await bus.mark_read(UNUSUAL_IDS[0], [sent[1], "never-stored"])
    await bus.mark_read("reader-only", sent[2:])
    expected["read_states"] += 3
    return expected


@pytest.fixture(
    params=[
        "sqlite",
        "redis",
        "postgres",
        "memory",
        "sqlite-msgpack",
        "redis-msgpack",
        "postgres-msgpack",
        "redis-cluster",
    ]
)
def make_middle(request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock) -> Any:
    """Builds the storage a file tree goes through and comes back from (conftest.BACKENDS,
    and a Redis Cluster)."""
    if request.param == "redis-cluster":
        url = request.getfixturevalue("redis_cluster").url
        return lambda: BACKENDS["redis"](tmp_path, clock, {"redis_url": url})
    options: dict[str, Any] = {}
    if request.param.startswith("redis"):
        options["redis_url"] = request.getfixturevalue("redis_server").url
    if request.param.startswith("postgres"):
        options["dsn"] = request.getfixturevalue("postgres_server").dsn
    return lambda: BACKENDS[request.param](tmp_path, clock, options)


async def test_file_to_other_backend_to_file_is_byte_identical(
    tmp_path: Path, clock: FakeClock, make_middle: Any
) -> None:
    original, copy = tmp_path / "original", tmp_path / "copy"
    async with create_file_storage(original, clock=clock) as source:
        expected = await populate(source, clock)
        async with make_middle() as middle:
            first = await migrate(source, middle)
            async with create_file_storage(copy, clock=clock) as destination:
                second = await migrate(middle, destination)
    assert first.as_dict() == second.as_dict() == {**expected, "skipped_expired": 0}
    before, after = tree(original), tree(copy)
    assert len(before) > 60
    assert len([name for name in before if name.startswith("kv/")]) == 4 + 4 * 9  # namespace folders and entries
    assert list(after) == list(before)  # same files and folders, nothing more
    assert after == before


async def test_migrating_again_changes_nothing(tmp_path: Path, clock: FakeClock, make_middle: Any) -> None:
    copy = tmp_path / "copy"
    async with create_file_storage(tmp_path / "original", clock=clock) as source:
        await populate(source)
        async with make_middle() as middle:
            first = await migrate(source, middle)
            async with create_file_storage(copy, clock=clock) as destination:
                await migrate(middle, destination)
                in_middle, in_copy, times = await dump(middle), tree(copy), stamps(copy)
                assert await migrate(source, middle) == first
                assert await migrate(middle, destination) == first
                assert await dump(middle) == in_middle
                assert tree(copy) == in_copy
                # No file was rewritten and no backup taken: the copy already held the data.
                assert stamps(copy) == times


def stamps(root: Path) -> dict[str, int]:
    """mtime of every file, backups included (lock files are touched by every writer)."""
    return {
        p.relative_to(root).as_posix(): p.stat().st_mtime_ns
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).parts[0] != ".locks"
    }


async def dump(storage: StorageInterface) -> dict[str, Any]:
    """Everything a storage holds, read back through the API."""
    everything: dict[str, Any] = {}
    for conversation_id in await storage.list_conversations():
        everything[f"conversation {conversation_id}"] = [
            await storage.load_conversation(conversation_id),
            await storage.load_raw_messages(conversation_id),
            await storage.load_chunks(conversation_id),
            await storage.load_memories(conversation_id),
        ]
    for agent_id in await storage.list_agents():
        everything[f"agent {agent_id}"] = await storage.load_reasoning_chains(agent_id)
    for cache_key in await storage._list_all_cache_keys():
        everything[f"cache {cache_key}"] = await storage._read_cache(cache_key)
    for state_key in await storage.list_system_states():
        everything[f"state {state_key}"] = await storage.load_system_state(state_key)
    return everything


async def test_expired_cache_entries_are_skipped_and_times_kept(tmp_path: Path, clock: FakeClock) -> None:
    async with create_file_storage(tmp_path / "files", clock=clock) as source:
        await source.store_cache("forever", 1)
        await source.store_cache("long", 2, ttl=3600)
        await source.store_cache("short", 3, ttl=10)
        await source.store_cache("gone", 4, ttl=5)
        clock.advance(30)
        async with create_sqlite_storage(tmp_path / "db.sqlite", clock=clock) as destination:
            report = await migrate(source, destination)
            assert (report.cache_entries, report.skipped_expired) == (2, 2)
            assert sorted(await destination._list_all_cache_keys()) == ["forever", "long"]
            for key in ("forever", "long"):
                assert await destination._read_cache(key) == await source._read_cache(key)
            clock.advance(3600)
            assert await destination.load_cache("long") is None
            assert await destination.load_cache("forever") == 1


@pytest.mark.parametrize("into", ["file", "sqlite"])  # one write per part; batches of one transaction
async def test_replace_semantics_fix_order_and_drop_parts_the_source_lacks(
    tmp_path: Path, clock: FakeClock, into: str
) -> None:
    destination_storage = BACKENDS[into](tmp_path / "dst", clock, {})
    async with create_sqlite_storage(tmp_path / "src.db", clock=clock) as source, destination_storage as destination:
        await source.store_memory("c", "m2", {"v": 2})
        await source.store_memory("c", "m1", {"v": 1})
        await source.append_raw_messages("c", [{"n": 1}])
        await source.store_reasoning_chain("a", {"step": 1})
        # The destination holds the same ids in another order, extra parts, extra entities.
        await destination.store_memory("c", "m1", {"v": "old"})
        await destination.store_memory("c", "m2", {"v": "old"})
        await destination.store_memory("c", "m3", {"v": "extra"})
        await destination.store_conversation("c", {"stale": True})
        await destination.store_chunks("c", [{"stale": True}])
        await destination.store_reasoning_chain("a", {"step": "old"})
        await destination.store_system_state("untouched", 1)
        await migrate(source, destination)
        assert await destination.load_memories("c") == [{"memory_id": "m2", "v": 2}, {"memory_id": "m1", "v": 1}]
        assert await destination.load_conversation("c") is None
        assert await destination.load_chunks("c") == []
        assert await destination.load_raw_messages("c") == [{"n": 1}]
        assert await destination.load_reasoning_chains("a") == [{"step": 1}]
        assert await destination.load_system_state("untouched") == 1


async def test_progress_counts_up_to_the_total(tmp_path: Path, clock: FakeClock) -> None:
    calls: list[tuple[int, int]] = []
    async with create_file_storage(tmp_path / "files", clock=clock) as source, \
            create_sqlite_storage(tmp_path / "db.sqlite", clock=clock) as destination:  # fmt: skip
        await populate(source)
        entities = (len(await source.list_conversations()) + len(await source.list_agents())
                    + len(await source.list_cache_keys()) + len(await source.list_system_states())
                    + len(await source.list_namespaces()) + len(await source.message_store().query())
                    + len(await source._msg_readers()))  # fmt: skip
        await migrate(source, destination, progress=lambda done, total: calls.append((done, total)))
    assert calls[0] == (0, entities)
    assert {total for _done, total in calls} == {entities}
    dones = [done for done, _total in calls]
    assert dones == sorted(set(dones)) and dones[-1] == entities == len(calls) - 1


async def test_empty_migration_reports_zero_and_final_progress(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    async with create_file_storage(tmp_path / "a") as source, create_sqlite_storage(tmp_path / "b.db") as destination:
        report = await migrate(source, destination, progress=lambda *call: calls.append(call))
    assert report == MigrationReport()
    assert calls == [(0, 0)]


@pytest.mark.parametrize("which", ["source", "destination"])
async def test_both_storages_must_be_initialized(tmp_path: Path, which: str) -> None:
    opened = create_file_storage(tmp_path / "files")
    closed = create_sqlite_storage(tmp_path / "db.sqlite")
    async with opened:
        await opened.store_system_state("s", 1)
        pair: tuple[Any, Any] = (closed, opened) if which == "source" else (opened, closed)
        with pytest.raises(StorageNotInitializedError):
            await migrate(*pair)
    assert not (tmp_path / "db.sqlite").exists()


def _sample_data_present() -> bool:
    return any(path.is_file() for folder in DATA_FOLDERS for path in (SAMPLE_DATA / folder).rglob("*.json"))


@pytest.mark.skipif(not _sample_data_present(), reason="sample_data/ has not been generated yet")
async def test_sample_data_round_trips_through_sqlite(tmp_path: Path) -> None:
    original = tmp_path / "sample"
    shutil.copytree(SAMPLE_DATA, original)
    # Epoch 0: every cache entry of the sample counts as unexpired, whenever this runs.
    async with create_file_storage(original, clock=lambda: 0.0) as source, \
            create_sqlite_storage(tmp_path / "sample.db", clock=lambda: 0.0) as middle, \
            create_file_storage(tmp_path / "copy", clock=lambda: 0.0) as destination:  # fmt: skip
        await migrate(source, middle)
        report = await migrate(middle, destination)
    assert report.skipped_expired == 0
    assert tree(tmp_path / "copy", DATA_FOLDERS) == tree(SAMPLE_DATA, DATA_FOLDERS)


class DeletedWhileMigrating(FileStorage):
    """A file tree another writer deletes ``doomed`` entities from, between migrate's
    listing of them and its reading them: each read first deletes through a second,
    independent storage object on the same tree (as another process would)."""

    doomed = "doomed"
    other: StorageInterface

    async def _conversation_parts(self, conversation_id: str, now_ms: int) -> Any:
        # migrate reads a conversation whole, in one step
        if conversation_id == self.doomed:
            await self.other.delete_conversation(conversation_id)
        return await super()._conversation_parts(conversation_id, now_ms)

    async def load_reasoning_chains(self, agent_id: str) -> list[dict[str, Any]]:
        if agent_id == self.doomed:
            # No public delete for a chain history: the other writer removes the folder.
            shutil.rmtree(self.base_dir / "agents" / agent_id)
        return await super().load_reasoning_chains(agent_id)

    async def _read_cache(self, cache_key: str) -> CacheEntry | None:
        if cache_key == self.doomed:
            await self.other.delete_cache(cache_key)
        return await super()._read_cache(cache_key)

    async def load_system_state(self, state_key: str) -> Any:
        if state_key == self.doomed:
            await self.other.delete_system_state(state_key)
        return await super().load_system_state(state_key)


async def test_an_entity_deleted_mid_migration_is_skipped_not_copied_as_null(tmp_path: Path, clock: FakeClock) -> None:
    root = tmp_path / "source"
    async with create_file_storage(root, clock=clock) as writer:
        for identifier in ("doomed", "kept"):
            await writer.store_conversation(identifier, {"title": identifier})
            await writer.append_raw_messages(identifier, [{"n": 1}])
            await writer.store_reasoning_chain(identifier, {"step": 1})
            await writer.store_cache(identifier, {"v": identifier})
            await writer.store_system_state(identifier, {"v": identifier})
        await writer.store_system_state("stored-none", None)  # a real None is still copied
    source = DeletedWhileMigrating({"base_dir": root, "clock": clock})
    source.other = create_file_storage(root, clock=clock)
    async with source, source.other, create_sqlite_storage(tmp_path / "copy.db", clock=clock) as destination:
        report = await migrate(source, destination)
        assert await destination.list_system_states() == ["kept", "stored-none"]
        assert await destination.list_conversations() == ["kept"]
        assert await destination.list_agents() == ["kept"]
        assert await destination.list_cache_keys() == ["kept"]
    assert (report.conversations, report.raw_messages, report.reasoning_chains) == (1, 1, 1)
    assert (report.cache_entries, report.system_states, report.skipped_expired) == (1, 2, 0)


async def test_expired_conversations_are_skipped_and_counted(tmp_path: Path, clock: FakeClock) -> None:
    async with create_file_storage(tmp_path / "tree", clock=clock) as source:
        store = source.conversation_store()
        await store.save("short", [{"n": 1}], ttl=10)
        await store.save("long", [{"n": 1}], ttl=1000)
        clock.advance(10)
        async with create_sqlite_storage(tmp_path / "copy.db", clock=clock) as destination:
            report = await migrate(source, destination)
            assert (report.conversations, report.conversation_metadata, report.skipped_expired) == (1, 1, 1)
            assert await destination.list_conversations() == ["long"]
            assert await destination.conversation_store().load("short", include_expired=True) is None
            assert await destination.conversation_store().get_ttl("long") == 990.0


@pytest.fixture(params=["file", "sqlite", "redis", "postgres", "memory"])
def make_source(
    request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> Any:
    """Builds a storage of each backend as a migration source, whose streamed walk of
    conversation ids (where it streams) hands them over three at a time."""
    monkeypatch.setattr(_file_parts, "ID_CHUNK", 3)
    monkeypatch.setattr(sqlite_backend, "ID_PAGE", 3)
    monkeypatch.setattr(postgres_backend, "_ID_PAGE", 3)
    options: dict[str, Any] = {}
    if request.param == "redis":
        options["redis_url"] = request.getfixturevalue("redis_server").url
    if request.param == "postgres":
        options["dsn"] = request.getfixturevalue("postgres_server").dsn
    return lambda: BACKENDS[request.param](tmp_path / "source", clock, options)


async def test_every_source_walks_each_conversation_once_and_skips_the_expired(
    tmp_path: Path, clock: FakeClock, make_source: Any
) -> None:
    ids = [f"c{i}" for i in range(8)]  # pages of three: two full ones, and one short
    async with make_source() as source:
        for conversation_id in ids:
            await source.append_raw_messages(conversation_id, [{"n": conversation_id}])
        store = source.conversation_store()
        await store.save("short", [{"n": 1}], ttl=10)
        await store.save("long", [{"n": 2}], ttl=1000)
        clock.advance(10)
        walked = [conversation_id async for conversation_id in source._conversation_ids()]
        # The expired one is walked too (it is still stored): migrate reads it and skips it.
        assert sorted(walked) == sorted([*ids, "long", "short"])
        calls: list[tuple[int, int]] = []
        async with create_sqlite_storage(tmp_path / "copy.db", clock=clock) as destination:
            report = await migrate(source, destination, progress=lambda *call: calls.append(call))
            assert await destination.list_conversations() == sorted([*ids, "long"])
            assert await destination.load_raw_messages("c7") == [{"n": "c7"}]
    assert (report.conversations, report.raw_messages, report.skipped_expired) == (9, 9, 1)
    assert calls[0] == (0, 10) and calls[-1] == (10, 10)  # the expired conversation is counted as done too


class BatchesWithoutTheHook(MemoryStorage):
    """A destination that asks for batches but writes no batch itself (the default
    ``_replace_conversations``): migrate writes each part on its own instead."""

    _migrate_batch = 2


async def test_batches_fall_back_to_one_write_per_part(tmp_path: Path, clock: FakeClock) -> None:
    async with create_file_storage(tmp_path / "original", clock=clock) as source:
        expected = await populate(source)
        async with BatchesWithoutTheHook({"clock": clock}) as middle:
            await middle.store_memory("conv_001", "stale", {"v": 1})  # replaced, not kept
            report = await migrate(source, middle)
            async with create_file_storage(tmp_path / "copy", clock=clock) as destination:
                await migrate(middle, destination)
    assert report.as_dict() == {**expected, "skipped_expired": 0}
    assert tree(tmp_path / "copy") == tree(tmp_path / "original")


def _damage(root: Path, case: str) -> None:
    folder = root / "conversations" / "c"
    outside = root.parent / "outside"
    outside.mkdir(exist_ok=True)
    (outside / "x.json").write_bytes(b"[]")
    if case == "bad memories":
        (folder / "memories.json").write_bytes(b"[not json")
    elif case == "memories of the wrong shape":
        (folder / "memories.json").write_bytes(b'[{"no": "id"}]')
    elif case == "folder for a part":
        (folder / "current.json").unlink()
        (folder / "current.json").mkdir()
    elif case == "link for a part":
        (folder / "chunks.json").unlink()
        (folder / "chunks.json").symlink_to(outside / "x.json")
    elif case == "link for the folder":
        shutil.rmtree(folder)
        folder.symlink_to(outside)
    elif case == "bad metadata":
        (folder / "metadata.json").write_bytes(b'{"conversation_id": 5}')
    elif case == "large history":
        (folder / "raw_messages.json").write_bytes(encode([{"text": "x" * 1000, "n": n} for n in range(400)]))
    elif case == "history damaged":  # by hand: no append of this library left a version before it
        with (folder / "raw_messages.json").open("ab") as f:
            f.write(b'{"half": ')


DAMAGES = ["intact", "bad memories", "memories of the wrong shape", "folder for a part", "link for a part",
           "link for the folder", "bad metadata", "large history", "history damaged", "append cut short",
           "expired"]  # fmt: skip


@pytest.mark.parametrize("case", DAMAGES)
async def test_a_file_conversation_read_whole_is_what_the_point_reads_give(
    tmp_path: Path, clock: FakeClock, case: str
) -> None:
    """FileStorage reads a conversation whole in one step (migrate, a transaction's first
    touch): the same values, or the same error naming the same file, as the point reads."""
    root = tmp_path / "tree"
    async with create_file_storage(root, clock=clock) as storage:
        await storage.conversation_store().save("c", [{"n": 0}], ttl=100)
        await storage.append_raw_messages("c", [{"n": 1}])
        await storage.store_conversation("c", {"title": "t"})
        await storage.store_chunks("c", [{"start": 0}])
        await storage.store_memory("c", "m", {"text": "one"})
        _damage(root, case)
        if case == "append cut short":  # a process killed half-way through an append in place
            await cut_short_append(storage, [{"n": 2, "text": "x" * 40}], 7)
        if case == "expired":
            clock.advance(100)

        async def outcome(read: Any) -> Any:
            try:
                return await read(storage, "c", storage._now_ms())
            except StorageError as e:
                return type(e), str(e)

        whole = await outcome(type(storage)._conversation_parts)
        parts = await outcome(StorageInterface._conversation_parts)  # the five point reads
    assert whole == parts
    if case == "intact":
        assert whole[1:] == ({"title": "t"}, [{"start": 0}], [{"n": 0}, {"n": 1}], [{"memory_id": "m", "text": "one"}])
    elif case == "expired":
        assert whole[0] is not None and whole[1:] == (None, None, [], [])
    elif case == "large history":
        assert len(whole[3]) == 400
    elif case == "append cut short":
        assert whole[3] == [{"n": 0}, {"n": 1}]  # the version before the append
    else:
        assert whole[0] in (CorruptedDataError, StorageIOError), whole


async def test_a_missing_conversation_reads_as_new_empty_parts_each_time(tmp_path: Path, clock: FakeClock) -> None:
    async with create_file_storage(tmp_path / "tree", clock=clock) as storage:
        first = await storage._conversation_parts("absent", storage._now_ms())
        first[3].append({"n": 1})  # a transaction appends to the history it read
        first[4].append({"memory_id": "m"})
        assert await storage._conversation_parts("absent", storage._now_ms()) == (None, None, None, [], [])
