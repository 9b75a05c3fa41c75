"""Key-value collections on PostgreSQL: the ``_kv_*`` hooks of ``PostgresStorage`` (docs/kv.md).

Tables (``_postgres_schema.KV_TABLES``)::

    kv(namespace, key, value, tags, created_ms, updated_ms, expires_ms)   PRIMARY KEY (namespace, key)
        indexes (namespace, updated_ms, key), (namespace, created_ms, key),
        (expires_ms, namespace) WHERE expires_ms IS NOT NULL
    kv_tags(namespace, name, value, key)   PRIMARY KEY (namespace, name, value, key)
        FOREIGN KEY (namespace, key) -> kv ON DELETE CASCADE, index (namespace, key)

Every text column that is ordered or compared with ``<`` is declared ``COLLATE "C"``:
whatever collation the database was created with, keys then sort by their UTF-8 bytes,
which is the code point order of Python's ``str`` (what ``KVSelect.apply`` sorts by), and
the primary key index serves those orders and ranges. ``kv.value`` goes through the storage's serializer
(JSON text, or msgpack bytes in a msgpack schema), ``kv.tags`` is the entry's tags as a
canonical JSON object whatever the serializer (what ``get_entry`` returns);
``kv_tags`` holds one row per tag so that tag filters are index lookups. Every query,
count, key listing and scan page is one SQL statement built from a ``KVSelect``
(``select_sql``) and must return exactly what ``KVSelect.apply`` returns over all records.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, nullcontext
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import orjson

from ..codec import compact_text, is_utf8
from ..errors import CorruptedDataError
from ..interface import Problem, StorageInterface
from ..kv import KVRecord, KVSelect, glob_regex
from ._sqlite_kv import glob_of, prefix_upper_bound

T = TypeVar("T")

__all__ = ["Fallback", "PostgresKV", "regex_of", "select_sql"]

_INT64_MAX = 2**63 - 1
_HINT = "set the entry again to replace it, or delete it"
_COLUMNS = "kv.key, kv.value, kv.tags, kv.created_ms, kv.updated_ms, kv.expires_ms"
_ORDER = {"created_at": "kv.created_ms", "updated_at": "kv.updated_ms"}

# One statement for a whole batch (arrays unnested into rows). A live entry keeps its
# created_ms; an expired one is replaced whole. RETURNING names the keys written.
_UPSERT = """INSERT INTO kv AS kv (namespace, key, value, tags, created_ms, updated_ms, expires_ms)
    SELECT $1, r.key, r.value, r.tags, r.created_ms, r.updated_ms, r.expires_ms
        FROM unnest($2::text[], $3::stored[], $4::text[], $6::bigint[], $7::bigint[], $8::bigint[])
            AS r (key, value, tags, created_ms, updated_ms, expires_ms)
    ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value, tags = excluded.tags,
        created_ms = CASE WHEN kv.expires_ms IS NULL OR kv.expires_ms > $5 THEN kv.created_ms
                     ELSE excluded.created_ms END,
        updated_ms = excluded.updated_ms, expires_ms = excluded.expires_ms
    RETURNING kv.key"""
# if_not_exists: the update branch only runs over an expired entry; a live one makes the
# statement return no row. The row lock of ON CONFLICT makes check and write one step.
_INSERT_IF_ABSENT = """INSERT INTO kv AS kv (namespace, key, value, tags, created_ms, updated_ms, expires_ms)
    SELECT $1, r.key, r.value, r.tags, r.created_ms, r.updated_ms, r.expires_ms
        FROM unnest($2::text[], $3::stored[], $4::text[], $6::bigint[], $7::bigint[], $8::bigint[])
            AS r (key, value, tags, created_ms, updated_ms, expires_ms)
    ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value, tags = excluded.tags,
        created_ms = excluded.created_ms, updated_ms = excluded.updated_ms, expires_ms = excluded.expires_ms
        WHERE kv.expires_ms IS NOT NULL AND kv.expires_ms <= $5
    RETURNING kv.key"""
# The tag rows of the written keys: drop those no longer wanted, add the new ones ($1
# namespace, $2 written keys, then the wanted (key, name, value) rows).
_DROP_TAGS = """DELETE FROM kv_tags AS t WHERE t.namespace = $1 AND t.key = ANY($2::text[])
    AND (t.key, t.name, t.value) NOT IN (SELECT * FROM unnest($3::text[], $4::text[], $5::text[]))"""
_ADD_TAGS = """INSERT INTO kv_tags (namespace, key, name, value)
    SELECT $1, w.key, w.name, w.value FROM unnest($3::text[], $4::text[], $5::text[]) AS w (key, name, value)
    WHERE w.key = ANY($2::text[])
    ON CONFLICT DO NOTHING"""

# Namespaces by skipping through the primary key index (a recursive "loose index scan"):
# one probe per namespace instead of reading every row; each kept when it has a live entry.
_NAMESPACES = """WITH RECURSIVE ns (name) AS (
        (SELECT namespace FROM kv ORDER BY namespace LIMIT 1)
        UNION ALL SELECT (SELECT namespace FROM kv WHERE namespace > ns.name ORDER BY namespace LIMIT 1)
            FROM ns WHERE ns.name IS NOT NULL)
    SELECT name FROM ns WHERE name IS NOT NULL
        AND EXISTS (SELECT 1 FROM kv WHERE namespace = ns.name AND (expires_ms IS NULL OR expires_ms > $1))"""

# Whether each row decodes (as _kv_record would), judged in SQL by json_kind
# (_postgres_schema): 'ok', 'bad', or 'unsure' for text PostgreSQL's JSON parser and the
# reader's may judge apart, which the caller decodes in Python.
_VERDICT = """CASE WHEN vk = 'unsure' OR tk = 'unsure' THEN 'unsure'
        WHEN vk IS NULL OR tk IS DISTINCT FROM 'object' THEN 'bad'
        WHEN EXISTS (SELECT 1 FROM json_each(tags::json) AS e WHERE json_typeof(e.value) != 'string') THEN 'bad'
        ELSE 'ok' END"""
_KINDS = "(SELECT namespace, key, value, tags, expires_ms, json_kind(value) AS vk, json_kind(tags) AS tk FROM kv)"
# (namespaces with a live entry, live entries, expired entries, unreadable entries) at $1
# among the rows judged in SQL, then the rows left to Python.
STATS_SQL = f"""SELECT COUNT(DISTINCT namespace) FILTER (WHERE verdict = 'ok' AND live),
        COUNT(*) FILTER (WHERE verdict = 'ok' AND live), COUNT(*) FILTER (WHERE verdict = 'ok' AND NOT live),
        COUNT(*) FILTER (WHERE verdict = 'bad'), array_agg(DISTINCT namespace) FILTER (WHERE verdict = 'ok' AND live)
    FROM (SELECT namespace, {_VERDICT} AS verdict, (expires_ms IS NULL OR expires_ms > $1) AS live
        FROM {_KINDS} AS k) AS rows"""
UNSURE_SQL = f"""SELECT namespace, key, value, tags, 0::bigint, 0::bigint, expires_ms FROM {_KINDS} AS k
    WHERE vk = 'unsure' OR tk = 'unsure'"""


class Fallback(Exception):
    """A select SQL cannot answer exactly (a lone surrogate in a pattern): the reference answers it."""


class PostgresKV(StorageInterface):
    """The key-value hooks of ``PostgresStorage`` (listed among its bases)."""

    if TYPE_CHECKING:  # what PostgresStorage provides (postgres.py); declared here for the type checker
        _server: str
        _schema: str
        _text: bool  # JSON values (SQL can judge them), or msgpack
        _loads: Callable[[Any], Any]

        def _dump(self, value: Any) -> str | bytes: ...
        def _parse(self, text: Any, table: str, key: str, shape: type | None = None) -> Any: ...
        def _lock_key(self, *entity: str) -> int: ...
        async def _read(self, action: str, body: Callable[[Any], Awaitable[T]]) -> T: ...
        async def _write(
            self, action: str, body: Callable[[Any], Awaitable[T]], entities: tuple[tuple[str, ...], ...] = ()
        ) -> T: ...

    # ------------------------------------------------------------------ records

    def _kv_record(self, namespace: str, row: Any) -> KVRecord:
        """Decode one row; a bad one raises CorruptedDataError naming the namespace and key."""
        key, value, tags, created, updated, expires = row
        try:
            decoded, labels = self._loads(value), orjson.loads(tags)
        except (ValueError, TypeError):  # every serializer's errors (orjson's among them)
            self._kv_damage(namespace, row)
        if type(labels) is dict and (not labels or all(type(v) is str for v in labels.values())):
            return KVRecord(key, decoded, labels, created, updated, expires)
        self._kv_damage(namespace, row)

    def _kv_damage(self, namespace: str, row: Any) -> NoReturn:
        """Raise the CorruptedDataError that says what is wrong with a row that did not decode."""
        key, value, tags = row[0], row[1], row[2]
        where = f"namespace {namespace!r}, key {key!r}"
        source = f"{self._server} (schema {self._schema}, table kv, {where})"
        self._parse(value, "kv", where)
        try:
            labels = orjson.loads(tags)
        except (ValueError, TypeError) as e:
            raise CorruptedDataError(source, f"column tags is not JSON: {e}", hint=_HINT) from e
        if not isinstance(labels, dict):
            raise CorruptedDataError(source, "column tags is not a JSON object", hint=_HINT)
        for name, label in labels.items():
            if not isinstance(label, str):
                raise CorruptedDataError(source, f"tag {name!r} is not a string", hint=_HINT)
        raise CorruptedDataError(source, "the row does not decode", hint=_HINT)  # not reached: one check fails

    # -------------------------------------------------------------------- reads

    async def _kv_get(self, namespace: str, keys: list[str]) -> dict[str, KVRecord]:
        if len(keys) == 1:  # the common case: the primary key, one row

            async def one(conn: Any) -> dict[str, KVRecord]:
                sql = f"SELECT {_COLUMNS} FROM kv WHERE namespace = $1 AND key = $2"
                row = await conn.fetchrow(sql, namespace, keys[0])
                return {} if row is None else {keys[0]: self._kv_record(namespace, row)}

            return await self._read("reading", one)

        async def many(conn: Any) -> dict[str, KVRecord]:
            sql = f"SELECT {_COLUMNS} FROM kv WHERE namespace = $1 AND key = ANY($2::text[])"
            records = [self._kv_record(namespace, row) for row in await conn.fetch(sql, namespace, keys)]
            return {record.key: record for record in records}

        return await self._read("reading", many)  # one statement: one snapshot

    async def _kv_rows(self, action: str, namespace: str, columns: str, select: KVSelect, now_ms: int) -> list[Any]:
        """The rows of ``select`` (one statement), or of every live entry when it must fall back."""
        try:
            query = select_sql(columns, namespace, select, now_ms)
        except Fallback:
            query = None
        if query is None:
            return []

        async def body(conn: Any) -> list[Any]:
            return list(await conn.fetch(query[0], *query[1]))

        return await self._read(action, body)

    async def _kv_select(self, namespace: str, select: KVSelect, now_ms: int) -> list[KVRecord]:
        if _needs_reference(select):
            return select.apply(await self._kv_select(namespace, KVSelect(), now_ms), now_ms)
        rows = await self._kv_rows("querying", namespace, _COLUMNS, select, now_ms)
        return [self._kv_record(namespace, row) for row in rows]

    async def _kv_keys(self, namespace: str, select: KVSelect, now_ms: int) -> list[str]:
        if _needs_reference(select):
            return [record.key for record in await self._kv_select(namespace, select, now_ms)]
        return [row[0] for row in await self._kv_rows("listing keys of", namespace, "kv.key", select, now_ms)]

    async def _kv_count(self, namespace: str, select: KVSelect, now_ms: int) -> int:
        if _needs_reference(select):
            return len(await self._kv_keys(namespace, select, now_ms))
        query = select_sql("COUNT(*)", namespace, select, now_ms, ordered=False)
        if query is None:
            return 0
        sql, params = query
        return int(await self._read("counting", lambda conn: conn.fetchval(sql, *params)))

    async def _kv_namespaces(self, now_ms: int) -> list[str]:
        return [row[0] for row in await self._read("listing namespaces of", lambda c: c.fetch(_NAMESPACES, now_ms))]

    # ------------------------------------------------------------------- writes

    async def _kv_put(self, namespace: str, records: list[KVRecord], now_ms: int, *, if_not_exists: bool) -> bool:
        # Everything is encoded before the transaction starts: a value that fails writes nothing.
        keys = [r.key for r in records]
        values = [self._dump(r.value) for r in records]
        tags = [compact_text(r.tags) for r in records]
        created = [r.created_ms for r in records]
        updated = [r.updated_ms for r in records]
        expires = [r.expires_ms for r in records]
        tag_rows = [(r.key, name, value) for r in records for name, value in r.tags.items()]
        wanted = [list(column) for column in zip(*tag_rows, strict=True)] if tag_rows else [[], [], []]
        sql = _INSERT_IF_ABSENT if if_not_exists else _UPSERT

        async def body(conn: Any) -> bool:
            rows = await conn.fetch(sql, namespace, keys, values, tags, now_ms, created, updated, expires)
            written = [row[0] for row in rows]
            if not written:
                return False  # if_not_exists and a live entry: left as it is, tags included
            await conn.execute(_DROP_TAGS, namespace, written, *wanted)
            if tag_rows:
                await conn.execute(_ADD_TAGS, namespace, written, *wanted)
            return True

        entities = tuple(("kv", namespace, key) for key in keys)
        return await self._write("writing", body, entities)

    async def _kv_delete(self, namespace: str, keys: list[str], now_ms: int) -> int:
        sql = """DELETE FROM kv WHERE namespace = $1 AND key = ANY($2::text[])
            RETURNING expires_ms IS NULL OR expires_ms > $3"""

        async def body(conn: Any) -> int:
            return sum(bool(row[0]) for row in await conn.fetch(sql, namespace, keys, now_ms))

        return await self._write("deleting from", body, tuple(("kv", namespace, key) for key in keys))

    async def _kv_set_expiry(self, namespace: str, key: str, expires_ms: int | None, now_ms: int) -> bool:
        sql = """UPDATE kv SET expires_ms = $1 WHERE namespace = $2 AND key = $3
            AND (expires_ms IS NULL OR expires_ms > $4)"""

        async def body(conn: Any) -> bool:
            return str(await conn.execute(sql, expires_ms, namespace, key, now_ms)) != "UPDATE 0"

        return await self._write("writing", body, (("kv", namespace, key),))

    async def _kv_clear(self, namespace: str, now_ms: int) -> int:
        lock = self._lock_key

        async def body(conn: Any) -> int:
            # The entries' own locks (shared) first: a transaction holding one of them makes
            # the clear wait, as it makes a write of that entry wait.
            keys = [row[0] for row in await conn.fetch("SELECT key FROM kv WHERE namespace = $1", namespace)]
            if keys:
                # The schema's transaction key first: never beside a transaction, so no
                # deadlock with one holding some of these keys (_postgres_tx.py, _shared_locks).
                locks = [lock("transaction"), *sorted({lock("kv", namespace, key) for key in keys})]
                await conn.execute("SELECT pg_advisory_xact_lock_shared(k) FROM unnest($1::bigint[]) AS k", locks)
            sql = "DELETE FROM kv WHERE namespace = $1 RETURNING expires_ms IS NULL OR expires_ms > $2"
            return sum(bool(row[0]) for row in await conn.fetch(sql, namespace, now_ms))

        return await self._write("clearing", body)

    async def _kv_remove_expired(self, namespace: str | None, now_ms: int) -> int:
        # The expiry index finds the expired rows; the tags go by cascade.
        sql = "DELETE FROM kv WHERE expires_ms <= $1"
        params: list[Any] = [now_ms]
        if namespace is not None:
            sql += " AND namespace = $2"
            params.append(namespace)

        async def body(conn: Any) -> int:
            return int(str(await conn.execute(sql, *params)).split()[-1])

        return await self._write("removing expired entries from", body)

    # ------------------------------------------------------------ stats, verify

    async def _kv_stats(self, now_ms: int) -> tuple[int, int, int, int]:
        if not self._text:  # msgpack: SQL cannot judge a value, every row is decoded
            census = await self._kv_census()
            good = [found for found in census if not isinstance(found, Problem)]
            live = [namespace for namespace, expires in good if expires is None or expires > now_ms]
            return len(set(live)), len(live), len(good) - len(live), len(census) - len(good)

        async def body(conn: Any) -> tuple[int, int, int, int]:
            async with snapshot(conn):  # one snapshot for both statements
                _, live, expired, bad, names = await conn.fetchrow(STATS_SQL, now_ms)
                namespaces = set(names or ())
                for namespace, *row in await conn.fetch(UNSURE_SQL):
                    try:
                        record = self._kv_record(namespace, tuple(row))
                    except CorruptedDataError:
                        bad += 1
                        continue
                    if record.expired(now_ms):
                        expired += 1
                    else:
                        live += 1
                        namespaces.add(namespace)
            return len(namespaces), int(live), int(expired), int(bad)

        return await self._read("counting", body)

    async def verify(self) -> list[Problem]:
        """Everything the other checks find, plus every key-value row that would not decode."""
        problems = await super().verify()
        problems.extend(found for found in await self._kv_census() if isinstance(found, Problem))
        return problems

    async def _kv_census(self) -> list[tuple[str, int | None] | Problem]:
        """Every row decoded: (namespace, expires_ms) of a good one, a Problem for a bad one."""

        async def body(conn: Any) -> list[tuple[str, int | None] | Problem]:
            found: list[tuple[str, int | None] | Problem] = []
            sql = "SELECT namespace, key, value, tags, created_ms, updated_ms, expires_ms FROM kv"
            for namespace, *row in await conn.fetch(sql):
                try:
                    record = self._kv_record(namespace, tuple(row))
                except CorruptedDataError as e:
                    found.append(Problem(e.path, str(e)))
                    continue
                found.append((namespace, record.expires_ms))
            return found

        return await self._read("checking", body)


# --------------------------------------------------------------------- SQL


class _Params:
    """Positional parameters of one statement: ``add`` returns the placeholder."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    def add(self, value: Any, cast: str = "") -> str:
        self.values.append(value)
        return f"${len(self.values)}{cast}"


