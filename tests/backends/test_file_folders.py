"""Format version 2 of the file tree: a folder of conversations/ is a conversation.

Folders appear whole and go whole, the expiry index (``.expiring/``) is kept by every
path that writes metadata, version-1 trees are upgraded at a writable open (and left
alone by a read-only one), leftovers are named by verify and removed by cleanup, and a
transaction's new conversation stays invisible until its commit.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from connectome_storage import FileStorage, create_file_storage
from connectome_storage.backends import file as file_backend
from connectome_storage.backends.memory import MemoryStorage
from connectome_storage.codec import encode
from connectome_storage.migrate import migrate
from tests.backends.test_file_hardening import as_nobody, shared_dir
from tests.conftest import FakeClock

__all__ = ["shared_dir"]  # a fixture, used by name

MSGS = [{"role": "user", "content": "hi"}]


def dead_pid() -> int:
    """The pid of a process that has ended (its temp files are leftovers)."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True)
    return int(proc.stdout)


def marker(base: Path) -> int:
    return int(json.loads((base / ".connectome-storage.json").read_text())["version"])


def indexed(base: Path) -> set[str]:
    folder = base / ".expiring"
    return set(os.listdir(folder)) if folder.is_dir() else set()


def meta_doc(conversation_id: str, expires_at: str | None) -> bytes:
    return encode({
        "conversation_id": conversation_id, "created_at": "2026-01-01T00:00:00.000Z",
        "updated_at": "2026-01-01T00:00:00.000Z", "message_count": 1, "metadata": {},
        "ttl": None if expires_at is None else 60, "expires_at": expires_at,
    })  # fmt: skip


def version_1_tree(base: Path, *, stray: bool) -> None:
    """A tree as version 1 wrote it, with what version 1 could leave: an empty folder, a
    temp-only folder, metadata with an (expired) expiry; and optionally a user's file in
    a folder without a part."""
    conversations = base / "conversations"
    conversations.mkdir(parents=True)
    (base / ".connectome-storage.json").write_text('{"format": "connectome-storage file tree", "version": 1}\n')
    (conversations / "c1").mkdir()
    (conversations / "c1" / "current.json").write_text('{"a": 1}\n')
    (conversations / "empty").mkdir()
    (conversations / "temps").mkdir()
    (conversations / "temps" / f".tmp-{dead_pid()}-ab0").write_text("half")
    (conversations / "old").mkdir()
    (conversations / "old" / "raw_messages.json").write_text("[]\n")
    (conversations / "old" / "metadata.json").write_bytes(meta_doc("old", "2000-01-01T00:00:00.000Z"))
    if stray:
        (conversations / "mine").mkdir()
        (conversations / "mine" / "notes.txt").write_text("my notes")


async def open_tree(base: Path, clock: FakeClock | None = None, *, read_only: bool = False) -> FileStorage:
    storage = create_file_storage(base, clock=clock or FakeClock())
    assert isinstance(storage, FileStorage)
    if read_only:
        storage.create_on_open = False
    await storage.initialize()
    return storage


# ------------------------------------------------------------------------- upgrade


async def test_a_version_1_tree_is_upgraded_at_a_writable_open(tmp_path: Path, caplog: Any) -> None:
    base = tmp_path / "data"
    version_1_tree(base, stray=False)
    reader = await open_tree(base, read_only=True)
    assert await reader.list_conversations() == ["c1"]  # the slow listing: part-less folders left out
    await reader.shutdown()
    assert marker(base) == 1 and (base / "conversations" / "empty").is_dir()  # a read-only open changed nothing
    caplog.set_level("INFO", logger="connectome_storage")
    storage = await open_tree(base)
    assert marker(base) == 2
    assert any("upgraded" in r.message and "format version 2" in r.message for r in caplog.records)
    assert sorted(os.listdir(base / "conversations")) == ["c1", "old"]
    assert indexed(base) == {"old"}
    assert storage._version == 2
    assert await storage.list_conversations() == ["c1"]  # the expired one, through the index
    assert (await storage.health_check())["details"]["format_version"] == 2
    await storage.shutdown()


