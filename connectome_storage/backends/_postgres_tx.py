"""Transactions on PostgreSQL: the ``_tx_*`` hooks of ``PostgresStorage`` (docs/transactions.md)."""

from __future__ import annotations

from ..interface import StorageInterface

__all__ = ["PostgresTransactions"]


class PostgresTransactions(StorageInterface):
    """Listed among the bases of PostgresStorage (postgres.py)."""
