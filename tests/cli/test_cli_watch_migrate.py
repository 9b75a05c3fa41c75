"""`watch` and `migrate` through real subprocesses: output, signals, exit codes."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any

import pytest

from connectome_storage import create_file_storage, create_sqlite_storage
from connectome_storage.interface import STATS_KEYS

WAIT = 60.0  # generous: these wait on a subprocess starting and on file notifications


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CONNECTOME_STORAGE_")}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "connectome_storage", *args],
        capture_output=True, text=True, env=clean_env(), timeout=120,
    )  # fmt: skip


class Lines:
    """Reads a pipe line by line in a thread, so the test can wait with a timeout."""

    def __init__(self, pipe: IO[str]) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, args=(pipe,), daemon=True).start()

    def _pump(self, pipe: IO[str]) -> None:
        for line in pipe:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, needle: str) -> str:
        while True:
            try:
                line = self._queue.get(timeout=WAIT)
            except queue.Empty:
                raise AssertionError(f"no line with {needle!r} within {WAIT} s; saw {self.seen}") from None
            if line is None:
                raise AssertionError(f"stream ended without {needle!r}; saw {self.seen}")
            self.seen.append(line)
            if needle in line:
                return line

    def rest(self) -> list[str]:
        """Every line up to the end of the stream (call after the process exited)."""
        while (line := self._queue.get(timeout=WAIT)) is not None:
            self.seen.append(line)
        return self.seen


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    base = tmp_path / "storage_data"

    async def fill() -> None:
        async with create_file_storage(base) as storage:
            await storage.store_conversation("conv_001", {"title": "Lisbon"})
            await storage.append_raw_messages("conv_001", [{"role": "user", "content": "hi"}])
            await storage.append_raw_messages("conv_001", [{"role": "assistant", "content": "hello"}])
            await storage.store_memory("conv_001", "m1", {"text": "budget"})
            await storage.store_chunks("conv_001", [{"start": 0, "end": 2}])
            await storage.store_conversation("conv/002", {"title": "encoded id"})
            await storage.store_reasoning_chain("agent", {"step": 1})
            await storage.store_cache("forever", {"answer": 42})
            await storage.store_cache("for an hour", 2, ttl=3600)
            await storage.store_system_state("state", {"ok": True})

    asyncio.run(fill())
    return base


def start_watch(tree: Path, *options: str) -> tuple[subprocess.Popen[str], Lines, Lines]:
    process = subprocess.Popen(
        [sys.executable, "-m", "connectome_storage", "--base-dir", str(tree), "watch", *options],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env(),
    )  # fmt: skip
    out, err = Lines(process.stdout), Lines(process.stderr)  # type: ignore[arg-type]
    err.wait_for("watching")  # printed once the watch is established
    return process, out, err


def interrupt(process: subprocess.Popen[str]) -> int:
    process.send_signal(signal.SIGINT)
    try:
        return process.wait(timeout=WAIT)
    finally:
        if process.poll() is None:
            process.kill()


def test_watch_prints_outside_edits_and_exits_0_on_ctrl_c(tree: Path) -> None:
    process, out, err = start_watch(tree)
    (tree / "conversations/conv_001/current.json").write_text('{"title": "Porto"}\n')
    line = out.wait_for("conv_001")
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z  modified  conversation\s+conv_001  "
        r"conversations/conv_001/current\.json",
        line,
    ), line
    (tree / "system/state.json").write_text("{broken\n")
    broken = out.wait_for("state")
    assert "modified  system" in broken and "INVALID: corrupted data in" in broken
    (tree / "system/new%20one.json").write_text("[1]\n")
    added = out.wait_for("new one")
    assert "added" in added and added.endswith("system/new%20one.json")
    assert interrupt(process) == 0
    assert "Traceback" not in "\n".join(err.rest())
    assert not any("(own)" in line for line in out.rest())


def test_watch_json_prints_one_object_per_line(tree: Path) -> None:
    process, out, err = start_watch(tree, "--json")
    (tree / "cache/forever.json").unlink()
    record = json.loads(out.wait_for("forever"))
    assert interrupt(process) == 0
    assert {k: record[k] for k in ("kind", "id", "change", "own", "valid", "error")} == {
        "kind": "cache", "id": "forever", "change": "deleted", "own": False, "valid": True, "error": None,
    }  # fmt: skip
    assert record["path"] == "cache/forever.json"  # relative to the base dir, as in the text form
    assert re.fullmatch(r"\d{4}-.*Z", record["time"])
    assert "Traceback" not in "\n".join(err.rest())


def test_watch_refuses_other_backends_with_exit_2(tmp_path: Path) -> None:
    pytest.importorskip("aiosqlite")
    database = tmp_path / "db.sqlite"

    async def create() -> None:
        async with create_sqlite_storage(database):
            pass

    asyncio.run(create())
    result = cli("--db-path", str(database), "watch")
    assert result.returncode == 2
    assert "file backend only" in result.stderr and "Traceback" not in result.stderr


def data_files(root: Path) -> dict[str, bytes]:
    """Every data file's bytes by relative path (housekeeping such as .locks left out)."""
    folders = ("conversations", "cache", "agents", "system")
    return {
        str(p.relative_to(root)): p.read_bytes()
        for folder in folders for p in sorted((root / folder).rglob("*")) if p.is_file()
    }  # fmt: skip


