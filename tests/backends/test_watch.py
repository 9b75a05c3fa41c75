"""FileStorage.watch(): real notifications, real outside processes editing the tree.

Waiting for an event uses a generous timeout; "nothing else arrived" is checked by
listening for a quiet spell several times longer than a burst. Nothing asserts on speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from connectome_storage import ChangeEvent, FileStorage, create_file_storage
from connectome_storage.errors import InvalidArgumentError, NotSupportedError, StorageError
from connectome_storage.interface import Kind

WAIT = 60.0  # seconds to wait for an event that must come
QUIET = 1.5  # seconds of silence after which no further event is expected (bursts: <= 0.4 s)


def outside(base: Path, code: str) -> None:
    """Run ``code`` in a separate Python process, with ``base`` (a Path) and os, shutil."""
    prelude = "import os, shutil, sys\nfrom pathlib import Path\nbase = Path(sys.argv[1])\n"
    subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code), str(base)], check=True, timeout=120)


class Watcher:
    """Consumes ``storage.watch()`` in a task and queues what it yields."""

    def __init__(self, storage: FileStorage, **options: Any) -> None:
        self.queue: asyncio.Queue[ChangeEvent] = asyncio.Queue()
        self.ready = asyncio.Event()
        self.task = asyncio.create_task(self._consume(storage, options))

    async def _consume(self, storage: FileStorage, options: dict[str, Any]) -> None:
        async for event in storage.watch(ready=self.ready, **options):
            self.queue.put_nowait(event)

    async def started(self) -> Watcher:
        ready = asyncio.create_task(self.ready.wait())
        await asyncio.wait({ready, self.task}, timeout=WAIT, return_when=asyncio.FIRST_COMPLETED)
        if self.task.done():
            self.task.result()  # raise what ended it
        assert self.ready.is_set(), "watch() never became ready"
        return self

    async def take(self, count: int) -> list[ChangeEvent]:
        """The next ``count`` events, then a check that no other event follows."""
        events = [await asyncio.wait_for(self.queue.get(), WAIT) for _ in range(count)]
        return events + await self.extra()

    async def extra(self) -> list[ChangeEvent]:
        """Whatever arrives during a quiet spell (expected: nothing)."""
        await asyncio.sleep(QUIET)
        extra = []
        while not self.queue.empty():
            extra.append(self.queue.get_nowait())
        return extra

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


def summary(events: list[ChangeEvent]) -> set[tuple[Kind, str, str, bool, bool]]:
    return {(e.kind, e.id, e.change, e.own, e.valid) for e in events}


@pytest.fixture
async def files(tmp_path: Path) -> AsyncIterator[FileStorage]:
    storage = create_file_storage(tmp_path / "data")
    assert isinstance(storage, FileStorage)
    async with storage:
        yield storage


@pytest.fixture
async def watcher(files: FileStorage) -> AsyncIterator[Watcher]:
    started = await Watcher(files).started()
    yield started
    await started.close()


async def test_outside_edit_create_and_delete_each_arrive_once(files: FileStorage) -> None:
    await files.store_conversation("conv_001", {"title": "Lisbon"})
    await files.store_cache("k", 1)
    watcher = await Watcher(files).started()
    # Edited the way editors save (temp file, then rename over), created with an id that
    # needs encoding, deleted: three files, one process, one burst.
    await asyncio.to_thread(
        outside,
        files.base_dir,
        """
        target = base / "conversations/conv_001/current.json"
        (target.parent / "current.json.new").write_text('{"title": "Porto"}\\n')
        os.replace(target.parent / "current.json.new", target)
        (base / "system/a%2Fb.json").write_text('{"x": 1}\\n')
        os.remove(base / "cache/k.json")
    """,
    )
    events = await watcher.take(3)
    await watcher.close()
    assert len(events) == 3, events
    assert summary(events) == {
        (Kind.CONVERSATION, "conv_001", "modified", False, True),
        (Kind.SYSTEM, "a/b", "added", False, True),
        (Kind.CACHE, "k", "deleted", False, True),
    }
    paths = {e.id: e.path for e in events}
    assert paths["a/b"] == files.path_of(Kind.SYSTEM, "a/b")
    assert paths["conv_001"] == files.path_of(Kind.CONVERSATION, "conv_001")


async def test_one_file_added_modified_deleted_in_turn(files: FileStorage, watcher: Watcher) -> None:
    changes = []
    for code in [
        "(base / 'agents/planner').mkdir(); (base / 'agents/planner/reasoning_chains.json').write_text('[]')",
        "(base / 'agents/planner/reasoning_chains.json').write_text('[{\"step\": 1}]')",
        "shutil.rmtree(base / 'agents/planner')",
    ]:
        await asyncio.to_thread(outside, files.base_dir, code)
        [event] = await watcher.take(1)
        assert (event.kind, event.id, event.own) == (Kind.REASONING_CHAINS, "planner", False)
        changes.append(event.change)
    assert changes == ["added", "modified", "deleted"]


async def test_a_burst_of_writes_to_one_file_is_one_event(files: FileStorage, watcher: Watcher) -> None:
    await asyncio.to_thread(
        outside,
        files.base_dir,
        """
        path = base / "system/counter.json"
        for n in range(20):
            path.write_text(str(n))
    """,
    )
    [event] = await watcher.take(1)
    assert (event.id, event.change, event.valid) == ("counter", "added", True)
    assert await files.load_system_state("counter") == 19


async def test_own_writes_are_flagged_own(files: FileStorage, watcher: Watcher) -> None:
    await files.store_conversation("c1", {"title": "t"})
    await files.append_raw_messages("c1", [{"role": "user", "content": "hi"}])
    assert summary(await watcher.take(2)) == {
        (Kind.CONVERSATION, "c1", "added", True, True),
        (Kind.RAW_MESSAGES, "c1", "added", True, True),
    }
    # A second append is written in place (not renamed over): still recognised as ours.
    await files.append_raw_messages("c1", [{"role": "assistant", "content": "hello"}])
    await files.store_memory("c1", "m1", {"text": "likes tea"})
    assert summary(await watcher.take(2)) == {
        (Kind.RAW_MESSAGES, "c1", "modified", True, True),
        (Kind.MEMORIES, "c1", "added", True, True),
    }
    # Another storage object over the same folder is someone else.
    async with create_file_storage(files.base_dir) as other:
        await other.store_system_state("s", {"v": 1})
        assert summary(await watcher.take(1)) == {(Kind.SYSTEM, "s", "added", False, True)}
    await files.delete_conversation("c1")
    assert summary(await watcher.take(3)) == {
        (kind, "c1", "deleted", True, True) for kind in (Kind.CONVERSATION, Kind.RAW_MESSAGES, Kind.MEMORIES)
    }


async def test_outside_change_after_own_write_is_not_own(files: FileStorage, watcher: Watcher) -> None:
    await files.store_system_state("s", 1)
    assert summary(await watcher.take(1)) == {(Kind.SYSTEM, "s", "added", True, True)}
    await asyncio.to_thread(outside, files.base_dir, "os.remove(base / 'system/s.json')")
    assert summary(await watcher.take(1)) == {(Kind.SYSTEM, "s", "deleted", False, True)}


async def test_broken_edits_arrive_as_invalid_events(files: FileStorage, watcher: Watcher) -> None:
    await files.store_conversation("c1", {"title": "t"})
    await files.store_raw_messages("c1", [{"role": "user"}])
    await watcher.take(2)
    await asyncio.to_thread(
        outside,
        files.base_dir,
        """
        (base / "conversations/c1/current.json").write_text('{"title": "t",\\n  oops}\\n')
    """,
    )
    [syntax] = await watcher.take(1)
    assert (syntax.kind, syntax.change, syntax.valid) == (Kind.CONVERSATION, "modified", False)
    assert syntax.error is not None and "line 2" in syntax.error and str(syntax.path) in syntax.error
    await asyncio.to_thread(
        outside,
        files.base_dir,
        """
        (base / "conversations/c1/raw_messages.json").write_text('{"role": "user"}\\n')
    """,
    )
    [shape] = await watcher.take(1)
    assert (shape.kind, shape.valid) == (Kind.RAW_MESSAGES, False)
    assert shape.error is not None and "expected a JSON array" in shape.error
    # The watch is still running, and storing again repairs the file and says so.
    await files.store_conversation("c1", {"title": "fixed"})
    [repaired] = await watcher.take(1)
    assert (repaired.kind, repaired.own, repaired.valid, repaired.error) == (Kind.CONVERSATION, True, True, None)


async def test_housekeeping_strays_and_outside_paths_produce_no_events(
    files: FileStorage, watcher: Watcher, tmp_path: Path
) -> None:
    await asyncio.to_thread(
        outside,
        files.base_dir,
        """
        (base / "conversations/c1").mkdir()
        (base / "conversations/c1/.tmp-999999-abcdef").write_text("[]")
        (base / "conversations/c1/notes.md").write_text("# notes")
        (base / "conversations/c1/sub").mkdir()
        (base / "conversations/c1/sub/current.json").write_text("{}")
        (base / "system/stray.txt").write_text("?")
        (base / "system/%41.json").write_text("1")  # not canonical: no id maps to it
        (base / "cache/.hidden.json").write_text("{}")
        (base / ".locks").mkdir(exist_ok=True)
        (base / ".locks/x.lock").write_text("")
        (base / ".backups/system/s.json").mkdir(parents=True)
        (base / ".backups/system/s.json/000001-x.json").write_text("1")
        marker = base / ".connectome-storage.json"
        marker.write_bytes(marker.read_bytes())
        (base / "notes.txt").write_text("root-level file")
        (base.parent / "elsewhere.json").write_text("{}")
        (base / "system/flash.json").write_text("1")  # came and went within the burst
        os.remove(base / "system/flash.json")
        (base / "system/sentinel.json").write_text("true")  # the one real change, last
    """,
    )
    events = await watcher.take(1)
    assert [(e.kind, e.id, e.change) for e in events] == [(Kind.SYSTEM, "sentinel", "added")]


async def test_folders_removed_or_moved_in_whole(files: FileStorage, watcher: Watcher, tmp_path: Path) -> None:
    await files.store_conversation("c1", {"title": "t"})
    await files.store_memory("c1", "m1", {"text": "x"})
    await watcher.take(2)
    await asyncio.to_thread(outside, files.base_dir, "shutil.rmtree(base / 'conversations/c1')")
    assert summary(await watcher.take(2)) == {
        (Kind.CONVERSATION, "c1", "deleted", False, True),
        (Kind.MEMORIES, "c1", "deleted", False, True),
    }
    staging = tmp_path / "staging" / "c 2"
    staging.mkdir(parents=True)
    (staging / "current.json").write_text('{"title": "moved in"}')
    (staging / "chunks.json").write_text("[]")
    # A folder renamed into the tree raises one notification, for the folder only.
    await asyncio.to_thread(outside, files.base_dir, f"os.rename({str(staging)!r}, base / 'conversations/c%202')")
    assert summary(await watcher.take(2)) == {
        (Kind.CONVERSATION, "c 2", "added", False, True),
        (Kind.CHUNKS, "c 2", "added", False, True),
    }


async def test_next_load_after_an_outside_edit_returns_the_edit(files: FileStorage, watcher: Watcher) -> None:
    await files.store_conversation("c1", {"title": "Lisbon"})
    await files.append_raw_messages("c1", [{"n": 1}])
    await files.append_raw_messages("c1", [{"n": 2}])
    await watcher.take(2)
    assert await files.load_conversation("c1") == {"title": "Lisbon"}  # read (and maybe cached)
    assert len(await files.load_raw_messages("c1")) == 2
    # Same sizes as before, edited in place: only the content and the mtime differ.
    await asyncio.to_thread(
        outside,
        files.base_dir,
        """
        doc = base / "conversations/c1/current.json"
        doc.write_text(doc.read_text().replace("Lisbon", "Lisbin"))
        log = base / "conversations/c1/raw_messages.json"
        log.write_text(log.read_text().replace('"n": 2', '"n": 7'))
    """,
    )
    assert {e.change for e in await watcher.take(2)} == {"modified"}
    assert await files.load_conversation("c1") == {"title": "Lisbin"}
    assert await files.load_raw_messages("c1") == [{"n": 1}, {"n": 7}]
    # An append after the hand edit builds on the edited history.
    assert await files.append_raw_messages("c1", [{"n": 3}]) == 3
    assert await files.load_raw_messages("c1") == [{"n": 1}, {"n": 7}, {"n": 3}]


async def test_cancellation_ends_the_watch(files: FileStorage) -> None:
    watcher = await Watcher(files).started()
    assert files._own.watching == 1
    watcher.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(watcher.task, WAIT)
    assert files._own.watching == 0
    # The storage is unaffected, and a new watch starts and sees changes.
    again = await Watcher(files).started()
    await files.store_system_state("s", 1)
    assert summary(await again.take(1)) == {(Kind.SYSTEM, "s", "added", True, True)}
    await again.close()


async def test_stop_event_ends_the_watch_without_being_set_by_it(files: FileStorage) -> None:
    stop = asyncio.Event()
    watcher = await Watcher(files, stop_event=stop).started()
    stop.set()
    await asyncio.wait_for(watcher.task, WAIT)  # returns: the async for loop simply ends
    assert watcher.task.exception() is None and files._own.watching == 0
    # Cancellation must not set the caller's event (watchfiles sets the one it is given).
    other = asyncio.Event()
    cancelled = await Watcher(files, stop_event=other).started()
    await cancelled.close()
    assert not other.is_set()


async def test_shutdown_ends_every_running_watch(files: FileStorage) -> None:
    first, second = await Watcher(files).started(), await Watcher(files).started()
    await files.shutdown()
    done, _ = await asyncio.wait({first.task, second.task}, timeout=WAIT)
    assert done == {first.task, second.task}
    assert first.task.exception() is None and second.task.exception() is None


async def test_debounce_must_be_a_positive_whole_number(files: FileStorage) -> None:
    for bad in (0, -5, 1.5, True):
        with pytest.raises(InvalidArgumentError, match="debounce_ms"):
            async for _ in files.watch(debounce_ms=bad):  # type: ignore[arg-type]
                pass
    assert files._own.watching == 0


async def test_watch_needs_initialize(tmp_path: Path) -> None:
    storage = create_file_storage(tmp_path / "data")
    with pytest.raises(StorageError, match="initialize"):
        async for _ in storage.watch():
            pass


async def test_other_backends_refuse_to_watch(tmp_path: Path) -> None:
    pytest.importorskip("aiosqlite")
    from connectome_storage import create_sqlite_storage

    async with create_sqlite_storage(tmp_path / "db.sqlite") as storage:
        with pytest.raises(NotSupportedError, match="file backend only") as caught:
            async for _ in storage.watch():
                pass
    assert isinstance(caught.value, NotImplementedError)


async def test_own_folders_renamed_into_place_and_away(files: FileStorage, watcher: Watcher) -> None:
    # A new conversation's folder is made hidden and renamed into place with its file in
    # it; its last part goes with the folder, renamed away: inotify reports the folder only.
    await files.store_conversation("c1", {"title": "t"})
    assert summary(await watcher.take(1)) == {(Kind.CONVERSATION, "c1", "added", True, True)}
    await files.append_raw_messages("c1", [{"role": "user", "content": "x"}])  # inside the moved-in folder
    assert summary(await watcher.take(1)) == {(Kind.RAW_MESSAGES, "c1", "added", True, True)}
    await files.delete_conversation("c1")
    assert summary(await watcher.take(2)) == {
        (Kind.CONVERSATION, "c1", "deleted", True, True),
        (Kind.RAW_MESSAGES, "c1", "deleted", True, True),
    }
    await files.store_memory("c2", "m", {"text": "x"})
    assert summary(await watcher.take(1)) == {(Kind.MEMORIES, "c2", "added", True, True)}
    await files.delete_memory("c2", "m")  # its last part: the folder goes whole
    assert summary(await watcher.take(1)) == {(Kind.MEMORIES, "c2", "deleted", True, True)}
