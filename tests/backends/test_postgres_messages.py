"""What only PostgreSQL does for the message store: indexed columns beside the message,
queries ordered and limited by the server in Python's order, a time stamp holding U+0000,
and the plans the queries use.

A real PostgreSQL server (tests/postgres_server.py), a schema per test.
"""

from __future__ import annotations

import random
from typing import Any

from connectome_storage import create_postgres_storage
from connectome_storage.backends._postgres_messages import select_sql
from connectome_storage.backends.postgres import PostgresStorage
from connectome_storage.messages import MessageSelect

from ..conftest import FakeClock
from ..postgres_server import PostgresServer
from .postgres_fixtures import raw_fixture, schema_fixture  # noqa: F401


def open_storage(server: PostgresServer, schema: str, dsn: str | None = None) -> PostgresStorage:
    storage = create_postgres_storage(dsn or server.dsn, schema=schema, clock=FakeClock())
    assert isinstance(storage, PostgresStorage)
    return storage


async def test_messages_are_rows_with_their_addressing_in_columns(
    postgres_server: PostgresServer, schema: str, raw: Any
) -> None:
    async with open_storage(postgres_server, schema) as storage:
        bus = storage.message_store()
        await bus.save({"id": "m1", "from": "a", "to": "*", "timestamp": "t\x00", "n": 1e300})
        await bus.mark_read("b", ["m1", "m0"])
        row = await raw.fetchrow("SELECT * FROM messages")
        assert tuple(row) == (
            "m1",
            "a",
            "*",
            b"t\x00",
            '{"from":"a","id":"m1","n":1e+300,"timestamp":"t\\u0000","to":"*"}',
        )
        assert [tuple(r) for r in await raw.fetch("SELECT * FROM read_messages ORDER BY message_id")] == [
            ("b", "m0"), ("b", "m1"),
        ]  # fmt: skip
        assert await bus.get("m1") == {"id": "m1", "from": "a", "to": "*", "timestamp": "t\x00", "n": 1e300}


async def test_queries_agree_with_the_reference_in_a_database_of_another_collation(
    postgres_server: PostgresServer, schema: str, raw: Any
) -> None:
    """Time stamps and ids that ICU's en-US would order otherwise ("a" < "B"), a time stamp
    holding U+0000: 300 seeded random queries, filtered, ordered and limited in SQL."""
    name = f"icu_{schema}"[:60]
    await raw.execute(f"CREATE DATABASE \"{name}\" TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US'")
    rng = random.Random(11)
    agents = ["a", "B", "é", "Z"]
    try:
        dsn = postgres_server.dsn.rsplit("/", 1)[0] + f"/{name}"
        async with open_storage(postgres_server, schema, dsn=dsn) as storage:
            bus = storage.message_store()
            messages = []
            for i in range(80):
                sender = rng.choice(agents)
                message = {
                    "id": rng.choice(["m", "M", "é", "_"]) + str(i),
                    "from": sender,
                    "to": rng.choice([*[a for a in agents if a != sender], "*"]),
                    "timestamp": rng.choice(["2026-01-0", "2026-01-0\x00", "2026-a", "2026-B", "2026-é"]),
                }
                await bus.save(message)
                messages.append(message)
            for _ in range(300):
                select = MessageSelect(
                    rng.choice([None, *agents]), rng.choice([None, *agents]), rng.choice([None, *agents]),
                    rng.choice([None, 1, 3, 10]),
                )  # fmt: skip
                # Not re-sorted by MessageStore: the hook's own answer, as the server ordered and limited it.
                assert await storage._msg_select(select) == select.apply(messages), select
            for agent in agents:
                addressed = {m["id"] for m in MessageSelect(to=agent).apply(messages)}
                assert await bus.get_unread_ids(agent) == addressed
    finally:
        await raw.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


async def test_queries_use_their_indexes(postgres_server: PostgresServer, schema: str, raw: Any) -> None:
    async with open_storage(postgres_server, schema) as storage:
        bus = storage.message_store()
        for i in range(400):
            await bus.save({"from": f"agent{i % 20}", "to": f"agent{(i + 1) % 20}", "n": i})
    await raw.execute("ANALYZE")
    await raw.execute("SET enable_seqscan = off")  # which index can the planner use for each

    async def plan(select: MessageSelect) -> str:
        sql, params = select_sql(select)
        return "\n".join(r[0] for r in await raw.fetch(f"EXPLAIN {sql}", *params))

    assert "messages_recipient" in await plan(MessageSelect(to="agent3"))
    assert "messages_sender" in await plan(MessageSelect(from_="agent3", limit=5))
    assert "messages_order" in await plan(MessageSelect(limit=5))
