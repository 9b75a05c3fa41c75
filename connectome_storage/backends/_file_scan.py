"""Whole-tree scans of FileStorage's conversations folder, in one worker thread.

``get_storage_stats`` reads every conversation file once. The plain way (walk the tree,
open and parse every file) costs one folder scan per conversation and one open + read
per file; this scan costs the same and no more: each conversation folder is listed once
(the entry types come from the listing, no ``lstat`` per name), only the files present
are opened (``os.open`` + ``fstat`` + ``os.read`` + ``close``, string paths), and the
sizes that ``total_bytes`` needs come from the same ``fstat`` instead of a second walk.

Nothing is followed or opened but a regular file: the listing's entry type decides, the
open refuses a link (``O_NOFOLLOW``) and never waits on a FIFO (``O_NONBLOCK``), and the
``fstat`` after it refuses anything swapped in since the listing.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from ..codec import decode
from ..errors import StorageError
from ..interface import CONVERSATION_PARTS, Kind
from ..naming import decode_name
from . import _fs, _housekeeping
from ._layout import _READ_IN_LOOP_LIMIT, CONVERSATION_FILES, META_FILE, PART_FILES, check_shape

__all__ = [
    "READ_IN_LOOP_LIMIT",
    "ConversationScan",
    "MetaAbsence",
    "conversation_folders",
    "entity_folder",
    "parse_part",
    "read_small_at",
    "scan_conversations",
]

_READ_FLAGS = _fs._READ_FLAGS  # never follows a link, never waits on a FIFO
READ_IN_LOOP_LIMIT = _READ_IN_LOOP_LIMIT  # larger files are read in a worker thread
_PART_KINDS = {PART_FILES[kind]: kind for kind in CONVERSATION_PARTS}
_COUNTED = {Kind.RAW_MESSAGES: "raw_message_count", Kind.MEMORIES: "memory_count", Kind.CHUNKS: "chunk_count"}


class _Unreadable(Exception):
    """A file that is there but cannot be read as a regular file (a folder, a link...)."""


@dataclass
class ConversationScan:
    """What one pass over ``conversations/`` counted."""

    conversation_count: int = 0
    expired_conversation_count: int = 0
    raw_message_count: int = 0
    memory_count: int = 0
    chunk_count: int = 0
    unreadable_count: int = 0
    total_bytes: int = 0  # every regular file below conversations/, as a walk would sum them

    def add(self, name: str, amount: int) -> None:
        setattr(self, name, getattr(self, name) + amount)


def _read(entry: os.DirEntry[str]) -> tuple[bytes, int] | None:
    """(bytes, size) of the regular file ``entry``; None if it is gone; _Unreadable if it
    is not a regular file (never opened when the listing already says so: a device or FIFO
    stays closed). The size is the file's size as a walk would add it."""
    path = entry.path
    if not entry.is_file(follow_symlinks=False):
        raise _Unreadable(path)
    try:
        fd = os.open(path, _READ_FLAGS)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        raise _Unreadable(path) from e  # a link (ELOOP), permission denied...
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _Unreadable(path)
        # A regular file's read returns all it asked for unless the end came first: one
        # read of size + 1 bytes is the whole file unless it grew in between.
        chunks = [os.read(fd, st.st_size + 1)]
        while len(chunks[-1]) and sum(map(len, chunks)) > st.st_size:
            chunks.append(os.read(fd, 65536))
        return b"".join(chunks), st.st_size
    finally:
        os.close(fd)


