"""Key-value collections on SQLite: the ``_kv_*`` hooks of ``SqliteStorage`` (docs/kv.md).

Tables (schema version 2, ``_sqlite_schema.MIGRATIONS``)::

    kv(namespace, key, value, tags, created_ms, updated_ms, expires_ms)   PRIMARY KEY (namespace, key)
        indexes (namespace, updated_ms, key), (namespace, created_ms, key),
        (expires_ms, namespace) WHERE expires_ms IS NOT NULL
    kv_tags(namespace, name, value, key)   WITHOUT ROWID, PRIMARY KEY (namespace, name, value, key)
        FOREIGN KEY (namespace, key) -> kv ON DELETE CASCADE, index (namespace, key)

``kv.value`` goes through the storage's serializer (JSON text or a msgpack BLOB);
``kv.tags`` is the entry's tags as a canonical JSON object whatever the serializer (what ``get_entry`` returns);
``kv_tags`` holds one row per tag so that tag filters are index lookups. Every query,
count, key listing and scan page is one SQL statement built from a ``KVSelect``
(``select_sql``), and must return exactly what ``KVSelect.apply`` returns over all records.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import orjson

from ..codec import compact_text, decode, is_utf8
from ..errors import CorruptedDataError
from ..interface import Problem, StorageInterface
from ..kv import KVRecord, KVSelect, compile_pattern

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from ..serializer import Serializer

T = TypeVar("T")

__all__ = ["SqliteKV", "glob_of", "prefix_upper_bound", "select_sql"]

# SQLite binds at most 32766 variables per statement (999 before 3.32); batches of keys
# go in chunks well below either.
_CHUNK = 500
_INT64_MAX = 2**63 - 1
_MAX_CHAR = 0x10FFFF
_HINT = "set the entry again to replace it, delete it, or restore a copy made with SqliteStorage.backup()"
_COLUMNS = "kv.key, kv.value, kv.tags, kv.created_ms, kv.updated_ms, kv.expires_ms"
_LIVE = "(kv.expires_ms IS NULL OR kv.expires_ms > ?)"
_ORDER = {"created_at": "kv.created_ms", "updated_at": "kv.updated_ms"}

# One statement per entry. A live entry keeps its created_ms (unless a hand edit broke it);
# an expired one is replaced whole.
_UPSERT = """INSERT INTO kv (namespace, key, value, tags, created_ms, updated_ms, expires_ms)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
    ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value, tags = excluded.tags,
        created_ms = CASE WHEN (kv.expires_ms IS NULL OR kv.expires_ms > ?8) AND typeof(kv.created_ms) = 'integer'
                     THEN kv.created_ms ELSE excluded.created_ms END,
        updated_ms = excluded.updated_ms, expires_ms = excluded.expires_ms"""
# if_not_exists: the same statement, whose update branch only runs over an expired entry;
# a live one makes it change nothing (rowcount 0). Inside BEGIN IMMEDIATE, the check and
# the write are one step for every process.
_INSERT_IF_ABSENT = """INSERT INTO kv (namespace, key, value, tags, created_ms, updated_ms, expires_ms)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
    ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value, tags = excluded.tags,
        created_ms = excluded.created_ms, updated_ms = excluded.updated_ms, expires_ms = excluded.expires_ms
    WHERE kv.expires_ms IS NOT NULL AND kv.expires_ms <= ?8"""
_DROP_TAGS = "DELETE FROM kv_tags WHERE namespace = ? AND key = ?"
_ADD_TAG = "INSERT INTO kv_tags (namespace, name, value, key) VALUES (?, ?, ?, ?)"

# Namespaces by skipping through the primary key index: one probe per namespace instead
# of reading every row; each is kept when it holds a live entry.
_NAMESPACES = """WITH RECURSIVE ns (name) AS (
        SELECT MIN(namespace) FROM kv
        UNION ALL SELECT (SELECT MIN(namespace) FROM kv WHERE namespace > ns.name) FROM ns WHERE ns.name IS NOT NULL)
    SELECT name FROM ns WHERE name IS NOT NULL
        AND EXISTS (SELECT 1 FROM kv WHERE namespace = ns.name AND (expires_ms IS NULL OR expires_ms > ?))"""

# Whether a row would decode (``_record``), judged in SQL: the statistics count without
# decoding anything in Python. CASE guards json_each, which fails on malformed text.
_ROW_OK = """(typeof(namespace) = 'text' AND typeof(key) = 'text' AND json_valid(value)
    AND typeof(created_ms) = 'integer' AND typeof(updated_ms) = 'integer'
    AND (expires_ms IS NULL OR typeof(expires_ms) = 'integer')
    AND CASE WHEN json_valid(tags) AND json_type(tags) = 'object'
        THEN NOT EXISTS (SELECT 1 FROM json_each(tags) WHERE json_each.type != 'text') ELSE 0 END)"""
# (namespaces with a live entry, live entries, expired entries) among the good rows at :now
STATS_SQL = f"""SELECT COUNT(DISTINCT CASE WHEN ok AND live THEN namespace END),
        COALESCE(SUM(ok AND live), 0), COALESCE(SUM(ok AND NOT live), 0)
    FROM (SELECT namespace, {_ROW_OK} AS ok, (expires_ms IS NULL OR expires_ms > :now) AS live FROM kv)"""
UNREADABLE_SQL = f"SELECT COUNT(*) FROM kv WHERE NOT {_ROW_OK}"


class SqliteKV(StorageInterface):
    """The key-value hooks of ``SqliteStorage`` (listed first among its bases)."""

    if TYPE_CHECKING:  # what SqliteStorage provides (sqlite.py); declared here for the type checker
        _path: Path
        _json1: bool
        _serializer: Serializer

        def _dump(self, value: Any) -> str | bytes: ...
        def _parse(self, text: Any, table: str, key: str, shape: type | None = None) -> Any: ...
        async def _run(self, action: str, body: Callable[[sqlite3.Connection], T], begin: str | None = None) -> T: ...
        async def _read(self, action: str, body: Callable[[sqlite3.Connection], T]) -> T: ...
        async def _point_read(
            self, fetch: Callable[[sqlite3.Connection], list[Any]], finish: Callable[[list[Any]], T]
        ) -> T: ...
        async def _write(self, action: str, body: Callable[[sqlite3.Connection], T]) -> T: ...
        async def _column(self, sql: str, *args: Any) -> list[Any]: ...

    # ------------------------------------------------------------------ records

    def _kv_record(self, namespace: str, row: tuple[Any, ...]) -> KVRecord:
        """Decode one row; a bad one raises CorruptedDataError naming the namespace and key."""
        # The fast path builds no location strings: a scan decodes every row it returns,
        # and naming where (the path, the key's repr) cost more than the parsing itself.
        key, value, tags, created, updated, expires = row
        try:
            decoded, labels = self._serializer.loads(value), orjson.loads(tags)
        except (ValueError, TypeError):  # every serializer's errors (orjson's among them); TypeError: not text
            self._kv_damage(namespace, row)
        if (
            type(key) is str and type(labels) is dict and type(created) is int and type(updated) is int
            and (expires is None or type(expires) is int)
            and (not labels or all(type(v) is str for v in labels.values()))
        ):  # fmt: skip
            return KVRecord(key, decoded, labels, created, updated, expires)
        self._kv_damage(namespace, row)

    def _kv_damage(self, namespace: str, row: tuple[Any, ...]) -> NoReturn:
        """Raise the CorruptedDataError that says what is wrong with a row that did not decode."""
        key, value, tags, created, updated, expires = row
        where = f"namespace {namespace!r}, key {key!r}"
        source = f"{self._path} (table kv, {where})"
        if not isinstance(key, str):
            raise CorruptedDataError(source, f"the key is a {type(key).__name__}, not text", hint=_HINT)
        for column, text in (("value", value), ("tags", tags)):
            if not isinstance(text, str | bytes):
                raise CorruptedDataError(source, f"{column} is a {type(text).__name__}, not stored text", hint=_HINT)
        self._parse(value, "kv", where)
        try:
            labels = decode(tags, f"{source}, column tags")  # tags are JSON whatever the serializer
        except CorruptedDataError as e:
            raise CorruptedDataError(e.path, e.problem, line=e.line, column=e.column, hint=_HINT) from e
        if not isinstance(labels, dict):
            raise CorruptedDataError(source, "tags is not a JSON object", hint=_HINT)
        for name, label in labels.items():
            if not isinstance(label, str):
                raise CorruptedDataError(source, f"tag {name!r} is not a string", hint=_HINT)
        for column, stamp in (("created_ms", created), ("updated_ms", updated), ("expires_ms", expires)):
            if not (type(stamp) is int or (stamp is None and column == "expires_ms")):
                raise CorruptedDataError(source, f"{column} is {stamp!r}, not epoch milliseconds", hint=_HINT)
        raise CorruptedDataError(source, "the row does not decode", hint=_HINT)  # not reached: one check fails

    def _kv_check_key(self, namespace: str, key: Any) -> str:
        if not isinstance(key, str):
            source = f"{self._path} (table kv, namespace {namespace!r}, key {key!r})"
            raise CorruptedDataError(source, f"the key is a {type(key).__name__}, not text", hint=_HINT)
        return key

    # -------------------------------------------------------------------- reads

    async def _kv_get(self, namespace: str, keys: list[str]) -> dict[str, KVRecord]:
        if len(keys) == 1:  # the common case: one statement, no transaction

            def fetch(conn: sqlite3.Connection) -> list[Any]:
                return conn.execute(
                    f"SELECT {_COLUMNS} FROM kv WHERE namespace = ? AND key = ?", (namespace, keys[0])
                ).fetchall()

            def finish(rows: list[Any]) -> dict[str, KVRecord]:
                return {keys[0]: self._kv_record(namespace, rows[0])} if rows else {}

            return await self._point_read(fetch, finish)

        def many(conn: sqlite3.Connection) -> dict[str, KVRecord]:
            found: dict[str, KVRecord] = {}
            for chunk in _chunks(keys):
                marks = ", ".join("?" * len(chunk))
                sql = f"SELECT {_COLUMNS} FROM kv WHERE namespace = ? AND key IN ({marks})"
                for row in conn.execute(sql, (namespace, *chunk)):
                    record = self._kv_record(namespace, row)
                    found[record.key] = record
            return found

        return await self._run("reading", many, "BEGIN")  # one snapshot across the chunks

    async def _kv_select(self, namespace: str, select: KVSelect, now_ms: int) -> list[KVRecord]:
        query = select_sql(_COLUMNS, namespace, select, now_ms)
        if query is None:
            return []

        def body(conn: sqlite3.Connection) -> list[KVRecord]:
            _install_matcher(conn, select)
            return [self._kv_record(namespace, row) for row in conn.execute(*query)]

        return await self._read("querying", body)

    async def _kv_keys(self, namespace: str, select: KVSelect, now_ms: int) -> list[str]:
        query = select_sql("kv.key", namespace, select, now_ms)
        if query is None:
            return []

        def body(conn: sqlite3.Connection) -> list[str]:
            _install_matcher(conn, select)
            return [self._kv_check_key(namespace, key) for (key,) in conn.execute(*query)]

        return await self._read("listing keys of", body)

    async def _kv_count(self, namespace: str, select: KVSelect, now_ms: int) -> int:
        query = select_sql("COUNT(*)", namespace, select, now_ms, ordered=False)
        if query is None:
            return 0

        def body(conn: sqlite3.Connection) -> int:
            _install_matcher(conn, select)
            return int(conn.execute(*query).fetchone()[0])

        return await self._read("counting", body)

    async def _kv_namespaces(self, now_ms: int) -> list[str]:
        # A namespace stored as a blob by a hand edit cannot be addressed; verify names it.
        return [name for name in await self._column(_NAMESPACES, now_ms) if isinstance(name, str)]

    # ------------------------------------------------------------------- writes

    async def _kv_put(self, namespace: str, records: list[KVRecord], now_ms: int, *, if_not_exists: bool) -> bool:
        # Everything is encoded before the transaction starts: a value that fails writes nothing.
        rows = [
            (
                namespace,
                r.key,
                self._dump(r.value),
                compact_text(r.tags),
                r.created_ms,
                r.updated_ms,
                r.expires_ms,
                now_ms,
            )
            for r in records
        ]
        tags = [[(namespace, name, value, r.key) for name, value in r.tags.items()] for r in records]
        sql = _INSERT_IF_ABSENT if if_not_exists else _UPSERT

        def body(conn: sqlite3.Connection) -> bool:
            written = False
            for row, labels in zip(rows, tags, strict=True):
                if conn.execute(sql, row).rowcount == 0:
                    continue  # if_not_exists and a live entry: left as it is, tags included
                written = True
                conn.execute(_DROP_TAGS, (namespace, row[1]))
                if labels:
                    conn.executemany(_ADD_TAG, labels)
            return written

        return await self._write("writing", body)

    async def _kv_delete(self, namespace: str, keys: list[str], now_ms: int) -> int:
        def body(conn: sqlite3.Connection) -> int:
            live = 0
            for chunk in _chunks(keys):
                marks = ", ".join("?" * len(chunk))
                # RETURNING reports each removed row's liveness; the tags go by cascade. Not
                # "expires_ms IS NULL OR ...": SQLite 3.40 evaluates IS NULL in a RETURNING
                # clause of this table to NULL (a NOT NULL primary key column confuses it).
                sql = (f"DELETE FROM kv WHERE namespace = ? AND key IN ({marks}) "
                       "RETURNING coalesce(expires_ms > ?, 1)")  # fmt: skip
                live += sum(bool(alive) for (alive,) in conn.execute(sql, (namespace, *chunk, now_ms)))
            return live

        return await self._write("deleting from", body)

    async def _kv_set_expiry(self, namespace: str, key: str, expires_ms: int | None, now_ms: int) -> bool:
        sql = f"UPDATE kv SET expires_ms = ? WHERE namespace = ? AND key = ? AND {_LIVE}"
        params = (expires_ms, namespace, key, now_ms)
        return await self._write("writing", lambda conn: conn.execute(sql, params).rowcount > 0)

    async def _kv_clear(self, namespace: str, now_ms: int) -> int:
        def body(conn: sqlite3.Connection) -> int:
            live = conn.execute(f"SELECT COUNT(*) FROM kv WHERE namespace = ? AND {_LIVE}", (namespace, now_ms))
            count = int(live.fetchone()[0])
            conn.execute("DELETE FROM kv WHERE namespace = ?", (namespace,))
            return count

        return await self._write("clearing", body)

    async def _kv_remove_expired(self, namespace: str | None, now_ms: int) -> int:
        # The unary + keeps the planner on the expiry index (only expired rows are read)
        # instead of walking the whole namespace through the primary key.
        sql = "DELETE FROM kv WHERE expires_ms <= ?"
        params: list[Any] = [now_ms]
        if namespace is not None:
            sql += " AND +namespace = ?"
            params.append(namespace)
        return await self._write("removing expired entries from", lambda conn: conn.execute(sql, params).rowcount)

    # ------------------------------------------------------------ stats, verify

    async def _kv_stats(self, now_ms: int) -> tuple[int, int, int, int]:
        if not self._json1:  # an SQLite built without JSON1: decode every row instead
            census = await self._kv_census()
            good = [found for found in census if not isinstance(found, Problem)]
            live = [namespace for namespace, expires in good if expires is None or expires > now_ms]
            return len(set(live)), len(live), len(good) - len(live), len(census) - len(good)

        def body(conn: sqlite3.Connection) -> tuple[int, int, int, int]:
            namespaces, live, expired = conn.execute(STATS_SQL, {"now": now_ms}).fetchone()
            return int(namespaces), int(live), int(expired), int(conn.execute(UNREADABLE_SQL).fetchone()[0])

        return await self._read("counting", body)

    async def verify(self) -> list[Problem]:
        """Everything the other checks find, plus every key-value row that would not decode."""
        problems = await super().verify()
        problems.extend(found for found in await self._kv_census() if isinstance(found, Problem))
        return problems

    async def _kv_census(self) -> list[tuple[str, int | None] | Problem]:
        """Every row decoded: (namespace, expires_ms) of a good one, a Problem for a bad one."""

        def body(conn: sqlite3.Connection) -> list[tuple[str, int | None] | Problem]:
            found: list[tuple[str, int | None] | Problem] = []
            sql = "SELECT namespace, key, value, tags, created_ms, updated_ms, expires_ms FROM kv"
            for namespace, *row in conn.execute(sql):
                try:
                    if not isinstance(namespace, str):
                        where = f"{self._path} (table kv, namespace {namespace!r})"
                        raise CorruptedDataError(where, "the namespace is not text", hint=_HINT)
                    record = self._kv_record(namespace, tuple(row))
                except CorruptedDataError as e:
                    found.append(Problem(e.path, str(e)))
                    continue
                found.append((namespace, record.expires_ms))
            return found

        return await self._run("checking", body, "BEGIN")


# --------------------------------------------------------------------- SQL


def select_sql(
    columns: str, namespace: str, select: KVSelect, now_ms: int, *, ordered: bool = True
) -> tuple[str, list[Any]] | None:
    """One statement (text, parameters) for ``select``, or None when nothing can match.

    The key bounds (prefix, the pattern's literal start, ``after_key``) are ranges on the
    primary key; ``since``/``until`` a range of ``(namespace, updated_ms, key)``. With tags,
    the first tag's ``kv_tags`` range drives the statement, joined to ``kv`` row by row (the
    others are probes of ``kv_tags``): in key order it is read already sorted, so a query
    with a limit stops after that many rows instead of collecting every tagged key first.
    """
    tables = "kv"
    where = ["kv.namespace = ?", _LIVE]
    params: list[Any] = [namespace, now_ms]
    key = "kv.key"
    if select.tags:
        if not all(is_utf8(name) and is_utf8(value) for name, value in select.tags):
            return None  # no stored tag holds a lone surrogate
        # CROSS JOIN keeps kv_tags outside in key order and counts; in time order the
        # planner may walk the time index instead and probe kv_tags (docs/kv.md).
        join = "CROSS JOIN" if select.order_by == "key" or not ordered else "JOIN"
        tables = f"kv_tags AS t0 {join} kv ON kv.namespace = t0.namespace AND kv.key = t0.key"
        key = "t0.key"  # equal to kv.key; named so that ranges and order use kv_tags' key
        (name, value), *others = select.tags
        where.append("t0.namespace = ? AND t0.name = ? AND t0.value = ?")
        params += [namespace, name, value]
        for n, (name, value) in enumerate(others, 1):
            where.append(f"EXISTS (SELECT 1 FROM kv_tags AS t{n} WHERE t{n}.namespace = kv.namespace "
                         f"AND t{n}.key = kv.key AND t{n}.name = ? AND t{n}.value = ?)")  # fmt: skip
            params += [name, value]
    starts = [select.prefix] if select.prefix is not None else []
    if select.pattern is not None and select.pattern != "*":
        glob, literal = glob_of(select.pattern)
        if literal:
            starts.append(literal)
        if glob is None:
            where.append("kv_match(kv.key)")  # _install_matcher: compile_pattern's regex itself
        else:
            where.append(f"{key} GLOB ?")
            params.append(glob)
    for start in starts:
        if not is_utf8(start):
            return None  # no stored key holds a lone surrogate
        where.append(f"{key} >= ?")
        params.append(start)
        upper = prefix_upper_bound(start)
        if upper is not None:
            where.append(f"{key} < ?")
            params.append(upper)
    if select.after_key is not None:
        if not is_utf8(select.after_key):
            return None
        where.append(f"{key} > ?")
        params.append(select.after_key)
    if select.since_ms is not None:
        where.append("kv.updated_ms >= ?")
        params.append(select.since_ms)
    if select.until_ms is not None:
        where.append("kv.updated_ms < ?")
        params.append(select.until_ms)
    sql = f"SELECT {columns} FROM {tables} WHERE {' AND '.join(where)}"
    if ordered:
        direction = " DESC" if select.descending else ""
        order = [key + direction] if select.order_by == "key" else [_ORDER[select.order_by] + direction]
        if select.order_by != "key":
            order.append(key + direction)  # ties broken by key, in the same direction
        sql += f" ORDER BY {', '.join(order)}"
        if select.limit is not None or select.offset:
            limit = -1 if select.limit is None else min(select.limit, _INT64_MAX)
            sql += " LIMIT ? OFFSET ?"
            params += [limit, min(select.offset, _INT64_MAX)]
    return sql, params


def glob_of(pattern: str) -> tuple[str | None, str]:
    """(SQLite GLOB equal to ``compile_pattern(pattern)``, or None; the pattern's literal start).

    Walks the pattern exactly as ``compile_pattern`` does and writes each piece in GLOB's
    syntax: ``[!...]`` becomes ``[^...]``, a ``[`` with no closing bracket (a literal for
    compile_pattern, a failed match for GLOB) becomes ``[[]``. Inside a set both read
    characters and ``a-z`` ranges alike, with no escapes. None for a pattern that is not
    valid UTF-8 (SQLite cannot take it): the statement then calls the regular expression
    itself. The literal start bounds an index range.
    """
    out: list[str] = []
    literal: list[str] = []
    fixed = True  # still inside the literal start
    exact = is_utf8(pattern)
    i, n = 0, len(pattern)
    while i < n:
        char = pattern[i]
        i += 1
        if char in "*?":
            out.append(char)
            fixed = False
        elif char == "[":
            first = i + 1 if i < n and pattern[i] in "^!" else i
            end = pattern.find("]", first + 1)  # a "]" first in the set belongs to it, as in GLOB
            if end < 0:
                out.append("[[]")
                if fixed:
                    literal.append(char)
                continue
            body = pattern[i:end]
            i = end + 1
            negate = body[:1] in ("^", "!")
            out.append(f"[^{body[1:]}]" if negate else f"[{body}]")
            fixed = False
        else:
            out.append(char)
            if fixed:
                literal.append(char)
    return ("".join(out) if exact else None), "".join(literal)


def prefix_upper_bound(prefix: str) -> str | None:
    """The least string above every string that starts with ``prefix``; None if there is none.

    Code point order (what SQLite's BINARY collation gives UTF-8 text): drop trailing
    U+10FFFF, then raise the last character by one, skipping the surrogates, which no key
    holds and UTF-8 cannot encode.
    """
    chars = prefix.rstrip(chr(_MAX_CHAR))
    if not chars:
        return None
    last = ord(chars[-1]) + 1
    if 0xD800 <= last <= 0xDFFF:
        last = 0xE000
    return chars[:-1] + chr(last)


def _install_matcher(conn: sqlite3.Connection, select: KVSelect) -> None:
    """Register ``kv_match`` for a pattern that GLOB cannot express (runs on the db thread)."""
    if select.pattern is None or select.pattern == "*" or glob_of(select.pattern)[0] is not None:
        return
    regex = compile_pattern(select.pattern)
    conn.create_function("kv_match", 1, lambda key: isinstance(key, str) and regex.fullmatch(key) is not None)


def _chunks(keys: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(keys), _CHUNK):
        yield keys[start : start + _CHUNK]
