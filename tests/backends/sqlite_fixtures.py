"""Helpers of the SQLite backend's own tests: the database file of a test (``db``), and a
plain sqlite3 connection to it, beside the storage's own (what a person with the sqlite3
shell would do: look at rows, or tamper with them).

Test modules import ``db_fixture`` (pytest finds fixtures among a module's globals); it is
registered under its short name, ``db``."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest

__all__ = ["db_fixture", "raw"]


@pytest.fixture(name="db")
def db_fixture(tmp_path: Path) -> Path:
    return tmp_path / "connectome.db"


@contextmanager
def raw(path: Path, *, foreign_keys: bool = False) -> Iterator[sqlite3.Connection]:
    """A plain sqlite3 connection in autocommit mode; ``foreign_keys`` turns SQLite's
    enforcement on for it, as the storage's own connections have it."""
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        if foreign_keys:
            conn.execute("PRAGMA foreign_keys = ON")
        yield conn
