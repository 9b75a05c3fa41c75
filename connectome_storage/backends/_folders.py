"""Conversation folders at format version 2: a folder of ``conversations/`` whose name
decodes to an id IS a conversation (docs/file-format.md).

That holds because every writer keeps it: a new conversation's folder appears whole, its
first file already in it (``_fs.make_folder_whole``), and a conversation's last part
goes by renaming the folder away (``_fs.retire_folder``). So a listing is one scandir of
``conversations/``, without opening a folder.

Expiry needs no look into each folder either: ``.expiring/`` at the root holds an empty
file per conversation whose ``metadata.json`` has an expiry, named as its folder. Under
the conversation's lock, the entry is made durable BEFORE such a metadata file is
written, and removed only AFTER the metadata no longer has an expiry (or is gone). A
stale entry costs the listing one metadata read; a missing one would list an expired
conversation, which is why every write of metadata goes through ``ExpiryIndex.add``
first. A ``metadata.json`` written by hand is indexed by the next ``cleanup()`` (a full
pass, ``reindex``), and loads honour it at once (they read the metadata anyway).

Trees written at version 1 may hold folders without a part (a crash between making a
folder and writing into it, or between the last unlink and the rmdir); the first open
for writing removes those, indexes every metadata with an expiry, and rewrites the
marker to version 2 (``reindex`` with ``upgrade``). A part-less folder holding anything
else (a file of the user's) cannot go: the tree then stays at version 1, listed the slow
way, and ``verify()`` names the folder.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import LockTimeoutError, StorageError
from ..naming import decode_name
from . import _fs
from ._layout import CONVERSATION_FILES, META_FILE
from ._locks import EntityLocks

__all__ = ["EXPIRING_DIR", "ExpiryIndex", "Reindexed", "conversation_entries", "only_parts_leave", "reindex"]

EXPIRING_DIR = ".expiring"
logger = logging.getLogger("connectome_storage")
_NEW_FLAGS = os.O_WRONLY | os.O_CREAT | getattr(os, "O_BINARY", 0) | getattr(os, "O_NOFOLLOW", 0)


class ExpiryIndex:
    """``.expiring/<folder name>``: the conversations whose metadata has an expiry."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self.folder = root / EXPIRING_DIR
        self._top = str(self.folder)

    def add(self, name: str) -> None:
        """Make the entry for folder ``name`` durable (before its metadata with an expiry
        is written); nothing when it is there already (one ``access()``)."""
        path = f"{self._top}{os.sep}{name}"
        if _fs.present(path):
            return
        _fs.ensure_dir(self.folder, self._root)  # refuses a link in place of the folder
        os.close(os.open(path, _NEW_FLAGS, 0o666))
        _fs.fsync_dir(self.folder)

    def add_many(self, names: set[str]) -> int:
        """Entries for ``names`` not there yet, with one folder fsync; how many were made."""
        missing = names - self.names()
        if not missing:
            return 0
        _fs.ensure_dir(self.folder, self._root)
        for name in missing:
            os.close(os.open(f"{self._top}{os.sep}{name}", _NEW_FLAGS, 0o666))
        _fs.fsync_dir(self.folder)
        return len(missing)

    def discard(self, name: str) -> None:
        """Drop the entry of folder ``name`` (after its metadata lost its expiry). Not
        fsynced: an entry a crash brings back is only stale."""
        with suppress(FileNotFoundError, NotADirectoryError):
            os.unlink(f"{self._top}{os.sep}{name}")

    def names(self) -> set[str]:
        try:
            return set(os.listdir(self._top))
        except (FileNotFoundError, NotADirectoryError):
            return set()


def conversation_entries(top: str) -> Iterator[tuple[str, str, str]]:
    """(folder name, id, path) of each conversation of a version-2 ``conversations/``:
    every entry whose name decodes, but plain files (a link or FIFO in place of a folder
    is listed, so that reading it fails loudly, naming it). Streamed from one scandir."""
    try:
        entries = os.scandir(top)
    except (FileNotFoundError, NotADirectoryError):
        return
    with entries:
        for entry in entries:
            identifier = decode_name(entry.name)
            if identifier is not None and not entry.is_file(follow_symlinks=False):
                yield entry.name, identifier, entry.path