async def test_a_users_file_in_a_partless_folder_keeps_version_1_until_it_goes(tmp_path: Path) -> None:
    base = tmp_path / "data"
    version_1_tree(base, stray=True)
    storage = await open_tree(base)
    assert marker(base) == 1 and storage._version == 1
    assert (base / "conversations" / "mine" / "notes.txt").read_text() == "my notes"
    assert not (base / "conversations" / "empty").exists()  # the others went
    assert await storage.list_conversations() == ["c1"]  # listed the slow way, still right
    problems = [p.location for p in await storage.verify() if "without a part" in p.message]
    assert problems == [str(base / "conversations" / "mine")]
    (base / "conversations" / "mine" / "notes.txt").unlink()
    await storage.cleanup()  # a full pass: upgrades once nothing stands in the way
    assert marker(base) == 2 and storage._version == 2
    assert await storage.list_conversations() == ["c1"]
    await storage.shutdown()


async def test_migrate_walks_a_tree_that_stays_at_version_1(tmp_path: Path) -> None:
    # The version-1 walk of the ids (each folder opened): part-less folders are not
    # conversations there, and an expired one is left behind and counted.
    base = tmp_path / "data"
    version_1_tree(base, stray=True)
    (base / "conversations" / "c2").mkdir()
    (base / "conversations" / "c2" / "raw_messages.json").write_bytes(encode(MSGS))
    source = await open_tree(base)
    assert source._version == 1
    destination = MemoryStorage({"clock": FakeClock()})
    await destination.initialize()
    report = await migrate(source, destination)
    assert sorted(await destination.list_conversations()) == ["c1", "c2"]
    assert await destination.load_raw_messages("c2") == MSGS
    assert (report.conversations, report.skipped_expired) == (2, 1)
    await source.shutdown()
    await destination.shutdown()


async def test_a_new_tree_is_made_at_version_2(tmp_path: Path) -> None:
    storage = await open_tree(tmp_path / "data")
    assert marker(tmp_path / "data") == file_backend.FORMAT_VERSION == 2
    await storage.shutdown()


# ------------------------------------------------------------- folders whole


async def test_folders_appear_and_go_whole(tmp_path: Path) -> None:
    base = tmp_path / "data"
    storage = await open_tree(base)
    await storage.append_raw_messages("a", MSGS)  # a new folder, made by an append
    await storage.store_memory("b", "m1", {"x": 1})  # by a member write
    await storage.store_conversation("c", {"x": 1})
    assert await storage.list_conversations() == ["a", "b", "c"]
    assert await storage.append_raw_messages("a", MSGS) == 2  # the append record was adopted
    await storage.delete_memory("b", "m1")  # its last part: the folder goes
    await storage.store_raw_messages("c", [])  # nothing to remove: c stays
    assert await storage.delete_conversation("a")
    assert sorted(os.listdir(base / "conversations")) == ["c"]
    assert await storage.list_conversations() == ["c"]
    # Kept versions of what went (a backup is kept before the folder is renamed away).
    assert [v.number for v in await storage.list_backups("conversations/a/raw_messages.json")] == [1]
    assert await storage.verify() == []
    await storage.shutdown()


async def test_a_users_file_keeps_its_folder(tmp_path: Path) -> None:
    base = tmp_path / "data"
    storage = await open_tree(base)
    await storage.store_conversation("c", {"x": 1})
    (base / "conversations" / "c" / "notes.txt").write_text("mine")
    assert await storage.delete_conversation("c")
    assert os.listdir(base / "conversations" / "c") == ["notes.txt"]  # never removed
    problems = {p.location for p in await storage.verify()}
    assert str(base / "conversations" / "c") in problems  # a folder without a part, named
    await storage.shutdown()


async def test_an_empty_folder_made_by_hand_is_written_into(tmp_path: Path) -> None:
    base = tmp_path / "data"
    storage = await open_tree(base)
    (base / "conversations" / "c").mkdir()
    await storage.store_conversation("c", {"x": 1})
    assert await storage.load_conversation("c") == {"x": 1}
    assert not [n for n in os.listdir(base / "conversations") if n.startswith(".")]
    await storage.shutdown()


