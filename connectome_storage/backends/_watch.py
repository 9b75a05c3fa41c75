"""``FileStorage.watch()``: live change events for the JSON tree, through watchfiles.

watchfiles reports raw notifications (a temp file created, renamed, a folder removed),
grouped into bursts. This module turns each burst into at most one ChangeEvent per data
file by comparing what the file looks like now with what it looked like when last
reported, so a rename dance, a folder moved in or out, or a notification that changed
nothing all come out right without depending on which raw events the OS sent.

A file's look is its signature ``(st_ino, st_mtime_ns, st_size)``: every atomic replace
gives a new inode and every in-place edit a new mtime. The same signature tells the
storage's own writes apart: FileStorage records it (``OwnWrites``) right after each write
and unlink while someone watches, and a change whose result matches the record is its own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import stat
import threading
from collections import OrderedDict
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import watchfiles

from ..errors import InvalidArgumentError, StorageError
from ..interface import DEFAULT_DEBOUNCE_MS, ChangeEvent, Kind
from . import _fs
from ._file_kv import kv_entity_of

if TYPE_CHECKING:
    from .file import FileStorage

__all__ = ["OwnWrites", "watch_tree"]

# A burst ends once this long passes with no new notification (watchfiles' ``step``).
_QUIET_MS = 50
_FOLDERS = frozenset({"conversations", "cache", "agents", "system", "messages", "kv"})

Signature = tuple[int, int, int]


def signature(path: Path) -> Signature | None:
    """``(st_ino, st_mtime_ns, st_size)`` of a regular file, or None if there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None  # gone, or unreadable: either way not a file we can report on
    if not stat.S_ISREG(st.st_mode):
        return None  # a folder where a file belongs is not a stored value
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class _StopSignal:
    """The stop event watchfiles polls (every ``_QUIET_MS``, from its thread).

    A separate object, because watchfiles calls ``set()`` on the event it was given when
    it is cancelled, and the caller's ``stop_event`` must not be set behind their back.
    """

    def __init__(self, outer: Any | None) -> None:
        self._outer = outer
        self._set = False

    def is_set(self) -> bool:
        return self._set or (self._outer is not None and bool(self._outer.is_set()))

    def set(self) -> None:
        self._set = True


class OwnWrites:
    """What one storage object wrote or removed, for as long as someone watches it.

    FileStorage calls ``wrote``/``removed`` from its worker threads right after each
    atomic write or unlink; nothing is recorded (not even a stat) while no watch runs.
    """

    _LIMIT = 4096  # files remembered at most; the oldest records are dropped first

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: OrderedDict[Path, Signature | None] = OrderedDict()
        self._watches: set[_StopSignal] = set()

    def wrote(self, path: Path) -> None:
        if self._watches:
            self._record(path, signature(path))

    def removed(self, path: Path) -> None:
        if self._watches:
            self._record(path, None)

    def _record(self, path: Path, look: Signature | None) -> None:
        with self._lock:
            self._records[path] = look
            self._records.move_to_end(path)
            while len(self._records) > self._LIMIT:
                self._records.popitem(last=False)

    def is_own(self, path: Path, look: Signature | None) -> bool:
        """Whether the file looks exactly as this storage left it."""
        with self._lock:
            if path not in self._records:
                return False
            if self._records[path] == look:
                return True
            # Someone else changed it since: forget the record, so that a later outside
            # change that happens to restore this look (a delete) is not taken for ours.
            del self._records[path]
            return False

    def start(self, signal: _StopSignal) -> None:
        with self._lock:
            self._watches.add(signal)

    def finish(self, signal: _StopSignal) -> None:
        with self._lock:
            self._watches.discard(signal)
            if not self._watches:
                self._records.clear()

    def stop_all(self) -> None:
        """End every running watch (``shutdown()``); each iterator stops within ~50 ms."""
        with self._lock:
            for signal in self._watches:
                signal.set()

    @property
    def watching(self) -> int:
        """How many watches are running."""
        return len(self._watches)


class _Tree:
    """The data files as last reported (path -> signature), and how to read one."""

    def __init__(self, storage: FileStorage, own: OwnWrites) -> None:
        self._storage = storage
        self._root: Path = storage._root
        self._own = own
        self._known: dict[Path, Signature] = {}

    def entity(self, path: Path) -> tuple[Kind, str, str | None] | None:
        """(kind, id, kv namespace or None) if ``path`` is a data file of the layout, else None."""
        try:
            relative = path.relative_to(self._root)
        except ValueError:
            return None
        if not relative.parts or relative.parts[0] not in _FOLDERS:
            return None
        kv = kv_entity_of(relative.parts)
        if kv is not None:
            return Kind.KV, kv[1], kv[0]
        try:
            return (*self._storage._parse_relative(relative), None)
        except InvalidArgumentError:
            return None

    def data_files(self, top: Path) -> Iterator[Path]:
        """Data files at or below ``top`` (the root, a folder or a conversation folder)."""
        if self.entity(top) is not None:
            yield top
            return
        for folder, dirs, files in os.walk(top):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for name in files:
                path = Path(folder, name)
                if self.entity(path) is not None:
                    yield path

    def snapshot(self) -> None:
        for folder in sorted(_FOLDERS):
            for path in self.data_files(self._root / folder):
                look = signature(path)
                if look is not None:
                    self._known[path] = look

    def events(self, raw_paths: set[str]) -> list[ChangeEvent]:
        """One event per data file the burst touched and left different from before."""
        candidates: set[Path] = set()
        for raw in raw_paths:
            path = Path(raw)
            if self.entity(path) is not None:
                candidates.add(path)
            elif self._root in (path, path.parent, path.parent.parent):
                # A folder appeared, vanished or moved: inotify reports only the folder,
                # so look at what it holds now and what it held before.
                candidates.update(known for known in self._known if path in known.parents)
                candidates.update(self.data_files(path))
        events = []
        for path in sorted(candidates):
            event = self._compare(path)
            if event is not None:
                events.append(event)
        return events

    def _compare(self, path: Path) -> ChangeEvent | None:
        entity = self.entity(path)
        if entity is None:
            return None
        before, now = self._known.get(path), signature(path)
        if before == now:
            return None  # nothing changed since the last report (or it came and went)
        change: Literal["added", "modified", "deleted"]
        if now is None:
            change = "deleted"
            del self._known[path]
        else:
            change = "added" if before is None else "modified"
            self._known[path] = now
        kind, key, namespace = entity
        return ChangeEvent(kind, key, change, path, own=self._own.is_own(path, now), namespace=namespace)