def select_sql(
    columns: str, namespace: str, select: KVSelect, now_ms: int, *, ordered: bool = True
) -> tuple[str, list[Any]] | None:
    """One statement (text, parameters) for ``select``, or None when nothing can match.

    The key bounds (prefix, the pattern's literal start, ``after_key``) are ranges of the
    primary key; ``since``/``until`` a range of ``(namespace, updated_ms, key)``. With
    tags, the first tag's ``kv_tags`` range (already in key order) is joined to ``kv`` row
    by row and the others are probes of ``kv_tags``. The key glob is a POSIX regular
    expression (``regex_of``) besides its literal start.
    """
    p = _Params()
    tables = "kv"
    where = [f"kv.namespace = {p.add(namespace)}", f"(kv.expires_ms IS NULL OR kv.expires_ms > {p.add(now_ms)})"]
    key = "kv.key"
    if select.tags:
        if not all(is_utf8(name) and is_utf8(value) for name, value in select.tags):
            return None  # no stored tag holds a lone surrogate
        tables = "kv_tags AS t0 JOIN kv ON kv.namespace = t0.namespace AND kv.key = t0.key"
        key = "t0.key"  # equal to kv.key; named so that ranges and order may use kv_tags' key
        (name, value), *others = select.tags
        where.append(f"t0.namespace = {p.add(namespace)} AND t0.name = {p.add(name)} AND t0.value = {p.add(value)}")
        for n, (name, value) in enumerate(others, 1):
            probe = f"t{n}.name = {p.add(name)} AND t{n}.value = {p.add(value)}"
            where.append(f"EXISTS (SELECT 1 FROM kv_tags AS t{n} WHERE t{n}.namespace = kv.namespace "
                         f"AND t{n}.key = kv.key AND {probe})")  # fmt: skip
    starts = [select.prefix] if select.prefix is not None else []
    if select.pattern is not None and select.pattern != "*":
        literal = glob_of(select.pattern)[1]
        if literal:
            starts.append(literal)
        where.append(f"{key} ~ {p.add(regex_of(select.pattern))}")
    for start in starts:
        if not is_utf8(start):
            return None  # no stored key holds a lone surrogate
        where.append(f"{key} >= {p.add(start)}")
        upper = prefix_upper_bound(start)
        if upper is not None:
            where.append(f"{key} < {p.add(upper)}")
    if select.after_key is not None:
        if not is_utf8(select.after_key):
            return None
        where.append(f"{key} > {p.add(select.after_key)}")
    if select.since_ms is not None:
        where.append(f"kv.updated_ms >= {p.add(select.since_ms)}")
    if select.until_ms is not None:
        where.append(f"kv.updated_ms < {p.add(select.until_ms)}")
    sql = f"SELECT {columns} FROM {tables} WHERE {' AND '.join(where)}"
    if ordered:
        direction = " DESC" if select.descending else ""
        order = [key + direction] if select.order_by == "key" else [_ORDER[select.order_by] + direction]
        if select.order_by != "key":
            order.append(key + direction)  # ties broken by key, in the same direction
        sql += f" ORDER BY {', '.join(order)}"
        if select.limit is not None:
            sql += f" LIMIT {p.add(min(select.limit, _INT64_MAX))}"
        if select.offset:
            sql += f" OFFSET {p.add(min(select.offset, _INT64_MAX))}"
    return sql, p.values


