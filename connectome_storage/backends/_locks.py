"""Per-entity locks that exclude coroutines, threads and processes.

filelock alone is not enough inside one process: its locks are re-entrant per thread, so
two coroutines on one event loop would both "get" the same FileLock. Each entity
therefore has an asyncio lock (coroutines of this storage object) and, inside the worker
thread that does the work, a FileLock on a fresh file descriptor (other threads, other
storage objects, other processes: flock is per open file description).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import filelock

from ..errors import LockTimeoutError

__all__ = ["LOCK_DIR", "EntityLocks"]

LOCK_DIR = ".locks"
T = TypeVar("T")


class EntityLocks:
    """Run a function in a worker thread while holding one entity's lock."""

    def __init__(self, root: Path, timeout: float) -> None:
        self._folder = root / LOCK_DIR
        self._timeout = timeout
        # Weak values: an entity's lock lives while some coroutine holds or awaits it.
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    def lock_path(self, entity: str) -> Path:
        # Hashed: entity names can be 250 bytes long, and a flat folder stays simple.
        return self._folder / (hashlib.sha1(entity.encode()).hexdigest() + ".lock")

    async def run(self, entity: str, function: Callable[..., T], *args: object) -> T:
        """``function(*args)`` in a thread, exclusively for ``entity``.

        Raises LockTimeoutError if the lock is not obtained within the timeout.
        """
        deadline = time.monotonic() + self._timeout
        lock = self._locks.get(entity)
        if lock is None:
            lock = self._locks[entity] = asyncio.Lock()
        try:
            async with asyncio.timeout(self._timeout):
                await lock.acquire()
        except TimeoutError:
            raise self._timeout_error(entity, "another coroutine of this process") from None
        try:
            return await asyncio.to_thread(self._run_file_locked, entity, deadline, function, args)
        finally:
            lock.release()

    def _run_file_locked(
        self, entity: str, deadline: float, function: Callable[..., T], args: tuple[object, ...]
    ) -> T:
        path = self.lock_path(entity)
        self._folder.mkdir(exist_ok=True)
        file_lock = filelock.FileLock(path, timeout=max(0.0, deadline - time.monotonic()))
        try:
            file_lock.acquire()
        except filelock.Timeout:
            raise self._timeout_error(entity, f"another process (lock file {path})") from None
        try:
            return function(*args)
        finally:
            file_lock.release()

    def _timeout_error(self, entity: str, holder: str) -> LockTimeoutError:
        return LockTimeoutError(
            f"could not lock {entity} within {self._timeout:g} s: {holder} holds it; "
            "retry, or raise connection_timeout (CONNECTOME_STORAGE_TIMEOUT)",
            lock_path=str(self.lock_path(entity)),
        )