async def _checked(storage: FileStorage, event: ChangeEvent) -> ChangeEvent:
    """``event`` with ``valid``/``error`` set by reading the entity the way a load does.

    Going through the storage's own read hooks (not a parse of our own) means ``valid``
    says exactly whether the next load succeeds: same shape checks, and a log caught
    half-way through another process's append in place is read again under its lock.
    """
    if event.change == "deleted":
        return event
    readers: dict[Kind, Callable[[str], Awaitable[Any]]] = {
        Kind.CONVERSATION: lambda key: storage._read_document(Kind.CONVERSATION, key),
        Kind.CHUNKS: lambda key: storage._read_document(Kind.CHUNKS, key),
        Kind.SYSTEM: lambda key: storage._read_document(Kind.SYSTEM, key),
        Kind.RAW_MESSAGES: lambda key: storage._read_log(Kind.RAW_MESSAGES, key),
        Kind.REASONING_CHAINS: lambda key: storage._read_log(Kind.REASONING_CHAINS, key),
        Kind.MEMORIES: storage._read_members,
        Kind.CACHE: storage._read_cache,
        Kind.KV: lambda key: storage._kv_get(event.namespace or "", [key]),
        Kind.METADATA: storage._meta_read_strict,
        Kind.MESSAGE: storage._msg_get,
        Kind.READ_STATE: storage._msg_read_ids,
    }
    try:
        await readers[event.kind](event.id)
    except StorageError as e:
        return dataclasses.replace(event, valid=False, error=str(e))
    return event


class _Filter:
    """Drops what can never be a data file before it reaches Python's side of the loop:
    anything outside the four folders, hidden entries (temp files, ``.locks``,
    ``.backups``, the marker) and paths deeper than the layout."""

    def __init__(self, root: Path) -> None:
        self._root = root

    def __call__(self, change: watchfiles.Change, path: str) -> bool:
        try:
            parts = Path(path).relative_to(self._root).parts
        except ValueError:
            return False
        if not parts:
            return True  # the root itself (moved or removed)
        hidden = any(part.startswith(".") for part in parts)
        return parts[0] in _FOLDERS and len(parts) <= 3 and not hidden


async def watch_tree(
    storage: FileStorage,
    own: OwnWrites,
    *,
    debounce_ms: int = DEFAULT_DEBOUNCE_MS,
    stop_event: asyncio.Event | None = None,
    ready: asyncio.Event | None = None,
) -> AsyncGenerator[ChangeEvent, None]:
    """ChangeEvents for ``storage``'s tree until stopped; see ``FileStorage.watch``."""
    if isinstance(debounce_ms, bool) or not isinstance(debounce_ms, int) or debounce_ms < 1:
        raise InvalidArgumentError(f"debounce_ms must be a whole number of milliseconds >= 1, got {debounce_ms!r}")
    root = storage._root
    signal = _StopSignal(stop_event)
    # Registered before the watcher starts, so that no own write can slip through unrecorded.
    own.start(signal)
    changes = watchfiles.awatch(
        root,
        watch_filter=_Filter(root),
        debounce=debounce_ms,
        step=min(_QUIET_MS, debounce_ms),
        stop_event=signal,  # watchfiles needs only is_set() and set()
    )
    pending: asyncio.Future[set[watchfiles.main.FileChange]]
    pending = asyncio.ensure_future(anext(changes))
    try:
        # awatch builds its RustNotify, which registers the OS watches before returning,
        # during the first step of ``pending``; one turn of the loop runs that step, so
        # from here on no change is missed and the snapshot is safe to take.
        await asyncio.sleep(0)
        if pending.done():
            pending.result()  # a startup failure (the base dir vanished) surfaces now
        tree = _Tree(storage, own)
        await asyncio.to_thread(tree.snapshot)
        if ready is not None:
            ready.set()
        while True:
            try:
                # Shielded: on cancellation the watch thread is told to stop (finally,
                # below) and allowed to return, instead of being abandoned mid-call.
                batch = await asyncio.shield(pending)
            except StopAsyncIteration:
                return  # stop_event, shutdown()
            except OSError as e:
                raise _fs.os_error(e, "watching", root) from e
            pending = asyncio.ensure_future(anext(changes))
            for event in await asyncio.to_thread(tree.events, {path for _change, path in batch}):
                if signal.is_set():
                    return
                yield await _checked(storage, event)
    finally:
        signal.set()
        own.finish(signal)
        if not pending.done():
            await asyncio.wait({pending}, timeout=10)
        if not pending.done():
            pending.cancel()
        elif not pending.cancelled():
            pending.exception()  # retrieved, so asyncio does not log it as never retrieved
        with suppress(RuntimeError):  # "already running" if the thread is somehow stuck
            await changes.aclose()
