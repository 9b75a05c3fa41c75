"""Key-value collections on PostgreSQL: the ``_kv_*`` hooks of ``PostgresStorage`` (docs/kv.md)."""

from __future__ import annotations

from ..interface import StorageInterface

__all__ = ["PostgresKV"]


class PostgresKV(StorageInterface):
    """Listed among the bases of PostgresStorage (postgres.py)."""
