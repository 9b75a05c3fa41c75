"""The CLI never creates a store by mistake, never shows a traceback or a password, and
prints times and paths in one documented form. Real subprocesses, real trees and servers."""

from __future__ import annotations

import asyncio
import json
import subprocess
from datetime import datetime
from pathlib import Path

import pytest

from connectome_storage import create_file_storage, create_sqlite_storage
from tests.redis_server import free_port

from .test_cli import cli

READ_ONLY = [["stats"], ["health"], ["ls"], ["show", "c1"], ["verify"], ["backups", "system/s.json"], ["watch"]]
# Commands that write also need a storage that exists: there is nothing to clean or restore.
WRITING = [["cleanup"], ["restore", "system/s.json"]]


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    base = tmp_path / "tree"

    async def fill() -> None:
        async with create_file_storage(base) as storage:
            await storage.store_system_state("s", {"v": 1})
            await storage.store_system_state("s", {"v": 2})
            await storage.store_system_state("s", {"v": 3})

    asyncio.run(fill())
    return base


# ------------------------------------------------------- no store by mistake


@pytest.mark.parametrize("command", READ_ONLY + WRITING, ids=lambda c: c[0])
def test_a_mistyped_base_dir_exits_2_naming_it_and_creates_nothing(tmp_path: Path, command: list[str]) -> None:
    missing = tmp_path / "storgae_data"
    result = cli("--base-dir", str(missing), *command)
    assert result.returncode == 2
    assert str(missing) in one_line_error(result)
    assert not missing.exists()


@pytest.mark.parametrize("command", READ_ONLY, ids=lambda c: c[0])
def test_a_folder_without_the_format_marker_is_not_a_store(tmp_path: Path, command: list[str]) -> None:
    folder = tmp_path / "documents"
    folder.mkdir()
    result = cli("--base-dir", str(folder), *command)
    assert result.returncode == 2
    line = one_line_error(result)
    assert str(folder) in line and ".connectome-storage.json" in line
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize("command", [c for c in READ_ONLY if c != ["watch"]], ids=lambda c: c[0])
def test_reading_a_tree_of_an_older_version_adds_nothing_to_it(tree: Path, command: list[str]) -> None:
    # A tree written before key-value collections existed has no kv/ folder and no .gitignore.
    (tree / "kv").rmdir()
    (tree / ".gitignore").unlink()
    before = sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*") if ".locks" not in p.parts)
    result = cli("--base-dir", str(tree), *command)
    assert result.returncode in (0, 1), result.stderr  # show c1: no such conversation
    after = sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*") if ".locks" not in p.parts)
    assert after == before


@pytest.mark.parametrize("command", [["stats"], ["health"], ["ls"], ["show", "c1"], ["verify"]], ids=lambda c: c[0])
def test_a_missing_database_file_exits_2_and_is_not_created(tmp_path: Path, command: list[str]) -> None:
    pytest.importorskip("aiosqlite")
    missing = tmp_path / "nowhere" / "connectome.db"
    result = cli("--db-path", str(missing), *command)
    assert result.returncode == 2
    assert str(missing) in one_line_error(result)
    assert not missing.parent.exists()


def test_the_environment_path_is_checked_too(tmp_path: Path) -> None:
    missing = tmp_path / "typo"
    result = cli("ls", env={"CONNECTOME_STORAGE_BASE_DIR": str(missing)})
    assert result.returncode == 2 and "CONNECTOME_STORAGE_BASE_DIR" in one_line_error(result)
    assert not missing.exists()


def test_an_existing_store_still_opens_for_every_read_only_command(tree: Path) -> None:
    for command in READ_ONLY:
        if command[0] == "watch":
            continue  # runs until interrupted; tests/cli/test_cli_watch_migrate.py covers it
        result = cli("--base-dir", str(tree), *command)
        assert result.returncode in (0, 1), (command, result.stderr)  # show c1: no such conversation
        assert "Traceback" not in result.stderr


# ----------------------------------------------------------------- health


