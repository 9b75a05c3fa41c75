"""What the key-value suites measure alike: a whole scan's time, and its peak memory."""

from __future__ import annotations

import time
import tracemalloc

from connectome_storage import KeyValueStore

__all__ = ["timed_scan"]


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
