"""The message store on PostgreSQL: the message hooks of ``PostgresStorage`` (docs/messages.md).

Tables (``_postgres_schema.MESSAGE_TABLES``)::

    messages(message_id PK, sender, recipient, timestamp, data)
        indexes (recipient, timestamp, message_id), (sender, timestamp, message_id),
        (timestamp, message_id)
    read_messages(agent_id, message_id) PK (agent_id, message_id)

``sender``, ``recipient`` and ``timestamp`` repeat the message's ``from``, ``to`` and
``timestamp`` so that a query is SQL over indexed columns, ordered and limited by the
server: ids are ``COLLATE "C"`` text and the timestamp its UTF-8 bytes (``bytea``), both
ordered as Python orders ``str``. Saving is one ``INSERT ... ON CONFLICT DO NOTHING``: one
winner among concurrent savers of an id, across processes; marking read inserts one row
per id with ``ON CONFLICT DO NOTHING``, a union by nature.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, nullcontext
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import StorageError
from ..interface import Problem, StorageInterface
from ..messages import BROADCAST, MessageSelect, check_stored_message

T = TypeVar("T")

__all__ = ["PostgresMessages", "select_sql"]

_INSERT = "INSERT INTO messages (message_id, sender, recipient, timestamp, data) VALUES ($1, $2, $3, $4, $5)"
_REPLACE = (
    _INSERT
    + """ ON CONFLICT (message_id) DO UPDATE SET sender = excluded.sender,
    recipient = excluded.recipient, timestamp = excluded.timestamp, data = excluded.data"""
)
# The rows addressed to an agent: sent to it, or broadcast by another agent.
_ADDRESSED = "(recipient = {p} OR (recipient = '*' AND sender <> {p}))"


def select_sql(select: MessageSelect) -> tuple[str, list[Any]]:
    """The SQL (and parameters) of a query: filters, order and limit all in PostgreSQL."""
    where: list[str] = []
    params: list[Any] = []

    def add(value: Any) -> str:
        params.append(value)
        return f"${len(params)}"

    if select.to is not None:
        where.append(_ADDRESSED.format(p=add(select.to)))
    if select.from_ is not None:
        where.append(f"sender = {add(select.from_)}")
    if select.conversation_with is not None:
        # Sent by the peer, sent to it, or a broadcast (of the peer's, or addressed to it).
        peer = add(select.conversation_with)
        where.append(f"(sender = {peer} OR recipient = {peer} OR recipient = {add(BROADCAST)})")
    sql = "SELECT message_id, data FROM messages"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY timestamp, message_id"
    if select.limit is not None:
        sql += f" LIMIT {add(select.limit)}"
    return sql, params


class PostgresMessages(StorageInterface):
    """The ``_msg_*`` hooks of ``PostgresStorage`` (listed among its bases)."""

    if TYPE_CHECKING:  # what PostgresStorage provides (postgres.py)
        _server: str
        _schema: str

        def _dump(self, value: Any) -> str | bytes: ...
        def _parse(self, text: Any, table: str, key: str, shape: type | None = None) -> Any: ...
        async def _read(self, action: str, body: Callable[[Any], Awaitable[T]]) -> T: ...
        async def _write(
            self, action: str, body: Callable[[Any], Awaitable[T]], entities: tuple[tuple[str, ...], ...] = ()
        ) -> T: ...

    def _msg_row(self, message_id: str, data: Any) -> dict[str, Any]:
        where = f"message_id {message_id!r}"
        value = self._parse(data, "messages", where, dict)
        source = f"{self._server} (schema {self._schema}, table messages, {where})"
        return check_stored_message(value, source, message_id)

    async def _msg_column(self, action: str, sql: str, *args: Any) -> list[Any]:
        async def body(conn: Any) -> list[Any]:
            return [row[0] for row in await conn.fetch(sql, *args)]

        return await self._read(action, body)

    async def _msg_put(self, message: dict[str, Any], *, if_absent: bool) -> bool:
        row = (message["id"], message["from"], message["to"], message["timestamp"].encode(), self._dump(message))
        sql = _INSERT + " ON CONFLICT (message_id) DO NOTHING" if if_absent else _REPLACE

        async def body(conn: Any) -> bool:
            return str(await conn.execute(sql, *row)) != "INSERT 0 0"

        return await self._write("saving a message in", body)

    async def _msg_get(self, message_id: str) -> dict[str, Any] | None:
        async def body(conn: Any) -> dict[str, Any] | None:
            data = await conn.fetchval("SELECT data FROM messages WHERE message_id = $1", message_id)
            return None if data is None else self._msg_row(message_id, data)

        return await self._read("reading", body)

    async def _msg_ids(self) -> list[str]:
        return await self._msg_column("listing messages in", "SELECT message_id FROM messages")

    async def _msg_select(self, select: MessageSelect) -> list[dict[str, Any]]:
        sql, params = select_sql(select)

        async def body(conn: Any) -> list[dict[str, Any]]:
            return [self._msg_row(message_id, data) for message_id, data in await conn.fetch(sql, *params)]

        return await self._read("querying messages in", body)

    async def _msg_readers(self) -> list[str]:
        return await self._msg_column("listing readers in", "SELECT DISTINCT agent_id FROM read_messages")

    async def _msg_read_ids(self, agent_id: str) -> list[str]:
        sql = "SELECT message_id FROM read_messages WHERE agent_id = $1 ORDER BY message_id"
        return await self._msg_column("reading", sql, agent_id)

    async def _msg_add_read(self, agent_id: str, ids: list[str]) -> None:
        sql = """INSERT INTO read_messages (agent_id, message_id) SELECT $1, i FROM unnest($2::text[]) AS i
            ON CONFLICT DO NOTHING"""

        async def body(conn: Any) -> None:
            await conn.execute(sql, agent_id, ids)

        await self._write("marking messages read in", body)

    async def _msg_set_read(self, agent_id: str, ids: list[str]) -> None:
        async def body(conn: Any) -> None:
            await conn.execute("DELETE FROM read_messages WHERE agent_id = $1", agent_id)
            if ids:
                await conn.execute(
                    "INSERT INTO read_messages (agent_id, message_id) SELECT $1, i FROM unnest($2::text[]) AS i",
                    agent_id,
                    ids,
                )

        await self._write("writing the read state in", body)

    async def _msg_unread(self, agent_id: str) -> set[str]:
        sql = f"""SELECT m.message_id FROM messages AS m WHERE {_ADDRESSED.format(p="$1")}
            AND NOT EXISTS (SELECT 1 FROM read_messages AS r WHERE r.agent_id = $1 AND r.message_id = m.message_id)"""
        return set(await self._msg_column("reading", sql, agent_id))

    async def _msg_census(self) -> tuple[int, int, list[Problem]]:
        """One read of every message row (each parsed, a bad one named) and the reader count."""

        async def body(conn: Any) -> tuple[int, int, list[Problem]]:
            count, problems = 0, []
            async with snapshot(conn):  # one snapshot for both statements
                for message_id, data in await conn.fetch("SELECT message_id, data FROM messages"):
                    try:
                        self._msg_row(message_id, data)
                        count += 1
                    except StorageError as e:
                        problems.append(Problem(getattr(e, "path", None) or self._server, str(e)))
                readers = await conn.fetchval("SELECT COUNT(DISTINCT agent_id) FROM read_messages")
            return count, int(readers), problems

        return await self._read("counting messages in", body)


def snapshot(conn: Any) -> AbstractAsyncContextManager[Any]:
    """A read-only repeatable-read transaction, so that several statements see one snapshot;
    nothing on a connection already in one (a transaction's own reads)."""
    if conn.is_in_transaction():
        return nullcontext()
    return conn.transaction(isolation="repeatable_read", readonly=True)  # type: ignore[no-any-return]
