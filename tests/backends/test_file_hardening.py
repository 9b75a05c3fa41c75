"""The file tree's hardening: no reader ever waits on a lock, nothing but regular files and
folders is opened or followed, every error is a StorageError, housekeeping stays bounded.

Scenarios that hung before their fix run in a subprocess with a generous timeout: the
timeout only detects a hang, it measures nothing.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from connectome_storage import FileStorage, create_file_storage
from connectome_storage.errors import AccessDeniedError, StorageError, StorageFullError, StorageIOError

from ..conftest import FakeClock

HANG_GUARD = 60.0  # seconds; a scenario that takes this long is stuck, not slow


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return tmp_path / "storage_data"


async def run_python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter; a hang fails the test instead of freezing it."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), HANG_GUARD)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"the scenario hung for {HANG_GUARD:g} s")
    return subprocess.CompletedProcess([code], proc.returncode or 0, out.decode(), err.decode())


# ------------------------------------------------------------- reads never lock

HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(600)
"""

READ_ALL = """
import asyncio, json, sys
from connectome_storage import create_file_storage

async def main():
    async with create_file_storage(sys.argv[1]) as storage:
        print(json.dumps([await storage.load_conversation("c"), await storage.load_raw_messages("c"),
                          await storage.load_memories("c"), await storage.load_system_state("s")]))

asyncio.run(main())
"""


async def test_a_read_never_waits_for_a_lock_another_process_holds_on_the_file(base: Path) -> None:
    async with create_file_storage(base) as storage:
        await storage.store_conversation("c", {"v": 1})
        await storage.append_raw_messages("c", [{"n": 1}])
        await storage.append_raw_messages("c", [{"n": 2}])
        await storage.store_memory("c", "m", {"t": 1})
        await storage.store_system_state("s", 1)
    holders = []
    try:
        for relative in ("current.json", "raw_messages.json", "memories.json"):
            holder = subprocess.Popen(
                [sys.executable, "-c", HOLD_LOCK, str(base / "conversations" / "c" / relative)],
                stdout=subprocess.PIPE,
            )
            holders.append(holder)
            assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
        result = await run_python(READ_ALL, str(base))
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [{"v": 1}, [{"n": 1}, {"n": 2}], [{"memory_id": "m", "t": 1}], 1]


async def test_at_most_max_backup_files_old_versions_exist_on_disk_in_any_form(base: Path, clock: FakeClock) -> None:
    async with create_file_storage(base, clock=clock, max_backup_files=3) as storage:
        folder = base / ".backups" / "conversations" / "c" / "current.json"
        for version in range(12):
            clock.advance(1)
            await storage.store_conversation("c", {"version": version})
            on_disk = sorted(p.name for p in folder.iterdir()) if folder.exists() else []
            assert len(on_disk) <= 3, on_disk
        kept = await storage.list_backups("conversations/c/current.json")
    assert [v.path.read_bytes() for v in kept] == [f'{{\n  "version": {n}\n}}\n'.encode() for n in (8, 9, 10)]
    assert all(datetime.fromisoformat(v.taken_at).tzinfo is not None for v in kept)
    assert kept[-1].taken_at == "2026-11-21T09:30:12.000Z"


# ------------------------------------------------- links, FIFOs, sockets, devices

PLANTS: dict[str, Callable[[Path, Path], Path]] = {}


def plant(name: str) -> Callable[[Callable[[Path, Path], Path]], Callable[[Path, Path], Path]]:
    def register(function: Callable[[Path, Path], Path]) -> Callable[[Path, Path], Path]:
        PLANTS[name] = function
        return function

    return register


@plant("fifo-raw-messages")
def _fifo(base: Path, outside: Path) -> Path:
    path = base / "conversations/c1/raw_messages.json"
    os.mkfifo(path)
    return path


@plant("symlink-current-to-passwd")
def _link_file(base: Path, outside: Path) -> Path:
    path = base / "conversations/c1/current.json"
    path.symlink_to("/etc/passwd")
    return path


@plant("symlink-current-to-outside-json")
def _link_json(base: Path, outside: Path) -> Path:
    path = base / "conversations/c1/memories.json"
    path.symlink_to(outside / "memories.json")
    return path


@plant("conversation-folder-symlink")
def _link_folder(base: Path, outside: Path) -> Path:
    path = base / "conversations/c1"
    (path / "chunks.json").unlink()
    path.rmdir()
    path.symlink_to(outside, target_is_directory=True)
    return path


