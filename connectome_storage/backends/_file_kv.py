"""Key-value collections on the JSON file tree: one file per entry (docs/kv.md).

Layout::

    <base_dir>/kv/{namespace}/{key}.json
        {"created_at", "expires_at", "key", "tags", "updated_at", "value"}

Folder and file names are the namespace and key mapped by ``naming.encode_name``, like
every other id; times are ISO 8601 UTC with milliseconds and ``expires_at`` is null for an
entry that never expires. Writes go through FileStorage's own replace and remove (canonical
bytes, temp file + fsync + replace + folder fsync, a backup of the replaced or deleted
version) under a per-entry lock named after the entry's path, so a read-modify-write
(``set`` keeping ``created_at``, ``if_not_exists``, ``expire``) is one atomic step across
coroutines, threads and processes. Reads never lock.

Queries scan one namespace's folder in one worker thread. Names are decoded and filtered on
the key (prefix, glob, scan's ``after_key``) before any file is read; in key order with no
tag or time filter only the files of the page asked for are read, chosen with a bounded heap,
so ``scan`` holds one batch in memory however large the namespace is.
"""

from __future__ import annotations

import asyncio
import heapq
import os
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, TypeVar

from ..codec import decode, encode, format_time, parse_time
from ..errors import CorruptedDataError, StorageError
from ..interface import Problem
from ..kv import KVRecord, KVSelect, compile_pattern
from ..naming import decode_name, encode_name
from . import _fs
from ._layout import TOO_BIG, read_small, remove_empty_dir

if TYPE_CHECKING:
    from ..config import FileSettings
    from ._layout import CaseGuard
    from ._locks import EntityLocks
    from ._watch import OwnWrites

__all__ = ["KV_FOLDER", "FileKV", "kv_entity_of", "kv_id", "kv_relative", "parse_entry"]

KV_FOLDER = "kv"
_SUFFIX = ".json"
_FIELDS = frozenset({"key", "value", "tags", "created_at", "updated_at", "expires_at"})
# get_many of up to this many keys reads on the event loop (small files, page cache): a
# thread hop costs more than the reads.
_READ_IN_LOOP_KEYS = 4
T = TypeVar("T")


# ------------------------------------------------------------------ entry files


def entry_bytes(record: KVRecord, pretty: bool) -> bytes:
    """The canonical file content of one entry."""
    return encode(
        {
            "key": record.key,
            "value": record.value,
            "tags": record.tags,
            "created_at": format_time(record.created_ms),
            "updated_at": format_time(record.updated_ms),
            "expires_at": None if record.expires_ms is None else format_time(record.expires_ms),
        },
        pretty=pretty,
    )


def parse_entry(raw: bytes, path: Path | str, key: str) -> KVRecord:
    """The record an entry file holds; CorruptedDataError naming ``path`` if it is not one."""
    content = decode(raw, str(path))
    if not isinstance(content, dict):
        raise CorruptedDataError(str(path), "expected a JSON object (a key-value entry)", line=1, column=1)
    try:
        if content.keys() != _FIELDS:
            missing = ", ".join(sorted(_FIELDS - content.keys())) or "none"
            extra = ", ".join(sorted(content.keys() - _FIELDS)) or "none"
            raise ValueError(f"missing fields: {missing}; unknown fields: {extra}")
        if content["key"] != key:
            raise ValueError(f"key {content['key']!r} does not match the file name (key {key!r})")
        tags = content["tags"]
        if not isinstance(tags, dict) or not all(isinstance(v, str) for v in tags.values()):
            raise ValueError("tags must be an object of strings")
        expires = content["expires_at"]
        return KVRecord(
            key, content["value"], tags, parse_time(content["created_at"]), parse_time(content["updated_at"]),
            None if expires is None else parse_time(expires),
        )  # fmt: skip
    except (ValueError, TypeError) as e:
        raise CorruptedDataError(
            str(path), f"not a key-value entry ({e}); expected {', '.join(sorted(_FIELDS))}", line=None, column=None
        ) from e


def key_of(name: str) -> str | None:
    """The key an entry file name stands for, or None if the name is not one."""
    if not name.endswith(_SUFFIX) or name.startswith("."):
        return None
    return decode_name(name[: -len(_SUFFIX)])


