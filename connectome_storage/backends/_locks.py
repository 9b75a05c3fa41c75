"""Per-entity locks that exclude coroutines, threads and processes.

Inside one process, each entity has an asyncio lock, so coroutines of one storage object
queue without tying up worker threads. Across threads, storage objects and processes,
the worker thread that does the work also holds an OS lock on a lock file, taken on a
fresh file descriptor each time: ``flock`` locks belong to an open file description, so
two descriptors exclude each other even inside one process. (filelock alone would not do
inside a process: its locks are re-entrant per thread, so two coroutines on one event
loop would both "get" the same FileLock.)

On POSIX the OS lock is a plain ``fcntl.flock``: measured here, filelock 4.x spends about
80 us of Python per acquire and release against 4 us for the system calls, a sixth of a
whole durable write. Elsewhere (Windows) filelock provides the lock.

A lock file's descriptor is kept open between holds (``IdleLocks``, 64 in a process at most):
a hold then costs ``flock`` and one ``lstat`` instead of six system calls. It is taken out
of the pool by one holder at a time and unlocked (``LOCK_UN``) before it goes back, so no
two holders ever share an open file description.

Lock files of entities that are gone can be removed (``remove_unused``, for cleanup()):
the remover holds the lock while it unlinks, and a locker checks after ``flock`` that the
path still names the inode it locked, retrying otherwise, so two holders can never lock
two different inodes of one name. Only writers lock: reads never do.

The locked work runs on this module's own worker threads (``Workers``), not through
``asyncio.to_thread``: with 16 coroutines writing, the event loop's thread was the
bottleneck (it holds the GIL for every hop), and to_thread's chain of two futures, a
``threading.Condition`` and four callbacks cost more of it than the rest of a store. A
hop here is one asyncio future, one queue put and one ``call_soon_threadsafe``. There
are more threads (``WORKER_THREADS``) than the default executor's ``cpu_count + 4``, so
that writes to different entities keep more fsyncs in flight. A write run with
``in_turn`` runs its Python in turns with the other writers (``_turns``): it waits for
the disk side by side with them, but never hands the GIL over around a quick system call.
"""

from __future__ import annotations

import asyncio
import contextvars
import errno
import hashlib
import os
import queue
import stat
import threading
import time
import weakref
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from ..errors import LockTimeoutError, StorageIOError
from . import _fs, _turns

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]
    import filelock  # type: ignore[import-not-found,unused-ignore]  # installed on Windows only

__all__ = [
    "LOCK_DIR",
    "WORKER_THREADS",
    "EntityLocks",
    "Held",
    "IdleLocks",
    "RetryLater",
    "Workers",
    "os_lock",
    "remove_unused",
]

LOCK_DIR = ".locks"
T = TypeVar("T")
# Polling backoff while another process holds the lock: start short, since most holds
# last one write (about a millisecond), and cap it so a waiter notices release quickly.
_FIRST_WAIT, _LONGEST_WAIT = 0.0002, 0.01


# Lock file paths remembered per storage (each costs a SHA-1 and a pathlib join to make);
# few, so that a migration through thousands of entities holds no more memory for them.
_PATHS_KEPT = 256

# Lock file descriptors kept open between holds, by all storages of the process together:
# few, so that they never bring a process near its limit of open descriptors.
IDLE_KEPT = 64

# Threads of the shared worker pool, started as work arrives. Most of a write's time is
# spent waiting for the disk (fsync), not in Python, so 16 writers can keep 16 in flight.
WORKER_THREADS = 32


class _Timeout(Exception):
    pass


def _settle(future: asyncio.Future[Any], failed: bool, outcome: Any) -> None:
    """On the event loop: hand a worker's outcome to the awaiting coroutine."""
    if future.cancelled():
        return
    if failed:
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


