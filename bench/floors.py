"""Floors: the plainest code that does a benchmark's durable work, and no more.

A target that names one (``Floor`` in bench/targets.py) is shown beside what this machine
allows: no lock, no check, no index lookup, one thread hop at most. Our code does that
work and more, so a target beyond its floor cannot be met here by any code that keeps the
same guarantees.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from .data import durable_write

__all__ = ["PlainLog", "durable_write_with_backup"]


class PlainLog:
    """One INSERT committed per call at the storages' durability (WAL, synchronous=FULL:
    one WAL fsync per commit), into a table with no index beyond its rowid."""

    def __init__(self, path: Path) -> None:
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute("PRAGMA synchronous = FULL")
        self._conn.execute("CREATE TABLE IF NOT EXISTS log (id INTEGER PRIMARY KEY, data TEXT NOT NULL)")

    def commit(self, data: str) -> None:
        self._conn.execute("BEGIN IMMEDIATE")
        self._conn.execute("INSERT INTO log (data) VALUES (?)", (data,))
        self._conn.execute("COMMIT")

    def close(self) -> None:
        self._conn.close()


def durable_write_with_backup(path: Path, data: bytes, backups: Path, keep: int) -> None:
    """``durable_write`` after keeping the current version as a numbered hard link in
    ``backups``, then removing the versions past ``keep``: a store's work with backups
    on. The folder is listed to number and prune, as nothing else says what it holds."""
    kept = sorted(os.listdir(backups))
    number = int(kept[-1].partition("-")[0]) + 1 if kept else 1
    try:
        os.link(path, backups / f"{number:06d}-version.json")
        kept.append(f"{number:06d}-version.json")
    except FileNotFoundError:
        pass  # nothing to keep yet
    durable_write(path, data)
    for name in kept[: max(0, len(kept) - keep)]:
        os.unlink(backups / name)
