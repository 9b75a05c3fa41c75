"""The file tree's housekeeping: its ``.gitignore``, what ``verify()`` reports beyond the
data files, the byte counts of stats, and ``cleanup()``'s removal of leftovers.

Housekeeping entries live at the root, hidden: ``.locks/`` (one lock file per entity),
``.backups/`` (kept versions), ``.journal/`` (append records), ``.transactions/``
(intent journals of commits under way, _file_tx.py), and temp files
(``.tmp-<pid>-<random>``) that a crash can leave next to the file being written.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

from ..codec import parse_time
from ..errors import InvalidArgumentError, StorageError
from ..interface import Kind, Problem
from . import _applog, _fs, _layout, _locks

__all__ = ["GITIGNORE", "Cleanup", "backup_bytes", "file_bytes", "find_problems", "write_gitignore"]

logger = logging.getLogger("connectome_storage")

GITIGNORE = b"""\
# Written by connectome-storage when this tree had no .gitignore (it never overwrites one).
# Its housekeeping is not data: commit the data folders, .connectome-storage.json
# (the format version) and this file; leave out the rest.
.locks/
.backups/
.journal/
.transactions/
.tmp-*
.new-*
.gone-*
.health-*
# SQLite databases kept next to the tree, and their side files
*.db
*.db-wal
*.db-shm
*.db-journal
"""


def write_gitignore(root: Path) -> None:
    """Write ``root/.gitignore`` unless an entry of that name exists; a tree that cannot
    be written (read-only) is still opened, so this only logs why it could not."""
    path = root / ".gitignore"
    if os.path.lexists(path):
        return
    try:
        _fs.atomic_write(path, GITIGNORE, root)
    except (OSError, StorageError) as e:
        logger.warning("could not write %s (%s); housekeeping may show up in git status", path, e)


def file_bytes(folder: Path) -> int:
    """Bytes of the regular files at or below ``folder``, links not followed."""
    total = 0
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            with suppress(OSError):
                st = os.lstat(os.path.join(dirpath, name))
                total += st.st_size if _fs.special_kind(st.st_mode) is None else 0
    return total


def backup_bytes(root: Path) -> int:
    return file_bytes(root / _fs.BACKUP_DIR)


def find_problems(root: Path) -> list[Problem]:
    """What verify() reports beyond unreadable data files: links, FIFOs, sockets and
    devices anywhere below ``root``; strays and leftover temp files in the data folders;
    damaged journal records."""
    specials = _layout.find_special_entries(root)
    strays = _layout.find_strays(root, skip={p.location for p in specials})
    journal = [
        Problem(str(path), f"{path}: {why}")
        for path, why in _applog.damaged_records(root / _applog.JOURNAL_DIR)
        if str(path) not in {p.location for p in specials}
    ]
    return specials + strays + journal


class Cleanup:
    """Removes what the tree no longer needs (``FileStorage.cleanup()``), in one thread:

    * temp files whose writing process is gone;
    * the kept versions of a data file that no longer exists, once the newest of them is
      older than the retention (by the storage clock, from the time in its name), each
      file's versions removed under its entity's lock, so a concurrent delete that keeps
      a new version cannot lose it (an entity whose lock is held is left for next time);
    * lock files of entities that no longer exist, once older than the retention (their
      modification time), each removed while held (``_locks.remove_unused``).
    """

    def __init__(
        self,
        root: Path,
        locks: _locks.EntityLocks,
        parse: Callable[[str], tuple[Kind, str]],
        entity: Callable[[Kind, str], str],
    ) -> None:
        self._root = root
        self._locks = locks
        self._parse = parse
        self._entity = entity

    def run(self, now_ms: int, retention_ms: int, *, temp_files: bool = True) -> dict[str, int]:
        """``temp_files`` False: leave temp files alone (the caller could not take the tree's
        transaction lock, and a dead process's committed journal may still need them)."""
        folders = [self._root / f for f in _layout.FOLDERS]
        # Leftover folders first: their temp files are counted with them, once.
        leftovers = self._leftover_folders() if temp_files else 0
        removed = {
            "temp_files": leftovers + (_fs.remove_stale_temp_files(self._root, folders) if temp_files else 0),
            "backups": self._backups(now_ms - retention_ms),
            "lock_files": self._lock_files(now_ms - retention_ms),
        }
        if any(removed.values()):
            logger.info("cleanup of %s removed %s", self._root, removed)
        return removed

    def _leftover_folders(self) -> int:
        """``conversations/.gone-*`` folders (a removal whose commit point is past: always)
        and ``.new-*`` folders whose writing process is gone (a live one is about to rename
        its folder into place)."""
        removed = 0
        for entry in _fs.scandir(self._root / "conversations"):
            name = entry.name
            if not entry.is_dir(follow_symlinks=False):
                continue
            if name.startswith(_fs.GONE_PREFIX) or (
                name.startswith(_fs.NEW_PREFIX) and not _fs.temp_owner_alive(name, _fs.NEW_PREFIX)
            ):
                _fs.discard_folder(Path(entry.path))
                removed += not os.path.lexists(entry.path)
        return removed

    # ------------------------------------------------------------------ backups

    def _version_folders(self) -> list[tuple[str, Path]]:
        """(relative path of the data file, folder of its kept versions)."""
        top = self._root / _fs.BACKUP_DIR
        found = []
        for folder in _layout.FOLDERS:
            for entry in _fs.scandir(top / folder):
                if not entry.is_dir(follow_symlinks=False):
                    continue
                if folder in _layout.FLAT_FOLDERS:
                    found.append((f"{folder}/{entry.name}", Path(entry.path)))
                    continue
                for inner in _fs.scandir(Path(entry.path)):
                    if inner.is_dir(follow_symlinks=False):
                        found.append((f"{folder}/{entry.name}/{inner.name}", Path(inner.path)))
        return found

    def _backups(self, cutoff_ms: int) -> int:
        removed = 0
        for relative, folder in self._version_folders():
            try:
                kind, key = self._parse(relative)
            except InvalidArgumentError:
                continue  # not a data file's versions: verify() does not judge .backups' insides
            if os.path.lexists(self._root / relative) or self._newest_ms(folder) > cutoff_ms:
                continue
            removed += self._locks.try_hold(self._entity(kind, key), self._remove_versions, relative, folder) or 0
        return removed

    def _newest_ms(self, folder: Path) -> int:
        newest = 0
        for entry in _fs.scandir(folder):
            stamp = entry.name[7 : -len(".json")]
            try:
                taken = parse_time(stamp[:10] + stamp[10:].replace("-", ":"))
            except ValueError:  # not a name we gave: go by when it was last changed
                taken = round(entry.stat(follow_symlinks=False).st_ctime * 1000)
            newest = max(newest, taken)
        return newest

    def _remove_versions(self, relative: str, folder: Path) -> int:
        if os.path.lexists(self._root / relative):
            return 0  # stored again meanwhile: its versions are its history again
        removed = 0
        for entry in _fs.scandir(folder):
            if entry.is_file(follow_symlinks=False) or entry.is_symlink():
                with suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed += 1
        # Empty folders up to .backups go too (a folder still holding something stays).
        top = self._root / _fs.BACKUP_DIR
        while folder != top:
            try:
                folder.rmdir()
            except OSError:
                break
            folder = folder.parent
        return removed

    # --------------------------------------------------------------- lock files

    def _live_entities(self) -> set[str]:
        """Lock file names of the entities that exist now."""
        names = set()
        for folder in _layout.FOLDERS:
            for entry in _fs.scandir(self._root / folder):
                names.add(f"{folder}/{entry.name}")
        return {hashlib.sha1(name.encode()).hexdigest() + ".lock" for name in names}

    def _lock_files(self, cutoff_ms: int) -> int:
        live = self._live_entities()
        removed = 0
        for entry in _fs.scandir(self._root / _locks.LOCK_DIR):
            if entry.name in live or not entry.name.endswith(".lock"):
                continue
            try:
                if entry.stat(follow_symlinks=False).st_mtime * 1000 > cutoff_ms:
                    continue
            except FileNotFoundError:
                continue
            removed += _locks.remove_unused(Path(entry.path))
        return removed
