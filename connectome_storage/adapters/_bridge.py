"""Where an adapter runs its storage calls: the loop that owns the storage's connections.

Frameworks call both the sync and the async forms of an adapter, the sync ones often from
inside a running event loop (``graph.get_state`` in an async app, a sync tool in a notebook).
A storage's connections (aiosqlite's, the Redis asyncio client's) belong to the loop they were
opened on, and a sync call that waits on the very loop it is blocking never returns. So:

- Given an *unopened* storage (the recommended way), the adapters open it on a private
  event-loop thread and run every call there: a sync method waits for it from any thread,
  inside a running loop too; an async method awaits it through ``asyncio.wrap_future``.
  Every adapter over the same storage shares that one thread (one registry, keyed by the
  storage object), and ``close()`` shuts the storage down and stops the thread.
- Given a storage the caller already opened, async methods await it directly on the
  caller's loop (no thread hop). Sync methods then need that loop to be running in another
  thread; called on the loop's own thread they raise ``StorageError`` at once instead of
  hanging.

Shared by every module of ``connectome_storage.adapters``; imports no framework.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Awaitable, Callable
from typing import TypeVar

from ..errors import StorageError
from ..interface import StorageInterface

__all__ = ["StorageBridge", "running_loop"]

T = TypeVar("T")

Call = Callable[[StorageInterface], Awaitable[T]]


class _LoopThread:
    """A private event loop on a daemon thread, where an adapter-opened storage lives."""

    def __init__(self, storage: StorageInterface) -> None:
        self.storage = storage
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="connectome-storage-adapter", daemon=True)
        self.thread.start()
        self.closed = False

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coro: Awaitable[T]) -> asyncio.Future[T]:
        """Schedule ``coro`` on the private loop; the returned future belongs to the caller's loop."""
        return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(_as_coro(coro), self.loop))

    def wait(self, coro: Awaitable[T]) -> T:
        """Run ``coro`` on the private loop and block this thread until it is done."""
        return asyncio.run_coroutine_threadsafe(_as_coro(coro), self.loop).result()

    def stop(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.wait(self.storage.shutdown())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join()
            self.loop.close()


async def _as_coro(awaitable: Awaitable[T]) -> T:
    return await awaitable


# One private loop per storage, shared by every adapter over it.
_THREADS: weakref.WeakKeyDictionary[StorageInterface, _LoopThread] = weakref.WeakKeyDictionary()
_THREADS_GUARD = threading.Lock()


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running in this thread, or None."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class StorageBridge:
    """Runs ``call(storage)`` on the loop that owns the storage (see the module docstring)."""

    def __init__(self, storage: StorageInterface) -> None:
        if not isinstance(storage, StorageInterface):
            raise TypeError(f"storage must be a connectome_storage StorageInterface, got {type(storage).__name__}")
        self.storage = storage
        # A storage the caller already opened stays on the caller's loop (known when the
        # adapter is made inside it); any other storage is opened on a private loop thread.
        with _THREADS_GUARD:
            self._thread = _THREADS.get(storage)
        self._home: asyncio.AbstractEventLoop | None = None
        self.borrowed = self._thread is None and storage._initialized
        if self.borrowed:
            self._home = running_loop()

    def _private(self) -> _LoopThread:
        with _THREADS_GUARD:
            thread = _THREADS.get(self.storage)
            if thread is None or thread.closed:
                thread = _LoopThread(self.storage)
                _THREADS[self.storage] = thread
            self._thread = thread
        return thread

    async def _opened(self, call: Call[T]) -> T:
        if not self.storage._initialized:
            await self.storage.initialize()
        return await call(self.storage)

    def run(self, call: Call[T]) -> T:
        """The sync form: run ``call(storage)`` to completion from this thread."""
        if not self.borrowed:
            thread = self._private()
            if threading.current_thread() is thread.thread:
                raise StorageError("a sync adapter method was called from its own storage thread; use the a* form")
            return thread.wait(self._opened(call))
        home = self._home
        if home is None or home.is_closed() or not home.is_running():
            raise StorageError(
                f"this adapter was given a storage that was already initialized ({self.storage!r}) outside a "
                "running event loop, so its sync methods have no loop to run on; give the adapter an "
                "uninitialized storage (it then opens it on its own thread), or use the async a* methods"
            )
        if running_loop() is home:
            raise StorageError(
                f"a sync adapter method was called inside the event loop that owns {self.storage!r}; it cannot "
                "wait for that loop without blocking it: use the async a* method, or give the adapter an "
                "uninitialized storage (it then opens it on its own thread)"
            )
        return asyncio.run_coroutine_threadsafe(_as_coro(call(self.storage)), home).result()

    async def arun(self, call: Call[T]) -> T:
        """The async form: await ``call(storage)`` on the loop that owns the storage."""
        current = asyncio.get_running_loop()
        if not self.borrowed:
            thread = self._private()
            if current is thread.loop:
                return await self._opened(call)
            return await thread.submit(self._opened(call))
        home = self._home
        if home is None or home is current or home.is_closed() or not home.is_running():
            # No other live loop to defer to (the one the adapter was made in has ended).
            return await call(self.storage)
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(_as_coro(call(self.storage)), home))

    def close(self) -> None:
        """Shut down the storage if an adapter opened it; a caller-opened one is left alone."""
        if self.borrowed:
            return
        with _THREADS_GUARD:
            thread = _THREADS.pop(self.storage, None)
        if thread is not None:
            thread.stop()

    async def aclose(self) -> None:
        """``close()`` for async code."""
        if self.borrowed:
            return
        await asyncio.to_thread(self.close)
