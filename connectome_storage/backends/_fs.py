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

from ..errors import StorageError, StorageFullError, StorageIOError

__all__ = [
    "BACKUP_DIR",
    "TEMP_PREFIX",
    "BackupVersion",
    "atomic_write",
    "ensure_dir",
    "fsync_dir",
    "keep_backup",
    "list_backups",
    "missing_dirs",
    "os_error",
    "read_bytes",
    "remove_stale_temp_files",
    "scandir",
    "unlink",
]

TEMP_PREFIX = ".tmp-"
BACKUP_DIR = ".backups"
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
            return f.read()
    except (FileNotFoundError, NotADirectoryError):
        return None


def atomic_write(path: Path, data: bytes, root: Path) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new version.

    Temp file in the same folder, write, fsync, ``os.replace``, fsync of the folder. On
    any failure the temp file is removed and the old version stays.
    """
    folder = path.parent
    ensure_dir(folder, root)
    temp = folder / f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(6)}"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(temp)
        raise
    fsync_dir(folder)


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
        for number, name, path in _kept(root / BACKUP_DIR / relative)
    ]


def _kept(folder: Path) -> list[tuple[int, str, Path]]:
    """(number, name, path) of the kept versions in ``folder``, oldest first, by name only."""
    kept = []
    for entry in scandir(folder):
        number, _, rest = entry.name.partition("-")
        if number.isdigit() and rest.endswith(".json"):
            kept.append((int(number), entry.name, Path(entry.path)))
    return sorted(kept)


def keep_backup(root: Path, path: Path, keep: int, stamp: str) -> Path | None:
    """Keep the current version of ``path`` before it is replaced or deleted; return it.

    A hard link costs no copy: ``os.replace`` only swaps the directory entry, so the old
    inode lives on under the backup name. Where links are not supported, copy. Names are
    read, never stat'ed, and the folder is created only for a file's first backup: this
    runs before every replace, so each system call shows in the cost of a store.
    """
    if keep <= 0:
        return None
    folder = root / BACKUP_DIR / path.relative_to(root)
    kept = _kept(folder)
    if not kept:
        ensure_dir(folder, root)
    target = folder / f"{(kept[-1][0] if kept else 0) + 1:06d}-{stamp}.json"
    try:
        os.link(path, target)
    except FileNotFoundError:
        return None  # nothing to keep
    except OSError:
        data = read_bytes(path)
        if data is None:
            return None
        atomic_write(target, data, root)
    for _number, _name, old in kept[: max(0, len(kept) + 1 - keep)]:
        with suppress(FileNotFoundError):
            os.unlink(old)
    return target


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
