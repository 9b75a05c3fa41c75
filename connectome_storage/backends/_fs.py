"""Synchronous file primitives for FileStorage: durable atomic writes, backups, refusals.

Everything here runs inside one worker thread per storage operation (one thread hop per
whole operation, not one per system call), except ``read_bytes`` of small files. Each
call that waits for the device goes through ``_turns.blocking``, so that writers run in
turns (see ``_turns``) and wait for the disk side by side.

Nothing here follows a symbolic link or opens anything but a regular file inside the
tree: a link, FIFO, socket or device where a data or housekeeping file belongs is refused
with StorageIOError naming it, before it is opened (a FIFO would block a reader forever,
a link could lead a read or a write outside the tree).
"""

from __future__ import annotations

import errno
import itertools
import os
import secrets
import stat
from contextlib import suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import NamedTuple

from ..errors import AccessDeniedError, StorageError, StorageFullError, StorageIOError
from . import _turns

__all__ = [
    "BACKUP_DIR",
    "GONE_PREFIX",
    "NEW_PREFIX",
    "TEMP_PREFIX",
    "BackupVersion",
    "Kept",
    "atomic_write",
    "check_folders",
    "discard_folder",
    "ensure_dir",
    "fsync_dir",
    "holds",
    "keep_backup",
    "list_backups",
    "make_folder_whole",
    "missing_dirs",
    "open_regular",
    "os_error",
    "present",
    "prune_backups",
    "read_bytes",
    "refuse_special",
    "regular_size",
    "remove_stale_temp_files",
    "retire_folder",
    "scandir",
    "special_kind",
    "unique_name",
    "unlink",
]

TEMP_PREFIX = ".tmp-"
# A conversation folder being made (its first file written in it before it is renamed
# into place) and one being removed (renamed away whole, then emptied): never listed,
# since no id's name starts with a dot.
NEW_PREFIX = ".new-"
GONE_PREFIX = ".gone-"
BACKUP_DIR = ".backups"
_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_DENIED = {errno.EACCES, errno.EPERM, errno.EROFS}
# O_NONBLOCK: even if a FIFO slipped in between the check and the open, opening it does
# not wait for a writer. O_NOFOLLOW: a link put in place of the file is never followed.
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
# A read or write of more bytes than this may wait for the device: done without the turn.
_LONG_IO = 1 << 18


def os_error(e: OSError, action: str, path: Path | str) -> StorageError:
    """Turn an OSError into the StorageError a caller can act on."""
    if isinstance(e, StorageError):
        return e  # AccessDeniedError is also a PermissionError: already made here
    other = f" ({e.filename})" if e.filename and str(e.filename) != str(path) else ""
    if e.errno in _FULL:
        return StorageFullError(
            f"no space left while {action} {path}{other}: free disk space and retry; the previous version is intact"
        )
    if e.errno in _DENIED:
        why = "the filesystem is read-only" if e.errno == errno.EROFS else "permission denied"
        return AccessDeniedError(
            f"{action} {path} failed: {why}{other} (file permissions); give this process write "
            "access to the whole tree, or open it only for reading"
        )
    if e.errno == errno.ENOTDIR:
        return StorageIOError(f"{action} {path} failed: a file stands where a folder belongs{other}; move it away")
    return StorageIOError(f"{action} {path} failed: {e.strerror or e}{other} (errno {e.errno})")


def special_kind(mode: int) -> str | None:
    """What a non-regular, non-folder entry is ("a symbolic link", "a FIFO", ...), else None."""
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return None


