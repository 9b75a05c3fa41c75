"""Id mapping under pyfakefs's Windows and macOS emulation: every id round-trips and
nothing lands outside the storage folder, even where paths are case-insensitive and
use backslashes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pyfakefs.fake_filesystem import OSType
from pyfakefs.fake_filesystem_unittest import Patcher

from connectome_storage import create_file_storage
from connectome_storage.errors import InvalidKeyError

IDS = [
    "conv_001", "../../etc/passwd", "..\\..\\windows\\system32", "C:\\evil", "CON", "con", "nul.txt",
    "COM1", "LPT9.log", "trailing.", "trailing ", "a:b", "a*b?c", "<>|\"", ".", "..", "~user",
    "ünï/cödé", "🙂",
]  # fmt: skip


@pytest.mark.parametrize("os_type", [OSType.WINDOWS, OSType.MACOS, OSType.LINUX], ids=lambda t: t.name)
async def test_every_id_round_trips_inside_the_folder(os_type: OSType) -> None:
    with Patcher() as patcher:
        patcher.fs.os = os_type
        root = Path("C:/data/storage_data" if os_type is OSType.WINDOWS else "/data/storage_data")
        before = set(walk(root.anchor))
        async with create_file_storage(root, create_backups=False) as storage:
            for identifier in IDS:
                await storage.store_system_state(identifier, identifier)
                await storage.store_conversation(identifier, {"id": identifier})
            for identifier in IDS:
                assert await storage.load_system_state(identifier) == identifier
                assert await storage.load_conversation(identifier) == {"id": identifier}
            assert await storage.list_system_states() == sorted(IDS)
            assert await storage.list_conversations() == sorted(IDS)
        created = set(walk(root.anchor)) - before
        outside = [p for p in created if root not in p.parents and p not in root.parents and p != root]
        assert outside == []
        system_files = sorted(os.listdir(root / "system"))
        assert len(system_files) == len(IDS)  # no two ids share a file, even case-insensitively


def walk(top: str) -> list[Path]:
    return [Path(dirpath) / name for dirpath, dirs, files in os.walk(top) for name in dirs + files]


@pytest.mark.parametrize("os_type", [OSType.WINDOWS, OSType.MACOS], ids=lambda t: t.name)
async def test_ids_differing_only_in_case_never_share_a_file(os_type: OSType) -> None:
    with Patcher() as patcher:
        patcher.fs.os = os_type
        root = Path("C:/data/storage_data" if os_type is OSType.WINDOWS else "/data/storage_data")
        async with create_file_storage(root) as storage:
            await storage.store_system_state("State", 1)
            await storage.store_conversation("Conv", {"v": 1})
            await storage.store_reasoning_chain("Agent", {"v": 1})
            with pytest.raises(InvalidKeyError, match="differs only in case from the stored id 'State'"):
                await storage.store_system_state("state", 2)
            with pytest.raises(InvalidKeyError):
                await storage.load_system_state("STATE")
            with pytest.raises(InvalidKeyError):
                await storage.append_raw_messages("conv", [{"v": 2}])
            with pytest.raises(InvalidKeyError):
                await storage.delete_conversation("CONV")
            with pytest.raises(InvalidKeyError):
                await storage.store_reasoning_chain("agent", {"v": 2})
            assert await storage.load_system_state("State") == 1
            assert await storage.load_conversation("Conv") == {"v": 1}
            assert await storage.load_raw_messages("Conv") == []
            # Once the first id is gone, the other spelling is free to use.
            await storage.delete_system_state("State")
            await storage.store_system_state("state", 2)
            assert await storage.list_system_states() == ["state"]
