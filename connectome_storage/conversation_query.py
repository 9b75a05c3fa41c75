"""The conversation store's query builder (docs/conversations.md, "Queries").

``ConversationQuery`` collects conditions, order and paging into a ``MetaQuery``: a
frozen description that a backend answers through ``_meta_query``, ``_meta_count`` and
``_meta_aggregate``. ``MetaQuery.matches``, ``sort_key`` and ``apply`` are the reference
semantics: the scanning backends use them as they are and SQLite's SQL must agree.

Values compare by type class (null, boolean, number, string, array/object): a stored
value of another class than the operand never matches an ordering or equality test, so
every backend agrees without ever raising on one odd record. Only an operand that cannot
be compared at all (``<`` with a list, ``in`` with a number, a naive datetime) raises
InvalidArgumentError, when the condition is added.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, Self

import orjson

from .errors import InvalidArgumentError

if TYPE_CHECKING:
    from .conversations import ConversationMetadata, ConversationStore, MetaRecord

__all__ = ["OPERATORS", "Condition", "ConversationQuery", "MetaQuery"]

OPERATORS = ("==", "!=", "<", "<=", ">", ">=", "in", "contains")
TIME_FIELDS = ("created_at", "updated_at", "expires_at")
TOP_FIELDS = ("conversation_id", "message_count", *TIME_FIELDS)
MEASURES = ("sum", "avg", "min", "max")
_MISSING = object()

Operand = str | int | float | bool | None


def type_class(value: Any) -> int:
    """The order of type classes, as SQLite's json_type ranks them: null, boolean,
    number, string, array/object (compared by their canonical JSON text)."""
    if value is None:
        return 0
    if isinstance(value, bool):
        return 1
    if isinstance(value, int | float):
        return 2
    if isinstance(value, str):
        return 3
    return 4


def order_value(value: Any) -> tuple[int, Any]:
    """A sort key for any JSON value: by type class, then within it."""
    rank = type_class(value)
    if rank == 4:
        return rank, orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    return rank, value


def check_field(field: Any) -> str:
    if isinstance(field, str):
        if field in TOP_FIELDS:
            return field
        if field.startswith("metadata.") and all(field.split(".")[1:]):
            return field
    raise InvalidArgumentError(
        f"unknown field {field!r}: use one of {', '.join(TOP_FIELDS)} or metadata.<key>[.<key>...]"
    )


def field_value(record: MetaRecord, field: str) -> Any:
    """A record's value of ``field``, or _MISSING (time fields in epoch milliseconds)."""
    if field == "conversation_id":
        return record.conversation_id
    if field in TOP_FIELDS:
        top = getattr(record, field.replace("_at", "_ms"))
        return _MISSING if top is None else top
    value: Any = record.metadata
    if value is None:
        return _MISSING
    for part in field.split(".")[1:]:
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _equal(stored: Any, operand: Any) -> bool:
    return type_class(stored) == type_class(operand) and stored == operand


@dataclass(frozen=True)
class Condition:
    """One ``where``: the field, the operator, and the operand (times in epoch ms)."""

    field: str
    op: str
    value: Any

    def matches(self, record: MetaRecord) -> bool:
        stored = field_value(record, self.field)
        if stored is _MISSING:
            return self.op == "!="
        op, operand = self.op, self.value
        if op == "==":
            return _equal(stored, operand)
        if op == "!=":
            return not _equal(stored, operand)
        if op == "in":
            return any(_equal(stored, item) for item in operand)
        if op == "contains":
            if isinstance(stored, list):
                return any(_equal(item, operand) for item in stored)
            return isinstance(stored, str) and isinstance(operand, str) and operand in stored
        if type_class(stored) != type_class(operand):
            return False
        if op == "<":
            return bool(stored < operand)
        if op == "<=":
            return bool(stored <= operand)
        if op == ">":
            return bool(stored > operand)
        return bool(stored >= operand)


@dataclass(frozen=True)
class MetaQuery:
    """What a query asks for: conditions (AND), order (then ``conversation_id`` in the
    direction of the last order), paging. Records without metadata take part with every
    field but ``conversation_id`` missing; a missing order value sorts after all others."""

    conditions: tuple[Condition, ...] = ()
    order: tuple[tuple[str, bool], ...] = ()  # (field, descending)
    limit: int | None = None
    offset: int = 0

    def matches(self, record: MetaRecord) -> bool:
        return all(condition.matches(record) for condition in self.conditions)

    def apply(self, records: Iterable[MetaRecord]) -> list[MetaRecord]:
        """Filter, order, offset and limit: the whole query over records a backend scanned."""
        hits = [record for record in records if self.matches(record)]
        tie_descending = self.order[-1][1] if self.order else False
        hits.sort(key=lambda r: r.conversation_id, reverse=tie_descending)
        for field, descending in reversed(self.order):  # stable sorts, least significant first
            keyed = [(field_value(r, field), r) for r in hits]
            present = [(value, r) for value, r in keyed if value is not _MISSING]
            present.sort(key=lambda pair: order_value(pair[0]), reverse=descending)
            hits = [r for _, r in present] + [r for value, r in keyed if value is _MISSING]
        end = None if self.limit is None else self.offset + self.limit
        return hits[self.offset : end]

    def unpaged(self) -> MetaQuery:
        return MetaQuery(self.conditions)