# ---------------------------------------------------------------- the index


async def _expires_through(path: str, storage: FileStorage, clock: FakeClock) -> None:
    store = storage.conversation_store()
    if path == "save":
        await store.save("x", MSGS, ttl=60)
    elif path == "append":
        store.default_ttl = 60
        await store.append("x", MSGS)
    elif path == "set_ttl":
        await storage.store_raw_messages("x", MSGS)
        assert await store.set_ttl("x", 60)
    elif path == "transaction":
        async with storage.transaction() as tx:
            await tx.conversation_store().save("x", MSGS, ttl=60)
    elif path == "migrate":
        source = MemoryStorage({"clock": clock})
        await source.initialize()
        await source.conversation_store().save("x", MSGS, ttl=60)
        await migrate(source, storage)
    elif path == "restore":
        await store.save("x", MSGS, ttl=60)
        await store.set_ttl("x", None)
        assert indexed(storage.base_dir) == set()  # no expiry: no entry
        await storage.restore_backup("conversations/x/metadata.json")


@pytest.mark.parametrize("path", ["save", "append", "set_ttl", "transaction", "migrate", "restore"])
async def test_every_path_that_sets_an_expiry_indexes_it(tmp_path: Path, path: str) -> None:
    clock = FakeClock()
    storage = await open_tree(tmp_path / "data", clock)
    await storage.store_conversation("keep", {"x": 1})
    await _expires_through(path, storage, clock)
    assert indexed(storage.base_dir) == {"x"}
    assert await storage.list_conversations() == ["keep", "x"]
    clock.advance(61)
    assert await storage.list_conversations() == ["keep"]  # without the entry, x would be listed
    assert await storage.conversation_store().cleanup() == 1  # found through the index
    assert indexed(storage.base_dir) == set()  # gone with its conversation
    await storage.shutdown()


async def test_the_entry_goes_when_the_expiry_does(tmp_path: Path) -> None:
    storage = await open_tree(tmp_path / "data")
    store = storage.conversation_store()
    await store.save("x", MSGS, ttl=60)
    await store.set_ttl("x", None)
    assert indexed(storage.base_dir) == set()
    await store.save("y", MSGS, ttl=60)
    async with storage.transaction() as tx:
        await tx.conversation_store().set_ttl("y", None)
    assert indexed(storage.base_dir) == set()
    await store.save("z", MSGS, ttl=60)
    assert await store.delete("z")
    assert indexed(storage.base_dir) == set()
    await storage.shutdown()


async def test_metadata_with_an_expiry_written_by_hand(tmp_path: Path) -> None:
    base = tmp_path / "data"
    storage = await open_tree(base)
    await storage.store_raw_messages("h", MSGS)
    (base / "conversations" / "h" / "metadata.json").write_bytes(meta_doc("h", "2000-01-01T00:00:00.000Z"))
    assert await storage.load_raw_messages("h") == []  # loads honour it at once
    assert await storage.list_conversations() == ["h"]  # the listing, only after cleanup()
    await storage.cleanup()
    assert indexed(base) == set()  # cleanup removed the expired conversation itself
    assert await storage.list_conversations() == []
    # A stale entry (no expiry any more) goes at the next cleanup.
    await storage.store_raw_messages("s", MSGS)
    (base / ".expiring" / "s").write_bytes(b"")
    assert await storage.list_conversations() == ["s"]
    await storage.cleanup()
    assert indexed(base) == set()
    await storage.shutdown()


# ---------------------------------------------------------------- leftovers