# Characters a POSIX regular expression (PostgreSQL's ARE flavour) treats specially outside
# brackets; every other ASCII character, and every non-ASCII one, stands for itself.
_SPECIAL = frozenset(".^$*+?()[]{}|\\")


def regex_of(pattern: str) -> str:
    """The anchored PostgreSQL regular expression equal to ``compile_pattern(pattern)``:
    the same translation (``kv.glob_regex``; ``.`` matches a newline in PostgreSQL, as with
    re.DOTALL, and escapes work inside brackets in AREs). Raises Fallback for a lone
    surrogate, which no statement can carry (the reference regex answers then)."""
    if not is_utf8(pattern):
        raise Fallback(pattern)
    return f"^{glob_regex(pattern, _are_literal)}$"


def _are_literal(char: str) -> str:
    return "\\" + char if char in _SPECIAL else char


def _needs_reference(select: KVSelect) -> bool:
    """A pattern holding a lone surrogate: it may still match stored keys (a negated set),
    but no statement can carry it, so the reference regex filters every live entry."""
    return select.pattern is not None and select.pattern != "*" and not is_utf8(select.pattern)


def snapshot(conn: Any) -> AbstractAsyncContextManager[Any]:
    """A read-only repeatable-read transaction, so that several statements see one snapshot;
    nothing on a connection already in one (a transaction's own reads)."""
    if conn.is_in_transaction():
        return nullcontext()
    return conn.transaction(isolation="repeatable_read", readonly=True)  # type: ignore[no-any-return]
