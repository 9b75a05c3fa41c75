"""Typed collections with schema versions (docs/kv.md, "Typed collections").

``storage.kv("users", model=User, version=2, upgrade={1: v1_to_v2})`` returns a
``TypedKeyValueStore``: a ``KeyValueStore`` whose values are checked against ``model`` (a
pydantic model or a dataclass) on the way in and come back as instances of it.

Where the version lives: in the stored value, as an envelope ``{"$schema": 2, "value":
{...}}``, for entries written under version 2 or later; an entry written under version 1
(by a typed collection at version 1, or by a plain ``kv(name)``) is the bare value. So the
version travels with the value through every backend, every serializer and ``migrate``
without any backend knowing about it, tags and times stay the user's own, a plain
``kv(name)`` shows exactly what is stored, and on the file tree the entry stays one
readable JSON file in the documented layout.

pydantic is never imported here: a model is a pydantic model when pydantic (already
imported by whoever defined it) says so.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import re
import sys
import types
import typing
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, Union

from .codec import check_value
from .errors import InvalidArgumentError, SerializationError, StorageError, UnsupportedFormatError
from .kv import KVRecord, KVSelect, OrderBy

if TYPE_CHECKING:
    from .interface import StorageInterface
    from .kv import Entry
    from .middleware._chain import Chain

__all__ = ["SCHEMA_FIELD", "TypedKeyValueStore"]

M = TypeVar("M")
Upgrade = Callable[[Any], Any]

# The envelope of a value written under version 2 or later: {"$schema": N, "value": ...}.
SCHEMA_FIELD = "$schema"
_ENVELOPE_KEYS = frozenset({SCHEMA_FIELD, "value"})


def _is_pydantic(model: Any) -> bool:
    pydantic = sys.modules.get("pydantic")
    base = getattr(pydantic, "BaseModel", None)
    return base is not None and isinstance(model, type) and issubclass(model, base)


# ---------------------------------------------------------------------- codecs


class _Codec:
    """Turns model instances into plain JSON values and back, naming the field that fails."""

    def __init__(self, model: type[Any]) -> None:
        self.model = model

    def to_plain(self, value: Any, where: str) -> Any:
        raise NotImplementedError

    def to_model(self, plain: Any, where: str) -> Any:
        raise NotImplementedError


class _PydanticCodec(_Codec):
    def to_plain(self, value: Any, where: str) -> Any:
        if isinstance(value, self.model):
            value = value.model_dump()  # validated again below: an instance may have been changed since
        elif not isinstance(value, Mapping):
            raise _wrong_type(value, self.model, where)
        checked = self._validate(value, where)
        plain = checked.model_dump(mode="json")
        _check_plain(plain, where)
        # load(store(x)) == x: pydantic writes an infinite float as null in JSON mode, for one.
        back = self._validate(plain, where)
        if back != checked:
            field = next((n for n in type(checked).model_fields if getattr(back, n) != getattr(checked, n)), None)
            place = where if field is None else f"{where}.{field}"
            raise SerializationError(
                f"{place} would not come back equal after storing (as JSON: {_short(plain, field)}); "
                "use values JSON keeps exactly",
                location=place,
            )
        return plain

    def to_model(self, plain: Any, where: str) -> Any:
        return self._validate(plain, where)

    def _validate(self, data: Any, where: str) -> Any:
        pydantic = sys.modules["pydantic"]
        try:
            return self.model.model_validate(data)
        except pydantic.ValidationError as e:
            first = e.errors()[0]
            place = where + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in first["loc"])
            more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
            raise SerializationError(f"{place}: {first['msg']}{more}", location=place) from None


class _DataclassCodec(_Codec):
    """Dataclasses checked field by field against their annotations.

    Supported annotations: str, int, float (an int is taken as a float), bool, None, Any,
    Literal[...], X | Y and Optional[X], list[X], tuple[X, ...] and tuple[X, Y] (stored as
    lists), dict[str, X], enums whose values are JSON, and nested dataclasses.
    """

    def __init__(self, model: type[Any]) -> None:
        super().__init__(model)
        self._hints: dict[type[Any], dict[str, Any]] = {}
        self._check_supported(model, model.__name__, set())

    def hints(self, cls: type[Any]) -> dict[str, Any]:
        if cls not in self._hints:
            try:
                self._hints[cls] = typing.get_type_hints(cls)
            except Exception as e:  # a forward reference that does not resolve
                raise InvalidArgumentError(f"the annotations of {cls.__name__} do not resolve: {e}") from e
        return self._hints[cls]

    def _check_supported(self, hint: Any, where: str, seen: set[type[Any]]) -> None:
        if dataclasses.is_dataclass(hint) and isinstance(hint, type):
            if hint in seen:
                return
            seen.add(hint)
            hints = self.hints(hint)
            for field in _init_fields(hint):
                self._check_supported(hints[field.name], f"{where}.{field.name}", seen)
            return
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        if hint in (str, int, float, bool, type(None), None, Any, list, dict) or origin is Literal:
            return
        if isinstance(hint, type) and issubclass(hint, enum.Enum):
            return
        if origin in (Union, types.UnionType, list, tuple, dict):
            if origin is dict and args and args[0] is not str:
                raise InvalidArgumentError(f"{where}: dict keys must be str to be stored, not {args[0]!r}")
            for arg in args:
                if arg is not Ellipsis:
                    self._check_supported(arg, where, seen)
            return
        raise InvalidArgumentError(
            f"{where} is annotated {hint!r}, which a typed collection cannot check; use str, int, float, bool, "
            "None, Any, Literal, unions, list, tuple, dict[str, ...], enums or dataclasses (or a pydantic model)"
        )

    def to_plain(self, value: Any, where: str) -> Any:
        if isinstance(value, Mapping):
            value = self.to_model(dict(value), where)  # a dict is taken when it validates
        elif type(value) is not self.model:
            raise _wrong_type(value, self.model, where)
        plain = self._plain(value, self.model, where)
        _check_plain(plain, where)
        return plain

    def to_model(self, plain: Any, where: str) -> Any:
        return self._typed(plain, self.model, where)

    # Both walks return the converted value or raise SerializationError naming ``where``.

    def _plain(self, value: Any, hint: Any, where: str) -> Any:
        return self._walk(value, hint, where, to_model=False)

    def _typed(self, value: Any, hint: Any, where: str) -> Any:
        return self._walk(value, hint, where, to_model=True)

    def _walk(self, value: Any, hint: Any, where: str, *, to_model: bool) -> Any:
        if hint is Any:
            _check_plain(value, where)
            return value
        if hint is None or hint is type(None):
            return _expect(value is None, value, "None", where, None)
        if hint is bool:
            return _expect(type(value) is bool, value, "a bool", where, value)
        if hint is int:
            return _expect(type(value) is int, value, "an int", where, value)
        if hint is float:
            ok = type(value) in (int, float) and math.isfinite(value)
            return _expect(ok, value, "a finite float", where, float(value) if ok else None)
        if hint is str:
            return _expect(type(value) is str, value, "a str", where, value)
        if isinstance(hint, type) and issubclass(hint, enum.Enum):
            return self._enum(value, hint, where, to_model=to_model)
        if dataclasses.is_dataclass(hint) and isinstance(hint, type):
            return self._dataclass(value, hint, where, to_model=to_model)
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        if origin is Literal:
            return _expect(
                any(value == a and type(value) is type(a) for a in args), value, f"one of {args}", where, value
            )
        if origin in (Union, types.UnionType):
            problems = []
            for arm in args:
                try:
                    return self._walk(value, arm, where, to_model=to_model)
                except SerializationError as e:
                    problems.append(str(e).removeprefix(f"{where}: "))
            raise SerializationError(f"{where}: matches none of {hint}: {'; '.join(problems)}", location=where)
        if hint is list or origin is list:
            item = args[0] if args else Any
            _expect(type(value) is list, value, "a list", where, None)
            return [self._walk(v, item, f"{where}[{i}]", to_model=to_model) for i, v in enumerate(value)]
        if origin is tuple:
            wanted = tuple if not to_model else list  # a tuple is stored as a list
            _expect(type(value) is wanted, value, f"a {wanted.__name__}", where, None)
            if len(args) == 2 and args[1] is Ellipsis:
                arms = [args[0]] * len(value)
            else:
                _expect(len(value) == len(args), value, f"{len(args)} items", where, None)
                arms = list(args)
            items = [
                self._walk(v, arm, f"{where}[{i}]", to_model=to_model)
                for i, (v, arm) in enumerate(zip(value, arms, strict=True))
            ]
            return tuple(items) if to_model else items
        if hint is dict or origin is dict:
            item = args[1] if args else Any
            _expect(type(value) is dict, value, "a dict", where, None)
            out = {}
            for key, v in value.items():
                _expect(type(key) is str, key, "a str key", where, None)
                out[key] = self._walk(v, item, f"{where}[{key!r}]", to_model=to_model)
            return out
        raise SerializationError(f"{where}: cannot check annotation {hint!r}", location=where)  # pragma: no cover

    def _enum(self, value: Any, hint: type[enum.Enum], where: str, *, to_model: bool) -> Any:
        if not to_model:
            _expect(isinstance(value, hint), value, f"a {hint.__name__}", where, None)
            _check_plain(value.value, where)
            return value.value
        try:
            return hint(value)
        except ValueError:
            allowed = ", ".join(repr(m.value) for m in hint)
            raise SerializationError(
                f"{where}: {value!r} is not a {hint.__name__} ({allowed})", location=where
            ) from None

    def _dataclass(self, value: Any, cls: type[Any], where: str, *, to_model: bool) -> Any:
        hints = self.hints(cls)
        fields = _init_fields(cls)
        if not to_model:
            _expect(type(value) is cls, value, f"a {cls.__name__}", where, None)
            return {f.name: self._walk(getattr(value, f.name), hints[f.name], f"{where}.{f.name}", to_model=False)
                    for f in fields}  # fmt: skip
        _expect(type(value) is dict, value, f"an object for {cls.__name__}", where, None)
        names = {f.name for f in fields}
        unknown = sorted(set(value) - names)
        if unknown:
            place = f"{where}.{unknown[0]}"
            raise SerializationError(f"{place}: {cls.__name__} has no field {unknown[0]!r}", location=place)
        arguments = {}
        for field in fields:
            place = f"{where}.{field.name}"
            if field.name in value:
                arguments[field.name] = self._walk(value[field.name], hints[field.name], place, to_model=True)
            elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise SerializationError(f"{place}: field required", location=place)
        try:
            return cls(**arguments)
        except Exception as e:  # the class's own __post_init__ refused it
            raise SerializationError(f"{where}: {cls.__name__}() refused the value: {e}", location=where) from e


def _check_plain(value: Any, where: str) -> None:
    """codec.check_value, naming fields the way the rest of this module does (``.age``, not ``['age']``)."""
    try:
        check_value(value, where)
    except SerializationError as e:
        location = e.location or where
        dotted = where + _FIELD.sub(r".\1", location[len(where) :]) if location.startswith(where) else location
        raise SerializationError(str(e).replace(location, dotted, 1), location=dotted) from None


_FIELD = re.compile(r"\['([A-Za-z_][A-Za-z0-9_]*)'\]")


def _init_fields(cls: type[Any]) -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(cls) if f.init]


def _expect(ok: bool, value: Any, wanted: str, where: str, result: Any) -> Any:
    if not ok:
        raise SerializationError(f"{where}: expected {wanted}, got {_short(value)}", location=where)
    return result


def _short(value: Any, field: str | None = None) -> str:
    if field is not None and isinstance(value, dict):
        value = value.get(field)
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _wrong_type(value: Any, model: type[Any], where: str) -> SerializationError:
    return SerializationError(
        f"{where} is a {type(value).__name__}, not a {model.__name__} (or a dict that validates as one)",
        location=where,
    )


def _codec_for(model: Any) -> _Codec:
    if _is_pydantic(model):
        return _PydanticCodec(model)
    if dataclasses.is_dataclass(model) and isinstance(model, type):
        return _DataclassCodec(model)
    raise InvalidArgumentError(f"model must be a pydantic BaseModel subclass or a dataclass, got {model!r}")


# ---------------------------------------------------------------------- store


class TypedKeyValueStore(Generic[M]):
    """A KeyValueStore whose values are instances of ``model``, with schema versions.

    Every value stored is validated first (``SerializationError`` naming the field, nothing
    written); values come back as ``model`` instances. An entry written under an earlier
    version passes through ``upgrade[v]`` (a function from a version-v plain value to a
    version-v+1 one) for every step up to ``version`` when it is read; ``upgrade_all()``
    rewrites them. Keys, tags, expiry and queries are those of ``KeyValueStore``.
    """

    def __init__(
        self,
        storage: StorageInterface,
        namespace: str,
        model: type[M],
        *,
        version: int = 1,
        upgrade: Mapping[int, Upgrade] | None = None,
    ) -> None:
        self._kv = storage._plain_kv(namespace)  # through the storage's middleware, if any
        self.storage = storage
        self.namespace = namespace
        self.model = model
        self._codec = _codec_for(model)
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise InvalidArgumentError(f"version must be an int >= 1, got {version!r}")
        self.version = version
        steps = dict(upgrade or {})
        for step, function in steps.items():
            if isinstance(step, bool) or not isinstance(step, int) or not 1 <= step < version:
                raise InvalidArgumentError(
                    f"upgrade keys are the versions upgraded from, ints from 1 to {version - 1}; got {step!r}"
                )
            if not callable(function):
                raise InvalidArgumentError(f"upgrade[{step}] must be a function of one value, got {function!r}")
        self.upgrade = steps

    def __repr__(self) -> str:
        return (f"TypedKeyValueStore({self.storage!r}, {self.namespace!r}, model={self.model.__name__}, "
                f"version={self.version})")  # fmt: skip

    # ------------------------------------------------------------ conversion

    def _where(self, key: str) -> str:
        return f"{self.namespace}[{key!r}]"

    def _dump(self, key: str, value: Any) -> Any:
        plain = self._codec.to_plain(value, self._where(key))
        return plain if self.version == 1 else {SCHEMA_FIELD: self.version, "value": plain}

    def _load(self, key: str, stored: Any) -> M:
        version, plain = _unwrap(stored)
        plain = self._upgraded(key, version, plain)
        model: M = self._codec.to_model(plain, self._where(key))
        return model

    def _upgraded(self, key: str, version: int, plain: Any) -> Any:
        where = self._where(key)
        if version > self.version:
            raise UnsupportedFormatError(
                f"{where} was written under schema version {version}, newer than this collection's "
                f"version {self.version}; read it with the model of version {version} or later"
            )
        while version < self.version:
            step = self.upgrade.get(version)
            if step is None:
                raise SerializationError(
                    f"{where} is at schema version {version} and no upgrade[{version}] was given to take it to "
                    f"{version + 1}; pass upgrade={{{version}: a function}} to storage.kv()",
                    location=where,
                )
            try:
                plain = step(plain)
            except StorageError:
                raise
            except Exception as e:
                raise SerializationError(
                    f"{where}: upgrade[{version}] failed on it ({type(e).__name__}: {e})", location=where
                ) from e
            version += 1
        return plain

    # ------------------------------------------------------------ single entries

    async def set(
        self, key: str, value: M | Mapping[str, Any], *, ttl: float | None = None,
        tags: Mapping[str, str] | None = None, if_not_exists: bool = False,
    ) -> bool:  # fmt: skip
        """Validate ``value`` (a model instance, or a dict that validates as one) and store it."""
        return await self._kv.set(key, self._dump(key, value), ttl=ttl, tags=tags, if_not_exists=if_not_exists)

    # Reads go through the plain store's public methods, so the storage's middleware (a
    # decryption, say) has run before a value is unwrapped and validated.

    async def get(self, key: str) -> M | None:
        """The model instance, or None when missing or expired."""
        entry = await self._kv.get_entry(key)
        return None if entry is None else self._load(key, entry.value)

    async def get_entry(self, key: str) -> Entry | None:
        """The entry with its value as a model instance, or None."""
        entry = await self._kv.get_entry(key)
        return None if entry is None else self._entry(entry)

    def _entry(self, entry: Entry) -> Entry:
        return dataclasses.replace(entry, value=self._load(entry.key, entry.value))

    async def schema_version(self, key: str) -> int | None:
        """The version the live entry under ``key`` was written under, or None when missing."""
        entry = await self._kv.get_entry(key)
        return None if entry is None else _unwrap(entry.value)[0]

    async def exists(self, key: str) -> bool:
        return await self._kv.exists(key)

    async def delete(self, key: str) -> bool:
        return await self._kv.delete(key)

    # ------------------------------------------------------------------- batches

    async def get_many(self, keys: Iterable[str]) -> dict[str, M]:
        """Model instances of the live keys among ``keys``, in the order asked."""
        return {key: self._load(key, value) for key, value in (await self._kv.get_many(keys)).items()}

    async def set_many(
        self, items: Mapping[str, Any] | Iterable[tuple[str, Any]], *, ttl: float | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:  # fmt: skip
        """Validate every item, then store them all or none."""
        pairs = list(items.items() if isinstance(items, Mapping) else items)
        dumped = []
        for index, pair in enumerate(pairs):
            if not isinstance(pair, tuple) or len(pair) != 2:
                raise InvalidArgumentError(f"set_many items[{index}] must be a (key, value) pair, got {pair!r}")
            key, value = pair
            dumped.append((key, self._dump(key, value) if isinstance(key, str) else value))
        await self._kv.set_many(dumped, ttl=ttl, tags=tags)

    async def delete_many(self, keys: Iterable[str]) -> int:
        return await self._kv.delete_many(keys)

    # ------------------------------------------------------------ keys and scans

    async def keys(self, pattern: str = "*") -> list[str]:
        return await self._kv.keys(pattern)

    async def count(self, pattern: str = "*") -> int:
        return await self._kv.count(pattern)

    async def scan(self, pattern: str = "*") -> AsyncIterator[tuple[str, M]]:
        """``(key, model instance)`` of live entries in key order, read in batches."""
        async for key, value in self._kv.scan(pattern):
            yield key, self._load(key, value)

    async def find_by_tag(self, name: str, value: str) -> list[str]:
        return await self._kv.find_by_tag(name, value)

    async def query(
        self, *, prefix: str | None = None, tags: Mapping[str, str] | None = None, since: Any = None,
        until: Any = None, order_by: OrderBy = "key", descending: bool = False, limit: int | None = None,
        offset: int = 0,
    ) -> list[Entry]:  # fmt: skip
        """``KeyValueStore.query`` with each entry's value as a model instance."""
        entries = await self._kv.query(prefix=prefix, tags=tags, since=since, until=until, order_by=order_by,
                                       descending=descending, limit=limit, offset=offset)  # fmt: skip
        return [self._entry(entry) for entry in entries]

    async def count_query(
        self, *, prefix: str | None = None, tags: Mapping[str, str] | None = None, since: Any = None,
        until: Any = None, order_by: OrderBy = "key", descending: bool = False, limit: int | None = None,
        offset: int = 0,
    ) -> int:  # fmt: skip
        return await self._kv.count_query(prefix=prefix, tags=tags, since=since, until=until, order_by=order_by,
                                          descending=descending, limit=limit, offset=offset)  # fmt: skip

    # ------------------------------------------------------------------- expiry

    async def expire(self, key: str, ttl: float) -> bool:
        return await self._kv.expire(key, ttl)

    async def persist(self, key: str) -> bool:
        return await self._kv.persist(key)

    async def ttl(self, key: str) -> float:
        return await self._kv.ttl(key)

    async def clear(self) -> int:
        return await self._kv.clear()

    async def cleanup(self) -> int:
        return await self._kv.cleanup()

    # ------------------------------------------------------------------ upgrade

    async def upgrade_all(self) -> int:
        """Rewrite every live entry written under an earlier version at this one; returns how many.

        Entries already at this version are skipped, so an interrupted run is finished by
        running it again. Each entry keeps its tags, expiry and times (an upgrade is not a
        change of the data). An entry that does not upgrade or validate raises
        SerializationError naming it; the entries before it stay upgraded.
        """
        chain = self.storage._chain
        if chain is None:
            return await self._upgrade_all(None)
        # With middleware, the stored values are what the middleware made of them (encrypted,
        # say): each is read and written back through the value hooks, and the whole run is one
        # write call of the chain, so a read cache, an audit log and metrics see it.
        whole = chain.context("kv.upgrade_all", "kv", write=True, namespace=self.namespace)
        return int(await chain.run(whole, lambda: self._upgrade_all(chain)))

    async def _upgrade_all(self, chain: Chain | None) -> int:
        storage, namespace, size = self.storage, self.namespace, self.storage._kv_scan_batch
        upgraded = 0
        after: str | None = None
        while True:
            select = KVSelect(limit=size, after_key=after)
            batch = await storage._kv_select(namespace, select, self._kv._now())
            for record in batch:
                value = record.value
                if chain is not None:
                    ctx = chain.context("kv.upgrade_all", "kv", record.key, namespace=namespace)
                    value = await chain.read_value(ctx, value)
                version, plain = _unwrap(value)
                if version == self.version:
                    continue
                model = self._codec.to_model(self._upgraded(record.key, version, plain), self._where(record.key))
                stored = self._dump(record.key, model)
                if chain is not None:
                    stored = await chain.write_value(ctx, stored)
                now = self._kv._now()
                fresh = KVRecord(record.key, stored, dict(record.tags), now, record.updated_ms, record.expires_ms)
                if fresh.expired(now):
                    continue  # expired while the batch was upgraded: nothing to keep
                await storage._kv_put(namespace, [fresh], now, if_not_exists=False)
                upgraded += 1
            if len(batch) < size:
                return upgraded
            after = batch[-1].key


def _unwrap(stored: Any) -> tuple[int, Any]:
    """(schema version, plain value) of a stored value: an envelope, or a bare version-1 value."""
    if type(stored) is dict and stored.keys() == _ENVELOPE_KEYS:
        version = stored[SCHEMA_FIELD]
        if type(version) is int and version >= 2:
            return version, stored["value"]
    return 1, stored
