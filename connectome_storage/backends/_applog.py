"""Appending to a JSON array file in place, made crash-safe by a rollback journal.

Rewriting a 10,000-message history to add one message costs more than ten times an
append to a short one. Instead, when the file is exactly what this library last wrote,
the closing ``]`` is overwritten with ``,<new items>]``: the result is byte-identical
to a full rewrite, and the cost does not grow with the history.

Protocol, under the entity's lock (docs/file-format.md):

1. The journal ``.journal/<hash>.json`` records the file's state after our last write
   (inode, size, mtime, item count). If the file no longer matches it (edited by hand,
   replaced, restored), the slow path reads, checks and rewrites the whole file
   atomically, then records the new state.
2. Fast path: write to the journal what is about to change (offset, the bytes being
   overwritten, the new size and a digest of the new bytes) and fsync it; write the new
   bytes at the offset and fsync the file; record the committed state.
3. Recovery, before any later access under the lock: a pending record whose new bytes are
   all there (size and digest match) is committed; otherwise the old tail is written
   back and the file truncated to its old size. A crash at any instant thus leaves the
   old or the new content.

Readers do not lock: a reader that catches an append half-way sees JSON that does not
parse (items are objects, and no prefix of an object is complete), and retries under
the lock, after recovery.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

import orjson

from ..codec import encode
from . import _fs

__all__ = ["JOURNAL_DIR", "AppendLog"]

JOURNAL_DIR = ".journal"


def _tail(pretty: bool) -> bytes:
    return b"\n]\n" if pretty else b"]\n"


class AppendLog:
    """Appends to the JSON array files of one tree, in place when that is safe."""

    def __init__(self, root: Path, pretty: bool) -> None:
        self._root = root
        self._folder = root / JOURNAL_DIR
        self._pretty = pretty

    def journal_path(self, path: Path) -> Path:
        relative = path.relative_to(self._root).as_posix()
        return self._folder / (hashlib.sha1(relative.encode()).hexdigest() + ".json")

    # ---------------------------------------------------------------- appending

    def append(self, path: Path, items: list[Any], load_all: Callable[[], list[Any]]) -> int:
        """Append ``items`` to the array in ``path``; return the new length.

        ``load_all`` reads and checks the whole file (raising CorruptedDataError); it is
        used when the file is not known to be exactly what we last wrote.
        """
        journal = self.journal_path(path)
        committed = self.recover(path)
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            stat = None
        if stat is not None and committed is not None and _matches(committed, stat, self._pretty):
            return self._append_in_place(path, journal, items, stat, committed["count"])
        combined = load_all() + items
        _fs.atomic_write(path, encode(combined, pretty=self._pretty), self._root)
        self._record(journal, {"committed": _state(os.stat(path), len(combined), self._pretty)}, durable=False)
        return len(combined)

    def _append_in_place(self, path: Path, journal: Path, items: list[Any], stat: os.stat_result, count: int) -> int:
        tail = _tail(self._pretty)
        new_bytes = self._render(items)
        offset = stat.st_size - len(tail)
        pending = {
            "ino": stat.st_ino,
            "offset": offset,
            "old_tail": tail.decode(),
            "new_size": offset + len(new_bytes),
            "digest": hashlib.sha256(new_bytes).hexdigest(),
            "count_before": count,
            "count_after": count + len(items),
            "pretty": self._pretty,
        }
        self._record(journal, {"pending": pending}, durable=True)
        fd = os.open(path, os.O_WRONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NOFOLLOW", 0))
        try:
            _write_at(fd, new_bytes, offset)
            os.fsync(fd)
            after = os.fstat(fd)
        except BaseException:
            # A full disk (or any failure) mid-append: undo it now, so the file on disk is the
            # previous version at once, not only after the next access through the library.
            # Putting the old tail back rewrites bytes already allocated, so it fits even then.
            with suppress(OSError):
                self._record(journal, {"committed": self._roll_back(path, pending)}, durable=False)
            raise
        finally:
            os.close(fd)
        self._record(journal, {"committed": _state(after, count + len(items), self._pretty)}, durable=False)
        return count + len(items)

    def _render(self, items: list[Any]) -> bytes:
        """``,<items>]`` exactly as they appear inside a full encoding of the array."""
        if not self._pretty:
            return b"," + b",".join(encode(item, pretty=False)[:-1] for item in items) + b"]\n"
        # orjson indents nested values structurally: an element of the top-level array is
        # its own pretty form with every line shifted by two spaces.
        rendered = [b"  " + encode(item)[:-1].replace(b"\n", b"\n  ") for item in items]
        return b",\n" + b",\n".join(rendered) + b"\n]\n"

    # ----------------------------------------------------------------- recovery

    def recover(self, path: Path) -> dict[str, Any] | None:
        """Finish or undo an append cut short; return the committed state, if known."""
        journal = self.journal_path(path)
        record = _read_record(journal)
        if record is None:
            return None
        if "committed" in record:
            return record["committed"]  # type: ignore[no-any-return]
        pending = record["pending"]
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            self._record(journal, {}, durable=False)
            return None
        if stat.st_ino != pending["ino"]:
            state = None  # replaced since: the record is about another file
        elif stat.st_size == pending["new_size"] and self._new_bytes_complete(path, pending):
            state = _state(stat, pending["count_after"], pending["pretty"])
        elif pending["offset"] <= stat.st_size <= pending["new_size"]:
            state = self._roll_back(path, pending)
        else:
            state = None  # changed by someone else since; the slow path will check it
        self._record(journal, {"committed": state} if state else {}, durable=False)
        return state

    @staticmethod
    def _new_bytes_complete(path: Path, pending: dict[str, Any]) -> bool:
        with open(path, "rb") as f:
            f.seek(pending["offset"])
            written = f.read(pending["new_size"] - pending["offset"])
        return bool(hashlib.sha256(written).hexdigest() == pending["digest"])

    @staticmethod
    def _roll_back(path: Path, pending: dict[str, Any]) -> dict[str, Any]:
        old_tail = pending["old_tail"].encode()
        fd = os.open(path, os.O_WRONLY | getattr(os, "O_BINARY", 0))
        try:
            _write_at(fd, old_tail, pending["offset"])
            os.ftruncate(fd, pending["offset"] + len(old_tail))
            os.fsync(fd)
            after = os.fstat(fd)
        finally:
            os.close(fd)
        return _state(after, pending["count_before"], pending["pretty"])

    def forget(self, path: Path) -> None:
        """Before ``path`` is replaced or deleted: settle and drop its journal durably,
        so a stale record can never be applied to a later file that reuses the inode."""
        journal = self.journal_path(path)
        if not journal.exists():
            return
        self.recover(path)
        with suppress(FileNotFoundError):
            os.unlink(journal)
            _fs.fsync_dir(self._folder)

    # ------------------------------------------------------------------ journal

    def _record(self, journal: Path, record: dict[str, Any], *, durable: bool) -> None:
        data = orjson.dumps(record)
        try:
            fd = os.open(journal, os.O_WRONLY | getattr(os, "O_BINARY", 0))
            created = False
        except FileNotFoundError:
            self._folder.mkdir(exist_ok=True)
            fd = os.open(journal, os.O_WRONLY | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o666)
            created = True
        try:
            _write_at(fd, data, 0)
            os.ftruncate(fd, len(data))
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        if durable and created:
            _fs.fsync_dir(self._folder)


def _state(stat: os.stat_result, count: int, pretty: bool) -> dict[str, Any]:
    return {"ino": stat.st_ino, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "count": count, "pretty": pretty}


def _matches(state: dict[str, Any], stat: os.stat_result, pretty: bool) -> bool:
    return (state["ino"], state["size"], state["mtime_ns"], state["pretty"]) == (
        stat.st_ino, stat.st_size, stat.st_mtime_ns, pretty,
    )  # fmt: skip


def _read_record(journal: Path) -> dict[str, Any] | None:
    """The journal's record; None when absent, empty or torn (then the log was not touched:
    a pending record is fsynced before the log is)."""
    try:
        record = orjson.loads(journal.read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return None
    return record if isinstance(record, dict) and record else None


def _write_at(fd: int, data: bytes, offset: int) -> None:
    # lseek + write rather than pwrite: the descriptor is ours alone, and this also works
    # on Windows and under pyfakefs.
    os.lseek(fd, offset, os.SEEK_SET)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
