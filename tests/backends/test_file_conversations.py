"""The conversation store on the file tree: what only the file tree does.

``metadata.json`` in the conversation's folder (layout, bytes, backups, watch, restore),
damaged metadata, expiry decided inside each read and write step (the files stay on disk
until a write or cleanup() removes them), appends in place with metadata, message_count
across processes and after a crash. The contract itself is in
tests/test_conformance_conversations.py.

Run as a script, this file is one appending process (the race and crash tests start it).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402

from connectome_storage import ChangeEvent, FileStorage, create_file_storage  # noqa: E402
from connectome_storage.codec import encode  # noqa: E402
from connectome_storage.errors import CorruptedDataError, StorageIOError  # noqa: E402
from connectome_storage.interface import Kind  # noqa: E402
from tests.conftest import START, FakeClock  # noqa: E402
from tests.reliability import racers  # noqa: E402

MSGS = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


def files(storage: FileStorage, clock: FakeClock | None = None, **options: Any) -> FileStorage:
    built = create_file_storage(storage.base_dir, clock=clock or FakeClock(), **options)
    assert isinstance(built, FileStorage)
    return built


@pytest.fixture
async def storage(tmp_path: Path, clock: FakeClock) -> Any:
    built = create_file_storage(tmp_path / "data", clock=clock)
    assert isinstance(built, FileStorage)
    async with built:
        yield built


def folder(storage: FileStorage, conversation_id: str) -> Path:
    return storage.path_of(Kind.METADATA, conversation_id).parent


# ------------------------------------------------------------------------------- layout


async def test_metadata_is_a_canonical_json_file_next_to_the_history(storage: FileStorage) -> None:
    store = storage.conversation_store()
    saved = await store.save("conv/1", MSGS, ttl=3600, metadata={"userId": "u1"})
    path = storage.base_dir / "conversations" / "conv%2F1" / "metadata.json"
    assert path == storage.path_of(Kind.METADATA, "conv/1")
    document = {
        "conversation_id": "conv/1",
        "created_at": "2026-11-21T09:30:00.000Z",
        "updated_at": "2026-11-21T09:30:00.000Z",
        "message_count": 2,
        "ttl": 3600,
        "expires_at": "2026-11-21T10:30:00.000Z",
        "metadata": {"userId": "u1"},
    }
    assert path.read_bytes() == encode(document)  # pretty, keys sorted, trailing newline
    assert saved.metadata.ttl == 3600
    assert sorted(p.name for p in path.parent.iterdir()) == ["metadata.json", "raw_messages.json"]
    assert await storage.verify() == []  # metadata.json is no stray


async def test_compact_trees_write_compact_metadata(tmp_path: Path, clock: FakeClock) -> None:
    async with create_file_storage(tmp_path / "data", clock=clock, pretty_print_json=False) as storage:
        assert isinstance(storage, FileStorage)
        await storage.conversation_store().save("c", MSGS)
        raw = storage.path_of(Kind.METADATA, "c").read_bytes()
        assert raw.count(b"\n") == 1 and raw.endswith(b"}\n")


async def test_metadata_replacements_keep_backups_and_restore(storage: FileStorage, clock: FakeClock) -> None:
    store = storage.conversation_store()
    await store.save("c", MSGS, metadata={"v": 1})
    clock.advance(1)
    await store.save("c", MSGS, metadata={"v": 2})
    versions = await storage.list_backups("conversations/c/metadata.json")
    assert len(versions) == 1
    await storage.restore_backup("conversations/c/metadata.json")
    loaded = await store.load("c")
    assert loaded is not None and loaded.metadata.metadata == {"v": 1}


async def test_watch_reports_metadata_as_its_own_kind(storage: FileStorage) -> None:
    events: asyncio.Queue[ChangeEvent] = asyncio.Queue()
    ready = asyncio.Event()

    async def consume() -> None:
        async for event in storage.watch(ready=ready):
            events.put_nowait(event)

    task = asyncio.create_task(consume())
    try:
        await asyncio.wait_for(ready.wait(), 60)
        await storage.conversation_store().save("c", MSGS, metadata={"k": 1})
        seen: dict[str, ChangeEvent] = {}
        while "metadata" not in seen or "raw_messages" not in seen:
            event = await asyncio.wait_for(events.get(), 60)
            seen[event.kind_name] = event
        meta = seen["metadata"]
        assert (meta.kind, meta.id, meta.change, meta.own, meta.valid) == (Kind.METADATA, "c", "added", True, True)
        storage.path_of(Kind.METADATA, "c").write_text("{broken")
        while (event := await asyncio.wait_for(events.get(), 60)).kind is not Kind.METADATA:
            pass
        assert not event.valid and "metadata.json" in (event.error or "")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_stats_count_metadata_bytes_and_expired_conversations(storage: FileStorage, clock: FakeClock) -> None:
    before = (await storage.get_storage_stats())["total_bytes"]
    await storage.conversation_store().save("c", MSGS, ttl=10)
    sizes = sum(p.stat().st_size for p in folder(storage, "c").iterdir())
    stats = await storage.get_storage_stats()
    assert stats["total_bytes"] - before == sizes  # the metadata file included
    assert (stats["conversation_count"], stats["raw_message_count"], stats["expired_conversation_count"]) == (1, 2, 0)
    clock.advance(10)
    stats = await storage.get_storage_stats()
    assert (stats["conversation_count"], stats["raw_message_count"], stats["expired_conversation_count"]) == (0, 0, 1)


# ------------------------------------------------------------------- damaged metadata


async def test_damaged_metadata_is_named_while_the_other_parts_stay_readable(storage: FileStorage) -> None:
    store = storage.conversation_store()
    await store.save("c", MSGS, ttl=60)
    await storage.store_conversation("c", {"title": "t"})
    path = storage.path_of(Kind.METADATA, "c")
    document = json.loads(path.read_bytes())
    path.write_bytes(encode({**document, "message_count": "many"}))
    with pytest.raises(CorruptedDataError) as raised:
        await store.load("c")
    assert raised.value.path == str(path)
    with pytest.raises(CorruptedDataError):  # a query would be wrong without it: it says so
        await store.query().all()
    # Expiry cannot be read from it, so nothing is hidden: the parts read as before.
    assert await storage.load_conversation("c") == {"title": "t"}
    assert await storage.load_raw_messages("c") == MSGS
    assert await storage.list_conversations() == ["c"]
    assert await storage.append_raw_messages("c", [{"n": 3}]) == 3  # a write is not blocked either
    problems = await storage.verify()
    assert [p.location for p in problems] == [str(path)]
    assert "message_count" in problems[0].message
    assert (await storage.get_storage_stats())["unreadable_count"] == 1
    # Storing it again repairs it.
    await store.save("c", MSGS, metadata={"fixed": True})
    loaded = await store.load("c")
    assert loaded is not None and loaded.metadata.metadata == {"fixed": True}
    assert await storage.verify() == []


async def test_metadata_of_another_conversation_is_damage(storage: FileStorage) -> None:
    store = storage.conversation_store()
    await store.save("a", MSGS)
    await store.save("b", MSGS)
    storage.path_of(Kind.METADATA, "b").write_bytes(storage.path_of(Kind.METADATA, "a").read_bytes())
    with pytest.raises(CorruptedDataError, match="does not match the folder"):
        await store.load("b")


async def test_a_link_in_place_of_metadata_is_refused(storage: FileStorage, tmp_path: Path) -> None:
    outside = tmp_path / "outside.json"
    outside.write_text("{}")
    await storage.store_raw_messages("c", MSGS)
    os.symlink(outside, storage.path_of(Kind.METADATA, "c"))
    with pytest.raises(StorageIOError, match="symbolic link"):
        await storage.load_raw_messages("c")
    with pytest.raises(StorageIOError, match="symbolic link"):
        await storage.append_raw_messages("c", [{"n": 3}])
    assert outside.read_text() == "{}"


async def test_queries_read_metadata_only(storage: FileStorage) -> None:
    store = storage.conversation_store()
    await store.save("a", MSGS, metadata={"k": 1})
    await store.save("b", MSGS, metadata={"k": 2})
    storage.path_of(Kind.RAW_MESSAGES, "a").write_text("not json at all")
    rows = await store.query().where("metadata.k", ">=", 1).order_by("conversation_id").all()
    assert [(r.conversation_id, r.message_count) for r in rows] == [("a", 2), ("b", 2)]


# ---------------------------------------------------------------------------- expiry


async def test_an_expired_conversation_stays_on_disk_until_cleanup(storage: FileStorage, clock: FakeClock) -> None:
    store = storage.conversation_store()
    await store.save("c", MSGS, ttl=10)
    await storage.store_chunks("c", [{"chunk": 1}])
    clock.advance(10)
    assert await storage.load_chunks("c") == []
    names = sorted(p.name for p in folder(storage, "c").iterdir())
    assert names == ["chunks.json", "metadata.json", "raw_messages.json"]
    assert await storage.cleanup() == {
        "expired_cache": 0, "expired_conversations": 1, "expired_kv_entries": 0,
        "temp_files": 0, "backups": 0, "lock_files": 0, "recovered_appends": 0,
    }  # fmt: skip
    assert not folder(storage, "c").exists()


async def test_a_write_to_an_expired_conversation_removes_its_old_files(storage: FileStorage, clock: FakeClock) -> None:
    store = storage.conversation_store()
    await store.save("c", MSGS, ttl=10)
    await storage.store_chunks("c", [{"chunk": 1}])
    await storage.store_memory("c", "m", {"text": "x"})
    clock.advance(10)
    await storage.store_conversation("c", {"title": "new"})
    assert sorted(p.name for p in folder(storage, "c").iterdir()) == ["current.json"]


async def test_a_large_part_of_an_expired_conversation_is_absent_too(storage: FileStorage, clock: FakeClock) -> None:
    # Files past the event loop's read limit are read in a worker thread: same expiry.
    big = [{"n": i, "text": "x" * 1000} for i in range(400)]
    store = storage.conversation_store()
    await store.save("c", big, ttl=10, metadata={"notes": ["y" * 1000] * 400})
    assert storage.path_of(Kind.RAW_MESSAGES, "c").stat().st_size > 256 * 1024
    assert storage.path_of(Kind.METADATA, "c").stat().st_size > 256 * 1024
    assert len(await storage.load_raw_messages("c")) == 400
    clock.advance(10)
    assert await storage.load_raw_messages("c") == []


async def test_another_process_clock_decides_only_for_itself(storage: FileStorage, clock: FakeClock) -> None:
    await storage.conversation_store().save("c", MSGS, ttl=10)
    async with files(storage, FakeClock(START + 11)) as later:
        assert await later.list_conversations() == []
        assert await later.load_raw_messages("c") == []
    assert await storage.load_raw_messages("c") == MSGS  # its clock says it is still live


# ------------------------------------------------------------- appends and message_count


async def test_appends_stay_in_place_with_metadata(storage: FileStorage) -> None:
    store = storage.conversation_store()
    await store.save("c", MSGS, metadata={"k": 1})
    await storage.append_raw_messages("c", [{"n": 0}])  # the first append makes the journal know the file
    path = storage.path_of(Kind.RAW_MESSAGES, "c")
    inode = path.stat().st_ino
    expected = [*MSGS, {"n": 0}]
    for n in range(1, 4):
        meta = await store.append("c", [{"n": n}])
        expected.append({"n": n})
        assert await storage.append_raw_messages("c", [{"m": n}]) == len(expected) + 1
        expected.append({"m": n})
        assert meta.message_count == len(expected) - 1
    assert path.stat().st_ino == inode, "appends with metadata must not rewrite the history"
    assert path.read_bytes() == encode(expected)
    [row] = await store.query().all()
    assert row.message_count == len(expected)


async def test_a_count_left_behind_by_a_crash_is_set_by_the_next_write(storage: FileStorage) -> None:
    store = storage.conversation_store()
    await store.save("c", MSGS)
    # What a crash between the history's write and the metadata's leaves: the history has
    # one more message than the count says.
    path = storage.path_of(Kind.METADATA, "c")
    document = json.loads(path.read_bytes())
    await storage.store_raw_messages("c", [*MSGS, {"n": 3}])
    path.write_bytes(encode(document))
    [row] = await store.query().all()
    assert row.message_count == 2  # queries read metadata only: behind until the next write
    loaded = await store.load("c")
    assert loaded is not None and loaded.metadata.message_count == 3  # a load counts what it read
    await storage.append_raw_messages("c", [{"n": 4}])
    [row] = await store.query().all()
    assert row.message_count == 4


def _append_worker(base: Path, process: int, count: int, go: Path, ready: Path) -> None:
    async def run() -> None:
        async with create_file_storage(base, clock=FakeClock()) as storage:
            store = storage.conversation_store()
            ready.write_text("ready")
            while not go.exists():
                await asyncio.sleep(0.001)
            for seq in range(count):  # mostly the store's appends, some of the plain ones
                if seq % 4 == 3:
                    await storage.append_raw_messages("shared", [{"p": process, "seq": seq}])
                else:
                    await store.append("shared", [{"p": process, "seq": seq}])

    asyncio.run(run())


def _start(*args: Any) -> subprocess.Popen[str]:
    return racers.start(__file__, *args)


async def test_two_processes_appending_keep_message_count_equal_to_the_history(
    storage: FileStorage, tmp_path: Path
) -> None:
    count = 40
    await storage.conversation_store().save("shared", [], metadata={"k": 1})
    go, readies = tmp_path / "go", [tmp_path / f"ready-{p}" for p in range(2)]
    procs = [_start("append", storage.base_dir, p, count, go, readies[p]) for p in range(2)]
    # Meanwhile, the stored count as any reader sees it: it may only grow. (Appending, then
    # writing a count read before the other process's append, would lower it.)
    meta_path, seen = storage.path_of(Kind.METADATA, "shared"), []
    await racers.race(
        procs, readies, go, meanwhile=lambda: seen.append(json.loads(meta_path.read_bytes())["message_count"])
    )
    assert seen == sorted(seen), "the stored message_count went down during the race"
    store = storage.conversation_store()
    loaded = await store.load("shared")
    assert loaded is not None and len(loaded.messages) == 2 * count
    [row] = await store.query().all()
    assert row.message_count == 2 * count  # the stored count, not one a load computed
    for process in range(2):  # each process's messages in its own order, none lost
        assert [m["seq"] for m in loaded.messages if m["p"] == process] == list(range(count))


def _crash_worker(base: Path, started: Path) -> None:
    async def run() -> None:
        async with create_file_storage(base, clock=FakeClock()) as storage:
            store = storage.conversation_store()
            started.write_text("started")
            seq = 0
            while True:  # until killed
                await store.append("c", [{"seq": seq}])
                seq += 1

    asyncio.run(run())


async def test_a_process_killed_while_appending_leaves_a_count_the_next_write_sets(
    storage: FileStorage, tmp_path: Path
) -> None:
    store = storage.conversation_store()
    await store.save("c", [], metadata={"k": 1})
    for round_ in range(3):
        started = tmp_path / f"started-{round_}"
        proc = _start("crash", storage.base_dir, started)
        try:
            deadline = time.monotonic() + racers.HANG
            while not started.exists():
                assert proc.poll() is None, proc.communicate()[1]
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05 + 0.03 * round_)  # some appends, then a kill at any instant
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=racers.HANG)
        finally:
            if proc.poll() is None:
                proc.kill()
        loaded = await store.load("c")
        assert loaded is not None
        history = len(loaded.messages)
        [row] = await store.query().all()
        assert row.message_count in (history, history - 1)  # at most the last append behind
        assert (await store.append("c", [{"after": round_}])).message_count == history + 1
        [row] = await store.query().all()
        assert row.message_count == history + 1


if __name__ == "__main__":
    mode, *rest = sys.argv[1:]
    if mode == "append":
        _append_worker(Path(rest[0]), int(rest[1]), int(rest[2]), Path(rest[3]), Path(rest[4]))
    else:
        _crash_worker(Path(rest[0]), Path(rest[1]))