def only_parts_leave(folder: Path, leaving: set[str]) -> bool:
    """Whether removing the part files ``leaving`` (regular files) empties ``folder`` but
    for this library's temp files: then the folder goes whole (renamed away). False when
    another part stays, or anything else is there (a file of the user's stays, and so
    does its folder)."""
    for entry in _fs.scandir(folder):
        name = entry.name
        if name in leaving:
            if not entry.is_file(follow_symlinks=False):
                return False  # a folder where the file belongs: the single removal reports it
        elif not (name.startswith(_fs.TEMP_PREFIX) and entry.is_file(follow_symlinks=False)):
            return False
    return True


@dataclass
class Reindexed:
    """What a full pass over ``conversations/`` did."""

    removed: int = 0  # part-less folders removed
    kept: list[str] = field(default_factory=list)  # part-less folders that could not go
    indexed: int = 0  # index entries made
    unindexed: int = 0  # stale index entries removed


def reindex(
    conversations: Path,
    index: ExpiryIndex,
    locks: EntityLocks,
    has_expiry: Callable[[Path, str], bool],
    *,
    prune: bool,
) -> Reindexed:
    """One pass over ``conversations/``: each folder without a part is removed under its
    conversation's lock (it is empty or holds only temp files of dead writers; anything
    else keeps it, named in ``kept``); every ``metadata.json`` with an expiry
    (``has_expiry(path, id)``) gets its index entry. With ``prune``, entries whose
    metadata has none are removed, each under its conversation's lock (a writer may be
    about to write one with an expiry; an entity whose lock is held keeps its entry).

    A folder with a part is looked at without its lock: no writer of this version leaves
    a folder without a part, and an index entry made needlessly only costs a read."""
    done = Reindexed()
    wanted: set[str] = set()
    for entry in _fs.scandir(conversations):
        name = entry.name
        identifier = decode_name(name)
        if identifier is None or not entry.is_dir(follow_symlinks=False):
            continue
        try:
            names = {inner.name for inner in _fs.scandir(Path(entry.path))}
        except OSError:
            done.kept.append(entry.path)  # a folder this process may not list
            continue
        if names.isdisjoint(CONVERSATION_FILES):
            if _remove_partless(locks, Path(entry.path)):
                done.removed += 1
            else:
                done.kept.append(entry.path)
            continue
        if META_FILE in names and has_expiry(Path(entry.path, META_FILE), identifier):
            wanted.add(name)
    if done.removed:
        _fs.fsync_dir(conversations)
    done.indexed = index.add_many(wanted)
    if prune:
        for name in sorted(index.names() - wanted):
            identifier = decode_name(name)
            folder = conversations / name
            if identifier is None:
                index.discard(name)  # not an entry we made
                done.unindexed += 1
                continue
            check = _Unindex(index, name, folder / META_FILE, identifier, has_expiry)
            done.unindexed += bool(locks.try_hold(f"conversations/{name}", check))
    return done


@dataclass
class _Unindex:
    index: ExpiryIndex
    name: str
    meta: Path
    identifier: str
    has_expiry: Callable[[Path, str], bool]

    def __call__(self) -> bool:
        if os.path.lexists(self.meta) and self.has_expiry(self.meta, self.identifier):
            return False  # written since the pass: the entry stays
        self.index.discard(self.name)
        return True


def _remove_partless(locks: EntityLocks, folder: Path) -> bool:
    """Under the conversation's lock: remove ``folder`` if it still holds no part and
    nothing but temp files; True if it is gone."""
    try:
        lock = locks.take(f"conversations/{folder.name}", time.monotonic() + locks.timeout)
    except (LockTimeoutError, StorageError) as e:
        logger.warning("folder %s without a part is left for now: %s", folder, e)
        return False
    assert lock is not None
    try:
        entries = _fs.scandir(folder)
        if any(e.name in CONVERSATION_FILES for e in entries):
            return True  # written meanwhile: a conversation now, nothing to remove
        if not all(e.name.startswith(_fs.TEMP_PREFIX) and e.is_file(follow_symlinks=False) for e in entries):
            return False  # a file of the user's (or a folder): it stays, verify() names it
        try:
            for entry in entries:
                os.unlink(entry.path)
            os.rmdir(folder)
        except FileNotFoundError:
            pass
        except OSError as error:
            logger.warning("folder %s without a part cannot be removed: %s", folder, error)
            return False
        return True
    finally:
        lock.__exit__()
