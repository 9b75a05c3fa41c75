"""ConnectomeStore: LangGraph's BaseStore over a key-value collection."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

from langgraph.store.base import (
    BaseStore,
    GetOp,
    Item,
    ListNamespacesOp,
    MatchCondition,
    Op,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
    TTLConfig,
    validate_op_namespace,
)

from ...errors import SerializationError, StorageError
from ...interface import StorageInterface
from ...kv import Entry, KeyValueStore
from ...naming import check_id
from .._bridge import StorageBridge
from ._common import PAGE, STORE, _glob

# ------------------------------------------------------------------ the store


def _store_prefix(namespace: Sequence[str]) -> str:
    return "".join(label + "." for label in namespace)


def _store_key(namespace: Sequence[str], key: str) -> str:
    return f"{_store_prefix(namespace)}.{key}"


def _split_store_key(stored: str) -> tuple[tuple[str, ...], str]:
    # Labels hold no ".", so the first ".." ends the namespace.
    head, _, key = stored.partition("..")
    return tuple(head.split(".")), key


def _matches(value: Any, expected: Any) -> bool:
    """LangGraph's filter semantics: equality, nested dicts, and $eq/$ne/$gt/$gte/$lt/$lte."""
    if isinstance(expected, dict):
        if any(str(k).startswith("$") for k in expected):
            return all(_compare(value, op, operand) for op, operand in expected.items())
        return isinstance(value, dict) and all(_matches(value.get(k), v) for k, v in expected.items())
    if isinstance(expected, list | tuple):
        return (
            isinstance(value, list | tuple)
            and len(value) == len(expected)
            and all(_matches(a, b) for a, b in zip(value, expected, strict=True))
        )
    return bool(value == expected)


def _compare(value: Any, op: str, operand: Any) -> bool:
    if op == "$eq":
        return bool(value == operand)
    if op == "$ne":
        return bool(value != operand)
    try:
        left, right = float(value), float(operand)
    except (TypeError, ValueError):
        return False  # a missing or non-numeric field is not greater or smaller than anything
    if op == "$gt":
        return left > right
    if op == "$gte":
        return left >= right
    if op == "$lt":
        return left < right
    if op == "$lte":
        return left <= right
    raise StorageError(f"unsupported filter operator {op!r}; use $eq, $ne, $gt, $gte, $lt or $lte")


def _namespace_matches(condition: MatchCondition, namespace: tuple[str, ...]) -> bool:
    path = tuple(condition.path)
    if len(namespace) < len(path):
        return False
    if condition.match_type == "prefix":
        pairs = list(zip(namespace, path, strict=False))  # the namespace may be longer than the path
    else:
        pairs = list(zip(reversed(namespace), reversed(path), strict=False))
    return all(want == "*" or have == want for have, want in pairs)