class Workers:
    """Threads that run blocking calls for coroutines (see the module docstring).

    Like ``asyncio.to_thread``: the caller's context variables are copied, a call whose
    caller was cancelled before a thread picked it up is skipped, and one already running
    finishes (its outcome is dropped). The threads are not daemons: at interpreter exit,
    queued calls finish first, then the threads stop (as the default executor's do).
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._queue: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._threads: list[threading.Thread] = []
        self._mutex = threading.Lock()
        self._stopping = False

    def run(self, function: Callable[..., T], *args: object, in_turn: bool = False) -> asyncio.Future[T]:
        """A future of ``function(*args)`` run in a worker thread; ``in_turn``: holding the
        turn (``_turns``) except around the calls it makes through ``_turns.blocking``."""
        if self._stopping:
            raise RuntimeError("cannot run storage work after interpreter shutdown began")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        if not self._idle.acquire(blocking=False):
            self._add_thread()
        self._queue.put((loop, future, contextvars.copy_context(), function, args, in_turn))
        return future

    def _add_thread(self) -> None:
        with self._mutex:
            if self._stopping:
                raise RuntimeError("cannot run storage work after interpreter shutdown began")
            if len(self._threads) >= self._limit:
                return  # all busy: the call waits in the queue for the first free thread
            thread = threading.Thread(target=self._work, name=f"connectome-storage-{len(self._threads)}")
            thread.start()
            self._threads.append(thread)

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            loop, future, context, function, args, in_turn = item
            del item
            if not future.cancelled():  # a read of a flag: no need to be on the loop
                if in_turn:
                    _turns.take()
                try:
                    outcome, failed = context.run(function, *args), False
                except BaseException as e:  # handed over, as to_thread does
                    outcome, failed = e, True
                finally:
                    _turns.leave()  # before the wake-up: the woken loop may hand out more work
                with suppress(RuntimeError):  # the loop is closed: nobody awaits this any more
                    loop.call_soon_threadsafe(_settle, future, failed, outcome)
                del outcome
            del loop, future, context, function, args
            self._idle.release()

    def stop(self) -> None:
        """Let the threads finish what is queued, then end (at interpreter exit)."""
        with self._mutex:
            self._stopping = True
            for _thread in self._threads:
                self._queue.put(None)


def _new_workers() -> Workers:
    workers = Workers(WORKER_THREADS)
    try:
        threading._register_atexit(workers.stop)  # type: ignore[attr-defined]  # what concurrent.futures uses
    except (AttributeError, RuntimeError):  # pragma: no cover - at shutdown, or another Python
        import atexit

        atexit.register(workers.stop)
    return workers


_workers = _new_workers()


def _forked() -> None:  # pragma: no cover - runs in a forked child
    """A forked child has none of its parent's threads: it starts a pool of its own."""
    global _workers
    _workers = _new_workers()  # registered for exit too: the child's threads must end with it


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


class RetryLater(Exception):
    """Raised by a guard (``EntityLocks.guard``) that cannot settle what it found while the
    entity is held: the lock is released, and taken again a little later."""


class IdleLocks:
    """A storage's lock file descriptors that no one holds, kept open for its next hold
    (``IDLE_KEPT`` in the whole process at most). A descriptor is taken out by one holder
    and given back unlocked, so two holders never share one; a forked child closes the
    ones it inherited (they share their open file descriptions, and so their locks, with
    the parent's)."""

    # Re-entrant: a pool collected by the garbage collector closes its descriptors, and
    # the collection can run in a thread that is inside one of these methods.
    _mutex = threading.RLock()
    _kept = 0  # in all pools of the process
    _pools: ClassVar[weakref.WeakSet[IdleLocks]] = weakref.WeakSet()

    def __init__(self) -> None:
        self._idle: dict[str, tuple[int, int]] = {}  # lock file path: (descriptor, inode)
        IdleLocks._pools.add(self)
        weakref.finalize(self, IdleLocks._close_all, self._idle)

    def take(self, path: str) -> tuple[int, int] | None:
        with IdleLocks._mutex:
            kept = self._idle.pop(path, None)
            if kept is not None:
                IdleLocks._kept -= 1
        return kept

    def give_back(self, path: str, fd: int, inode: int) -> None:
        """Unlock ``fd`` and keep it, or close it when enough are kept."""
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        except OSError:
            os.close(fd)  # closing releases the lock as well
            return
        kept = (fd, inode)
        with IdleLocks._mutex:
            if IdleLocks._kept < IDLE_KEPT and path not in self._idle:
                self._idle[path] = kept
                IdleLocks._kept += 1
                return
        os.close(fd)

    def close(self) -> None:
        IdleLocks._close_all(self._idle)

    @staticmethod
    def _close_all(idle: dict[str, tuple[int, int]]) -> None:
        with IdleLocks._mutex:
            IdleLocks._kept -= len(idle)
            descriptors = [fd for fd, _inode in idle.values()]
            idle.clear()
        for fd in descriptors:
            with suppress(OSError):
                os.close(fd)

    @classmethod
    def _forked(cls) -> None:  # pragma: no cover - runs in a forked child
        cls._mutex = threading.RLock()
        for pool in list(cls._pools):
            cls._close_all(pool._idle)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=IdleLocks._forked)


