"""What the key-value suites measure alike: one call's time, and a whole scan's time and peak memory."""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Awaitable
from typing import TypeVar

from connectome_storage import KeyValueStore

__all__ = ["timed", "timed_scan"]

T = TypeVar("T")


async def timed(call: Awaitable[T]) -> tuple[float, T]:
    """(seconds ``call`` took, its result)."""
    started = time.perf_counter()
    result = await call
    return time.perf_counter() - started, result


async def timed_scan(kv: KeyValueStore) -> tuple[float, int, int]:
    """(seconds for a whole ``scan()``, peak bytes of Python allocations, entries seen).

    The time comes from a scan without tracemalloc, which slows Python down several
    times; the peak from a second scan under it.
    """
    started = time.perf_counter()
    seen = 0
    async for _key, _value in kv.scan():
        seen += 1
    seconds = time.perf_counter() - started
    tracemalloc.start()
    try:
        async for _key, _value in kv.scan():
            pass
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return seconds, peak, seen
