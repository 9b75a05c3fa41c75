"""FileStorage's whole-tree scans (``get_storage_stats``): exact counts on odd trees.

The scan lists each conversation folder once and opens only the files the listing shows;
these tests plant what a person or a crash can leave (links, a FIFO, a folder where a file
belongs, temp files, empty folders, damaged or expired metadata) and check every count,
and that ``total_bytes`` is exactly what a walk of the data folders sums.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from connectome_storage import FileStorage, create_file_storage
from connectome_storage.backends._file_scan import MetaAbsence
from connectome_storage.codec import encode
from connectome_storage.errors import StorageIOError

from ..conftest import FakeClock

ROOT = Path(__file__).resolve().parents[2]
MSGS = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
DATA_FOLDERS = ("conversations", "cache", "agents", "system", "messages", "kv")


@pytest.fixture
async def storage(tmp_path: Path, clock: FakeClock) -> AsyncIterator[FileStorage]:
    async with create_file_storage(tmp_path / "tree", clock=clock) as opened:
        assert isinstance(opened, FileStorage)
        yield opened


def walked_bytes(root: Path) -> int:
    """What the plain way sums: regular files below the data folders, links not followed."""
    total = 0
    for top in DATA_FOLDERS:
        for dirpath, _dirs, names in os.walk(root / top):
            for name in names:
                st = os.lstat(os.path.join(dirpath, name))
                total += (
                    st.st_size
                    if os.path.isfile(os.path.join(dirpath, name)) and not os.path.islink(os.path.join(dirpath, name))
                    else 0
                )
    return total


async def test_counts_every_part_once(storage: FileStorage) -> None:
    await storage.store_conversation("a", {"title": "a"})
    await storage.store_raw_messages("a", MSGS * 2)
    await storage.store_chunks("a", [{"i": 1}, {"i": 2}, {"i": 3}])
    await storage.store_memory("a", "m1", {"text": "x"})
    await storage.store_memory("a", "m2", {"text": "y"})
    await storage.conversation_store().save("b", MSGS)  # metadata.json + raw_messages.json
    stats = await storage.get_storage_stats()
    counts = [stats[k] for k in ("conversation_count", "raw_message_count", "chunk_count", "memory_count")]
    assert counts == [2, 6, 3, 2]
    assert stats["unreadable_count"] == 0 and stats["expired_conversation_count"] == 0
    assert stats["total_bytes"] == walked_bytes(storage.base_dir)


async def test_expired_conversation_is_counted_apart_and_its_bytes_stay(storage: FileStorage, clock: FakeClock) -> None:
    await storage.conversation_store().save("gone", MSGS, ttl=10)
    await storage.store_chunks("gone", [{"i": 1}])
    await storage.store_conversation("kept", {"title": "k"})
    clock.advance(11)
    stats = await storage.get_storage_stats()
    assert (stats["conversation_count"], stats["expired_conversation_count"]) == (1, 1)
    assert (stats["raw_message_count"], stats["chunk_count"]) == (0, 0)  # an expired one's parts are left out
    assert stats["total_bytes"] == walked_bytes(storage.base_dir)  # its files are still on disk


async def test_odd_entries_count_as_unreadable_and_never_block(storage: FileStorage, tmp_path: Path) -> None:
    conversations = storage.base_dir / "conversations"
    await storage.store_conversation("ok", {"title": "ok"})
    await storage.store_raw_messages("ok", MSGS)
    # A link in place of a part, a FIFO in place of another, a folder where a file belongs.
    outside = tmp_path / "outside.json"
    outside.write_bytes(encode([{"i": 1}] * 7))
    os.symlink(outside, conversations / "ok" / "chunks.json")
    os.mkfifo(conversations / "ok" / "memories.json")
    (conversations / "odd").mkdir()
    (conversations / "odd" / "current.json").mkdir()
    # A link in place of a whole conversation folder.
    os.symlink(conversations / "ok", conversations / "linked")
    # Damaged metadata: unreadable, and its conversation stays live with its parts counted.
    (conversations / "bad").mkdir()
    (conversations / "bad" / "metadata.json").write_bytes(b"{not json")
    (conversations / "bad" / "raw_messages.json").write_bytes(encode(MSGS))
    # What a crash or a person leaves: an empty folder, one holding only a temp file, a stray.
    (conversations / "empty").mkdir()
    (conversations / "tmp-only").mkdir()
    (conversations / "tmp-only" / ".tmp-1-abc").write_bytes(b"half written")
    (conversations / "ok" / "notes.txt").write_bytes(b"a person's note")
    stats = await storage.get_storage_stats()
    assert stats["conversation_count"] == 3  # ok, odd, bad
    assert stats["raw_message_count"] == 4  # ok's and bad's
    assert stats["chunk_count"] == 0 and stats["memory_count"] == 0  # the link is never followed
    assert stats["unreadable_count"] == 5  # the link, the FIFO, the folder, the folder link, the metadata
    assert stats["total_bytes"] == walked_bytes(storage.base_dir)


async def test_stats_read_the_log_as_it_was_before_a_cut_append(storage: FileStorage) -> None:
    """A raw history that does not parse is read as the settled read does (the version
    before a pending append), not counted as unreadable when that version is whole."""
    await storage.store_raw_messages("c", MSGS)
    path = storage.base_dir / "conversations" / "c" / "raw_messages.json"
    path.write_bytes(path.read_bytes()[:-3])  # cut, with no journal record: unreadable
    stats = await storage.get_storage_stats()
    assert stats["unreadable_count"] == 1 and stats["conversation_count"] == 1


# ------------------------------------------------------- loads without access()

OTHER_PROCESS = """
import asyncio, sys
from connectome_storage import create_file_storage

