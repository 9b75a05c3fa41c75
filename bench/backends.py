"""Opening a storage of each backend inside the run's scratch folder / Redis server."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from connectome_storage import (
    StorageInterface,
    create_file_storage,
    create_postgres_storage,
    create_redis_storage,
    create_sqlite_storage,
)

from .context import Context

__all__ = ["BACKENDS", "open_storage", "postgres_dsn"]

BACKENDS = ("file", "sqlite", "redis")


async def postgres_dsn(ctx: Context) -> str:
    """The DSN of the run's PostgreSQL server, started at the first call (tests/postgres_server.py:
    initdb and pg_ctl on 127.0.0.1 and a free port, fsync on) and stopped when the run ends."""
    if ctx.postgres_dsn is None:
        from tests.postgres_server import PostgresServer

        server = PostgresServer(ctx.folder("postgres-server"))
        await asyncio.to_thread(server.start)

        async def stop() -> None:
            await asyncio.to_thread(server.stop, "fast")

        ctx.closers.append(stop)
        ctx.postgres_dsn = server.dsn
    return ctx.postgres_dsn


async def open_storage(ctx: Context, backend: str, name: str, **options: Any) -> StorageInterface:
    """An initialized storage of ``backend`` with default (durable) settings, that no other
    benchmark touches: its own folder, database file, key prefix or PostgreSQL schema."""
    storage: StorageInterface
    if backend == "file":
        storage = create_file_storage(ctx.tmp / name, **options)
    elif backend == "sqlite":
        storage = create_sqlite_storage(ctx.folder(name) / "connectome.db", **options)
    elif backend == "redis":
        storage = create_redis_storage(ctx.redis_url, key_prefix=f"bench:{name}:", **options)
    elif backend == "postgres":
        schema = re.sub(r"[^a-z0-9_]", "_", name.lower())
        storage = create_postgres_storage(await postgres_dsn(ctx), schema=schema, **options)
    else:
        raise ValueError(f"unknown backend {backend!r}")
    await storage.initialize()
    return storage