@plant("agent-folder-symlink")
def _link_agent(base: Path, outside: Path) -> Path:
    path = base / "agents/a1"
    path.symlink_to(outside, target_is_directory=True)
    return path


@plant("socket-system-state")
def _socket(base: Path, outside: Path) -> Path:
    path = base / "system/s1.json"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.close()  # the socket file stays
    return path


@plant("symlink-cache-entry")
def _link_cache(base: Path, outside: Path) -> Path:
    path = base / "cache/k1.json"
    path.symlink_to(outside / "cache.json")
    return path


EVERY_OPERATION = """
import asyncio, json, sys
from connectome_storage import create_file_storage

OPERATIONS = {
    "load_conversation": lambda s: s.load_conversation("c1"),
    "load_raw_messages": lambda s: s.load_raw_messages("c1"),
    "load_chunks": lambda s: s.load_chunks("c1"),
    "load_memories": lambda s: s.load_memories("c1"),
    "store_conversation": lambda s: s.store_conversation("c1", {"evil": True}),
    "store_raw_messages": lambda s: s.store_raw_messages("c1", [{"evil": True}]),
    "append_raw_messages": lambda s: s.append_raw_messages("c1", [{"evil": True}]),
    "store_memory": lambda s: s.store_memory("c1", "m9", {"evil": True}),
    "delete_memory": lambda s: s.delete_memory("c1", "m1"),
    "store_chunks": lambda s: s.store_chunks("c1", [{"evil": True}]),
    "delete_conversation": lambda s: s.delete_conversation("c1"),
    "load_reasoning_chains": lambda s: s.load_reasoning_chains("a1"),
    "store_reasoning_chain": lambda s: s.store_reasoning_chain("a1", {"evil": True}),
    "load_system_state": lambda s: s.load_system_state("s1"),
    "store_system_state": lambda s: s.store_system_state("s1", {"evil": True}),
    "delete_system_state": lambda s: s.delete_system_state("s1"),
    "load_cache": lambda s: s.load_cache("k1"),
    "store_cache": lambda s: s.store_cache("k1", {"evil": True}),
    "delete_cache": lambda s: s.delete_cache("k1"),
}

async def main():
    results = {}
    async with create_file_storage(sys.argv[1]) as storage:
        for name, operation in OPERATIONS.items():
            try:
                results[name] = ["ok", repr(await operation(storage))]
            except Exception as e:
                results[name] = [type(e).__name__, str(e)]
        results["list_conversations"] = ["ok", await storage.list_conversations()]
        results["list_agents"] = ["ok", await storage.list_agents()]
        results["list_system_states"] = ["ok", await storage.list_system_states()]
        results["verify"] = ["ok", [[p.location, p.message] for p in await storage.verify()]]
        results["stats"] = ["ok", await storage.get_storage_stats()]
    print(json.dumps(results))

asyncio.run(main())
"""

# Which operations touch the planted entry (the rest must simply work).
TOUCHED = {
    "fifo-raw-messages": {"load_raw_messages", "store_raw_messages", "append_raw_messages", "delete_conversation"},
    "symlink-current-to-passwd": {"load_conversation", "store_conversation", "delete_conversation"},
    "symlink-current-to-outside-json": {"load_memories", "store_memory", "delete_memory", "delete_conversation"},
    "conversation-folder-symlink": {
        "load_conversation", "load_raw_messages", "load_chunks", "load_memories", "store_conversation",
        "store_raw_messages", "append_raw_messages", "store_memory", "delete_memory", "store_chunks",
        "delete_conversation",
    },
    "agent-folder-symlink": {"load_reasoning_chains", "store_reasoning_chain"},
    "socket-system-state": {"load_system_state", "store_system_state", "delete_system_state"},
    "symlink-cache-entry": {"load_cache", "store_cache", "delete_cache"},
}  # fmt: skip


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("planted", sorted(PLANTS))
async def test_a_link_fifo_or_socket_in_the_tree_is_refused_by_every_operation(
    base: Path, tmp_path: Path, planted: str
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "current.json").write_text('{"precious": true}\n')
    (outside / "memories.json").write_text('[{"memory_id": "m1", "precious": true}]\n')
    (outside / "raw_messages.json").write_text('[{"precious": true}]\n')
    (outside / "cache.json").write_text('{"cache_key": "k1", "created_at": "2026-11-21T09:30:00.000Z", '
                                        '"expires_at": null, "data": 1}\n')  # fmt: skip
    before = snapshot(outside)
    async with create_file_storage(base) as storage:
        await storage.store_chunks("c1", [{"ok": True}])  # c1's folder exists
    path = PLANTS[planted](base, outside)

    result = await run_python(EVERY_OPERATION, str(base))
    assert result.returncode == 0, result.stderr
    results = json.loads(result.stdout)
    for name in TOUCHED[planted]:
        kind, message = results[name]
        assert kind == "StorageIOError", (name, kind, message)
        assert str(path) in message, (name, message)
    assert snapshot(outside) == before  # nothing outside the tree was written
    # Listings do not hide it (a migration fails loudly instead of skipping it) ...
    if planted == "conversation-folder-symlink":
        assert "c1" in results["list_conversations"][1]
    if planted == "agent-folder-symlink":
        assert results["list_agents"][1] == ["a1"]
    if planted == "socket-system-state":
        assert results["list_system_states"][1] == ["s1"]
    # ... and verify names it, while stats count it as unreadable; neither fails.
    assert str(path) in [location for location, _ in results["verify"][1]]
    assert results["stats"][1]["unreadable_count"] >= 1