async def main() -> None:
    async with create_file_storage(sys.argv[1]) as storage:
        assert await storage.conversation_store().set_ttl(sys.argv[2], 0.001)

asyncio.run(main())
"""


async def remembered(storage: FileStorage, conversation_id: str) -> None:
    """Wait until the conversation's folder is old enough to be remembered as holding no
    metadata (MetaAbsence.MARGIN_NS), then load it once so that it is."""
    folder = storage.base_dir / "conversations" / conversation_id
    while True:
        st = os.lstat(folder)
        if max(st.st_mtime_ns, st.st_ctime_ns) < time.time_ns() - MetaAbsence.MARGIN_NS - 100_000_000:
            break
        await asyncio.sleep(0.25)
    assert await storage.load_conversation(conversation_id) == {"title": conversation_id}
    assert storage._meta_absent.known(str(folder), os.lstat(folder))  # the read path under test is the fast one


async def test_a_ttl_set_by_another_process_is_seen_by_a_remembered_folder(tmp_path: Path) -> None:
    async with create_file_storage(tmp_path / "tree") as storage:  # the real clock, as the other process
        assert isinstance(storage, FileStorage)
        await storage.store_conversation("c", {"title": "c"})
        await remembered(storage, "c")
        done = subprocess.run(
            [sys.executable, "-c", OTHER_PROCESS, str(storage.base_dir), "c"],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr.decode()
        await asyncio.sleep(0.01)  # past the 1 ms TTL
        assert await storage.load_conversation("c") is None
        assert "c" not in await storage.list_conversations()


async def test_a_ttl_set_by_this_process_is_seen_by_a_remembered_folder(storage: FileStorage, clock: FakeClock) -> None:
    await storage.store_conversation("c", {"title": "c"})
    await remembered(storage, "c")
    assert await storage.conversation_store().set_ttl("c", 10)
    assert await storage.load_conversation("c") == {"title": "c"}
    clock.advance(11)
    assert await storage.load_conversation("c") is None


async def test_a_remembered_folder_replaced_by_a_link_is_refused(storage: FileStorage, tmp_path: Path) -> None:
    await storage.store_conversation("c", {"title": "c"})
    await remembered(storage, "c")
    folder = storage.base_dir / "conversations" / "c"
    elsewhere = tmp_path / "elsewhere"
    folder.rename(elsewhere)
    os.symlink(elsewhere, folder)
    with pytest.raises(StorageIOError, match="symbolic link"):
        await storage.load_conversation("c")


async def test_a_folder_changed_within_the_margin_is_not_remembered(storage: FileStorage) -> None:
    """Its times could not tell a change in the same clock tick apart: every read looks."""
    await storage.store_conversation("fresh", {"title": "fresh"})
    folder = storage.base_dir / "conversations" / "fresh"
    assert await storage.load_conversation("fresh") == {"title": "fresh"}
    assert not storage._meta_absent.known(str(folder), os.lstat(folder))
