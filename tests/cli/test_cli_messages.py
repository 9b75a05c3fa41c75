"""``connectome-storage ls --messages [--to AGENT]``: the message store from the command line."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from connectome_storage import create_file_storage

from .test_cli import cli


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    base = tmp_path / "storage_data"

    async def fill() -> None:
        async with create_file_storage(base, clock=lambda: 1_000_000_000.0) as storage:
            bus = storage.message_store()
            await bus.save({"id": "m1", "from": "planner", "to": "coder", "content": "go\nnow"})
            await bus.save({"id": "m2", "from": "coder", "to": "*", "content": {"done": True}, "extra": 1})
            await bus.save({"id": "m3", "from": "reviewer", "to": "planner", "content": "x" * 100})

    asyncio.run(fill())
    return base


def test_ls_messages_prints_one_line_per_message_oldest_first(tree: Path) -> None:
    result = cli("--base-dir", str(tree), "ls", "--messages")
    assert result.returncode == 0, result.stderr
    stamp = "2001-09-09T01:46:40.000Z"
    assert result.stdout.splitlines() == [
        f"m1  {stamp}  planner -> coder  go now",
        f"m2  {stamp}  coder -> *  " + '{"done":true}',
        f"m3  {stamp}  reviewer -> planner  " + "x" * 57 + "...",
    ]


def test_ls_messages_to_an_agent_includes_broadcasts_from_others(tree: Path) -> None:
    planner = cli("--base-dir", str(tree), "ls", "--messages", "--to", "planner")
    assert [line.split()[0] for line in planner.stdout.splitlines()] == ["m2", "m3"]
    coder = cli("--base-dir", str(tree), "ls", "--messages", "--to", "coder", "--json")
    assert coder.returncode == 0, coder.stderr
    assert [m["id"] for m in json.loads(coder.stdout)] == ["m1"]
    everything = json.loads(cli("--base-dir", str(tree), "ls", "--messages", "--json").stdout)
    assert everything[1] == {"id": "m2", "from": "coder", "to": "*", "content": {"done": True}, "extra": 1,
                             "timestamp": "2001-09-09T01:46:40.000Z"}  # fmt: skip


def test_ls_messages_on_a_missing_store_exits_2_and_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    result = cli("--base-dir", str(missing), "ls", "--messages")
    assert result.returncode == 2 and str(missing) in result.stderr and "Traceback" not in result.stderr
    assert not missing.exists()


def test_ls_messages_on_a_tree_without_a_messages_folder_lists_nothing_and_adds_nothing(tree: Path) -> None:
    shutil.rmtree(tree / "messages")  # as a tree written before the message store existed
    result = cli("--base-dir", str(tree), "ls", "--messages")
    assert result.returncode == 0 and result.stdout == ""
    assert not (tree / "messages").exists()
