"""The conversation store through a storage's middleware.

(``delete``, ``list`` and ``get_stats`` call the storage's public methods, which the chain
wraps already, so they are not wrapped twice here.)

``ChainedConversationStore`` is what ``storage.conversation_store()`` returns when the
storage has an active chain: every method runs the chain (operation
``conversation_store.<method>``), and messages go through the value hooks as the raw
history's items (kind ``raw_messages``, key the conversation id), exactly as
``append_raw_messages`` and ``load_raw_messages`` pass them, so either API reads what the
other wrote. The metadata dict is not a value: like key-value tags it stays as it is, so
that queries can read it.
"""

from __future__ import annotations

import builtins
import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar, cast

from ..conversation_query import MetaQuery
from ..conversations import Conversation, ConversationMetadata, ConversationStore, _check_messages
from ._base import MiddlewareContext

if TYPE_CHECKING:
    from ..interface import StorageInterface
    from ._chain import Chain

__all__ = ["ChainedConversationStore"]

T = TypeVar("T")


class ChainedConversationStore(ConversationStore):
    """A ConversationStore whose every method goes through the storage's middleware."""

    def __init__(self, storage: StorageInterface, chain: Chain, default_ttl: float | None = None) -> None:
        super().__init__(storage, default_ttl)
        self._chain = chain

    def _ctx(self, operation: str, key: Any = None, *, write: bool = False) -> MiddlewareContext:
        return self._chain.context(f"conversation_store.{operation}", "raw_messages", key, write=write)

    async def _run(self, operation: str, key: Any, write: bool, inner: Callable[[], Awaitable[T]]) -> T:
        chain = self._chain
        ctx = self._ctx(operation, key, write=write)
        return cast(T, await chain.run(ctx, lambda: chain.call(ctx, inner)))

    async def _written(self, ctx: MiddlewareContext, conversation_id: str, messages: Any) -> Any:
        if not self._chain.before_write:
            return messages
        self._begin(conversation_id)  # refuse an unopened storage or a bad id before a middleware sees anything
        return [await self._chain.write_value(ctx, message) for message in _check_messages(messages)]

    async def _read(self, ctx: MiddlewareContext, messages: builtins.list[Any]) -> builtins.list[Any]:
        if not self._chain.after_read:
            return messages
        return [await self._chain.read_value(ctx, message) for message in messages]

    async def save(
        self,
        conversation_id: str,
        messages: builtins.list[dict[str, Any]],
        *,
        ttl: float | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Conversation:
        chain = self._chain
        ctx = self._ctx("save", conversation_id, write=True)

        async def body() -> Conversation:
            stored = await self._written(ctx, conversation_id, messages)
            saved: Conversation = await chain.call(
                ctx, lambda: ConversationStore.save(self, conversation_id, stored, ttl=ttl, metadata=metadata)
            )
            return dataclasses.replace(saved, messages=_check_messages(messages))  # the caller's, not the stored form

        return await chain.run(ctx, body)  # type: ignore[no-any-return]

    async def append(
        self, conversation_id: str, messages: builtins.list[dict[str, Any]], *, update_timestamp: bool = True
    ) -> ConversationMetadata:
        chain = self._chain
        ctx = self._ctx("append", conversation_id, write=True)

        async def body() -> ConversationMetadata:
            stored = await self._written(ctx, conversation_id, messages)
            return await chain.call(  # type: ignore[no-any-return]
                ctx, lambda: ConversationStore.append(self, conversation_id, stored, update_timestamp=update_timestamp)
            )

        return await chain.run(ctx, body)  # type: ignore[no-any-return]

    async def load(self, conversation_id: str, *, include_expired: bool = False) -> Conversation | None:
        chain = self._chain
        ctx = self._ctx("load", conversation_id)

        async def body() -> Conversation | None:
            loaded: Conversation | None = await chain.call(
                ctx, lambda: ConversationStore.load(self, conversation_id, include_expired=include_expired)
            )
            if loaded is None:
                return None
            return dataclasses.replace(loaded, messages=await self._read(ctx, loaded.messages))

        return await chain.run(ctx, body)  # type: ignore[no-any-return]

    async def exists(self, conversation_id: str) -> bool:
        return await self._run(
            "exists", conversation_id, False, lambda: ConversationStore.exists(self, conversation_id)
        )

    async def clear(self) -> int:
        return await self._run("clear", None, True, lambda: ConversationStore.clear(self))

    async def cleanup(self) -> int:
        return await self._run("cleanup", None, True, lambda: ConversationStore.cleanup(self))

    async def get_ttl(self, conversation_id: str) -> float:
        return await self._run(
            "get_ttl", conversation_id, False, lambda: ConversationStore.get_ttl(self, conversation_id)
        )

    async def set_ttl(self, conversation_id: str, ttl: float | None) -> bool:
        inner = lambda: ConversationStore.set_ttl(self, conversation_id, ttl)  # noqa: E731
        return await self._run("set_ttl", conversation_id, True, inner)

    async def _query_all(self, query: MetaQuery) -> builtins.list[ConversationMetadata]:
        return await self._run("query", None, False, lambda: ConversationStore._query_all(self, query))

    async def _query_count(self, query: MetaQuery) -> int:
        return await self._run("count", None, False, lambda: ConversationStore._query_count(self, query))

    async def _query_aggregate(
        self, query: MetaQuery, group_by: str | None, measures: dict[str, tuple[str, str | None]]
    ) -> dict[Any, dict[str, Any]]:
        inner = lambda: ConversationStore._query_aggregate(self, query, group_by, measures)  # noqa: E731
        return await self._run("aggregate", None, False, inner)