def refuse_special(path: Path | str, what: str) -> StorageIOError:
    return StorageIOError(
        f"refusing {path}: it is {what}, and only regular files and folders belong in the tree "
        "(a link could lead outside it, a FIFO would block); replace it with a regular file or remove it"
    )


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in ``path`` durable (a no-op where directories can't be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # Windows cannot open directories; NTFS journals metadata itself
    try:
        _turns.blocking(os.fsync, fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.EBADF):  # some filesystems refuse dir fsync
            raise
    finally:
        os.close(fd)


def ensure_dir(path: Path, root: Path) -> None:
    """Create ``path`` and missing parents below ``root``, making each new entry durable."""
    for folder in reversed(missing_dirs(path, root)):
        with suppress(FileExistsError):
            folder.mkdir()
        fsync_dir(folder.parent)


def missing_dirs(path: Path, root: Path) -> list[Path]:
    """The folders from ``path`` up to ``root`` that do not exist yet, deepest first.

    Raises StorageIOError on a symbolic link (or anything but a folder) below ``root``: a
    link planted inside the tree must not let a read, write or delete reach outside it.
    """
    missing: list[Path] = []
    current = path
    while current != root:
        try:
            mode = os.lstat(current).st_mode
        except FileNotFoundError:
            missing.append(current)
            current = current.parent
            continue
        if not stat.S_ISDIR(mode):
            what = special_kind(mode)
            if what is not None:
                raise refuse_special(current, what)
            raise StorageIOError(f"{current} is a file where a folder belongs; move it away")
        current = current.parent
    return missing


def check_folders(path: Path, root: Path) -> bool:
    """Whether every folder from ``root`` down to ``path`` exists (refusing links, as
    ``missing_dirs``): a read of a file below a missing folder finds nothing."""
    return not missing_dirs(path, root)


def present(path: str) -> bool:
    """Whether an entry (of any type, a link included: not followed) is at ``path``.

    On the hot read paths an absent file is the common case: access() answers it without
    raising, which costs less than an lstat that raises FileNotFoundError."""
    try:
        return os.access(path, os.F_OK, follow_symlinks=False)
    except NotImplementedError:  # no follow_symlinks for access() here (Windows)
        return os.path.lexists(path)


def regular_size(path: Path) -> int | None:
    """The size of the regular file at ``path``; None if nothing is there; StorageIOError
    for a link, FIFO, socket or device. A folder is left to the caller's open to report."""
    st = regular_stat(path)
    return None if st is None else st.st_size


def regular_stat(path: Path) -> os.stat_result | None:
    """``regular_size``'s ``lstat``, whole."""
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    what = special_kind(st.st_mode)
    if what is not None:
        raise refuse_special(path, what)
    return st


# What identifies one version of a file: inode, size and modification time.
Identity = tuple[int, int, int]


def identity(st: os.stat_result) -> Identity:
    return st.st_ino, st.st_size, st.st_mtime_ns


class LastWritten:
    """The identity and a hash of what this process last wrote to each of the files it
    wrote lately (``KEPT``), so that a writer can skip ``holds``' read of a file of the
    right size that it knows holds other bytes.

    Only ever a reason to write, never one to skip a write: a file whose identity is
    unchanged since this process wrote it holds what it wrote (a change in place in the
    same clock tick could keep it; then the write happens anyway, as without this), and
    equal hashes send the writer to ``holds`` to compare the bytes."""

    KEPT = 256
    # Larger files are not remembered: hashing costs about 0.3 ms per MB on every write,
    # for the rare rewrite of the same size it would spare a read.
    LONGEST = 64 * 1024

    def __init__(self) -> None:
        self._files: dict[str, tuple[Identity, int]] = {}

    def wrote(self, path: str, written: Identity, data: bytes) -> None:
        if len(data) > self.LONGEST:
            self._files.pop(path, None)
            return
        if len(self._files) >= self.KEPT:
            self._files.clear()
        self._files[path] = (written, hash(data))

    def holds_other(self, path: str, st: os.stat_result, data: bytes) -> bool:
        """Whether ``path``, found as ``st``, is known to hold bytes other than ``data``."""
        known = self._files.get(path)
        return known is not None and known[0] == identity(st) and known[1] != hash(data)


def open_checked(path: str | Path) -> int | None:
    """A read-only descriptor of ``path``, whose lstat showed a regular file; None if it is
    gone. The open never follows a link: one swapped in since the lstat is refused."""
    try:
        return os.open(path, _READ_FLAGS)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:  # became a link since the lstat
            raise refuse_special(path, "a symbolic link") from e
        raise


def open_regular(path: Path) -> tuple[int, int] | None:
    """``(descriptor, size)`` of the regular file ``path`` opened read-only; None if absent.

    Checked with lstat before the open (a device or FIFO is never opened) and with fstat
    after it (the entry could have been swapped in between). A folder raises
    IsADirectoryError, for the caller to report as corrupted data.
    """
    if regular_size(path) is None:
        return None
    fd = open_checked(path)
    if fd is None:
        return None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, "Is a directory", str(path))
        raise refuse_special(path, special_kind(st.st_mode) or "not a regular file")
    return fd, st.st_size


