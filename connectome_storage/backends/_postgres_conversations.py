"""The conversation store on PostgreSQL: the ``_meta_*`` and ``_conversation_*`` hooks of
``PostgresStorage`` (docs/conversations.md).

Metadata lives in the conversation's own row (``_postgres_schema.CORE_TABLES``)::

    conversations(conversation_id PK, document, chunks,
                  created_ms, updated_ms, message_count, ttl, expires_ms, metadata)
        indexes (updated_ms, conversation_id), (created_ms, conversation_id),
        (message_count, conversation_id), (expires_ms) WHERE expires_ms IS NOT NULL

The six columns are all NULL for a conversation without metadata and all set (but
``expires_ms``, NULL when it never expires) for one with it. ``metadata`` is the caller's
dict as canonical JSON text (sorted keys, compact). Every hook is one transaction (a
write) or one statement (a read). Queries and counts are one SQL statement each
(``compile_where``, ``order_sql``) that must return exactly what ``MetaQuery.apply``
returns over ``_meta_scan``: fields are read with the ``json`` type (which keeps each
value's text as stored, unlike ``jsonb``), numbers compare through ``_NUMBER_KEY``, an
order-preserving exact key (below), strings under ``COLLATE "C"`` (code point order). What
SQL cannot carry (a lone surrogate or U+0000 in an operand or field name) raises
``Fallback``, and a stored string holding U+0000 (which PostgreSQL cannot turn into text)
makes the statement fail: both are answered by the reference over one scan. Aggregates
filter in SQL and reduce the matching records with the reference's own code, since
``sum``/``avg`` must equal ``math.fsum`` to the last bit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from ..codec import is_utf8
from ..conversation_query import MetaQuery, aggregate, type_class
from ..conversations import MetaRecord
from ..errors import CorruptedDataError
from ..interface import Problem, StorageInterface
from ._postgres_schema import DROP_EXPIRED, LOCK_CONVERSATION, PRUNE_CONVERSATION

T = TypeVar("T")

__all__ = ["META_COLUMNS", "Fallback", "PostgresConversations", "compile_where", "number_key", "order_sql"]

_HINT = "save the conversation again through the conversation store, or delete it"
META_COLUMNS = "created_ms, updated_ms, message_count, ttl, expires_ms, metadata"
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_TOP = {
    "conversation_id": "conversation_id",
    "created_at": "created_ms",
    "updated_at": "updated_ms",
    "message_count": "message_count",
    "expires_at": "expires_ms",
}
_UPSERT_META = f"""INSERT INTO conversations (conversation_id, {META_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)
    ON CONFLICT (conversation_id) DO UPDATE SET created_ms = excluded.created_ms, updated_ms = excluded.updated_ms,
        message_count = excluded.message_count, ttl = excluded.ttl, expires_ms = excluded.expires_ms,
        metadata = excluded.metadata"""
_CLEAR_META = """UPDATE conversations SET created_ms = NULL, updated_ms = NULL, message_count = NULL, ttl = NULL,
    expires_ms = NULL, metadata = NULL WHERE conversation_id = $1"""
_LENGTH = "SELECT COALESCE(MAX(seq) + 1, 0) FROM raw_messages WHERE conversation_id = $1"
_INSERT_MESSAGES = """INSERT INTO raw_messages (conversation_id, seq, data)
    SELECT $1, $2 + m.n - 1, m.data FROM unnest($3::stored[]) WITH ORDINALITY AS m (data, n)"""
_LOAD = f"""SELECT {META_COLUMNS}, expires_ms IS NULL OR expires_ms > $2 AS live,
    ARRAY(SELECT data FROM raw_messages AS r WHERE r.conversation_id = $1 ORDER BY seq) AS messages
    FROM conversations WHERE conversation_id = $1"""
_SCAN = f"""SELECT conversation_id, {META_COLUMNS} FROM conversations WHERE expires_ms IS NULL OR expires_ms > $1
    ORDER BY conversation_id COLLATE "C\""""

# The exact order of JSON numbers as Python reads them (ints exact, floats binary doubles),
# as one numeric per value ({t}: the number's JSON text). An int is its own value. A float
# is its shortest decimal text (what orjson wrote), which orders every double among the
# others and every int exactly, except where a double is an integer the text rounds away
# from: from 2**53 on, where the double's integer itself is taken (through int8, exact; a
# double from 2**63 on is first lowered by 2**63, exactly). Beyond the range ints can take
# ([-2**63, 2**64)) the text orders correctly again. number_key is the same key in Python.
_NUMBER_KEY = """(CASE WHEN {t} !~ '[.eE]' THEN ({t})::numeric
    WHEN abs(({t})::float8) < 9007199254740992 OR ({t})::float8 >= 18446744073709551616
        OR ({t})::float8 < -9223372036854775808 THEN ({t})::numeric
    WHEN ({t})::float8 >= 9223372036854775808
        THEN (({t})::float8 - 9223372036854775808::float8)::int8::numeric + 9223372036854775808
    ELSE (({t})::float8)::int8::numeric END)"""
_CLASS = """(CASE json_typeof({f}) WHEN 'null' THEN 0 WHEN 'boolean' THEN 1 WHEN 'number' THEN 2
    WHEN 'string' THEN 3 ELSE 4 END)"""


_BY_ID = 'conversation_id COLLATE "C"'


class Fallback(Exception):
    """A query SQL cannot answer exactly (see ``compile_where``): the reference answers it."""


class PostgresConversations(StorageInterface):
    """The conversation store hooks of ``PostgresStorage`` (listed among its bases)."""

    # How many queries the reference answered instead of SQL (the tests read it).
    _reference_answers: int = 0

    if TYPE_CHECKING:  # what PostgresStorage provides (postgres.py)
        _server: str
        _schema: str
        _asyncpg: Any

        def _dump(self, value: Any) -> str | bytes: ...
        def _parse(self, text: Any, table: str, key: str, shape: type | None = None) -> Any: ...
        async def _read(self, action: str, body: Callable[[Any], Awaitable[T]]) -> T: ...
        async def _write(
            self, action: str, body: Callable[[Any], Awaitable[T]], entities: tuple[tuple[str, ...], ...] = ()
        ) -> T: ...

    # ------------------------------------------------------------------ records

    def _record(self, conversation_id: str, row: Any) -> MetaRecord | None:
        """Decode the six metadata columns; None when the conversation has no metadata."""
        created, updated, count, ttl, expires, text = row
        if text is None:
            return None
        try:
            metadata = orjson.loads(text)
        except orjson.JSONDecodeError:
            metadata = None
        if (
            type(created) is int and type(updated) is int and type(count) is int and count >= 0
            and (ttl is None or ttl > 0) and type(metadata) is dict
        ):  # fmt: skip
            return MetaRecord(conversation_id, created, updated, count, ttl, expires, metadata)
        source = (
            f"{self._server} (schema {self._schema}, table conversations, conversation_id {conversation_id!r}, "
            "metadata columns)"
        )
        problem = (
            "the metadata column is not a JSON object" if type(metadata) is not dict
            else f"created_ms={created!r}, updated_ms={updated!r}, message_count={count!r}, ttl={ttl!r} are not "
            "the epoch milliseconds, count and seconds metadata holds"
        )  # fmt: skip
        raise CorruptedDataError(source, problem, hint=_HINT)

    @staticmethod
    def _meta_row(record: MetaRecord) -> tuple[Any, ...]:
        metadata = orjson.dumps(record.metadata or {}, option=orjson.OPT_SORT_KEYS).decode()
        ttl = None if record.ttl is None else float(record.ttl)
        return (record.conversation_id, record.created_ms, record.updated_ms, record.message_count, ttl,
                record.expires_ms, metadata)  # fmt: skip

    def _history(self, conversation_id: str, texts: list[Any]) -> list[dict[str, Any]]:
        where = f"conversation_id {conversation_id!r}"
        return [self._parse(text, "raw_messages", f"{where}, seq {seq}", dict) for seq, text in enumerate(texts)]

    # -------------------------------------------------------------- point hooks

    async def _meta_read(
        self, conversation_id: str, now_ms: int, *, include_expired: bool = False
    ) -> MetaRecord | None:
        sql = f"SELECT {META_COLUMNS} FROM conversations WHERE conversation_id = $1"
        params: tuple[Any, ...] = (conversation_id,)
        if not include_expired:
            sql, params = f"{sql} AND (expires_ms IS NULL OR expires_ms > $2)", (conversation_id, now_ms)

        async def body(conn: Any) -> MetaRecord | None:
            row = await conn.fetchrow(sql, *params)
            return None if row is None else self._record(conversation_id, tuple(row))

        return await self._read("reading", body)

    async def _meta_put(self, conversation_id: str, record: MetaRecord | None) -> None:
        now_ms = self._now_ms()
        entities = (("conversation", conversation_id),)
        if record is None:

            async def clear(conn: Any) -> None:
                await conn.execute(_CLEAR_META, conversation_id)
                await conn.execute(PRUNE_CONVERSATION, conversation_id)

            return await self._write("writing", clear, entities)
        row = self._meta_row(record)

        async def body(conn: Any) -> None:
            await conn.execute(DROP_EXPIRED, conversation_id, now_ms)
            await conn.execute(_UPSERT_META, *row)

        await self._write("writing", body, entities)

    async def _conversation_load(
        self, conversation_id: str, now_ms: int, *, include_expired: bool
    ) -> tuple[MetaRecord, list[dict[str, Any]]] | None:
        async def body(conn: Any) -> tuple[MetaRecord, list[dict[str, Any]]] | None:
            row = await conn.fetchrow(_LOAD, conversation_id, now_ms)  # the row and the history: one snapshot
            if row is None or not (row["live"] or include_expired):
                return None
            record = self._record(conversation_id, tuple(row)[:6])
            if record is None:
                record = MetaRecord(conversation_id, None, None, None, None, None, None)
            return record, self._history(conversation_id, list(row["messages"]))

        return await self._read("reading", body)

    async def _conversation_save(self, record: MetaRecord, messages: list[dict[str, Any]], now_ms: int) -> None:
        conversation_id = record.conversation_id
        meta = self._meta_row(record)
        texts = [self._dump(message) for message in messages]

        async def body(conn: Any) -> None:
            await conn.execute(DROP_EXPIRED, conversation_id, now_ms)
            await conn.execute(_UPSERT_META, *meta)
            await conn.execute("DELETE FROM raw_messages WHERE conversation_id = $1", conversation_id)
            if texts:
                await conn.execute(_INSERT_MESSAGES, conversation_id, 0, texts)

        await self._write("writing", body, (("conversation", conversation_id),))

    async def _conversation_append(
        self, created: MetaRecord, messages: list[dict[str, Any]], now_ms: int, *, update_timestamp: bool
    ) -> MetaRecord:
        conversation_id = created.conversation_id
        texts = [self._dump(message) for message in messages]
        fresh = self._meta_row(created)
        # The stored metadata takes the new count (and time); RETURNING gives the record back.
        touch = f"""UPDATE conversations SET message_count = $2,
            updated_ms = CASE WHEN $3 THEN $4 ELSE updated_ms END
            WHERE conversation_id = $1 AND metadata IS NOT NULL RETURNING {META_COLUMNS}"""

        async def body(conn: Any) -> MetaRecord:
            await conn.execute(DROP_EXPIRED, conversation_id, now_ms)
            # The row, created when missing and locked either way: appenders of one history
            # queue here, so MAX(seq) + 1 never races. The history itself is never read.
            await conn.execute(LOCK_CONVERSATION, conversation_id)
            start = await conn.fetchval(_LENGTH, conversation_id)
            if texts:
                await conn.execute(_INSERT_MESSAGES, conversation_id, start, texts)
            count = start + len(texts)
            row = await conn.fetchrow(touch, conversation_id, count, update_timestamp, now_ms)
            if row is not None:
                record = self._record(conversation_id, tuple(row))
                assert record is not None
                return record
            await conn.execute(_UPSERT_META, *fresh[:3], count, *fresh[4:])
            return dataclasses.replace(created, message_count=count)

        return await self._write("appending to", body, (("conversation", conversation_id),))

    async def _conversation_set_expiry(
        self, conversation_id: str, ttl: float | None, expires_ms: int | None, now_ms: int
    ) -> bool:
        seconds = None if ttl is None else float(ttl)
        live = "(expires_ms IS NULL OR expires_ms > $2)"

        async def body(conn: Any) -> bool:
            has_metadata = await conn.fetchval(
                f"SELECT metadata IS NOT NULL FROM conversations WHERE conversation_id = $1 AND {live} FOR UPDATE",
                conversation_id,
                now_ms,
            )
            if has_metadata is None:
                return False  # missing or expired
            if not has_metadata:  # no metadata yet: times now, the history's length
                count = await conn.fetchval(_LENGTH, conversation_id)
                await conn.execute(_UPSERT_META, conversation_id, now_ms, now_ms, count, None, None, "{}")
            await conn.execute(
                "UPDATE conversations SET ttl = $2, expires_ms = $3 WHERE conversation_id = $1",
                conversation_id,
                seconds,
                expires_ms,
            )
            return True

        return await self._write("writing", body, (("conversation", conversation_id),))

    async def _conversation_exists(self, conversation_id: str, now_ms: int) -> bool:
        sql = "SELECT 1 FROM conversations WHERE conversation_id = $1 AND (expires_ms IS NULL OR expires_ms > $2)"
        return await self._read("reading", lambda conn: conn.fetchval(sql, conversation_id, now_ms)) is not None

    # ------------------------------------------------------------------- expiry

    async def _expired_conversations(self, now_ms: int) -> list[str]:
        sql = 'SELECT conversation_id FROM conversations WHERE expires_ms <= $1 ORDER BY conversation_id COLLATE "C"'

        async def body(conn: Any) -> list[str]:
            return [row[0] for row in await conn.fetch(sql, now_ms)]

        return await self._read("listing expired conversations of", body)

    async def _count_expired_conversations(self, now_ms: int) -> int:
        sql = "SELECT COUNT(*) FROM conversations WHERE expires_ms <= $1"
        return int(await self._read("counting", lambda conn: conn.fetchval(sql, now_ms)))

    async def _remove_expired_conversations(self, now_ms: int) -> int:
        # One statement through the expiry index; the foreign keys cascade to messages and memories.
        async def body(conn: Any) -> int:
            return int(str(await conn.execute("DELETE FROM conversations WHERE expires_ms <= $1", now_ms)).split()[-1])

        return await self._write("removing expired conversations from", body)

    # ------------------------------------------------------------------ queries

    async def _meta_scan(self, now_ms: int) -> list[MetaRecord]:
        return await self._read("scanning", lambda conn: self._scan(conn, now_ms))

    async def _scan(self, conn: Any, now_ms: int) -> list[MetaRecord]:
        records = []
        for conversation_id, *row in await conn.fetch(_SCAN, now_ms):
            record = self._record(conversation_id, tuple(row))
            records.append(record or MetaRecord(conversation_id, None, None, None, None, None, None))
        return records

    def _records(self, rows: list[Any]) -> list[MetaRecord]:
        return [
            self._record(row[0], tuple(row)[1:]) or MetaRecord(row[0], None, None, None, None, None, None)
            for row in rows
        ]

    async def _meta_query(self, query: MetaQuery, now_ms: int) -> list[MetaRecord]:
        def build() -> tuple[str, list[Any]]:
            where, params = compile_where(query, now_ms)
            order = order_sql(query, params)  # its metadata field names join the parameters
            sql = f"SELECT conversation_id, {META_COLUMNS} FROM conversations WHERE {where} ORDER BY {order}"
            if query.limit is not None:
                params.append(min(query.limit, _INT64_MAX))
                sql += f" LIMIT ${len(params)}"
            if query.offset:
                params.append(min(query.offset, _INT64_MAX))
                sql += f" OFFSET ${len(params)}"
            return sql, params

        return await self._answer("querying", now_ms, build, self._records, query.apply)

    async def _meta_count(self, query: MetaQuery, now_ms: int) -> int:
        def build() -> tuple[str, list[Any]]:
            where, params = compile_where(query, now_ms)
            return f"SELECT COUNT(*) FROM conversations WHERE {where}", params

        return await self._answer(
            "counting", now_ms, build, lambda rows: int(rows[0][0]), lambda r: len(query.apply(r))
        )

    async def _meta_aggregate(
        self, query: MetaQuery, group_by: str | None, measures: dict[str, tuple[str, str | None]], now_ms: int
    ) -> dict[Any, dict[str, Any]]:
        # The matching records in id order (the order the reference meets them in), reduced
        # by the reference itself: exact sums need math.fsum, which SQL has no equal of.
        unordered = MetaQuery(query.conditions)

        def build() -> tuple[str, list[Any]]:
            where, params = compile_where(unordered, now_ms)
            sql = f"SELECT conversation_id, {META_COLUMNS} FROM conversations WHERE {where} ORDER BY {_BY_ID}"
            return sql, params

        def native(rows: list[Any]) -> dict[Any, dict[str, Any]]:
            return aggregate(self._records(rows), group_by, measures)

        def reference(records: list[MetaRecord]) -> dict[Any, dict[str, Any]]:
            return aggregate(unordered.apply(records), group_by, measures)

        return await self._answer("aggregating", now_ms, build, native, reference)

    async def _answer(
        self,
        action: str,
        now_ms: int,
        build: Callable[[], tuple[str, list[Any]]],
        native: Callable[[list[Any]], T],
        reference: Callable[[list[MetaRecord]], T],
    ) -> T:
        """The SQL statement ``build`` makes, or the reference over a scan when SQL cannot
        answer exactly: ``Fallback`` at build time, or a data error of the statement (a
        stored string holding U+0000, which PostgreSQL cannot make text of; metadata that is
        not JSON, which the scan then names as a CorruptedDataError)."""
        try:
            sql: str | None
            sql, params = build()
        except Fallback:
            sql, params = None, []

        async def body(conn: Any) -> T:
            if sql is not None:
                try:
                    if conn.is_in_transaction():  # a transaction's own read: a failure must not end it
                        async with conn.transaction():
                            return native(list(await conn.fetch(sql, *params)))
                    return native(list(await conn.fetch(sql, *params)))
                except self._asyncpg.DataError:
                    pass
            self._reference_answers += 1
            return reference(await self._scan(conn, now_ms))

        return await self._read(action, body)

    # ------------------------------------------------------------------- verify

    async def verify(self) -> list[Problem]:
        """Everything the other checks find, plus every conversation whose metadata does not decode."""
        problems = await super().verify()

        async def body(conn: Any) -> list[Problem]:
            found = []
            sql = f"SELECT conversation_id, {META_COLUMNS} FROM conversations WHERE metadata IS NOT NULL"
            for conversation_id, *row in await conn.fetch(sql):
                try:
                    self._record(conversation_id, tuple(row))
                except CorruptedDataError as e:
                    found.append(Problem(e.path, str(e)))
            return found

        return problems + await self._read("verifying the metadata of", body)


# --------------------------------------------------------------------- SQL


class _Params:
    def __init__(self, values: list[Any]) -> None:
        self.values = values

    def add(self, value: Any, cast: str) -> str:
        self.values.append(value)
        return f"${len(self.values)}::{cast}"


def number_key(value: int | float) -> Decimal:
    """The key _NUMBER_KEY gives a number, computed in Python (for an operand)."""
    if type(value) is int:
        return Decimal(value)
    if abs(value) < 2.0**53 or value >= 2.0**64 or value < -(2.0**63):
        return Decimal(orjson.dumps(value).decode())  # the shortest text, as orjson wrote the stored ones
    return Decimal(int(value))


def _text(value: str) -> str:
    """A string operand or field name SQL can carry, or Fallback."""
    if "\x00" in value or not is_utf8(value):
        raise Fallback(value)
    return value


def _json(name: str, p: _Params) -> str:
    """The ``json`` expression of a metadata field (NULL when missing): ``->`` with a text key
    reads only an object's member, as ``field_value`` walks only through dicts."""
    expression = "metadata::json"
    for key in name.split(".")[1:]:
        expression = f"({expression} -> {p.add(_text(key), 'text')})"
    return expression


def _metadata_equal(f: str, operand: Any, p: _Params) -> str:
    rank = type_class(operand)
    kind = f"json_typeof({f})"
    if rank == 0:
        return f"{kind} = 'null'"
    if rank == 1:
        return f"({kind} = 'boolean' AND {f}::text = '{'true' if operand else 'false'}')"
    if rank == 2:
        key = _NUMBER_KEY.format(t=f"{f}::text")
        return f"({kind} = 'number' AND {key} = {p.add(number_key(operand), 'numeric')})"
    return f"({kind} = 'string' AND ({f} #>> '{{}}') = {p.add(_text(operand), 'text')})"


def _metadata_condition(f: str, op: str, operand: Any, p: _Params) -> str:
    kind = f"json_typeof({f})"
    if op == "==":
        return _metadata_equal(f, operand, p)
    if op == "!=":
        return f"({f} IS NULL OR NOT COALESCE({_metadata_equal(f, operand, p)}, false))"
    if op == "in":
        return "(" + " OR ".join(_metadata_equal(f, item, p) for item in operand) + ")" if operand else "false"
    if op == "contains":
        branches = []
        if isinstance(operand, str):
            branches.append(f"({kind} = 'string' AND strpos({f} #>> '{{}}', {p.add(_text(operand), 'text')}) > 0)")
        element = _metadata_equal("e.v", operand, p)
        branches.append(f"({kind} = 'array' AND EXISTS (SELECT 1 FROM json_array_elements(CASE WHEN {kind} = 'array' "
                        f"THEN {f} END) AS e (v) WHERE {element}))")  # fmt: skip
        return "(" + " OR ".join(branches) + ")"
    if type_class(operand) == 2:  # <, <=, >, >= with a number (or a str: checked when the condition was added)
        key = _NUMBER_KEY.format(t=f"{f}::text")
        return f"({kind} = 'number' AND {key} {op} {p.add(number_key(operand), 'numeric')})"
    return f"({kind} = 'string' AND ({f} #>> '{{}}') COLLATE \"C\" {op} {p.add(_text(operand), 'text')})"


def _top_condition(column: str, op: str, operand: Any, p: _Params) -> str:
    """A top field: conversation_id (text, never missing) or a bigint column (NULL: missing)."""
    if op == "in":
        return (
            "(" + " OR ".join(_top_condition(column, "==", item, p) for item in operand) + ")" if operand else "false"
        )
    if op == "!=":
        return f"({column} IS NULL OR NOT COALESCE({_top_condition(column, '==', operand, p)}, false))"
    text = column == "conversation_id"
    if op == "contains":
        if text and isinstance(operand, str):
            return f"strpos({column}, {p.add(_text(operand), 'text')}) > 0"
        return "false"  # a number is neither a list nor a str
    rank = type_class(operand)
    if text:
        if rank != 3:
            return "false"
        sql_op = "=" if op == "==" else op
        return f'{column} COLLATE "C" {sql_op} {p.add(_text(operand), "text")}'
    if rank != 2:
        return "false"
    sql_op = "=" if op == "==" else op
    if type(operand) is int and _INT64_MIN <= operand <= _INT64_MAX:
        return f"{column} {sql_op} {p.add(operand, 'bigint')}"  # the column's index serves it
    return f"{column}::numeric {sql_op} {p.add(number_key(operand), 'numeric')}"


def compile_where(query: MetaQuery, now_ms: int) -> tuple[str, list[Any]]:
    """The WHERE clause (live conversations matching every condition) and its parameters.

    Raises Fallback for an operand or a field name holding U+0000 or a lone surrogate,
    which no statement can carry."""
    p = _Params([now_ms])
    terms = ["(expires_ms IS NULL OR expires_ms > $1::bigint)"]
    for condition in query.conditions:
        if condition.field in _TOP:
            terms.append(_top_condition(_TOP[condition.field], condition.op, condition.value, p))
        elif condition.op == "in" and not condition.value:
            terms.append("false")  # before _json: a field name no term reads must not become a parameter
        else:
            terms.append(_metadata_condition(_json(condition.field, p), condition.op, condition.value, p))
    return " AND ".join(terms), p.values


def order_sql(query: MetaQuery, params: list[Any] | None = None) -> str:
    """ORDER BY terms: per field missing last, then type class, then value (numbers by
    their exact key, strings by code point, booleans, arrays and objects by their canonical
    JSON text); ties by id in the direction of the last order. Field names of metadata are
    parameters appended to ``params`` (the WHERE clause's)."""
    p = _Params(params if params is not None else [])
    # A field every match has (a condition on it other than !=): where it is missing needs no term,
    # so an index on the column gives the order as it is.
    present = {condition.field for condition in query.conditions if condition.op != "!="}
    terms = []
    for name, descending in query.order:
        direction = " DESC" if descending else ""
        if name == "conversation_id":
            terms.append(f'conversation_id COLLATE "C"{direction}')
        elif name in _TOP:
            column = _TOP[name]
            terms += [f"{column}{direction}"] if name in present else [f"{column} IS NULL", f"{column}{direction}"]
        else:
            f = _json(name, p)
            kind = f"json_typeof({f})"
            terms += [
                f"{f} IS NULL",
                _CLASS.format(f=f) + direction,
                f"(CASE WHEN {kind} = 'number' THEN {_NUMBER_KEY.format(t=f'{f}::text')} END){direction}",
                f"(CASE WHEN {kind} = 'string' THEN {f} #>> '{{}}' END) COLLATE \"C\"{direction}",
                f"(CASE WHEN {kind} IN ('boolean', 'array', 'object') THEN {f}::text END) COLLATE \"C\"{direction}",
            ]
    tie = " DESC" if query.order and query.order[-1][1] else ""
    return ", ".join([*terms, f'conversation_id COLLATE "C"{tie}'])
