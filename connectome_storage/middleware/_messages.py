"""The message store through a storage's middleware.

``ChainedMessageStore`` is what ``storage.message_store()`` returns when the storage has an
active chain: every method runs the chain (operation ``message_store.<method>``, kind
``messages``, key the message id or the agent id). A message's routing fields (``id``,
``from``, ``to``, ``timestamp``) stay plain, as a memory's ``memory_id`` does, so queries
and read state keep working; the rest of the message is one value for the value hooks,
stored beside them (``Encryption`` stores ``{"id", "from", "to", "timestamp",
"$encrypted"}``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from ..errors import CorruptedDataError, SerializationError
from ..messages import MessageStore
from ._base import MiddlewareContext

if TYPE_CHECKING:
    from ..interface import StorageInterface
    from ._chain import Chain

__all__ = ["ChainedMessageStore"]

T = TypeVar("T")
ROUTING = ("id", "from", "to", "timestamp")


class ChainedMessageStore(MessageStore):
    """A MessageStore whose every method goes through the storage's middleware."""

    def __init__(self, storage: StorageInterface, chain: Chain) -> None:
        super().__init__(storage)
        self._chain = chain

    def _ctx(self, operation: str, key: Any = None, *, write: bool = False) -> MiddlewareContext:
        return self._chain.context(f"message_store.{operation}", "messages", key, write=write)

    async def _run(self, ctx: MiddlewareContext, inner: Callable[[], Awaitable[T]]) -> T:
        chain = self._chain
        return cast(T, await chain.run(ctx, lambda: chain.call(ctx, inner)))

    async def _sealed(self, ctx: MiddlewareContext, message: dict[str, Any]) -> dict[str, Any]:
        """The message as stored: routing fields plain, the rest through ``before_write``."""
        if not self._chain.before_write:
            return message
        routing = {field: message[field] for field in ROUTING}
        content = await self._chain.write_value(ctx, {k: v for k, v in message.items() if k not in ROUTING})
        if not isinstance(content, dict) or any(field in content for field in ROUTING):
            raise SerializationError(
                f"a middleware turned message {message['id']!r} into {type(content).__name__}; a message's "
                f"content must stay a dict without the routing fields {', '.join(ROUTING)}",
                location="message",
            )
        return {**routing, **content}

    async def _opened(self, ctx: MiddlewareContext, message: dict[str, Any]) -> dict[str, Any]:
        if not self._chain.after_read:
            return message
        own = ctx if ctx.key == message["id"] else self._chain.context(ctx.operation, "messages", message["id"])
        routing = {field: message[field] for field in ROUTING}
        content = await self._chain.read_value(own, {k: v for k, v in message.items() if k not in ROUTING})
        if not isinstance(content, dict):
            raise CorruptedDataError(
                f"message {message['id']!r}", f"a middleware read its content as {type(content).__name__}, not a dict"
            )
        return {**routing, **content}

    async def save(self, message: dict[str, Any]) -> str:
        # The id is settled before any middleware runs: Encryption binds each value to it.
        stored = self._complete(message)
        ctx = self._ctx("save", stored["id"], write=True)

        async def body() -> str:
            sealed = await self._sealed(ctx, stored)
            await self._chain.call(ctx, lambda: self._put(sealed))
            return str(stored["id"])

        return cast(str, await self._chain.run(ctx, body))

    async def get(self, message_id: str) -> dict[str, Any] | None:
        ctx = self._ctx("get", message_id)

        async def body() -> dict[str, Any] | None:
            found = await self._chain.call(ctx, lambda: MessageStore.get(self, message_id))
            return None if found is None else await self._opened(ctx, found)

        return cast("dict[str, Any] | None", await self._chain.run(ctx, body))

    async def query(
        self,
        to: str | None = None,
        from_: str | None = None,
        conversation_with: str | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        ctx = self._ctx("query")

        async def body() -> list[dict[str, Any]]:
            found = await self._chain.call(ctx, lambda: MessageStore.query(self, to, from_, conversation_with, limit))
            return [await self._opened(ctx, message) for message in found]

        return cast("list[dict[str, Any]]", await self._chain.run(ctx, body))

    async def mark_read(self, agent_id: str, ids: Iterable[str]) -> None:
        ctx = self._ctx("mark_read", agent_id, write=True)
        await self._run(ctx, lambda: MessageStore.mark_read(self, agent_id, ids))

    async def get_unread_ids(self, agent_id: str) -> set[str]:
        return await self._run(
            self._ctx("get_unread_ids", agent_id), lambda: MessageStore.get_unread_ids(self, agent_id)
        )
