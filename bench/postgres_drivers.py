"""Why PostgresStorage uses asyncpg: the same two statements through asyncpg and psycopg 3
(async), on one server, one connection each, sequential (what one coroutine of a storage does).

- a point read: the SELECT of load_conversation (primary key, one text column);
- a small write: the UPSERT of store_system_state (a ~100-byte value), autocommitted.

Usage: ``python -m bench.postgres_drivers [--dsn DSN] [--rounds N]``; without ``--dsn`` it
starts a throwaway server like the tests do (tests/postgres_server.py). psycopg is not a
dependency of the project: ``pip install "psycopg[binary]"`` to run this. Prints the median
microseconds per statement of each driver and their ratio (docs/postgres.md quotes a run).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

READ = "SELECT document FROM bench_conversations WHERE conversation_id = {p}"
WRITE = (
    "INSERT INTO bench_state (state_key, data) VALUES ({p}, {q}) "
    "ON CONFLICT (state_key) DO UPDATE SET data = excluded.data"
)
SETUP = (
    "DROP TABLE IF EXISTS bench_conversations, bench_state",
    "CREATE TABLE bench_conversations (conversation_id text PRIMARY KEY, document text)",
    "CREATE TABLE bench_state (state_key text PRIMARY KEY, data text NOT NULL)",
    "INSERT INTO bench_conversations SELECT 'c' || i, '{\"title\":\"a conversation\",\"n\":' || i || '}' "
    "FROM generate_series(1, 10000) AS i",
    "ANALYZE bench_conversations",
)
VALUE = '{"agent":"planner","step":12,"notes":"' + "x" * 60 + '"}'


async def batch(call: Callable[[int], Awaitable[Any]]) -> float:
    """Microseconds per call of ``call(i)`` over one batch of 200 calls."""
    started = time.perf_counter()
    for i in range(200):
        await call(i)
    return (time.perf_counter() - started) / 200 * 1e6


async def connect(dsn: str) -> dict[str, dict[str, Callable[[int], Awaitable[Any]]]]:
    """The two statements as calls on each driver's connection."""
    import asyncpg  # type: ignore[import-untyped]
    import psycopg

    apg = await asyncpg.connect(dsn)
    for statement in SETUP:
        await apg.execute(statement)
    # autocommit, and prepared from the first call on (asyncpg prepares and caches statements).
    pg3 = await psycopg.AsyncConnection.connect(dsn, autocommit=True, prepare_threshold=0)
    read, write = READ.format(p="$1"), WRITE.format(p="$1", q="$2")
    read3, write3 = READ.format(p="%s").encode(), WRITE.format(p="%s", q="%s").encode()

    async def read_pg3(i: int) -> Any:
        cursor = await pg3.execute(read3, (f"c{i % 10000 + 1}",))
        return await cursor.fetchone()

    return {
        "asyncpg": {
            "read": lambda i: apg.fetchval(read, f"c{i % 10000 + 1}"),
            "write": lambda i: apg.execute(write, f"s{i % 100}", VALUE),
        },
        "psycopg": {"read": read_pg3, "write": lambda i: pg3.execute(write3, (f"s{i % 100}", VALUE))},
    }


async def main(dsn: str, rounds: int) -> None:
    drivers = await connect(dsn)
    samples: dict[tuple[str, str], list[float]] = {}
    for round_ in range(rounds + 1):  # the first round warms up; the drivers take turns
        for operation in ("read", "write"):
            for driver, calls in drivers.items():
                took = await batch(calls[operation])
                if round_:
                    samples.setdefault((driver, operation), []).append(took)
    for operation in ("read", "write"):
        fast, slow = (statistics.median(samples[driver, operation]) for driver in ("asyncpg", "psycopg"))
        print(f"{operation:5}  asyncpg {fast:7.1f} us   psycopg {slow:7.1f} us   psycopg/asyncpg {slow / fast:.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", help="an existing server (default: start one)")
    parser.add_argument("--rounds", type=int, default=25)
    args = parser.parse_args()
    if args.dsn:
        asyncio.run(main(args.dsn, args.rounds))
    else:
        from tests.postgres_server import PostgresServer

        server = PostgresServer(Path(tempfile.mkdtemp(prefix="bench-pg-")))
        server.start()
        try:
            asyncio.run(main(server.dsn, args.rounds))
        finally:
            server.stop("fast")
