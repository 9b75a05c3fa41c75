"""The conversation store on PostgreSQL: the ``_meta_*`` and ``_conversation_*`` hooks of
``PostgresStorage`` (docs/conversations.md)."""

from __future__ import annotations

from ..interface import StorageInterface

__all__ = ["PostgresConversations"]


class PostgresConversations(StorageInterface):
    """Listed among the bases of PostgresStorage (postgres.py)."""
