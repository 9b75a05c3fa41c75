"""Crash torture: SIGKILL a busy writer at random instants; no acknowledged write is lost.

The short form (a dozen kills per backend) runs in the normal suite. The long form:

    python -m pytest tests/reliability/test_crash.py -m slow --crash-rounds 500

(docs/reliability.md records its last result).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from connectome_storage import create_storage_from_env

WRITER = Path(__file__).with_name("crash_writer.py")


def backend_env(backend: str, tmp_path: Path) -> dict[str, str]:
    if backend == "file":
        return {"CONNECTOME_STORAGE_TYPE": "file", "CONNECTOME_STORAGE_BASE_DIR": str(tmp_path / "data")}
    return {"CONNECTOME_STORAGE_TYPE": "sqlite", "CONNECTOME_STORAGE_DB_PATH": str(tmp_path / "crash.db")}


def run_and_kill(env: dict[str, str], round_: int, rng: random.Random) -> list[tuple[str, int, int]]:
    """Start a writer, SIGKILL it at a random instant, return what it acknowledged."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CONNECTOME_STORAGE_")} | env
    proc = subprocess.Popen([sys.executable, str(WRITER), str(round_)], env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
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


async def check(env: dict[str, str], acked: list[tuple[str, int, int]]) -> dict[str, int]:
    """Everything acknowledged is there; logs have no gaps and no duplicates."""
    storage = create_storage_from_env(env)
    async with storage:
        assert await storage.verify() == []
        last: dict[str, tuple[int, int]] = {}
        per_round: dict[str, dict[int, int]] = defaultdict(dict)
        for kind, round_, i in acked:
            last[kind] = max(last.get(kind, (-1, -1)), (round_, i))
            per_round[kind][round_] = max(per_round[kind].get(round_, -1), i)
        doc = await storage.load_conversation("doc")
        if "doc" in last:
            assert doc is not None and (doc["round"], doc["i"]) >= last["doc"]
        for kind, items in (("log", await storage.load_raw_messages("log")), ("chain", await storage.load_reasoning_chains("agent"))):
            seen: dict[int, list[int]] = defaultdict(list)
            for item in items:
                seen[item["round"]].append(item["seq"])
            for round_, seqs in seen.items():
                assert seqs == list(range(len(seqs))), f"{kind}: gap or duplicate in round {round_}"
            for round_, highest in per_round[kind].items():
                assert len(seen[round_]) > highest, f"{kind}: acknowledged item {round_}/{highest} lost"
        memories = {m["memory_id"]: (m["round"], m["i"]) for m in await storage.load_memories("log")}
        for kind, round_, i in acked:
            if kind == "mem":
                assert memories[f"m{i % 5}"] >= (round_, i)
        return {"operations": len(acked)}


@pytest.mark.parametrize("backend", ["file", "sqlite"])
async def test_sigkill_at_random_instants(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    rounds = int(request.config.getoption("--crash-rounds"))
    rng = random.Random(rounds * 7919 + len(backend))
    env = backend_env(backend, tmp_path)
    acked: list[tuple[str, int, int]] = []
    for round_ in range(rounds):
        acked += run_and_kill(env, round_, rng)
        await check(env, acked)
    assert any(kind == "log" for kind, _, _ in acked), "the writer never got to work"
    print(f"{backend}: {rounds} kills survived, {len(acked)} acknowledged operations checked")
