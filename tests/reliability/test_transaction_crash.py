"""Transactions under SIGKILL: a fresh storage finds every part of a transaction or none.

A writer loops transactions that each write the same round number into a document, a
raw message log append, a memory, a system state and a key-value entry, printing each
round its commit acknowledged; it is killed at a random instant. After each kill a fresh
storage must find all five parts at the same round ``r``, the log exactly ``0..r``, and
``r`` at least the last acknowledged round. Redis runs with ``appendfsync always``.

The short form (SHORT_ROUNDS kills per backend) runs in CI; the long form is marked slow:

    python -m pytest -s tests/reliability/test_transaction_crash.py -m slow --crash-rounds 1000
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from connectome_storage import create_storage_from_env

from ..conftest import postgres_schema
from ..redis_server import RedisServer

WRITER = Path(__file__).with_name("transaction_writer.py")
SHORT_ROUNDS = 12
BACKENDS = ["file", "sqlite", "redis", "postgres"]


@pytest.fixture
def environment(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    backend = request.param
    if backend == "file":
        yield {"CONNECTOME_STORAGE_TYPE": "file", "CONNECTOME_STORAGE_BASE_DIR": str(tmp_path / "data")}
    elif backend == "sqlite":
        yield {"CONNECTOME_STORAGE_TYPE": "sqlite", "CONNECTOME_STORAGE_DB_PATH": str(tmp_path / "tx.db")}
    elif backend == "postgres":  # the session's server (only the writers are killed), a schema of this test's own
        yield {
            "CONNECTOME_STORAGE_TYPE": "postgres",
            "CONNECTOME_STORAGE_POSTGRES_DSN": request.getfixturevalue("postgres_server").dsn,
            "CONNECTOME_STORAGE_POSTGRES_SCHEMA": postgres_schema(tmp_path),
        }
    else:
        # A server of its own that persists every write before answering it.
        server = RedisServer(tmp_path / "redis", extra=["--appendonly", "yes", "--appendfsync", "always"])
        server.start()
        try:
            yield {"CONNECTOME_STORAGE_TYPE": "redis", "CONNECTOME_STORAGE_REDIS_URL": server.url}
        finally:
            server.stop()


def run_and_kill(env: dict[str, str], rng: random.Random) -> list[int]:
    """Start a writer, SIGKILL it at a random instant, return the rounds it acknowledged."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CONNECTOME_STORAGE_")} | env
    # bufsize=0: a buffered readline() can read the first acknowledged rounds along with
    # "ready", and communicate() (which reads the pipe itself) would never see them.
    proc = subprocess.Popen(
        [sys.executable, str(WRITER)], env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n", proc.stderr.read().decode() if proc.stderr else ""
    time.sleep(rng.uniform(0.0, 0.25))
    os.kill(proc.pid, signal.SIGKILL)
    out, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err.decode()
    return [int(line) for line in out.decode().splitlines() if line.strip().isdigit()]


async def check(env: dict[str, str], last_acknowledged: int) -> int:
    """All five parts at one round r >= the last acknowledged; the log exactly 0..r."""
    async with create_storage_from_env(env) as storage:
        state = await storage.load_system_state("round")
        if state is None:  # killed before the first commit
            assert last_acknowledged < 0
            assert await storage.load_conversation("doc") is None
            assert await storage.load_raw_messages("log") == []
            return -1
        r = state["round"]
        assert r >= last_acknowledged, f"round {last_acknowledged} was acknowledged, the storage holds {r}"
        document = await storage.load_conversation("doc")
        memories = await storage.load_memories("doc")
        entry = await storage.kv("turns").get("last")
        log = [item["round"] for item in await storage.load_raw_messages("log")]
        parts = {"document": document["round"] if document else None, "memory": memories[0]["round"],
                 "kv": entry["round"] if entry else None, "log tail": log[-1] if log else None}  # fmt: skip
        assert parts == dict.fromkeys(parts, r), f"a transaction was applied in part: {parts}, state {r}"
        assert log == list(range(r + 1)), "the log is not exactly 0..r"
        return r


def torture(env: dict[str, str], rounds: int, seed: int) -> tuple[int, int]:
    """Kill a writer ``rounds`` times, checking after each kill; (kills, last round)."""
    rng = random.Random(seed)
    last_acknowledged, held = -1, -1
    for kill in range(rounds):
        acknowledged = run_and_kill(env, rng)
        if acknowledged:
            assert acknowledged == list(range(held + 1, held + 1 + len(acknowledged)))
            last_acknowledged = acknowledged[-1]
        held = asyncio.run(check(env, last_acknowledged))
        if (kill + 1) % 100 == 0:  # progress of a long run, seen with -s
            print(f"{kill + 1} kills survived, round {held}", flush=True)
    assert held > 0, "the writer never committed a transaction"
    return rounds, held


@pytest.mark.parametrize("environment", BACKENDS, indirect=True)
def test_sigkill_during_transactions(environment: dict[str, str]) -> None:
    kills, rounds = torture(environment, SHORT_ROUNDS, seed=SHORT_ROUNDS)
    print(f"{environment['CONNECTOME_STORAGE_TYPE']}: {kills} kills survived, {rounds + 1} transactions committed")


@pytest.mark.slow
@pytest.mark.parametrize("environment", BACKENDS, indirect=True)
def test_sigkill_during_transactions_long_form(environment: dict[str, str], request: pytest.FixtureRequest) -> None:
    kills, rounds = torture(environment, int(request.config.getoption("--crash-rounds")), seed=7)
    print(f"{environment['CONNECTOME_STORAGE_TYPE']}: {kills} kills survived, {rounds + 1} transactions committed")
