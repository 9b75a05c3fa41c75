"""The message store on SQLite (docs/messages.md, docs/sqlite.md).

Tables (migration 4 of ``_sqlite_schema``)::

    messages(message_id PK, sender, recipient, timestamp, data)
        indexes (recipient, timestamp, message_id), (sender, timestamp, message_id),
        (timestamp, message_id)
    read_messages(agent_id, message_id) PK (agent_id, message_id), WITHOUT ROWID

``sender``, ``recipient`` and ``timestamp`` repeat the message's ``from``, ``to`` and
``timestamp`` so that a query is SQL over indexed columns, ordered and limited by SQLite
(TEXT compares as UTF-8 bytes, the same order as Python's ``str``). Saving is one
``INSERT ... ON CONFLICT DO NOTHING``: one winner among concurrent savers of an id, across
processes; marking read is ``INSERT OR IGNORE`` of one row per id, a union by nature.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import StorageError
from ..interface import Problem, StorageInterface
from ..messages import BROADCAST, MessageSelect, check_stored_message

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Callable
    from pathlib import Path

T = TypeVar("T")

__all__ = ["SqliteMessages"]

_INSERT = "INSERT INTO messages (message_id, sender, recipient, timestamp, data) VALUES (?, ?, ?, ?, ?)"
_REPLACE = (
    _INSERT
    + """ ON CONFLICT (message_id) DO UPDATE SET sender = excluded.sender,
    recipient = excluded.recipient, timestamp = excluded.timestamp, data = excluded.data"""
)
_READERS = """WITH RECURSIVE r (agent) AS (
        SELECT MIN(agent_id) FROM read_messages
        UNION ALL SELECT (SELECT MIN(agent_id) FROM read_messages WHERE agent_id > r.agent)
        FROM r WHERE r.agent IS NOT NULL)
    SELECT COUNT(agent) FROM r"""
# The rows addressed to :agent: sent to it, or broadcast by another agent.
_ADDRESSED = "(recipient = :{name} OR (recipient = '*' AND sender != :{name}))"


def select_sql(select: MessageSelect) -> tuple[str, dict[str, Any]]:
    """The SQL (and parameters) of a query: filters, order and limit all in SQLite."""
    where: list[str] = []
    params: dict[str, Any] = {"broadcast": BROADCAST}
    if select.to is not None:
        where.append(_ADDRESSED.format(name="to"))
        params["to"] = select.to
    if select.from_ is not None:
        where.append("sender = :sender")
        params["sender"] = select.from_
    if select.conversation_with is not None:
        # Sent by the peer, sent to it, or a broadcast (of the peer's, or addressed to it).
        where.append("(sender = :peer OR recipient = :peer OR recipient = :broadcast)")
        params["peer"] = select.conversation_with
    sql = "SELECT message_id, data FROM messages"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY timestamp, message_id"
    if select.limit is not None:
        sql += " LIMIT :limit"
        params["limit"] = select.limit
    return sql, params


class SqliteMessages(StorageInterface):
    """The ``_msg_*`` hooks of ``SqliteStorage`` (listed before StorageInterface in its bases)."""

    if TYPE_CHECKING:  # what SqliteStorage provides (sqlite.py)
        _path: Path

        def _dump(self, value: Any) -> str | bytes: ...
        def _parse(self, text: Any, table: str, key: str, shape: type | None = None) -> Any: ...
        async def _read(self, action: str, body: Callable[[sqlite3.Connection], T]) -> T: ...
        async def _point_read(
            self, fetch: Callable[[sqlite3.Connection], list[Any]], finish: Callable[[list[Any]], T]
        ) -> T: ...
        async def _write(self, action: str, body: Callable[[sqlite3.Connection], T]) -> T: ...
        async def _column(self, sql: str, *args: Any) -> list[Any]: ...

    def _msg_row(self, message_id: str, data: Any) -> dict[str, Any]:
        where = f"message_id {message_id!r}"
        value = self._parse(data, "messages", where, dict)
        return check_stored_message(value, f"{self._path} (table messages, {where})", message_id)

    async def _msg_put(self, message: dict[str, Any], *, if_absent: bool) -> bool:
        row = (message["id"], message["from"], message["to"], message["timestamp"], self._dump(message))
        sql = _INSERT + " ON CONFLICT (message_id) DO NOTHING" if if_absent else _REPLACE
        return await self._write("saving a message in", lambda conn: conn.execute(sql, row).rowcount > 0)

    async def _msg_get(self, message_id: str) -> dict[str, Any] | None:
        def fetch(conn: sqlite3.Connection) -> list[Any]:
            return conn.execute("SELECT data FROM messages WHERE message_id = ?", (message_id,)).fetchall()

        def finish(rows: list[Any]) -> dict[str, Any] | None:
            return self._msg_row(message_id, rows[0][0]) if rows else None

        return await self._point_read(fetch, finish)

    async def _msg_ids(self) -> list[str]:
        return await self._column("SELECT message_id FROM messages")

    async def _msg_select(self, select: MessageSelect) -> list[dict[str, Any]]:
        sql, params = select_sql(select)

        def body(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            return [self._msg_row(message_id, data) for message_id, data in conn.execute(sql, params)]

        return await self._read("querying messages in", body)

    async def _msg_readers(self) -> list[str]:
        return await self._column("SELECT DISTINCT agent_id FROM read_messages")

    async def _msg_read_ids(self, agent_id: str) -> list[str]:
        return await self._column(
            "SELECT message_id FROM read_messages WHERE agent_id = ? ORDER BY message_id", agent_id
        )

    async def _msg_add_read(self, agent_id: str, ids: list[str]) -> None:
        sql = "INSERT INTO read_messages (agent_id, message_id) VALUES (?, ?) ON CONFLICT DO NOTHING"
        rows = [(agent_id, message_id) for message_id in ids]
        await self._write("marking messages read in", lambda conn: conn.executemany(sql, rows))

    async def _msg_set_read(self, agent_id: str, ids: list[str]) -> None:
        def body(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM read_messages WHERE agent_id = ?", (agent_id,))
            conn.executemany(
                "INSERT INTO read_messages (agent_id, message_id) VALUES (?, ?)", [(agent_id, i) for i in ids]
            )

        await self._write("writing the read state in", body)

    async def _msg_unread(self, agent_id: str) -> set[str]:
        sql = f"""SELECT message_id FROM messages WHERE {_ADDRESSED.format(name="agent")}
            AND message_id NOT IN (SELECT message_id FROM read_messages WHERE agent_id = :agent)"""
        return set(await self._read("reading", lambda conn: [row[0] for row in conn.execute(sql, {"agent": agent_id})]))

    async def _msg_census(self) -> tuple[int, int, list[Problem]]:
        """One read of every message row (each parsed, a bad one named) and the reader count."""
        return await self._read("counting messages in", self._msg_count)

    def _msg_count(self, conn: sqlite3.Connection) -> tuple[int, int, list[Problem]]:
        count, problems = 0, []
        for message_id, data in conn.execute("SELECT message_id, data FROM messages"):
            try:
                self._msg_row(message_id, data)
                count += 1
            except StorageError as e:
                problems.append(Problem(getattr(e, "path", None) or str(self._path), str(e)))
        # Distinct agents by skipping through the primary key: one probe per agent.
        readers = conn.execute(_READERS).fetchone()[0]
        return count, int(readers), problems
