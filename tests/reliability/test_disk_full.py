"""A full disk: StorageFullError, the previous version intact, no temp file left.

Three ways to fill the disk: pyfakefs with a small disk, a real 64 KiB tmpfs (needs root,
as on CI), and a real OSError(ENOSPC) raised by os.write in the middle of a write.
"""

from __future__ import annotations

import errno
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyfakefs.fake_filesystem_unittest import Patcher

from connectome_storage import create_file_storage
from connectome_storage.errors import StorageFullError

BIG = {"text": "x" * 200_000}


def visible_and_temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


async def fill_and_check(base: Path) -> None:
    async with create_file_storage(base, create_backups=False) as storage:
        await storage.store_conversation("c", {"v": "small"})
        await storage.append_raw_messages("c", [{"n": 1}])
        with pytest.raises(StorageFullError, match="no space left") as caught:
            await storage.store_conversation("c", BIG)
        assert "current.json" in str(caught.value)
        with pytest.raises(StorageFullError):
            await storage.append_raw_messages("c", [BIG])
        assert await storage.load_conversation("c") == {"v": "small"}
        assert await storage.load_raw_messages("c") == [{"n": 1}]
    assert visible_and_temp_files(base / "conversations" / "c") == ["current.json", "raw_messages.json"]


async def test_full_fake_disk() -> None:
    with Patcher() as patcher:
        patcher.fs.set_disk_usage(64 * 1024)
        await fill_and_check(Path("/data/storage_data"))


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / f"tmpfs-{uuid.uuid4().hex[:6]}"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("mounting a tmpfs needs root; the pyfakefs and ENOSPC-injection tests cover this path")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


async def test_full_real_tmpfs(tiny_tmpfs: Path) -> None:
    await fill_and_check(tiny_tmpfs / "storage_data")


async def test_enospc_in_the_middle_of_a_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = tmp_path / "storage_data"
    async with create_file_storage(base) as storage:
        await storage.store_conversation("c", {"v": "old"})
        real_write = os.write

        def write_half_then_fail(fd: int, data: bytes) -> int:
            if len(data) > 1000:
                real_write(fd, bytes(data[:100]))
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_write(fd, data)

        monkeypatch.setattr(os, "write", write_half_then_fail)
        with pytest.raises(StorageFullError):
            await storage.store_conversation("c", BIG)
        monkeypatch.undo()
        assert await storage.load_conversation("c") == {"v": "old"}
    assert visible_and_temp_files(base / "conversations" / "c") == ["current.json"]


async def test_a_full_disk_during_an_append_in_place_leaves_the_old_bytes_on_disk(tiny_tmpfs: Path) -> None:
    base = tiny_tmpfs / "storage_data"
    async with create_file_storage(base, create_backups=False) as storage:
        await storage.append_raw_messages("c", [{"n": 1}])
        await storage.append_raw_messages("c", [{"n": 2}])  # now the file is known: appends go in place
        path = base / "conversations" / "c" / "raw_messages.json"
        before = path.read_bytes()
        with pytest.raises(StorageFullError):
            await storage.append_raw_messages("c", [BIG])
        # Read straight from disk, as a person or another program would, before any load.
        assert path.read_bytes() == before
