"""Transactions on the file tree: one intent journal per commit (docs/file-format.md).

Locking. A transaction holds the tree-wide transaction lock (``.locks/``, the lock of the
pseudo-entity ``.transactions``) from its start to its end, so one transaction runs at a
time and none can deadlock another. Each entity it reads or writes is locked on first
touch with the very lock single writes take (a conversation, an agent, a cache entry, a
system state, a key-value entry) and held until the end, so outside writers of it wait
(up to ``connection_timeout``). Locks go tree first, then entities; a single write takes
one entity lock and never waits for anything else while holding it, so there is no cycle.

Commit, in one worker thread, under those locks:

1. every op is applied in memory to the files it changes, read once from disk, with the
   semantics of the tree's own hooks (an expired conversation is removed whole first,
   ``message_count`` follows the raw history, a replaced memory keeps its place, a
   key-value entry keeps ``created_at``, an emptied list removes its file);
2. ``.transactions/.tmp-<pid>-<id>`` is written, naming every temp file about to be
   staged (so a commit cut short before step 4 can be undone) and the SHA-256 of each
   new file;
3. each new file is written as a temp file next to its target and fsynced; backups of
   the versions about to be replaced or deleted are kept;
4. the journal is fsynced, renamed to ``.transactions/<id>.json`` and its folder fsynced:
   the commit point (one journal fsync and one folder fsync for the whole transaction);
5. the renames and deletes are applied and their folders fsynced (each folder once);
   each log rewritten has its append record set to the new file (a log is rewritten
   whole inside a transaction; the next append outside goes in place again); the journal
   is removed (durably when the transaction deleted a file).

A temp file's own folder is not fsynced before the commit point: the journal's folder
fsync comes after the temp files were made, and filesystems that keep a folder's changes
in order (ext4, XFS, APFS) then keep them too. Where a power cut still loses one,
recovery sees it (the target does not hold the new bytes) and sets the journal aside as
damaged, naming the file, for ``verify()`` to report.

Recovery (``_tx_recover_sync``) always holds the tree lock, then the locks of the
entities a journal names: a committed journal (``<id>.json``) is finished (each rename
whose temp is still there is redone, each delete redone), an uncommitted one
(``.tmp-*``) undone (its temps removed). It runs at ``initialize()``, when a transaction
begins, before a single write under its entity's lock when a journal names that entity,
and before reads (without waiting for any lock there: a reader never waits). A journal
exists only while its committer holds the tree lock and every entity it names, so one
found by someone holding the tree lock, or naming an entity the finder holds, belongs to
a process that died. The check that no journal exists costs one ``stat`` of the folder.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import os
import secrets
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from ..codec import decode, format_time
from ..errors import CorruptedDataError, InvalidArgumentError, LockTimeoutError, StorageError, TransactionError
from ..interface import CONVERSATION_PARTS, CacheEntry, Kind, Problem
from ..kv import KVRecord
from . import _folders, _fs
from ._file_kv import entry_bytes, kv_id, parse_entry
from ._layout import LOG_FILES, PART_FILES, check_shape, remove_empty_dir
from ._locks import Held, RetryLater, os_lock

if TYPE_CHECKING:
    from ..config import FileSettings
    from ..conversations import MetaRecord
    from ..transaction import Op
    from ._applog import AppendLog
    from ._layout import CaseGuard
    from ._locks import EntityLocks
    from ._watch import OwnWrites

__all__ = ["TX_DIR", "FileTransactions"]

TX_DIR = ".transactions"
TREE_LOCK = ".transactions"  # the lock name of the tree-wide transaction lock
DAMAGED = ".damaged"
logger = logging.getLogger("connectome_storage")
_ABSENT: Any = object()  # a file that is not there (None is a value: a system state may be null)
_UNREAD: Any = object()
# A folder whose last change is older than this (by its mtime) can be trusted to show a
# later change by a new mtime, whatever the filesystem's timestamp granularity.
_QUIET_NS = 3_000_000_000


@dataclass
class _TxState:
    tree: Held
    held: dict[str, Held] = field(default_factory=dict)  # entity lock name -> lock


@dataclass
class _File:
    """One file a commit may change: its bytes when first read, and its value now."""

    path: Path
    kind: Kind
    key: str
    raw: bytes | None
    value: Any = _UNREAD
    changed: bool = False
    replaced: bool = False  # by anything but an append (a backup is kept, as single writes do)


class FileTransactions:
    """The ``_tx_*`` hooks of FileStorage and the recovery of interrupted commits."""

    if TYPE_CHECKING:  # provided by FileStorage
        _root: Path
        _conversations_dir: str
        _expiry: _folders.ExpiryIndex
        _locks: EntityLocks
        _logs: AppendLog
        _own: OwnWrites
        _case: CaseGuard
        _keep: int
        settings: FileSettings
        create_on_open: bool

        def path_of(self, kind: Kind, key: str) -> Path: ...
        def _entity(self, kind: Kind, key: str) -> str: ...
        def _parse_relative(self, relative_path: str | Path) -> tuple[Kind, str]: ...
        def _stamp(self) -> str: ...
        def _now_ms(self) -> int: ...
        def _encode(self, value: Any) -> bytes: ...
        def _meta_record(self, value: Any, path: Path, conversation_id: str) -> MetaRecord: ...
        def _kv_keys_in(self, namespace: str) -> Any: ...

    _quiet_mtime: int | None = None  # the journal folder's mtime when last seen empty (and quiet)

    # ------------------------------------------------------------------ hooks

    async def _tx_begin(self) -> Any:
        deadline = time.monotonic() + self._locks.timeout
        tree = await self._locks.hold(TREE_LOCK, deadline)
        try:
            if self._journals_busy():  # a process died in a commit: finish or undo it first
                recovery = asyncio.ensure_future(asyncio.to_thread(self._tx_recover_sync, True, set(), deadline))
                try:
                    await asyncio.shield(recovery)
                except asyncio.CancelledError:
                    recovery.add_done_callback(lambda _done: tree.release())
                    raise
        except asyncio.CancelledError:
            raise
        except BaseException:
            tree.release()
            raise
        return _TxState(tree)

    async def _tx_touch(self, state: Any, entity: tuple[str, ...]) -> None:
        name = self._tx_lock_name(entity)
        if name is not None and name not in state.held:
            state.held[name] = await self._locks.hold(name, time.monotonic() + self._locks.timeout)

    async def _tx_commit(self, state: Any, ops: list[Op]) -> None:
        if not ops:
            self._tx_release(state)
            return
        commit = asyncio.ensure_future(asyncio.to_thread(self._tx_commit_sync, state, ops))
        try:
            await asyncio.shield(commit)
        except asyncio.CancelledError:
            # The commit goes on in its thread: its locks are released only once it is done.
            commit.add_done_callback(lambda done: self._tx_release_after(done, state))
            raise
        except BaseException:
            self._tx_release(state)
            raise
        self._tx_release(state)

    async def _tx_abort(self, state: Any) -> None:
        self._tx_release(state)

    def _tx_release_after(self, done: asyncio.Future[None], state: _TxState) -> None:
        if not done.cancelled() and done.exception() is not None:
            logger.error("a cancelled transaction's commit failed: %s", done.exception())
        self._tx_release(state)

    def _tx_release(self, state: _TxState) -> None:
        for held in reversed(list(state.held.values())):
            held.release()
        state.held.clear()
        state.tree.release()

    def _tx_lock_name(self, entity: tuple[str, ...]) -> str | None:
        """The lock a single write of ``entity`` takes."""
        match entity:
            case ("conversation", key):
                return self._entity(Kind.CONVERSATION, key)
            case ("agent", key):
                return self._entity(Kind.REASONING_CHAINS, key)
            case ("cache", key):
                return self._entity(Kind.CACHE, key)
            case ("system", key):
                return self._entity(Kind.SYSTEM, key)
            case ("kv", namespace, key):
                return self._entity(Kind.KV, kv_id(namespace, key))
        return None  # not a file entity: the commit locks every file it changes anyway

    # ------------------------------------------------------------- the commit

    def _tx_commit_sync(self, state: _TxState, ops: list[Op]) -> None:
        deadline = time.monotonic() + self._locks.timeout
        staging = _Staging(self, set(state.held), deadline)
        try:
            now_ms = self._now_ms()
            for op in ops:
                self._tx_apply(staging, op, now_ms)
            changes = staging.changes()
            if changes:
                self._tx_write(changes, sorted(set(state.held) | {name for name, _ in staging.extra}))
        finally:
            for _name, lock in staging.extra:
                lock.__exit__()

    def _tx_write(self, changes: list[tuple[_File, bytes | None]], entities: list[str]) -> None:
        """Stage, journal, apply (steps 2 to 5 of the module docstring)."""
        pid = os.getpid()
        txid = f"{self._stamp()}-{pid}-{secrets.token_hex(4)}"
        folder = self._root / TX_DIR
        # A file of a conversation whose folder does not exist is staged in a hidden
        # ``.new-`` folder (under its final name), renamed into place whole at apply: a
        # folder of conversations/ is a conversation, so it must not appear before the commit.
        staged: dict[Path, Path] = {}  # conversation folder -> its staging folder
        renames = []
        for f, data in changes:
            if data is None:
                continue
            if self._tx_new_folder(f.path.parent):
                if f.path.parent not in staged:
                    staged[f.path.parent] = f.path.parent.with_name(_fs.unique_name(_fs.NEW_PREFIX))
                renames.append((staged[f.path.parent] / f.path.name, f, data))
            else:
                renames.append((f.path.with_name(f"{_fs.TEMP_PREFIX}{pid}-{secrets.token_hex(6)}"), f, data))
        deletes = [f for f, data in changes if data is None]
        record = {
            "transaction": txid,
            "entities": entities,
            "renames": [[self._rel(temp), self._rel(f.path)] for temp, f, _data in renames],
            "deletes": [self._rel(f.path) for f in deletes],
            # What each renamed file must hold: recovery tells a rename done from a temp lost.
            "digests": [hashlib.sha256(data).hexdigest() for _temp, _f, data in renames],
        }
        if staged:
            record["folders"] = [[self._rel(new), self._rel(target)] for target, new in staged.items()]
        expiring = [
            f.path.parent.name for f, data in changes if data is not None and f.kind is Kind.METADATA
            and f.value.expires_ms is not None
        ]  # fmt: skip
        draft = folder / f"{_fs.TEMP_PREFIX}{pid}-{txid}"
        journal = folder / f"{txid}.json"
        kept: list[_fs.Kept] = []
        try:
            try:
                _fs.ensure_dir(folder, self._root)
                _write_new(draft, orjson.dumps(record), sync=False)  # names the temps: undone if cut short
                for new in staged.values():
                    _fs.ensure_dir(new.parent, self._root)
                    os.mkdir(new)
                for temp, _f, data in renames:
                    _fs.ensure_dir(temp.parent, self._root)
                    _write_new(temp, data, sync=True)
                for f in [f for _t, f, _d in renames] + deletes:
                    kept.append(self._tx_before_replace(f))
                for name in expiring:  # before the metadata can be seen (_folders.ExpiryIndex)
                    self._expiry.add(name)
                _fsync_file(draft)
                os.replace(draft, journal)
                _fs.fsync_dir(folder)  # the commit point
            except BaseException:
                self._tx_undo(draft, [temp for temp, _f, _d in renames], kept, list(staged.values()))
                raise
        except OSError as e:
            raise _fs.os_error(e, "committing a transaction in", self._root) from e
        try:
            self._tx_finish(record, recovering=False)
            for _temp, f, _data in renames:
                if f.path.name in LOG_FILES:
                    # Rewritten whole: record its state, so the next append outside goes in place.
                    self._logs.adopt(f.path, len(f.value))
            for f in deletes:
                if f.path.name in LOG_FILES:
                    self._logs.forget(f.path)
            for k in kept:
                _fs.prune_backups(k)
            for f, data in changes:
                # After the metadata lost its expiry (or went): its index entry goes.
                if f.kind is Kind.METADATA and (data is None or f.value.expires_ms is None):
                    self._expiry.discard(f.path.parent.name)
            os.unlink(journal)
            if deletes:
                # Made durable, so that a power cut cannot bring the journal back and have a
                # file created after this commit deleted again by its redo.
                _fs.fsync_dir(folder)
        except (OSError, StorageError) as e:
            raise TransactionError(
                f"transaction {txid} is committed (journal {journal}) but applying it stopped: {e}; "
                "it is finished at the next access to the storage, or its next initialize()"
            ) from e

    def _tx_before_replace(self, f: _File) -> _fs.Kept:
        """Before the journal: keep the version replaced (as single writes do)."""
        if f.raw is None:
            return _fs.Kept(None)
        keep = 0 if f.kind is Kind.CACHE or not f.replaced else self._keep
        return _fs.keep_backup(self._root, f.path, keep, self._stamp())

    def _tx_new_folder(self, folder: Path) -> bool:
        """Whether ``folder`` is a conversation folder that does not exist (yet)."""
        if str(folder.parent) != self._conversations_dir:
            return False
        try:
            os.lstat(folder)
        except FileNotFoundError:
            return True
        return False

    def _tx_undo(self, draft: Path, temps: list[Path], kept: list[_fs.Kept], staged: list[Path]) -> None:
        """A commit abandoned before its commit point: nothing of it stays."""
        for path in [*temps, draft]:
            with suppress(OSError):
                os.unlink(path)
        for new in staged:
            _fs.discard_folder(new)
        for k in kept:
            if k.version is not None:
                with suppress(OSError):
                    k.version.unlink()
        for temp in temps:
            if temp.parent.parent.name in ("conversations", "agents", "kv"):
                with suppress(OSError):
                    remove_empty_dir(temp.parent)

    def _tx_finish(self, record: dict[str, Any], *, recovering: bool) -> list[str]:
        """Apply a committed journal's renames and deletes; each is skipped when done already.
        Returns the targets whose temp file is gone although the target does not hold the
        new bytes (lost by a power cut on a filesystem that does not keep a folder's changes
        in order): recovery cannot finish those, and says so."""
        folders, lost = set(), []
        moved = set()
        for new_name, target_name in record.get("folders", []):
            # A new conversation's folder, staged whole: renamed into place. Should a
            # folder be there by now (made by hand), its files are moved one by one below.
            new, target = self._root / new_name, self._root / target_name
            if not os.path.lexists(new):
                continue  # renamed already (a recovery after the apply)
            if not os.path.lexists(target):
                os.rename(new, target)
                moved.add(new)
            folders.add(new.parent)
        digests = record.get("digests") or [None] * len(record["renames"])
        for (temp_name, target_name), digest in zip(record["renames"], digests, strict=True):
            temp, target = self._root / temp_name, self._root / target_name
            if recovering and target.name in LOG_FILES:
                self._logs.forget(target)  # its append record may describe the version replaced
            if temp.parent in moved:
                self._own.wrote(target)
            elif os.path.lexists(temp):
                _fs.ensure_dir(target.parent, self._root)
                os.replace(temp, target)
                self._own.wrote(target)
            elif recovering and digest is not None and _digest(target) != digest:
                lost.append(target_name)
            folders.add(target.parent)
        for new_name, _target_name in record.get("folders", []):
            with suppress(OSError):
                os.rmdir(self._root / new_name)  # emptied by the renames above, if not moved whole
        emptied = set()
        by_folder: dict[Path, set[str]] = {}
        for target_name in record["deletes"]:
            target = self._root / target_name
            by_folder.setdefault(target.parent, set()).add(target.name)
        for parent, names in by_folder.items():
            if str(parent.parent) == self._conversations_dir and self._tx_retire(parent, names):
                folders.add(parent.parent)
                continue
            for name in names:
                target = parent / name
                if _fs.regular_size(target) is not None:
                    os.unlink(target)
                    self._own.removed(target)
            folders.add(parent)
            if parent.parent.name in ("agents", "kv"):
                emptied.add(parent)
        for folder in folders:
            if folder.is_dir():
                _fs.fsync_dir(folder)
        for folder in emptied:
            remove_empty_dir(folder)
        return lost

    def _tx_retire(self, folder: Path, names: set[str]) -> bool:
        """When deleting ``names`` leaves the conversation folder without a part: it goes
        whole (renamed away, see ``_fs.retire_folder``; the backups were kept before the
        commit point). True if it did (or is gone already)."""
        try:
            os.lstat(folder)
        except FileNotFoundError:
            return True
        present = {e.name for e in _fs.scandir(folder) if e.name in names}
        if not present or not _folders.only_parts_leave(folder, present):
            return False
        _fs.retire_folder(folder)
        for name in present:
            self._own.removed(folder / name)
        self._expiry.discard(folder.name)
        return True

    def _rel(self, path: Path) -> str:
        return path.relative_to(self._root).as_posix()

    # ------------------------------------------------- ops, applied in memory

    def _tx_apply(self, files: _Staging, op: Op, now_ms: int) -> None:
        name, args = op.name, op.args
        if name in ("write_document", "replace_log"):
            kind, key, value = args
            count = len(value) if kind is Kind.RAW_MESSAGES else None
            self._tx_part(files, kind, key, now_ms, lambda: files.put(kind, key, value), count)
        elif name == "delete":
            kind, key = args
            self._tx_part(files, kind, key, now_ms, lambda: files.put(kind, key, _ABSENT), 0)
        elif name == "append_log":
            kind, key, items = args

            def append() -> None:
                log = files.get(kind, key)
                files.put(kind, key, [*files.read(log, []), *items], append=True)

            self._tx_part(files, kind, key, now_ms, append, None)
        elif name == "put_member":
            self._tx_part(files, Kind.MEMORIES, args[0], now_ms, lambda: self._tx_put_member(files, *args), None)
        elif name == "delete_member":
            self._tx_part(files, Kind.MEMORIES, args[0], now_ms, lambda: self._tx_delete_member(files, *args), None)
        elif name == "delete_conversation":
            self._tx_drop_conversation(files, args[0])
        elif name == "write_cache":
            self._tx_write_cache(files, args[0])
        elif name == "meta_put":
            conversation_id, record = args
            if record is not None:
                self._tx_live_meta(files, conversation_id, now_ms)
            files.put(Kind.METADATA, conversation_id, _ABSENT if record is None else record)
        elif name.startswith("kv_"):
            self._tx_apply_kv(files, name, args)
        else:  # pragma: no cover - a new op must be taught to the file tree
            raise TransactionError(f"the file tree cannot commit a {name!r} operation")

    def _tx_part(
        self, files: _Staging, kind: Kind, key: str, now_ms: int, action: Callable[[], None], count: int | None
    ) -> None:
        """As FileStorage._part_step: an expired conversation goes whole first; a change to
        the raw history sets the metadata's message_count."""
        if kind not in CONVERSATION_PARTS:
            action()
            return
        record = self._tx_live_meta(files, key, now_ms)
        action()
        if kind is Kind.RAW_MESSAGES and record is not None:
            if count is None:  # an append: the log's new length
                count = len(files.read(files.get(kind, key), []))
            if record.message_count != count:
                files.put(Kind.METADATA, key, dataclasses.replace(record, message_count=count))

    def _tx_live_meta(self, files: _Staging, conversation_id: str, now_ms: int) -> MetaRecord | None:
        meta = files.get(Kind.METADATA, conversation_id)
        try:
            record = files.read(meta, None)
        except CorruptedDataError as e:
            logger.warning("%s; its message_count is left as it is", e)
            return None
        if record is not None and record.expired(now_ms):
            self._tx_drop_conversation(files, conversation_id)
            return None
        return record  # type: ignore[no-any-return]

    def _tx_drop_conversation(self, files: _Staging, conversation_id: str) -> None:
        for kind in PART_FILES:
            files.put(kind, conversation_id, _ABSENT)

    def _tx_put_member(self, files: _Staging, conversation_id: str, memory_id: str, memory: dict[str, Any]) -> None:
        memories = list(files.read(files.get(Kind.MEMORIES, conversation_id), []))
        for index, existing in enumerate(memories):
            if existing["memory_id"] == memory_id:
                memories[index] = memory  # a replaced memory keeps its place
                break
        else:
            memories.append(memory)
        files.put(Kind.MEMORIES, conversation_id, memories)

    def _tx_delete_member(self, files: _Staging, conversation_id: str, memory_id: str) -> None:
        memories = files.read(files.get(Kind.MEMORIES, conversation_id), [])
        remaining = [m for m in memories if m["memory_id"] != memory_id]
        if len(remaining) != len(memories):
            files.put(Kind.MEMORIES, conversation_id, remaining or _ABSENT)

    def _tx_write_cache(self, files: _Staging, entry: CacheEntry) -> None:
        envelope = {
            "cache_key": entry.key,
            "created_at": format_time(entry.created_ms),
            "expires_at": None if entry.expires_ms is None else format_time(entry.expires_ms),
            "data": entry.data,
        }
        files.put(Kind.CACHE, entry.key, envelope)

    def _tx_apply_kv(self, files: _Staging, name: str, args: tuple[Any, ...]) -> None:
        namespace = args[0]
        if name == "kv_put":
            records, now_ms = args[1], args[2]
            for record in records:
                entry = files.get(Kind.KV, kv_id(namespace, record.key))
                try:
                    old = files.read(entry, None)
                except CorruptedDataError:
                    old = None  # storing again repairs a damaged entry, as a single set does
                if old is not None and not old.expired(now_ms) and old.created_ms != record.created_ms:
                    record = dataclasses.replace(record, created_ms=old.created_ms)
                files.put(Kind.KV, entry.key, record)
        elif name == "kv_delete":
            for key in args[1]:
                files.put(Kind.KV, kv_id(namespace, key), _ABSENT)
        elif name == "kv_set_expiry":
            key, expires_ms, now_ms = args[1], args[2], args[3]
            entry = files.get(Kind.KV, kv_id(namespace, key))
            old = files.read(entry, None)
            if old is not None and not old.expired(now_ms):
                files.put(Kind.KV, entry.key, dataclasses.replace(old, expires_ms=expires_ms))
        elif name == "kv_clear":
            keys = set(self._kv_keys_in(namespace)) | files.kv_keys(namespace)
            for key in sorted(keys):
                files.put(Kind.KV, kv_id(namespace, key), _ABSENT)

    # ---------------------------------------------------------------- recovery

    def _journals_busy(self) -> bool:
        """Whether the journal folder holds anything: one ``stat`` while it stays unchanged."""
        folder = os.path.join(self._root, TX_DIR)  # a string: this runs before every read
        try:
            mtime = os.stat(folder).st_mtime_ns
        except (FileNotFoundError, NotADirectoryError):
            return False
        if mtime == self._quiet_mtime:
            return False
        names = [e.name for e in _fs.scandir(Path(folder)) if not e.name.endswith(DAMAGED)]
        if not names and time.time_ns() - mtime > _QUIET_NS:
            self._quiet_mtime = mtime
        return bool(names)

    def _tx_guard(self, entity: str) -> None:
        """Before a single write, holding ``entity``'s lock: finish a dead process's commit
        that names it (EntityLocks.guard)."""
        if not self._journals_busy():
            return
        tree = self._locks.take(TREE_LOCK, 0.0, wait=False)
        if tree is not None:
            try:
                self._tx_recover_sync(True, {entity}, time.monotonic() + self._locks.timeout)
            finally:
                tree.__exit__()
        elif entity in self._journal_entities():
            raise RetryLater  # someone is recovering it and waits for this lock: let go

    def _tx_settle_for_readers(self) -> None:
        """Before a read: finish a dead process's commit, taking no lock that is held (a
        reader never waits); a live commit is left to its committer."""
        try:
            tree = self._locks.take(TREE_LOCK, 0.0, wait=False)
            if tree is None:
                return
            try:
                self._tx_recover_sync(False, set(), time.monotonic())
            finally:
                tree.__exit__()
        except (StorageError, OSError) as e:
            logger.warning("could not finish an interrupted transaction in %s yet: %s", self._root, e)

    def _tx_recover_at_open(self) -> None:
        if not self._journals_busy():
            return  # the common case: nothing to do, and no lock file made
        try:
            tree = self._locks.take(TREE_LOCK, 0.0, wait=False)
            if tree is None:
                return  # a live transaction holds it: it settled every journal when it began
            try:
                self._tx_recover_sync(True, set(), time.monotonic() + self._locks.timeout)
            finally:
                tree.__exit__()
        except LockTimeoutError as e:
            logger.warning("an interrupted transaction in %s is left for the next access: %s", self._root, e)

    def _tx_recover_sync(self, wait: bool, held: set[str], deadline: float) -> bool:
        """Finish every committed journal and undo every uncommitted one; the caller holds
        the tree lock (so each is a dead process's) and the locks in ``held``. Without
        ``wait``, stops (False) at the first entity lock someone holds."""
        folder = self._root / TX_DIR
        for entry in sorted(_fs.scandir(folder), key=lambda e: e.name):
            path = Path(entry.path)
            if entry.name.endswith(DAMAGED):
                continue
            if entry.name.startswith(_fs.TEMP_PREFIX):
                self._tx_undo_draft(path)
                continue
            record = self._tx_read_journal(path)
            if record is None:
                continue
            locks: list[os_lock] = []
            try:
                for name in sorted({self._entity(*self._parse_relative(t)) for t in _targets(record)} - held):
                    lock = self._locks.take(name, deadline, wait=wait)
                    if lock is None:
                        return False
                    locks.append(lock)
                logger.warning("finishing transaction %s, interrupted by the end of its process", path.name)
                lost = self._tx_finish(record, recovering=True)
                if lost:
                    aside = path.with_name(path.name + DAMAGED)
                    logger.error("transaction %s could not be finished: the new %s were lost; set aside as %s",
                                 path.name, ", ".join(lost), aside)  # fmt: skip
                    os.replace(path, aside)
                    _fs.fsync_dir(folder)
                else:
                    _fs.unlink(path)
            except OSError as e:
                raise _fs.os_error(e, "finishing the interrupted transaction", path) from e
            finally:
                for lock in locks:
                    lock.__exit__()
        return True

    def _tx_undo_draft(self, draft: Path) -> None:
        """An uncommitted journal: remove the temp files it names, then it."""
        try:
            record = _valid(self, orjson.loads(_fs.read_bytes(draft) or b""))
            temps = [self._root / temp for temp, _target in record["renames"]]
            staged = [self._root / new for new, _target in record.get("folders", [])]
        except (orjson.JSONDecodeError, StorageError, OSError, ValueError, TypeError, KeyError):
            temps, staged = [], []  # cut short while being written: no temp file was staged yet
        for temp in temps:
            with suppress(FileNotFoundError):
                os.unlink(temp)
        for new in staged:
            _fs.discard_folder(new)
        with suppress(FileNotFoundError):
            os.unlink(draft)

    def _tx_read_journal(self, path: Path) -> dict[str, Any] | None:
        """A committed journal, checked (every path a data file of the tree, every temp
        next to its target); a damaged one is set aside for verify() to name."""
        try:
            return _valid(self, orjson.loads(_fs.read_bytes(path) or b""))
        except (orjson.JSONDecodeError, ValueError, TypeError, KeyError, InvalidArgumentError) as e:
            aside = path.with_name(path.name + DAMAGED)
            logger.error("transaction journal %s is damaged (%s); set aside as %s", path, e, aside)
            os.replace(path, aside)
            return None

    def _journal_entities(self) -> set[str]:
        """The entities named by the committed journals there now (damaged ones name none)."""
        names: set[str] = set()
        for entry in _fs.scandir(self._root / TX_DIR):
            if entry.name.endswith(".json") and not entry.name.startswith("."):
                with suppress(Exception):
                    record = _valid(self, orjson.loads(_fs.read_bytes(Path(entry.path)) or b""))
                    names |= {self._entity(*self._parse_relative(t)) for t in _targets(record)}
        return names

    def _tx_problems(self) -> list[Problem]:
        """For verify(): journals of transactions a dead process left (a live commit's is not one)."""
        folder = self._root / TX_DIR
        found = []
        for entry in _fs.scandir(folder):
            if entry.name.endswith(DAMAGED):
                found.append(Problem(entry.path, f"{entry.path}: a damaged transaction journal set aside; "
                                                 "check the files it names, then delete it"))  # fmt: skip
        if not self._journals_busy():
            return found
        tree = self._locks.take(TREE_LOCK, 0.0, wait=False)
        if tree is None:
            return found  # a transaction is committing right now
        try:
            for entry in _fs.scandir(folder):
                if not entry.name.endswith(DAMAGED):
                    why = "a transaction interrupted by the end of its process; opening the storage for writing"
                    found.append(Problem(entry.path, f"{entry.path}: {why} finishes or undoes it"))
        finally:
            tree.__exit__()
        return found