def test_health_of_an_unreachable_redis_is_an_unhealthy_report_without_the_password() -> None:
    pytest.importorskip("redis")
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0?password=hunter2"
    result = cli("--redis-url", url, "health")
    assert result.returncode == 1, result.stderr
    assert result.stdout.startswith("unhealthy (redis"), result.stdout
    assert "Traceback" not in result.stderr and "hunter2" not in result.stdout + result.stderr
    as_json = cli("--redis-url", url, "health", "--json")
    assert as_json.returncode == 1
    report = json.loads(as_json.stdout)
    assert (report["status"], report["backend"]) == ("unhealthy", "redis")
    assert report["details"]["error_type"] and "hunter2" not in as_json.stdout


def test_a_redis_error_in_another_command_is_one_line_without_the_password() -> None:
    pytest.importorskip("redis")
    result = cli("--redis-url", f"redis://user:hunter2@127.0.0.1:{free_port()}/0", "ls")
    assert result.returncode == 1
    line = one_line_error(result)
    assert "hunter2" not in line and "Unavailable" in line


def test_a_bad_redis_url_is_refused_without_its_password(tmp_path: Path) -> None:
    result = cli("--redis-url", "redis://:hunter2@[::1/0", "stats", cwd=tmp_path)
    assert result.returncode in (1, 2)
    assert "hunter2" not in result.stderr + result.stdout and "Traceback" not in result.stderr


def test_an_unknown_backend_names_where_it_came_from(tmp_path: Path) -> None:
    from_env = cli("stats", env={"CONNECTOME_STORAGE_TYPE": "mongo"}, cwd=tmp_path)
    assert from_env.returncode == 2 and "CONNECTOME_STORAGE_TYPE='mongo'" in one_line_error(from_env)
    from_option = cli("--type", "mongo", "stats", cwd=tmp_path)
    assert from_option.returncode == 2 and "--type='mongo'" in one_line_error(from_option)
    assert not (tmp_path / "storage_data").exists()


# ------------------------------------------------------------ backups, restore


def test_backup_times_are_iso_8601_that_fromisoformat_parses(tree: Path) -> None:
    listed = cli("--base-dir", str(tree), "backups", "system/s.json", "--json")
    assert listed.returncode == 0, listed.stderr
    versions = json.loads(listed.stdout)
    assert len(versions) == 2
    for version in versions:
        moment = datetime.fromisoformat(version["taken_at"])
        assert moment.utcoffset() is not None and moment.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    text = cli("--base-dir", str(tree), "backups", "system/s.json").stdout.splitlines()
    assert [line.split()[1] for line in text] == [v["taken_at"] for v in versions]


def test_restore_with_no_kept_version_exits_1(tree: Path) -> None:
    async def add() -> None:
        async with create_file_storage(tree) as storage:
            await storage.store_system_state("fresh", 1)

    asyncio.run(add())
    result = cli("--base-dir", str(tree), "restore", "system/fresh.json")
    assert result.returncode == 1
    assert "no kept versions of system/fresh.json" in one_line_error(result)
    assert (tree / "system/fresh.json").read_text() == "1\n"


def test_restore_of_a_version_that_is_not_kept_is_a_usage_error(tree: Path) -> None:
    result = cli("--base-dir", str(tree), "restore", "system/s.json", "--version", "99")
    assert result.returncode == 2 and "99" in one_line_error(result)


# ----------------------------------------------------------------- verify


def test_verify_on_sqlite_does_not_speak_of_a_tree(tmp_path: Path) -> None:
    pytest.importorskip("aiosqlite")
    database = tmp_path / "db.sqlite"

    async def create() -> None:
        async with create_sqlite_storage(database) as storage:
            await storage.store_system_state("s", 1)

    asyncio.run(create())
    result = cli("--db-path", str(database), "verify")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok: every entity parses\n"


def test_verify_reports_a_leftover_temp_file_and_exits_1(tree: Path) -> None:
    # A temp file whose writer is gone: pid 999999999 is above any pid_max.
    leftover = tree / "system" / ".tmp-999999999-0123456789ab"
    leftover.write_bytes(b'{"half": ')
    result = cli("--base-dir", str(tree), "verify")
    assert result.returncode == 1, result.stdout
    assert str(leftover) in result.stdout
    assert leftover.exists(), "verify changes nothing"
