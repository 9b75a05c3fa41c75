"""The message store on the JSON file tree (docs/messages.md).

Layout::

    <base_dir>/messages/{message_id}.json               the message (a JSON object)
    <base_dir>/agents/{agent_id}/read_messages.json     sorted JSON array of read message ids

File names are the ids mapped by ``naming.encode_name``; files are written like every other
one (canonical bytes, temp file + fsync + replace + folder fsync, a backup of a replaced
version). Each write runs under the entity's lock from the tree's lock machinery (a
message: its file; a read state: the agent's folder, shared with its reasoning chains), so
save-if-absent and the read-set union are each one atomic step across coroutines, threads
and processes. Reads never lock. A query reads every message file in one worker thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..interface import Kind
from ..messages import MessageSelect, check_read_ids, check_stored_message
from . import _fs
from ._layout import MESSAGES_FOLDER, READ_STATE_FILE

if TYPE_CHECKING:
    from ..config import FileSettings

__all__ = ["FileMessages"]


class FileMessages:
    """The ``_msg_*`` hooks of FileStorage (listed before StorageInterface in its bases)."""

    if TYPE_CHECKING:  # provided by FileStorage
        _root: Path
        settings: FileSettings

        def path_of(self, kind: Kind, key: str) -> Path: ...

        def _encode(self, value: Any) -> bytes: ...

        async def _load(self, kind: Kind, key: str) -> Any: ...

        def _load_sync(self, kind: Kind, path: Path) -> Any: ...

        def _replace_file(self, path: Path, data: bytes, keep: int | None = None) -> None: ...

        def _remove_file(self, path: Path, keep: int | None = None) -> bool: ...

        async def _locked(self, kind: Kind, key: str, function: Callable[..., Any], *args: Any) -> Any: ...

        def _list_json_files(self, folder: str) -> list[str]: ...

        def _list_entity_dirs(self, folder: str, files: set[str]) -> list[str]: ...

    # --------------------------------------------------------------- messages

    async def _msg_put(self, message: dict[str, Any], *, if_absent: bool) -> bool:
        data = self._encode(message)  # before any await: the caller's dict may change after
        message_id = message["id"]
        path = self.path_of(Kind.MESSAGE, message_id)
        return bool(await self._locked(Kind.MESSAGE, message_id, self._msg_put_sync, path, data, if_absent))

    def _msg_put_sync(self, path: Path, data: bytes, if_absent: bool) -> bool:
        # Under the message file's lock: no other writer can create it between the check
        # and the write. Any entry there (even an unreadable file) holds the id.
        try:
            if if_absent and (path.is_dir() or _fs.regular_size(path) is not None):
                return False
        except OSError as e:
            raise _fs.os_error(e, "reading", path) from e
        self._replace_file(path, data)
        return True

    async def _msg_get(self, message_id: str) -> dict[str, Any] | None:
        value = await self._load(Kind.MESSAGE, message_id)
        if value is None:
            return None
        return check_stored_message(value, str(self.path_of(Kind.MESSAGE, message_id)), message_id)

    def _msg_get_sync(self, message_id: str) -> dict[str, Any] | None:
        path = self.path_of(Kind.MESSAGE, message_id)
        value = self._load_sync(Kind.MESSAGE, path)
        return None if value is None else check_stored_message(value, str(path), message_id)

    async def _msg_ids(self) -> list[str]:
        return await asyncio.to_thread(self._list_json_files, MESSAGES_FOLDER)

    async def _msg_select(self, select: MessageSelect) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self._msg_select_sync, select)

    def _msg_select_sync(self, select: MessageSelect) -> list[dict[str, Any]]:
        # A damaged message raises CorruptedDataError naming it: a query never skips
        # stored data silently.
        found = (self._msg_get_sync(message_id) for message_id in self._list_json_files(MESSAGES_FOLDER))
        return select.apply(message for message in found if message is not None)

    # ------------------------------------------------------------- read state

    async def _msg_readers(self) -> list[str]:
        return await asyncio.to_thread(self._list_entity_dirs, "agents", {READ_STATE_FILE})

    async def _msg_read_ids(self, agent_id: str) -> list[str]:
        value = await self._load(Kind.READ_STATE, agent_id)
        return [] if value is None else check_read_ids(value, str(self.path_of(Kind.READ_STATE, agent_id)))

    async def _msg_add_read(self, agent_id: str, ids: list[str]) -> None:
        await self._locked(Kind.READ_STATE, agent_id, self._msg_add_read_sync, agent_id, ids)

    def _msg_add_read_sync(self, agent_id: str, ids: list[str]) -> None:
        # Read, union and write under the agent's lock: a concurrent mark_read in another
        # process waits, then reads what this one wrote. A damaged file raises
        # CorruptedDataError instead of being overwritten (its ids would be lost).
        path = self.path_of(Kind.READ_STATE, agent_id)
        stored = self._load_sync(Kind.READ_STATE, path) or []
        merged = sorted(set(stored).union(ids))
        if merged != stored:
            self._replace_file(path, self._encode(merged))

    async def _msg_set_read(self, agent_id: str, ids: list[str]) -> None:
        path = self.path_of(Kind.READ_STATE, agent_id)
        if ids:
            await self._locked(Kind.READ_STATE, agent_id, self._replace_file, path, self._encode(ids))
        else:
            await self._locked(Kind.READ_STATE, agent_id, self._remove_file, path)