def kv_entity_of(parts: tuple[str, ...]) -> tuple[str, str] | None:
    """(namespace, key) of a path below base_dir given as parts (``kv``, ns, file), else None."""
    if len(parts) != 3 or parts[0] != KV_FOLDER:
        return None
    namespace, key = decode_name(parts[1]), key_of(parts[2])
    return None if namespace is None or key is None else (namespace, key)


def kv_id(namespace: str, key: str) -> str:
    """One str naming an entry, where FileStorage's backup code takes (kind, id): ids
    never hold NUL, so the pair comes apart again unambiguously."""
    return f"{namespace}\x00{key}"


def kv_relative(entry_id: str) -> str:
    """The entry file's path below base_dir (also its lock name) for a ``kv_id``."""
    namespace, _, key = entry_id.partition("\x00")
    return f"{KV_FOLDER}/{encode_name(namespace)}/{encode_name(key)}{_SUFFIX}"


def _key_filter(select: KVSelect) -> Callable[[str], bool]:
    """The filters of ``select`` that look at the key only (prefix, glob, after_key)."""
    prefix, after = select.prefix, select.after_key
    regex = compile_pattern(select.pattern) if select.pattern not in (None, "*") else None

    def passes(key: str) -> bool:
        if prefix is not None and not key.startswith(prefix):
            return False
        if after is not None and key <= after:
            return False
        return regex is None or regex.fullmatch(key) is not None

    return passes


def _by_key_only(select: KVSelect) -> bool:
    """Whether ``select`` can be answered by reading only the files of the page it asks for."""
    return select.order_by == "key" and not select.tags and select.since_ms is None and select.until_ms is None


