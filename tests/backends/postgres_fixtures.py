"""Fixtures of the PostgreSQL backend's own tests: a schema per test, a plain asyncpg
connection to it (what a person with psql would do: look at rows, or tamper with them),
and a storage on that schema reading the test's clock.

Test modules import the functions (pytest finds fixtures among a module's globals); each is
registered under its short name (``schema``, ``raw``), so the imported names never clash
with the test functions' parameters.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest

from connectome_storage import PostgresStorage, create_postgres_storage

from ..conftest import FakeClock, postgres_schema
from ..postgres_server import PostgresServer

__all__ = ["open_storage", "raw_fixture", "schema_fixture"]


@pytest.fixture(name="schema")
def schema_fixture(tmp_path: Path) -> str:
    return postgres_schema(tmp_path)


@pytest.fixture(name="raw")
async def raw_fixture(postgres_server: PostgresServer, schema: str) -> AsyncIterator[Any]:
    conn = await asyncpg.connect(postgres_server.dsn, server_settings={"search_path": schema})
    try:
        yield conn
    finally:
        await conn.close()


def open_storage(server: PostgresServer, schema: str, clock: FakeClock, dsn: str | None = None) -> PostgresStorage:
    storage = create_postgres_storage(dsn or server.dsn, schema=schema, clock=clock)
    assert isinstance(storage, PostgresStorage)
    return storage
