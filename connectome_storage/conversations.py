"""The conversation store (docs/conversations.md): ``storage.conversation_store()``.

A view over the same conversations as the rest of the API: a conversation's messages are
its raw message history, and the store adds one part, its metadata (times, message count,
TTL, the caller's dict). Written once over the ``_meta_*`` / ``_conversation_*`` hooks of
``StorageInterface``; backends hold ``MetaRecord``s (times in epoch milliseconds) and this
module turns them into ``ConversationMetadata`` (aware UTC datetimes).
"""

from __future__ import annotations

import builtins
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar, cast

import orjson

from .codec import check_value, format_time, parse_time
from .conversation_query import TIME_FIELDS, ConversationQuery, MetaQuery
from .errors import CorruptedDataError, InvalidArgumentError, SerializationError
from .kv import ms_to_datetime
from .naming import check_id

if TYPE_CHECKING:
    from .interface import StorageInterface

__all__ = ["Conversation", "ConversationMetadata", "ConversationStore", "MetaRecord"]

T = TypeVar("T")


@dataclass(frozen=True)
class MetaRecord:
    """A conversation's metadata as backends hold it: times in epoch milliseconds.

    A conversation stored only through the storage methods (store_raw_messages, ...) has no metadata; queries see
    it as a record with every field but ``conversation_id`` missing (``created_ms`` None).
    """

    conversation_id: str
    created_ms: int | None
    updated_ms: int | None
    message_count: int | None
    ttl: float | None
    expires_ms: int | None
    metadata: dict[str, Any] | None

    def expired(self, now_ms: int) -> bool:
        return self.expires_ms is not None and now_ms >= self.expires_ms

    def to_document(self) -> dict[str, Any]:
        """The JSON document stored as ``metadata.json`` (keys in this order)."""
        return {
            "conversation_id": self.conversation_id,
            "created_at": None if self.created_ms is None else format_time(self.created_ms),
            "updated_at": None if self.updated_ms is None else format_time(self.updated_ms),
            "message_count": self.message_count,
            "ttl": _plain_number(self.ttl),
            "expires_at": None if self.expires_ms is None else format_time(self.expires_ms),
            "metadata": self.metadata,
        }

    @classmethod
    def from_document(cls, document: Any, source: str) -> MetaRecord:
        """Parse a stored document; CorruptedDataError naming ``source`` when it is not one."""
        try:
            if not isinstance(document, dict):
                raise ValueError(f"expected a JSON object, got {type(document).__name__}")
            conversation_id = document["conversation_id"]
            count = document["message_count"]
            ttl = document["ttl"]
            metadata = document["metadata"]
            if not isinstance(conversation_id, str):
                raise ValueError("conversation_id must be a string")
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise ValueError("message_count must be an int >= 0")
            if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int | float) or ttl <= 0):
                raise ValueError("ttl must be a positive number or null")
            if not isinstance(metadata, dict):
                raise ValueError("metadata must be a JSON object")
            expires = document["expires_at"]
            return cls(
                conversation_id, parse_time(document["created_at"]), parse_time(document["updated_at"]),
                count, ttl, None if expires is None else parse_time(expires), metadata,
            )  # fmt: skip
        except KeyError as e:
            raise CorruptedDataError(source, f"conversation metadata lacks the field {e.args[0]!r}") from e
        except ValueError as e:
            raise CorruptedDataError(source, f"not conversation metadata: {e}") from e

    def to_metadata(self) -> ConversationMetadata:
        return ConversationMetadata(
            conversation_id=self.conversation_id,
            created_at=None if self.created_ms is None else ms_to_datetime(self.created_ms),
            updated_at=None if self.updated_ms is None else ms_to_datetime(self.updated_ms),
            message_count=self.message_count,
            ttl=self.ttl,
            expires_at=None if self.expires_ms is None else ms_to_datetime(self.expires_ms),
            metadata=dict(self.metadata or {}),
        )


@dataclass(frozen=True)
class ConversationMetadata:
    """A conversation's metadata; times are aware UTC datetimes.

    ``created_at``, ``updated_at`` and ``message_count`` are None only for a conversation
    the store has never written (stored through the storage methods alone).
    """

    conversation_id: str
    created_at: datetime | None
    updated_at: datetime | None
    message_count: int | None
    ttl: float | None
    expires_at: datetime | None
    metadata: dict[str, Any]