def read_bytes(path: Path) -> bytes | None:
    """The regular file's bytes, or None if it (or its folder) does not exist. Never waits
    on a lock; refuses a link, FIFO, socket or device (StorageIOError)."""
    opened = open_regular(path)
    if opened is None:
        return None
    fd, size = opened
    read = os.read if size < _LONG_IO else partial(_turns.blocking, os.read)
    try:
        chunks = []
        while chunk := read(fd, max(size + 1, 65536)):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _write_durably(fd: int, data: bytes) -> Identity:
    """Write all of ``data`` to ``fd`` and fsync it; the file's identity. A long write and
    the fsync wait for the device without the writer's turn (``_turns``)."""
    write = os.write if len(data) < _LONG_IO else partial(_turns.blocking, os.write)
    view = memoryview(data)
    while view:
        view = view[write(fd, view) :]
    _turns.blocking(os.fsync, fd)
    return identity(os.fstat(fd))


def atomic_write(path: Path, data: bytes, root: Path, *, old_kept: bool = False) -> Identity:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new version;
    the new version's identity.

    Temp file in the same folder, write, fsync, ``os.replace``, fsync of the folder. On
    any failure the temp file is removed and the old version stays. ``old_kept``: the old
    version has another link (a backup), so the replace frees no inode and is quick.
    """
    folder = path.parent
    if not _folders_in_place(str(folder), str(root)):  # the lstat walk on strings: the common case
        ensure_dir(folder, root)
    temp, fd = _create_temp(folder)
    try:
        try:
            written = _write_durably(fd, data)
        finally:
            os.close(fd)
        # Closed first: Windows cannot rename an open file. Without the turn unless the old
        # version is linked as a backup: freeing an inode discards on some mounts, synchronously.
        if old_kept:
            os.replace(temp, path)
        else:
            _turns.blocking(os.replace, temp, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(temp)
        raise
    fsync_dir(folder)
    return written


# Temp file names: the writer's pid (remove_stale_temp_files reads it), then a random
# part drawn once per process and a counter, so that a store costs no getrandom call; a
# name left by an earlier process with the same pid is skipped (O_EXCL).
_TEMP_COUNTER = itertools.count()
_TEMP_TAG = ["", -1]  # [random part, pid it was drawn in]: drawn again after a fork
_PID = [os.getpid()]  # getpid() is a system call each time: read once, again after a fork
_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_NOFOLLOW", 0)


def _create_temp(folder: Path) -> tuple[str, int]:
    """A new temp file in ``folder`` (never an existing entry): its path and a write descriptor."""
    pid = _PID[0]
    if _TEMP_TAG[1] != pid:
        _TEMP_TAG[:] = [secrets.token_hex(4), pid]
    while True:
        temp = f"{folder}{os.sep}{TEMP_PREFIX}{pid}-{_TEMP_TAG[0]}{next(_TEMP_COUNTER):x}"
        try:
            return temp, os.open(temp, _TEMP_FLAGS, 0o666)
        except FileExistsError:
            continue


def _forked() -> None:  # pragma: no cover - runs in a forked child
    _PID[0] = os.getpid()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


def holds(path: Path, data: bytes) -> bool:
    """Whether the regular file ``path`` holds exactly ``data`` (checked by the writer,
    which has refused a link or FIFO there with ``regular_size`` already): one open, one
    fstat and one read, where ``read_bytes`` would lstat again and read to the end twice."""
    try:
        fd = os.open(path, _READ_FLAGS)
    except (FileNotFoundError, NotADirectoryError):
        return False  # gone since: written anew
    except OSError as e:
        if e.errno == errno.ELOOP:  # became a link since the writer's lstat
            raise refuse_special(path, "a symbolic link") from e
        raise
    try:
        st = os.fstat(fd)
        # One read of one byte more than expected: a regular file returns all it holds
        # up to that count, so a longer file shows here without a second read.
        if not stat.S_ISREG(st.st_mode) or st.st_size != len(data):
            return False
        read = os.read if len(data) < _LONG_IO else partial(_turns.blocking, os.read)
        return read(fd, len(data) + 1) == data
    finally:
        os.close(fd)


def unlink(path: Path) -> bool:
    """Remove a file durably; False if it was not there."""
    try:
        _turns.blocking(os.unlink, path)  # frees the inode: may discard its blocks
    except (FileNotFoundError, NotADirectoryError):
        return False
    fsync_dir(path.parent)
    return True


# ---------------------------------------------------------------------- backups


@dataclass(frozen=True)
class BackupVersion:
    """One kept previous version of a file: ``number`` grows with each backup.

    ``taken_at`` is ISO 8601 UTC (``2026-11-21T09:30:00.000Z``, which
    ``datetime.fromisoformat`` reads); the file name spells it with ``-`` for ``:``,
    which some filesystems refuse.
    """

    number: int
    taken_at: str
    path: Path
    size: int


def _iso_from_name(stamp: str) -> str:
    """``2026-11-21T09-30-00.000Z`` (a backup file name's form) -> ISO 8601."""
    day, sep, clock = stamp.partition("T")
    return f"{day}{sep}{clock.replace('-', ':')}" if sep else stamp


def list_backups(root: Path, relative: Path) -> list[BackupVersion]:
    """Kept versions of ``root / relative``, oldest first (regular files only)."""
    versions = []
    for number, name, path in _scan_backups(root / BACKUP_DIR / relative):
        try:
            size = regular_size(path)
        except StorageIOError:
            continue  # a link or the like is no version (verify() names it)
        if size is not None:
            versions.append(BackupVersion(number, _iso_from_name(name[7 : -len(".json")]), path, size))
    return versions


def _scan_backups(folder: Path) -> list[tuple[int, str, Path]]:
    """(number, name, path) of the kept versions in ``folder``, oldest first; by name only."""
    kept = []
    for entry in scandir(folder):
        number, _, rest = entry.name.partition("-")
        if number.isdigit() and rest.endswith(".json"):
            kept.append((int(number), entry.name, Path(entry.path)))
    return sorted(kept)


class Kept(NamedTuple):
    """What keep_backup did: the version it kept (None: none), and the versions to
    remove once the new version of the file is durably in place (``prune_backups``)."""

    version: Path | None
    expired: tuple[Path, ...] = ()


def keep_backup(root: Path, path: Path, keep: int, stamp: str) -> Kept:
    """Keep the current version of ``path`` before it is replaced or deleted.

    A hard link costs no copy: ``os.replace`` only swaps the directory entry, so the old
    inode lives on under the backup name. Where links are not supported, copy. Names are
    read, never stat'ed: this runs before every replace, so each system call shows in the
    cost of a store.

    Nothing is removed here: the versions past ``keep`` are returned, for the caller to
    remove with ``prune_backups`` only after the new version is in place, so a failed or
    interrupted write never costs a kept version (each interrupted write leaves one extra
    at most; the next completed write of the file prunes them all).
    """
    if keep <= 0:
        return Kept(None)
    top, whole = str(root), str(path)
    # Strings, not pathlib: this runs in a writer's turn before every replace (see _turns).
    relative = whole[len(top) + 1 :] if whole.startswith(top + os.sep) else str(path.relative_to(root))
    folder_name = os.path.join(top, BACKUP_DIR, relative)
    if not _folders_in_place(folder_name, top):
        ensure_dir(Path(folder_name), root)  # creates what is missing; refuses a link anywhere on the way
    kept = _scan_backup_names(folder_name)
    target = Path(f"{folder_name}{os.sep}{(kept[-1][0] if kept else 0) + 1:06d}-{stamp}.json")
    expired = tuple(Path(old) for _number, old in kept[: max(0, len(kept) + 1 - keep)])
    try:
        os.link(path, target, follow_symlinks=False)
    except FileNotFoundError:
        return Kept(None, expired)  # nothing to keep
    except OSError as e:
        if e.errno in _FULL:
            raise
        data = read_bytes(path)
        if data is None:
            return Kept(None, expired)
        atomic_write(target, data, root)
    return Kept(target, expired)


def _folders_in_place(folder: str, top: str) -> bool:
    """Whether every level from ``folder`` up to ``top`` (excluded) is a folder: the lstat
    walk of ``missing_dirs``, on strings, since it runs before every backup (pathlib's
    parsing cost more than the system calls). False sends the caller to ``ensure_dir``,
    which creates what is missing and refuses a link or a file on the way."""
    current = folder
    while len(current) > len(top):
        try:
            if not stat.S_ISDIR(os.lstat(current).st_mode):
                return False
        except OSError:
            return False
        current = os.path.dirname(current)
    return current == top


def _scan_backup_names(folder: str) -> list[tuple[int, str]]:
    """(number, path) of the kept versions in ``folder``, oldest first: ``_scan_backups``
    without a Path per version (only the expired ones become Paths)."""
    kept = []
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                number, _, rest = entry.name.partition("-")
                if number.isdigit() and rest.endswith(".json"):
                    kept.append((int(number), entry.path))
    except (FileNotFoundError, NotADirectoryError):
        return []
    kept.sort()
    return kept


def prune_backups(kept: Kept) -> None:
    """Remove the versions keep_backup found past the limit (after the new write)."""
    for old in kept.expired:
        with suppress(FileNotFoundError):
            _turns.blocking(os.unlink, old)  # frees the inode: may discard its blocks


# ------------------------------------------------------------------- temp files


def temp_files(root: Path, folders: list[Path]) -> list[Path]:
    """Temp files in ``root``, in ``folders`` and one level below them."""
    found = [Path(e.path) for e in scandir(root) if e.name.startswith(TEMP_PREFIX)]
    for folder in folders:
        for entry in scandir(folder):
            if entry.name.startswith(TEMP_PREFIX):
                found.append(Path(entry.path))
            elif entry.is_dir(follow_symlinks=False):
                found.extend(Path(i.path) for i in scandir(Path(entry.path)) if i.name.startswith(TEMP_PREFIX))
    return found


def remove_stale_temp_files(root: Path, folders: list[Path]) -> int:
    """Remove temp files left by crashed processes (see ``temp_files``).

    A temp file names its writer's pid; one whose writer still runs is left alone, since
    that writer is about to rename it into place.
    """
    removed = 0
    for path in temp_files(root, folders):
        if not temp_owner_alive(path.name):
            with suppress(FileNotFoundError):
                os.unlink(path)
                removed += 1
    return removed


def temp_owner_alive(name: str, prefix: str = TEMP_PREFIX) -> bool:
    """Whether the process that created temp file (or ``.new-`` folder...) ``name`` is still running."""
    pid_text = name[len(prefix) :].partition("-")[0]
    if not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def scandir(folder: Path) -> list[os.DirEntry[str]]:
    """The entries of ``folder``; [] if it does not exist."""
    try:
        with os.scandir(folder) as entries:
            return list(entries)
    except (FileNotFoundError, NotADirectoryError):
        return []


# --------------------------------------------------------- whole folders


def unique_name(prefix: str) -> str:
    """``<prefix><pid>-<tag><counter>``: the temp files' scheme (the pid tells cleanup()
    whether the writer is alive), for the folders made and retired whole."""
    pid = _PID[0]
    if _TEMP_TAG[1] != pid:
        _TEMP_TAG[:] = [secrets.token_hex(4), pid]
    return f"{prefix}{pid}-{_TEMP_TAG[0]}{next(_TEMP_COUNTER):x}"


def make_folder_whole(folder: Path, name: str, data: bytes, root: Path) -> Identity | None:
    """Create ``folder`` holding the file ``name`` with ``data``, appearing whole: made as
    a hidden ``.new-`` folder next to it, the file written and fsynced, the folder fsynced,
    renamed into place, the parent fsynced (three fsyncs, as a folder made and then
    written into); the file's identity. None, with nothing left behind, when a non-empty
    ``folder`` is there by now (the caller writes into it); the caller holds the entity's
    lock and saw none.
    """
    parent = folder.parent
    ensure_dir(parent, root)
    while True:
        staging = parent / unique_name(NEW_PREFIX)
        try:
            os.mkdir(staging)
            break
        except FileExistsError:
            continue
    try:
        fd = os.open(staging / name, _TEMP_FLAGS, 0o666)
        try:
            written = _write_durably(fd, data)
        finally:
            os.close(fd)
        fsync_dir(staging)
        # A rename onto an empty folder replaces it (Linux): nothing is lost by that. Onto
        # one holding anything it fails, and the caller writes into that folder instead.
        os.rename(staging, folder)
    except OSError as e:
        discard_folder(staging)
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST) or (os.name == "nt" and e.errno == errno.EACCES):
            return None
        raise
    except BaseException:
        discard_folder(staging)
        raise
    fsync_dir(parent)
    return written


def retire_folder(folder: Path) -> None:
    """Remove ``folder`` whole: renamed away to a hidden ``.gone-`` name, the parent
    fsynced (from then on it is gone, whatever happens), then emptied and removed. A crash
    during the last step leaves the ``.gone-`` folder for ``cleanup()``."""
    gone = folder.parent / unique_name(GONE_PREFIX)
    os.rename(folder, gone)
    fsync_dir(folder.parent)
    discard_folder(gone)


def discard_folder(folder: Path) -> None:
    """Remove ``folder`` and the files in it (one level; links are removed, never
    followed); what cannot be removed stays for ``cleanup()``."""
    for entry in scandir(folder):
        with suppress(OSError):
            if entry.is_dir(follow_symlinks=False):
                discard_folder(Path(entry.path))
            else:
                os.unlink(entry.path)
    with suppress(OSError):
        os.rmdir(folder)
