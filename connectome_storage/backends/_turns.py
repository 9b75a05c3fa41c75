"""Turns: the worker threads of a write run their Python one at a time, and wait for the
disk side by side.

Why. Every ``os`` call releases the GIL, and when another thread is waiting for the GIL
that release hands it over: a futex wake, a context switch, and the caller waits to get
it back, even after a 2 us ``lstat``. A store makes about thirty such calls around its
two fsyncs; with 16 stores in flight on 16 threads, nearly every one of them became a
hand-over, and the store's CPU time per operation tripled (measured: 16 coroutines were
slower than one; a plain durable write with 25 extra ``lstat`` calls per write fell from
2x to 1x the same way).

How. A thread running a write takes the turn (one process-wide lock) and keeps it while
it runs Python and quick system calls, and lets go of it only around a call that waits
for the device (``blocking``: fsync, a rename or unlink that frees an inode, which
discards its blocks synchronously on some mounts, a long read or write, a sleep). The
other writers wait on the turn, not on the GIL, so a quick call has nobody to hand the
GIL to, while the fsyncs still overlap.

The turn is only a hint, never a lock anything depends on: a thread that does not get
it within ``TURN_WAIT`` goes on without it (as every thread did before), so a call that
blocks while holding the turn (one not wrapped in ``blocking``) delays the others by
that long at most and can never deadlock them.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TypeVar

__all__ = ["TURN_WAIT", "blocking", "holding", "leave", "take"]

T = TypeVar("T")

# How long a thread waits for the turn before it runs without it (seconds). A turn is
# held for tens of microseconds; 16 writers queued behind one another wait about 1 ms.
TURN_WAIT = 0.02

_turn = threading.Lock()
_state = threading.local()  # .writing: in a write run in turns; .held: holding the turn now


def take() -> None:
    """At the start of a write in a worker thread: wait for the turn (TURN_WAIT at most)."""
    _state.writing = True
    _state.held = _turn.acquire(timeout=TURN_WAIT)


def leave() -> None:
    """At the end of that write: give the turn back if this thread holds it."""
    _state.writing = False
    if getattr(_state, "held", False):
        _state.held = False
        _turn.release()


def holding() -> bool:
    """Whether this thread holds the turn."""
    return bool(getattr(_state, "held", False))


def blocking(function: Callable[..., T], *args: object) -> T:
    """``function(*args)``, a call that may wait for the device, without the turn, which
    a write takes again after it (TURN_WAIT at most); just the call outside a write."""
    if not getattr(_state, "writing", False):
        return function(*args)
    if _state.held:
        _state.held = False
        _turn.release()
    try:
        return function(*args)
    finally:
        _state.held = _turn.acquire(timeout=TURN_WAIT)


def _forked() -> None:  # pragma: no cover - runs in a forked child
    """A thread of the parent may have held the turn at the fork: the child starts free."""
    global _turn, _state
    _turn = threading.Lock()
    _state = threading.local()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)
