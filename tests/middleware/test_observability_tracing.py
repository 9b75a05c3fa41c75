"""Tracing on every backend, through the OpenTelemetry SDK's in-memory span exporter."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Awaitable, Callable, Iterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from connectome_storage import StorageInterface
from connectome_storage.config import redact_url
from connectome_storage.errors import InvalidKeyError, StorageError
from connectome_storage.middleware import Middleware, MiddlewareContext, Tracing

Make = Callable[..., StorageInterface]
SECRET = "s3cret-value-never-on-a-span"
SYSTEMS = {
    "file": "connectome_storage.file",
    "memory": "connectome_storage.memory",
    "sqlite": "sqlite",
    "redis": "redis",
    "postgres": "postgresql",
}


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def by_name(finished: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [span for span in finished if span.name == name]


async def test_one_client_span_per_operation(
    make_storage: Make, spans: tuple[TracerProvider, InMemorySpanExporter], backend: str
) -> None:
    backend = backend.removesuffix("-msgpack")  # the serializer does not change the engine
    provider, exporter = spans
    async with make_storage(middleware=[Tracing(tracer_provider=provider)]) as storage:
        await storage.store_conversation("c1", {"note": SECRET})
        assert await storage.load_conversation("c1") == {"note": SECRET}
        await storage.append_raw_messages("c1", [{"content": SECRET}])
        await storage.kv("sessions").set("s1", SECRET)
        assert await storage.kv("sessions").get("s1") == SECRET
        await storage.get_storage_stats()
        with pytest.raises(InvalidKeyError):
            await storage.load_memories("")
        settings = storage.settings
    finished = exporter.get_finished_spans()
    assert [span.name for span in finished] == [
        "store_conversation conversation",
        "load_conversation conversation",
        "append_raw_messages raw_messages",
        "kv.set sessions",
        "kv.get sessions",
        "get_storage_stats",
        "load_memories memories",
    ]
    namespace = {
        "file": str(getattr(settings, "base_dir", "")),
        "sqlite": str(getattr(settings, "db_path", "")),
        "redis": getattr(settings, "key_prefix", None),
        "postgres": redact_url(getattr(settings, "dsn", "")),
    }.get(backend)
    for span in finished:
        assert span.kind is trace.SpanKind.CLIENT
        attributes = dict(span.attributes or {})
        assert attributes["db.system.name"] == SYSTEMS[backend]
        assert attributes.get("db.namespace") == namespace
        assert span.name == " ".join(
            str(attributes[k]) for k in ("db.operation.name", "db.collection.name") if k in attributes
        )
        assert SECRET not in repr(attributes) and SECRET not in repr([e.attributes for e in span.events])
    [kv_get] = by_name(finished, "kv.get sessions")
    assert kv_get.attributes is not None and kv_get.attributes["db.collection.name"] == "sessions"
    [stats] = by_name(finished, "get_storage_stats")
    assert stats.attributes is not None and "db.collection.name" not in stats.attributes
    for span in finished[:-1]:
        assert span.status.status_code is trace.StatusCode.UNSET
        assert span.attributes is not None and "error.type" not in span.attributes
    failed = finished[-1]
    assert failed.status.status_code is trace.StatusCode.ERROR
    assert failed.status.description == "InvalidKeyError"
    assert failed.attributes is not None
    assert failed.attributes["error.type"] == "connectome_storage.errors.InvalidKeyError"
    [event] = failed.events
    assert event.name == "exception"
    assert event.attributes is not None
    assert event.attributes["exception.type"].endswith("InvalidKeyError")  # type: ignore[union-attr]


async def test_a_scan_has_one_span_from_first_step_to_end(
    make_storage: Make, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans
    async with make_storage(middleware=[Tracing(tracer_provider=provider)]) as storage:
        kv = storage.kv("sessions")
        await kv.set_many({f"k{i}": i for i in range(5)})
        seen = [key async for key, _value in kv.scan()]
        assert len(seen) == 5
        async with aclosing(kv.scan("k*")) as stream:
            async for _ in stream:
                break  # the caller stopping early is not a failure
    set_many, scan, stopped = exporter.get_finished_spans()
    assert (set_many.name, scan.name, stopped.name) == ("kv.set_many sessions", "kv.scan sessions", "kv.scan sessions")
    for span in (scan, stopped):
        assert span.kind is trace.SpanKind.CLIENT and span.status.status_code is trace.StatusCode.UNSET
        assert span.attributes is not None and "error.type" not in span.attributes


class Inner(Middleware):
    """Opens a span of its own inside the call, as an engine's instrumentation would."""

    def __init__(self, provider: TracerProvider) -> None:
        self.tracer = provider.get_tracer("inner")

    async def around(self, ctx: MiddlewareContext, call: Callable[[], Awaitable[Any]]) -> Any:
        with self.tracer.start_as_current_span("engine"):
            return await call()


async def test_spans_opened_inside_are_children(
    make_storage: Make, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans
    async with make_storage(middleware=[Tracing(tracer_provider=provider), Inner(provider)]) as storage:
        await storage.store_system_state("s1", 1)
    engine, outer = exporter.get_finished_spans()
    assert outer.name == "store_system_state system"
    assert engine.parent is not None and engine.parent.span_id == outer.context.span_id


def test_one_tracing_serves_one_storage(make_storage: Make) -> None:
    tracing = Tracing()
    make_storage(middleware=[tracing])
    with pytest.raises(StorageError, match="one storage"):
        make_storage(middleware=[tracing])


def test_without_opentelemetry_tracing_names_the_extra() -> None:
    """opentelemetry is hidden from a fresh interpreter: the package still imports, Metrics
    still works (snapshot only), and Tracing() asks for the ``otel`` extra."""
    code = textwrap.dedent(
        """
        import sys

        class Hide:
            def find_spec(self, name, path=None, target=None):
                if name == "opentelemetry" or name.startswith("opentelemetry."):
                    raise ImportError(f"No module named {name!r} (hidden by the test)")
                return None

        sys.meta_path.insert(0, Hide())
        import asyncio
        from connectome_storage import create_memory_storage
        from connectome_storage.middleware import Metrics, Tracing

        metrics = Metrics()

        async def main():
            async with create_memory_storage(middleware=[metrics]) as storage:
                await storage.store_system_state("s", 1)

        asyncio.run(main())
        assert metrics.snapshot()["totals"]["count"] == 1
        try:
            Tracing()
        except ImportError as e:
            print(e)
        else:
            raise SystemExit("Tracing() did not raise")
        assert not any(name.startswith("opentelemetry") for name in sys.modules)
        """
    )
    root = str(Path(__file__).parents[2])
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=root,
        env={"PYTHONPATH": root, "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "connectome-storage[otel]" in done.stdout
