"""OpenAI Agents SDK: ``ConnectomeSession``, the SDK's ``Session`` over a conversation's raw history.

```python
from agents import Agent, Runner
from connectome_storage import create_storage_from_env
from connectome_storage.adapters.openai_agents import ConnectomeSession

storage = create_storage_from_env()
session = ConnectomeSession("user-123", storage)
result = await Runner.run(agent, "Hello", session=session)
```

The items the SDK hands to the session are plain JSON dicts; they are stored as they are,
oldest first, as the conversation's raw messages, so on the file tree the transcript is
``conversations/{session_id}/raw_messages.json``, readable and diffable.

Needs the ``openai-agents`` extra (``pip install connectome-storage[openai-agents]``).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from ..interface import StorageInterface
from ..naming import check_id

try:
    from agents.memory.session_settings import SessionSettings, coerce_session_settings
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "connectome_storage.adapters.openai_agents needs the OpenAI Agents SDK: "
        "pip install 'connectome-storage[openai-agents]'"
    ) from e

if TYPE_CHECKING:
    from agents.items import TResponseInputItem

__all__ = ["ConnectomeSession"]


class ConnectomeSession:
    """The Agents SDK ``Session`` protocol over ``storage``'s raw messages of ``session_id``.

    ``isinstance(session, agents.memory.session.Session)`` holds. The caller owns the
    storage: if it is not initialized yet, the session initializes it on first use
    (``initialize()`` is idempotent), on the event loop the session is used from; shutting
    it down stays the caller's job. Every backend works; ``pop_item`` is one atomic step
    against concurrent ``add_items`` from any process.
    """

    session_settings: SessionSettings | None

    def __init__(
        self,
        session_id: str,
        storage: StorageInterface,
        *,
        session_settings: SessionSettings | dict[str, Any] | None = None,
    ) -> None:
        if not isinstance(storage, StorageInterface):
            raise TypeError(f"storage must be a connectome_storage StorageInterface, got {type(storage).__name__}")
        self.session_id = check_id(session_id, "session_id")
        self.storage = storage
        self.session_settings = (
            coerce_session_settings(session_settings) if session_settings is not None else SessionSettings()
        )
        self._ready = False
        self._opening: asyncio.Lock | None = None

    def __repr__(self) -> str:
        return f"ConnectomeSession({self.session_id!r}, {self.storage!r})"

    async def _storage(self) -> StorageInterface:
        # One initialize() per session even when the first calls race each other.
        if not self._ready:
            if self._opening is None:
                self._opening = asyncio.Lock()
            async with self._opening:
                await self.storage.initialize()
                self._ready = True
        return self.storage

    def _limit(self, limit: int | None) -> int | None:
        if limit is not None:
            return limit
        return None if self.session_settings is None else self.session_settings.limit

    async def get_items(self, limit: int | None = None) -> list[TResponseInputItem]:
        """The history, oldest first; with ``limit``, the latest ``limit`` items in chronological order.

        ``limit=None`` falls back to ``session_settings.limit``; 0 gives ``[]`` and a
        negative limit the whole history, as the SDK's own SQLiteSession does.
        """
        storage = await self._storage()
        items: list[Any] = await storage.load_raw_messages(self.session_id)
        effective = self._limit(limit)
        if effective is None or effective < 0:
            return items
        return items[max(0, len(items) - effective) :]

    async def add_items(self, items: list[TResponseInputItem]) -> None:
        """Append items (JSON dicts) to the history, all of them or none."""
        if not items:
            return
        storage = await self._storage()
        await storage.append_raw_messages(self.session_id, list(items))  # type: ignore[arg-type]

    async def pop_item(self) -> TResponseInputItem | None:
        """Remove and return the newest item; None when the history is empty."""
        storage = await self._storage()
        return await storage.pop_raw_message(self.session_id)  # type: ignore[return-value]

    async def clear_session(self) -> None:
        """Remove the whole history of this session (the raw messages only)."""
        storage = await self._storage()
        await storage.store_raw_messages(self.session_id, [])
