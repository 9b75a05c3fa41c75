"""Metrics on every backend: snapshot counts, errors, latency buckets and bytes; the
OpenTelemetry ``db.client.operation.duration`` histogram through the SDK's in-memory reader."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader

from connectome_storage import StorageInterface
from connectome_storage.config import redact_url
from connectome_storage.errors import InvalidKeyError, StorageError
from connectome_storage.middleware import Metrics
from connectome_storage.middleware.metrics import DURATION_BUCKETS

Make = Callable[..., StorageInterface]

DOC = {"title": "a conversation", "tags": ["x", "y"], "n": 12}
MESSAGES = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi there"}]
SYSTEMS = {
    "file": "connectome_storage.file",
    "memory": "connectome_storage.memory",
    "sqlite": "sqlite",
    "redis": "redis",
    "postgres": "postgresql",
}


def size(value: Any) -> int:
    return len(orjson.dumps(value))


async def exercise(storage: StorageInterface) -> None:
    await storage.store_conversation("c1", DOC)
    await storage.load_conversation("c1")
    await storage.load_conversation("c1")
    await storage.store_raw_messages("c1", MESSAGES)
    await storage.load_raw_messages("c1")
    await storage.kv("sessions").set("s1", {"turn": 4})
    await storage.kv("sessions").get("s1")
    with pytest.raises(InvalidKeyError):
        await storage.load_conversation("")
    await storage.list_conversations()


async def test_snapshot_counts_errors_and_bytes(make_storage: Make) -> None:
    metrics = Metrics()
    async with make_storage(middleware=[metrics]) as storage:
        await exercise(storage)
    snap = metrics.snapshot()
    assert snap["buckets"] == list(DURATION_BUCKETS)
    ops = snap["operations"]
    load = ops["load_conversation"]["conversation"]
    assert (load["count"], load["errors"], load["error_types"]) == (3, 1, {"InvalidKeyError": 1})
    assert load["bytes_read"] == 2 * size(DOC)
    assert ops["store_conversation"]["conversation"]["bytes_written"] == size(DOC)
    raw_in = ops["store_raw_messages"]["raw_messages"]["bytes_written"]
    raw_out = ops["load_raw_messages"]["raw_messages"]["bytes_read"]
    assert raw_in == raw_out == sum(size(m) for m in MESSAGES)
    assert ops["kv.set"]["kv"]["bytes_written"] == ops["kv.get"]["kv"]["bytes_read"] == size({"turn": 4})
    assert ops["list_conversations"]["conversation"]["bytes_read"] == 0  # ids are not values
    for by_kind in ops.values():
        for stats in by_kind.values():
            latency = stats["duration_seconds"]
            assert len(latency["buckets"]) == len(DURATION_BUCKETS) + 1
            assert sum(latency["buckets"]) == stats["count"]
            assert 0 <= latency["max"] <= latency["sum"]
    assert snap["totals"] == {
        "count": 9,
        "errors": 1,
        "bytes_written": size(DOC) + raw_in + size({"turn": 4}),
        "bytes_read": 2 * size(DOC) + raw_out + size({"turn": 4}),
    }
    metrics.reset()
    assert metrics.snapshot()["totals"]["count"] == 0


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


def duration_points(reader: InMemoryMetricReader) -> list[HistogramDataPoint]:
    data = reader.get_metrics_data()
    assert data is not None
    points: list[HistogramDataPoint] = []
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            assert scope.scope.name == "connectome_storage"
            for metric in scope.metrics:
                assert metric.name == "db.client.operation.duration"
                assert metric.unit == "s"
                points.extend(metric.data.data_points)  # type: ignore[arg-type]
    return points


async def test_opentelemetry_duration_histogram(make_storage: Make, reader: InMemoryMetricReader, backend: str) -> None:
    backend = backend.removesuffix("-msgpack")  # the serializer does not change the engine
    provider = MeterProvider(metric_readers=[reader])
    try:
        async with make_storage(middleware=[Metrics(meter_provider=provider)]) as storage:
            await exercise(storage)
            namespace = {
                "file": str(getattr(storage.settings, "base_dir", "")),
                "sqlite": str(getattr(storage.settings, "db_path", "")),
                "redis": getattr(storage.settings, "key_prefix", None),
                "postgres": redact_url(getattr(storage.settings, "dsn", "")),
            }.get(backend)
        points = {
            tuple(sorted((k, v) for k, v in p.attributes.items() if k != "db.system.name" and k != "db.namespace")): p
            for p in duration_points(reader)
        }
    finally:
        provider.shutdown()
    loads = points[(("db.collection.name", "conversation"), ("db.operation.name", "load_conversation"))]
    assert loads.count == 2
    assert list(loads.explicit_bounds) == list(DURATION_BUCKETS)
    assert loads.attributes["db.system.name"] == SYSTEMS[backend]
    assert loads.attributes.get("db.namespace") == namespace
    failed = points[
        (
            ("db.collection.name", "conversation"),
            ("db.operation.name", "load_conversation"),
            ("error.type", "connectome_storage.errors.InvalidKeyError"),
        )
    ]
    assert failed.count == 1
    kv = points[(("db.collection.name", "sessions"), ("db.operation.name", "kv.get"))]
    assert kv.count == 1 and kv.sum > 0
    assert sum(p.count for p in points.values()) == 9


def test_one_metrics_serves_one_storage(make_storage: Make) -> None:
    metrics = Metrics()
    make_storage(middleware=[metrics])
    with pytest.raises(StorageError, match="one storage"):
        make_storage(middleware=[metrics])
