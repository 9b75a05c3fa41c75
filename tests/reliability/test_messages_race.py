"""The message store across processes: one winner per saved id, no lost ``mark_read``.

4 processes x 3 coroutines each try to save the same 20 message ids, each message naming
its writer; on every persistent backend (file, SQLite, Redis, PostgreSQL through tests/conftest.py's
builders) each id must be won by exactly one of the 12 writers (the others get
InvalidKeyError), and hold that writer's message afterwards. At the same time every writer
marks its own 5 ids read for one shared agent: the read set must hold all 60 afterwards
(a read-modify-write without a lock would lose some). The processes are real; they start
together from a go file.

Run as a script, this file is one racing process (the test starts four).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402

from connectome_storage.errors import InvalidKeyError  # noqa: E402
from tests.conftest import BACKENDS, START, FakeClock  # noqa: E402
from tests.reliability import racers  # noqa: E402

PROCESSES, COROUTINES, IDS, MARKS = 4, 3, 20, 5
READER = "reader"
# Seconds after which a process is taken to hang: a guard against a deadlock, not a measure of speed.


def ids() -> list[str]:
    return [f"m{n:02}" for n in range(IDS)]


def marks(me: str) -> list[str]:
    return [f"read-{me}-{n}" for n in range(MARKS)]


async def race(backend: str, tmp_path: Path, options: dict[str, Any], process: int, go: Path, ready: Path) -> None:
    storage = BACKENDS[backend](tmp_path, FakeClock(START), options)
    async with storage:
        bus = storage.message_store()
        ready.write_text("ready")
        while not go.exists():  # every process is connected before any writes
            await asyncio.sleep(0.005)

        async def writer(coroutine: int) -> list[str]:
            me = f"p{process}-c{coroutine}"
            order = ids()[coroutine::COROUTINES] + [i for n, i in enumerate(ids()) if n % COROUTINES != coroutine]
            won = []
            for n, message_id in enumerate(order):
                try:
                    await bus.save({"id": message_id, "from": me, "to": READER})
                    won.append(message_id)
                except InvalidKeyError:
                    pass
                if n < MARKS:  # one id at a time, interleaved with the other writers' marks
                    await bus.mark_read(READER, [marks(me)[n]])
            return won

        results = await asyncio.gather(*(writer(c) for c in range(COROUTINES)))
    sys.stdout.write(json.dumps({f"p{process}-c{c}": won for c, won in enumerate(results)}))


@pytest.mark.parametrize("backend", ["file", "sqlite", "redis", "postgres"])
async def test_one_winner_per_id_and_no_lost_read_marks_across_processes(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    options: dict[str, Any] = {}
    if backend == "redis":
        options["redis_url"] = request.getfixturevalue("redis_server").url
    if backend == "postgres":  # the session's server; a schema of this test's own (tests/conftest.py)
        options["dsn"] = request.getfixturevalue("postgres_server").dsn
    async with BACKENDS[backend](tmp_path, FakeClock(START), options):
        pass  # created once, before the race

    go, readies = tmp_path / "go", [tmp_path / f"ready-{p}" for p in range(PROCESSES)]
    arguments = [backend, tmp_path, json.dumps(options), go]
    procs = [racers.start(__file__, *arguments, p, readies[p]) for p in range(PROCESSES)]
    outputs = await racers.race(procs, readies, go)

    wins: dict[str, list[str]] = {}
    for out in outputs:
        wins.update(json.loads(out))
    assert len(wins) == PROCESSES * COROUTINES
    winners = {message_id: [me for me, won in wins.items() if message_id in won] for message_id in ids()}
    assert all(len(names) == 1 for names in winners.values()), winners

    async with BACKENDS[backend](tmp_path, FakeClock(START), options) as storage:
        bus = storage.message_store()
        stored = await bus.query()
        assert [(m["id"], m["from"]) for m in stored] == [(i, names[0]) for i, names in winners.items()]
        everyone_marked = {mark for me in wins for mark in marks(me)}
        assert await storage._msg_read_ids(READER) == sorted(everyone_marked)
        assert await bus.get_unread_ids(READER) == set(ids())


if __name__ == "__main__":
    backend_name, path, options_json, go_path, process_number, ready_path = sys.argv[1:7]
    asyncio.run(
        race(backend_name, Path(path), json.loads(options_json), int(process_number), Path(go_path), Path(ready_path))
    )
