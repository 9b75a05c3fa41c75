"""``set(if_not_exists=True)`` racing across processes: exactly one winner per key.

4 processes x 3 coroutines each try to claim the same 20 keys, writing their own id; on
every backend (file, SQLite, Redis, PostgreSQL through tests/conftest.py's builders) each key must be
won by exactly one of the 12 writers, and hold that writer's id afterwards. Half the keys
hold an expired entry before the race, which counts as absent: it is replaced by exactly
one writer too. The processes are real; they start the race together from a go file.

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

from tests.conftest import BACKENDS, START, FakeClock  # noqa: E402
from tests.reliability import racers  # noqa: E402

PROCESSES, COROUTINES, KEYS = 4, 3, 20
NAMESPACE = "race"
# The race runs at this fake time; the seeded entries expired long before it.
RACE_TIME = START + 3600
# Seconds after which a process is taken to hang: a guard against a deadlock blocking the
# suite forever, not a measure of speed.


def keys() -> list[str]:
    return [f"key:{n:02}" for n in range(KEYS)]


async def race(backend: str, tmp_path: Path, options: dict[str, Any], process: int, go: Path, ready: Path) -> None:
    storage = BACKENDS[backend](tmp_path, FakeClock(RACE_TIME), options)
    async with storage:
        kv = storage.kv(NAMESPACE)
        ready.write_text("ready")
        while not go.exists():  # every process is connected before any writes
            await asyncio.sleep(0.005)

        async def writer(coroutine: int) -> list[str]:
            me = f"p{process}-c{coroutine}"
            order = keys()[coroutine::COROUTINES] + [k for i, k in enumerate(keys()) if i % COROUTINES != coroutine]
            won = []
            for key in order:
                if await kv.set(key, {"writer": me}, if_not_exists=True, tags={"writer": me}):
                    won.append(key)
            return won

        results = await asyncio.gather(*(writer(c) for c in range(COROUTINES)))
    wins = {f"p{process}-c{c}": won for c, won in enumerate(results)}
    sys.stdout.write(json.dumps(wins))


# Processes sharing data: the backends that persist outside one process.
@pytest.mark.parametrize("backend", ["file", "sqlite", "redis", "postgres"])
async def test_one_winner_per_key_across_processes(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    options: dict[str, Any] = {}
    if backend == "redis":
        options["redis_url"] = request.getfixturevalue("redis_server").url
    if backend == "postgres":  # the session's server; a schema of this test's own (tests/conftest.py)
        options["dsn"] = request.getfixturevalue("postgres_server").dsn
    seed_clock = FakeClock(START)
    async with BACKENDS[backend](tmp_path, seed_clock, options) as seeder:
        for key in keys()[::2]:  # expired by RACE_TIME: absent for if_not_exists
            await seeder.kv(NAMESPACE).set(key, {"writer": "expired"}, ttl=60, tags={"writer": "expired"})

    go, readies = tmp_path / "go", [tmp_path / f"ready-{p}" for p in range(PROCESSES)]
    arguments = [backend, tmp_path, json.dumps(options), go]
    procs = [racers.start(__file__, *arguments, p, readies[p]) for p in range(PROCESSES)]
    outputs = await racers.race(procs, readies, go)

    wins: dict[str, list[str]] = {}
    for out in outputs:
        wins.update(json.loads(out))
    assert len(wins) == PROCESSES * COROUTINES
    winners = {key: [me for me, won in wins.items() if key in won] for key in keys()}
    assert all(len(names) == 1 for names in winners.values()), winners

    async with BACKENDS[backend](tmp_path, FakeClock(RACE_TIME), options) as storage:
        kv = storage.kv(NAMESPACE)
        stored = await kv.get_many(keys())
        assert stored == {key: {"writer": names[0]} for key, names in winners.items()}
        for me in wins:  # the winner's tags came with it, and nothing of a loser's
            assert await kv.find_by_tag("writer", me) == sorted(wins[me])
        assert await kv.find_by_tag("writer", "expired") == []


if __name__ == "__main__":
    backend_name, path, options_json, go_path, process_number, ready_path = sys.argv[1:7]
    asyncio.run(
        race(backend_name, Path(path), json.loads(options_json), int(process_number), Path(go_path), Path(ready_path))
    )