async def test_leftover_folders_are_named_and_removed(tmp_path: Path) -> None:
    base = tmp_path / "data"
    storage = await open_tree(base)
    await storage.store_conversation("c", {"x": 1})
    pid = dead_pid()
    new = base / "conversations" / f".new-{pid}-ab0"
    gone = base / "conversations" / f".gone-{pid}-ab1"
    live = base / "conversations" / f".new-{os.getpid()}-ab2"
    for folder in (new, gone, live):
        folder.mkdir()
        (folder / "current.json").write_text("{}\n")
    assert await storage.list_conversations() == ["c"]
    stats = await storage.get_storage_stats()
    assert stats["conversation_count"] == 1
    named = {p.location for p in await storage.verify()}
    assert named == {str(new), str(gone)}  # a live writer's folder is no leftover
    assert (await storage.cleanup())["temp_files"] == 2
    assert sorted(os.listdir(base / "conversations")) == sorted(["c", live.name])
    await storage.shutdown()


# ------------------------------------------------------------- transactions


class _Peeking(FileStorage):
    """Lists the tree through a second storage object at the commit point of each commit
    (the journal written, nothing applied yet)."""

    seen: list[list[str]]
    other: FileStorage

    def _tx_finish(self, record: dict[str, Any], *, recovering: bool) -> list[str]:
        if not recovering:
            self.seen.append(self.other._conversations_sync(self._now_ms())[0])
        return super()._tx_finish(record, recovering=recovering)


async def test_a_new_conversation_of_a_transaction_is_not_visible_before_its_commit(tmp_path: Path) -> None:
    base = tmp_path / "data"
    storage = _Peeking({"base_dir": str(base)})
    await storage.initialize()
    storage.other = await open_tree(base)
    storage.seen = []
    await storage.store_conversation("old", {"x": 1})
    async with storage.transaction() as tx:
        await tx.store_conversation("new", {"x": 1})
        await tx.append_raw_messages("new", MSGS)
        await tx.store_conversation("old", {"x": 2})
    assert storage.seen == [["old"]]  # staged in a hidden folder, not in conversations/new
    assert await storage.other.list_conversations() == ["new", "old"]
    assert await storage.load_raw_messages("new") == MSGS
    assert not [n for n in os.listdir(base / "conversations") if n.startswith(".")]
    async with storage.transaction() as tx:  # a removal that empties a folder: it goes whole
        await tx.delete_conversation("new")
    assert sorted(os.listdir(base / "conversations")) == ["old"]
    await storage.other.shutdown()
    await storage.shutdown()


async def test_a_commit_interrupted_after_its_commit_point_renames_the_folder_at_recovery(tmp_path: Path) -> None:
    base = tmp_path / "data"
    code = f"""
import asyncio, os, sys
sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
from connectome_storage.backends.file import FileStorage

class Dying(FileStorage):
    def _tx_finish(self, record, *, recovering):
        os._exit(9)  # killed right after the commit point

async def main():
    storage = Dying({{"base_dir": {str(base)!r}}})
    await storage.initialize()
    async with storage.transaction() as tx:
        await tx.store_conversation("new", {{"x": 1}})
        await tx.conversation_store().save("new", [{{"role": "user", "content": "hi"}}], ttl=60)

asyncio.run(main())
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert proc.returncode == 9, proc.stderr.decode()
    assert [n for n in os.listdir(base / "conversations") if n.startswith(".new-")]
    assert indexed(base) == {"new"}  # made durable before the commit point
    storage = await open_tree(base)  # finishes the journal
    assert await storage.list_conversations() == ["new"]
    assert await storage.load_conversation("new") == {"x": 1}
    assert os.listdir(base / "conversations") == ["new"]
    assert await storage.verify() == []
    await storage.shutdown()


def test_a_version_1_tree_this_process_may_not_write_still_opens(shared_dir: Path) -> None:
    base = shared_dir / "data"
    version_1_tree(base, stray=False)
    for folder in ("cache", "agents", "system", "messages", "kv"):  # as the library made them
        (base / folder).mkdir()
    subprocess.run(["chmod", "-R", "a-w", str(base)], check=True)

    def open_and_list() -> tuple[int, list[str]]:
        async def attempt() -> tuple[int, list[str]]:
            storage = await open_tree(base)
            try:
                return storage._version, await storage.list_conversations()
            finally:
                await storage.shutdown()

        return asyncio.run(attempt())

    assert as_nobody(open_and_list) == (1, ["c1"])  # opens, lists the slow way
    assert marker(base) == 1
