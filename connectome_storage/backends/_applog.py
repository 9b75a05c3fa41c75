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

Readers never lock: a reader that catches an append half-way sees JSON that does not
parse (items are objects, and no prefix of an object is complete); it then reads the
version before the append from the file's prefix and the pending record's old tail
(``read_before_append``), so a writer stopped mid-append never holds a reader up.

A journal record that is damaged (not JSON, or fields of the wrong type: edited by hand,
or garbled by the disk) is logged and set aside as ``<hash>.json.damaged``, where
``verify()`` reports it; the log is then treated as unknown, so the next append checks
and rewrites it whole, and a torn tail shows up as CorruptedDataError, never as a crash.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat as stat_module
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

import orjson

from ..codec import encode
from ..errors import StorageError
from . import _fs

__all__ = ["DAMAGED_SUFFIX", "JOURNAL_DIR", "AppendLog", "damaged_records"]

JOURNAL_DIR = ".journal"
DAMAGED_SUFFIX = ".damaged"
logger = logging.getLogger("connectome_storage")
_RECORD_SIZE = 512
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
# The fields of each record and their types: anything else is a damaged record.
_STATE_FIELDS = {"ino": int, "size": int, "mtime_ns": int, "count": int, "pretty": bool}
_PENDING_FIELDS = {
    "ino": int, "offset": int, "old_tail": str, "new_size": int, "digest": str,
    "count_before": int, "count_after": int, "pretty": bool,
}  # fmt: skip


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
            stat = os.lstat(path)
        except FileNotFoundError:
            stat = None
        if stat is not None and not stat_module.S_ISREG(stat.st_mode):
            stat = None  # load_all reports (and refuses) whatever it is
        if stat is not None and committed is not None and _matches(committed, stat, self._pretty):
            return self._append_in_place(path, journal, items, stat, committed["count"])
        combined = load_all() + items
        _fs.atomic_write(path, encode(combined, pretty=self._pretty), self._root)
        self._record(journal, {"committed": _state(os.stat(path), len(combined), self._pretty)}, durable=False)
        return len(combined)

    def known_count(self, path: Path) -> int | None:
        """How many items ``path`` holds, when it is exactly what this library last wrote
        (known from the journal without reading the file); None otherwise. Under the lock."""
        committed = self.recover(path)
        if committed is None:
            return None
        try:
            stat = os.lstat(path)
        except FileNotFoundError:
            return None
        if not stat_module.S_ISREG(stat.st_mode) or not _matches(committed, stat, self._pretty):
            return None
        return int(committed["count"])

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
        fd = os.open(path, os.O_WRONLY | _NOFOLLOW)
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

    def cut_short(self) -> set[str]:
        """Names of the journal records of appends a crash cut short (still pending)."""
        names = set()
        for entry in _fs.scandir(self._folder):
            record = _read_record(Path(entry.path)) if entry.name.endswith(".json") else None
            if isinstance(record, dict) and "pending" in record:
                names.add(entry.name)
        return names

    def recover(self, path: Path) -> dict[str, Any] | None:
        """Finish or undo an append cut short; return the committed state, if known."""
        journal = self.journal_path(path)
        record = _read_record(journal)
        if record is not None and _damage(record):
            self._set_aside(journal, path, _damage(record))
            return None
        if record is None:
            return None
        if "committed" in record:
            return record["committed"]  # type: ignore[no-any-return]
        pending = record["pending"]
        try:
            stat = os.lstat(path)
        except FileNotFoundError:
            self._record(journal, {}, durable=False)
            return None
        if not stat_module.S_ISREG(stat.st_mode):
            raise _fs.refuse_special(path, _fs.special_kind(stat.st_mode) or "not a regular file")
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

    def _set_aside(self, journal: Path, path: Path, damage: str) -> None:
        aside = journal.with_name(journal.name + DAMAGED_SUFFIX)
        logger.warning(
            "journal record %s of %s is damaged (%s); set aside as %s: the log will be checked in full",
            journal, path, damage, aside,
        )  # fmt: skip
        os.replace(journal, aside)
        _fs.fsync_dir(self._folder)

    @staticmethod
    def _new_bytes_complete(path: Path, pending: dict[str, Any]) -> bool:
        opened = _fs.open_regular(path)
        if opened is None:
            return False
        fd, _size = opened
        with os.fdopen(fd, "rb") as f:
            f.seek(pending["offset"])
            written = f.read(pending["new_size"] - pending["offset"])
        return bool(hashlib.sha256(written).hexdigest() == pending["digest"])

    @staticmethod
    def _roll_back(path: Path, pending: dict[str, Any]) -> dict[str, Any]:
        old_tail = pending["old_tail"].encode()
        fd = os.open(path, os.O_WRONLY | _NOFOLLOW)
        try:
            _write_at(fd, old_tail, pending["offset"])
            os.ftruncate(fd, pending["offset"] + len(old_tail))
            os.fsync(fd)
            after = os.fstat(fd)
        finally:
            os.close(fd)
        return _state(after, pending["count_before"], pending["pretty"])

    def read_before_append(self, path: Path) -> bytes | None:
        """The log as it was before an append in place that is under way (or was cut short
        by a crash and not yet recovered): its bytes up to the append's offset, then the
        tail the append overwrote. None when no pending append applies to the file.

        This is how a reader that catches an append half-way gets a whole version without
        waiting for the writer's lock (the writer may be stopped): it changes nothing.
        """
        record = _read_record(self.journal_path(path))
        if not isinstance(record, dict) or _damage(record) or "pending" not in record:
            return None
        pending = record["pending"]
        opened = _fs.open_regular(path)
        if opened is None:
            return None
        fd, size = opened
        try:
            if os.fstat(fd).st_ino != pending["ino"] or not pending["offset"] <= size <= pending["new_size"]:
                return None
            prefix = b""
            while len(prefix) < pending["offset"]:
                chunk = os.read(fd, pending["offset"] - len(prefix))
                if not chunk:
                    return None
                prefix += chunk
        finally:
            os.close(fd)
        return prefix + str(pending["old_tail"]).encode()

    def adopt(self, path: Path, count: int) -> None:
        """``path`` was just rewritten whole (by a transaction) with ``count`` items: record
        its state, so the next append goes in place instead of reading it all first."""
        self._record(self.journal_path(path), {"committed": _state(os.stat(path), count, self._pretty)}, durable=False)

    def forget(self, path: Path) -> None:
        """Before ``path`` is replaced or deleted: settle and drop its journal durably,
        so a stale record can never be applied to a later file that reuses the inode."""
        journal = self.journal_path(path)
        if not os.path.lexists(journal):
            return
        self.recover(path)
        with suppress(FileNotFoundError):
            os.unlink(journal)
            _fs.fsync_dir(self._folder)

    # ------------------------------------------------------------------ journal

    def _record(self, journal: Path, record: dict[str, Any], *, durable: bool) -> None:
        # Padded to a fixed size with spaces (JSON ignores them): each record overwrites the
        # whole previous one in one write, so a kill between the write and the truncate
        # cannot leave a shorter record followed by the tail of a longer one.
        data = orjson.dumps(record)
        data += b" " * (-len(data) % _RECORD_SIZE)
        _fs.ensure_dir(self._folder, self._root)  # refuses a link in place of the folder
        try:
            fd = os.open(journal, os.O_WRONLY | os.O_NONBLOCK | _NOFOLLOW)
            created = False
        except FileNotFoundError:
            fd = os.open(journal, os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK | _NOFOLLOW, 0o666)
            created = True
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENXIO):  # a link, or a socket/FIFO nobody reads
                raise _fs.refuse_special(
                    journal, "a symbolic link" if e.errno == errno.ELOOP else "a FIFO or socket"
                ) from e
            raise
        if not stat_module.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise _fs.refuse_special(journal, "not a regular file")
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


