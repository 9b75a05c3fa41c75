"""The message store (docs/messages.md): ``storage.message_store()`` -> ``MessageStore``.

Messages that agents send each other, with per-agent read state. Written once over the
``_msg_*`` hooks of ``StorageInterface``: this module checks messages, ids and arguments,
generates ids and time stamps, and holds the reference semantics (``MessageSelect``) that
scanning backends apply as they are and that native queries (SQL, Redis sets) agree with.

A stored message is a JSON object with at least ``"id"``, ``"from"``, ``"to"`` and
``"timestamp"``; ``"to": "*"`` is a broadcast, addressed to every agent but its sender.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .codec import check_value, format_time
from .errors import CorruptedDataError, InvalidArgumentError, InvalidKeyError, SerializationError
from .naming import check_id

if TYPE_CHECKING:
    from .interface import StorageInterface

__all__ = [
    "BROADCAST",
    "MessageSelect",
    "MessageStore",
    "check_stored_message",
    "new_message_id",
]

BROADCAST = "*"
_REQUIRED = ("id", "from", "to", "timestamp")


# ------------------------------------------------------------------ message ids

_id_lock = threading.Lock()
_last: tuple[int, int] = (-1, 0)  # (milliseconds, random part) of the last id made here
_RANDOM_BITS = 64
# A fresh random part starts in the lower half, so the increments of a busy millisecond
# never run out of room.
_FRESH_LIMIT = 1 << (_RANDOM_BITS - 1)


def new_message_id(now_ms: int) -> str:
    """``msg_<12 hex digits of epoch ms>_<16 random hex digits>``, strictly increasing in
    this process: within one millisecond (or when the clock goes back) the random part of
    the previous id is incremented instead of drawn afresh."""
    global _last
    with _id_lock:
        last_ms, last_random = _last
        if now_ms > last_ms:
            ms, random_part = now_ms, int.from_bytes(os.urandom(8)) % _FRESH_LIMIT
        else:
            ms, random_part = last_ms, last_random + 1 + int.from_bytes(os.urandom(2))
            if random_part >= 1 << _RANDOM_BITS:  # the millisecond is full: borrow the next one
                ms, random_part = last_ms + 1, int.from_bytes(os.urandom(8)) % _FRESH_LIMIT
        _last = (ms, random_part)
    return f"msg_{ms:012x}_{random_part:016x}"


# ------------------------------------------------------------------ selection


@dataclass(frozen=True)
class MessageSelect:
    """Which messages a query is about: the filters combine with AND.

    ``to``: addressed to that agent (``to`` equal to it, or a broadcast not sent by it);
    ``from_``: sent by it; ``conversation_with``: sent by it or addressed to it. Ordered by
    (timestamp, id); ``limit`` keeps the first (oldest) ones.
    """

    to: str | None = None
    from_: str | None = None
    conversation_with: str | None = None
    limit: int | None = None

    def matches(self, message: dict[str, Any]) -> bool:
        sender, recipient = message["from"], message["to"]
        if self.to is not None and not addressed_to(sender, recipient, self.to):
            return False
        if self.from_ is not None and sender != self.from_:
            return False
        peer = self.conversation_with
        return peer is None or sender == peer or addressed_to(sender, recipient, peer)

    def apply(self, messages: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """Filter, order and limit: the whole query over messages a backend scanned."""
        hits = sorted((m for m in messages if self.matches(m)), key=sort_key)
        return hits if self.limit is None else hits[: self.limit]


def addressed_to(sender: str, recipient: str, agent_id: str) -> bool:
    """Whether a message from ``sender`` to ``recipient`` is addressed to ``agent_id``."""
    return recipient == agent_id or (recipient == BROADCAST and sender != agent_id)


def sort_key(message: dict[str, Any]) -> tuple[str, str]:
    return (message["timestamp"], message["id"])


def check_stored_message(value: Any, source: str, message_id: str | None = None) -> dict[str, Any]:
    """``value`` if it is a stored message (stored under ``message_id``, when given), else
    CorruptedDataError naming ``source``. Every backend reads messages through this."""
    if not isinstance(value, dict):
        raise CorruptedDataError(source, f"expected a JSON object (a message), found {type(value).__name__}")
    for field in _REQUIRED:
        if not isinstance(value.get(field), str) or not value[field]:
            raise CorruptedDataError(source, f"the message has no non-empty string {field!r}")
    if message_id is not None and value["id"] != message_id:
        raise CorruptedDataError(source, f"the message carries id {value['id']!r} but is stored as {message_id!r}")
    return value


def check_read_ids(value: Any, source: str) -> list[str]:
    """``value`` if it is a read state (a JSON array of message id strings), else CorruptedDataError."""
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise CorruptedDataError(source, "expected a JSON array of message id strings (a read state)")
    return value


# ------------------------------------------------------------------ the store


class MessageStore:
    """Messages agents send each other, with per-agent read state (docs/messages.md).

    Obtained from ``storage.message_store()``; every method needs an initialized storage.
    """

    def __init__(self, storage: StorageInterface) -> None:
        self._storage = storage

    def __repr__(self) -> str:
        return f"MessageStore({type(self._storage).__name__})"

    async def save(self, message: dict[str, Any]) -> str:
        """Store a copy of ``message`` and return its id.

        ``"from"`` and ``"to"`` are required agent ids (``"to": "*"`` broadcasts); ``"id"``
        is generated when absent, ``"timestamp"`` taken from the storage's clock when absent.
        The caller's dict is not modified. InvalidKeyError for a bad id or one already
        stored (one winner among concurrent savers of an id, across processes);
        SerializationError for a value JSON cannot hold. Nothing is stored on error.
        """
        stored = self._complete(message)
        await self._put(stored)
        return str(stored["id"])

    def _complete(self, message: Any) -> dict[str, Any]:
        """A checked copy of ``message`` with its id and time stamp filled in."""
        storage = self._storage
        storage._require_initialized()
        stored = _checked_message(message)
        now_ms = storage._now_ms()
        if "id" not in stored:
            stored["id"] = new_message_id(now_ms)
        if "timestamp" not in stored:
            stored["timestamp"] = format_time(now_ms)
        return stored

    async def _put(self, stored: dict[str, Any]) -> None:
        if not await self._storage._msg_put(stored, if_absent=True):
            raise InvalidKeyError(
                f"a message with id {stored['id']!r} is already stored; ids are never reused: "
                "leave 'id' out to get a fresh one"
            )

    async def get(self, message_id: str) -> dict[str, Any] | None:
        """The message stored under ``message_id`` (a copy), or None."""
        storage = self._storage
        storage._require_initialized()
        check_id(message_id, "message_id")
        return await storage._msg_get(message_id)

    async def query(
        self,
        to: str | None = None,
        from_: str | None = None,
        conversation_with: str | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Messages addressed to ``to``, sent by ``from_``, and sent by or addressed to
        ``conversation_with`` (each filter optional, combined with AND), oldest first:
        ordered by timestamp, then id. ``limit`` keeps the first ``limit`` of them."""
        storage = self._storage
        storage._require_initialized()
        for value, what in ((to, "to"), (from_, "from_"), (conversation_with, "conversation_with")):
            if value is not None:
                check_id(value, what)
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise InvalidArgumentError(f"limit must be a positive int or None, got {limit!r}")
        select = MessageSelect(to, from_, conversation_with, limit)
        # Backends may return a superset or in any order: the reference semantics decide.
        return select.apply(await storage._msg_select(select))

    async def mark_read(self, agent_id: str, ids: Iterable[str]) -> None:
        """Add ``ids`` to the agent's read set (a union: marking again changes nothing).

        Ids need not be stored messages (marking one ahead of time is harmless: it is
        simply never unread). Atomic against concurrent ``mark_read`` of the same agent.
        """
        storage = self._storage
        storage._require_initialized()
        _check_agent(agent_id, "agent_id")
        if isinstance(ids, str) or not isinstance(ids, Iterable):
            raise InvalidArgumentError(f"ids must be an iterable of message id strs, got {type(ids).__name__}")
        wanted = sorted({check_id(message_id, "ids[]") for message_id in ids})
        if wanted:
            await storage._msg_add_read(agent_id, wanted)

    async def get_unread_ids(self, agent_id: str) -> set[str]:
        """Ids of the messages addressed to the agent (directly or by broadcast) that it
        has not marked read."""
        storage = self._storage
        storage._require_initialized()
        _check_agent(agent_id, "agent_id")
        return await storage._msg_unread(agent_id)


