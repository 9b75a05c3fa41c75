"""The CLI through real subprocesses: output, exit codes, help text, docs."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from connectome_storage import create_file_storage
from connectome_storage.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CONNECTOME_STORAGE_")}
    return subprocess.run(
        [sys.executable, "-m", "connectome_storage", *args],
        capture_output=True, text=True, env=clean | (env or {}), cwd=cwd, timeout=120,
    )  # fmt: skip


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    base = tmp_path / "storage_data"

    async def fill() -> None:
        async with create_file_storage(
            base, clock=lambda: 1_000_000_000.0
        ) as storage:  # 2001: expired entries are expired now
            await storage.store_conversation("conv_001", {"title": "Lisbon"})
            await storage.store_conversation("conv_001", {"title": "Lisbon trip"})
            await storage.store_raw_messages("conv_001", [{"role": "user", "content": "hi"}])
            await storage.store_memory("conv_001", "m1", {"text": "budget"})
            await storage.store_reasoning_chain("agent", {"step": 1})
            await storage.store_cache("expired", 1, ttl=1)
            await storage.store_cache("forever", 2)
            await storage.store_system_state("state", {"ok": True})
            await storage.kv("sessions").set("user:1", {"name": "Ada"}, tags={"type": "web"})
            await storage.kv("sessions").set("gone", 1, ttl=1)

    asyncio.run(fill())
    return base


def test_stats_json(tree: Path) -> None:
    result = cli("--base-dir", str(tree), "stats", "--json")
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    assert (stats["backend"], stats["conversation_count"], stats["memory_count"]) == ("file", 1, 1)
    assert (stats["cache_entry_count"], stats["expired_cache_entry_count"]) == (1, 1)


def test_stats_human(tree: Path) -> None:
    result = cli("--base-dir", str(tree), "stats")
    assert result.returncode == 0
    assert re.search(r"^conversation_count\s+1$", result.stdout, re.M)


def test_health(tree: Path) -> None:
    result = cli("--base-dir", str(tree), "health", "--json")
    assert result.returncode == 0 and json.loads(result.stdout)["status"] == "healthy"
    assert cli("--base-dir", str(tree), "health").stdout.startswith("healthy (file")


def test_ls(tree: Path) -> None:
    assert cli("--base-dir", str(tree), "ls").stdout == "conv_001  1 message\n"  # counted from its history
    assert cli("--base-dir", str(tree), "ls", "--cache").stdout == "forever\n"
    listing = json.loads(cli("--base-dir", str(tree), "ls", "--all", "--json").stdout)
    assert listing == {
        "conversations": [{"conversation_id": "conv_001", "message_count": 1, "updated_at": None}],
        "agents": ["agent"], "cache": ["forever"], "system": ["state"], "kv": ["sessions"],
    }  # fmt: skip
    assert cli("--base-dir", str(tree), "ls", "--kv").stdout == "sessions\n"
    assert cli("--base-dir", str(tree), "ls", "--kv", "sessions").stdout == "user:1\n"  # "gone" expired
    assert cli("--base-dir", str(tree), "ls", "--kv", "nothing").stdout == ""


def test_show(tree: Path) -> None:
    assert json.loads(cli("--base-dir", str(tree), "show", "conv_001").stdout) == {"title": "Lisbon trip"}
    shown = json.loads(cli("--base-dir", str(tree), "show", "conv_001", "--all").stdout)
    assert shown["memories"] == [{"memory_id": "m1", "text": "budget"}]
    assert shown["raw_messages"] == [{"role": "user", "content": "hi"}]
    missing = cli("--base-dir", str(tree), "show", "nope")
    assert missing.returncode == 1 and "nope" in missing.stderr and "Traceback" not in missing.stderr


def test_ls_and_show_with_conversation_store_metadata(tmp_path: Path) -> None:
    base = tmp_path / "storage_data"

    async def fill() -> None:
        async with create_file_storage(base, clock=lambda: 1_000_000_000.0) as storage:  # 2001
            store = storage.conversation_store()
            await store.save("gone", [{"n": 1}], ttl=60)  # long expired today
            await store.save("kept", [{"n": 1}, {"n": 2}], ttl=10**9, metadata={"userId": "u1"})
            await storage.store_raw_messages("plain", [{"n": 1}, {"n": 2}, {"n": 3}])

    asyncio.run(fill())
    assert cli("--base-dir", str(base), "ls").stdout.splitlines() == [
        "kept   2 messages  updated 2001-09-09T01:46:40.000+00:00",
        "plain  3 messages",
    ]
    shown = json.loads(cli("--base-dir", str(base), "show", "kept", "--metadata").stdout)
    assert shown == {
        "conversation_id": "kept", "created_at": "2001-09-09T01:46:40.000+00:00",
        "updated_at": "2001-09-09T01:46:40.000+00:00", "message_count": 2, "ttl": 10**9,
        "expires_at": "2033-05-18T03:33:20.000+00:00", "metadata": {"userId": "u1"},
    }  # fmt: skip
    gone = cli("--base-dir", str(base), "show", "gone", "--metadata")
    assert gone.returncode == 1 and "'gone'" in gone.stderr and "expired" in gone.stderr
    cleaned = json.loads(cli("--base-dir", str(base), "cleanup", "--json").stdout)
    assert cleaned["expired_conversations"] == 1
    assert not (base / "conversations" / "gone").exists()


def test_show_kv_entry(tree: Path) -> None:
    entry = json.loads(cli("--base-dir", str(tree), "show", "--kv", "sessions", "user:1").stdout)
    assert entry == {
        "key": "user:1", "value": {"name": "Ada"}, "tags": {"type": "web"},
        "created_at": "2001-09-09T01:46:40.000+00:00", "updated_at": "2001-09-09T01:46:40.000+00:00",
        "expires_at": None,
    }  # fmt: skip
    for namespace, key in [("sessions", "gone"), ("nothing", "x")]:
        missing = cli("--base-dir", str(tree), "show", "--kv", namespace, key)
        assert missing.returncode == 1 and repr(key) in missing.stderr and "Traceback" not in missing.stderr
    assert cli("--base-dir", str(tree), "show").returncode == 2


def test_verify_clean_then_broken(tree: Path) -> None:
    clean = cli("--base-dir", str(tree), "verify")
    assert clean.returncode == 0 and clean.stdout.startswith("ok")
    bad = tree / "conversations/conv_001/current.json"
    bad.write_text('{"title": "Lisbon trip",\n  oops}\n')
    (tree / "system/stray.txt").write_text("?")
    broken = cli("--base-dir", str(tree), "verify")
    assert broken.returncode == 1
    assert str(bad) in broken.stdout and "line 2, column 3" in broken.stdout
    assert str(tree / "system/stray.txt") in broken.stdout
    as_json = json.loads(cli("--base-dir", str(tree), "verify", "--json").stdout)
    assert sorted(p["location"] for p in as_json) == sorted([str(bad), str(tree / "system/stray.txt")])


def test_backups_and_restore(tree: Path) -> None:
    listed = cli("--base-dir", str(tree), "backups", "conversations/conv_001/current.json", "--json")
    assert listed.returncode == 0 and [v["number"] for v in json.loads(listed.stdout)] == [1]
    restored = cli("--base-dir", str(tree), "restore", "conversations/conv_001/current.json")
    assert restored.returncode == 0, restored.stderr
    assert json.loads(cli("--base-dir", str(tree), "show", "conv_001").stdout) == {"title": "Lisbon"}
    bad_path = cli("--base-dir", str(tree), "restore", "../../etc/passwd")
    assert bad_path.returncode == 2 and "relative to the base dir" in bad_path.stderr


def test_cleanup_does_all_housekeeping_and_prints_every_count(tree: Path) -> None:
    result = cli("--base-dir", str(tree), "cleanup", "--json")
    assert result.returncode == 0, result.stderr
    counts = json.loads(result.stdout)
    assert counts["expired_cache"] == 1 and all(isinstance(n, int) for n in counts.values())
    assert not (tree / "cache/expired.json").exists() and (tree / "cache/forever.json").exists()
    again = cli("--base-dir", str(tree), "cleanup")
    assert again.returncode == 0 and again.stdout.startswith("removed 0 item(s):")
    for what in counts:  # the text form lists the same counts
        assert re.search(rf"^  {what}\s+0$", again.stdout, re.M), again.stdout


def test_environment_selects_the_storage(tree: Path) -> None:
    result = cli("ls", env={"CONNECTOME_STORAGE_BASE_DIR": str(tree)})
    assert result.stdout == "conv_001  1 message\n"


def test_base_dir_alone_means_the_file_backend(tree: Path) -> None:
    result = cli("--base-dir", str(tree), "ls", env={"CONNECTOME_STORAGE_TYPE": "redis"})
    assert result.returncode == 0 and result.stdout == "conv_001  1 message\n"


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (["--type", "mongo", "stats"], {}, "known backends"),
        (["stats"], {"CONNECTOME_STORAGE_TIMEOUT": "soon"}, "CONNECTOME_STORAGE_TIMEOUT"),
        (["stats"], {"CONNECTOME_STORAGE_PRETTY_JSON": "maybe"}, "CONNECTOME_STORAGE_PRETTY_JSON"),
        (["frobnicate"], {}, "invalid choice"),
        ([], {}, "required"),
    ],
)
def test_usage_and_configuration_errors_exit_2_with_one_line(
    tmp_path: Path, args: list[str], env: dict[str, str], needle: str
) -> None:
    result = cli(*args, env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert needle in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "storage_data").exists()


def test_console_script_is_installed(tree: Path) -> None:
    script = Path(sys.executable).with_name("connectome-storage")
    if not script.exists():
        pytest.skip("package not installed with its console script (pip install -e .)")
    result = subprocess.run([str(script), "--base-dir", str(tree), "ls"], capture_output=True, text=True)
    assert result.stdout == "conv_001  1 message\n"


def subcommands() -> dict[str, str]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return {name: sub.description or "" for name, sub in action.choices.items()}  # type: ignore[union-attr]


def test_every_command_has_help_text_and_a_docs_section() -> None:
    docs = (ROOT / "docs" / "cli.md").read_text()
    commands = subcommands()
    every = {"stats", "health", "ls", "show", "verify", "migrate", "backups", "restore", "cleanup", "watch"}
    assert every <= set(commands)
    for name, description in commands.items():
        assert len(description) > 15, f"{name} needs help text"
        assert f"### `{name}" in docs, f"docs/cli.md needs a section for {name}"
        assert cli(name, "--help").returncode == 0
