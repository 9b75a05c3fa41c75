"""FileStorage's whole-tree scans (``get_storage_stats``): exact counts on odd trees.

The scan lists each conversation folder once and opens only the files the listing shows;
these tests plant what a person or a crash can leave (links, a FIFO, a folder where a file
belongs, temp files, empty folders, damaged or expired metadata) and check every count,
and that ``total_bytes`` is exactly what a walk of the data folders sums.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from connectome_storage import FileStorage, create_file_storage
from connectome_storage.codec import encode

from ..conftest import FakeClock

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