def stats(*location: str) -> dict[str, object]:
    """The counts every backend reports alike (not its name, sizes or its own extras)."""
    result = cli(*location, "stats", "--json")
    assert result.returncode == 0, result.stderr
    counts: dict[str, object] = json.loads(result.stdout)
    return {key: counts[key] for key in STATS_KEYS if key not in ("backend", "total_bytes")}


def test_migrate_file_to_sqlite_keeps_every_count(tree: Path, tmp_path: Path) -> None:
    pytest.importorskip("aiosqlite")
    database = tmp_path / "copy.db"
    result = cli("migrate", "--from", f"file:{tree}", "--to", f"sqlite:{database}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"migrated file:{tree} -> sqlite:{database} in ")
    assert re.search(r"^  conversations\s+2$", result.stdout, re.M)
    assert re.search(r"^  raw messages\s+2$", result.stdout, re.M)
    # Not a terminal: a few plain progress lines, ending at 100 %.
    progress = result.stderr.splitlines()
    assert 2 <= len(progress) <= 5 and progress[-1] == "migrating: 100% (6/6)", progress
    assert "\r" not in result.stderr
    assert stats("--db-path", str(database)) == stats("--base-dir", str(tree))


def test_migrate_there_and_back_gives_the_same_files(tree: Path, tmp_path: Path) -> None:
    pytest.importorskip("aiosqlite")
    database, back = tmp_path / "copy.db", tmp_path / "back"
    assert cli("migrate", "--from", f"file:{tree}", "--to", f"sqlite:{database}").returncode == 0
    result = cli("migrate", "--from", f"sqlite:{database}", "--to", f"file:{back}", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "conversations": 2, "conversation_metadata": 0, "raw_messages": 2, "memories": 1, "chunks": 1,
        "reasoning_chains": 1, "cache_entries": 2, "system_states": 1, "skipped_expired": 0,
    }  # fmt: skip
    assert data_files(back) == data_files(tree) and len(data_files(tree)) == 9


def test_migrate_draws_a_bar_in_place_on_a_terminal(tree: Path, tmp_path: Path) -> None:
    import pty

    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "connectome_storage", "migrate", "--from", f"file:{tree}",
         "--to", f"file:{tmp_path / 'copy'}"],
        stdout=subprocess.PIPE, stderr=follower, env=clean_env(),
    )  # fmt: skip
    os.close(follower)
    stdout, _ = process.communicate(timeout=120)
    drawn = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the terminal's other side is closed and drained
            break
        if not chunk:
            break
        drawn += chunk
    os.close(leader)
    assert process.returncode == 0
    assert b"\r" in drawn and b"100%  6/6" in drawn and b"[" + b"#" * 30 + b"]" in drawn
    assert stdout.startswith(b"migrated file:")


@pytest.mark.parametrize(
    ("source", "destination", "needle"),
    [
        ("mongodb://db", "file:{tmp}/out", "is not a storage"),
        ("file:", "file:{tmp}/out", "is not a storage"),
        ("file:{tmp}/missing", "file:{tmp}/out", "does not exist"),
        ("file:{tmp}/tree", "file:{tmp}/tree/", "same storage"),
        ("file:{tmp}/tree", "nowhere", "is not a storage"),
    ],
)
def test_migrate_usage_errors_exit_2_and_write_nothing(
    tmp_path: Path, source: str, destination: str, needle: str
) -> None:
    (tmp_path / "tree").mkdir()
    result = cli("migrate", "--from", source.format(tmp=tmp_path), "--to", destination.format(tmp=tmp_path))
    assert result.returncode == 2, result.stderr
    assert needle in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_migrate_stops_with_exit_1_on_a_corrupt_source_file(tree: Path, tmp_path: Path) -> None:
    bad = tree / "conversations/conv_001/memories.json"
    bad.write_text("[{oops\n")
    result = cli("migrate", "--from", f"file:{tree}", "--to", f"file:{tmp_path / 'copy'}")
    assert result.returncode == 1
    assert str(bad) in result.stderr and "line 1" in result.stderr and "Traceback" not in result.stderr


def test_migrate_through_redis_with_key_prefixes(tree: Path, tmp_path: Path, redis_server: Any) -> None:
    pytest.importorskip("redis")
    url, first, second = redis_server.url, f"cli:{tmp_path.name}:a:", f"cli:{tmp_path.name}:b:"
    to_redis = cli("migrate", "--from", f"file:{tree}", "--to", url, "--key-prefix", first)
    assert to_redis.returncode == 0, to_redis.stderr
    assert stats("--redis-url", url, "--key-prefix", first) == stats("--base-dir", str(tree))
    across = cli("migrate", "--from", url, "--from-key-prefix", first, "--to", url, "--to-key-prefix", second)
    assert across.returncode == 0, across.stderr
    back = tmp_path / "back"
    home = cli("migrate", "--from", url, "--key-prefix", second, "--to", f"file:{back}")
    assert home.returncode == 0, home.stderr
    assert data_files(back) == data_files(tree)
    same = cli("migrate", "--from", url, "--to", url, "--key-prefix", first)
    assert same.returncode == 2 and "same storage" in same.stderr