class ConnectomeStore(BaseStore):
    """LangGraph ``BaseStore`` over the key-value collection ``langgraph_store``.

    Items are JSON dicts; ``search`` filters on their fields (equality and ``$eq``, ``$ne``,
    ``$gt``, ``$gte``, ``$lt``, ``$lte``), newest update first, with ``limit`` and ``offset``.
    There is no vector index: a ``query`` text is ignored, as LangGraph's own stores do
    without an index. TTLs are in minutes; a read refreshes them unless told not to.
    """

    supports_ttl: bool = True

    def __init__(self, storage: StorageInterface, *, namespace: str = STORE, ttl: TTLConfig | None = None) -> None:
        self._bridge = StorageBridge(storage)
        self.kv_namespace = check_id(namespace, "namespace")
        self.ttl_config = ttl

    def __repr__(self) -> str:
        return f"ConnectomeStore({self._bridge.storage!r}, namespace={self.kv_namespace!r})"

    def close(self) -> None:
        """Shut down the storage if the adapters opened it (every adapter over it stops with it)."""
        self._bridge.close()

    async def aclose(self) -> None:
        await self._bridge.aclose()

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        ops = list(ops)
        return self._bridge.run(lambda s: self._batch(s, ops))

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        ops = list(ops)
        return await self._bridge.arun(lambda s: self._batch(s, ops))

    async def _batch(self, storage: StorageInterface, ops: list[Op]) -> list[Result]:
        for op in ops:
            validate_op_namespace(op)
        kv = storage.kv(self.kv_namespace)
        results: list[Result] = [None] * len(ops)
        puts: dict[tuple[tuple[str, ...], str], PutOp] = {}
        reads = []
        for index, op in enumerate(ops):
            if isinstance(op, GetOp):
                reads.append(self._get(kv, index, op, results))
            elif isinstance(op, SearchOp):
                reads.append(self._search(kv, index, op, results))
            elif isinstance(op, ListNamespacesOp):
                reads.append(self._list_namespaces(kv, index, op, results))
            elif isinstance(op, PutOp):
                puts[(tuple(op.namespace), op.key)] = op  # the last put of an item wins
            else:
                raise StorageError(f"unknown LangGraph store operation {type(op).__name__}")
        # Reads see the store as it was before this batch's puts, as LangGraph's stores do.
        await asyncio.gather(*reads)
        await self._apply_puts(kv, list(puts.values()))
        return results

    def _item(self, entry: Entry, cls: type[Item] = Item) -> Item:
        namespace, key = _split_store_key(entry.key)
        return cls(
            namespace=namespace, key=key, value=entry.value["value"],
            created_at=entry.created_at, updated_at=entry.updated_at,
        )  # fmt: skip

    async def _refresh(self, kv: KeyValueStore, entries: Sequence[Entry], refresh: bool) -> None:
        if not refresh:
            return
        timed = [e for e in entries if e.value.get("ttl_minutes") is not None]
        await asyncio.gather(*(kv.expire(e.key, float(e.value["ttl_minutes"]) * 60) for e in timed))

    async def _get(self, kv: KeyValueStore, index: int, op: GetOp, results: list[Result]) -> None:
        entry = await kv.get_entry(_store_key(op.namespace, op.key))
        if entry is None:
            return
        await self._refresh(kv, [entry], op.refresh_ttl)
        results[index] = self._item(entry)

    async def _search(self, kv: KeyValueStore, index: int, op: SearchOp, results: list[Result]) -> None:
        prefix = _store_prefix(op.namespace_prefix) or None
        limit, offset = max(op.limit, 0), max(op.offset, 0)
        if not op.filter:
            entries = await kv.query(prefix=prefix, order_by="updated_at", descending=True, limit=limit, offset=offset)
        else:
            entries = []
            skipped, page_offset = 0, 0
            while len(entries) < limit:
                page = await kv.query(
                    prefix=prefix, order_by="updated_at", descending=True, limit=PAGE, offset=page_offset
                )
                for entry in page:
                    if all(_matches(entry.value["value"].get(k), v) for k, v in op.filter.items()):
                        if skipped < offset:
                            skipped += 1
                        elif len(entries) < limit:
                            entries.append(entry)
                if len(page) < PAGE:
                    break
                page_offset += PAGE
        await self._refresh(kv, entries, op.refresh_ttl)
        results[index] = [cast(SearchItem, self._item(e, SearchItem)) for e in entries]

    async def _list_namespaces(
        self, kv: KeyValueStore, index: int, op: ListNamespacesOp, results: list[Result]
    ) -> None:
        pattern = "*"
        for condition in op.match_conditions or ():
            # A literal leading prefix narrows the key listing; the conditions are checked below.
            if condition.match_type == "prefix":
                literal = []
                for label in condition.path:
                    if label == "*":
                        break
                    literal.append(label)
                if literal:
                    pattern = _glob(_store_prefix(literal))
                break
        namespaces = {_split_store_key(key)[0] for key in await kv.keys(pattern)}
        matching = [ns for ns in namespaces if all(_namespace_matches(c, ns) for c in op.match_conditions or ())]
        if op.max_depth is not None:
            matching = list({ns[: op.max_depth] for ns in matching})
        results[index] = cast(Result, sorted(matching)[op.offset : op.offset + op.limit])

    async def _apply_puts(self, kv: KeyValueStore, puts: list[PutOp]) -> None:
        deletes = [_store_key(op.namespace, op.key) for op in puts if op.value is None]
        writes = [op for op in puts if op.value is not None]
        for op in writes:
            if not isinstance(op.value, Mapping):
                raise SerializationError(
                    f"LangGraph store item {op.namespace}/{op.key!r} must be a dict, got {type(op.value).__name__}"
                )
        await asyncio.gather(*(self._put_one(kv, op) for op in writes))
        if deletes:
            await kv.delete_many(deletes)

    @staticmethod
    async def _put_one(kv: KeyValueStore, op: PutOp) -> None:
        value: dict[str, Any] = {
            "namespace": list(op.namespace),
            "key": op.key,
            "value": dict(cast(Mapping[str, Any], op.value)),
        }
        ttl = op.ttl
        if ttl is not None:
            value["ttl_minutes"] = ttl
        await kv.set(_store_key(op.namespace, op.key), value, ttl=None if ttl is None else float(ttl) * 60)
