"""Synchronous file primitives for FileStorage: durable atomic writes, backups, cleanup.

Everything here runs inside one worker thread per storage operation (STYLE.md: one
thread hop per whole operation, not one per system call).
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from ..errors import StorageError, StorageFullError, StorageIOError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no reuse of spares, readers take no lock
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "BACKUP_DIR",
    "TEMP_PREFIX",
    "BackupVersion",
    "Kept",
    "atomic_write",
    "ensure_dir",
    "fsync_dir",
    "keep_backup",
    "list_backups",
    "lock_for_reading",
    "missing_dirs",
    "os_error",
    "read_bytes",
    "remove_stale_temp_files",
    "scandir",
    "unlink",
]

TEMP_PREFIX = ".tmp-"
BACKUP_DIR = ".backups"
SPARE = "spare"  # spare-<number>: an expired version's inode, kept to be overwritten
_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def os_error(e: OSError, action: str, path: Path | str) -> StorageError:
    """Turn an OSError into the StorageError a caller can act on."""
    if e.errno in _FULL:
        return StorageFullError(
            f"no space left while {action} {path}: free disk space and retry; the previous version is intact"
        )
    return StorageIOError(f"{action} {path} failed: {e.strerror or e} (errno {e.errno})")


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in ``path`` durable (a no-op where directories can't be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # Windows cannot open directories; NTFS journals metadata itself
    try:
        os.fsync(fd)
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

    Raises StorageIOError on a symbolic link below ``root``: a link planted inside the
    tree must not let a write or a delete reach outside it.
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
        if stat.S_ISLNK(mode):
            raise StorageIOError(
                f"refusing to go through the symbolic link {current}: it could lead outside "
                f"{root}; replace it with a real folder"
            )
        if not stat.S_ISDIR(mode):
            raise StorageIOError(f"{current} is a file where a folder belongs; move it away")
        current = current.parent
    return missing


def read_bytes(path: Path) -> bytes | None:
    """The file's bytes, or None if it (or its folder) does not exist."""
    try:
        with open(path, "rb") as f:
            lock_for_reading(f.fileno())
            return f.read()
    except (FileNotFoundError, NotADirectoryError):
        return None