class os_lock:
    """Hold an exclusive OS lock on ``path`` until the ``with`` block ends; ``idle``: the
    pool its descriptor comes from when one is kept, and goes back to."""

    def __init__(self, path: Path, deadline: float, idle: IdleLocks | None = None) -> None:
        self._path = path
        self._deadline = deadline
        self._idle = idle if fcntl is not None else None
        self._fd = self._inode = -1
        self._fallback: filelock.FileLock | None = None

    def __enter__(self) -> None:
        if fcntl is None:  # pragma: no cover - Windows
            self._fallback = filelock.FileLock(self._path, timeout=max(0.0, self._deadline - time.monotonic()))
            try:
                self._fallback.acquire()
            except filelock.Timeout:
                raise _Timeout from None
            return
        wait = _FIRST_WAIT
        kept = self._idle.take(str(self._path)) if self._idle is not None else None
        while True:
            self._fd, self._inode = kept or _open_lock_file(self._path)
            kept = None
            try:
                while True:
                    try:
                        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        remaining = self._deadline - time.monotonic()
                        if remaining <= 0:
                            raise _Timeout from None
                        _turns.blocking(time.sleep, min(wait, remaining))
                        wait = min(wait * 2, _LONGEST_WAIT)
                if _still_named(self._path, self._inode):
                    return
            except BaseException:
                os.close(self._fd)
                raise
            os.close(self._fd)  # removed by cleanup() (while we waited, or while kept): lock the new one

    def __exit__(self, *exc: object) -> None:
        if self._fallback is not None:  # pragma: no cover - Windows
            self._fallback.release()
        elif self._idle is not None:
            self._idle.give_back(str(self._path), self._fd, self._inode)
        else:
            os.close(self._fd)  # closing the descriptor releases the flock


def _release_when_taken(done: asyncio.Future[os_lock | None]) -> None:
    if not done.cancelled() and done.exception() is None and (taken := done.result()) is not None:
        taken.__exit__()


class Held:
    """An entity lock held across awaits (a transaction's): the in-process asyncio lock
    and the OS lock, released together by ``release`` (on the event loop)."""

    def __init__(self, entity: str, lock: asyncio.Lock | None, held: os_lock) -> None:
        self.entity = entity
        self._lock = lock
        self._held: os_lock | None = held

    def release(self) -> None:
        if self._held is not None:
            self._held.__exit__()
            self._held = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None


_LOCK_FLAGS = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)


def _check_folder(folder: Path) -> None:
    """Refuse a ``.locks`` that is a link (lock files would be made outside the tree),
    FIFO, or plain file; a missing one raises FileNotFoundError, for the caller to create."""
    mode = os.lstat(folder).st_mode
    if not stat.S_ISDIR(mode):
        what = _fs.special_kind(mode)
        if what is not None:
            raise _fs.refuse_special(folder, what)
        raise StorageIOError(f"{folder} is a file where the lock folder belongs; move it away")


def _open_lock_file(path: Path) -> tuple[int, int]:
    """The lock file opened (created if missing): its descriptor and inode number."""
    _check_folder(path.parent)
    try:
        fd = os.open(path, _LOCK_FLAGS, 0o666)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise _fs.refuse_special(path, "a symbolic link") from e
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise _fs.refuse_special(path, _fs.special_kind(st.st_mode) or "not a regular file")
    return fd, st.st_ino


def _still_named(path: Path, inode: int) -> bool:
    """Whether ``path`` still names ``inode``, the one locked (see the module docstring);
    an open descriptor keeps its inode number, so the fstat made at open time serves."""
    try:
        return os.lstat(path).st_ino == inode
    except FileNotFoundError:
        return False


