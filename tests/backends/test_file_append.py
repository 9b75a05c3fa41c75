"""Appends in place: byte-identical to a full rewrite, crash-safe through the journal."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from connectome_storage import FileStorage, create_file_storage
from connectome_storage.codec import encode
from connectome_storage.errors import CorruptedDataError

ITEMS: list[dict[str, Any]] = [
    {"role": "user", "content": "héllo 🙂", "meta": {"tags": ["a", "b"], "nested": [{"x": []}, {}]}},
    {"role": "assistant", "content": 'line\nbreak "quoted"', "score": 0.25, "n": None},
    {},
]


@pytest.mark.parametrize("pretty", [True, False])
async def test_appends_in_place_equal_a_full_rewrite(tmp_path: Path, pretty: bool) -> None:
    base = tmp_path / "data"
    async with create_file_storage(base, pretty_print_json=pretty) as storage:
        path = base / "conversations/c/raw_messages.json"
        expected: list[dict[str, Any]] = []
        inodes = set()
        for round_ in range(4):
            batch = [dict(item, round=round_) for item in ITEMS]
            expected += batch
            assert await storage.append_raw_messages("c", batch) == len(expected)
            assert path.read_bytes() == encode(expected, pretty=pretty)
            inodes.add(os.stat(path).st_ino)
        assert len(inodes) == 1, "after the first write, appends must not replace the file"
        assert await storage.load_raw_messages("c") == expected
        chains_path = base / "agents/a/reasoning_chains.json"
        for item in ITEMS:
            await storage.store_reasoning_chain("a", item)
        assert chains_path.read_bytes() == encode(ITEMS, pretty=pretty)


async def test_a_hand_edit_is_read_before_the_next_append(tmp_path: Path) -> None:
    base = tmp_path / "data"
    async with create_file_storage(base) as storage:
        await storage.append_raw_messages("c", [{"n": 1}])
        await storage.append_raw_messages("c", [{"n": 2}])
        path = base / "conversations/c/raw_messages.json"
        path.write_text('[{"n": 1}, {"n": "edited", "extra": true}]')  # in place, other formatting
        assert await storage.append_raw_messages("c", [{"n": 3}]) == 3
        expected = [{"n": 1}, {"n": "edited", "extra": True}, {"n": 3}]
        assert path.read_bytes() == encode(expected)
        assert await storage.load_raw_messages("c") == expected


async def test_switching_pretty_print_rewrites_canonically(tmp_path: Path) -> None:
    base = tmp_path / "data"
    async with create_file_storage(base) as storage:
        await storage.append_raw_messages("c", [{"n": 1}])
    async with create_file_storage(base, pretty_print_json=False) as storage:
        await storage.append_raw_messages("c", [{"n": 2}])
    assert (base / "conversations/c/raw_messages.json").read_bytes() == b'[{"n":1},{"n":2}]\n'


async def cut_short_append(storage: FileStorage, items: list[dict[str, Any]], written: int | None) -> Path:
    """Do the journal's first step and write ``written`` bytes of the append (None: all),
    then stop, as if the process were killed right there."""
    path = storage.path_of(storage_kind_raw(), "c")
    logs = storage._logs
    committed = logs.recover(path)
    assert committed is not None
    stat = os.stat(path)
    new_bytes = logs._render(items)
    offset = stat.st_size - 3
    logs._record(
        logs.journal_path(path),
        {
            "pending": {
                "ino": stat.st_ino, "offset": offset, "old_tail": "\n]\n",
                "new_size": offset + len(new_bytes), "digest": hashlib.sha256(new_bytes).hexdigest(),
                "count_before": committed["count"], "count_after": committed["count"] + len(items), "pretty": True,
            }
        },
        durable=True,
    )  # fmt: skip
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(new_bytes if written is None else new_bytes[:written])
    return path


def storage_kind_raw() -> Any:
    from connectome_storage.interface import Kind

    return Kind.RAW_MESSAGES


@pytest.mark.parametrize("written", [0, 1, 2, 7, 30])
async def test_an_append_cut_short_is_rolled_back(tmp_path: Path, written: int) -> None:
    base = tmp_path / "data"
    async with create_file_storage(base) as storage:
        assert isinstance(storage, FileStorage)
        await storage.append_raw_messages("c", [{"n": 1}])
        await storage.append_raw_messages("c", [{"n": 2}])
        before = (base / "conversations/c/raw_messages.json").read_bytes()
        path = await cut_short_append(storage, [{"n": 3, "text": "x" * 40}], written)
    async with create_file_storage(base) as restarted:
        # A read takes no lock and changes nothing: it reads the version before the cut
        # append from the journal; the next write of the log recovers the file itself.
        assert await restarted.load_raw_messages("c") == [{"n": 1}, {"n": 2}]
        assert await restarted.verify() == []
        assert (await restarted.get_storage_stats())["raw_message_count"] == 2
        if written:
            assert path.read_bytes() != before
        assert await restarted.append_raw_messages("c", [{"n": 4}]) == 3
        assert path.read_bytes() == encode([{"n": 1}, {"n": 2}, {"n": 4}])


@pytest.mark.parametrize("written", [0, 7])
async def test_cleanup_repairs_the_file_of_an_append_cut_short(tmp_path: Path, written: int) -> None:
    base = tmp_path / "data"
    async with create_file_storage(base) as storage:
        assert isinstance(storage, FileStorage)
        await storage.append_raw_messages("c", [{"n": 1}])
        await storage.append_raw_messages("c", [{"n": 2}])
        path = await cut_short_append(storage, [{"n": 3, "text": "x" * 40}], written)
    async with create_file_storage(base) as restarted:
        assert (await restarted.cleanup())["recovered_appends"] == 1
        # The file itself is whole again, as an editor or git sees it, without any write.
        assert path.read_bytes() == encode([{"n": 1}, {"n": 2}])
        assert (await restarted.cleanup())["recovered_appends"] == 0


async def test_an_append_complete_but_unrecorded_is_kept(tmp_path: Path) -> None:
    base = tmp_path / "data"
    async with create_file_storage(base) as storage:
        assert isinstance(storage, FileStorage)
        await storage.append_raw_messages("c", [{"n": 1}])
        await cut_short_append(storage, [{"n": 2}], None)
    async with create_file_storage(base) as restarted:
        assert await restarted.append_raw_messages("c", [{"n": 3}]) == 3
        assert await restarted.load_raw_messages("c") == [{"n": 1}, {"n": 2}, {"n": 3}]


async def test_replacing_a_log_drops_its_journal(tmp_path: Path) -> None:
    base = tmp_path / "data"
    async with create_file_storage(base) as storage:
        assert isinstance(storage, FileStorage)
        await storage.append_raw_messages("c", [{"n": 1}])
        await storage.append_raw_messages("c", [{"n": 2}])
        journal = storage._logs.journal_path(base / "conversations/c/raw_messages.json")
        assert journal.exists()
        await storage.store_raw_messages("c", [{"n": 9}])
        assert not journal.exists()
        assert await storage.append_raw_messages("c", [{"n": 10}]) == 2
        await storage.delete_conversation("c")
        assert not journal.exists()
        assert await storage.append_raw_messages("c", [{"n": 1}]) == 1


async def test_a_log_broken_in_the_middle_is_still_reported(tmp_path: Path) -> None:
    base = tmp_path / "data"
    async with create_file_storage(base) as storage:
        await storage.append_raw_messages("c", [{"n": 1}])
        path = base / "conversations/c/raw_messages.json"
        path.write_bytes(path.read_bytes().replace(b'"n"', b'"n" oops'))
        with pytest.raises(CorruptedDataError):
            await storage.load_raw_messages("c")
        with pytest.raises(CorruptedDataError):
            await storage.append_raw_messages("c", [{"n": 2}])
