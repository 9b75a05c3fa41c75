"""``Tracing``: one OpenTelemetry span per public storage operation.

Spans follow OpenTelemetry's stable database client conventions: kind CLIENT, named
``"{db.operation.name} {db.collection.name}"`` (``"load_raw_messages raw_messages"``,
``"kv.get sessions"``; the operation alone for whole-store calls), with
``db.system.name``, ``db.operation.name``, ``db.collection.name`` and ``db.namespace``
(see ``_otel``). A failed call sets the span's status to ERROR, its ``error.type``
attribute to the exception's class, and records the exception as a span event.

The span is current while the call runs, so spans that the inner layers or the engine's
own instrumentation open (a Redis client's, say) become its children. No id and no
value is put on a span. ``opentelemetry-api`` is the optional extra ``otel``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from ._base import Middleware, MiddlewareContext
from ._otel import collection_name, error_type, namespace_of, package_version, system_name

if TYPE_CHECKING:
    from ..interface import StorageInterface

__all__ = ["Tracing"]

_STREAMS = frozenset({"kv.scan"})


class Tracing(Middleware):
    """Trace every call; ``tracer_provider`` defaults to OpenTelemetry's global one.

    Raises ImportError naming the extra ``otel`` when ``opentelemetry-api`` is missing.
    One Tracing serves one storage.
    """

    def __init__(self, *, tracer_provider: Any = None) -> None:
        try:
            from opentelemetry import trace
        except ImportError as e:
            raise ImportError("Tracing needs opentelemetry-api: pip install 'connectome-storage[otel]'") from e
        self._trace = trace
        self._tracer_provider = tracer_provider
        self._tracer: Any = None
        self._storage: StorageInterface | None = None
        self._base_attributes: dict[str, str] = {}
        self._streams: dict[int, Any] = {}  # id(ctx) -> the open span of a running scan

    def __repr__(self) -> str:
        return "Tracing()"

    def attach(self, storage: StorageInterface) -> None:
        if self._storage is not None and self._storage is not storage:
            raise ConfigError("a Tracing serves one storage; give each storage its own Tracing()")
        self._storage = storage
        self._base_attributes = {"db.system.name": system_name(storage)}
        namespace = namespace_of(storage)
        if namespace is not None:
            self._base_attributes["db.namespace"] = namespace
        self._tracer = self._trace.get_tracer(
            "connectome_storage", package_version(), tracer_provider=self._tracer_provider
        )

    def _name_and_attributes(self, ctx: MiddlewareContext) -> tuple[str, dict[str, str]]:
        attributes = {**self._base_attributes, "db.operation.name": ctx.operation}
        collection = collection_name(ctx)
        if collection is not None:
            attributes["db.collection.name"] = collection
        return (ctx.operation if collection is None else f"{ctx.operation} {collection}"), attributes

    def _fail(self, span: Any, error: BaseException) -> None:
        trace = self._trace
        span.set_attribute("error.type", error_type(error))
        span.record_exception(error)
        span.set_status(trace.Status(trace.StatusCode.ERROR, type(error).__name__))

    async def around(self, ctx: MiddlewareContext, call: Callable[[], Awaitable[Any]]) -> Any:
        name, attributes = self._name_and_attributes(ctx)
        # Status and exception are set here rather than by the context manager, so that
        # error.type is there too and the description is the class, not the message.
        with self._tracer.start_as_current_span(
            name,
            kind=self._trace.SpanKind.CLIENT,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                return await call()
            except BaseException as e:
                self._fail(span, e)
                raise

    # A scan is a stream that ``around`` does not wrap: its span starts with the first
    # step and ends when the iteration does. It is not made current, since the caller's
    # code runs between the steps.

    async def before_call(self, ctx: MiddlewareContext) -> None:
        if ctx.operation in _STREAMS:
            name, attributes = self._name_and_attributes(ctx)
            self._streams[id(ctx)] = self._tracer.start_span(
                name, kind=self._trace.SpanKind.CLIENT, attributes=attributes
            )

    async def after_call(self, ctx: MiddlewareContext, error: BaseException | None) -> None:
        span = self._streams.pop(id(ctx), None) if ctx.operation in _STREAMS else None
        if span is not None:
            if error is not None and not isinstance(error, GeneratorExit):  # GeneratorExit: the caller stopped early
                self._fail(span, error)
            span.end()