def remove_unused(path: Path) -> bool:
    """Remove the lock file ``path`` unless someone holds it; True if removed."""
    if fcntl is None:  # pragma: no cover - Windows: filelock manages its own files
        return False
    try:
        fd = os.open(path, os.O_RDWR | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # held right now: its entity is in use
        if not _still_named(path, st.st_ino):
            return False
        os.unlink(path)  # while holding it: a locker that got this inode retries
        return True
    finally:
        os.close(fd)


class EntityLocks:
    """Run a function in a worker thread while holding one entity's lock."""

    def __init__(self, root: Path, timeout: float) -> None:
        self._folder = root / LOCK_DIR
        self._timeout = timeout
        # Weak values: an entity's lock lives while some coroutine holds or awaits it.
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._paths: dict[str, Path] = {}  # lock file of each entity seen lately (a SHA-1 each)
        self._idle = IdleLocks()
        # Called with the entity's name once its OS lock is held, before the function: the
        # file tree finishes an interrupted transaction that names the entity there. It may
        # raise RetryLater to have the lock released and taken again after a short wait.
        self.guard: Callable[[str], None] | None = None

    @property
    def timeout(self) -> float:
        return self._timeout

    def close(self) -> None:
        """Close the lock file descriptors kept open (when the storage closes)."""
        self._idle.close()

    def lock_path(self, entity: str) -> Path:
        path = self._paths.get(entity)
        if path is None:
            if len(self._paths) >= _PATHS_KEPT:
                self._paths.clear()
            # Hashed: entity names can be 250 bytes long, and a flat folder stays simple.
            path = self._paths[entity] = self._folder / (hashlib.sha1(entity.encode()).hexdigest() + ".lock")
        return path

    async def run(self, entity: str, function: Callable[..., T], *args: object, in_turn: bool = False) -> T:
        """``function(*args)`` in a thread, exclusively for ``entity``.

        ``in_turn``: in turns with the other writers (``Workers``), for a function whose
        waits for the device all go through ``_turns.blocking`` (one that does not still
        works, only slower). Raises LockTimeoutError if the lock is not obtained within
        the timeout.
        """
        deadline = time.monotonic() + self._timeout
        lock = self._locks.get(entity)
        if lock is None:
            lock = self._locks[entity] = asyncio.Lock()
        if lock.locked():
            try:
                async with asyncio.timeout(self._timeout):
                    await lock.acquire()
            except TimeoutError:
                raise self._timeout_error(entity, "another coroutine of this process") from None
        else:
            await lock.acquire()  # free: returns at once, without arming a timer
        try:
            return await _workers.run(self._run_os_locked, entity, deadline, function, args, in_turn=in_turn)
        finally:
            lock.release()

    async def hold(self, entity: str, deadline: float) -> Held:
        """Take ``entity``'s lock and keep it until ``Held.release()`` (no guard runs: the
        holder is a transaction, which settled interrupted ones when it began). The OS lock
        is tried on the event loop first (free: a few system calls, no thread hop)."""
        lock = self._locks.get(entity)
        if lock is None:
            lock = self._locks[entity] = asyncio.Lock()
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                await lock.acquire()
        except TimeoutError:
            raise self._timeout_error(entity, "another coroutine of this process") from None
        try:
            held = self.take(entity, time.monotonic(), wait=False)
            if held is None:
                waiting = asyncio.ensure_future(asyncio.to_thread(self.take, entity, deadline))
                try:
                    held = await asyncio.shield(waiting)
                except asyncio.CancelledError:
                    # The thread may still get the lock: let it go then, or it stays held.
                    waiting.add_done_callback(_release_when_taken)
                    raise
        except BaseException:
            lock.release()
            raise
        assert held is not None
        return Held(entity, lock, held)

    def take(self, entity: str, deadline: float, *, wait: bool = True) -> os_lock | None:
        """The entity's OS lock, held until its ``__exit__`` (in this thread: no guard, no
        asyncio lock). ``wait=False``: None at once when someone holds it; else
        LockTimeoutError past ``deadline``."""
        path = self.lock_path(entity)
        lock = os_lock(path, deadline if wait else time.monotonic(), self._idle)
        try:
            try:
                lock.__enter__()
            except FileNotFoundError:
                self._folder.mkdir(exist_ok=True)
                lock.__enter__()
        except _Timeout:
            if not wait:
                return None
            raise self._timeout_error(entity, f"another process (lock file {path})") from None
        except OSError as e:
            raise _fs.os_error(e, "locking", path) from e
        return lock

    def try_hold(self, entity: str, function: Callable[..., T], *args: object) -> T | None:
        """``function(*args)`` in the calling (worker) thread under the entity's OS lock,
        or None at once if someone holds it (housekeeping never waits for a writer).

        The OS lock alone excludes this process's other writers too: each holds it on a
        descriptor of its own."""
        try:
            return self._run_os_locked(entity, time.monotonic(), function, args)
        except LockTimeoutError:
            return None

    def _run_os_locked(self, entity: str, deadline: float, function: Callable[..., T], args: tuple[object, ...]) -> T:
        wait = _FIRST_WAIT
        while True:
            lock = self.take(entity, deadline)
            assert lock is not None
            try:
                if self.guard is not None:
                    self.guard(entity)
                return function(*args)
            except RetryLater:
                pass  # released below; taken again after a pause
            finally:
                lock.__exit__()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._timeout_error(entity, "the recovery of an interrupted transaction")
            _turns.blocking(time.sleep, min(wait, remaining))
            wait = min(wait * 2, _LONGEST_WAIT)

    def _timeout_error(self, entity: str, holder: str) -> LockTimeoutError:
        return LockTimeoutError(
            f"could not lock {entity} within {self._timeout:g} s: {holder} holds it; "
            "retry, or raise connection_timeout (CONNECTOME_STORAGE_TIMEOUT)",
            lock_path=str(self.lock_path(entity)),
        )
