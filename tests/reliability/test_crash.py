"""Crash torture: SIGKILL a busy writer at random instants; no acknowledged write is lost.

The short form (SHORT_ROUNDS kills per backend) runs in the normal suite, which CI runs
with ``-m "not slow"``. The long form is marked slow, so only an explicit run picks it:

    python -m pytest -s tests/reliability/test_crash.py -m slow --crash-rounds 500

(``-s`` shows the figures it prints; docs/reliability.md records its last result).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

from connectome_storage import FileStorage, create_storage_from_env

from ..conftest import postgres_schema

WRITER = Path(__file__).with_name("crash_writer.py")


def backend_env(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> dict[str, str]:
    if backend == "file":
        return {"CONNECTOME_STORAGE_TYPE": "file", "CONNECTOME_STORAGE_BASE_DIR": str(tmp_path / "data")}
    if backend == "postgres":  # the session's server (only the writers are killed), a schema of this test's own
        return {
            "CONNECTOME_STORAGE_TYPE": "postgres",
            "CONNECTOME_STORAGE_POSTGRES_DSN": request.getfixturevalue("postgres_server").dsn,
            "CONNECTOME_STORAGE_POSTGRES_SCHEMA": postgres_schema(tmp_path),
        }
    return {"CONNECTOME_STORAGE_TYPE": "sqlite", "CONNECTOME_STORAGE_DB_PATH": str(tmp_path / "crash.db")}


def run_and_kill(env: dict[str, str], round_: int, rng: random.Random) -> list[tuple[str, int, int]]:
    """Start a writer, SIGKILL it at a random instant, return what it acknowledged."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CONNECTOME_STORAGE_")} | env
    # bufsize=0: a buffered readline() can read acknowledgements along with "ready", which
    # communicate() (reading the pipe itself) would then never see: the check would be weaker.
    proc = subprocess.Popen(
        [sys.executable, str(WRITER), str(round_)], env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        bufsize=0,
    )  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n", proc.stderr.read().decode() if proc.stderr else ""
    time.sleep(rng.uniform(0.0, 0.25))
    os.kill(proc.pid, signal.SIGKILL)
    out, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err.decode()
    acked = []
    for line in out.decode().splitlines():
        parts = line.split()
        if len(parts) == 3:  # a line cut by the kill is not an acknowledgement
            acked.append((parts[0], int(parts[1]), int(parts[2])))
    return acked


async def check(env: dict[str, str], acked: list[tuple[str, int, int]], extra_backups: int = 1) -> dict[str, int]:
    """Everything acknowledged is there; logs have no gaps and no duplicates."""
    storage = create_storage_from_env(env)
    async with storage:
        # A kill can leave a temp file next to the file it was writing: verify names it,
        # cleanup() removes it; nothing else may be wrong.
        problems = await storage.verify()
        assert [p for p in problems if "temp file" not in p.message] == []
        if problems:
            assert (await storage.cleanup())["temp_files"] == len(problems)
            assert await storage.verify() == []
        last: dict[str, tuple[int, int]] = {}
        per_round: dict[str, dict[int, int]] = defaultdict(dict)
        for kind, round_, i in acked:
            last[kind] = max(last.get(kind, (-1, -1)), (round_, i))
            per_round[kind][round_] = max(per_round[kind].get(round_, -1), i)
        doc = await storage.load_conversation("doc")
        if "doc" in last:
            assert doc is not None and (doc["round"], doc["i"]) >= last["doc"]
        for kind, items in (
            ("log", await storage.load_raw_messages("log")),
            ("chain", await storage.load_reasoning_chains("agent")),
        ):
            seen: dict[int, list[int]] = defaultdict(list)
            for item in items:
                seen[item["round"]].append(item["seq"])
            for round_, seqs in seen.items():
                assert seqs == list(range(len(seqs))), f"{kind}: gap or duplicate in round {round_}"
            for round_, highest in per_round[kind].items():
                assert len(seen[round_]) > highest, f"{kind}: acknowledged item {round_}/{highest} lost"
        if isinstance(storage, FileStorage):
            # Kept versions are whole, in order, and older than the live one. Old versions
            # are pruned only after the new one is in place, so a kill may leave one extra
            # (max_backup_files is 5), and the next completed write prunes every extra: a
            # writer killed before it completed one adds its own to the last one's.
            kept = await storage.list_backups("conversations/doc/current.json")
            versions = [json.loads(v.path.read_bytes()) for v in kept]
            stamps = [(v["round"], v["i"]) for v in versions] + ([(doc["round"], doc["i"])] if doc else [])
            assert len(kept) <= 5 + extra_backups and stamps == sorted(stamps), stamps
        memories = {m["memory_id"]: (m["round"], m["i"]) for m in await storage.load_memories("log")}
        for kind, round_, i in acked:
            if kind == "mem":
                assert memories[f"m{i % 5}"] >= (round_, i)
        return {"operations": len(acked)}


SHORT_ROUNDS = 12


def torture(backend: str, tmp_path: Path, rounds: int, request: pytest.FixtureRequest) -> tuple[int, int]:
    """Kill a writer ``rounds`` times, checking everything after each kill; (kills, acks)."""
    rng = random.Random(rounds * 7919 + len(backend))
    env = backend_env(backend, tmp_path, request)
    acked: list[tuple[str, int, int]] = []
    extra_backups = 0  # kills since the last round that completed a document store, plus one
    for round_ in range(rounds):
        now = run_and_kill(env, round_, rng)
        extra_backups = 1 if any(kind == "doc" for kind, _, _ in now) else extra_backups + 1
        acked += now
        asyncio.run(check(env, acked, extra_backups))
        if (round_ + 1) % 50 == 0:  # progress of a long run, seen with -s
            print(f"{backend}: {round_ + 1} kills survived, {len(acked)} acknowledged operations checked", flush=True)
    assert any(kind == "log" for kind, _, _ in acked), "the writer never got to work"
    return rounds, len(acked)


@pytest.mark.parametrize("backend", ["file", "sqlite", "postgres"])
def test_sigkill_at_random_instants(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    kills, operations = torture(backend, tmp_path, SHORT_ROUNDS, request)
    print(f"{backend}: {kills} kills survived, {operations} acknowledged operations checked")


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["file", "sqlite", "postgres"])
def test_sigkill_long_form(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    rounds = int(request.config.getoption("--crash-rounds"))
    kills, operations = torture(backend, tmp_path, rounds, request)
    print(f"{backend}: {kills} kills survived, {operations} acknowledged operations checked")
