"""Key-value collections (docs/kv.md): ``storage.kv(namespace)`` -> ``KeyValueStore``.

Written once over the ``_kv_*`` hooks of ``StorageInterface``: this module checks keys,
values, tags and arguments, does the TTL arithmetic and turns the backends' records
(times in epoch milliseconds) into ``Entry`` objects (aware UTC datetimes). A backend
stores ``KVRecord``s and answers a ``KVSelect``; ``KVSelect.matches`` and ``KVSelect.apply``
are the reference semantics that scanning backends use as they are and that native
queries (SQL, Redis indexes) must agree with.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal

from .codec import check_value
from .errors import InvalidArgumentError, InvalidKeyError, SerializationError
from .naming import check_id

if TYPE_CHECKING:
    from .interface import StorageInterface

__all__ = ["DEFAULT_NAMESPACE", "Entry", "KVRecord", "KVSelect", "KeyValueStore", "compile_pattern", "glob_regex"]

DEFAULT_NAMESPACE = "default"
# How many entries scan() asks a backend for at a time, unless the backend says otherwise
# (StorageInterface._kv_scan_batch): memory stays flat however large the namespace is.
SCAN_BATCH = 256

OrderBy = Literal["key", "created_at", "updated_at"]
ORDER_FIELDS = ("key", "created_at", "updated_at")


@dataclass(frozen=True)
class KVRecord:
    """One stored entry as backends hold it: times in epoch milliseconds."""

    key: str
    value: Any
    tags: dict[str, str]
    created_ms: int
    updated_ms: int
    expires_ms: int | None  # None: never expires

    def expired(self, now_ms: int) -> bool:
        return self.expires_ms is not None and now_ms >= self.expires_ms

    def to_entry(self) -> Entry:
        return Entry(
            key=self.key, value=self.value, tags=dict(self.tags),
            created_at=ms_to_datetime(self.created_ms), updated_at=ms_to_datetime(self.updated_ms),
            expires_at=None if self.expires_ms is None else ms_to_datetime(self.expires_ms),
        )  # fmt: skip


@dataclass(frozen=True)
class Entry:
    """An entry as ``get_entry`` and ``query`` return it; times are aware UTC datetimes."""

    key: str
    value: Any
    tags: dict[str, str]
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None


@dataclass(frozen=True)
class KVSelect:
    """Which live entries a query, count, keys or scan is about, and in what order.

    ``pattern`` is a glob on the key (``*``, ``?``, ``[...]``, ``[^...]`` or ``[!...]``,
    case-sensitive, no escapes: ``[*]`` matches a star); ``tags`` must all match;
    ``since_ms`` (inclusive) and ``until_ms`` (exclusive) bound ``updated_ms``; ``after_key``
    keeps keys strictly greater than it (scan's paging, key order only). Ties in
    ``created_at``/``updated_at`` order are broken by key, in the same direction.
    """

    pattern: str | None = None
    prefix: str | None = None
    tags: tuple[tuple[str, str], ...] = ()
    since_ms: int | None = None
    until_ms: int | None = None
    order_by: OrderBy = "key"
    descending: bool = False
    limit: int | None = None
    offset: int = 0
    after_key: str | None = None
    _regex: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.pattern is not None and self.pattern != "*":
            object.__setattr__(self, "_regex", compile_pattern(self.pattern))

    def matches(self, record: KVRecord, now_ms: int) -> bool:
        """Whether a record is live and passes every filter (not limit/offset)."""
        if record.expired(now_ms):
            return False
        key = record.key
        if self.prefix is not None and not key.startswith(self.prefix):
            return False
        if self.after_key is not None and key <= self.after_key:
            return False
        if self._regex is not None and self._regex.fullmatch(key) is None:
            return False
        if any(record.tags.get(name) != value for name, value in self.tags):
            return False
        if self.since_ms is not None and record.updated_ms < self.since_ms:
            return False
        return not (self.until_ms is not None and record.updated_ms >= self.until_ms)

    def sort_key(self, record: KVRecord) -> tuple[int, str] | str:
        if self.order_by == "created_at":
            return (record.created_ms, record.key)
        if self.order_by == "updated_at":
            return (record.updated_ms, record.key)
        return record.key

    def apply(self, records: Iterable[KVRecord], now_ms: int) -> list[KVRecord]:
        """Filter, order, offset and limit: the whole query over records a backend scanned."""
        hits = sorted((r for r in records if self.matches(r, now_ms)), key=self.sort_key, reverse=self.descending)
        end = None if self.limit is None else self.offset + self.limit
        return hits[self.offset : end]

    def unpaged(self) -> KVSelect:
        """The same filters with no limit or offset (what ``count_query`` counts)."""
        return KVSelect(self.pattern, self.prefix, self.tags, self.since_ms, self.until_ms, self.order_by)


def glob_regex(pattern: str, literal: Callable[[str], str]) -> str:
    """The regular expression (unanchored) of a key glob; see KVSelect. ``*`` and ``?``
    become ``.*`` and ``.``, a set keeps its body with ``\\``, ``^``, ``[`` and ``]``
    escaped, a ``[`` with no closing bracket is a literal, and ``literal`` escapes any other
    character for the regex dialect at hand (Python's here, PostgreSQL's in its backend)."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        char = pattern[i]
        i += 1
        if char == "*":
            out.append(".*")
        elif char == "?":
            out.append(".")
        elif char == "[":
            # A "]" right after "[" (or "[^", "[!") belongs to the set, as in SQLite's GLOB.
            first = i + 1 if i < n and pattern[i] in "^!" else i
            end = pattern.find("]", first + 1)
            if end < 0:  # no closing bracket: a literal "["
                out.append(literal(char))
                continue
            body = pattern[i:end]
            i = end + 1
            negate = body[:1] in ("^", "!")
            if negate:
                body = body[1:]
            for special in "\\^[]":
                body = body.replace(special, "\\" + special)
            out.append(f"[{'^' if negate else ''}{body}]")
        else:
            out.append(literal(char))
    return "".join(out)


@lru_cache(maxsize=256)
def compile_pattern(pattern: str) -> re.Pattern[str]:
    """The regular expression (for ``fullmatch``) of a key glob; see KVSelect."""
    try:
        return re.compile(glob_regex(pattern, re.escape), re.DOTALL)
    except re.error as e:  # a set such as [b-a]
        raise InvalidArgumentError(f"pattern {pattern!r} is not a usable glob: {e}") from e


def ms_to_datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def _to_ms(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise InvalidArgumentError(
                f"{where} is a naive datetime, which is ambiguous; pass an aware one (tzinfo=timezone.utc)"
            )
        return round(value.timestamp() * 1000)
    if isinstance(value, int | float) and not isinstance(value, bool) and abs(value) < 1e13:
        return round(value * 1000)
    raise InvalidArgumentError(f"{where} must be an aware datetime or epoch seconds, got {value!r}")


def _check_tags(tags: Any) -> dict[str, str]:
    if tags is None:
        return {}
    if not isinstance(tags, Mapping):
        raise InvalidArgumentError(f"tags must be a dict of str to str, got {type(tags).__name__}")
    checked: dict[str, str] = {}
    for name, value in tags.items():
        if not isinstance(name, str) or not name or "\x00" in name:
            raise InvalidArgumentError(f"a tag name must be a non-empty str without NUL, got {name!r}")
        if not isinstance(value, str) or "\x00" in value:
            raise InvalidArgumentError(f"tag {name!r} must have a str value without NUL, got {value!r}")
        for text in (name, value):
            try:
                check_value(text, "tags")
            except SerializationError as e:  # a lone surrogate: not UTF-8, so no engine can hold it
                raise InvalidArgumentError(f"tag {name!r}: {e}") from e
        checked[name] = value
    return checked


def _check_count(value: Any, where: str, *, allow_none: bool) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidArgumentError(f"{where} must be an int >= 0{' or None' if allow_none else ''}, got {value!r}")


def _check_pattern(pattern: Any) -> str:
    if not isinstance(pattern, str):
        raise InvalidArgumentError(f"pattern must be a str glob such as 'user:*', got {pattern!r}")
    return pattern


class KeyValueStore:
    """One namespace of key-value entries with tags and expiry (docs/kv.md).

    Get it from ``storage.kv(namespace)``; every method is async and raises only
    ``StorageError`` subclasses: ``InvalidKeyError`` for a bad key, ``SerializationError``
    for a value that would not come back equal, ``InvalidArgumentError`` for a bad ttl,
    tag or query argument, plus whatever the backend raises for its medium.
    """

    def __init__(self, storage: StorageInterface, namespace: str = DEFAULT_NAMESPACE) -> None:
        check_id(namespace, "namespace")
        self.storage = storage
        self.namespace = namespace

    def __repr__(self) -> str:
        return f"KeyValueStore({self.storage!r}, {self.namespace!r})"

    def _now(self) -> int:
        self.storage._require_initialized()
        return self.storage._now_ms()

    def _expiry(self, ttl: Any, now_ms: int) -> int | None:
        if ttl is None:
            return None
        from .interface import check_ttl

        return now_ms + max(1, round(check_ttl(ttl) * 1000))

    def _record(self, key: str, value: Any, ttl: Any, tags: Any, now_ms: int) -> KVRecord:
        check_id(key, "key")
        check_value(value, "value")
        return KVRecord(key, value, _check_tags(tags), now_ms, now_ms, self._expiry(ttl, now_ms))

    # ------------------------------------------------------------ single entries

    async def set(
        self, key: str, value: Any, *, ttl: float | None = None, tags: Mapping[str, str] | None = None,
        if_not_exists: bool = False,
    ) -> bool:  # fmt: skip
        """Store ``value`` under ``key``, replacing value, tags and expiry (``created_at`` survives).

        ``ttl`` seconds (None: never expires); ``tags`` a dict of str to str. Returns False
        only when ``if_not_exists`` and a live entry exists, which is left unchanged.
        """
        now = self._now()
        record = self._record(key, value, ttl, tags, now)
        return await self.storage._kv_put(self.namespace, [record], now, if_not_exists=bool(if_not_exists))

    async def get(self, key: str) -> Any:
        """The value, or None when missing or expired."""
        record = await self._get_live(key)
        return None if record is None else record.value

    async def get_entry(self, key: str) -> Entry | None:
        """The value with its tags and times, or None when missing or expired."""
        record = await self._get_live(key)
        return None if record is None else record.to_entry()

    async def _get_live(self, key: str) -> KVRecord | None:
        check_id(key, "key")
        now = self._now()
        record = (await self.storage._kv_get(self.namespace, [key])).get(key)
        return None if record is None or record.expired(now) else record

    async def exists(self, key: str) -> bool:
        """Whether a live entry is stored under ``key``."""
        return await self._get_live(key) is not None

    async def delete(self, key: str) -> bool:
        """Remove an entry; False when there was no live one."""
        check_id(key, "key")
        return await self.storage._kv_delete(self.namespace, [key], self._now()) > 0

    # ------------------------------------------------------------------- batches

    async def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """Values of the live keys among ``keys``, in the order asked."""
        keys = self._check_keys(keys)
        now = self._now()
        records = await self.storage._kv_get(self.namespace, list(dict.fromkeys(keys))) if keys else {}
        found: dict[str, Any] = {}
        for key in keys:
            record = records.get(key)
            if record is not None and not record.expired(now):
                found[key] = record.value
        return found

    async def set_many(
        self, items: Mapping[str, Any] | Iterable[tuple[str, Any]], *, ttl: float | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:  # fmt: skip
        """Store every item, all or nothing: one bad key or value stores none of them."""
        pairs = list(items.items() if isinstance(items, Mapping) else items)
        now = self._now()
        records: dict[str, KVRecord] = {}
        for index, pair in enumerate(pairs):
            if not isinstance(pair, tuple) or len(pair) != 2:
                raise InvalidArgumentError(f"set_many items[{index}] must be a (key, value) pair, got {pair!r}")
            key, value = pair
            check_id(key, f"items[{index}] key")
            check_value(value, f"items[{key!r}]")
            records[key] = KVRecord(key, value, {}, now, now, None)  # the last of a repeated key wins
        if not records:
            return
        expires = self._expiry(ttl, now)
        checked_tags = _check_tags(tags)
        batch = [KVRecord(r.key, r.value, dict(checked_tags), now, now, expires) for r in records.values()]
        await self.storage._kv_put(self.namespace, batch, now, if_not_exists=False)

    async def delete_many(self, keys: Iterable[str]) -> int:
        """Remove entries; returns how many live ones existed."""
        keys = list(dict.fromkeys(self._check_keys(keys)))
        return await self.storage._kv_delete(self.namespace, keys, self._now()) if keys else 0

    @staticmethod
    def _check_keys(keys: Iterable[str]) -> list[str]:
        if isinstance(keys, str):
            raise InvalidKeyError("keys must be a list of keys, not one str (wrap it: [key])")
        keys = list(keys)
        for index, key in enumerate(keys):
            check_id(key, f"keys[{index}]")
        return keys

    # ------------------------------------------------------------ keys and scans

    async def keys(self, pattern: str = "*") -> list[str]:
        """Sorted live keys matching a glob (``*``, ``?``, ``[...]``; case-sensitive)."""
        select = KVSelect(pattern=_check_pattern(pattern))
        return await self.storage._kv_keys(self.namespace, select, self._now())

    async def count(self, pattern: str = "*") -> int:
        """How many live keys match the glob."""
        select = KVSelect(pattern=_check_pattern(pattern))
        return await self.storage._kv_count(self.namespace, select, self._now())

    async def scan(self, pattern: str = "*") -> AsyncIterator[tuple[str, Any]]:
        """``(key, value)`` of live entries in key order, read in batches (flat memory)."""
        pattern = _check_pattern(pattern)
        size = self.storage._kv_scan_batch
        after: str | None = None
        while True:
            select = KVSelect(pattern=pattern, limit=size, after_key=after)
            batch = await self.storage._kv_select(self.namespace, select, self._now())
            for record in batch:
                yield record.key, record.value
            if len(batch) < size:
                return
            after = batch[-1].key

    async def find_by_tag(self, name: str, value: str) -> list[str]:
        """Sorted live keys whose tag ``name`` equals ``value``."""
        tags = _check_tags({name: value})
        select = KVSelect(tags=tuple(tags.items()))
        return await self.storage._kv_keys(self.namespace, select, self._now())

    # -------------------------------------------------------------------- query

    def _select(
        self, prefix: Any, tags: Any, since: Any, until: Any, order_by: Any, descending: Any, limit: Any, offset: Any
    ) -> KVSelect:
        if prefix is not None and not isinstance(prefix, str):
            raise InvalidArgumentError(f"prefix must be a str, got {prefix!r}")
        if order_by not in ORDER_FIELDS:
            raise InvalidArgumentError(f"order_by must be one of {', '.join(ORDER_FIELDS)}, got {order_by!r}")
        _check_count(limit, "limit", allow_none=True)
        _check_count(offset, "offset", allow_none=False)
        return KVSelect(
            prefix=prefix or None, tags=tuple(sorted(_check_tags(tags).items())),
            since_ms=_to_ms(since, "since"), until_ms=_to_ms(until, "until"),
            order_by=order_by, descending=bool(descending), limit=limit, offset=offset,
        )  # fmt: skip

    async def query(
        self, *, prefix: str | None = None, tags: Mapping[str, str] | None = None, since: Any = None,
        until: Any = None, order_by: OrderBy = "key", descending: bool = False, limit: int | None = None,
        offset: int = 0,
    ) -> list[Entry]:  # fmt: skip
        """Live entries matching every filter, ordered and paged.

        ``tags`` must all match; ``since`` (inclusive) and ``until`` (exclusive) bound
        ``updated_at`` (aware datetime or epoch seconds); ``order_by`` is ``"key"``,
        ``"created_at"`` or ``"updated_at"``, ties broken by key.
        """
        select = self._select(prefix, tags, since, until, order_by, descending, limit, offset)
        return [r.to_entry() for r in await self.storage._kv_select(self.namespace, select, self._now())]

    async def count_query(
        self, *, prefix: str | None = None, tags: Mapping[str, str] | None = None, since: Any = None,
        until: Any = None, order_by: OrderBy = "key", descending: bool = False, limit: int | None = None,
        offset: int = 0,
    ) -> int:  # fmt: skip
        """How many entries ``query`` would return without ``limit`` and ``offset``."""
        select = self._select(prefix, tags, since, until, order_by, descending, limit, offset)
        return await self.storage._kv_count(self.namespace, select.unpaged(), self._now())

    # ------------------------------------------------------------------- expiry

    async def expire(self, key: str, ttl: float) -> bool:
        """Give a live entry a new expiry ``ttl`` seconds from now; False when missing."""
        check_id(key, "key")
        now = self._now()
        expires = self._expiry(ttl, now)
        return await self.storage._kv_set_expiry(self.namespace, key, expires, now)

    async def persist(self, key: str) -> bool:
        """Remove a live entry's expiry; False when missing."""
        check_id(key, "key")
        return await self.storage._kv_set_expiry(self.namespace, key, None, self._now())

    async def ttl(self, key: str) -> float:
        """Seconds left; -1.0 when it never expires, -2.0 when missing or expired."""
        check_id(key, "key")
        now = self._now()
        record = (await self.storage._kv_get(self.namespace, [key])).get(key)
        if record is None or record.expired(now):
            return -2.0
        return -1.0 if record.expires_ms is None else (record.expires_ms - now) / 1000

    async def clear(self) -> int:
        """Remove every entry of the namespace; returns how many live ones there were."""
        return await self.storage._kv_clear(self.namespace, self._now())

    async def cleanup(self) -> int:
        """Remove this namespace's expired entries; returns how many."""
        return await self.storage._kv_remove_expired(self.namespace, self._now())