class _Staging:
    """The files a commit changes, each read once (under its entity's lock) and changed in memory."""

    def __init__(self, storage: FileTransactions, held: set[str], deadline: float) -> None:
        self._s = storage
        self._held = set(held)
        self._deadline = deadline
        self.extra: list[tuple[str, os_lock]] = []  # locks taken here (entities not touched before)
        self._files: dict[Path, _File] = {}

    def get(self, kind: Kind, key: str) -> _File:
        s = self._s
        path = s.path_of(kind, key)
        found = self._files.get(path)
        if found is not None:
            return found
        name = s._entity(kind, key)
        if name not in self._held:  # kv_clear's entries, say: lock before reading
            lock = s._locks.take(name, self._deadline)
            assert lock is not None
            self.extra.append((name, lock))
            self._held.add(name)
        try:
            if s._case.active and kind is not Kind.KV:
                s._case.check(s._root / name, key)
            _fs.missing_dirs(path.parent, s._root)  # refuses a link in place of a folder
            if path.name in LOG_FILES:
                s._logs.recover(path)  # an append a crash cut short is finished or undone
            raw = _fs.read_bytes(path)
        except IsADirectoryError as e:
            raise CorruptedDataError(str(path), "a folder stands where a file belongs") from e
        except OSError as e:
            raise _fs.os_error(e, "reading", path) from e
        found = self._files[path] = _File(path, kind, key, raw)
        return found

    def read(self, f: _File, default: Any) -> Any:
        """The file's value now (parsed on first use), ``default`` when absent."""
        if f.value is _UNREAD:
            f.value = _ABSENT if f.raw is None else self._parse(f)
        return default if f.value is _ABSENT else f.value

    def _parse(self, f: _File) -> Any:
        assert f.raw is not None
        if f.kind is Kind.KV:
            return parse_entry(f.raw, f.path, f.key.partition("\x00")[2])
        value = check_shape(f.kind, decode(f.raw, str(f.path)), f.path)
        if f.kind is Kind.METADATA:
            return self._s._meta_record(value, f.path, f.key)
        return value

    def put(self, kind: Kind, key: str, value: Any, *, append: bool = False) -> None:
        f = self.get(kind, key)
        if value is _ABSENT and f.raw is None and not f.changed:
            f.value = _ABSENT
            return  # nothing there, nothing to remove
        f.value = value
        f.changed = True
        f.replaced = f.replaced or not append

    def kv_keys(self, namespace: str) -> set[str]:
        prefix = f"{namespace}\x00"
        return {f.key[len(prefix) :] for f in self._files.values() if f.kind is Kind.KV and f.key.startswith(prefix)}

    def changes(self) -> list[tuple[_File, bytes | None]]:
        """(file, new bytes or None to remove) of every file that changes, in a fixed order."""
        out = []
        for path in sorted(self._files):
            f = self._files[path]
            if not f.changed:
                continue
            data = None if f.value is _ABSENT else self._encode(f)
            if data != f.raw:
                out.append((f, data))
        return out

    def _encode(self, f: _File) -> bytes:
        if f.kind is Kind.KV:
            record: KVRecord = f.value
            return entry_bytes(record, self._s.settings.pretty_print_json)
        if f.kind is Kind.METADATA:
            return self._s._encode(f.value.to_document())
        return self._s._encode(f.value)