async def test_verify_names_links_and_fifos_among_the_housekeeping_entries(base: Path, tmp_path: Path) -> None:
    async with create_file_storage(base) as storage:
        await storage.store_conversation("c", {"v": 1})
        await storage.store_conversation("c", {"v": 2})
        await storage.append_raw_messages("c", [{"n": 1}])
    (journal,) = (base / ".journal").iterdir()
    journal.unlink()
    journal.symlink_to(tmp_path)
    (lock,) = (base / ".locks").iterdir()
    lock.unlink()
    os.mkfifo(lock)
    (version,) = (base / ".backups/conversations/c/current.json").iterdir()
    version.unlink()
    version.symlink_to("/etc/passwd")
    async with create_file_storage(base) as storage:
        problems = await asyncio.wait_for(storage.verify(), HANG_GUARD)
        assert {str(journal), str(lock), str(version)} <= {p.location for p in problems}
        with pytest.raises(StorageIOError, match=str(lock)):
            await asyncio.wait_for(storage.store_conversation("c", {"v": 3}), HANG_GUARD)
        assert await storage.list_backups("conversations/c/current.json") == []
    assert (tmp_path / "storage_data").exists()


# ---------------------------------------------------------- errors are StorageErrors


async def test_a_lock_folder_replaced_by_a_file_is_a_storage_error_naming_it(base: Path) -> None:
    async with create_file_storage(base) as storage:
        await storage.store_conversation("c", {"v": 1})
        locks = base / ".locks"
        for lock in locks.iterdir():
            lock.unlink()
        locks.rmdir()
        locks.write_text("not a folder")
        with pytest.raises(StorageIOError, match=str(locks)):
            await storage.store_conversation("c", {"v": 2})
        assert await storage.load_conversation("c") == {"v": 1}  # reads take no lock


