"""FileStorage: the default backend, a JSON file tree a person can read and ``git diff``.

Layout (docs/file-format.md)::

    <base_dir>/conversations/{id}/current.json | raw_messages.json | chunks.json | memories.json
                                  metadata.json   the conversation store's metadata (TTL, count)
    <base_dir>/cache/{key}.json
    <base_dir>/agents/{id}/reasoning_chains.json
    <base_dir>/system/{key}.json
    <base_dir>/messages/{message_id}.json   the message store (_file_messages.py)
    <base_dir>/agents/{id}/read_messages.json
    <base_dir>/.connectome-storage.json   format marker
    <base_dir>/.gitignore                  written when absent: housekeeping is not data
    <base_dir>/.locks/  .backups/  .journal/   housekeeping

Reads of documents happen on the event loop when the file is small (a page-cache read is
far cheaper than a thread hop) and never take or wait on a lock; every write runs in one
worker thread under the entity's lock, where it reads the old version, keeps a backup and
replaces the file atomically. Nothing but regular files and folders is ever opened or
followed: a link, FIFO, socket or device in the tree is refused with StorageIOError.

A conversation whose ``metadata.json`` has expired is absent: each read of a part checks
the metadata file next to it in the same step (one failed ``access()`` when there is none,
and none at all for a folder this process knows holds none: ``_file_scan.MetaAbsence``),
and each write of a part, under the conversation's one lock, first removes an expired
conversation whole, then keeps ``message_count`` in step with the raw history.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import shutil
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from contextlib import aclosing, suppress
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

from ..codec import decode, encode, format_time
from ..config import FileSettings
from ..conversations import MetaRecord
from ..errors import (
    CorruptedDataError,
    InvalidArgumentError,
    LockTimeoutError,
    StorageError,
    StorageIOError,
    UnsupportedFormatError,
)
from ..interface import (
    CONVERSATION_PARTS,
    DEFAULT_DEBOUNCE_MS,
    CacheEntry,
    ChangeEvent,
    Kind,
    Problem,
    StorageInterface,
)
from ..naming import decode_name, encode_name
from . import _file_parts, _folders, _fs, _housekeeping
from ._applog import AppendLog
from ._file_kv import FileKV, kv_entity_of, kv_id, kv_relative
from ._file_messages import FileMessages
from ._file_scan import (
    READ_IN_LOOP_LIMIT,
    MetaAbsence,
    conversation_folders,
    entity_folder,
    parse_part,
    read_small_at,
    scan_conversations,
)
from ._file_tx import TREE_LOCK, FileTransactions
from ._layout import (
    CHAINS_FILE,
    CONVERSATION_FILES,
    FLAT_FOLDERS,
    FOLDERS,
    LOG_FILES,
    META_FILE,
    PART_FILES,
    READ_STATE_FILE,
    TOO_BIG,
    CaseGuard,
    cache_entry,
    check_shape,
    read_small,
    remove_empty_dir,
)
from ._locks import EntityLocks, remove_unused
from ._watch import OwnWrites, watch_tree

__all__ = ["FORMAT_VERSION", "FileStorage"]

# The kinds stored one file per id in a flat folder, and the folder.
_FLAT = {Kind.CACHE: "cache", Kind.SYSTEM: "system", Kind.MESSAGE: "messages"}
# The kinds stored in an agent's folder, which share its lock.
_AGENT_KINDS = (Kind.REASONING_CHAINS, Kind.READ_STATE)

# 2: a folder of conversations/ is a conversation (it holds a part), and .expiring/ indexes
# the conversations whose metadata has an expiry (_folders.py). 1: folders may be empty.
FORMAT_VERSION = 2
MARKER = ".connectome-storage.json"
# Paths and lock names of the entities written lately, remembered per storage (see _target).
_TARGETS_KEPT = 256
logger = logging.getLogger("connectome_storage")


class FileStorage(FileTransactions, FileKV, FileMessages, StorageInterface):
    """Stores everything as canonical JSON files under ``base_dir``.

    Options: ``base_dir``, ``create_backups``, ``max_backup_files``, ``pretty_print_json``,
    ``connection_timeout`` (lock wait), ``backup_retention``, ``clock``, ``default_cache_ttl``.
    """

    backend_name: ClassVar[str] = "file"
    settings_class: ClassVar[type[FileSettings]] = FileSettings
    settings: FileSettings

    # False for a caller that only reads (the CLI's read-only commands): initialize() then
    # creates nothing, not the tree, a data folder, the format marker or the .gitignore.
    create_on_open = True

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__(config)
        self.base_dir = Path(self.settings.base_dir)
        self._root = self.base_dir.absolute()
        self._locks = EntityLocks(self._root, self.settings.connection_timeout)
        self._locks.guard = self._tx_guard  # a dead process's commit is finished before a write
        self._keep = self.settings.max_backup_files if self.settings.create_backups else 0
        self._logs = AppendLog(self._root, self.settings.pretty_print_json)
        self._own = OwnWrites()  # lets watch() tell this object's writes from others'
        self._case = CaseGuard()
        self._conversations_dir = str(self._root / "conversations")
        self._meta_absent = MetaAbsence()  # folders known to hold no metadata.json (reads)
        self._targets: dict[tuple[Kind, str], tuple[Path, str]] = {}  # see _target
        self._last_written = _fs.LastWritten()  # spares _replace_file most same-size reads
        self._expiry = _folders.ExpiryIndex(self._root)
        # The tree's format: at 2 a listing is one scandir of conversations/; at 1 (a tree
        # opened only for reading, or one whose upgrade found a folder it may not remove)
        # each folder is opened to see that it holds a part.
        self._version = FORMAT_VERSION
        self._newly_indexed = 0  # index entries cleanup()'s full pass made (hand-written metadata)

    # ----------------------------------------------------------------- lifecycle

    async def _open(self) -> None:
        await asyncio.to_thread(self._open_sync)

    def _open_sync(self) -> None:
        if not self.create_on_open:
            # Only read: a tree written by an older version may lack a data folder or the
            # .gitignore, and reading it must not add them (reads treat a missing folder
            # as empty); a version-1 tree stays at 1 and is listed the slow way.
            self._version = self._check_marker()
            self._case.detect(self._root / MARKER)
            return
        try:
            self._root.mkdir(parents=True, exist_ok=True)
            for folder in FOLDERS:
                _fs.ensure_dir(self._root / folder, self._root)
            self._version = self._check_marker()
            self._case.detect(self._root / MARKER)
        except OSError as e:
            raise _fs.os_error(e, "initializing", self._root) from e
        # Temp files a crash left behind are not removed here: read-only commands open
        # storages too, and verify() reports them; cleanup() removes them.
        _housekeeping.write_gitignore(self._root)
        # A transaction a crash interrupted is finished (committed) or undone (not yet).
        self._tx_recover_at_open()
        if self._version < FORMAT_VERSION and not self._journals_busy():
            # (A journal left pending may still need temp files in a folder without a part.)
            self._upgrade_sync(prune=False)

    def _upgrade_sync(self, *, prune: bool) -> _folders.Reindexed:
        """One pass over conversations/ (``_folders.reindex``); a version-1 tree whose
        part-less folders all went is then marked version 2 (atomically)."""
        started = time.monotonic()
        try:
            done = _folders.reindex(
                Path(self._conversations_dir), self._expiry, self._locks, self._has_expiry, prune=prune
            )
            if self._version < FORMAT_VERSION and not done.kept:
                value = {"format": "connectome-storage file tree", "version": FORMAT_VERSION}
                _fs.atomic_write(self._root / MARKER, encode(value), self._root)
                self._version = FORMAT_VERSION
                logger.info(
                    "upgraded %s to format version %d in %.1f s: %d folders without a part removed, "
                    "%d conversations with an expiry indexed",
                    self._root, FORMAT_VERSION, time.monotonic() - started, done.removed, done.indexed,
                )  # fmt: skip
            elif self._version < FORMAT_VERSION:
                logger.warning(
                    "%s stays at format version 1 (listed the slow way): %d folders without a part "
                    "hold something else (%s); verify() names them",
                    self._root, len(done.kept), ", ".join(done.kept[:3]),
                )  # fmt: skip
        except (OSError, StorageError) as e:
            # A tree this process may not write (or a link in place of .expiring) still
            # opens: it stays at the version it is at, listed accordingly.
            error = _fs.os_error(e, "upgrading", self._root) if isinstance(e, OSError) else e
            logger.warning("%s stays at format version %d: %s", self._root, self._version, error)
            return _folders.Reindexed()
        return done

    def _has_expiry(self, path: Path, conversation_id: str) -> bool:
        """Whether the metadata file at ``path`` has an expiry (a damaged one: indexed too,
        since it may have one once fixed; the entry costs a read)."""
        try:
            raw = _fs.read_bytes(path)
        except (OSError, StorageError):
            return True
        return raw is not None and self._meta_bytes_expire(raw, path, conversation_id)

    def _meta_bytes_expire(self, raw: bytes, path: Path, conversation_id: str) -> bool:
        try:
            value = check_shape(Kind.METADATA, decode(raw, str(path)), path)
            return self._meta_record(value, path, conversation_id).expires_ms is not None
        except CorruptedDataError:
            return True

    def _require_initialized(self) -> None:
        super()._require_initialized()
        # Before any access: a transaction a dead process left half-applied is finished
        # first (one stat of the journal folder when there is none; no lock is waited for).
        if self.create_on_open and self._journals_busy():
            self._tx_settle_for_readers()

    def _check_marker(self) -> int:
        """The tree's format version (a new tree is made at the current one)."""
        marker = self._root / MARKER
        raw = _fs.read_bytes(marker)
        if raw is None and not self.create_on_open:
            raise StorageIOError(f"{self._root} holds no storage (no {MARKER}); nothing was created")
        if raw is None:
            value = {"format": "connectome-storage file tree", "version": FORMAT_VERSION}
            _fs.atomic_write(marker, encode(value), self._root)
            return FORMAT_VERSION
        content = decode(raw, str(marker))
        version = content.get("version") if isinstance(content, dict) else None
        if not isinstance(version, int):
            raise CorruptedDataError(str(marker), "the format marker has no integer version", line=1, column=1)
        if version > FORMAT_VERSION:
            raise UnsupportedFormatError(
                f"{self._root} holds format version {version}, written by a newer "
                f"connectome-storage; this one reads up to {FORMAT_VERSION}: upgrade the package"
            )
        return version

    async def _close(self) -> None:
        self._own.stop_all()  # every running watch() ends
        self._locks.close()

    def _capabilities(self) -> frozenset[str]:
        return frozenset({"watch", "backups", "persistent", "cross_process"})

    # --------------------------------------------------------------------- paths

    def path_of(self, kind: Kind, key: str) -> Path:
        """The file that holds ``kind`` for ``key`` (it may not exist)."""
        return self._root / self._relative(kind, key)

    @staticmethod
    def _relative(kind: Kind, key: str) -> str:
        """The file's path below base_dir, with ``/``: the one place the layout maps ids."""
        if kind is Kind.KV:
            return kv_relative(key)  # key: kv_id(namespace, key)
        name = encode_name(key)
        if kind in PART_FILES:
            return f"conversations/{name}/{PART_FILES[kind]}"
        if kind is Kind.REASONING_CHAINS:
            return f"agents/{name}/{CHAINS_FILE}"
        if kind is Kind.READ_STATE:
            return f"agents/{name}/{READ_STATE_FILE}"
        return f"{_FLAT[kind]}/{name}.json"

    def _entity(self, kind: Kind, key: str) -> str:
        """The lock name: the entity's folder or file. All parts of one conversation share
        a lock, so that delete_conversation excludes every writer of that conversation; an
        agent's chains and read state share the agent's folder lock likewise."""
        relative = self._relative(kind, key)
        return relative.rpartition("/")[0] if kind in PART_FILES or kind in _AGENT_KINDS else relative

    def _target(self, kind: Kind, key: str) -> tuple[Path, str]:
        """``(path_of, _entity)`` for a write, remembered for the keys written lately: made on
        the event loop before each write (percent-encoding, a pathlib join), they cost a
        store more loop time than its id and value checks."""
        target = self._targets.get((kind, key))
        if target is None:
            if len(self._targets) >= _TARGETS_KEPT:
                self._targets.clear()
            relative = self._relative(kind, key)
            entity = relative.rpartition("/")[0] if kind in PART_FILES or kind in _AGENT_KINDS else relative
            target = self._targets[(kind, key)] = (self._root / relative, entity)
        return target

    def _stamp(self) -> str:
        return format_time(self._now_ms()).replace(":", "-")

    def _encode(self, value: Any) -> bytes:
        return encode(value, pretty=self.settings.pretty_print_json)

    # ------------------------------------------------------------ reading files

    async def _load(self, kind: Kind, key: str) -> Any:
        """The parsed file, or None when absent; a part of an expired conversation is absent."""
        if kind in CONVERSATION_PARTS:
            return await self._load_part(kind, key)
        path = self.path_of(kind, key)
        try:
            if self._case.active:
                self._case.check(self._root / self._entity(kind, key), key)
            _fs.missing_dirs(path.parent, self._root)  # refuses a link in place of a folder
            raw = read_small(path)
            if raw is None:
                return None
            if raw is TOO_BIG:
                return await asyncio.to_thread(self._load_sync, kind, path)
        except OSError as e:
            raise _fs.os_error(e, "reading", path) from e
        return check_shape(kind, decode(raw, str(path)), path)  # type: ignore[arg-type]

    async def _load_part(self, kind: Kind, key: str) -> Any:
        """A part of a conversation, read on the event loop with string paths: the folder's
        ``lstat`` (refusing a link) is also what tells whether its metadata must be looked
        at (``_file_scan.MetaAbsence``), so a conversation without metadata costs no
        failed ``access()``; one with metadata has it read in the same step."""
        folder = f"{self._conversations_dir}{os.sep}{encode_name(key)}"
        path = f"{folder}{os.sep}{PART_FILES[kind]}"
        try:
            if self._case.active:
                self._case.check(Path(folder), key)
            st = entity_folder(self._root, self._conversations_dir, folder)
            if st is None:
                return None
            raw = read_small_at(path, READ_IN_LOOP_LIMIT)
            if raw is None:
                return None  # a missing part costs no look at the metadata
            if raw is not False and not self._meta_absent.known(folder, st):
                checked_ns = time.time_ns()  # before the look: see MetaAbsence
                meta_name = f"{folder}{os.sep}{META_FILE}"
                if not _fs.present(meta_name):
                    self._meta_absent.remember(folder, st, checked_ns)
                else:
                    meta_path = Path(meta_name)
                    meta = read_small(meta_path)
                    if meta is TOO_BIG:
                        raw = False  # the thread reads both
                    elif isinstance(meta, bytes) and self._expired_bytes(meta, meta_path, key):
                        return None
            if raw is False:
                return await asyncio.to_thread(self._load_sync, kind, Path(path), key)
        except OSError as e:
            raise _fs.os_error(e, "reading", path) from e
        assert isinstance(raw, bytes)
        return parse_part(kind, raw, path)

    def _load_sync(self, kind: Kind, path: Path, live: str | None = None) -> Any:
        """The parsed file, or None when absent; with ``live`` (the conversation id), None too
        when that conversation has expired."""
        try:
            _fs.missing_dirs(path.parent, self._root)
            raw = _fs.read_bytes(path)
            if raw is not None and live is not None:
                meta_path = path.with_name(META_FILE)
                meta = _fs.read_bytes(meta_path)
                if meta is not None and self._expired_bytes(meta, meta_path, live):
                    return None
        except IsADirectoryError as e:
            raise CorruptedDataError(str(path), "a folder stands where a file belongs") from e
        except OSError as e:
            raise _fs.os_error(e, "reading", path) from e
        return None if raw is None else check_shape(kind, decode(raw, str(path)), path)

    # ------------------------------------------------------ conversation metadata

    def _meta_record(self, value: Any, path: Path, conversation_id: str) -> MetaRecord:
        """A parsed ``metadata.json`` as a MetaRecord; CorruptedDataError naming the file."""
        record = MetaRecord.from_document(value, str(path))
        if record.conversation_id != conversation_id:
            raise CorruptedDataError(
                str(path),
                f"conversation_id {record.conversation_id!r} does not match the folder's id {conversation_id!r}",
            )
        return record

    def _expired_bytes(self, raw: bytes, path: Path, conversation_id: str, now_ms: int | None = None) -> bool:
        """Whether metadata bytes say the conversation has expired. A damaged file decides
        nothing: the conversation stays readable (its load and verify() name the file)."""
        try:
            value = check_shape(Kind.METADATA, decode(raw, str(path)), path)
            record = self._meta_record(value, path, conversation_id)
        except CorruptedDataError:
            return False
        return record.expired(self._now_ms() if now_ms is None else now_ms)

    def _meta_expired(self, raw: bytes, path: Path, conversation_id: str, now_ms: int) -> bool:
        """Whether metadata bytes say the conversation has expired; CorruptedDataError when damaged."""
        value = check_shape(Kind.METADATA, decode(raw, str(path)), path)
        return self._meta_record(value, path, conversation_id).expired(now_ms)

    def _expired_at(self, path: Path, conversation_id: str, now_ms: int) -> bool:
        """``_expired_bytes`` of the file at ``path``; False when it is absent or unreadable."""
        try:
            raw = _fs.read_bytes(path)
        except (OSError, StorageError):
            return False  # a listing never fails on it; reads and verify() name it
        return raw is not None and self._expired_bytes(raw, path, conversation_id, now_ms)

    def _read_meta_sync(self, conversation_id: str, path: Path | None = None) -> MetaRecord | None:
        """The stored metadata (expired or not), None when absent; CorruptedDataError when damaged."""
        path = path or self.path_of(Kind.METADATA, conversation_id)
        value = self._load_sync(Kind.METADATA, path)
        return None if value is None else self._meta_record(value, path, conversation_id)

    def _live_meta_sync(self, conversation_id: str, now_ms: int) -> MetaRecord | None:
        """Before a write to a conversation, under its lock: the metadata of a live one
        (None when there is none, or it is damaged: a save replaces it); an expired
        conversation is removed whole first, so the write starts a new one."""
        name = f"{self._conversations_dir}{os.sep}{encode_name(conversation_id)}{os.sep}{META_FILE}"
        if not _fs.present(name):  # the common case: one failed access(), and no Path made
            return None
        path = Path(name)
        try:
            record = self._read_meta_sync(conversation_id, path)
        except CorruptedDataError as e:
            logger.warning("%s; its message_count is left as it is", e)
            return None
        if record is not None and record.expired(now_ms):
            self._drop_conversation_sync(conversation_id)
            return None
        return record

    def _write_meta_sync(self, record: MetaRecord) -> None:
        path = self.path_of(Kind.METADATA, record.conversation_id)
        self._write_meta_bytes(path, self._encode(record.to_document()), record.expires_ms is not None)

    def _write_meta_bytes(self, path: Path, data: bytes, expires: bool) -> None:
        """Every write of a metadata.json goes here, under the conversation's lock: its
        index entry (_folders.ExpiryIndex) is made durable before metadata with an expiry
        is written, and removed only after metadata without one is."""
        name = path.parent.name
        if expires:
            try:
                self._expiry.add(name)
            except OSError as e:
                raise _fs.os_error(e, "writing", self._expiry.folder / name) from e
        self._replace_file(path, data)
        if not expires:
            self._expiry.discard(name)

    def _history_count_sync(self, conversation_id: str) -> int:
        """The raw history's length: from the append journal when it knows the file, else read."""
        path = self.path_of(Kind.RAW_MESSAGES, conversation_id)
        try:
            known = self._logs.known_count(path)
        except OSError as e:
            raise _fs.os_error(e, "reading", path) from e
        return known if known is not None else len(self._load_sync(Kind.RAW_MESSAGES, path) or [])

    def _drop_conversation_sync(self, conversation_id: str) -> bool:
        """Remove every part; True if any was there. A backup of each is kept, then the
        folder is renamed away whole (one step: no crash leaves part of it). A folder that
        also holds something else (a file of the user's) stays: its parts are removed one
        by one, metadata last (a crash half-way leaves it expired)."""
        folder = self.path_of(Kind.METADATA, conversation_id).parent
        try:
            if _fs.missing_dirs(folder, self._root):
                return False
            present = {e.name for e in _fs.scandir(folder) if e.name in CONVERSATION_FILES}
            if present and _folders.only_parts_leave(folder, present):
                paths = [self.path_of(kind, conversation_id) for kind in PART_FILES if PART_FILES[kind] in present]
                kept = []
                for path in paths:
                    if path.name in LOG_FILES:
                        self._logs.forget(path)
                    kept.append(_fs.keep_backup(self._root, path, self._keep, self._stamp()))
                _fs.retire_folder(folder)
                for k in kept:
                    _fs.prune_backups(k)
                for path in paths:
                    self._own.removed(path)
                self._expiry.discard(folder.name)
                return True
        except OSError as e:
            raise _fs.os_error(e, "deleting", folder) from e
        found = False
        for kind in PART_FILES:
            found = self._remove_file(self.path_of(kind, conversation_id)) or found
        return found

    def _part_step(
        self, conversation_id: str, counted: Callable[[Any], int] | None, function: Callable[..., Any], *args: Any
    ) -> Any:
        """One write to a part of a conversation, in the worker thread under its lock.

        An expired conversation is removed whole first. ``counted`` is given for a write
        that changes the raw history: it turns the write's result into the history's new
        length, and a live conversation's ``message_count`` follows it under the same lock.
        The log is written first: a crash before the metadata leaves the count behind
        until the next write to the history, which sets it from the log's own length.
        """
        record = self._live_meta_sync(conversation_id, self._now_ms())
        result = function(*args)
        if counted is not None and record is not None:
            count = counted(result)
            if record.message_count != count:
                self._write_meta_sync(dataclasses.replace(record, message_count=count))
        return result

    async def _write_part(
        self,
        kind: Kind,
        key: str,
        counted: Callable[[Any], int] | None,
        function: Callable[..., Any],
        *args: Any,
        in_turn: bool = False,
        entity: str | None = None,
    ) -> Any:
        return await self._locked(
            kind, key, self._part_step, key, counted, function, *args, in_turn=in_turn, entity=entity
        )

    # ------------------------------------------------------- writing (in thread)

    def _replace_file(self, path: Path, data: bytes, keep: int | None = None) -> None:
        """Write ``data`` to ``path`` unless it already holds exactly that; keep a backup
        (``keep`` versions at most; None: the configured number)."""
        try:
            st = _fs.regular_stat(path)  # refuses a link, FIFO, socket or device
            if st is None and self._made_whole(path, data):
                return  # a new conversation: its folder appeared with the file in it
            # Only a file of the same size can hold the same bytes, and not one still as
            # this process wrote it with other bytes: most stores skip the read.
            name = str(path)
            if (
                st is not None
                and st.st_size == len(data)
                and not self._last_written.holds_other(name, st, data)
                and _fs.holds(path, data)
            ):
                return
            if path.name in LOG_FILES:
                self._logs.forget(path)
            kept = _fs.Kept(None)
            keep = self._keep if keep is None else keep
            if st is not None and keep > 0:
                kept = _fs.keep_backup(self._root, path, keep, self._stamp())
            try:
                written = _fs.atomic_write(path, data, self._root, old_kept=kept.version is not None)
                self._last_written.wrote(name, written, data)
                self._own.wrote(path)
            except BaseException:
                # The live file was not replaced: drop its backup, which is a hard link to
                # it and would otherwise change with the file's next append in place.
                if kept.version is not None:
                    kept.version.unlink(missing_ok=True)
                raise
            _fs.prune_backups(kept)  # only now: a failed write never costs a kept version
        except OSError as e:
            raise _fs.os_error(e, "writing", path) from e

    def _made_whole(self, path: Path, data: bytes) -> bool:
        """Under the conversation's lock, when ``path`` is a part of a conversation whose
        folder does not exist: make the folder whole with the file in it (a folder of
        conversations/ always holds a part). False otherwise (the caller writes as usual)."""
        folder = path.parent
        if str(folder.parent) != self._conversations_dir:
            return False
        try:
            os.lstat(folder)
            return False
        except FileNotFoundError:
            pass
        written = _fs.make_folder_whole(folder, path.name, data, self._root)
        if written is None:
            return False  # made by hand meanwhile: written into as usual
        self._last_written.wrote(str(path), written, data)
        self._own.wrote(path)
        return True

    def _remove_file(self, path: Path, keep: int | None = None) -> bool:
        try:
            if _fs.missing_dirs(path.parent, self._root) or _fs.regular_size(path) is None:
                return False
            if path.name in LOG_FILES:
                self._logs.forget(path)
            kept = _fs.keep_backup(self._root, path, self._keep if keep is None else keep, self._stamp())
            folder = path.parent
            conversation = str(folder.parent) == self._conversations_dir
            if conversation and _folders.only_parts_leave(folder, {path.name}):
                _fs.retire_folder(folder)  # its last part: the folder goes whole
                removed = True
            else:
                removed = _fs.unlink(path)
            _fs.prune_backups(kept)
            self._own.removed(path)
            if conversation and (path.name == META_FILE or not os.path.lexists(folder)):
                self._expiry.discard(folder.name)
            elif folder.parent.name == "agents":
                remove_empty_dir(folder)
            return removed
        except OSError as e:
            raise _fs.os_error(e, "deleting", path) from e

    async def _locked(
        self,
        kind: Kind,
        key: str,
        function: Callable[..., Any],
        *args: Any,
        in_turn: bool = False,
        entity: str | None = None,
    ) -> Any:
        """``function(*args)`` in a worker thread under the entity's lock (``entity``: its
        name, when the caller has it); ``in_turn`` for a function whose waits for the
        device all go through ``_fs`` (see ``_turns``)."""
        return await self._locks.run(
            entity or self._entity(kind, key), self._case_checked, kind, key, function, *args, in_turn=in_turn
        )

    def _case_checked(self, kind: Kind, key: str, function: Callable[..., Any], *args: Any) -> Any:
        if self._case.active:  # only on filesystems that ignore case
            try:
                self._case.check(self._root / self._entity(kind, key), key)
            except OSError as e:
                raise _fs.os_error(e, "listing", self._root) from e
        return function(*args)

    # ---------------------------------------------------------------- documents

    async def _read_document(self, kind: Kind, key: str) -> Any:
        return await self._load(kind, key)

    async def _write_document(self, kind: Kind, key: str, value: Any) -> None:
        data = self._encode(value)
        path, entity = self._target(kind, key)
        if kind in CONVERSATION_PARTS:
            counted = (lambda _: len(value)) if kind is Kind.RAW_MESSAGES else None
            await self._write_part(kind, key, counted, self._replace_file, path, data, in_turn=True, entity=entity)
            return
        keep = 0 if kind is Kind.CACHE else None  # a cache is regenerable: no backups
        await self._locked(kind, key, self._replace_file, path, data, keep, in_turn=True, entity=entity)

    async def _delete(self, kind: Kind, key: str) -> bool:
        path = self.path_of(kind, key)
        if kind in CONVERSATION_PARTS:
            counted = (lambda _: 0) if kind is Kind.RAW_MESSAGES else None
            return bool(await self._write_part(kind, key, counted, self._remove_file, path))
        keep = 0 if kind is Kind.CACHE else None
        return bool(await self._locked(kind, key, self._remove_file, path, keep))

    # --------------------------------------------------------------------- logs

    async def _read_log(self, kind: Kind, key: str) -> list[Any]:
        try:
            return await self._load(kind, key) or []
        except CorruptedDataError:
            # Maybe an append in place is half-way in another process, or was cut short by
            # a crash: read the version before it, without waiting for any lock.
            live = key if kind is Kind.RAW_MESSAGES else None
            return await asyncio.to_thread(self._read_log_settled, kind, self.path_of(kind, key), live)

    def _read_log_settled(self, kind: Kind, path: Path, live: str | None = None) -> list[Any]:
        error: CorruptedDataError | None = None
        for _attempt in range(3):  # an append may finish (or another begin) between reads
            try:
                return self._load_sync(kind, path, live) or []
            except CorruptedDataError as e:
                error = e
            try:
                before = self._logs.read_before_append(path)
            except OSError as e:
                raise _fs.os_error(e, "reading", path) from e
            if before is not None:
                with suppress(CorruptedDataError):
                    return check_shape(kind, decode(before, str(path)), path)  # type: ignore[no-any-return]
        assert error is not None
        raise error

    async def _append_log(self, kind: Kind, key: str, items: list[Any]) -> int:
        if kind is Kind.RAW_MESSAGES:
            return int(await self._write_part(kind, key, int, self._append_sync, kind, key, items))
        return int(await self._locked(kind, key, self._append_sync, kind, key, items))

    def _append_sync(self, kind: Kind, key: str, items: list[Any]) -> int:
        # An append takes no backup: the previous version is a prefix of the new one.
        path = self.path_of(kind, key)
        try:
            # An append in place must not go through a link (refused here).
            missing = _fs.missing_dirs(path.parent, self._root)
            if missing and kind is Kind.RAW_MESSAGES and items and self._made_whole(path, self._encode(items)):
                self._logs.adopt(path, len(items))  # the next append goes in place
                return len(items)
            count = self._logs.append(path, items, lambda: self._load_sync(kind, path) or [])
            self._own.wrote(path)
            return count
        except OSError as e:
            raise _fs.os_error(e, "appending to", path) from e

    async def _replace_log(self, kind: Kind, key: str, items: list[Any]) -> None:
        await self._write_document(kind, key, items)

    async def _pop_log(self, kind: Kind, key: str) -> Any:
        if kind is Kind.RAW_MESSAGES:
            popped = await self._write_part(kind, key, lambda result: result[1], self._pop_sync, kind, key)
        else:
            popped = await self._locked(kind, key, self._pop_sync, kind, key)
        return popped[0]

    def _pop_sync(self, kind: Kind, key: str) -> tuple[Any, int]:
        """(the newest item or None, how many remain)."""
        path = self.path_of(kind, key)
        try:
            self._logs.recover(path)  # an append cut short is finished or undone first
        except OSError as e:
            raise _fs.os_error(e, "reading", path) from e
        items = self._load_sync(kind, path) or []
        if not items:
            return None, 0
        newest = items.pop()
        if items:
            self._replace_file(path, self._encode(items))  # the version popped from is kept
        else:
            self._remove_file(path)
        return newest, len(items)

    # ------------------------------------------------------------------ members

    async def _put_member(self, conversation_id: str, memory_id: str, memory: dict[str, Any]) -> None:
        await self._write_part(
            Kind.MEMORIES, conversation_id, None, self._put_member_sync, conversation_id, memory_id, memory
        )

    def _put_member_sync(self, conversation_id: str, memory_id: str, memory: dict[str, Any]) -> None:
        path = self.path_of(Kind.MEMORIES, conversation_id)
        memories = self._load_sync(Kind.MEMORIES, path) or []
        for index, existing in enumerate(memories):
            if existing["memory_id"] == memory_id:
                memories[index] = memory
                break
        else:
            memories.append(memory)
        self._replace_file(path, self._encode(memories))

    async def _read_members(self, conversation_id: str) -> list[dict[str, Any]]:
        return await self._load(Kind.MEMORIES, conversation_id) or []

    async def _delete_member(self, conversation_id: str, memory_id: str) -> bool:
        return bool(
            await self._write_part(
                Kind.MEMORIES, conversation_id, None, self._delete_member_sync, conversation_id, memory_id
            )
        )

    def _delete_member_sync(self, conversation_id: str, memory_id: str) -> bool:
        path = self.path_of(Kind.MEMORIES, conversation_id)
        memories = self._load_sync(Kind.MEMORIES, path) or []
        remaining = [m for m in memories if m["memory_id"] != memory_id]
        if len(remaining) == len(memories):
            return False
        if remaining:
            self._replace_file(path, self._encode(remaining))
        else:
            self._remove_file(path)
        return True

    # ------------------------------------------------------------ conversations

    async def _delete_conversation(self, conversation_id: str) -> bool:
        return bool(
            await self._locked(Kind.CONVERSATION, conversation_id, self._delete_conversation_sync, conversation_id)
        )

    def _delete_conversation_sync(self, conversation_id: str) -> bool:
        """Remove every part and the metadata, expired or not; True only if it was live."""
        expired = self._expired_at(self.path_of(Kind.METADATA, conversation_id), conversation_id, self._now_ms())
        return self._drop_conversation_sync(conversation_id) and not expired

    async def _list_conversations(self) -> list[str]:
        live, _expired = await asyncio.to_thread(self._conversations_sync, self._now_ms())
        return live

    def _conversation_ids(self) -> AsyncGenerator[str, None]:
        # migrate's walk: streamed from one scan of conversations/ (_file_parts.stream_ids), no
        # list; the folders _conversations_sync lists, expired ones included.
        if self._version < FORMAT_VERSION:
            ids = (identifier for identifier, _folder, _meta in conversation_folders(self._conversations_dir))
            return _file_parts.stream_ids(ids)
        folders = _folders.conversation_entries(self._conversations_dir)
        return _file_parts.stream_ids(identifier for _name, identifier, _folder in folders)

    async def _conversation_parts(
        self, conversation_id: str, now_ms: int
    ) -> tuple[MetaRecord | None, Any, Any, list[Any], list[dict[str, Any]]]:
        # One look at the folder and the metadata for every part (_file_parts.conversation_parts).
        return await _file_parts.conversation_parts(self, conversation_id, now_ms)

    def _conversations_sync(self, now_ms: int) -> tuple[list[str], list[str]]:
        """(live ids, expired ids). At format version 2, one scandir of conversations/:
        each folder is a conversation, and only those in the expiry index have their
        metadata read. A damaged metadata leaves its conversation live (verify() names it).
        A link (or FIFO...) in place of a folder is listed, so that reading it fails
        loudly, naming it; a plain file is not a conversation."""
        if self._version < FORMAT_VERSION:
            return self._conversations_v1(now_ms)
        expiring = self._expiry.names()
        live: list[str] = []
        expired: list[str] = []
        for name, identifier, folder in _folders.conversation_entries(self._conversations_dir):
            if name in expiring and self._expired_at(Path(folder, META_FILE), identifier, now_ms):
                expired.append(identifier)
            else:
                live.append(identifier)
        return live, expired

    def _conversations_v1(self, now_ms: int) -> tuple[list[str], list[str]]:
        """As ``_conversations_sync``, for a version-1 tree: each folder is opened to see
        that it holds a part, and has its metadata read if it holds one."""
        live, expired = [], []
        for identifier, folder, has_meta in conversation_folders(self._conversations_dir):
            if has_meta and self._expired_at(Path(folder, META_FILE), identifier, now_ms):
                expired.append(identifier)
            else:
                live.append(identifier)
        return live, expired

    async def _list_agents(self) -> list[str]:
        return await asyncio.to_thread(self._list_entity_dirs, "agents", {CHAINS_FILE})

    def _list_entity_dirs(self, folder: str, files: frozenset[str] | set[str]) -> list[str]:
        return [identifier for identifier, _folder, _names in self._entity_dirs(folder, files)]

    def _entity_dirs(
        self, folder: str, files: frozenset[str] | set[str]
    ) -> Iterator[tuple[str, Path, set[str] | None]]:
        """(id, folder, names of the part files in it) of each entity folder holding a part.
        A link (or FIFO...) in place of an entity folder comes with names None: it is
        listed too, so that reading it fails loudly, naming it, instead of the entity
        silently vanishing from listings (and from a migration)."""
        for entry in _fs.scandir(self._root / folder):
            identifier = decode_name(entry.name)
            if identifier is None or entry.is_file(follow_symlinks=False):
                continue
            if not entry.is_dir(follow_symlinks=False):
                yield identifier, Path(entry.path), None
                continue
            names = {inner.name for inner in _fs.scandir(Path(entry.path)) if inner.name in files}
            if names:
                yield identifier, Path(entry.path), names

    # ------------------------------------------------------- conversation store

    async def _meta_read(
        self, conversation_id: str, now_ms: int, *, include_expired: bool = False
    ) -> MetaRecord | None:
        record = await self._meta_read_strict(conversation_id)  # CorruptedDataError when damaged
        if record is None or (record.expired(now_ms) and not include_expired):
            return None
        return record

    async def _meta_read_strict(self, conversation_id: str) -> MetaRecord | None:
        """The stored metadata, expired or not; CorruptedDataError naming a damaged file."""
        value = await self._load(Kind.METADATA, conversation_id)  # small: read on the event loop
        if value is None:
            return None
        return self._meta_record(value, self.path_of(Kind.METADATA, conversation_id), conversation_id)

    async def _meta_put(self, conversation_id: str, record: MetaRecord | None) -> None:
        await self._locked(Kind.METADATA, conversation_id, self._meta_put_sync, conversation_id, record)

    def _meta_put_sync(self, conversation_id: str, record: MetaRecord | None) -> None:
        if record is None:
            self._remove_file(self.path_of(Kind.METADATA, conversation_id))
            return
        self._live_meta_sync(conversation_id, self._now_ms())
        self._write_meta_sync(record)

    async def _conversation_save(self, record: MetaRecord, messages: list[dict[str, Any]], now_ms: int) -> None:
        key = record.conversation_id
        await self._locked(Kind.METADATA, key, self._conversation_save_sync, record, messages, now_ms)

    def _conversation_save_sync(self, record: MetaRecord, messages: list[dict[str, Any]], now_ms: int) -> None:
        # History first, metadata second (each replaced atomically): a crash between them
        # leaves the new history with the old metadata, whose count the next write sets.
        key = record.conversation_id
        self._live_meta_sync(key, now_ms)
        path = self.path_of(Kind.RAW_MESSAGES, key)
        if messages:
            self._replace_file(path, self._encode(messages))
        else:
            self._remove_file(path)
        self._write_meta_sync(record)

    async def _conversation_append(
        self, created: MetaRecord, messages: list[dict[str, Any]], now_ms: int, *, update_timestamp: bool
    ) -> MetaRecord:
        key = created.conversation_id
        step = self._conversation_append_sync
        return await self._locked(Kind.METADATA, key, step, created, messages, now_ms, update_timestamp)  # type: ignore[no-any-return]

    def _conversation_append_sync(
        self, created: MetaRecord, messages: list[dict[str, Any]], now_ms: int, update_timestamp: bool
    ) -> MetaRecord:
        """Append (in place when the journal knows the file: the history is never read)
        and write the metadata with the new count, under the conversation's lock."""
        key = created.conversation_id
        previous = self._live_meta_sync(key, now_ms)
        # No messages: the count comes from the journal, or else (once) from the file.
        count = self._append_sync(Kind.RAW_MESSAGES, key, messages) if messages else self._history_count_sync(key)
        if previous is None:
            record = dataclasses.replace(created, message_count=count)
        else:
            updated = now_ms if update_timestamp else previous.updated_ms
            record = dataclasses.replace(previous, message_count=count, updated_ms=updated)
        self._write_meta_sync(record)
        return record

    async def _conversation_set_expiry(
        self, conversation_id: str, ttl: float | None, expires_ms: int | None, now_ms: int
    ) -> bool:
        step = self._set_expiry_sync
        return bool(await self._locked(Kind.METADATA, conversation_id, step, conversation_id, ttl, expires_ms, now_ms))

    def _set_expiry_sync(self, conversation_id: str, ttl: float | None, expires_ms: int | None, now_ms: int) -> bool:
        record = self._read_meta_sync(conversation_id)
        if record is not None and record.expired(now_ms):
            return False
        if record is None:
            if not self._part_names_sync(conversation_id):
                return False
            count = self._history_count_sync(conversation_id)
            record = MetaRecord(conversation_id, now_ms, now_ms, count, None, None, {})
        self._write_meta_sync(dataclasses.replace(record, ttl=ttl, expires_ms=expires_ms))
        return True

    def _part_names_sync(self, conversation_id: str) -> set[str]:
        """Names of the conversation's stored part files (metadata included); StorageIOError
        for a link in place of its folder."""
        folder = self.path_of(Kind.METADATA, conversation_id).parent
        try:
            if _fs.missing_dirs(folder, self._root):
                return set()
        except OSError as e:
            raise _fs.os_error(e, "listing", folder) from e
        return {entry.name for entry in _fs.scandir(folder) if entry.name in CONVERSATION_FILES}

    async def _conversation_load(
        self, conversation_id: str, now_ms: int, *, include_expired: bool
    ) -> tuple[MetaRecord, list[dict[str, Any]]] | None:
        step = self._conversation_load_sync
        return await asyncio.to_thread(
            self._case_checked, Kind.METADATA, conversation_id, step, conversation_id, now_ms, include_expired
        )

    def _conversation_load_sync(
        self, conversation_id: str, now_ms: int, include_expired: bool
    ) -> tuple[MetaRecord, list[dict[str, Any]]] | None:
        record = self._read_meta_sync(conversation_id)  # a damaged file raises, naming it
        if record is not None and record.expired(now_ms) and not include_expired:
            return None
        messages = self._read_log_settled(Kind.RAW_MESSAGES, self.path_of(Kind.RAW_MESSAGES, conversation_id))
        if record is None:
            if not messages and not self._part_names_sync(conversation_id):
                return None
            return MetaRecord(conversation_id, None, None, None, None, None, None), messages
        if record.message_count != len(messages):
            # A crash between a history write and its metadata left the count behind: the
            # history is the truth, and the next write stores it.
            record = dataclasses.replace(record, message_count=len(messages))
        return record, messages

    async def _conversation_exists(self, conversation_id: str, now_ms: int) -> bool:
        step = self._exists_sync
        return bool(
            await asyncio.to_thread(self._case_checked, Kind.METADATA, conversation_id, step, conversation_id, now_ms)
        )

    def _exists_sync(self, conversation_id: str, now_ms: int) -> bool:
        names = self._part_names_sync(conversation_id)
        if META_FILE not in names:
            return bool(names)
        return not self._expired_at(self.path_of(Kind.METADATA, conversation_id), conversation_id, now_ms)

    async def _expired_conversations(self, now_ms: int) -> list[str]:
        return await asyncio.to_thread(self._expired_sync, now_ms)

    def _expired_sync(self, now_ms: int) -> list[str]:
        """Ids of the expired conversations: at version 2 only those in the expiry index
        have their metadata read."""
        if self._version < FORMAT_VERSION:
            return self._conversations_v1(now_ms)[1]
        expired = []
        for name in self._expiry.names():
            identifier = decode_name(name)
            path = Path(self._conversations_dir, name, META_FILE)
            if identifier is not None and self._expired_at(path, identifier, now_ms):
                expired.append(identifier)
        return expired

    async def _remove_expired_conversations(self, now_ms: int) -> int:
        removed = 0
        for conversation_id in await self._expired_conversations(now_ms):
            step = self._remove_if_expired_sync
            removed += await self._locked(Kind.METADATA, conversation_id, step, conversation_id, now_ms)
        return removed

    def _remove_if_expired_sync(self, conversation_id: str, now_ms: int) -> int:
        # Checked again under the lock: another process may have saved it afresh.
        if not self._expired_at(self.path_of(Kind.METADATA, conversation_id), conversation_id, now_ms):
            return 0
        self._drop_conversation_sync(conversation_id)
        return 1

    async def _meta_scan(self, now_ms: int) -> list[MetaRecord]:
        return await asyncio.to_thread(self._meta_scan_sync, now_ms)

    def _meta_scan_sync(self, now_ms: int) -> list[MetaRecord]:
        """The metadata of every live conversation in one pass; never reads messages."""
        records = []
        for identifier, folder, has_meta in conversation_folders(self._conversations_dir):
            if has_meta is None:
                logger.warning("%s is not a folder; queries leave conversation %r out", folder, identifier)
                continue
            if not has_meta:
                records.append(MetaRecord(identifier, None, None, None, None, None, None))
                continue
            # Damaged metadata stops the query with CorruptedDataError naming the file, as on
            # every backend: skipping it would answer wrong without saying so.
            record = self._read_meta_sync(identifier, Path(folder, META_FILE))
            if record is None:  # removed since the listing
                continue
            if not record.expired(now_ms):
                records.append(record)
        return records

    async def _list_system_states(self) -> list[str]:
        return await asyncio.to_thread(self._list_json_files, "system")

    def _list_json_files(self, folder: str) -> list[str]:
        """Ids of the ``.json`` entries of ``folder``: regular files, and links and the
        like, which reads then refuse (see ``_list_entity_dirs``)."""
        ids = []
        for entry in _fs.scandir(self._root / folder):
            if entry.name.endswith(".json") and not entry.is_dir(follow_symlinks=False):
                identifier = decode_name(entry.name[: -len(".json")])
                if identifier is not None:
                    ids.append(identifier)
        return ids

    # -------------------------------------------------------------------- cache

    async def _write_cache(self, entry: CacheEntry) -> None:
        envelope = {
            "cache_key": entry.key,
            "created_at": format_time(entry.created_ms),
            "expires_at": None if entry.expires_ms is None else format_time(entry.expires_ms),
            "data": entry.data,
        }
        await self._write_document(Kind.CACHE, entry.key, envelope)

    async def _read_cache(self, cache_key: str) -> CacheEntry | None:
        envelope = await self._load(Kind.CACHE, cache_key)
        if envelope is None:
            return None
        return cache_entry(envelope, self.path_of(Kind.CACHE, cache_key), cache_key)

    async def _list_all_cache_keys(self) -> list[str]:
        return await asyncio.to_thread(self._list_json_files, "cache")

    async def _list_cache_keys(self, now_ms: int) -> list[str]:
        return [key for key, entry in await self._cache_entries() if not entry.expired(now_ms)]

    async def _cache_entries(self) -> list[tuple[str, CacheEntry]]:
        entries = []
        for key in await self._list_all_cache_keys():
            try:
                entry = await self._read_cache(key)
            except (CorruptedDataError, StorageIOError):
                continue  # verify() and stats report it; a listing skips it
            if entry is not None:
                entries.append((key, entry))
        return entries

    async def _delete_expired_cache(self, now_ms: int) -> int:
        removed = 0
        for key, entry in await self._cache_entries():
            if entry.expired(now_ms):
                removed += await self._locked(Kind.CACHE, key, self._remove_if_expired, key, now_ms)
        if removed:
            # One folder fsync for the whole sweep: losing these unlinks to a crash would
            # only bring back entries that are expired anyway.
            await asyncio.to_thread(_fs.fsync_dir, self._root / "cache")
        return removed

    def _remove_if_expired(self, key: str, now_ms: int) -> int:
        # Checked again under the lock: another process may have refreshed the entry.
        path = self.path_of(Kind.CACHE, key)
        envelope = self._load_sync(Kind.CACHE, path)
        if envelope is None or not cache_entry(envelope, path, key).expired(now_ms):
            return 0
        try:
            os.unlink(path)  # expired entries are dropped without a backup
            self._own.removed(path)
            return 1
        except FileNotFoundError:
            return 0
        except OSError as e:
            raise _fs.os_error(e, "deleting", path) from e

    # ------------------------------------------------------------ health, stats

    async def _probe(self) -> dict[str, Any]:
        return await asyncio.to_thread(self._probe_sync)

    def _probe_sync(self) -> dict[str, Any]:
        probe = self._root / f".health-{os.getpid()}"
        payload = os.urandom(16)
        try:
            _fs.atomic_write(probe, payload, self._root)
            if _fs.read_bytes(probe) != payload:
                raise StorageError(f"health probe {probe} read back different bytes")
            _fs.unlink(probe)
            usage = shutil.disk_usage(self._root)
        except OSError as e:
            raise _fs.os_error(e, "probing", probe) from e
        return {
            "base_dir": str(self._root),
            "format_version": self._version,
            "free_bytes": usage.free,
            "writable": True,
        }

    async def _collect_stats(self, now_ms: int) -> dict[str, Any]:
        return await asyncio.to_thread(self._collect_stats_sync, now_ms)

    def _collect_stats_sync(self, now_ms: int) -> dict[str, Any]:
        """One pass over the tree in one thread (the generic version costs an await or two
        per file, and lists the folders twice). Nothing unreadable fails it as a whole: a
        broken, refused (link, FIFO) or permission-denied file counts as unreadable."""
        stats = dict.fromkeys(
            ["conversation_count", "expired_conversation_count", "raw_message_count", "memory_count", "chunk_count",
             "agent_count", "reasoning_chain_count", "cache_entry_count", "expired_cache_entry_count",
             "system_state_count", "unreadable_count"],
            0,
        )  # fmt: skip
        counters = {Kind.RAW_MESSAGES: "raw_message_count", Kind.MEMORIES: "memory_count",
                    Kind.CHUNKS: "chunk_count", Kind.REASONING_CHAINS: "reasoning_chain_count"}  # fmt: skip

        def count(kind: Kind, path: Path) -> bool:
            """Count one file; True if it exists (readable or not; a stored null too)."""
            try:
                if _fs.regular_size(path) is None:
                    return False
                logs = (Kind.RAW_MESSAGES, Kind.REASONING_CHAINS)
                value: Any = self._read_log_settled(kind, path) if kind in logs else self._load_sync(kind, path)
                if kind is Kind.CACHE:
                    expired = cache_entry(value, path, decode_name(path.stem) or "").expired(now_ms)
                    stats["expired_cache_entry_count" if expired else "cache_entry_count"] += 1
                elif kind in counters:
                    stats[counters[kind]] += len(value)
            except (StorageError, OSError):
                stats["unreadable_count"] += 1
            return True

        # Conversations: one listing per folder, one open + read per file present (_file_scan).
        scan = scan_conversations(self._root / "conversations", now_ms, self._meta_expired, self._read_log_settled)
        for name in ("conversation_count", "expired_conversation_count", "raw_message_count", "memory_count",
                     "chunk_count", "unreadable_count"):  # fmt: skip
            stats[name] += getattr(scan, name)
        for entry in _fs.scandir(self._root / "agents"):
            if decode_name(entry.name) is None or entry.is_file(follow_symlinks=False):
                continue
            if not entry.is_dir(follow_symlinks=False):
                stats["unreadable_count"] += 1
                continue
            stats["agent_count"] += count(Kind.REASONING_CHAINS, Path(entry.path, CHAINS_FILE))
        for key in self._list_json_files("cache"):
            count(Kind.CACHE, self.path_of(Kind.CACHE, key))
        for key in self._list_json_files("system"):
            stats["system_state_count"] += count(Kind.SYSTEM, self.path_of(Kind.SYSTEM, key))
        # The scan summed conversations/ already: the other folders are walked.
        others = (folder for folder in FOLDERS if folder != "conversations")
        stats["total_bytes"] = scan.total_bytes + sum(_housekeeping.file_bytes(self._root / f) for f in others)
        stats["backup_bytes"] = _housekeeping.backup_bytes(self._root)
        return stats

    async def _total_bytes(self) -> int:
        return await asyncio.to_thread(self._total_bytes_sync)

    def _total_bytes_sync(self) -> int:
        """Bytes of the data files (the four folders; housekeeping is ``backup_bytes``)."""
        return sum(_housekeeping.file_bytes(self._root / folder) for folder in FOLDERS)

    async def verify(self) -> list[Problem]:
        """Every file that does not parse or has the wrong shape, every link, FIFO, socket
        or device anywhere below base_dir, every stray entry and leftover temp file, and
        every damaged journal record. Changes nothing."""
        self._require_initialized()
        found = await asyncio.to_thread(_housekeeping.find_problems, self._root)
        refused = {p.location for p in found}
        problems: list[Problem] = []
        for kind, key in await self._entities():
            try:
                await self._readers[kind](key)
            except StorageError as e:
                path = self.path_of(kind, key)
                if isinstance(e, StorageIOError) and refused & {str(path), str(path.parent)}:
                    continue  # the link (or FIFO...) is already named below
                problems.append(Problem(getattr(e, "path", None) or str(path), str(e)))
        problems += await self._kv_verify(refused)  # kv/ entries and strays
        problems += await asyncio.to_thread(self._tx_problems)  # journals a dead process left
        return problems + found

    async def _entities(self) -> list[tuple[Kind, str]]:
        """(kind, id) of every stored entity: live conversations with all their parts, and
        the metadata of expired ones too (cleanup() has yet to remove them)."""
        live, expired = await asyncio.to_thread(self._conversations_sync, self._now_ms())
        found = [(kind, c) for c in live for kind in PART_FILES]
        found += [(Kind.METADATA, c) for c in expired]
        found += [(Kind.REASONING_CHAINS, a) for a in await self._list_agents()]
        found += [(Kind.CACHE, k) for k in await self._list_all_cache_keys()]
        found += [(Kind.MESSAGE, k) for k in await self._msg_ids()]
        found += [(Kind.READ_STATE, a) for a in await self._msg_readers()]
        return found + [(Kind.SYSTEM, k) for k in await self._list_system_states()]

    @property
    def _readers(self) -> dict[Kind, Callable[[str], Awaitable[Any]]]:
        """How a load reads each kind (verify reads the same way)."""
        return {
            Kind.CONVERSATION: partial(self._read_document, Kind.CONVERSATION),
            Kind.CHUNKS: partial(self._read_document, Kind.CHUNKS),
            Kind.SYSTEM: partial(self._read_document, Kind.SYSTEM),
            Kind.RAW_MESSAGES: partial(self._read_log, Kind.RAW_MESSAGES),
            Kind.REASONING_CHAINS: partial(self._read_log, Kind.REASONING_CHAINS),
            Kind.MEMORIES: self._read_members,
            Kind.CACHE: self._read_cache,
            Kind.METADATA: self._meta_read_strict,
            Kind.MESSAGE: self._msg_get,
            Kind.READ_STATE: self._msg_read_ids,
        }

    # ------------------------------------------------------------- housekeeping

    async def cleanup(self) -> dict[str, int]:
        removed = await super().cleanup()
        if self._newly_indexed:
            # Metadata with an expiry written by hand, indexed by this cleanup's full pass:
            # an expired one goes now too, not at the next cleanup.
            self._newly_indexed = 0
            removed["expired_conversations"] += await self._remove_expired_conversations(self._now_ms())
        return removed

    async def _cleanup_housekeeping(self, now_ms: int) -> dict[str, int]:
        """Stale temp files, and backups and lock files of entities gone for longer than
        ``backup_retention`` (see _housekeeping.Cleanup)."""
        retention = float(getattr(self.settings, "backup_retention", 604800.0))
        cleanup = _housekeeping.Cleanup(self._root, self._locks, self._parse_relative, self._entity)
        try:
            removed = await asyncio.to_thread(self._cleanup_sync, cleanup, now_ms, round(retention * 1000))
            removed["recovered_appends"] = await asyncio.to_thread(self._recover_cut_appends)
        except OSError as e:
            raise _fs.os_error(e, "cleaning up", self._root) from e
        return removed

    def _cleanup_sync(self, cleanup: _housekeeping.Cleanup, now_ms: int, retention_ms: int) -> dict[str, int]:
        """Under the tree's transaction lock: interrupted transactions are finished first, so
        the temp files a committed one still needs are never removed as leftovers."""
        import time

        try:
            tree = self._locks.take(TREE_LOCK, time.monotonic() + self._locks.timeout)
        except LockTimeoutError as e:
            logger.warning("cleanup() leaves temp files alone this time: %s", e)
            return cleanup.run(now_ms, retention_ms, temp_files=False)
        assert tree is not None
        try:
            self._tx_recover_sync(True, set(), time.monotonic() + self._locks.timeout)
            removed = cleanup.run(now_ms, retention_ms)
            # A full pass: folders without a part go, metadata written by hand with an
            # expiry is indexed, stale index entries go; a version-1 tree is upgraded once
            # nothing stands in the way.
            self._newly_indexed += self._upgrade_sync(prune=True).indexed
            return removed
        finally:
            tree.__exit__()
            # Like the lock files of gone entities: no transaction is running, so it goes
            # (safely: a locker checks it still holds the file the name refers to).
            remove_unused(self._locks.lock_path(TREE_LOCK))

    def _recover_cut_appends(self) -> int:
        """Finish or undo each append a crash cut short, so that the file itself (what an
        editor or ``git diff`` sees) is whole again, not only what reads return; an entity
        whose lock is held is left for its own writer, which recovers it first."""
        pending = self._logs.cut_short()
        if not pending:
            return 0

        def recover(path: Path) -> bool:
            self._logs.recover(path)
            return True

        recovered = 0
        for kind, folder in ((Kind.RAW_MESSAGES, "conversations"), (Kind.REASONING_CHAINS, "agents")):
            for entry in _fs.scandir(self._root / folder):
                key = decode_name(entry.name)
                if key is None:
                    continue
                path = self.path_of(kind, key)
                if self._logs.journal_path(path).name in pending:
                    recovered += bool(self._locks.try_hold(self._entity(kind, key), recover, path))
        return recovered

    # -------------------------------------------------------------------- watch

    async def watch(
        self,
        *,
        debounce_ms: int = DEFAULT_DEBOUNCE_MS,
        stop_event: asyncio.Event | None = None,
        ready: asyncio.Event | None = None,
    ) -> AsyncIterator[ChangeEvent]:
        """Yield a ChangeEvent for each data file anyone adds, modifies or deletes.

        A burst of notifications is gathered for at most ``debounce_ms`` (it ends sooner
        once 50 ms pass quietly) and gives one event per file. Ends on cancellation, when
        ``stop_event`` is set, or at ``shutdown()``; ``ready`` is set once watching has
        begun. A file that no longer parses is reported with ``valid=False``, never
        raised. docs/watch.md has the details.
        """
        self._require_initialized()
        events = watch_tree(self, self._own, debounce_ms=debounce_ms, stop_event=stop_event, ready=ready)
        async with aclosing(events):
            async for event in events:
                yield event

    # ------------------------------------------------------------------ backups

    async def list_backups(self, relative_path: str | Path) -> list[_fs.BackupVersion]:
        """Kept versions of one file (path relative to ``base_dir``), oldest first."""
        self._require_initialized()
        self._parse_relative(relative_path)
        return await asyncio.to_thread(_fs.list_backups, self._root, Path(relative_path))

    async def restore_backup(self, relative_path: str | Path, number: int | None = None) -> _fs.BackupVersion:
        """Put a kept version back: version ``number``, or else the newest one that reads
        correctly (a broken hand edit is kept too when it gets replaced, so the newest kept
        version is not always a good one).

        The version it replaces is itself kept. Raises InvalidArgumentError when the path
        is not a data file of the tree, or no such (readable) version is kept.
        """
        self._require_initialized()
        kind, key = self._parse_relative(relative_path)
        return await self._locked(kind, key, self._restore_sync, kind, key, Path(relative_path), number)  # type: ignore[no-any-return]

    def _restore_sync(self, kind: Kind, key: str, relative: Path, number: int | None) -> _fs.BackupVersion:
        versions = _fs.list_backups(self._root, relative)
        kept = ", ".join(str(v.number) for v in versions) or "none"
        if number is not None:
            candidates = [v for v in versions if v.number == number]
            if not candidates:
                raise InvalidArgumentError(f"no kept version {number} of {relative} (kept: {kept})")
        else:
            candidates = [v for v in reversed(versions) if self._readable(kind, key, v.path)]
            if not candidates:
                raise InvalidArgumentError(
                    f"no kept version of {relative} reads correctly (kept: {kept}); "
                    "pick one with --version, or fix the file by hand"
                )
        data = _fs.read_bytes(candidates[0].path)
        if data is None:
            raise InvalidArgumentError(f"kept version {candidates[0].number} of {relative} vanished")
        path = self._root / relative
        if kind is Kind.METADATA:
            self._write_meta_bytes(path, data, self._meta_bytes_expire(data, path, key))
        else:
            self._replace_file(path, data)
        return candidates[0]

    def _readable(self, kind: Kind, key: str, path: Path) -> bool:
        if kind is Kind.KV:
            return self._kv_readable(key, path)
        try:
            value = self._load_sync(kind, path)
            if kind is Kind.CACHE:
                cache_entry(value, path, key)
            if kind is Kind.METADATA and value is not None:
                self._meta_record(value, path, key)
        except CorruptedDataError:
            return False
        return True

    def _parse_relative(self, relative_path: str | Path) -> tuple[Kind, str]:
        """(kind, id) of a data file path relative to the base dir, else InvalidArgumentError."""
        parts = Path(relative_path).parts
        kind: Kind | None = None
        key: str | None = None
        if len(parts) == 3 and parts[0] == "conversations":
            kind = next((k for k, f in PART_FILES.items() if f == parts[2]), None)
            key = decode_name(parts[1])
        elif len(parts) == 3 and parts[0] == "agents" and parts[2] in (CHAINS_FILE, READ_STATE_FILE):
            kind = Kind.REASONING_CHAINS if parts[2] == CHAINS_FILE else Kind.READ_STATE
            key = decode_name(parts[1])
        elif len(parts) == 2 and parts[0] in FLAT_FOLDERS and parts[1].endswith(".json"):
            kind = next(k for k, folder in _FLAT.items() if folder == parts[0])
            key = decode_name(parts[1][: -len(".json")])
        elif (entry := kv_entity_of(parts)) is not None:
            kind, key = Kind.KV, kv_id(*entry)
        if kind is None or key is None:
            raise InvalidArgumentError(
                f"{relative_path} is not a data file of the tree; give a path relative to the "
                "base dir such as conversations/conv_001/current.json"
            )
        return kind, key