@dataclass(frozen=True)
class Conversation:
    """``load`` and ``save`` return this: the messages (the raw history) and the metadata."""

    conversation_id: str
    messages: list[dict[str, Any]]
    metadata: ConversationMetadata


class ConversationStore:
    """Conversations with metadata, per-conversation TTL and queries (docs/conversations.md).

    Get it from ``storage.conversation_store(default_ttl=None)``. ``default_ttl`` (seconds)
    applies to ``save`` without a ``ttl`` and to conversations ``append`` creates.
    """

    def __init__(self, storage: StorageInterface, default_ttl: float | None = None) -> None:
        from .interface import check_ttl

        self._storage = storage
        self.default_ttl = None if default_ttl is None else check_ttl(default_ttl, "default_ttl")

    @property
    def storage(self) -> StorageInterface:
        return self._storage

    async def __aenter__(self) -> Self:
        await self._storage.initialize()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Shut the underlying storage down."""
        await self._storage.shutdown()

    # ------------------------------------------------------------------ writes

    async def save(
        self,
        conversation_id: str,
        messages: list[dict[str, Any]],
        *,
        ttl: float | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Conversation:
        """Replace the messages; ``created_at`` survives; ``ttl`` None means ``default_ttl``;
        ``metadata`` None keeps what is stored."""
        storage, now_ms = self._begin(conversation_id)
        messages = _check_messages(messages)
        ttl = self._ttl(ttl)
        new_metadata = _check_metadata(metadata)
        previous = await storage._meta_read(conversation_id, now_ms)
        record = MetaRecord(
            conversation_id,
            now_ms if previous is None or previous.created_ms is None else previous.created_ms,
            now_ms,
            len(messages),
            ttl,
            None if ttl is None else now_ms + max(1, round(ttl * 1000)),
            new_metadata if new_metadata is not None else (previous.metadata if previous else None) or {},
        )
        await storage._conversation_save(record, messages, now_ms)
        return Conversation(conversation_id, _copy(messages), record.to_metadata())

    async def append(
        self, conversation_id: str, messages: list[dict[str, Any]], *, update_timestamp: bool = True
    ) -> ConversationMetadata:
        """Append messages, creating the conversation when missing (with ``default_ttl``);
        never loads the history."""
        storage, now_ms = self._begin(conversation_id)
        messages = _check_messages(messages)
        ttl = self.default_ttl
        created = MetaRecord(
            conversation_id, now_ms, now_ms, 0, ttl, None if ttl is None else now_ms + max(1, round(ttl * 1000)), {}
        )
        record = await storage._conversation_append(created, messages, now_ms, update_timestamp=update_timestamp)
        return record.to_metadata()

    async def set_ttl(self, conversation_id: str, ttl: float | None) -> bool:
        """Set the conversation to expire ``ttl`` seconds from now (None: never); False when missing."""
        from .interface import check_ttl

        storage, now_ms = self._begin(conversation_id)
        seconds = None if ttl is None else check_ttl(ttl)
        expires_ms = None if seconds is None else now_ms + max(1, round(seconds * 1000))
        return await storage._conversation_set_expiry(conversation_id, seconds, expires_ms, now_ms)

    async def delete(self, conversation_id: str) -> bool:
        """Remove every part of the conversation; False when it was missing or expired."""
        return await self._storage.delete_conversation(conversation_id)

    async def clear(self) -> int:
        """Remove every conversation (all parts); returns how many there were."""
        storage = self._storage
        storage._require_initialized()
        removed = 0
        for conversation_id in await storage._list_conversations():
            removed += await storage._delete_conversation(conversation_id)
        await storage._remove_expired_conversations(storage._now_ms())
        return removed

    async def cleanup(self) -> int:
        """Remove expired conversations; returns how many."""
        storage = self._storage
        storage._require_initialized()
        return await storage._remove_expired_conversations(storage._now_ms())

    # ------------------------------------------------------------------- reads

    async def load(self, conversation_id: str, *, include_expired: bool = False) -> Conversation | None:
        """The conversation, or None when missing or expired (``include_expired``: an expired
        one that ``cleanup()`` has not removed yet; on Redis, which expires natively, never)."""
        storage, now_ms = self._begin(conversation_id)
        loaded = await storage._conversation_load(conversation_id, now_ms, include_expired=include_expired)
        if loaded is None:
            return None
        record, messages = loaded
        if record.created_ms is None:  # never written by the store: count what was loaded
            record = dataclasses.replace(record, message_count=len(messages))
        return Conversation(conversation_id, messages, record.to_metadata())

    async def exists(self, conversation_id: str) -> bool:
        storage, now_ms = self._begin(conversation_id)
        return await storage._conversation_exists(conversation_id, now_ms)

    async def list(self) -> builtins.list[str]:
        """Sorted ids of unexpired conversations."""
        return await self._storage.list_conversations()

    async def get_ttl(self, conversation_id: str) -> float:
        """Seconds left; ``-1.0`` when it never expires; ``-2.0`` when missing (or expired)."""
        storage, now_ms = self._begin(conversation_id)
        record = await storage._meta_read(conversation_id, now_ms)
        if record is None:
            return -1.0 if await storage._conversation_exists(conversation_id, now_ms) else -2.0
        if record.expires_ms is None:
            return -1.0
        return (record.expires_ms - now_ms) / 1000

    async def get_stats(self) -> dict[str, Any]:
        """``total_conversations``, ``total_messages``, ``expired_conversations`` (not yet
        removed) and ``storage_size`` (bytes)."""
        stats = await self._storage.get_storage_stats()
        return {
            "total_conversations": stats["conversation_count"],
            "total_messages": stats["raw_message_count"],
            "expired_conversations": stats["expired_conversation_count"],
            "storage_size": stats["total_bytes"],
        }

    def query(self) -> ConversationQuery:
        """A query over the metadata of unexpired conversations (docs/conversations.md)."""
        return ConversationQuery(self)

    async def _query_all(self, query: MetaQuery) -> builtins.list[ConversationMetadata]:
        storage = self._storage
        storage._require_initialized()
        return [record.to_metadata() for record in await storage._meta_query(query, storage._now_ms())]

    async def _query_count(self, query: MetaQuery) -> int:
        storage = self._storage
        storage._require_initialized()
        return await storage._meta_count(query, storage._now_ms())

    async def _query_aggregate(
        self, query: MetaQuery, group_by: str | None, measures: dict[str, tuple[str, str | None]]
    ) -> dict[Any, dict[str, Any]]:
        storage = self._storage
        storage._require_initialized()
        result = await storage._meta_aggregate(query, group_by, measures, storage._now_ms())
        # Time fields come back as epoch milliseconds; callers compare them with datetimes.
        for row in result.values():
            for name, (op, field) in measures.items():
                if op in ("min", "max") and field in TIME_FIELDS and row[name] is not None:
                    row[name] = ms_to_datetime(row[name])
        if group_by in TIME_FIELDS:
            return {None if key is None else ms_to_datetime(key): row for key, row in result.items()}
        return result

    # ----------------------------------------------------------------- helpers

    def _begin(self, conversation_id: str) -> tuple[StorageInterface, int]:
        storage = self._storage
        storage._require_initialized()
        check_id(conversation_id, "conversation_id")
        return storage, storage._now_ms()

    def _ttl(self, ttl: float | None) -> float | None:
        from .interface import check_ttl

        return self.default_ttl if ttl is None else check_ttl(ttl)


def _plain_number(value: float | None) -> float | int | None:
    """3600.0 -> 3600, so a file shows the TTL as the caller wrote it."""
    if value is not None and float(value).is_integer():
        return int(value)
    return value


def _check_messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list):
        raise SerializationError(
            f"messages must be a list of dicts, got {type(messages).__name__}", location="messages"
        )
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise SerializationError(
                f"messages[{index}] must be a dict, got {type(message).__name__}", location=f"messages[{index}]"
            )
        check_value(message, f"messages[{index}]")
    return _copy(messages)


def _check_metadata(metadata: Any) -> dict[str, Any] | None:
    if metadata is None:
        return None
    if not isinstance(metadata, Mapping):
        raise InvalidArgumentError(f"metadata must be a dict, got {type(metadata).__name__}")
    checked: dict[str, Any] = dict(metadata)
    check_value(checked, "metadata")
    return _copy(checked)


def _copy(value: T) -> T:
    """A deep copy of a JSON value (the caller's objects are never stored or returned)."""
    return cast(T, orjson.loads(orjson.dumps(value)))
