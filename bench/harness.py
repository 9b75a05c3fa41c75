"""Timing: interleaved repeats, medians, and ratios to a baseline measured in the same run.

A comparison runs its variants in rounds, A B C then C B A, so that whatever the machine
does meanwhile (another job, a writeback burst, a warming cache) falls on every variant
alike, and none always runs right after another. Each round gives every variant one
batch; a batch's figure is the median of its operations' times, so one slow fsync does
not move it. A ratio is taken within each round (A's batch against the baseline's batch
of that same round) and the report gives the median of those ratios and their range.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "Comparison",
    "Figure",
    "Runner",
    "Section",
    "Variant",
    "compare",
    "each",
    "each_sync",
    "throughput",
    "time_each",
]

# (index of the first operation, number of operations) -> seconds taken by each one.
Runner = Callable[[int, int], Awaitable[list[float]]]
RatioKind = Literal["speed", "cost"]
Unit = Literal["time", "rate", "bytes"]  # bytes: a runner returns peak bytes, not seconds


async def time_each(op: Callable[[int], Awaitable[Any]], first: int, count: int) -> list[float]:
    """Seconds taken by each ``await op(i)`` for i in ``first .. first + count - 1``."""
    times = []
    clock = time.perf_counter
    for i in range(first, first + count):
        started = clock()
        await op(i)
        times.append(clock() - started)
    return times


def each(op: Callable[[int], Awaitable[Any]]) -> Runner:
    """Time ``await op(i)`` one call at a time."""

    async def run(first: int, count: int) -> list[float]:
        return await time_each(op, first, count)

    return run


def each_sync(op: Callable[[int], Any]) -> Runner:
    """Time a plain function one call at a time, on the event loop's thread: the way a
    script that does not use asyncio would call it."""

    async def run(first: int, count: int) -> list[float]:
        times = []
        clock = time.perf_counter
        for i in range(first, first + count):
            started = clock()
            op(i)
            times.append(clock() - started)
        return times

    return run


def throughput(batch: Callable[[int, int], Awaitable[Any]]) -> Runner:
    """Time ``await batch(first, count)`` as a whole: the figure is its time divided by
    ``count`` (the cost per operation when operations overlap, or per item of a bulk call)."""

    async def run(first: int, count: int) -> list[float]:
        started = time.perf_counter()
        await batch(first, count)
        return [(time.perf_counter() - started) / count]

    return run


@dataclass
class Variant:
    name: str
    run: Runner
    note: str = ""


@dataclass
class Figure:
    """One variant's result: a figure per round (seconds per operation) and, but for the
    baseline, a ratio per round against the baseline's figure of the same round."""

    name: str
    samples: list[float]
    ratios: list[float]
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios)


@dataclass
class Comparison:
    key: str
    title: str
    baseline: str
    figures: list[Figure]
    ops: int
    repeats: int
    ratio_kind: RatioKind = "speed"
    unit: Unit = "time"
    rate_label: str = "ops/s"
    note: str = ""

    def figure(self, name: str) -> Figure:
        for figure in self.figures:
            if figure.name == name:
                return figure
        raise KeyError(f"{self.key} has no variant {name!r}: {[f.name for f in self.figures]}")

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key, "title": self.title, "baseline": self.baseline, "ops": self.ops,
            "repeats": self.repeats, "ratio_kind": self.ratio_kind, "unit": self.unit,
            "rate_label": self.rate_label, "note": self.note,
            "figures": [
                {"name": f.name, "samples": f.samples, "ratios": f.ratios, "median": f.median,
                 "ratio": f.ratio, "note": f.note}
                for f in self.figures
            ],
        }  # fmt: skip


@dataclass
class Section:
    key: str
    title: str
    intro: str
    comparisons: list[Comparison] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def get(self, key: str) -> Comparison | None:
        return next((c for c in self.comparisons if c.key == key), None)


async def compare(
    key: str,
    title: str,
    variants: Sequence[Variant],
    *,
    ops: int,
    repeats: int,
    warmup: int = 0,
    ratio_kind: RatioKind = "speed",
    unit: Unit = "time",
    rate_label: str = "ops/s",
    note: str = "",
    one_cpu: bool = False,
) -> Comparison:
    """Run ``variants`` interleaved; the first one is the baseline.

    ``one_cpu`` keeps every thread of the process on one CPU while the comparison runs
    (Linux), for comparisons whose variants each hop to a worker thread of their own:
    otherwise each of those threads lands by chance on the loop's CPU or the other one,
    and the hop costs about 30 or about 70 µs on the machine this was written on, which
    would decide the ratio instead of what the variants differ in.

    ``ops`` operations per batch, ``repeats`` rounds, after ``warmup`` untimed operations
    of each variant (first-call costs: imports, connections, a statement cache).
    Operation indexes never repeat within a variant, so a writer can make each value
    distinct (FileStorage skips a write whose bytes are unchanged).
    """
    next_index = dict.fromkeys((v.name for v in variants), 0)

    async def batch(variant: Variant, count: int) -> list[float]:
        first = next_index[variant.name]
        next_index[variant.name] += count
        # Collect now, so that one variant's garbage is not collected in another's batch.
        gc.collect()
        return await variant.run(first, count)

    # Everything alive now (imported modules, prepared data) is set aside, so that the
    # collection before each batch scans only what the benchmark itself allocates.
    gc.collect()
    gc.freeze()
    pinned = _pin_to_one_cpu() if one_cpu else None
    try:
        if warmup:
            for variant in variants:
                await batch(variant, warmup)
        samples: dict[str, list[float]] = {v.name: [] for v in variants}
        for round_number in range(repeats):
            order = variants if round_number % 2 == 0 else list(reversed(variants))
            for variant in order:
                times = await batch(variant, ops)
                samples[variant.name].append(statistics.median(times))
            await asyncio.sleep(0)
    finally:
        gc.unfreeze()
        if pinned is not None:
            _set_affinity(pinned)
    base = samples[variants[0].name]
    figures: list[Figure] = []
    for variant in variants:
        mine = samples[variant.name]
        if ratio_kind == "speed":
            ratios = [b / m if m else float("inf") for b, m in zip(base, mine, strict=True)]
        else:
            ratios = [m / b if b else float("inf") for b, m in zip(base, mine, strict=True)]
        figures.append(Figure(variant.name, mine, ratios, variant.note))
    comparison = Comparison(
        key, title, variants[0].name, figures, ops, repeats,
        ratio_kind=ratio_kind, unit=unit, rate_label=rate_label, note=note,
    )  # fmt: skip
    for listener in listeners:
        listener(comparison)
    return comparison


def _threads() -> list[int]:
    try:
        return [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:
        return []


def _set_affinity(cpus: set[int]) -> None:
    for tid in _threads():
        with contextlib.suppress(OSError):
            os.sched_setaffinity(tid, cpus)


def _pin_to_one_cpu() -> set[int] | None:
    """Move every thread of this process to one CPU; return the CPUs to restore, or None
    where affinity cannot be set. Threads started later inherit the creating thread's."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    allowed = os.sched_getaffinity(0)
    _set_affinity({min(allowed)})
    return allowed


# Called with each finished comparison (the runner prints progress through this).
listeners: list[Callable[[Comparison], None]] = []
