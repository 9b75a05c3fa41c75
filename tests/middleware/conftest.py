"""Helpers of the middleware tests: middleware that record what the chain does."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from connectome_storage.middleware import Middleware, MiddlewareContext


class Recorder(Middleware):
    """Records every call hook as ``(name, hook, operation)``, into a list shared by a chain."""

    def __init__(self, name: str, log: list[tuple[str, str, str]]) -> None:
        self.name = name
        self.log = log
        self.contexts: list[MiddlewareContext] = []
        self.errors: list[BaseException | None] = []

    def _note(self, hook: str, ctx: MiddlewareContext) -> None:
        self.log.append((self.name, hook, ctx.operation))

    async def before_call(self, ctx: MiddlewareContext) -> None:
        self.contexts.append(ctx)
        self._note("before_call", ctx)

    async def before_write(self, ctx: MiddlewareContext, value: Any) -> Any:
        self._note("before_write", ctx)
        return value

    async def after_read(self, ctx: MiddlewareContext, value: Any) -> Any:
        self._note("after_read", ctx)
        return value

    async def after_write(self, ctx: MiddlewareContext) -> None:
        self._note("after_write", ctx)

    async def on_error(self, ctx: MiddlewareContext, error: BaseException) -> None:
        self._note("on_error", ctx)

    async def after_call(self, ctx: MiddlewareContext, error: BaseException | None) -> None:
        self.errors.append(error)
        self._note("after_call", ctx)

    async def around(self, ctx: MiddlewareContext, call: Callable[[], Awaitable[Any]]) -> Any:
        self._note("around:start", ctx)
        result = await call()
        self._note("around:end", ctx)
        return result


class Wrap(Middleware):
    """Stores each value as ``{"$wrapped": [tag, value]}`` and unwraps it on read."""

    def __init__(self, tag: str = "w") -> None:
        self.tag = tag
        self.written: list[tuple[str | None, Any]] = []

    async def before_write(self, ctx: MiddlewareContext, value: Any) -> Any:
        self.written.append((ctx.key, value))
        return {"$wrapped": [self.tag, value]}

    async def after_read(self, ctx: MiddlewareContext, value: Any) -> Any:
        if isinstance(value, dict) and set(value) == {"$wrapped"} and value["$wrapped"][0] == self.tag:
            return value["$wrapped"][1]
        return value
