"""Opening a storage of each backend inside the run's scratch folder / Redis server."""

from __future__ import annotations

from typing import Any

from connectome_storage import (
    StorageInterface,
    create_file_storage,
    create_redis_storage,
    create_sqlite_storage,
)

from .context import Context

__all__ = ["BACKENDS", "open_storage"]

BACKENDS = ("file", "sqlite", "redis")


async def open_storage(ctx: Context, backend: str, name: str, **options: Any) -> StorageInterface:
    """An initialized storage of ``backend`` with default (durable) settings, that no other
    benchmark touches: its own folder, database file or key prefix."""
    storage: StorageInterface
    if backend == "file":
        storage = create_file_storage(ctx.tmp / name, **options)
    elif backend == "sqlite":
        storage = create_sqlite_storage(ctx.folder(name) / "connectome.db", **options)
    elif backend == "redis":
        storage = create_redis_storage(ctx.redis_url, key_prefix=f"bench:{name}:", **options)
    else:
        raise ValueError(f"unknown backend {backend!r}")
    await storage.initialize()
    return storage