@pytest.mark.parametrize("damage", [b'{"pending": 5}', b"\x00garbage", b'{"committed": {"ino": "x"}}', b"[1]"])
async def test_a_damaged_journal_record_is_reported_set_aside_and_the_log_stays_appendable(
    base: Path, damage: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    async with create_file_storage(base) as storage:
        await storage.append_raw_messages("c", [{"n": 1}])
        await storage.append_raw_messages("c", [{"n": 2}])
        (journal,) = (base / ".journal").iterdir()
        journal.write_bytes(damage)
        assert [p.location for p in await storage.verify()] == [str(journal)]
        assert await storage.load_raw_messages("c") == [{"n": 1}, {"n": 2}]
        assert await storage.append_raw_messages("c", [{"n": 3}]) == 3
        assert await storage.append_raw_messages("c", [{"n": 4}]) == 4
        assert await storage.load_raw_messages("c") == [{"n": 1}, {"n": 2}, {"n": 3}, {"n": 4}]
        assert "damaged" in caplog.text and str(journal) in caplog.text
        aside = journal.with_name(journal.name + ".damaged")
        assert aside.read_bytes() == damage
        assert [p.location for p in await storage.verify()] == [str(aside)]


def as_nobody(function: Callable[[], Any]) -> Any:
    """Run ``function`` in a forked child whose user is ``nobody`` (root ignores permission
    bits, so permission errors need another user), or in-process when not root. The
    child's result (or exception) comes back pickled through a pipe."""
    if os.geteuid() != 0:
        return function()
    import pickle

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(read_end)
            os.setgid(65534)
            os.setuid(65534)
            try:
                outcome: tuple[str, Any] = ("ok", function())
            except BaseException as e:
                outcome = ("raised", (type(e).__name__, str(e)))
            os.write(write_end, pickle.dumps(outcome))
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    status, value = pickle.loads(data)
    if status == "raised":
        pytest.fail(f"the unprivileged child raised {value[0]}: {value[1]}")
    return value


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder that the unprivileged user can reach (tmp_path's parents are root-only)."""
    folder = Path(tempfile.mkdtemp(prefix="connectome-perm-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        subprocess.run(["chmod", "-R", "u+rwx", str(folder)], check=False)
        subprocess.run(["rm", "-rf", str(folder)], check=False)


def test_a_read_only_tree_gives_access_denied_not_permission_error(shared_dir: Path) -> None:
    base = shared_dir / "storage_data"

    async def build() -> None:
        async with create_file_storage(base) as storage:
            await storage.store_conversation("c", {"v": 1})
            await storage.append_raw_messages("c", [{"n": 1}])

    asyncio.run(build())
    subprocess.run(["chmod", "-R", "a-w", str(base)], check=True)

    def try_writes() -> list[tuple[str, str]]:
        async def attempt() -> list[tuple[str, str]]:
            outcomes = []
            async with create_file_storage(base) as storage:
                assert await storage.load_conversation("c") == {"v": 1}  # reading still works
                for write in (
                    lambda: storage.store_conversation("c", {"v": 2}),
                    lambda: storage.append_raw_messages("c", [{"n": 2}]),
                    lambda: storage.store_system_state("s", 1),
                    lambda: storage.delete_conversation("c"),
                ):
                    try:
                        await write()
                        outcomes.append(("ok", ""))
                    except Exception as e:
                        outcomes.append((type(e).__name__ + ("/StorageError" if isinstance(e, StorageError) else ""),
                                         str(e)))  # fmt: skip
            return outcomes

        return asyncio.run(attempt())

    outcomes = as_nobody(try_writes)
    assert [kind for kind, _ in outcomes] == ["AccessDeniedError/StorageError"] * 4, outcomes
    assert all("permission denied" in message and str(base) in message for _, message in outcomes)
    assert issubclass(AccessDeniedError, StorageError)


def test_an_unreadable_data_file_is_named_by_verify_and_counted_by_stats(shared_dir: Path) -> None:
    """chmod 000 stops only other users (root reads anyway): checked as ``nobody``."""
    base = shared_dir / "storage_data"

    async def build() -> None:
        async with create_file_storage(base) as storage:
            await storage.store_conversation("c", {"v": 1})
            await storage.store_conversation("d", {"v": 2})
            await storage.store_system_state("s", 1)

    asyncio.run(build())
    locked = base / "conversations/c/current.json"
    locked.chmod(0o000)

    def look() -> tuple[list[tuple[str, str]], dict[str, Any]]:
        async def inspect() -> tuple[list[tuple[str, str]], dict[str, Any]]:
            async with create_file_storage(base) as storage:
                problems = [(p.location, p.message) for p in await storage.verify()]
                return problems, await storage.get_storage_stats()

        return asyncio.run(inspect())

    problems, stats = as_nobody(look)
    assert [location for location, _ in problems] == [str(locked)]
    assert "permission denied" in problems[0][1]
    assert stats["unreadable_count"] == 1
    assert (stats["conversation_count"], stats["system_state_count"]) == (2, 1)


# ------------------------------------------------------------------ housekeeping


async def test_a_full_disk_never_costs_a_kept_version(
    base: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with create_file_storage(base, clock=clock, max_backup_files=2) as storage:
        for version in range(4):
            clock.advance(1)
            await storage.store_conversation("c", {"version": version})
        kept_before = [
            (v.number, v.path.read_bytes()) for v in await storage.list_backups("conversations/c/current.json")
        ]
        assert len(kept_before) == 2
        real_write = os.write

        def full(fd: int, data: bytes) -> int:
            if len(data) > 1000:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_write(fd, data)

        monkeypatch.setattr(os, "write", full)
        with pytest.raises(StorageFullError):
            await storage.store_conversation("c", {"big": "x" * 5000})
        monkeypatch.undo()
        kept_after = [
            (v.number, v.path.read_bytes()) for v in await storage.list_backups("conversations/c/current.json")
        ]
        assert kept_after == kept_before
        assert await storage.load_conversation("c") == {"version": 3}


async def test_cache_takes_no_backups_and_cleanup_bounds_lock_files(base: Path, clock: FakeClock) -> None:
    async with create_file_storage(base, clock=clock) as storage:
        for round_ in range(3):
            for i in range(1000):
                await storage.store_cache(f"key-{i}", {"round": round_}, ttl=60)
        assert not (base / ".backups").exists()
        assert len(list((base / ".locks").iterdir())) == 1000  # one per live entry
        stats = await storage.get_storage_stats()
        assert stats["total_bytes"] > 0 and stats["backup_bytes"] == 0
        clock.advance(30 * 24 * 3600)  # past the TTL and the 7-day retention
        removed = await storage.cleanup()
        assert removed["expired_cache"] == 1000
        assert removed["backups"] == 0 and removed["lock_files"] == 1000
        assert list((base / ".locks").iterdir()) == []
        assert list((base / "cache").iterdir()) == []


async def test_cleanup_drops_backups_of_gone_entities_only_after_the_retention(base: Path, clock: FakeClock) -> None:
    async with create_file_storage(base, clock=clock, backup_retention=3600) as storage:
        await storage.store_conversation("gone", {"v": 1})
        await storage.store_conversation("gone", {"v": 2})
        await storage.delete_conversation("gone")
        await storage.store_conversation("kept", {"v": 1})
        await storage.store_conversation("kept", {"v": 2})
        stats = await storage.get_storage_stats()
        assert stats["backup_bytes"] > 0
        clock.advance(1800)
        assert (await storage.cleanup())["backups"] == 0
        await storage.restore_backup("conversations/gone/current.json")  # still possible
        await storage.delete_conversation("gone")
        clock.advance(3601)
        assert (await storage.cleanup())["backups"] == 3  # v1, v2, and v2 again (restored, then deleted)
        assert not (base / ".backups/conversations/gone").exists()
        assert len(await storage.list_backups("conversations/kept/current.json")) == 1


async def test_cleanup_leaves_a_held_lock_file_alone(base: Path, clock: FakeClock) -> None:
    async with create_file_storage(base, clock=clock) as storage:
        await storage.store_system_state("s", 1)
        await storage.delete_system_state("s")
        (lock,) = (base / ".locks").iterdir()
        holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK.replace("O_RDONLY", "O_RDWR"), str(lock)],
                                  stdout=subprocess.PIPE)  # fmt: skip
        try:
            assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
            clock.advance(30 * 24 * 3600)
            assert (await storage.cleanup())["lock_files"] == 0
            assert lock.exists()
        finally:
            holder.kill()
            holder.wait()
        assert (await storage.cleanup())["lock_files"] == 1


async def test_the_tree_ignores_its_housekeeping_in_git(base: Path, clock: FakeClock) -> None:
    async with create_file_storage(base, clock=clock) as storage:
        await storage.store_conversation("c", {"v": 1})
        await storage.store_conversation("c", {"v": 2})  # a backup
        await storage.append_raw_messages("c", [{"n": 1}])
        await storage.append_raw_messages("c", [{"n": 2}])  # a journal
        (base / "connectome.db").write_bytes(b"sqlite")

        def git(*args: str) -> str:
            env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                   "GIT_COMMITTER_EMAIL": "t@t"}  # fmt: skip
            return subprocess.run(["git", *args], cwd=base, check=True, capture_output=True, text=True, env=env).stdout

        git("init", "-q")
        git("add", "-A")
        staged = sorted(git("diff", "--cached", "--name-only").split())
        assert staged == [".connectome-storage.json", ".gitignore", "conversations/c/current.json",
                          "conversations/c/raw_messages.json"]  # fmt: skip
        git("commit", "-q", "-m", "snapshot")
        await storage.store_conversation("c", {"v": 3})
        await storage.store_cache("k", 1, ttl=5)
        assert git("status", "--porcelain").splitlines() == [" M conversations/c/current.json", "?? cache/"]
    custom = b"# mine\n"
    (base / ".gitignore").write_bytes(custom)
    async with create_file_storage(base, clock=clock):
        pass
    assert (base / ".gitignore").read_bytes() == custom  # never overwritten


async def test_a_state_stored_as_null_is_listed_and_counted(base: Path) -> None:
    async with create_file_storage(base) as storage:
        await storage.store_system_state("nothing", None)
        assert await storage.list_system_states() == ["nothing"]
        assert (await storage.get_storage_stats())["system_state_count"] == 1


async def test_capabilities(base: Path) -> None:
    storage = create_file_storage(base)
    assert isinstance(storage, FileStorage)
    assert storage.capabilities == frozenset({"watch", "backups", "persistent", "cross_process"})
    assert storage.supports("watch") and not storage.supports("native_ttl")
