"""examples/quickstart.py runs unchanged on every backend, chosen by environment only."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .redis_server import RedisServer

QUICKSTART = Path(__file__).resolve().parents[1] / "examples" / "quickstart.py"


def run_quickstart(cwd: Path, env: dict[str, str]) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CONNECTOME_STORAGE_")}
    result = subprocess.run(
        [sys.executable, str(QUICKSTART)], cwd=cwd, env=clean | env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def check_output(out: str, backend: str) -> None:
    assert "conversation: Planning a trip to Lisbon" in out
    assert "raw messages: 3" in out and "memories:     ['mem_001']" in out
    assert "cache:        {'text': 'Day 1: Alfama...'}" in out
    assert f"health:       healthy ({backend})" in out


def test_quickstart_on_the_default_file_backend(tmp_path: Path) -> None:
    out = run_quickstart(tmp_path, {})
    check_output(out, "file")
    assert (tmp_path / "storage_data/conversations/conv_001/current.json").read_text().startswith('{\n  "participants"')
    assert "storage_data/conversations/conv_001/current.json" in out


def test_quickstart_on_sqlite(tmp_path: Path) -> None:
    out = run_quickstart(tmp_path, {"CONNECTOME_STORAGE_TYPE": "sqlite"})
    check_output(out, "sqlite")
    assert (tmp_path / "storage_data/connectome.db").is_file()
    assert not (tmp_path / "storage_data/conversations").exists()


def test_quickstart_on_redis(tmp_path: Path, redis_server: RedisServer) -> None:
    env = {
        "CONNECTOME_STORAGE_TYPE": "redis",
        "CONNECTOME_STORAGE_REDIS_URL": redis_server.url,
        "CONNECTOME_STORAGE_KEY_PREFIX": f"quickstart:{tmp_path.name}:",
    }
    out = run_quickstart(tmp_path, env)
    check_output(out, "redis")
    assert not (tmp_path / "storage_data").exists()


@pytest.mark.parametrize("backend", ["file", "sqlite"])
def test_quickstart_twice_keeps_working(tmp_path: Path, backend: str) -> None:
    run_quickstart(tmp_path, {"CONNECTOME_STORAGE_TYPE": backend})
    out = run_quickstart(tmp_path, {"CONNECTOME_STORAGE_TYPE": backend})
    assert "raw messages: 3" in out and "chains:       2 for research-agent" in out