def _targets(record: dict[str, Any]) -> list[str]:
    return [target for _temp, target in record["renames"]] + list(record["deletes"])


def _valid(storage: FileTransactions, record: Any) -> dict[str, Any]:
    """``record`` if it is a well-formed journal whose paths all stay data files of the
    tree (a hand-edited journal must not make recovery rename or delete anything else)."""
    if not isinstance(record, dict) or not isinstance(record.get("renames"), list):
        raise ValueError("not a transaction journal")
    if not isinstance(record.get("deletes"), list):
        raise ValueError("not a transaction journal")
    digests = record.get("digests")
    if digests is not None and (
        not isinstance(digests, list)
        or len(digests) != len(record["renames"])
        or not all(isinstance(d, str) for d in digests)
    ):
        raise ValueError("digests do not match the renames")
    staged = _valid_folders(record.get("folders", []))
    for pair in record["renames"]:
        temp, target = pair
        if not (isinstance(temp, str) and isinstance(target, str)):
            raise ValueError("a rename is not two paths")
        storage._parse_relative(target)
        head, _, name = temp.rpartition("/")
        target_head, _, target_name = target.rpartition("/")
        if head in staged and staged[head] == target_head and name == target_name:
            continue  # a file of a new conversation folder staged whole
        if head != target_head or not name.startswith(_fs.TEMP_PREFIX):
            raise ValueError(f"temp file {temp!r} is not next to {target!r}")
    for target in record["deletes"]:
        if not isinstance(target, str):
            raise ValueError("a delete is not a path")
        storage._parse_relative(target)
    return record


def _valid_folders(pairs: Any) -> dict[str, str]:
    """{staging folder: conversation folder} of a journal's ``folders``: each a hidden
    ``.new-`` folder of conversations/ and a conversation folder (a name that decodes)."""
    from ..naming import decode_name

    if not isinstance(pairs, list):
        raise ValueError("folders is not a list")
    staged = {}
    for pair in pairs:
        new, target = pair
        if not (isinstance(new, str) and isinstance(target, str)):
            raise ValueError("a folder rename is not two paths")
        new_top, _, new_name = new.partition("/")
        top, _, name = target.partition("/")
        if new_top != "conversations" or top != "conversations" or not new_name.startswith(_fs.NEW_PREFIX):
            raise ValueError(f"folder {new!r} is not a staging folder of conversations/")
        if "/" in new_name or decode_name(name) is None:
            raise ValueError(f"{target!r} is not a conversation folder")
        staged[new] = target
    return staged


def _digest(path: Path) -> str | None:
    data = _fs.read_bytes(path)
    return None if data is None else hashlib.sha256(data).hexdigest()


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | getattr(os, "O_BINARY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_new(path: Path, data: bytes, *, sync: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