def _check_agent(agent_id: Any, what: str) -> str:
    check_id(agent_id, what)
    if agent_id == BROADCAST:
        raise InvalidKeyError(f"{what} must name an agent; {BROADCAST!r} means every agent and only fits 'to'")
    return str(agent_id)


def _checked_message(message: Any) -> dict[str, Any]:
    """A shallow copy of a valid message (values are re-encoded by the backends, so nested
    values the caller mutates later never reach what is stored)."""
    if not isinstance(message, dict):
        raise SerializationError(f"message must be a dict, got {type(message).__name__}", location="message")
    for field in ("from", "to"):
        if field not in message:
            raise InvalidKeyError(f"message has no {field!r}: every message names its sender and recipient")
    _check_agent(message["from"], "message['from']")
    check_id(message["to"], "message['to']")
    if "id" in message:
        check_id(message["id"], "message['id']")
    if "timestamp" in message and not isinstance(message["timestamp"], str):
        raise SerializationError(
            f"message['timestamp'] must be a str (ISO 8601), got {type(message['timestamp']).__name__}",
            location="message['timestamp']",
        )
    if "timestamp" in message and not message["timestamp"]:
        raise SerializationError("message['timestamp'] must not be empty", location="message['timestamp']")
    check_value(message, "message")
    return dict(message)
