"""What the file tree looks like: its folders and file names, the shape each file must
have, which entries are strays, and small reads that stay on the event loop."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..codec import parse_time
from ..errors import CorruptedDataError, InvalidKeyError
from ..interface import CacheEntry, Kind, Problem
from ..naming import decode_name
from . import _fs

__all__ = [
    "CHAINS_FILE",
    "CONVERSATION_FILES",
    "FLAT_FOLDERS",
    "FOLDERS",
    "LOG_FILES",
    "MESSAGES_FOLDER",
    "META_FILE",
    "PART_FILES",
    "READ_STATE_FILE",
    "TOO_BIG",
    "CaseGuard",
    "cache_entry",
    "check_shape",
    "find_special_entries",
    "find_strays",
    "read_small",
    "remove_empty_dir",
]

FOLDERS = ("conversations", "cache", "agents", "system", "messages", "kv")
MESSAGES_FOLDER = "messages"
# Folders of one ``{id}.json`` file per entity (conversations/ and agents/ hold a folder each).
FLAT_FOLDERS = ("cache", "system", MESSAGES_FOLDER)
PART_FILES = {
    Kind.CONVERSATION: "current.json",
    Kind.RAW_MESSAGES: "raw_messages.json",
    Kind.CHUNKS: "chunks.json",
    Kind.MEMORIES: "memories.json",
    # The conversation store's metadata, last: removing a conversation whole removes it
    # after the other parts, so a crash half-way leaves an expired conversation expired.
    Kind.METADATA: "metadata.json",
}
META_FILE = PART_FILES[Kind.METADATA]
CONVERSATION_FILES = frozenset(PART_FILES.values())
CHAINS_FILE = "reasoning_chains.json"
READ_STATE_FILE = "read_messages.json"  # an agent's read message ids (the message store)
AGENT_FILES = frozenset({CHAINS_FILE, READ_STATE_FILE})
LOG_FILES = frozenset({PART_FILES[Kind.RAW_MESSAGES], CHAINS_FILE})
# Larger files are read and parsed in a worker thread so the event loop never stalls.
_READ_IN_LOOP_LIMIT = 256 * 1024


def find_special_entries(root: Path) -> list[Problem]:
    """Every symbolic link, FIFO, socket or device anywhere below ``root``, data folders
    and housekeeping alike (nothing is followed or opened)."""
    found = []
    folders = [root]
    while folders:
        for entry in _fs.scandir(folders.pop()):
            if entry.is_dir(follow_symlinks=False):
                folders.append(Path(entry.path))
            elif not entry.is_file(follow_symlinks=False):
                try:
                    what = _fs.special_kind(os.lstat(entry.path).st_mode)
                except OSError:
                    continue  # gone since the listing
                if what is not None:
                    found.append(Problem(entry.path, str(_fs.refuse_special(entry.path, what))))
    return sorted(found, key=lambda p: p.location)


def find_strays(root: Path, skip: set[str] | frozenset[str] = frozenset()) -> list[Problem]:
    """Entries inside the four folders that the layout does not account for, and temp
    files left by writers that are gone (``cleanup()`` removes those). ``skip``: paths
    already reported (links and the like)."""
    strays = []

    def stray(path: str, why: str) -> None:
        if path not in skip:
            strays.append(Problem(path, f"stray entry {path}: {why}"))

    def temp(entry: os.DirEntry[str]) -> bool:
        if not entry.name.startswith(_fs.TEMP_PREFIX):
            return False
        if not _fs.temp_owner_alive(entry.name):
            stray(entry.path, "temp file left by a writer that is gone; cleanup() removes it")
        return True

    def leftover(entry: os.DirEntry[str]) -> bool:
        """A conversation folder being made or removed whole (``.new-``/``.gone-``)."""
        if not entry.name.startswith((_fs.NEW_PREFIX, _fs.GONE_PREFIX)) or not entry.is_dir(follow_symlinks=False):
            return False
        if not _fs.temp_owner_alive(entry.name, entry.name[: entry.name.index("-") + 1]):
            what = "being made" if entry.name.startswith(_fs.NEW_PREFIX) else "being removed"
            stray(entry.path, f"temp files of an interrupted write (a conversation folder {what}), "
                              "left by a writer that is gone; cleanup() removes it")  # fmt: skip
        return True

    for entry in _fs.scandir(root):
        temp(entry)
    for folder in FOLDERS:
        if folder == "kv":
            continue  # checked by FileKV._kv_verify
        for entry in _fs.scandir(root / folder):
            if temp(entry) or (folder == "conversations" and leftover(entry)):
                continue
            nested = folder in ("conversations", "agents")
            name = entry.name if nested else entry.name.removesuffix(".json")
            if decode_name(name) is None or (not nested and not entry.name.endswith(".json")):
                stray(entry.path, "the name is not an encoded id")
            elif nested != entry.is_dir(follow_symlinks=False):
                stray(entry.path, "a folder was expected" if nested else "a file was expected")
            elif nested:
                allowed = CONVERSATION_FILES if folder == "conversations" else AGENT_FILES
                inside = _fs.scandir(Path(entry.path))
                for inner in inside:
                    if not temp(inner) and inner.name not in allowed:
                        stray(inner.path, f"only {', '.join(sorted(allowed))} belong here")
                if folder == "conversations" and not any(inner.name in allowed for inner in inside):
                    stray(entry.path, "a conversation folder without a part (it lists as an empty "
                                      "conversation); remove it, or what is in it")  # fmt: skip
    return strays


class CaseGuard:
    """Refuses ids that would alias each other on a filesystem that ignores case.

    On macOS and Windows, ``State`` and ``state`` would silently share one file. When the
    name an id maps to already exists there, the folder listing tells whether it exists
    under exactly that spelling; if not, the id is refused with InvalidKeyError rather
    than allowed to read or overwrite the other one. Encoded names are ASCII, so their
    case is plain ASCII case. On a case-sensitive filesystem (detected at initialize) the
    guard costs nothing; on one that ignores case it lists a folder whenever an existing
    entity is touched, which is why large stores there are better kept in SQLite.
    """

    def __init__(self) -> None:
        self.active = False

    def detect(self, marker: Path) -> None:
        self.active = marker.with_name(marker.name.swapcase()).exists()

    def check(self, entity: Path, identifier: str) -> None:
        if not self.active or not os.path.lexists(entity):
            return  # nothing there under any spelling: no alias possible
        names = os.listdir(entity.parent)
        if entity.name in names:
            return
        other = next((n for n in names if n.lower() == entity.name.lower()), entity.name)
        raise InvalidKeyError(
            f"id {identifier!r} differs only in case from the stored id "
            f"{decode_name(other.removesuffix('.json')) or other!r}, and the filesystem under "
            f"{entity.parent} ignores case, so both would share one file; use ids that differ "
            "in more than case"
        )


TOO_BIG = object()


def read_small(path: Path) -> bytes | object | None:
    """The file's bytes if small, None if absent, ``TOO_BIG`` if it should go to a thread.

    Takes no lock and never blocks: a link, FIFO, socket or device is refused unopened
    (``_fs.open_regular``)."""
    try:
        opened = _fs.open_regular(path)
    except IsADirectoryError:
        return TOO_BIG  # the thread path reports it as corrupted
    if opened is None:
        return None
    fd, size = opened
    try:
        if size > _READ_IN_LOOP_LIMIT:
            return TOO_BIG
        chunks = []
        while chunk := os.read(fd, max(size + 1, 4096)):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def remove_empty_dir(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        return  # not empty (another part, or a writer's temp file): leave it
    _fs.fsync_dir(folder.parent)


def _shape_error(path: Path, problem: str, top_level: bool = True) -> CorruptedDataError:
    line, column = (1, 1) if top_level else (None, None)
    return CorruptedDataError(str(path), problem, line=line, column=column)


def check_shape(kind: Kind, value: Any, path: Path) -> Any:
    """Refuse a parsed file whose shape does not fit its kind (an object where a list belongs)."""
    if kind is Kind.SYSTEM:
        return value
    if kind is Kind.READ_STATE:
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise _shape_error(path, "expected a JSON array of message id strings")
        return value
    if kind in (Kind.CONVERSATION, Kind.CACHE, Kind.METADATA, Kind.MESSAGE):
        if not isinstance(value, dict):
            raise _shape_error(path, f"expected a JSON object, found {_json_type(value)}")
        return value
    if not isinstance(value, list):
        raise _shape_error(path, f"expected a JSON array, found {_json_type(value)}")
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise _shape_error(path, f"item {index} is {_json_type(item)}, expected an object", False)
    if kind is Kind.MEMORIES:
        seen = set()
        for index, item in enumerate(value):
            memory_id = item.get("memory_id")
            if not isinstance(memory_id, str) or memory_id in seen:
                problem = (
                    "has no string memory_id" if not isinstance(memory_id, str) else f"repeats memory_id {memory_id!r}"
                )
                raise _shape_error(path, f"memory {index} {problem}", False)
            seen.add(memory_id)
    return value


def cache_entry(envelope: dict[str, Any], path: Path, key: str) -> CacheEntry:
    try:
        if envelope["cache_key"] != key:
            raise ValueError(f"cache_key {envelope['cache_key']!r} does not match the file name")
        created = parse_time(envelope["created_at"])
        expires = None if envelope["expires_at"] is None else parse_time(envelope["expires_at"])
        return CacheEntry(key, envelope["data"], created, expires)
    except (KeyError, ValueError, TypeError) as e:
        raise _shape_error(
            path, f"not a cache entry ({e!s}); expected cache_key, created_at, expires_at, data", False
        ) from e


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")
