"""The message store on PostgreSQL: the message hooks of ``PostgresStorage`` (docs/messages.md)."""

from __future__ import annotations

from ..interface import StorageInterface

__all__ = ["PostgresMessages"]


class PostgresMessages(StorageInterface):
    """Listed among the bases of PostgresStorage (postgres.py)."""