def atomic_write(path: Path, data: bytes, root: Path, reuse: Path | None = None) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new version.

    Temp file in the same folder, write, fsync, ``os.replace``, fsync of the folder. On
    any failure the temp file is removed and the old version stays. ``reuse`` names a
    spare (see keep_backup) whose inode becomes the temp file: overwriting allocated
    blocks costs about a quarter less than creating a file and later freeing another.
    """
    folder = path.parent
    ensure_dir(folder, root)
    temp = folder / f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(6)}"
    fd = _reuse(reuse, temp) if reuse is not None else -1
    reused = fd >= 0
    if not reused:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if reused:
                os.ftruncate(fd, len(data))
            os.fsync(fd)
            if reused:
                os.replace(temp, path)  # still locked: a waiting reader reads only a live version
        finally:
            os.close(fd)
        if not reused:
            os.replace(temp, path)  # closed first: Windows cannot rename an open file
    except BaseException:
        with suppress(OSError):
            os.unlink(temp)
        raise
    fsync_dir(folder)


def _reuse(spare: Path, temp: Path) -> int:
    """Move ``spare`` to ``temp`` and return it open for writing, or -1 to create afresh.

    A lock-free reader may still hold this inode open from when it was the live file
    (versions pass through the backups first, so only a reader stalled for several
    stores could). Readers take a shared lock (``lock_for_reading``); the exclusive lock
    here fails while one reads, and makes a late one wait for the complete new version.
    An inode with another link (a kept version a crash left linked to the live file) is
    never overwritten.
    """
    try:
        os.rename(spare, temp)
    except OSError:
        return -1  # gone, or on another filesystem
    try:
        fd = os.open(temp, os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:  # not a plain file we may write (put there by hand): drop it
        with suppress(OSError):
            os.unlink(temp)
        return -1
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.fstat(fd).st_nlink == 1:
            return fd
    except BlockingIOError:
        pass
    os.close(fd)
    os.unlink(temp)
    return -1


def lock_for_reading(fd: int) -> None:
    """Wait while a writer reuses the inode open as ``fd`` (see ``_reuse``); rarely waits."""
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_SH)


def unlink(path: Path) -> bool:
    """Remove a file durably; False if it was not there."""
    try:
        os.unlink(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    fsync_dir(path.parent)
    return True


@dataclass(frozen=True)
class BackupVersion:
    """One kept previous version of a file: ``number`` grows with each backup."""

    number: int
    taken_at: str
    path: Path
    size: int


def list_backups(root: Path, relative: Path) -> list[BackupVersion]:
    """Kept versions of ``root / relative``, oldest first."""
    return [
        BackupVersion(number, name[7 : -len(".json")], path, path.stat().st_size)
        for number, name, path in _scan_backups(root / BACKUP_DIR / relative)[0]
    ]


def _scan_backups(folder: Path) -> tuple[list[tuple[int, str, Path]], list[Path]]:
    """(number, name, path) of the kept versions in ``folder``, oldest first, and its
    spares; by name only."""
    kept, spares = [], []
    for entry in scandir(folder):
        number, _, rest = entry.name.partition("-")
        if number.isdigit() and rest.endswith(".json"):
            kept.append((int(number), entry.name, Path(entry.path)))
        elif number == SPARE and entry.is_file(follow_symlinks=False):
            spares.append(Path(entry.path))
    return sorted(kept), spares


class Kept(NamedTuple):
    """What keep_backup did: the version it kept, and a spare for the write to reuse."""

    version: Path | None
    spare: Path | None


def keep_backup(root: Path, path: Path, keep: int, stamp: str) -> Kept:
    """Keep the current version of ``path`` before it is replaced or deleted.

    A hard link costs no copy: ``os.replace`` only swaps the directory entry, so the old
    inode lives on under the backup name. Where links are not supported, copy. Names are
    read, never stat'ed, and the folder is created only for a file's first backup: this
    runs before every replace, so each system call shows in the cost of a store.

    The oldest version past ``keep`` is not freed but renamed ``spare-<number>``, and
    the spare left by an earlier call is returned for atomic_write to overwrite. Two
    steps, so that the rename is durable (the write's fsync commits it) before its
    inode is overwritten: a power cut mid-write can garble only a spare, never a version.
    """
    if keep <= 0:
        return Kept(None, None)
    folder = root / BACKUP_DIR / path.relative_to(root)
    kept, spares = _scan_backups(folder)
    if not kept and not spares:
        ensure_dir(folder, root)
    # Make room first, so that a crash at any instant leaves at most ``keep`` versions.
    expired = [old for _number, _name, old in kept[: max(0, len(kept) + 1 - keep)]]
    if expired and fcntl is not None:
        number = expired[0].name.partition("-")[0]
        os.rename(expired.pop(0), folder / f"{SPARE}-{number}")
    for old in expired + spares[1:]:
        with suppress(FileNotFoundError):
            os.unlink(old)
    spare = spares[0] if spares else None
    target = folder / f"{(kept[-1][0] if kept else 0) + 1:06d}-{stamp}.json"
    try:
        os.link(path, target)
    except FileNotFoundError:
        return Kept(None, spare)  # nothing to keep
    except OSError:
        data = read_bytes(path)
        if data is None:
            return Kept(None, spare)
        atomic_write(target, data, root)
    return Kept(target, spare)


def remove_stale_temp_files(folders: list[Path]) -> int:
    """Remove temp files left by crashed processes in ``folders`` and one level below.

    A temp file names its writer's pid; one whose writer still runs is left alone, since
    that writer is about to rename it into place.
    """
    removed = 0
    for folder in folders:
        for entry in scandir(folder):
            if entry.name.startswith(TEMP_PREFIX):
                removed += _remove_if_stale(Path(entry.path))
            elif entry.is_dir(follow_symlinks=False):
                for inner in scandir(Path(entry.path)):
                    if inner.name.startswith(TEMP_PREFIX):
                        removed += _remove_if_stale(Path(inner.path))
    return removed


def temp_owner_alive(name: str) -> bool:
    """Whether the process that created temp file ``name`` is still running."""
    pid_text = name[len(TEMP_PREFIX) :].partition("-")[0]
    if not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists, owned by someone else
    return True


def _remove_if_stale(path: Path) -> int:
    if temp_owner_alive(path.name):
        return 0
    with suppress(OSError):
        os.unlink(path)
        return 1
    return 0


def scandir(folder: Path) -> list[os.DirEntry[str]]:
    """The entries of ``folder``; [] if it does not exist."""
    try:
        with os.scandir(folder) as entries:
            return list(entries)
    except (FileNotFoundError, NotADirectoryError):
        return []
