"""Crash torture of the file tree's folders (format version 2): a writer that creates,
appends to and deletes conversations is SIGKILLed at random instants; after each kill
the listing is exactly the acknowledged set, give or take the one operation in flight,
every listed conversation reads, and verify() finds nothing but temp leftovers, which
cleanup() removes.

The short form runs in the normal suite; the long form is marked slow:

    python -m pytest -s tests/reliability/test_folders_crash.py -m slow --crash-rounds 500
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from connectome_storage import FileStorage
from connectome_storage.naming import encode_name

WRITER = Path(__file__).with_name("folders_writer.py")
ROOT = Path(__file__).resolve().parents[2]
SHORT_ROUNDS = 10


def run_and_kill(base: Path, round_: int, rng: random.Random) -> list[tuple[str, str, str]]:
    """Start a writer, SIGKILL it at a random instant; its (B|A, op, id) lines."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONNECTOME_STORAGE_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen(
        [sys.executable, str(WRITER), str(base), str(round_)], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, bufsize=0,
    )  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n", proc.stderr.read().decode() if proc.stderr else ""
    time.sleep(rng.uniform(0.0, 0.3))
    os.kill(proc.pid, signal.SIGKILL)
    out, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err.decode()
    lines = []
    for line in out.decode().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] in ("B", "A"):  # a line cut by the kill says nothing
            lines.append((parts[0], parts[1], parts[2]))
    return lines


async def check(base: Path, model: set[str], lines: list[tuple[str, str, str]]) -> tuple[set[str], int]:
    """Apply the acknowledged operations to ``model``; compare with the tree. Returns the
    new model (the in-flight operation settled by what the tree holds) and the number of
    acknowledged operations."""
    flight: tuple[str, str] | None = None
    acked = 0
    for mark, op, key in lines:
        if mark == "B":
            flight = (op, key)
            continue
        acked += 1
        flight = None
        if op == "create":
            model.add(key)
        elif op == "delete":
            model.discard(key)
    storage = FileStorage({"base_dir": str(base)})
    async with storage:
        listed = set(await storage.list_conversations())
        uncertain = {flight[1]} if flight is not None and flight[0] in ("create", "delete") else set()
        assert listed - uncertain == model - uncertain, (sorted(listed ^ model), flight)
        for key in listed:
            folder = base / "conversations" / encode_name(key)
            assert any(name.endswith(".json") for name in os.listdir(folder)), f"{key}: a folder without a part"
            assert await storage.conversation_store().load(key) is not None or await storage.load_memories(key)
        problems = await storage.verify()
        assert [p for p in problems if "temp file" not in p.message] == [], problems
        if problems:
            assert (await storage.cleanup())["temp_files"] == len(problems)
            assert await storage.verify() == []
        leftovers = [n for n in os.listdir(base / "conversations") if n.startswith(".")]
        assert leftovers == [], leftovers
    return listed, acked


def torture(tmp_path: Path, rounds: int) -> tuple[int, int]:
    rng = random.Random(rounds * 104729)
    base = tmp_path / "data"
    model: set[str] = set()
    operations = 0
    for round_ in range(rounds):
        lines = run_and_kill(base, round_, rng)
        model, acked = asyncio.run(check(base, model, lines))
        operations += acked
        if (round_ + 1) % 50 == 0:
            print(f"folders: {round_ + 1} kills survived, {operations} acknowledged operations", flush=True)
    assert operations > 0, "the writer never got to work"
    return rounds, operations


def test_sigkill_during_creates_and_deletes(tmp_path: Path) -> None:
    kills, operations = torture(tmp_path, SHORT_ROUNDS)
    print(f"folders: {kills} kills survived, {operations} acknowledged operations checked")


@pytest.mark.slow
def test_sigkill_during_creates_and_deletes_long_form(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    kills, operations = torture(tmp_path, int(request.config.getoption("--crash-rounds")))
    print(f"folders: {kills} kills survived, {operations} acknowledged operations checked")