def _read_record(journal: Path) -> Any:
    """The journal's record; None when absent or empty. Anything else that is not a
    well-formed record comes back as is, for ``_damage`` to name."""
    raw = _fs.read_bytes(journal)
    if not raw:
        return None  # absent, or created and not yet written when a crash came
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw
    return record if record != {} else None


def _damage(record: Any) -> str:
    """What is wrong with a journal record ("" when it is well-formed)."""
    if not isinstance(record, dict) or len(record) != 1:
        return "not a JSON object with one entry"
    name, value = next(iter(record.items()))
    fields = {"committed": _STATE_FIELDS, "pending": _PENDING_FIELDS}.get(name)
    if fields is None:
        return f"unknown entry {name!r}"
    if not isinstance(value, dict):
        return f"{name} is not an object"
    for field, kind in fields.items():
        # bool is an int subclass: a bool where an int belongs is damage too.
        if not isinstance(value.get(field), kind) or (kind is int and isinstance(value[field], bool)):
            return f"{name}.{field} is missing or not {kind.__name__}"
    return ""


def damaged_records(folder: Path) -> list[tuple[Path, str]]:
    """(path, what is wrong) for each damaged or set-aside record in the journal folder."""
    found = []
    for entry in _fs.scandir(folder):
        path = Path(entry.path)
        if entry.name.endswith(DAMAGED_SUFFIX):
            found.append((path, "a damaged journal record set aside; the log it belonged to was checked "
                                "in full at its next append: delete this file"))  # fmt: skip
        elif entry.name.endswith(".json") and entry.is_file(follow_symlinks=False):
            try:
                record = _read_record(path)
                damage = "" if record is None else _damage(record)
            except (OSError, StorageError):
                damage = "cannot be read"
            if damage:
                found.append((path, f"damaged journal record ({damage}); the next access of its log sets it aside"))
    return found


def _write_at(fd: int, data: bytes, offset: int) -> None:
    # lseek + write rather than pwrite: the descriptor is ours alone, and this also works
    # on Windows and under pyfakefs.
    os.lseek(fd, offset, os.SEEK_SET)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