def aggregate(
    records: Iterable[MetaRecord], group_by: str | None, measures: dict[str, tuple[str, str | None]]
) -> dict[Any, dict[str, Any]]:
    """The reference ``aggregate``: group records, then each measure per group.

    A group's key is the field's value (None when missing; arrays and objects by their
    canonical JSON text). ``sum``/``avg`` take numbers only; ``min``/``max`` order like
    ``order_by`` and skip missing values; an empty ``avg``/``min``/``max`` is None.
    """
    groups: dict[Any, list[MetaRecord]] = {}
    for record in records:
        key = None if group_by is None else field_value(record, group_by)
        if key is _MISSING:
            key = None
        elif type_class(key) == 4:
            key = order_value(key)[1]
        groups.setdefault(key, []).append(record)
    result: dict[Any, dict[str, Any]] = {}
    for key, members in groups.items():
        row: dict[str, Any] = {}
        for name, (op, field) in measures.items():
            if op == "count":
                row[name] = len(members)
                continue
            assert field is not None
            values = [v for v in (field_value(r, field) for r in members) if v is not _MISSING]
            if op in ("sum", "avg"):
                numbers = [v for v in values if type_class(v) == 2]
                total = math.fsum(numbers) if any(isinstance(v, float) for v in numbers) else sum(numbers)
                row[name] = total if op == "sum" else (total / len(numbers) if numbers else None)
            else:
                chosen = (min if op == "min" else max)(values, key=order_value, default=None)
                row[name] = chosen
        result[key] = row
    return result


class ConversationQuery:
    """``store.query()``: chain ``where``, ``order_by``, ``limit``, ``offset``; then ``all()``,
    ``count()`` or ``aggregate()``. Each call returns the builder; conditions combine with AND."""

    def __init__(self, store: ConversationStore) -> None:
        self._store = store
        self._conditions: list[Condition] = []
        self._order: list[tuple[str, bool]] = []
        self._limit: int | None = None
        self._offset = 0

    def where(self, field: str, op: Literal["==", "!=", "<", "<=", ">", ">=", "in", "contains"], value: Any) -> Self:
        field = check_field(field)
        if op not in OPERATORS:
            raise InvalidArgumentError(f"unknown operator {op!r}: use one of {', '.join(OPERATORS)}")
        self._conditions.append(Condition(field, op, _operand(field, op, value)))
        return self

    def order_by(self, field: str, *, descending: bool = False) -> Self:
        """Order by ``field`` (several calls: the first is the primary order); ties by id."""
        self._order.append((check_field(field), bool(descending)))
        return self

    def limit(self, n: int) -> Self:
        self._limit = _count(n, "limit")
        return self

    def offset(self, n: int) -> Self:
        self._offset = _count(n, "offset")
        return self

    def build(self) -> MetaQuery:
        return MetaQuery(tuple(self._conditions), tuple(self._order), self._limit, self._offset)

    async def all(self) -> list[ConversationMetadata]:
        """Matching conversations' metadata, ordered and paged."""
        return await self._store._query_all(self.build())

    async def count(self) -> int:
        """How many conversations match (order, limit and offset do not apply)."""
        return await self._store._query_count(self.build().unpaged())

    async def aggregate(
        self, group_by: str | None = None, **measures: str | tuple[str, str]
    ) -> dict[Any, dict[str, Any]]:
        """Per group (None without ``group_by``), each measure: ``"count"`` or
        ``(op, field)`` with op ``sum``, ``avg``, ``min`` or ``max``. Order, limit and offset
        do not apply."""
        if not measures:
            raise InvalidArgumentError('aggregate needs a measure, e.g. conversations="count"')
        checked: dict[str, tuple[str, str | None]] = {}
        for name, measure in measures.items():
            if measure == "count":
                checked[name] = ("count", None)
            elif isinstance(measure, tuple) and len(measure) == 2 and measure[0] in MEASURES:
                checked[name] = (measure[0], check_field(measure[1]))
            else:
                raise InvalidArgumentError(
                    f'measure {name}={measure!r}: use "count" or (op, field) with op one of {", ".join(MEASURES)}'
                )
        group = None if group_by is None else check_field(group_by)
        return await self._store._query_aggregate(self.build().unpaged(), group, checked)


def _count(n: Any, where: str) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise InvalidArgumentError(f"{where} must be an int >= 0, got {n!r}")
    return n


def _scalar(value: Any, field: str, op: str) -> Operand:
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidArgumentError(f"{field} {op} {value!r}: the value must be a finite number")
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise InvalidArgumentError(
        f"{field} {op} {value!r}: compare with a str, number, bool or None, not {type(value).__name__}"
    )


def _operand(field: str, op: str, value: Any) -> Any:
    """The operand as records hold it (times in epoch ms), or InvalidArgumentError."""
    if op == "in":
        if isinstance(value, str | bytes) or not isinstance(value, list | tuple | set | frozenset):
            raise InvalidArgumentError(f"{field} in {value!r}: 'in' takes a list of values")
        return tuple(_operand(field, "==", item) for item in value)
    if field in TIME_FIELDS:
        if not isinstance(value, datetime) or value.tzinfo is None:
            raise InvalidArgumentError(
                f"{field} {op} {value!r}: compare a time with an aware datetime (tzinfo=timezone.utc)"
            )
        if op == "contains":
            raise InvalidArgumentError(f"{field} is a time: 'contains' applies to lists and strings")
        return round(value.timestamp() * 1000)
    operand = _scalar(value, field, op)
    if op in ("<", "<=", ">", ">=") and type_class(operand) not in (2, 3):
        raise InvalidArgumentError(f"{field} {op} {value!r}: order comparisons take a number or a str")
    return operand
