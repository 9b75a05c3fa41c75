"""What only FileStorage does: the documented tree, its bytes, backups, bad hand edits."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from connectome_storage import FileStorage, create_file_storage
from connectome_storage.errors import (
    CorruptedDataError,
    InvalidArgumentError,
    StorageIOError,
    UnsupportedFormatError,
)

from ..conftest import FakeClock


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return tmp_path / "storage_data"


@pytest.fixture
async def storage(base: Path, clock: FakeClock) -> AsyncIterator[FileStorage]:
    async with create_file_storage(base, clock=clock) as opened:
        assert isinstance(opened, FileStorage)
        yield opened


def data_files(base: Path) -> list[str]:
    """Every file of the tree outside hidden housekeeping entries."""
    return sorted(
        p.relative_to(base).as_posix()
        for p in base.rglob("*")
        if p.is_file() and not p.relative_to(base).parts[0].startswith(".")
    )


# ---------------------------------------------------------------------- layout


async def test_golden_layout_and_bytes(storage: FileStorage, base: Path, clock: FakeClock) -> None:
    await storage.store_conversation("conv_001", {"title": "Hi", "b": [1, 2], "a": None})
    await storage.append_raw_messages("conv_001", [{"role": "user", "content": "héllo 🙂"}])
    await storage.store_chunks("conv_001", [{"start": 0}])
    await storage.store_memory("conv_001", "m1", {"text": "x"})
    await storage.store_reasoning_chain("agent/1", {"step": 1})
    await storage.store_cache("k:1", {"v": 1}, ttl=90.5)
    await storage.store_system_state("state", [1, "two"])
    assert data_files(base) == [
        "agents/agent%2F1/reasoning_chains.json",
        "cache/k%3A1.json",
        "conversations/conv_001/chunks.json",
        "conversations/conv_001/current.json",
        "conversations/conv_001/memories.json",
        "conversations/conv_001/raw_messages.json",
        "system/state.json",
    ]
    conv = base / "conversations" / "conv_001"
    assert (
        conv / "current.json"
    ).read_bytes() == b'{\n  "a": null,\n  "b": [\n    1,\n    2\n  ],\n  "title": "Hi"\n}\n'
    assert (conv / "raw_messages.json").read_text("utf-8") == (
        '[\n  {\n    "content": "héllo 🙂",\n    "role": "user"\n  }\n]\n'
    )
    assert (conv / "memories.json").read_bytes() == b'[\n  {\n    "memory_id": "m1",\n    "text": "x"\n  }\n]\n'
    assert (base / "cache" / "k%3A1.json").read_bytes() == (
        b'{\n  "cache_key": "k:1",\n  "created_at": "2026-11-21T09:30:00.000Z",\n'
        b'  "data": {\n    "v": 1\n  },\n  "expires_at": "2026-11-21T09:31:30.500Z"\n}\n'
    )
    assert (base / "system" / "state.json").read_bytes() == b'[\n  1,\n  "two"\n]\n'
    assert (base / ".connectome-storage.json").is_file()


async def test_compact_json_is_one_line(base: Path, clock: FakeClock) -> None:
    async with create_file_storage(base, clock=clock, pretty_print_json=False) as storage:
        await storage.store_conversation("c", {"b": 1, "a": [1, {"z": 0, "y": 1}]})
    assert (base / "conversations/c/current.json").read_bytes() == b'{"a":[1,{"y":1,"z":0}],"b":1}\n'


async def test_equal_data_leaves_the_file_untouched(storage: FileStorage, base: Path) -> None:
    await storage.store_conversation("c", {"a": 1, "b": 2})
    path = base / "conversations/c/current.json"
    before = os.stat(path)
    await storage.store_conversation("c", {"b": 2, "a": 1})
    after = os.stat(path)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert await storage.list_backups("conversations/c/current.json") == []


async def test_same_data_gives_same_bytes_in_two_trees(tmp_path: Path, clock: FakeClock) -> None:
    trees = []
    for name in ("one", "two"):
        async with create_file_storage(tmp_path / name, clock=clock) as storage:
            await storage.store_conversation("c", {"x": [1, 2, {"k": "v"}]})
            await storage.store_cache("k", "v", ttl=5)
        trees.append({f: (tmp_path / name / f).read_bytes() for f in data_files(tmp_path / name)})
    assert trees[0] == trees[1]


async def test_hostile_ids_stay_inside_their_folder(storage: FileStorage, base: Path, tmp_path: Path) -> None:
    for identifier in ["../../etc/passwd", "..", "/abs/path", "..\\..\\win", "CON"]:
        await storage.store_conversation(identifier, {"id": identifier})
        await storage.store_system_state(identifier, 1)
        await storage.store_reasoning_chain(identifier, {})
        await storage.store_cache(identifier, 1)
    outside = [p for p in tmp_path.rglob("*") if base not in p.parents and p != base]
    assert outside == []
    assert all(len(Path(f).parts) in (2, 3) for f in data_files(base))
    assert "conversations/%2E.%2F..%2Fetc%2Fpasswd/current.json" in data_files(base)


# --------------------------------------------------------------------- backups


async def test_backups_rotate_keeping_the_newest(base: Path, clock: FakeClock) -> None:
    async with create_file_storage(base, clock=clock, max_backup_files=3) as storage:
        assert isinstance(storage, FileStorage)
        for version in range(6):
            clock.advance(1)
            await storage.store_conversation("c", {"version": version})
        kept = await storage.list_backups("conversations/c/current.json")
    assert [v.number for v in kept] == [3, 4, 5]
    assert [v.path.read_text() for v in kept] == [f'{{\n  "version": {n}\n}}\n' for n in (2, 3, 4)]
    assert kept[-1].taken_at == "2026-11-21T09:30:06.000Z"  # ISO 8601, as fromisoformat reads
    assert kept[-1].path.name == "000005-2026-11-21T09-30-06.000Z.json"  # the name avoids ':'


def version_bytes(version: int) -> bytes:
    return f'{{\n  "version": {version}\n}}\n'.encode()


async def test_a_reader_still_holding_an_old_version_keeps_it_intact(base: Path, clock: FakeClock) -> None:
    """A reader that opened the live file and stalled while the version passed through
    the backups and was pruned: its bytes must not change under it (no inode is reused)."""
    async with create_file_storage(base, clock=clock, max_backup_files=1) as storage:
        await storage.store_conversation("c", {"version": 0})
        fd = os.open(base / "conversations" / "c" / "current.json", os.O_RDONLY)
        try:
            for version in range(1, 6):
                await storage.store_conversation("c", {"version": version})
            assert os.pread(fd, 1000, 0) == version_bytes(0)
        finally:
            os.close(fd)
        assert await storage.load_conversation("c") == {"version": 5}


async def test_a_crash_leftover_link_to_the_live_file_is_pruned_by_the_next_writes(
    base: Path, clock: FakeClock
) -> None:
    """A crash between linking a backup and replacing the file leaves a kept version that
    is the live inode (one extra at most); later stores prune it like any other."""
    async with create_file_storage(base, clock=clock, max_backup_files=2) as storage:
        await storage.store_conversation("c", {"version": 0})
        folder = base / ".backups" / "conversations" / "c" / "current.json"
        folder.mkdir(parents=True)
        os.link(base / "conversations" / "c" / "current.json", folder / "000001-crash.json")
        for version in range(1, 5):
            await storage.store_conversation("c", {"version": version})
        kept = await storage.list_backups("conversations/c/current.json")
    assert [(v.number, v.path.read_bytes()) for v in kept] == [(4, version_bytes(2)), (5, version_bytes(3))]
    assert (base / "conversations" / "c" / "current.json").read_bytes() == version_bytes(4)


@pytest.mark.parametrize("options", [{"max_backup_files": 0}, {"create_backups": False}])
async def test_backups_can_be_turned_off(base: Path, clock: FakeClock, options: dict[str, object]) -> None:
    async with create_file_storage(base, clock=clock, **options) as storage:
        await storage.store_conversation("c", {"v": 1})
        await storage.store_conversation("c", {"v": 2})
        await storage.delete_conversation("c")
    assert not (base / ".backups").exists()


async def test_delete_keeps_a_backup_and_appends_take_none(storage: FileStorage, base: Path) -> None:
    await storage.append_raw_messages("c", [{"n": 1}])
    await storage.append_raw_messages("c", [{"n": 2}])
    assert await storage.list_backups("conversations/c/raw_messages.json") == []
    await storage.delete_conversation("c")
    kept = await storage.list_backups("conversations/c/raw_messages.json")
    assert len(kept) == 1 and b'"n": 2' in kept[0].path.read_bytes()
    assert not (base / "conversations" / "c").exists()


async def test_restore_newest_or_chosen_version_and_keep_the_replaced_one(storage: FileStorage) -> None:
    for version in range(3):
        await storage.store_conversation("c", {"v": version})
    restored = await storage.restore_backup("conversations/c/current.json")
    assert restored.number == 2 and await storage.load_conversation("c") == {"v": 1}
    await storage.restore_backup("conversations/c/current.json", 1)
    assert await storage.load_conversation("c") == {"v": 0}
    kept = await storage.list_backups("conversations/c/current.json")
    assert [v.path.read_bytes() for v in kept][-2:] == [b'{\n  "v": 2\n}\n', b'{\n  "v": 1\n}\n']


async def test_restore_after_delete_brings_the_conversation_back(storage: FileStorage) -> None:
    await storage.store_conversation("c", {"v": 1})
    await storage.delete_conversation("c")
    await storage.restore_backup("conversations/c/current.json")
    assert await storage.list_conversations() == ["c"]


@pytest.mark.parametrize("path", ["../outside.json", "conversations/c/other.json", ".backups/x", "cache/k", "system"])
async def test_restore_refuses_paths_outside_the_data_files(storage: FileStorage, path: str) -> None:
    with pytest.raises(InvalidArgumentError, match="relative to the base dir"):
        await storage.restore_backup(path)


async def test_restore_without_backups_says_so(storage: FileStorage) -> None:
    with pytest.raises(InvalidArgumentError, match="no kept version"):
        await storage.restore_backup("system/none.json")


# ----------------------------------------------------------------- hand edits


@pytest.mark.parametrize(
    ("relative", "content", "line", "column"),
    [
        ("conversations/c/current.json", b'{\n  "title": "x",\n  oops\n}\n', 3, 3),
        ("conversations/c/current.json", b"", 1, 1),
        ("conversations/c/current.json", b'{"truncated": [1, 2', 1, 20),
        ("conversations/c/current.json", b"\xff\xfe\x00binary", 1, 1),
        ("conversations/c/current.json", b"[1, 2]\n", 1, 1),
        ("conversations/c/raw_messages.json", b'{"not": "an array"}\n', 1, 1),
        ("conversations/c/memories.json", b'[{"text": "no id"}]\n', None, None),
        ("system/s.json", b"{", 1, 2),
        ("cache/k.json", b'{"data": 1}\n', None, None),
    ],
)
async def test_bad_hand_edits_raise_corrupted_data_error(
    storage: FileStorage, base: Path, relative: str, content: bytes, line: int | None, column: int | None
) -> None:
    await storage.store_conversation("c", {"ok": True})
    await storage.store_raw_messages("c", [{"n": 1}])
    await storage.store_memory("c", "m", {})
    await storage.store_system_state("s", 1)
    await storage.store_cache("k", 1)
    await storage.store_conversation("healthy", {"ok": True})
    (base / relative).write_bytes(content)
    with pytest.raises(CorruptedDataError) as caught:
        await {
            "conversations/c/current.json": lambda: storage.load_conversation("c"),
            "conversations/c/raw_messages.json": lambda: storage.load_raw_messages("c"),
            "conversations/c/memories.json": lambda: storage.load_memories("c"),
            "system/s.json": lambda: storage.load_system_state("s"),
            "cache/k.json": lambda: storage.load_cache("k"),
        }[relative]()
    error = caught.value
    assert error.path == str(base / relative)
    assert (error.line, error.column) == (line, column)
    assert str(base / relative) in str(error) and f"line {line}, column {column}" in str(error)
    # Everything else stays readable, stats count the bad entity, verify names it.
    assert await storage.load_conversation("healthy") == {"ok": True}
    assert (await storage.get_storage_stats())["unreadable_count"] == 1
    assert [p.location for p in await storage.verify()] == [str(base / relative)]


async def test_storing_again_repairs_a_broken_file(storage: FileStorage, base: Path) -> None:
    await storage.store_conversation("c", {"v": 1})
    (base / "conversations/c/current.json").write_text("{broken")
    await storage.store_conversation("c", {"v": 2})
    assert await storage.load_conversation("c") == {"v": 2}
    kept = await storage.list_backups("conversations/c/current.json")
    assert kept[-1].path.read_text() == "{broken"  # the broken edit is kept, not lost


async def test_appending_to_a_broken_log_is_refused_and_changes_nothing(storage: FileStorage, base: Path) -> None:
    await storage.append_raw_messages("c", [{"n": 1}])
    path = base / "conversations/c/raw_messages.json"
    path.write_text('[{"n": 1},')
    with pytest.raises(CorruptedDataError):
        await storage.append_raw_messages("c", [{"n": 2}])
    assert path.read_text() == '[{"n": 1},'


async def test_verify_names_strays(storage: FileStorage, base: Path) -> None:
    await storage.store_conversation("c", {})
    (base / "conversations/c/notes.txt").write_text("mine")
    (base / "cache/%41.json").write_text("{}")
    (base / "system/readme").write_text("x")
    (base / "agents/a-file").write_text("x")
    found = sorted(p.location for p in await storage.verify())
    assert found == sorted(
        str(base / f) for f in ["conversations/c/notes.txt", "cache/%41.json", "system/readme", "agents/a-file"]
    )
    assert await storage.list_cache_keys() == []


# ------------------------------------------------------------ housekeeping


async def test_cleanup_removes_temp_files_of_dead_writers_only_and_initialize_none(
    base: Path, clock: FakeClock
) -> None:
    async with create_file_storage(base, clock=clock) as storage:
        await storage.store_conversation("c", {})
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = base / "conversations/c" / f".tmp-{dead_pid}-abc"
    stale_top = base / "cache" / f".tmp-{dead_pid}-def"
    live = base / "conversations/c" / f".tmp-{os.getppid()}-ghi"
    for path in (stale, stale_top, live):
        path.write_text("half written")
    async with create_file_storage(base, clock=clock) as storage:
        # initialize() removes nothing (read-only commands open storages); verify names them.
        assert stale.exists() and stale_top.exists()
        reported = [p.location for p in await storage.verify()]
        assert reported == sorted([str(stale_top), str(stale)]) or sorted(reported) == sorted(
            [str(stale_top), str(stale)]
        )
        assert all("temp file" in p.message for p in await storage.verify())
        removed = await storage.cleanup()
        assert removed["temp_files"] == 2
        assert not stale.exists() and not stale_top.exists()
        assert live.exists()
        assert await storage.load_conversation("c") == {}
        assert await storage.verify() == []


async def test_a_tree_from_a_newer_version_is_refused(base: Path) -> None:
    base.mkdir(parents=True)
    (base / ".connectome-storage.json").write_text('{"format": "connectome-storage file tree", "version": 99}')
    with pytest.raises(UnsupportedFormatError, match="version 99"):
        await create_file_storage(base).initialize()


async def test_a_planted_symlink_cannot_lead_a_write_or_delete_outside(
    storage: FileStorage, base: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "current.json").write_text('{"precious": true}\n')
    (base / "conversations" / "c1").symlink_to(outside, target_is_directory=True)
    (base / "agents" / "a1").symlink_to(outside, target_is_directory=True)
    with pytest.raises(StorageIOError, match="symbolic link"):
        await storage.store_conversation("c1", {"evil": True})
    with pytest.raises(StorageIOError, match="symbolic link"):
        await storage.delete_conversation("c1")
    with pytest.raises(StorageIOError, match="symbolic link"):
        await storage.store_reasoning_chain("a1", {"evil": True})
    assert sorted(os.listdir(outside)) == ["current.json"]
    assert (outside / "current.json").read_text() == '{"precious": true}\n'