def parse_part(kind: Kind, raw: bytes, path: str) -> Any:
    """The file's value, checked as a load checks it; CorruptedDataError naming ``path``."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        value = decode(raw, path)  # raises, naming the file and where
    if kind is Kind.CONVERSATION and type(value) is dict:
        return value  # the common case, without building a Path (check_shape asks no more)
    return check_shape(kind, value, Path(path))


def _lsize(entry: os.DirEntry[str]) -> int:
    """The size a walk adds for ``entry`` (regular files only, links not followed)."""
    try:
        if entry.is_dir(follow_symlinks=False):
            return _housekeeping.file_bytes(Path(entry.path))
        if entry.is_file(follow_symlinks=False):
            return entry.stat(follow_symlinks=False).st_size
    except OSError:
        pass
    return 0


def scan_conversations(
    folder: Path,
    now_ms: int,
    expired: Callable[[bytes, Path, str, int], bool],
    read_log: Callable[[Kind, Path], list[Any]],
) -> ConversationScan:
    """Count the conversations below ``folder`` as ``get_storage_stats`` defines them.

    ``expired(raw, path, id, now_ms)`` decides from a metadata file's bytes (raising
    StorageError when it is damaged); ``read_log(kind, path)`` is the slow, settled read of
    a log that did not parse (an append in place may be half-way in another process).
    """
    scan = ConversationScan()
    try:
        with os.scandir(folder) as top:
            entries = list(top)
    except (FileNotFoundError, NotADirectoryError):
        return scan
    for entry in entries:
        identifier = decode_name(entry.name)
        if identifier is None or entry.is_file(follow_symlinks=False):
            scan.total_bytes += _lsize(entry)  # strays and temp files count in total_bytes
            continue
        if not entry.is_dir(follow_symlinks=False):
            scan.unreadable_count += 1  # a link or the like: refused, never followed
            continue
        _scan_one(scan, entry.path, identifier, now_ms, expired, read_log)
    return scan


def _scan_one(
    scan: ConversationScan,
    folder: str,
    identifier: str,
    now_ms: int,
    expired: Callable[[bytes, Path, str, int], bool],
    read_log: Callable[[Kind, Path], list[Any]],
) -> None:
    parts: list[os.DirEntry[str]] = []
    meta: os.DirEntry[str] | None = None
    try:
        with os.scandir(folder) as inner:
            for entry in inner:
                name = entry.name
                if name == META_FILE:
                    meta = entry
                elif name in CONVERSATION_FILES:
                    parts.append(entry)
                else:
                    scan.total_bytes += _lsize(entry)  # temp files, strays
    except (FileNotFoundError, NotADirectoryError):
        return  # removed (or replaced) since the listing
    except OSError:
        scan.unreadable_count += 1  # a folder this process may not list
        return
    if meta is not None:
        live = _meta_live(scan, meta, identifier, now_ms, expired)
        if not live:
            scan.expired_conversation_count += 1  # its parts are left out of the counts
            scan.total_bytes += sum(_lsize(entry) for entry in parts)
            return
    if not parts and meta is None:
        return  # an empty folder (or only temp files) is no conversation
    scan.conversation_count += 1
    for entry in parts:
        _count_part(scan, entry, _PART_KINDS[entry.name], identifier, read_log)


def _meta_live(
    scan: ConversationScan,
    entry: os.DirEntry[str],
    identifier: str,
    now_ms: int,
    expired: Callable[[bytes, Path, str, int], bool],
) -> bool:
    """Whether the conversation whose metadata is ``entry`` is live; a damaged or unreadable
    file counts as unreadable and leaves its conversation live."""
    try:
        if entry.is_dir(follow_symlinks=False):
            scan.total_bytes += _lsize(entry)
            raise _Unreadable(entry.path)  # a folder where the file belongs
        read = _read(entry)
        if read is None:
            return True  # removed since the listing
        raw, size = read
        scan.total_bytes += size
        return not expired(raw, Path(entry.path), identifier, now_ms)
    except (_Unreadable, StorageError, OSError):
        scan.unreadable_count += 1
        return True


def _count_part(
    scan: ConversationScan,
    entry: os.DirEntry[str],
    kind: Kind,
    identifier: str,
    read_log: Callable[[Kind, Path], list[Any]],
) -> None:
    path = entry.path
    try:
        if entry.is_dir(follow_symlinks=False):
            scan.total_bytes += _lsize(entry)
            raise _Unreadable(path)  # a folder where a file belongs
        read = _read(entry)
        if read is None:
            return  # removed since the listing
        raw, size = read
        scan.total_bytes += size
        try:
            value = parse_part(kind, raw, path)
        except StorageError:
            if kind is not Kind.RAW_MESSAGES:
                raise
            value = read_log(kind, Path(path))  # maybe an append half-way: its version before
        if kind in _COUNTED:
            scan.add(_COUNTED[kind], len(value))
    except (_Unreadable, StorageError, OSError):
        scan.unreadable_count += 1


# --------------------------------------------------------------- point reads


class MetaAbsence:
    """Conversation folders this process knows hold no ``metadata.json``, so that a read of
    a part of a conversation without metadata costs no failed ``access()``.

    A folder is known by its identity as an ``lstat`` shows it (inode, mtime, ctime); every
    entry created, renamed or removed in it, by any process, changes its mtime and ctime,
    so an unchanged identity means no ``metadata.json`` appeared. Timestamps are coarse
    (a kernel tick; two seconds on FAT): a folder changed within the same tick as the one
    remembered would keep its identity, so a folder is remembered only when both of its
    times are older than ``MARGIN_NS`` before the check that found no metadata began; any
    later change then carries a later time.
    """

    MARGIN_NS = 3_000_000_000
    # Remembered folders (about 300 bytes each); past it the memory starts over. Enough for
    # the conversations a process keeps reading; a scan of a whole big tree must not make it
    # hold tens of megabytes (at 65,536 a migrate of 100,000 conversations peaked 20 MB higher).
    LIMIT = 8192

    def __init__(self) -> None:
        self._absent: dict[str, tuple[int, int, int]] = {}

    def known(self, folder: str, st: os.stat_result) -> bool:
        return self._absent.get(folder) == (st.st_ino, st.st_mtime_ns, st.st_ctime_ns)

    def remember(self, folder: str, st: os.stat_result, checked_ns: int) -> None:
        if max(st.st_mtime_ns, st.st_ctime_ns) >= checked_ns - self.MARGIN_NS:
            return  # changed too recently for its times to tell a later change apart
        if len(self._absent) >= self.LIMIT:
            self._absent.clear()
        self._absent[folder] = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns)

    def forget(self, folder: str) -> None:
        self._absent.pop(folder, None)


def entity_folder(root: Path, top: str, folder: str) -> os.stat_result | None:
    """The ``lstat`` of an entity's folder (``top`` is its data folder, both as strings),
    None if it does not exist; StorageIOError for a link or anything but a folder at
    either level, as ``_fs.missing_dirs`` refuses them."""
    try:
        top_mode = os.lstat(top).st_mode
        st = os.lstat(folder)
    except (FileNotFoundError, NotADirectoryError):
        _fs.missing_dirs(Path(folder), root)  # raises for what stands in the way
        return None
    if not stat.S_ISDIR(top_mode) or not stat.S_ISDIR(st.st_mode):
        _fs.missing_dirs(Path(folder), root)  # raises, naming the entry
    return st


def read_small_at(path: str, limit: int) -> bytes | bool | None:
    """The bytes of the regular file ``path``, None if absent, False if larger than
    ``limit`` or a folder (the caller reads it in a thread, which reports a folder). As
    ``_layout.read_small``, with string paths and one read for a file that does not grow:
    a link, FIFO, socket or device is refused unopened, and checked again after the open."""
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    if stat.S_ISDIR(mode):
        return False
    what = _fs.special_kind(mode)
    if what is not None:
        raise _fs.refuse_special(path, what)
    fd = _fs.open_checked(path)
    if fd is None:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            if stat.S_ISDIR(st.st_mode):
                return False
            raise _fs.refuse_special(path, _fs.special_kind(st.st_mode) or "not a regular file")
        if st.st_size > limit:
            return False
        data = os.read(fd, st.st_size + 1)
        if len(data) <= st.st_size:
            return data  # a short read of a regular file is its end
        chunks = [data]
        while chunk := os.read(fd, 65536):  # it grew since the fstat
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


# ------------------------------------------------------------------- listing


def conversation_folders(top: str) -> Iterator[tuple[str, str, bool | None]]:
    """(id, folder, whether it holds ``metadata.json``) of each conversation folder of
    ``top`` that holds a part file; a link (or FIFO...) in place of a folder comes with
    None, so that reading it fails loudly, naming it, instead of it silently vanishing.
    String paths throughout: at 100,000 folders, building Paths cost 40% of a listing.
    Streamed from one open scandir, so a listing holds no more than the ids it returns."""
    try:
        entries = os.scandir(top)
    except (FileNotFoundError, NotADirectoryError):
        return
    with entries:
        for entry in entries:
            found = _conversation_folder(entry)
            if found is not None:
                yield found


def _conversation_folder(entry: os.DirEntry[str]) -> tuple[str, str, bool | None] | None:
    identifier = decode_name(entry.name)
    if identifier is None or entry.is_file(follow_symlinks=False):
        return None
    path = entry.path
    if not entry.is_dir(follow_symlinks=False):
        return identifier, path, None
    try:
        with os.scandir(path) as inner:
            names = {item.name for item in inner}
    except (FileNotFoundError, NotADirectoryError):
        return None  # removed since the listing
    return (identifier, path, META_FILE in names) if not names.isdisjoint(CONVERSATION_FILES) else None
