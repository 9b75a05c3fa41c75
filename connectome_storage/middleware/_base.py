"""``Middleware`` and ``MiddlewareContext``: what a storage runs around its public methods.

A middleware is a small class overriding the hooks it needs; every hook is optional and
a hook that is not overridden is never called (the chain looks once, when the storage is
built), so a middleware that overrides nothing costs nothing. docs/middleware.md has the
order of the hooks and examples.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..interface import StorageInterface

__all__ = ["CALL_HOOKS", "HOOKS", "Middleware", "MiddlewareContext"]


@dataclass(frozen=True)
class MiddlewareContext:
    """What one call is about; given to every hook of that call.

    ``operation`` is the public method (``"store_conversation"``, ``"load_raw_messages"``,
    ``"kv.set"``, ...); ``kind`` what it touches (``"conversation"``, ``"raw_messages"``,
    ``"chunks"``, ``"memories"``, ``"reasoning_chains"``, ``"cache"``, ``"system"``, ``"kv"``,
    or ``"storage"`` for whole-store calls); ``key`` the id the call is about (None for
    listings and whole-store calls); ``namespace`` the key-value namespace (None otherwise);
    ``write`` whether the call changes stored data; ``started`` ``time.perf_counter()`` when
    the call began. Value hooks of a call about several entries (``kv.get_many``,
    ``kv.query``, ...) get one context per entry, with that entry's ``key``.
    """

    operation: str
    kind: str
    key: str | None
    backend: str
    namespace: str | None
    write: bool
    started: float


class Middleware:
    """Every hook is optional: override what you need. Hooks are async (``attach`` is not).

    The chain runs in list order on the way in (``before_call``, ``before_write``, the
    start of ``around``) and in reverse order on the way out (``after_read``,
    ``after_write``, ``on_error``, ``after_call``): ``middleware=[A, B]`` makes A the outer
    layer and B the inner one, with the backend inside B.
    """

    def attach(self, storage: StorageInterface) -> None:
        """Called once, when the storage is built."""

    async def on_open(self, storage: StorageInterface) -> None:
        """After ``initialize()`` succeeded."""

    async def on_close(self, storage: StorageInterface) -> None:
        """Before ``shutdown()`` releases the backend."""

    async def before_call(self, ctx: MiddlewareContext) -> None:
        """Before anything else of the call."""

    async def before_write(self, ctx: MiddlewareContext, value: Any) -> Any:
        """Each value about to be stored; return the value to store (a dict where a dict belongs)."""
        return value

    async def after_read(self, ctx: MiddlewareContext, value: Any) -> Any:
        """Each value just loaded (never a missing one); return the value to give the caller."""
        return value

    async def after_write(self, ctx: MiddlewareContext) -> None:
        """A write call succeeded."""

    async def on_error(self, ctx: MiddlewareContext, error: BaseException) -> None:
        """The call raised ``error``; it still propagates to the caller."""

    async def after_call(self, ctx: MiddlewareContext, error: BaseException | None) -> None:
        """Always, last; ``error`` is None on success."""

    async def around(self, ctx: MiddlewareContext, call: Callable[[], Awaitable[Any]]) -> Any:
        """Wraps the inner layers and the backend; must return ``await call()``'s result (or another)."""
        return await call()


# The hooks of one call (the others run at build, open and close).
CALL_HOOKS = ("before_call", "before_write", "after_read", "after_write", "on_error", "after_call", "around")
HOOKS = ("attach", "on_open", "on_close", *CALL_HOOKS)
