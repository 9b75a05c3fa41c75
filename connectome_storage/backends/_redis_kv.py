"""Key-value collections on Redis (docs/kv.md): the ``_kv_*`` hooks of RedisStorage.

Key layout (``P`` is ``key_prefix``; ``<ns>``, ``<key>``, ``<name>``, ``<value>`` are
percent-encoded by ``naming.encode_name``, so none holds ``{``, ``}`` or ``:``; the braces
are a cluster hash tag putting every key of one namespace in one slot)::

    P kv:{<ns>}:e:<key>                 hash  value (serializer), tags (JSON), created_ms, updated_ms,
                                              expires_ms (absent: never); PEXPIRE'd natively
    P kv:{<ns>}:keys                    zset  original keys (UTF-8), all scored 0: key order
    P kv:{<ns>}:exp                     zset  keys of expiring entries scored by expires_ms
    P kv:{<ns>}:etags                   hash  key -> tags JSON of expiring entries with tags
    P kv:{<ns>}:tag:<name>:<value>      set   keys whose tag <name> is <value>
    P idx:kv                            set   namespaces holding entries

On Redis Cluster a namespace's keys start ``P kv:{n:<bucket>}:<ns>:`` and its index entry
is in ``P idx:{n:<bucket>}:kv``, the same slot (_redis_layout.py); the scripts get the
base from the caller either way.

New hash fields can be added without a migration: readers ask for the fields they know.
Every write is one Lua script (_redis_kv_lua.py), so it is atomic and one round trip; a
read of known keys is one HMGET (a pipeline of them for several). Walks (keys, count,
scan, query) go through the key zset with ZRANGEBYLEX, or start from SINTER of the tag
sets, never KEYS or a keyspace SCAN; one script call examines a bounded batch, so a walk
over a large namespace never blocks the server for long.

Liveness is judged on the storage clock (``expires_ms <= now_ms`` is expired). Redis also
expires the entry hash itself (PEXPIRE with the time left on that clock), which leaves its
key in the indexes: the scripts drop such keys wherever they meet them, and the expiring
tags hash says which tag sets held it, since the entry hash that listed its tags is gone.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from ..codec import decode
from ..errors import CorruptedDataError, StorageError
from ..interface import Problem, StorageInterface
from ..kv import KVRecord, KVSelect
from ..naming import encode_name
from ._redis_layout import KeyLayout
from ._redis_tx import Command

if TYPE_CHECKING:
    from ..serializer import Serializer

__all__ = ["RedisKV"]

T = TypeVar("T")

_HINT = "set the key again to replace the entry, or delete it"
# Index members one script call examines at most: about a millisecond of server time.
_WALK_BUDGET = 2000
# Entries per batch of the scripts that remove or count (clear, cleanup, stats).
_BATCH = 500

_FIELDS = ("value", "tags", "created_ms", "updated_ms", "expires_ms")
# kv_get's mark for a key of another type: the fields a hash can never hold.
_NOT_A_HASH = [None, None, None, None, 0]

_name = functools.lru_cache(maxsize=4096)(encode_name)


def _json(value: Any) -> bytes:
    """codec.encode's canonical bytes (sorted keys) on one line without the trailing newline:
    a hash field is not a file. The caller checked the value already."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _literal_prefix(pattern: str | None) -> str:
    """The characters every key matching a glob starts with."""
    if pattern is None:
        return ""
    for index, char in enumerate(pattern):
        if char in "*?[":
            return pattern[:index]
    return pattern


