"""The conversation store on SQLite: the ``_meta_*`` / ``_conversation_*`` hooks of ``SqliteStorage``.

Metadata lives in the conversation's own row (schema version 4, ``_sqlite_schema.MIGRATIONS``)::

    conversations(conversation_id PK, document, chunks,
                  created_ms, updated_ms, message_count, ttl, expires_ms, metadata)
        indexes (updated_ms, conversation_id), (created_ms, conversation_id),
        (message_count, conversation_id), (expires_ms) WHERE expires_ms IS NOT NULL

The six columns are all NULL for a conversation without metadata and all set (but
``expires_ms``, NULL when it never expires) for one with it. ``metadata`` is the caller's
dict as canonical JSON text whatever the serializer, so that queries read it with
``json_extract``. Every hook is one function on the connection's thread: one hop and one
transaction. Queries, counts and aggregates are one SQL statement each (``compile_where``,
``order_sql``, ``aggregate_sql``), which must return exactly what ``MetaQuery.apply`` and
``conversation_query.aggregate`` return over ``_meta_scan``; the few queries SQL cannot
answer exactly (``Fallback``) are answered by that reference over one scan.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast

import orjson

from ..codec import is_utf8
from ..conversation_query import MetaQuery, aggregate, order_value, type_class
from ..conversations import MetaRecord
from ..errors import CorruptedDataError
from ..interface import Problem, StorageInterface
from ._sqlite_schema import DROP_EXPIRED, PRUNE_CONVERSATION

if TYPE_CHECKING:
    from pathlib import Path

    from ..serializer import Serializer

T = TypeVar("T")

__all__ = [
    "LIVE",
    "META_COLUMNS",
    "Fallback",
    "SqliteConversations",
    "aggregate_sql",
    "compile_where",
    "order_sql",
]

# What to do about a damaged metadata row (ConversationStore.save over it replaces it too).
_HINT = (
    "save the conversation again through the conversation store, delete it, or restore a copy made "
    "with SqliteStorage.backup()"
)
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
META_COLUMNS = "created_ms, updated_ms, message_count, ttl, expires_ms, metadata"
LIVE = "(expires_ms IS NULL OR expires_ms > ?)"
# Top fields and their columns (conversation_id is never missing; the others are NULL
# exactly when the conversation has no metadata, or for expires_ms, no expiry).
_TOP = {
    "conversation_id": "conversation_id",
    "created_at": "created_ms",
    "updated_at": "updated_ms",
    "message_count": "message_count",
    "expires_at": "expires_ms",
}
_UPSERT_META = f"""INSERT INTO conversations (conversation_id, {META_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
    ON CONFLICT (conversation_id) DO UPDATE SET created_ms = excluded.created_ms, updated_ms = excluded.updated_ms,
        message_count = excluded.message_count, ttl = excluded.ttl, expires_ms = excluded.expires_ms,
        metadata = excluded.metadata"""
_CLEAR_META = """UPDATE conversations SET created_ms = NULL, updated_ms = NULL, message_count = NULL, ttl = NULL,
    expires_ms = NULL, metadata = NULL WHERE conversation_id = ?"""
# The escape of U+0000 (or of a backslash before "u0000": a false alarm, answered exactly
# too) anywhere in stored metadata: such a string is the one value json_extract cannot return whole.
_NUL_ESCAPE = r"SELECT 1 FROM conversations WHERE instr(metadata, '\u0000') > 0 LIMIT 1"
_LENGTH = "SELECT COALESCE(MAX(seq), -1) + 1 FROM raw_messages WHERE conversation_id = ?"


class Fallback(Exception):
    """A query SQL cannot answer exactly (see ``compile_where``): the reference answers it."""


class SqliteConversations(StorageInterface):
    """The conversation store hooks of ``SqliteStorage`` (listed first among its bases)."""

    if TYPE_CHECKING:  # what SqliteStorage provides (sqlite.py); declared here for the type checker
        _path: Path
        _serializer: Serializer
        _json_functions: bool

        def _dump(self, value: Any) -> str | bytes: ...
        def _parse(self, text: Any, table: str, key: str, shape: type | None = None) -> Any: ...
        def _messages(self, conn: sqlite3.Connection, conversation_id: str, now_ms: int | None = None) -> list[Any]: ...
        async def _run(self, action: str, body: Callable[[sqlite3.Connection], T], begin: str | None = None) -> T: ...
        async def _read(self, action: str, body: Callable[[sqlite3.Connection], T]) -> T: ...
        async def _point_read(
            self, fetch: Callable[[sqlite3.Connection], list[Any]], finish: Callable[[list[Any]], T]
        ) -> T: ...
        async def _write(self, action: str, body: Callable[[sqlite3.Connection], T]) -> T: ...
        async def _column(self, sql: str, *args: Any) -> list[Any]: ...

    # ------------------------------------------------------------------ records

    def _record(self, conversation_id: str, row: tuple[Any, ...]) -> MetaRecord | None:
        """Decode the six metadata columns; None when the conversation has no metadata."""
        created, updated, count, ttl, expires, text = row
        if text is None:
            return None
        try:
            metadata = orjson.loads(text)
        except (orjson.JSONDecodeError, TypeError):
            metadata = None
        if (
            type(created) is int and type(updated) is int and type(count) is int and count >= 0
            and (ttl is None or (type(ttl) in (int, float) and ttl > 0))
            and (expires is None or type(expires) is int) and type(metadata) is dict
        ):  # fmt: skip
            return MetaRecord(conversation_id, created, updated, count, ttl, expires, metadata)
        source = f"{self._path} (table conversations, conversation_id {conversation_id!r}, metadata columns)"
        problem = (
            "the metadata column is not a JSON object" if type(metadata) is not dict
            else f"created_ms={created!r}, updated_ms={updated!r}, message_count={count!r}, ttl={ttl!r}, "
            f"expires_ms={expires!r} are not the epoch milliseconds, count and seconds metadata holds"
        )  # fmt: skip
        raise CorruptedDataError(source, problem, hint=_HINT)

    @staticmethod
    def _meta_row(record: MetaRecord) -> tuple[Any, ...]:
        metadata = orjson.dumps(record.metadata or {}, option=orjson.OPT_SORT_KEYS).decode()
        ttl = None if record.ttl is None else float(record.ttl)
        return (record.conversation_id, record.created_ms, record.updated_ms, record.message_count, ttl,
                record.expires_ms, metadata)  # fmt: skip

    # -------------------------------------------------------------- point hooks

    async def _meta_read(
        self, conversation_id: str, now_ms: int, *, include_expired: bool = False
    ) -> MetaRecord | None:
        sql = f"SELECT {META_COLUMNS} FROM conversations WHERE conversation_id = ?"
        params: tuple[Any, ...] = (conversation_id,)
        if not include_expired:
            sql, params = f"{sql} AND {LIVE}", (conversation_id, now_ms)

        def fetch(conn: sqlite3.Connection) -> list[Any]:
            return conn.execute(sql, params).fetchall()

        def finish(rows: list[Any]) -> MetaRecord | None:
            return self._record(conversation_id, rows[0]) if rows else None

        return await self._point_read(fetch, finish)

    async def _meta_put(self, conversation_id: str, record: MetaRecord | None) -> None:
        now_ms = self._now_ms()
        if record is None:

            def clear(conn: sqlite3.Connection) -> None:
                conn.execute(_CLEAR_META, (conversation_id,))
                conn.execute(PRUNE_CONVERSATION, {"id": conversation_id})

            return await self._write("writing", clear)
        row = self._meta_row(record)

        def body(conn: sqlite3.Connection) -> None:
            conn.execute(DROP_EXPIRED, (conversation_id, now_ms))
            conn.execute(_UPSERT_META, row)

        await self._write("writing", body)

    async def _conversation_load(
        self, conversation_id: str, now_ms: int, *, include_expired: bool
    ) -> tuple[MetaRecord, list[dict[str, Any]]] | None:
        sql = f"SELECT {META_COLUMNS}, {LIVE} FROM conversations WHERE conversation_id = ?"

        def body(conn: sqlite3.Connection) -> tuple[MetaRecord, list[dict[str, Any]]] | None:
            row = conn.execute(sql, (now_ms, conversation_id)).fetchone()
            if row is None or not (row[-1] or include_expired):
                return None
            record = self._record(conversation_id, row[:-1])
            if record is None:
                record = MetaRecord(conversation_id, None, None, None, None, None, None)
            return record, self._messages(conn, conversation_id)

        return await self._run("reading", body, "BEGIN")  # the row and the history from one snapshot

    async def _conversation_save(self, record: MetaRecord, messages: list[dict[str, Any]], now_ms: int) -> None:
        conversation_id = record.conversation_id
        meta = self._meta_row(record)
        rows = [(conversation_id, seq, self._dump(message)) for seq, message in enumerate(messages)]

        def body(conn: sqlite3.Connection) -> None:
            conn.execute(DROP_EXPIRED, (conversation_id, now_ms))
            conn.execute(_UPSERT_META, meta)
            conn.execute("DELETE FROM raw_messages WHERE conversation_id = ?", (conversation_id,))
            conn.executemany("INSERT INTO raw_messages (conversation_id, seq, data) VALUES (?, ?, ?)", rows)

        await self._write("writing", body)

    async def _conversation_append(
        self, created: MetaRecord, messages: list[dict[str, Any]], now_ms: int, *, update_timestamp: bool
    ) -> MetaRecord:
        conversation_id = created.conversation_id
        texts = [self._dump(message) for message in messages]
        fresh = self._meta_row(created)
        # The stored metadata takes the new count (and time); RETURNING gives the record back.
        touch = f"""UPDATE conversations SET message_count = ?1,
            updated_ms = CASE WHEN ?2 THEN ?3 ELSE updated_ms END
            WHERE conversation_id = ?4 AND metadata IS NOT NULL RETURNING {META_COLUMNS}"""

        def body(conn: sqlite3.Connection) -> MetaRecord:
            conn.execute(DROP_EXPIRED, (conversation_id, now_ms))
            conn.execute("INSERT INTO conversations (conversation_id) VALUES (?) ON CONFLICT DO NOTHING",
                         (conversation_id,))  # fmt: skip
            # MAX(seq) from the (conversation_id, seq) index: the history is never read.
            start = conn.execute(_LENGTH, (conversation_id,)).fetchone()[0]
            conn.executemany(
                "INSERT INTO raw_messages (conversation_id, seq, data) VALUES (?, ?, ?)",
                [(conversation_id, start + i, text) for i, text in enumerate(texts)],
            )
            count = start + len(texts)
            row = conn.execute(touch, (count, update_timestamp, now_ms, conversation_id)).fetchone()
            if row is not None:
                record = self._record(conversation_id, row)
                assert record is not None
                return record
            conn.execute(_UPSERT_META, (*fresh[:3], count, *fresh[4:]))
            return MetaRecord(conversation_id, created.created_ms, created.updated_ms, count, created.ttl,
                              created.expires_ms, created.metadata)  # fmt: skip

        return await self._write("appending to", body)

    async def _conversation_set_expiry(
        self, conversation_id: str, ttl: float | None, expires_ms: int | None, now_ms: int
    ) -> bool:
        seconds = None if ttl is None else float(ttl)
        update = f"UPDATE conversations SET ttl = ?, expires_ms = ? WHERE conversation_id = ? AND {LIVE}"

        def body(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                f"SELECT metadata IS NOT NULL FROM conversations WHERE conversation_id = ? AND {LIVE}",
                (conversation_id, now_ms),
            ).fetchone()
            if row is None:
                return False  # missing or expired
            if not row[0]:  # no metadata yet: times now, the history's length
                count = conn.execute(_LENGTH, (conversation_id,)).fetchone()[0]
                conn.execute(_UPSERT_META, (conversation_id, now_ms, now_ms, count, None, None, "{}"))
            conn.execute(update, (seconds, expires_ms, conversation_id, now_ms))
            return True

        return await self._write("writing", body)

    async def _conversation_exists(self, conversation_id: str, now_ms: int) -> bool:
        sql = f"SELECT 1 FROM conversations WHERE conversation_id = ? AND {LIVE}"
        return bool(await self._column(sql, conversation_id, now_ms))

    # ------------------------------------------------------------------- expiry

    async def _expired_conversations(self, now_ms: int) -> list[str]:
        return await self._column("SELECT conversation_id FROM conversations WHERE expires_ms <= ?", now_ms)

    async def _count_expired_conversations(self, now_ms: int) -> int:
        return int((await self._column("SELECT COUNT(*) FROM conversations WHERE expires_ms <= ?", now_ms))[0])

    async def _remove_expired_conversations(self, now_ms: int) -> int:
        # One statement; the foreign keys cascade to messages and memories (rowcount counts
        # only the conversations themselves).
        sql = "DELETE FROM conversations WHERE expires_ms <= ?"
        return await self._write(
            "removing expired conversations from", lambda conn: conn.execute(sql, (now_ms,)).rowcount
        )

    # ------------------------------------------------------------------ queries

    async def _meta_scan(self, now_ms: int) -> list[MetaRecord]:
        return await self._read("scanning", lambda conn: self._scan(conn, now_ms))

    def _scan(self, conn: sqlite3.Connection, now_ms: int) -> list[MetaRecord]:
        sql = f"SELECT conversation_id, {META_COLUMNS} FROM conversations WHERE {LIVE} ORDER BY conversation_id"
        records = []
        for conversation_id, *row in conn.execute(sql, (now_ms,)):
            record = self._record(conversation_id, tuple(row))
            records.append(record or MetaRecord(conversation_id, None, None, None, None, None, None))
        return records

    async def _meta_query(self, query: MetaQuery, now_ms: int) -> list[MetaRecord]:
        def build() -> tuple[str, list[Any]]:
            where, params = compile_where(query, now_ms)
            sql = f"SELECT conversation_id, {META_COLUMNS} FROM conversations WHERE {where} ORDER BY {order_sql(query)}"
            if query.limit is not None or query.offset:
                sql += " LIMIT ? OFFSET ?"
                params += [-1 if query.limit is None else min(query.limit, _INT64_MAX), min(query.offset, _INT64_MAX)]
            return sql, params

        def native(rows: list[Any]) -> list[MetaRecord]:
            return [
                self._record(conversation_id, tuple(row))
                or MetaRecord(conversation_id, None, None, None, None, None, None)
                for conversation_id, *row in rows
            ]

        fields = [name for name, _ in query.order]
        return await self._answer("querying", query, now_ms, build, native, query.apply, fields)

    async def _meta_count(self, query: MetaQuery, now_ms: int) -> int:
        def build() -> tuple[str, list[Any]]:
            where, params = compile_where(query, now_ms)
            return f"SELECT COUNT(*) FROM conversations WHERE {where}", params

        def native(rows: list[Any]) -> int:
            return int(rows[0][0])

        return await self._answer("counting", query, now_ms, build, native, lambda rs: len(query.apply(rs)), [])

    async def _meta_aggregate(
        self, query: MetaQuery, group_by: str | None, measures: dict[str, tuple[str, str | None]], now_ms: int
    ) -> dict[Any, dict[str, Any]]:
        decoders: list[Callable[[tuple[Any, ...]], tuple[Any, dict[str, Any]]]] = []

        def build() -> tuple[str, list[Any]]:
            where, params = compile_where(query, now_ms)
            sql, decode_row = aggregate_sql(where, group_by, measures)
            decoders.append(decode_row)
            return sql, params

        def native(rows: list[Any]) -> dict[Any, dict[str, Any]]:
            result: dict[Any, dict[str, Any]] = {}
            for row in rows:
                if row[0] == 0:  # no group_by and nothing matched: no group at all
                    continue
                key, values = decoders[0](row)
                result[key] = values
            return result

        def reference(records: list[MetaRecord]) -> dict[Any, dict[str, Any]]:
            return aggregate(query.apply(records), group_by, measures)

        fields = [name for _, name in measures.values() if name is not None] + ([group_by] if group_by else [])
        return await self._answer("aggregating", query, now_ms, build, native, reference, fields)

    async def _answer(
        self,
        action: str,
        query: MetaQuery,
        now_ms: int,
        build: Callable[[], tuple[str, list[Any]]],
        native: Callable[[list[Any]], T],
        reference: Callable[[list[MetaRecord]], T],
        fields: list[str],
    ) -> T:
        """One read transaction: the SQL statement ``build`` makes, or the reference over a scan
        when SQL cannot answer exactly (``Fallback``; SQLite without JSON functions; a stored
        metadata string holding U+0000, which SQLite 3.40's json_extract cuts short there)."""
        try:
            sql, params = build() if self._json_functions else (None, [])
        except Fallback:
            sql, params = None, []
        fields = fields + [condition.field for condition in query.conditions]
        metadata = any(field.startswith("metadata.") for field in fields)

        def body(conn: sqlite3.Connection) -> T:
            if sql is None or (metadata and conn.execute(_NUL_ESCAPE).fetchone() is not None):
                return reference(self._scan(conn, now_ms))
            _install_aggregates(conn)
            return native(self._select(conn, sql, params))

        return await self._run(action, body, "BEGIN")  # the check and the statement see one snapshot

    def _select(self, conn: sqlite3.Connection, sql: str, params: list[Any]) -> list[Any]:
        """Run a query over metadata; a metadata column that is not JSON is named, not a bare SQL error."""
        try:
            return conn.execute(sql, params).fetchall()
        except sqlite3.OperationalError as e:
            if "JSON" not in str(e):
                raise
            bad = conn.execute(
                "SELECT conversation_id FROM conversations WHERE metadata IS NOT NULL AND NOT json_valid(metadata)"
            ).fetchone()
            if bad is None:
                raise
            source = f"{self._path} (table conversations, conversation_id {bad[0]!r}, metadata columns)"
            raise CorruptedDataError(source, "the metadata column is not JSON", hint=_HINT) from e

    # ----------------------------------------------------------- verify, stats

    async def _meta_problems(self) -> list[Problem]:
        """A Problem for every metadata row that does not decode."""

        def body(conn: sqlite3.Connection) -> list[Problem]:
            problems = []
            sql = f"SELECT conversation_id, {META_COLUMNS} FROM conversations WHERE metadata IS NOT NULL"
            for conversation_id, *row in conn.execute(sql):
                try:
                    self._record(conversation_id, tuple(row))
                except CorruptedDataError as e:
                    problems.append(Problem(e.path, str(e)))
            return problems

        return await self._run("checking", body, "BEGIN")

    async def verify(self) -> list[Problem]:
        """Everything the other checks find, plus every conversation whose metadata does not decode."""
        problems = await super().verify()
        problems.extend(await self._meta_problems())
        return problems


# --------------------------------------------------------------------- SQL


@dataclass(frozen=True)
class _Field:
    """SQL expressions for one query field: its JSON type (NULL when missing), value and JSON text."""

    name: str
    column: str | None  # a top field's column; None for metadata.<path>
    path: str = ""  # a metadata field's JSON path as an SQL literal

    @property
    def type(self) -> str:
        if self.column is None:
            return f"json_type(metadata, {self.path})"
        kind = "text" if self.column == "conversation_id" else "integer"
        return f"(CASE WHEN {self.column} IS NOT NULL THEN '{kind}' END)"

    @property
    def value(self) -> str:
        return f"json_extract(metadata, {self.path})" if self.column is None else self.column

    @property
    def text(self) -> str:
        return f"(metadata -> {self.path})" if self.column is None else f"json_quote({self.column})"


def _field(name: str) -> _Field:
    if name in _TOP:
        return _Field(name, _TOP[name])
    labels = []
    for key in name.split(".")[1:]:
        # SQLite's JSON path reads a quoted label up to the next '"' and compares it with the
        # key as it is written in the JSON text, escapes included; a key the encoder writes
        # unchanged (no '"', '\' or control character) is therefore addressed exactly. The
        # others are left to the reference.
        if any(char in '"\\' or char < " " for char in key) or not is_utf8(key):
            raise Fallback(name)
        labels.append(f'."{key}"')
    path = "$" + "".join(labels)
    return _Field(name, None, "'" + path.replace("'", "''") + "'")


def _operand(value: Any) -> Any:
    """An operand SQLite compares exactly as Python does, or Fallback."""
    if isinstance(value, str) and ("\x00" in value or not is_utf8(value)):
        raise Fallback(value)  # a lone surrogate SQLite cannot take, or U+0000 json_extract cuts at
    if type(value) is int and not _INT64_MIN <= value <= _INT64_MAX:
        raise Fallback(value)  # the sqlite3 module cannot bind it
    if type(value) is float and abs(value) >= 2.0**63:
        raise Fallback(value)  # stored integers beyond int64 read as doubles: only exact below 2**63
    return value


def _equal(type_sql: str, value_sql: str, operand: Any, params: list[Any]) -> str:
    """SQL true when the value (of JSON type ``type_sql``) equals ``operand`` with its type class."""
    rank = type_class(operand)
    if rank == 0:
        return f"{type_sql} = 'null'"
    if rank == 1:
        return f"{type_sql} = '{'true' if operand else 'false'}'"
    params.append(_operand(operand))
    if rank == 2:
        return f"({type_sql} IN ('integer', 'real') AND {value_sql} = ?)"
    return f"({type_sql} = 'text' AND {value_sql} = ?)"


def _condition(field: _Field, op: str, operand: Any, params: list[Any]) -> str:
    kind, value = field.type, field.value
    if op == "==":
        return _equal(kind, value, operand, params)
    if op == "!=":
        return f"({kind} IS NULL OR NOT {_equal(kind, value, operand, params)})"
    if op == "in":
        return "(" + " OR ".join(_equal(kind, value, item, params) for item in operand) + ")" if operand else "0"
    if op == "contains":
        branches = []
        if isinstance(operand, str):
            params.append(_operand(operand))
            branches.append(f"({kind} = 'text' AND instr({value}, ?) > 0)")  # instr: no wildcards, exact case
        if field.column is None:
            element = _equal("e.type", "e.value", operand, params)
            branches.append(f"({kind} = 'array' AND EXISTS (SELECT 1 FROM json_each(metadata, {field.path}) AS e "
                            f"WHERE {element}))")  # fmt: skip
        return "(" + " OR ".join(branches) + ")" if branches else "0"
    rank = type_class(operand)  # <, <=, >, >=: a number or a str (checked when the condition was added)
    params.append(_operand(operand))
    classes = "('integer', 'real')" if rank == 2 else "('text')"
    return f"({kind} IN {classes} AND {value} {op} ?)"


def compile_where(query: MetaQuery, now_ms: int) -> tuple[str, list[Any]]:
    """The WHERE clause (live conversations matching every condition) and its parameters.

    Raises Fallback for what SQL cannot decide exactly as ``Condition.matches`` does: a
    metadata key holding '"', '\\' or a control character, an operand with a lone surrogate,
    an integer operand outside int64, a float operand of 2**63 or more.
    """
    params: list[Any] = [now_ms]
    terms = [LIVE]
    for condition in query.conditions:
        terms.append(_condition(_field(condition.field), condition.op, condition.value, params))
    return " AND ".join(terms), params


_CLASS = """(CASE {type} WHEN 'null' THEN 0 WHEN 'true' THEN 1 WHEN 'false' THEN 1 WHEN 'integer' THEN 2
    WHEN 'real' THEN 2 WHEN 'text' THEN 3 ELSE 4 END)"""


def order_sql(query: MetaQuery) -> str:
    """ORDER BY terms: per field missing last, then type class, then value (arrays and objects
    by their canonical JSON text, which json_extract returns as stored); ties by id in the
    direction of the last order."""
    terms = []
    for name, descending in query.order:
        field = _field(name)
        direction = " DESC" if descending else ""
        if field.column == "conversation_id":
            terms.append(f"conversation_id{direction}")
        elif field.column is not None:
            terms += [f"{field.column} IS NULL", f"{field.column}{direction}"]
        else:
            terms += [f"{field.type} IS NULL", _CLASS.format(type=field.type) + direction, field.value + direction]
    tie = " DESC" if query.order and query.order[-1][1] else ""
    return ", ".join([*terms, f"conversation_id{tie}"])


def aggregate_sql(
    where: str, group_by: str | None, measures: dict[str, tuple[str, str | None]]
) -> tuple[str, Callable[[tuple[Any, ...]], tuple[Any, dict[str, Any]]]]:
    """(statement, decode_row) for an aggregate.

    Groups are ``GROUP BY json_extract(...)``: SQLite's equality there is Python's (1, 1.0
    and true one group, JSON null and missing the NULL group, arrays and objects by their
    text). The group's key is read from its first row by id (the only ``MIN`` of the
    statement makes bare columns come from that row), as the reference keeps the first key
    it met. ``sum``/``avg``/``min``/``max`` are aggregate functions registered on the
    connection (``_install_aggregates``) that parse each value's JSON text and reduce it as
    the reference does (math.fsum, ints of any size, the order of ``order_value``, ties by id).
    """
    columns = ["COUNT(*)", "MIN(conversation_id)"]
    group = ""
    key_field = None if group_by is None else _field(group_by)
    if key_field is not None:
        columns += [key_field.type, key_field.text]
        group = f" GROUP BY {key_field.value}"
    for op, name in measures.values():
        if op == "count":
            continue
        assert name is not None
        field = _field(name)
        columns.append(f"conv_{op}({field.type}, {field.text}, conversation_id)")
    sql = f"SELECT {', '.join(columns)} FROM conversations WHERE {where}{group} ORDER BY 2"

    def decode_row(row: tuple[Any, ...]) -> tuple[Any, dict[str, Any]]:
        count = row[0]
        rest = list(row[2:])
        key = None
        if key_field is not None:
            kind, text = rest[0], rest[1]
            rest = rest[2:]
            if kind is not None:
                key = orjson.loads(text)
                if type_class(key) == 4:
                    key = order_value(key)[1]
        values: dict[str, Any] = {}
        for name, (op, _) in measures.items():
            values[name] = count if op == "count" else _result(rest.pop(0))
        return key, values

    return sql, decode_row


# ------------------------------------------------- aggregate functions (connection thread)


class _Numbers:
    """sum/avg over numbers only, as the reference: exact ints, math.fsum once a float is in."""

    def __init__(self, average: bool) -> None:
        self.average = average
        self.numbers: list[int | float] = []

    def step(self, kind: str | None, text: str | None, _id: str) -> None:
        if kind in ("integer", "real") and text is not None:
            self.numbers.append(orjson.loads(text))

    def finalize(self) -> str:
        numbers = self.numbers
        total: int | float = math.fsum(numbers) if any(isinstance(v, float) for v in numbers) else sum(numbers)
        if self.average:
            return _encoded(total / len(numbers) if numbers else None)
        return _encoded(total)


class _Extreme:
    """min/max by ``order_value``; of equal values the first by conversation_id, as min()/max() keep."""

    def __init__(self, largest: bool) -> None:
        self.largest = largest
        self.best: tuple[Any, str, Any] | None = None  # (order key, id, value)

    def step(self, kind: str | None, text: str | None, conversation_id: str) -> None:
        if kind is None or text is None:
            return  # missing
        value = orjson.loads(text)
        key = order_value(value)
        best = self.best
        if best is None:
            self.best = (key, conversation_id, value)
            return
        better = key > best[0] if self.largest else key < best[0]
        if better or (key == best[0] and conversation_id < best[1]):
            self.best = (key, conversation_id, value)

    def finalize(self) -> str:
        return _encoded(None if self.best is None else self.best[2])


def _encoded(value: Any) -> str:
    """A result through SQLite unchanged: ints of any size as text, floats by repr, the rest as JSON."""
    if type(value) is int:
        return f"i{value}"
    if type(value) is float:
        return f"f{value!r}"
    return "j" + orjson.dumps(value).decode()


def _result(text: str) -> Any:
    tag, body = text[0], text[1:]
    if tag == "i":
        return int(body)
    if tag == "f":
        return float(body)
    return orjson.loads(body)


def _install_aggregates(conn: sqlite3.Connection) -> None:
    factories: dict[str, Callable[[], Any]] = {
        "conv_sum": lambda: _Numbers(False), "conv_avg": lambda: _Numbers(True),
        "conv_min": lambda: _Extreme(False), "conv_max": lambda: _Extreme(True),
    }  # fmt: skip
    for name, factory in factories.items():
        conn.create_aggregate(name, 3, cast(Any, factory))  # typeshed knows one-argument steps only
