"""Bad hand edits, end to end: a person breaks files of a tree in every way at once.

Each broken file gives CorruptedDataError naming it, everything else stays readable,
``connectome-storage verify`` (a real subprocess) names every broken file and exits 1,
``connectome-storage restore PATH`` brings back the kept version, and no command dies
with a traceback. (Per-case line and column checks are in tests/backends/test_file.py;
the CLI's output format in tests/cli/test_cli.py.)
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from connectome_storage import StorageInterface, create_file_storage
from connectome_storage.errors import CorruptedDataError

from ..conftest import FakeClock

Loader = Callable[[StorageInterface], Awaitable[Any]]


@dataclass(frozen=True)
class Edit:
    """A file, the two good versions the library wrote, and how a person breaks it."""

    relative: str
    load: Loader
    store: Callable[[StorageInterface, Any], Awaitable[Any]]
    first: Any  # stored first: the newest kept version once ``second`` replaces it
    second: Any  # stored last: the version the hand edit destroys
    damage: Callable[[bytes], bytes]
    what: str


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


EDITS = [
    Edit(
        "conversations/doc/current.json",
        lambda s: s.load_conversation("doc"),
        lambda s, v: s.store_conversation("doc", v),
        {"title": "first", "turns": [1, 2, 3]},
        {"title": "second", "turns": [1, 2, 3, 4]},
        truncated,
        "cut in half",
    ),
    Edit(
        "conversations/raw/raw_messages.json",
        lambda s: s.load_raw_messages("raw"),
        lambda s, v: s.store_raw_messages("raw", v),
        [{"role": "user", "content": "hi"}],
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
        lambda data: bytes(range(256)),
        "binary",
    ),
    Edit(
        "conversations/chunks/chunks.json",
        lambda s: s.load_chunks("chunks"),
        lambda s, v: s.store_chunks("chunks", v),
        [{"start": 0, "end": 4}],
        [{"start": 0, "end": 9}],
        lambda data: b'{"start": 0, "end": 9}\n',
        "an object where an array belongs",
    ),
    Edit(
        "conversations/mem/memories.json",
        lambda s: s.load_memories("mem"),
        lambda s, v: s.store_memory("mem", v["memory_id"], v),
        {"memory_id": "m1", "text": "likes tea"},
        {"memory_id": "m2", "text": "lives in Porto"},
        lambda data: b'[{"memory_id": "m1"}, {"memory_id": "m1"}]\n',
        "a memory id repeated",
    ),
    Edit(
        "conversations/nan/current.json",
        lambda s: s.load_conversation("nan"),
        lambda s, v: s.store_conversation("nan", v),
        {"score": 0.5},
        {"score": 0.75},
        lambda data: b'{"score": NaN}\n',
        "NaN, which JSON does not have",
    ),
    Edit(
        "conversations/utf/current.json",
        lambda s: s.load_conversation("utf"),
        lambda s, v: s.store_conversation("utf", v),
        {"text": "café"},
        {"text": "café au lait"},
        lambda data: data.replace("é".encode(), b"\xe9"),  # saved as Latin-1 by an old editor
        "invalid UTF-8",
    ),
    Edit(
        "cache/key.json",
        lambda s: s.load_cache("key"),
        lambda s, v: s.store_cache("key", v),
        {"answer": 41},
        {"answer": 42},
        lambda data: data.replace(b'"expires_at"', b'"expiry"'),
        "a cache entry without expires_at",
    ),
    Edit(
        "system/state.json",
        lambda s: s.load_system_state("state"),
        lambda s, v: s.store_system_state("state", v),
        {"mode": "idle"},
        {"mode": "busy"},
        lambda data: b"",
        "emptied",
    ),
]
# Reasoning chains are only ever appended to, and appends keep no backup, so this file
# can be named by verify but has no kept version to restore.
CHAINS = "agents/agent/reasoning_chains.json"
# A cache is regenerable, so cache entries take no backups either: a broken one is named
# by verify and repaired by storing it again.
CACHE = "cache/key.json"
RESTORABLE = [e for e in EDITS if e.relative != CACHE]
HEALTHY = {"title": "untouched"}


def cli(base: Path, *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CONNECTOME_STORAGE_")}
    return subprocess.run(
        [sys.executable, "-m", "connectome_storage", "--base-dir", str(base), *args],
        capture_output=True,
        text=True,
        env=clean,
    )


def assert_clean_exit(result: subprocess.CompletedProcess[str], code: int) -> None:
    """Exit ``code``; any message is one line, never a traceback."""
    assert result.returncode == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    assert len(result.stderr.splitlines()) <= 1, result.stderr


async def build(base: Path, clock: FakeClock) -> None:
    async with create_file_storage(base, clock=clock) as storage:
        for edit in EDITS:
            await edit.store(storage, edit.first)
            clock.advance(1)
            await edit.store(storage, edit.second)
        await storage.store_reasoning_chain("agent", {"step": 1})
        await storage.store_reasoning_chain("agent", {"step": 2})
        await storage.store_conversation("healthy", HEALTHY)


def expected_after_restore(edit: Edit) -> Any:
    if edit.relative.endswith("memories.json"):
        return [edit.first]  # the kept version is the file before m2 was added
    return edit.first


async def check_broken(base: Path, broken: list[str]) -> None:
    async with create_file_storage(base) as storage:
        for edit in EDITS:
            with pytest.raises(CorruptedDataError) as caught:
                await edit.load(storage)
            assert caught.value.path == str(base / edit.relative), edit.what
        with pytest.raises(CorruptedDataError):
            await storage.load_reasoning_chains("agent")
        assert await storage.load_conversation("healthy") == HEALTHY
        stats = await storage.get_storage_stats()
        assert stats["unreadable_count"] == len(broken)
        assert sorted(p.location for p in await storage.verify()) == sorted(str(base / r) for r in broken)


def test_every_broken_file_is_named_restored_and_nothing_crashes(tmp_path: Path) -> None:
    base = tmp_path / "storage_data"
    asyncio.run(build(base, FakeClock()))
    assert_clean_exit(cli(base, "verify"), 0)
    for edit in EDITS:
        path = base / edit.relative
        path.write_bytes(edit.damage(path.read_bytes()))
    (base / CHAINS).write_bytes(b"[1, 2]\n")  # items that are not objects
    broken = sorted([*(e.relative for e in EDITS), CHAINS])

    asyncio.run(check_broken(base, broken))

    verify = cli(base, "verify")
    assert_clean_exit(verify, 1)
    for relative in broken:
        assert str(base / relative) in verify.stdout, relative
    listed = json.loads(cli(base, "verify", "--json").stdout)
    assert sorted(p["location"] for p in listed) == sorted(str(base / r) for r in broken)

    # The other commands keep working on a damaged tree.
    stats = cli(base, "stats", "--json")
    assert_clean_exit(stats, 0)
    assert json.loads(stats.stdout)["unreadable_count"] == len(broken)
    assert_clean_exit(cli(base, "ls", "--all"), 0)
    assert_clean_exit(cli(base, "show", "healthy"), 0)
    shown = cli(base, "show", "doc")
    assert_clean_exit(shown, 1)
    assert "CorruptedDataError" in shown.stderr and str(base / "conversations/doc/current.json") in shown.stderr

    for edit in RESTORABLE:
        damaged = (base / edit.relative).read_bytes()
        assert_clean_exit(cli(base, "restore", edit.relative), 0)
        kept = json.loads(cli(base, "backups", edit.relative, "--json").stdout)
        # The damaged version was kept too, as the newest backup: nothing is ever lost.
        assert Path(kept[-1]["path"]).read_bytes() == damaged, edit.what
    for relative in (CHAINS, CACHE):
        no_backup = cli(base, "restore", relative)
        assert no_backup.returncode != 0
        assert_clean_exit(no_backup, no_backup.returncode)

    verify = cli(base, "verify", "--json")
    assert_clean_exit(verify, 1)
    assert sorted(p["location"] for p in json.loads(verify.stdout)) == sorted([str(base / CACHE), str(base / CHAINS)])

    async def check_restored() -> None:
        async with create_file_storage(base) as storage:
            for edit in EDITS:
                if edit in RESTORABLE:
                    assert await edit.load(storage) == expected_after_restore(edit), edit.what
                await edit.store(storage, edit.second)  # and the entity takes writes again
            assert await storage.append_raw_messages("raw", [{"n": 3}]) == 3
            assert await storage.load_conversation("healthy") == HEALTHY

    asyncio.run(check_restored())
    (base / CHAINS).write_bytes(b'[{"step": 1}]\n')  # the person repairs the log by hand
    assert_clean_exit(cli(base, "verify"), 0)


def test_restore_brings_back_the_last_good_version_when_a_broken_one_was_kept(tmp_path: Path) -> None:
    base = tmp_path / "storage_data"
    path = base / "conversations/c/current.json"

    async def edit_twice() -> None:
        async with create_file_storage(base, clock=FakeClock()) as storage:
            await storage.store_conversation("c", {"v": 1})
            await storage.store_conversation("c", {"v": 2})  # keeps v1
            path.write_text('{"v": 2, oops')
            await storage.store_conversation("c", {"v": 3})  # repairs it, and keeps the broken edit
            path.write_text('{"v": 3, oops')

    asyncio.run(edit_twice())
    assert_clean_exit(cli(base, "restore", "conversations/c/current.json"), 0)
    assert_clean_exit(cli(base, "verify"), 0)
    assert json.loads(cli(base, "show", "c").stdout) == {"v": 1}
