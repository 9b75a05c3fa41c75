"""The bench's smoke run: every benchmark runs at toy sizes and every section comes out.

These tests prove that ``python -m bench`` still works, so it cannot rot between real
runs. They never look at how fast anything was: speed is judged by docs/performance.md,
from a full run, as ratios to baselines measured in the same run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = [
    "files", "append", "sqlite", "redis", "scale", "kv_file", "kv_sqlite", "kv_redis", "serializer",
    "adapters_openai", "adapters_langgraph", "middleware", "transactions", "postgres", "cluster", "memory",
]  # fmt: skip
# Our own benchmarks: they must run whether or not the bench extra's peers are installed.
OURS = {
    "files.store", "files.load",
    "append.file", "append.sqlite", "append.redis",
    "sqlite.raw.store", "sqlite.raw.load", "sqlite.raw.append", "sqlite.raw.history",
    "redis.store", "redis.load", "redis.append", "redis.history", "redis.cache_set", "redis.cache_get",
    *(f"scale.{what}.{backend}" for what in ("load", "list", "stats", "cleanup")
      for backend in ("file", "sqlite", "redis")),
    "scale.migrate",
    "kv_redis.set", "kv_redis.get", "middleware.load",
    "transactions.file", "transactions.sqlite", "transactions.redis", "transactions.postgres",
    "transactions.file.plain", "scale.concurrency.file.plain",
    *(f"scale.load.{backend}.plain" for backend in ("file", "sqlite", "redis")),
    *(f"postgres.{op}" for op in ("store", "load", "append", "kv_set", "kv_get")),
    "cluster.store", "cluster.append",
    "memory.history", "memory.migrate",
    *(f"serializer.{backend}.{what}.{op}" for backend in ("sqlite", "redis")
      for what in ("history", "document") for op in ("store", "load")),
    *(f"scale.concurrency.{backend}.{op}" for backend in ("file", "sqlite", "redis")
      for op in ("store_conversation", "load_conversation")),
}  # fmt: skip
PEER_COMPARISONS = {
    "sqlite.session.append", "sqlite.session.load100", "sqlite.session.load1000",
    "sqlite.diskcache.set.full", "sqlite.diskcache.get.full",
    "sqlite.diskcache.set.normal", "sqlite.diskcache.get.normal",
    "kv_file.set", "kv_file.get",
    *(f"kv_sqlite.{op}.{mode}" for op in ("set", "get") for mode in ("full", "normal")),
    "adapters_openai.add_items", "adapters_openai.get_items",
    "adapters_openai.redis.add_items", "adapters_openai.redis.get_items",
    "adapters_langgraph.put", "adapters_langgraph.get_tuple",
    "postgres.session.append", "postgres.session.load100",
}  # fmt: skip
PEER_MODULES = ("key_value", "agents", "diskcache", "langgraph.checkpoint.sqlite")
# Runs the bench in a fresh interpreter in which the peer packages cannot be imported.
WITHOUT_PEERS = (
    "import sys\n"
    f"for name in {PEER_MODULES!r}:\n"
    "    sys.modules[name] = None  # makes `import name` raise ImportError\n"
    "from bench.run import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def smoke(tmp_path: Path, *, peers: bool) -> tuple[dict[str, Any], str]:
    report, figures = tmp_path / "performance.md", tmp_path / "figures.json"
    start = ["-m", "bench"] if peers else ["-c", WITHOUT_PEERS]
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    command = [
        sys.executable, *start, "--smoke", "--output", str(report), "--json", str(figures),
        "--scratch", str(scratch),
    ]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-4000:]
    assert not list(scratch.iterdir()), "the scratch folder was left behind"
    return json.loads(figures.read_text()), report.read_text()


def check_ran(data: dict[str, Any], markdown: str, expected: set[str]) -> None:
    assert [section["key"] for section in data["sections"]] == SECTIONS
    comparisons = {c["key"]: c for section in data["sections"] for c in section["comparisons"]}
    assert expected <= set(comparisons), sorted(expected - set(comparisons))
    for comparison in comparisons.values():
        assert len(comparison["figures"]) >= 2, comparison["key"]
        for figure in comparison["figures"]:
            # Ran: one figure per round, each a real measurement; how large is not checked.
            assert len(figure["samples"]) == comparison["repeats"] >= 2, comparison["key"]
            assert all(sample > 0 for sample in figure["samples"]), comparison["key"]
    for heading in ("## Machine", "## Versions", "## Targets", "## Headline figures"):
        assert heading in markdown
    for section in data["sections"]:
        assert f"## {section['title']}" in markdown
    for comparison in comparisons.values():
        assert f"`{comparison['key']}`" in markdown
    # Every target got a verdict line, measured or not; a measured one that names a floor
    # has it measured too (a floor naming no variant of its comparison would read
    # "not measured" in every run).
    for target in data["targets"]:
        assert f"| {target['text']} |" in markdown
        if target["value"] is not None and target["floor"] is not None:
            assert target["floor_value"] is not None, (target["text"], target["floor"])


def test_smoke_runs_every_benchmark_without_the_peer_packages(tmp_path: Path) -> None:
    data, markdown = smoke(tmp_path, peers=False)
    check_ran(data, markdown, OURS)
    assert set(data["skipped_peers"]) == {
        "py-key-value-aio",
        "openai-agents",
        "diskcache",
        "langgraph-checkpoint-sqlite",
    }
    assert "Peers skipped in this run" in markdown


def test_smoke_runs_the_peer_comparisons_when_the_bench_extra_is_installed(tmp_path: Path) -> None:
    for module in (
        "key_value.aio.stores.filetree",
        "agents.memory.sqlite_session",
        "diskcache",
        "langgraph.checkpoint.sqlite",
    ):
        pytest.importorskip(module, reason="the bench extra (pip install -e '.[bench]') is not installed")
    data, markdown = smoke(tmp_path, peers=True)
    check_ran(data, markdown, OURS | PEER_COMPARISONS)
    assert data["skipped_peers"] == {}
    files = next(s for s in data["sections"] if s["key"] == "files")
    store = next(c for c in files["comparisons"] if c["key"] == "files.store")
    assert "FileTreeStore.put" in {figure["name"] for figure in store["figures"]}