class RedisKV(StorageInterface):
    """The ``_kv_*`` hooks of RedisStorage (its first base)."""

    if TYPE_CHECKING:  # what RedisStorage provides (redis.py); declared here for the type checker
        _prefix: str
        _serializer: Serializer
        _layout: KeyLayout

        @property
        def client(self) -> Any: ...
        async def _call(
            self, what: str, key: str | None, function: Callable[..., Awaitable[T]], *args: Any, read: bool = False
        ) -> T: ...
        async def _script(
            self, name: str, key: str, keys: Sequence[str], args: Sequence[Any], *, read: bool = False
        ) -> Any: ...
        async def _run(self, command: Command, *, read: bool = False) -> Any: ...
        async def _pipelined(
            self, what: str, commands: Sequence[tuple[Any, ...]], *, key: str | None = None,
            transaction: bool = False, strict: bool = False,
        ) -> list[Any]: ...  # fmt: skip
        def _translate(self, error: BaseException, what: str, key: str | None) -> StorageError: ...
        def _decode(self, raw: bytes | str, source: str) -> Any: ...
        async def _listed(self, kind: str) -> list[str]: ...

    # ------------------------------------------------------------------ names

    def _kv_base(self, namespace: str) -> str:
        return self._layout.kv_base(namespace)

    def _kv_ns_index(self, namespace: str) -> str:
        """The set listing ``namespace`` among the namespaces holding entries."""
        return self._layout.index("kv", namespace)

    def kv_key_of(self, namespace: str, key: str) -> str:
        """The Redis hash holding one entry."""
        return f"{self._kv_base(namespace)}e:{_name(key)}"

    def kv_tag_key(self, namespace: str, name: str, value: str) -> str:
        """The Redis set listing the keys whose tag ``name`` is ``value``."""
        return f"{self._kv_base(namespace)}tag:{_name(name)}:{_name(value)}"

    def _kv_indexes(self, namespace: str) -> list[str]:
        base = self._kv_base(namespace)
        return [base + "keys", base + "exp", base + "etags"]

    # ---------------------------------------------------------------- decoding

    def _kv_record(self, namespace: str, key: str, fields: Sequence[Any], *, values: bool) -> KVRecord:
        """A record from (value, tags, created_ms, updated_ms, expires_ms) as stored."""
        where = self.kv_key_of(namespace, key)
        raw_value, raw_tags, created, updated, expires = fields
        if raw_tags is None or created is None or updated is None or (values and raw_value is None):
            raise CorruptedDataError(
                where, "not a key-value entry (a field of value, tags, created_ms, updated_ms is missing)", hint=_HINT
            )
        value = self._decode(raw_value, f"{where} value") if values else None
        try:
            tags = decode(raw_tags, f"{where} tags")  # JSON whatever the serializer: the scripts read it
        except CorruptedDataError as e:
            raise CorruptedDataError(e.path, e.problem, line=e.line, column=e.column, hint=_HINT) from e
        if not isinstance(tags, dict) or not all(isinstance(v, str) for v in tags.values()):
            raise CorruptedDataError(where, "tags is not a JSON object of strings", hint=_HINT)
        try:
            times = [None if t is None else int(t) for t in (created, updated, expires)]
        except ValueError as e:
            raise CorruptedDataError(where, f"a time field is not an integer ({e})", hint=_HINT) from e
        return KVRecord(key, value, tags, times[0], times[1], times[2])  # type: ignore[arg-type]

    def _kv_entries(self, namespace: str, flat: Sequence[Any], *, values: bool) -> list[KVRecord]:
        """Records from a script's flat reply: key, value, tags, created, updated, expires..."""
        records = []
        for index in range(0, len(flat), 6):
            key = _text(flat[index])
            fields = [None if f is None or f is False else f for f in flat[index + 1 : index + 6]]
            if fields[1] is None and fields[2] is None:  # the scripts' mark of a key that is not a hash
                raise CorruptedDataError(
                    self.kv_key_of(namespace, key),
                    "not a key-value entry hash (no tags, no created_ms, or another Redis type)",
                    hint=_HINT,
                )
            records.append(self._kv_record(namespace, key, fields, values=values))
        return records

    # ------------------------------------------------------------ single reads

    async def _kv_get(self, namespace: str, keys: list[str]) -> dict[str, KVRecord]:
        names = [self.kv_key_of(namespace, key) for key in keys]
        if len(keys) == 1:
            name = names[0]
            replies = [await self._call(f"reading {name}", name, self.client.hmget, name, _FIELDS, read=True)]
        else:
            # One script rather than a pipeline: one command, and every entry read at one instant.
            flat = await self._script("kv_get", names[0], names, [], read=True)  # read-only: retried
            replies = [flat[i : i + 5] for i in range(0, len(flat), 5)]
        found: dict[str, KVRecord] = {}
        for key, name, reply in zip(keys, names, replies, strict=True):
            if reply == _NOT_A_HASH:
                raise CorruptedDataError(name, "the key holds another Redis type, not a hash", hint=_HINT)
            if reply[0] is None and reply[2] is None:
                continue  # missing (or expired by Redis)
            found[key] = self._kv_record(namespace, key, reply, values=True)
        return found

    # ------------------------------------------------------------------ writes

    def _kv_put_commands(
        self, namespace: str, records: list[KVRecord], now_ms: int, *, if_not_exists: bool
    ) -> list[Command]:
        args: list[Any] = [self._kv_base(namespace), namespace, now_ms, 1 if if_not_exists else 0]
        for record in records:
            tags = sorted(record.tags.items())
            args += [
                record.key, self._serializer.dumps(record.value), _json(dict(tags)),
                record.created_ms, record.updated_ms, "" if record.expires_ms is None else record.expires_ms,
                len(tags),
            ]  # fmt: skip
            for name, value in tags:
                args += [name, value]
        keys = [*self._kv_indexes(namespace), self._kv_ns_index(namespace)]
        where = self.kv_key_of(namespace, records[0].key)
        return [Command("kv_put", where, keys, args)]

    async def _kv_put(self, namespace: str, records: list[KVRecord], now_ms: int, *, if_not_exists: bool) -> bool:
        return bool(await self._run(self._kv_put_commands(namespace, records, now_ms, if_not_exists=if_not_exists)[0]))

    def _kv_delete_commands(self, namespace: str, keys: list[str], now_ms: int) -> list[Command]:
        index = [*self._kv_indexes(namespace), self._kv_ns_index(namespace)]
        commands = []
        for start in range(0, len(keys), _BATCH):
            batch = keys[start : start + _BATCH]
            args = [self._kv_base(namespace), namespace, now_ms, *batch]
            commands.append(Command("kv_delete", self.kv_key_of(namespace, batch[0]), index, args))
        return commands

    async def _kv_delete(self, namespace: str, keys: list[str], now_ms: int) -> int:
        return sum([int(await self._run(command)) for command in self._kv_delete_commands(namespace, keys, now_ms)])

    def _kv_set_expiry_commands(self, namespace: str, key: str, expires_ms: int | None, now_ms: int) -> list[Command]:
        args = [self._kv_base(namespace), now_ms, key, "" if expires_ms is None else expires_ms]
        return [Command("kv_set_expiry", self.kv_key_of(namespace, key), self._kv_indexes(namespace), args)]

    async def _kv_set_expiry(self, namespace: str, key: str, expires_ms: int | None, now_ms: int) -> bool:
        return bool(await self._run(self._kv_set_expiry_commands(namespace, key, expires_ms, now_ms)[0]))

    def _kv_clear_commands(self, namespace: str, now_ms: int, *, batch: int = 0) -> list[Command]:
        """One call removing up to ``batch`` entries; 0 (a transaction's): all of them at once,
        since the transaction's EXEC holds the server for all of its writes anyway."""
        keys = [*self._kv_indexes(namespace), self._kv_ns_index(namespace)]
        return [Command("kv_clear", keys[0], keys, [self._kv_base(namespace), namespace, batch, now_ms])]

    async def _kv_clear(self, namespace: str, now_ms: int) -> int:
        (command,) = self._kv_clear_commands(namespace, now_ms, batch=_BATCH)
        live, left = 0, 1
        while left:
            removed, left = await self._run(command)
            live += int(removed)
        return live

    async def _kv_remove_expired(self, namespace: str | None, now_ms: int) -> int:
        namespaces = [namespace] if namespace is not None else await self._kv_all_namespaces()
        removed = 0
        for name in namespaces:
            keys = [*self._kv_indexes(name), self._kv_ns_index(name)]
            offset = 0
            while True:
                args = [self._kv_base(name), name, offset, _BATCH, now_ms]
                gone, kept, examined = await self._script("kv_sweep", keys[1], keys, args)
                removed += int(gone)
                offset += int(kept)
                if int(examined) < _BATCH:
                    break
        return removed

    # ------------------------------------------------------------------- walks

    async def _kv_walk(self, namespace: str, select: KVSelect, now_ms: int, mode: str) -> list[KVRecord]:
        """Records matching ``select`` in key order (unpaged), read in bounded batches.

        ``mode``: ``k`` keys only (values None, no tags: for selects with no tag or time
        filter), ``m`` without values, ``r`` whole records. Stops early when key order and a
        limit say the rest cannot be returned.
        """
        if select.tags:
            return await self._kv_tagged(namespace, select, now_ms, mode)
        lower = _literal_prefix(select.pattern)
        prefix = select.prefix or ""
        if prefix.startswith(lower):
            lower = prefix
        elif not lower.startswith(prefix):
            return []  # the prefix and the pattern exclude each other
        start = f"[{lower}" if lower else "-"
        if select.after_key is not None and select.after_key >= lower:
            start = f"({select.after_key}"
        # No UTF-8 text holds the byte 0xFF: every key starting with ``lower`` sorts below it.
        upper: str | bytes = b"(" + lower.encode("utf-8") + b"\xff" if lower else "+"
        stop_at = None
        if select.order_by == "key" and not select.descending and select.limit is not None:
            stop_at = select.offset + select.limit
        indexes = self._kv_indexes(namespace)
        base = self._kv_base(namespace)
        hits: list[KVRecord] = []
        cursor: str | bytes = start
        while True:
            want = _WALK_BUDGET if stop_at is None else max(1, stop_at - len(hits))
            args = [base, now_ms, cursor, upper, want, _WALK_BUDGET, mode]
            reply = await self._script("kv_walk", indexes[0], indexes, args)
            done, last, flat = reply[0], reply[1], reply[2:]
            if mode == "k":
                batch = [KVRecord(_text(key), None, {}, 0, 0, None) for key in flat]
            else:
                batch = self._kv_entries(namespace, flat, values=mode == "r")
            hits += [record for record in batch if select.matches(record, now_ms)]
            if done or last is None or (stop_at is not None and len(hits) >= stop_at):
                return hits
            cursor = b"(" + last if isinstance(last, bytes) else f"({last}"

    async def _kv_tagged(self, namespace: str, select: KVSelect, now_ms: int, mode: str) -> list[KVRecord]:
        tag_sets = [self.kv_tag_key(namespace, name, value) for name, value in select.tags]
        keys = [*self._kv_indexes(namespace), *tag_sets]
        args = [self._kv_base(namespace), now_ms, select.prefix or "", "r" if mode == "r" else "m"]
        flat = await self._script("kv_tagged", keys[0], keys, args)
        records = self._kv_entries(namespace, flat, values=mode == "r")
        # matches() checks the tags again: a set may hold a key whose entry lost the tag
        # while its stored tags could not be read.
        return sorted((r for r in records if select.matches(r, now_ms)), key=lambda r: r.key)

    async def _kv_select(self, namespace: str, select: KVSelect, now_ms: int) -> list[KVRecord]:
        return select.apply(await self._kv_walk(namespace, select, now_ms, "r"), now_ms)

    async def _kv_keys(self, namespace: str, select: KVSelect, now_ms: int) -> list[str]:
        by_key_only = (
            select.order_by == "key" and not select.tags and select.since_ms is None and select.until_ms is None
        )
        mode = "k" if by_key_only else "m"
        return [record.key for record in select.apply(await self._kv_walk(namespace, select, now_ms, mode), now_ms)]

    async def _kv_count(self, namespace: str, select: KVSelect, now_ms: int) -> int:
        everything = select.pattern in (None, "*") and not select.prefix and not select.tags
        if everything and select.since_ms is None and select.until_ms is None and select.after_key is None:
            # Cardinalities: only the expiry zset is walked (to drop what Redis expired).
            return (await self._kv_census(namespace, now_ms))[0]
        return len(await self._kv_keys(namespace, select, now_ms))

    # --------------------------------------------------------- namespaces, stats

    async def _kv_all_namespaces(self) -> list[str]:
        return sorted(await self._listed("kv"))

    async def _kv_census(self, namespace: str, now_ms: int) -> tuple[int, int]:
        """(live, expired) entries of a namespace; drops those Redis expired natively."""
        indexes = self._kv_indexes(namespace)
        offset, expired, members = 0, 0, 0
        while True:
            args = [self._kv_base(namespace), now_ms, offset, _BATCH]
            dropped, late, examined, members = await self._script("kv_census", indexes[1], indexes, args)
            expired += int(late)
            offset += int(examined) - int(dropped)
            if int(examined) < _BATCH:
                return int(members) - expired, expired

    async def _kv_namespaces(self, now_ms: int) -> list[str]:
        return [ns for ns in await self._kv_all_namespaces() if (await self._kv_census(ns, now_ms))[0] > 0]

    async def _kv_stats(self, now_ms: int) -> tuple[int, int, int, int]:
        namespaces = live = expired = 0
        for namespace in await self._kv_all_namespaces():
            alive, late = await self._kv_census(namespace, now_ms)
            namespaces += alive > 0
            live += alive
            expired += late
        return namespaces, live, expired, len(await self._kv_problems())

    # ------------------------------------------------------ verify, bytes, unreadable

    async def _kv_problems(self) -> list[Problem]:
        """Every stored entry that does not read back (bad JSON, missing fields, not a hash)."""
        problems: list[Problem] = []
        far_past = -(2**62)  # walk expired entries too: they are stored data
        for namespace in await self._kv_all_namespaces():
            indexes = self._kv_indexes(namespace)
            cursor: str | bytes = "-"
            while True:
                args = [self._kv_base(namespace), far_past, cursor, "+", _WALK_BUDGET, _WALK_BUDGET, "k"]
                reply = await self._script("kv_walk", indexes[0], indexes, args)
                keys = [_text(key) for key in reply[2:]]
                if keys:
                    problems += [p for p in await self._kv_check(namespace, keys) if p is not None]
                if reply[0] or reply[1] is None:
                    break
                cursor = b"(" + reply[1] if isinstance(reply[1], bytes) else f"({reply[1]}"
        return problems

    async def _kv_check(self, namespace: str, keys: list[str]) -> list[Problem | None]:
        names = [self.kv_key_of(namespace, key) for key in keys]
        replies = await self._pipelined("verifying key-value entries", [("hmget", n, _FIELDS) for n in names])
        problems: list[Problem | None] = []
        for key, name, reply in zip(keys, names, replies, strict=True):
            try:
                if isinstance(reply, Exception):
                    raise self._translate(reply, f"reading {name}", name)
                if any(field is not None for field in reply):
                    self._kv_record(namespace, key, reply, values=True)
                problems.append(None)
            except CorruptedDataError as e:
                problems.append(Problem(e.path, str(e)))
        return problems

    async def _kv_all_keys(self) -> list[str]:
        """Every Redis key the collections use (for total_bytes), found through the indexes."""
        keys = list(self._layout.indexes("kv"))
        for namespace in await self._kv_all_namespaces():
            keys += self._kv_indexes(namespace)
            everything = KVSelect()
            try:
                records = await self._kv_walk(namespace, everything, -(2**62), "m")
            except CorruptedDataError:
                continue
            tag_sets = {self.kv_tag_key(namespace, n, v) for r in records for n, v in r.tags.items()}
            keys += [self.kv_key_of(namespace, r.key) for r in records] + sorted(tag_sets)
        return keys

    async def verify(self) -> list[Problem]:
        """StorageInterface.verify plus every key-value entry that does not read back."""
        problems = await super().verify()
        return problems + await self._kv_problems()
