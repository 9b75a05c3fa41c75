"""``Metrics``: counts, errors, latency histograms and bytes per operation and kind.

``snapshot()`` returns them as a plain dict. When ``opentelemetry-api`` is installed,
every call is also recorded on the stable OpenTelemetry histogram
``db.client.operation.duration`` (seconds) with the database client attributes
(``db.system.name``, ``db.operation.name``, ``db.collection.name``, ``db.namespace``, and
``error.type`` when the call failed); an application that configures a MeterProvider gets
them exported, one that does not pays only the API's no-op.
"""

from __future__ import annotations

import bisect
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from ..errors import ConfigError
from ._base import Middleware, MiddlewareContext
from ._otel import collection_name, error_type, namespace_of, package_version, system_name

if TYPE_CHECKING:
    from ..interface import StorageInterface

__all__ = ["DURATION_BUCKETS", "Metrics"]

# Upper bounds (seconds) of the latency buckets; one more bucket counts what is slower.
# Finer at the low end than OpenTelemetry's advice for database clients, because a file
# or memory load takes tens of microseconds.
DURATION_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


@dataclass
class _Stats:
    count: int = 0
    errors: int = 0
    error_types: dict[str, int] = field(default_factory=dict)
    bytes_written: int = 0
    bytes_read: int = 0
    duration_sum: float = 0.0
    duration_max: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS) + 1))

    def as_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "errors": self.errors,
            "error_types": dict(sorted(self.error_types.items())),
            "bytes_written": self.bytes_written,
            "bytes_read": self.bytes_read,
            "duration_seconds": {
                "sum": self.duration_sum,
                "max": self.duration_max,
                "buckets": list(self.buckets),
            },
        }


def _size(value: Any) -> int:
    """Bytes of the value's canonical (compact) JSON; 0 for what is not JSON."""
    try:
        return len(orjson.dumps(value))
    except TypeError:
        return 0


class Metrics(Middleware):
    """Measure every call; ``snapshot()`` returns what was measured.

    ``meter_provider``: the OpenTelemetry MeterProvider to record on (default: the global
    one); ignored when ``opentelemetry-api`` is not installed. Bytes are the canonical JSON
    size of each value as it passes this layer (placed inside ``Encryption`` or
    ``Compression`` it measures what is stored, outside it what the caller handles).
    One Metrics serves one storage.
    """

    def __init__(self, *, meter_provider: Any = None) -> None:
        self._stats: dict[tuple[str, str], _Stats] = {}
        self._storage: StorageInterface | None = None
        self._histogram: Any = None
        self._meter_provider = meter_provider
        self._base_attributes: dict[str, str] = {}

    def __repr__(self) -> str:
        return "Metrics()"

    def attach(self, storage: StorageInterface) -> None:
        if self._storage is not None and self._storage is not storage:
            raise ConfigError("a Metrics serves one storage; give each storage its own Metrics()")
        self._storage = storage
        self._base_attributes = {"db.system.name": system_name(storage)}
        namespace = namespace_of(storage)
        if namespace is not None:
            self._base_attributes["db.namespace"] = namespace
        try:
            from opentelemetry import metrics
        except ImportError:
            return  # snapshot() only: OpenTelemetry is an optional extra
        meter = metrics.get_meter("connectome_storage", package_version(), meter_provider=self._meter_provider)
        self._histogram = meter.create_histogram(
            "db.client.operation.duration",
            unit="s",
            description="Duration of database client operations.",
            explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS),
        )

    def _stats_of(self, ctx: MiddlewareContext) -> _Stats:
        stats = self._stats.get((ctx.operation, ctx.kind))
        if stats is None:
            stats = self._stats[(ctx.operation, ctx.kind)] = _Stats()
        return stats

    async def before_write(self, ctx: MiddlewareContext, value: Any) -> Any:
        self._stats_of(ctx).bytes_written += _size(value)
        return value

    async def after_read(self, ctx: MiddlewareContext, value: Any) -> Any:
        self._stats_of(ctx).bytes_read += _size(value)
        return value

    async def after_call(self, ctx: MiddlewareContext, error: BaseException | None) -> None:
        seconds = time.perf_counter() - ctx.started
        if isinstance(error, GeneratorExit):
            error = None  # a scan the caller stopped early ended normally
        stats = self._stats_of(ctx)
        stats.count += 1
        stats.duration_sum += seconds
        stats.duration_max = max(stats.duration_max, seconds)
        stats.buckets[bisect.bisect_left(DURATION_BUCKETS, seconds)] += 1
        if error is not None:
            stats.errors += 1
            name = type(error).__name__
            stats.error_types[name] = stats.error_types.get(name, 0) + 1
        if self._histogram is not None:
            attributes = {**self._base_attributes, "db.operation.name": ctx.operation}
            collection = collection_name(ctx)
            if collection is not None:
                attributes["db.collection.name"] = collection
            if error is not None:
                attributes["error.type"] = error_type(error)
            self._histogram.record(seconds, attributes)

    def snapshot(self) -> dict[str, Any]:
        """A plain dict: ``{"buckets": [...], "totals": {...}, "operations": {operation: {kind: {...}}}}``.

        Each ``{...}`` has ``count``, ``errors``, ``error_types`` (by error class name),
        ``bytes_written``, ``bytes_read`` and ``duration_seconds`` (``sum``, ``max`` and
        ``buckets``: how many calls fell at or under each bound of ``buckets``, the last
        one counting the slower ones).
        """
        operations: dict[str, dict[str, Any]] = {}
        for (operation, kind), stats in sorted(self._stats.items()):
            operations.setdefault(operation, {})[kind] = stats.as_dict()
        totals = {
            "count": sum(s.count for s in self._stats.values()),
            "errors": sum(s.errors for s in self._stats.values()),
            "bytes_written": sum(s.bytes_written for s in self._stats.values()),
            "bytes_read": sum(s.bytes_read for s in self._stats.values()),
        }
        return {"buckets": list(DURATION_BUCKETS), "totals": totals, "operations": operations}

    def reset(self) -> None:
        """Forget everything measured so far (the OpenTelemetry histogram is not affected)."""
        self._stats.clear()
