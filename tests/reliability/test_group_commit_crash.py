"""Group commit under SIGKILL: several coroutines of two processes append to one SQLite file
(their writes commit in groups, docs/sqlite.md "Concurrency"); both processes are killed
at random instants, and every append either process acknowledged must be there.

After each kill a fresh storage checks, for every conversation: the messages of each
round are exactly 0, 1, 2, ... (no gap, no duplicate: a group commits whole or not at
all), every acknowledged seq is present, ``message_count`` equals the history for the
conversations written through the conversation store, the refused conversation never
exists, the statistics' kept counts equal the rows, and ``verify()`` finds nothing.

The long form is marked slow (``--crash-rounds`` kills, as tests/reliability/test_crash.py):

    python -m pytest -s tests/reliability/test_group_commit_crash.py -m slow --crash-rounds 500
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict
from contextlib import closing
from pathlib import Path

import pytest

from connectome_storage import create_sqlite_storage

WRITER = Path(__file__).with_name("group_writer.py")
PROCESSES, COROUTINES = 2, 8
SHORT_ROUNDS = 8

Acked = dict[tuple[str, int], dict[int, int]]  # (process, coroutine) -> round -> highest acknowledged seq


def prepare(db: Path) -> None:
    async def create() -> None:
        async with create_sqlite_storage(db):
            pass

    asyncio.run(create())
    with closing(sqlite3.connect(db, isolation_level=None)) as conn:
        conn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON raw_messages WHEN NEW.conversation_id = 'refused' "
            "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
        )


def run_and_kill(db: Path, round_: int, rng: random.Random, acked: Acked) -> int:
    """Start the writers, SIGKILL each at a random instant, record what they acknowledged."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONNECTOME_STORAGE_")}
    env |= {"CONNECTOME_STORAGE_TYPE": "sqlite", "CONNECTOME_STORAGE_DB_PATH": str(db)}
    procs = [
        subprocess.Popen(
            [sys.executable, str(WRITER), f"p{p}", str(round_), str(COROUTINES)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,
        )
        for p in range(PROCESSES)
    ]
    for proc in procs:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n", proc.stderr.read().decode() if proc.stderr else ""
    for proc in sorted(procs, key=lambda _: rng.random()):
        time.sleep(rng.uniform(0.0, 0.2))
        os.kill(proc.pid, signal.SIGKILL)
    count = 0
    for proc in procs:
        out, err = proc.communicate()
        assert proc.returncode == -signal.SIGKILL, err.decode()
        for line in out.decode().splitlines():
            parts = line.split()
            if len(parts) == 4:  # a line cut by the kill is not an acknowledgement
                process, worker, round_seen, seq = parts[0], int(parts[1]), int(parts[2]), int(parts[3])
                rounds = acked.setdefault((process, worker), {})
                rounds[round_seen] = max(rounds.get(round_seen, -1), seq)
                count += 1
    return count


async def check(db: Path, acked: Acked) -> None:
    async with create_sqlite_storage(db) as storage:
        store = storage.conversation_store()
        total, nonempty = 0, 0
        for process in range(PROCESSES):
            for worker in range(COROUTINES):
                conversation_id = f"p{process}-{worker}"
                messages = await storage.load_raw_messages(conversation_id)
                total, nonempty = total + len(messages), nonempty + bool(messages)
                seen: dict[int, list[int]] = defaultdict(list)
                for message in messages:
                    assert message["w"] == worker
                    seen[message["round"]].append(message["seq"])
                for round_, seqs in seen.items():
                    assert seqs == list(range(len(seqs))), f"{conversation_id}: gap or duplicate in round {round_}"
                for round_, highest in acked.get((f"p{process}", worker), {}).items():
                    assert len(seen[round_]) > highest, f"{conversation_id}: acknowledged {round_}/{highest} lost"
                if worker % 2 and messages:
                    loaded = await store.load(conversation_id)
                    assert loaded is not None and loaded.metadata.message_count == len(messages)
        assert "refused" not in await storage.list_conversations()
        stats = await storage.get_storage_stats()
        assert (stats["raw_message_count"], stats["unreadable_count"]) == (total, 0)
        assert stats["conversation_count"] == nonempty
        assert await storage.verify() == []


def torture(tmp_path: Path, rounds: int) -> tuple[int, int]:
    db = tmp_path / "group.db"
    prepare(db)
    rng = random.Random(rounds * 104729)
    acked: Acked = {}
    operations = 0
    for round_ in range(rounds):
        operations += run_and_kill(db, round_, rng, acked)
        asyncio.run(check(db, acked))
        if (round_ + 1) % 50 == 0:  # progress of a long run, seen with -s
            print(f"group commit: {round_ + 1} kills survived, {operations} acknowledged appends checked", flush=True)
    assert operations > 0, "the writers never got to work"
    return rounds, operations


def test_sqlite_sigkill_while_coroutines_commit_in_groups(tmp_path: Path) -> None:
    kills, operations = torture(tmp_path, SHORT_ROUNDS)
    print(f"group commit: {kills} rounds of {PROCESSES} kills survived, {operations} acknowledged appends checked")


@pytest.mark.slow
def test_sqlite_sigkill_while_coroutines_commit_in_groups_long_form(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    kills, operations = torture(tmp_path, int(request.config.getoption("--crash-rounds")))
    print(f"group commit: {kills} rounds of {PROCESSES} kills survived, {operations} acknowledged appends checked")