class FileKV:
    """The ``_kv_*`` hooks of FileStorage (listed first in its bases)."""

    # Every page of a scan lists the namespace folder once (decoding every name), so a
    # scan reads bigger pages here than elsewhere: 100,000 entries take 25 listings, and
    # memory stays bounded by one page.
    _kv_scan_batch: ClassVar[int] = 4096

    if TYPE_CHECKING:  # provided by FileStorage
        _root: Path
        _case: CaseGuard
        _locks: EntityLocks
        _own: OwnWrites
        settings: FileSettings

        def _replace_file(self, path: Path, data: bytes) -> None: ...

        def _remove_file(self, path: Path) -> bool: ...

    # ------------------------------------------------------------------ paths

    def _kv_dir(self, namespace: str) -> Path:
        return self._root / KV_FOLDER / encode_name(namespace)

    def _kv_path(self, namespace: str, key: str) -> Path:
        return self._root / KV_FOLDER / encode_name(namespace) / (encode_name(key) + _SUFFIX)

    @staticmethod
    def _kv_entity(namespace: str, key: str) -> str:
        """The lock name: the entry file's path below base_dir (as FileStorage._entity)."""
        return f"{KV_FOLDER}/{encode_name(namespace)}/{encode_name(key)}{_SUFFIX}"

    def _kv_readable(self, entry_id: str, path: Path) -> bool:
        """Whether ``path`` (a kept version, for restore_backup) holds the entry ``entry_id``."""
        try:
            raw = _fs.read_bytes(path)
            if raw is None:
                return False
            parse_entry(raw, path, entry_id.partition("\x00")[2])
        except (StorageError, OSError):
            return False
        return True

    def _kv_case_check(self, namespace: str, key: str) -> None:
        if self._case.active:  # only on filesystems that ignore case
            self._case.check(self._kv_dir(namespace), namespace)
            self._case.check(self._kv_path(namespace, key), key)

    def _kv_keys_in(self, namespace: str) -> Iterator[str]:
        """Keys of the entry files in a namespace folder, unsorted, streamed (flat memory)."""
        return (key for key, _path in self._kv_listing(namespace))

    def _kv_listing(self, namespace: str) -> Iterator[tuple[str, str]]:
        """(key, path) of the entry files in a namespace folder, unsorted, streamed."""
        folder = self._kv_dir(namespace)
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    key = key_of(entry.name)
                    if key is not None:
                        yield key, entry.path
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as e:
            raise _fs.os_error(e, "listing", folder) from e

    def _kv_namespace_dirs(self) -> list[tuple[str, Path]]:
        found = []
        for entry in _fs.scandir(self._root / KV_FOLDER):
            namespace = decode_name(entry.name)
            if namespace is not None and entry.is_dir(follow_symlinks=False):
                found.append((namespace, Path(entry.path)))
        return found

    # ---------------------------------------------------------------- reading

    def _kv_read_sync(self, namespace: str, key: str) -> KVRecord | None:
        """The stored record (expired or not), or None; CorruptedDataError if it is not one."""
        self._kv_case_check(namespace, key)
        return self._kv_read_path(self._kv_path(namespace, key), key)

    @staticmethod
    def _kv_read_path(path: Path, key: str) -> KVRecord | None:
        try:
            raw = _fs.read_bytes(path)
        except IsADirectoryError as e:
            raise CorruptedDataError(str(path), "a folder stands where a file belongs") from e
        except OSError as e:
            raise _fs.os_error(e, "reading", path) from e
        return None if raw is None else parse_entry(raw, path, key)

    def _kv_read_in_loop(self, namespace: str, key: str) -> KVRecord | object | None:
        """Like ``_kv_read_sync`` for a small file, on the event loop; TOO_BIG otherwise."""
        path = self._kv_path(namespace, key)
        try:
            self._kv_case_check(namespace, key)
            raw = read_small(path)
        except OSError as e:
            raise _fs.os_error(e, "reading", path) from e
        if raw is TOO_BIG:
            return TOO_BIG
        return None if raw is None else parse_entry(raw, path, key)  # type: ignore[arg-type]

    def _kv_try_read(self, namespace: str, key: str, path: str | None = None) -> KVRecord | None:
        """For scans: a record, or None when it vanished since the listing. A damaged entry
        raises CorruptedDataError naming it: a query never skips stored data silently.
        ``path``: the file as a listing named it (saves mapping the key to its name again)."""
        if path is None:
            return self._kv_read_sync(namespace, key)
        return self._kv_read_path(Path(path), key)

    async def _kv_get(self, namespace: str, keys: list[str]) -> dict[str, KVRecord]:
        found: dict[str, KVRecord] = {}
        rest = keys
        if len(keys) <= _READ_IN_LOOP_KEYS:
            rest = []
            for key in keys:
                record = self._kv_read_in_loop(namespace, key)
                if record is TOO_BIG:
                    rest.append(key)
                elif isinstance(record, KVRecord):
                    found[key] = record
        if rest:
            found.update(await asyncio.to_thread(self._kv_get_sync, namespace, rest))
        return found

    def _kv_get_sync(self, namespace: str, keys: list[str]) -> dict[str, KVRecord]:
        found = {}
        for key in keys:
            record = self._kv_read_sync(namespace, key)
            if record is not None:
                found[key] = record
        return found

    # ---------------------------------------------------------------- writing

    def _kv_each_locked(self, entities: list[str], function: Callable[[int], T]) -> list[T]:
        """``function(i)`` for each entity in turn, each under that entity's lock, in this
        (worker) thread: one thread hop for a whole batch. A fresh OS lock per entity
        excludes every other holder, this process's coroutines included."""
        results = []
        for index, entity in enumerate(entities):
            deadline = time.monotonic() + self.settings.connection_timeout
            results.append(self._locks._run_os_locked(entity, deadline, function, (index,)))
        return results

    def _kv_write_file(self, path: Path, data: bytes) -> None:
        """Replace an entry file (backup, atomic write), re-creating its namespace folder if
        a delete of the namespace's last entry removed it between the two steps."""
        for attempt in range(3):
            try:
                self._replace_file(path, data)
                return
            except StorageError:
                if attempt == 2 or path.parent.is_dir():
                    raise

    def _kv_put_sync(self, namespace: str, record: KVRecord, data: bytes, now_ms: int, if_not_exists: bool) -> bool:
        """Check and write one entry; runs under the entry's lock."""
        path = self._kv_path(namespace, record.key)
        try:
            old = self._kv_read_sync(namespace, record.key)
        except CorruptedDataError:
            old = None  # storing again repairs a damaged entry (its version is kept as a backup)
        if old is not None and not old.expired(now_ms):
            if if_not_exists:
                return False
            if old.created_ms != record.created_ms:
                record = KVRecord(
                    record.key, record.value, record.tags, old.created_ms, record.updated_ms, record.expires_ms
                )
                data = entry_bytes(record, self.settings.pretty_print_json)
        self._kv_write_file(path, data)
        return True

    async def _kv_put(self, namespace: str, records: list[KVRecord], now_ms: int, *, if_not_exists: bool) -> bool:
        # Everything is encoded before anything is written, so a value that cannot be
        # stored stops the batch before its first entry.
        pretty = self.settings.pretty_print_json
        encoded = [entry_bytes(record, pretty) for record in records]
        if len(records) == 1:
            record = records[0]
            entity = self._kv_entity(namespace, record.key)
            put = self._kv_put_sync
            return bool(await self._locks.run(entity, put, namespace, record, encoded[0], now_ms, if_not_exists))
        # A batch is written entry by entry, each atomically; a crash part-way can leave the
        # first entries written and the rest not.
        entities = [self._kv_entity(namespace, record.key) for record in records]
        await asyncio.to_thread(
            self._kv_each_locked, entities,
            lambda i: self._kv_put_sync(namespace, records[i], encoded[i], now_ms, False),
        )  # fmt: skip
        return True

    def _kv_remove_sync(self, namespace: str, key: str, now_ms: int) -> int:
        """Remove one entry with a backup; 1 if it was live (or unreadable); under its lock."""
        path = self._kv_path(namespace, key)
        try:
            old = self._kv_read_sync(namespace, key)
            live = old is not None and not old.expired(now_ms)
        except CorruptedDataError:
            live = True  # it was there, in a form nobody can read: deleting it is what was asked
        removed = self._remove_file(path)
        if removed:
            remove_empty_dir(path.parent)  # the namespace's last entry: keep the tree clean
        return int(removed and live)

    async def _kv_delete(self, namespace: str, keys: list[str], now_ms: int) -> int:
        if len(keys) == 1:
            entity = self._kv_entity(namespace, keys[0])
            return int(await self._locks.run(entity, self._kv_remove_sync, namespace, keys[0], now_ms))
        entities = [self._kv_entity(namespace, key) for key in keys]
        removed = await asyncio.to_thread(
            self._kv_each_locked, entities, lambda i: self._kv_remove_sync(namespace, keys[i], now_ms)
        )
        return sum(removed)

    def _kv_set_expiry_sync(self, namespace: str, key: str, expires_ms: int | None, now_ms: int) -> bool:
        old = self._kv_read_sync(namespace, key)
        if old is None or old.expired(now_ms):
            return False
        record = KVRecord(old.key, old.value, old.tags, old.created_ms, old.updated_ms, expires_ms)
        self._kv_write_file(self._kv_path(namespace, key), entry_bytes(record, self.settings.pretty_print_json))
        return True

    async def _kv_set_expiry(self, namespace: str, key: str, expires_ms: int | None, now_ms: int) -> bool:
        entity = self._kv_entity(namespace, key)
        return bool(await self._locks.run(entity, self._kv_set_expiry_sync, namespace, key, expires_ms, now_ms))

    async def _kv_clear(self, namespace: str, now_ms: int) -> int:
        return int(await asyncio.to_thread(self._kv_clear_sync, namespace, now_ms))

    def _kv_clear_sync(self, namespace: str, now_ms: int) -> int:
        keys = sorted(self._kv_keys_in(namespace))
        entities = [self._kv_entity(namespace, key) for key in keys]
        return sum(self._kv_each_locked(entities, lambda i: self._kv_remove_sync(namespace, keys[i], now_ms)))

    async def _kv_remove_expired(self, namespace: str | None, now_ms: int) -> int:
        return int(await asyncio.to_thread(self._kv_remove_expired_sync, namespace, now_ms))

    def _kv_remove_expired_sync(self, namespace: str | None, now_ms: int) -> int:
        if namespace is not None:
            return self._kv_sweep(namespace, now_ms)
        return sum(self._kv_sweep(name, now_ms) for name, _folder in self._kv_namespace_dirs())

    def _kv_sweep(self, namespace: str, now_ms: int) -> int:
        """Remove one namespace's expired entries; how many."""
        expired = [key for key in self._kv_keys_in(namespace) if self._kv_expired(namespace, key, now_ms)]
        if not expired:
            return 0
        entities = [self._kv_entity(namespace, key) for key in expired]
        removed = sum(self._kv_each_locked(entities, lambda i: self._kv_drop_if_expired(namespace, expired[i], now_ms)))
        folder = self._kv_dir(namespace)
        # One folder fsync for the whole sweep: losing these unlinks to a crash would
        # only bring back entries that are expired anyway.
        _fs.fsync_dir(folder)
        remove_empty_dir(folder)
        return removed

    def _kv_expired(self, namespace: str, key: str, now_ms: int) -> bool:
        try:
            record = self._kv_try_read(namespace, key)
        except CorruptedDataError:
            return False  # not known to be expired: left for a person (verify names it)
        return record is not None and record.expired(now_ms)

    def _kv_drop_if_expired(self, namespace: str, key: str, now_ms: int) -> int:
        # Checked again under the lock: another process may have refreshed the entry.
        if not self._kv_expired(namespace, key, now_ms):
            return 0
        path = self._kv_path(namespace, key)
        try:
            os.unlink(path)  # an expired entry is gone already: no backup, like the cache
        except FileNotFoundError:
            return 0
        except OSError as e:
            raise _fs.os_error(e, "deleting", path) from e
        self._own.removed(path)
        return 1

    # ---------------------------------------------------------------- queries

    async def _kv_select(self, namespace: str, select: KVSelect, now_ms: int) -> list[KVRecord]:
        return await asyncio.to_thread(self._kv_select_sync, namespace, select, now_ms)

    def _kv_select_sync(self, namespace: str, select: KVSelect, now_ms: int) -> list[KVRecord]:
        if select.limit == 0:
            return []
        want = None if select.limit is None else select.offset + select.limit
        if _by_key_only(select):
            hits = self._kv_page_by_key(namespace, select, now_ms, want)
        else:
            matching = (r for r in self._kv_records(namespace, select) if select.matches(r, now_ms))
            if want is None:
                hits = sorted(matching, key=select.sort_key, reverse=select.descending)
            else:  # a bounded heap: memory follows the page, not the namespace
                pick = heapq.nlargest if select.descending else heapq.nsmallest
                hits = pick(want, matching, key=select.sort_key)
        return hits[select.offset :]

    def _kv_records(self, namespace: str, select: KVSelect) -> Iterator[KVRecord]:
        """Readable records whose key passes the key filters (expired ones included)."""
        passes = _key_filter(select)
        for key, path in self._kv_listing(namespace):
            if passes(key):
                record = self._kv_try_read(namespace, key, path)
                if record is not None:
                    yield record

    def _kv_page_by_key(self, namespace: str, select: KVSelect, now_ms: int, want: int | None) -> list[KVRecord]:
        """The first ``want`` live records in key order, reading only their files.

        Names are listed and filtered on the key first; only the files of the next ``want``
        candidates in key order are read. Entries found expired (or gone) on reading are made
        up for by listing again past the last candidate.
        """
        if want is None:
            passes = _key_filter(select)
            listing = sorted(((k, p) for k, p in self._kv_listing(namespace) if passes(k)), reverse=select.descending)
            records = (self._kv_try_read(namespace, k, p) for k, p in listing)
            return [r for r in records if r is not None and not r.expired(now_ms)]
        found: list[KVRecord] = []
        cursor = select.after_key if not select.descending else None
        while True:
            candidates, complete = self._kv_window(namespace, select, cursor, want - len(found))
            for key, path in candidates:
                record = self._kv_try_read(namespace, key, path)
                if record is not None and not record.expired(now_ms):
                    found.append(record)
                    if len(found) == want:
                        return found
            if complete or not candidates:
                return found  # the namespace holds no more
            cursor = candidates[-1][0]

    def _kv_window(
        self, namespace: str, select: KVSelect, cursor: str | None, size: int
    ) -> tuple[list[tuple[str, str]], bool]:
        """The next ``size`` (key, path) in key order past ``cursor``, and whether they are all
        there are. One listing of the folder; a bounded heap keeps memory to ``size`` names."""
        descending = select.descending
        passes = _key_filter(select)
        listing = (
            item for item in self._kv_listing(namespace) if passes(item[0]) and _beyond(item[0], cursor, descending)
        )
        items = (heapq.nlargest if descending else heapq.nsmallest)(size, listing)
        return items, len(items) < size

    async def _kv_count(self, namespace: str, select: KVSelect, now_ms: int) -> int:
        return int(await asyncio.to_thread(self._kv_count_sync, namespace, select, now_ms))

    def _kv_count_sync(self, namespace: str, select: KVSelect, now_ms: int) -> int:
        return sum(1 for record in self._kv_records(namespace, select) if select.matches(record, now_ms))

    async def _kv_namespaces(self, now_ms: int) -> list[str]:
        return await asyncio.to_thread(self._kv_namespaces_sync, now_ms)

    def _kv_namespaces_sync(self, now_ms: int) -> list[str]:
        found = []
        for namespace, _folder in self._kv_namespace_dirs():
            for key in self._kv_keys_in(namespace):
                try:
                    record = self._kv_try_read(namespace, key)
                except CorruptedDataError:
                    record = None
                    found.append(namespace)  # listed, so a migrate reaches the damage and says so
                    break
                if record is not None and not record.expired(now_ms):
                    found.append(namespace)
                    break
        return found

    # ---------------------------------------------------------- stats, verify

    def _kv_census_sync(self, now_ms: int) -> tuple[int, int, int, int]:
        """(namespaces with a live entry, live, expired, unreadable) in one pass."""
        namespaces = live = expired = unreadable = 0
        for namespace, _folder in self._kv_namespace_dirs():
            live_here = 0
            for key in self._kv_keys_in(namespace):
                try:
                    record = self._kv_read_sync(namespace, key)
                except StorageError:
                    unreadable += 1
                    continue
                if record is None:
                    continue
                if record.expired(now_ms):
                    expired += 1
                else:
                    live_here += 1
            live += live_here
            namespaces += live_here > 0
        return namespaces, live, expired, unreadable

    async def _kv_stats(self, now_ms: int) -> tuple[int, int, int, int]:
        return await asyncio.to_thread(self._kv_census_sync, now_ms)

    async def _kv_verify(self, skip: set[str]) -> list[Problem]:
        """Every kv entry that does not parse, and every stray entry below ``kv/``;
        ``skip``: locations already reported (links and the like, found by a whole-tree walk)."""
        return [p for p in await asyncio.to_thread(self._kv_verify_sync) if p.location not in skip]

    def _kv_verify_sync(self) -> list[Problem]:
        problems: list[Problem] = []

        def stray(path: str, why: str) -> None:
            problems.append(Problem(path, f"stray entry {path}: {why}"))

        for top in _fs.scandir(self._root / KV_FOLDER):
            if _temp(top.name, stray, top.path):
                continue
            namespace = decode_name(top.name)
            if namespace is None:
                stray(top.path, "the name is not an encoded namespace")
                continue
            what = _special(top)
            if what is not None or not top.is_dir(follow_symlinks=False):
                stray(top.path, f"it is {what}" if what else "a namespace folder was expected")
                continue
            for entry in _fs.scandir(Path(top.path)):
                if _temp(entry.name, stray, entry.path):
                    continue
                key = key_of(entry.name)
                what = _special(entry)
                if key is None:
                    stray(entry.path, "the name is not an encoded key followed by .json")
                elif what is not None:
                    stray(entry.path, f"it is {what}")
                elif entry.is_dir(follow_symlinks=False):
                    stray(entry.path, "a file was expected")
                else:
                    try:
                        self._kv_read_sync(namespace, key)
                    except StorageError as e:
                        problems.append(Problem(getattr(e, "path", None) or entry.path, str(e)))
        return problems


def _beyond(key: str, cursor: str | None, descending: bool) -> bool:
    return cursor is None or (key < cursor if descending else key > cursor)


def _special(entry: os.DirEntry[str]) -> str | None:
    """What a link, FIFO, socket or device is, for a message; None for files and folders."""
    try:
        mode = entry.stat(follow_symlinks=False).st_mode
    except OSError:
        return None
    if stat.S_ISDIR(mode) or stat.S_ISREG(mode):
        return None
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    return "a FIFO" if stat.S_ISFIFO(mode) else "a socket or device"


def _temp(name: str, stray: Callable[[str, str], None], path: str) -> bool:
    """Whether ``name`` is a temp file (reported only when its writer is gone)."""
    if not name.startswith(_fs.TEMP_PREFIX):
        return False
    if not _fs.temp_owner_alive(name):
        stray(path, "temp file left by a crashed writer (initialize() removes it)")
    return True
