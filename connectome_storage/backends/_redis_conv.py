"""The conversation store on Redis (docs/redis.md, "Conversation store"): the ``_meta_*`` and
``_conversation_*`` hooks of RedisStorage.

Key layout (``P`` is ``key_prefix``, ``<id>`` the percent-encoded id, as in redis.py)::

    P conv:{<id>}:meta            hash  conversation_id, created_ms, updated_ms, message_count,
                                        ttl (a JSON number), expires_ms, metadata (serializer);
                                        a field that is absent is None
    P idx:conversation-expiry     zset  ids of conversations with an expiry, scored by expires_ms

(On Redis Cluster: ``P conv:{c:<bucket>}:<id>:meta`` and one expiry index per bucket,
``P idx:{c:<bucket>}:conversation-expiry``; _redis_layout.py.)

The metadata is a hash, not one serialized document, so that the scripts read
``expires_ms`` and write ``message_count`` and ``updated_ms`` as fields without decoding
anything: Lua's cjson and cmsgpack would not give the caller's dict back exactly (cjson
writes 1.0 as 1 and loses large integers), and a hot-path read costs one HGET more, not a
decode. The caller's dict is one field, written once by the storage's serializer (JSON or
msgpack) and never touched by a script, so it round-trips exactly.

Expiry is native and decided by the storage clock at once: whenever metadata with an
expiry is written, every key of the conversation gets PEXPIRE of the time left on the
storage clock (relative, so a storage on an injected clock days away from the server's
still expires its keys after the right duration), and keys created later get the
remaining time in the same script. Every write, and every read on an injected clock,
compares ``expires_ms`` with the storage clock in its own script too, so the conversation
is absent exactly when that clock says so, whatever the server has done yet; on the default
clock a plain read of a part relies on the keys' PEXPIRE (redis.py, docs/redis.md). Every
hook here is one script or one pipeline.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from ..conversations import MetaRecord
from ..errors import CorruptedDataError, StorageError
from ..interface import Problem, StorageInterface
from ._redis_layout import KeyLayout
from ._redis_lua import CONVERSATION_SUFFIXES
from ._redis_tx import Command

if TYPE_CHECKING:
    from ..serializer import Serializer

__all__ = ["RedisConversations"]

T = TypeVar("T")

_HINT = "save the conversation again to replace its metadata, or delete the key"
# Expired ids one index script examines at most before it answers (about a millisecond of
# server time); more make it answer "call again", so a big backlog never blocks the server.
_BUDGET = 1000
# Ids per pipeline of metadata reads.
_BATCH = 500


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _int_arg(value: int | None) -> str:
    return "" if value is None else str(value)


def _pairs(reply: Any) -> dict[str, Any]:
    """A hash as a dict of str field names: HGETALL answers a dict, a script a flat list."""
    if isinstance(reply, Mapping):
        return {_text(field): value for field, value in reply.items()}
    return {_text(reply[i]): reply[i + 1] for i in range(0, len(reply), 2)}


def _optional_int(fields: dict[str, Any], name: str) -> int | None:
    raw = fields.get(name)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name} is not an integer: {raw!r}") from None


class RedisConversations(StorageInterface):
    """The conversation store hooks of RedisStorage (one of its bases)."""

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
            self, name: str, key: str, keys: Sequence[str], args: Sequence[Any], size: int = 0, *, read: bool = False
        ) -> Any: ...
        async def _pipelined(
            self, what: str, commands: Sequence[tuple[Any, ...]], *, key: str | None = None,
            transaction: bool = False, strict: bool = False,
        ) -> list[Any]: ...  # fmt: skip
        async def _run(self, command: Command, *, read: bool = False) -> Any: ...
        async def _scripts_over(self, name: str, calls: Sequence[tuple[Sequence[str], Sequence[Any]]]) -> list[Any]: ...
        def _decode(self, raw: bytes | str, source: str) -> Any: ...
        def _check_size(self, key: str, payloads: Sequence[bytes]) -> int: ...
        def _translate(self, error: BaseException, what: str, key: str | None) -> StorageError: ...
        def index_of(self, kind: Any) -> str: ...

    # ------------------------------------------------------------------ names

    def _conversation_keys(self, conversation_id: str) -> list[str]:
        """meta, current, raw, chunks, mem, order: every key of one conversation."""
        base = self._layout.conv_base(conversation_id)
        return [base + suffix for suffix in CONVERSATION_SUFFIXES]

    def meta_key_of(self, conversation_id: str) -> str:
        """The Redis hash holding a conversation's metadata."""
        return self._layout.conv_base(conversation_id) + "meta"

    @property
    def expiry_index(self) -> str:
        """The sorted set of conversations with an expiry, scored by expires_ms (one server;
        on a cluster each bucket has its own: ``expiry_index_of``)."""
        return self._layout.expiry_index()

    def expiry_index_of(self, conversation_id: str) -> str:
        """The expiry index that lists ``conversation_id``."""
        return self._layout.expiry_index(conversation_id)

    def _script_keys(self, conversation_id: str) -> list[str]:
        """KEYS of the single-conversation scripts: its keys, then the two indexes."""
        layout = self._layout
        indexes = [layout.index("conversation", conversation_id), layout.expiry_index(conversation_id)]
        return [*self._conversation_keys(conversation_id), *indexes]

    def _lean_keys(self, conversation_id: str, part: str) -> tuple[str, str, str]:
        """KEYS of the lean scripts (conv_set, conv_append): meta, ``part``, the listing index."""
        return _lean_keys(self._layout, conversation_id, part)

    # --------------------------------------------------------------- records

    def _meta_args(self, record: MetaRecord) -> list[Any]:
        """The scripts' six metadata fields of ``record`` ('' for None)."""
        metadata = b"" if record.metadata is None else self._serializer.dumps(record.metadata)
        self._check_size(self.meta_key_of(record.conversation_id), [metadata])
        return [
            _int_arg(record.created_ms), _int_arg(record.updated_ms), _int_arg(record.message_count),
            b"" if record.ttl is None else orjson.dumps(record.ttl), _int_arg(record.expires_ms), metadata,
        ]  # fmt: skip

    def _meta_record(self, conversation_id: str, reply: Any) -> MetaRecord | None:
        """The record a metadata hash holds (None when there is none); CorruptedDataError naming the key."""
        if not reply:
            return None
        where = self.meta_key_of(conversation_id)
        fields = _pairs(reply)
        try:
            stored_id = fields.get("conversation_id")
            if stored_id is None or _text(stored_id) != conversation_id:
                raise ValueError(f"conversation_id is {stored_id!r}, not {conversation_id!r}")
            count = _optional_int(fields, "message_count")
            if count is not None and count < 0:
                raise ValueError(f"message_count is negative: {count}")
            ttl = None if fields.get("ttl") is None else orjson.loads(fields["ttl"])
            if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int | float) or ttl <= 0):
                raise ValueError(f"ttl is not a positive number: {ttl!r}")
            created, updated, expires = (_optional_int(fields, n) for n in ("created_ms", "updated_ms", "expires_ms"))
        except (ValueError, UnicodeDecodeError) as e:
            raise CorruptedDataError(where, f"not conversation metadata: {e}", hint=_HINT) from e
        metadata = None
        if fields.get("metadata") is not None:
            metadata = self._decode(fields["metadata"], f"{where} metadata")
            if not isinstance(metadata, dict):
                raise CorruptedDataError(where, "the metadata field is not a JSON object", hint=_HINT)
        return MetaRecord(conversation_id, created, updated, count, ttl, expires, metadata)

    def _decode_messages(self, conversation_id: str, items: Sequence[Any]) -> list[dict[str, Any]]:
        raw_key = self._conversation_keys(conversation_id)[2]
        messages = []
        for index, item in enumerate(items):
            source = f"{raw_key}[{index}]"
            message = self._decode(item, source)
            if not isinstance(message, dict):
                raise CorruptedDataError(source, "expected a JSON object", line=1, column=1, hint=_HINT)
            messages.append(message)
        return messages

    # -------------------------------------------------------------- the index

    async def _conversation_index(self, mode: str, now_ms: int) -> tuple[list[str], int]:
        """(listed ids, or expired ids whose keys remain; how many expired remain), pruning
        the index entries of conversations expired on the storage clock on the way. Every
        bucket's script goes in one pipeline (on a cluster: to every master at once)."""
        by_bucket, expired = await self._conversation_buckets(mode, now_ms)
        return [conversation_id for ids in by_bucket for conversation_id in ids], expired

    async def _conversation_buckets(self, mode: str, now_ms: int) -> tuple[list[list[str]], int]:
        """``_conversation_index``, its ids grouped by bucket (``conv_buckets()``'s order)."""
        buckets = self._layout.conv_buckets()
        offsets = dict.fromkeys(range(len(buckets)), 0)
        ids: list[list[str]] = [[] for _ in buckets]
        expired = 0
        while offsets:
            pending = list(offsets.items())
            calls = [(buckets[b][:2], [*buckets[b][2:], now_ms, mode, offset, _BUDGET]) for b, offset in pending]
            for (bucket, _), reply in zip(pending, await self._scripts_over("conv_index", calls), strict=True):
                if int(reply[0]) >= 0:  # more expired ids than one call examines: call again from there
                    offsets[bucket] = int(reply[0])
                    continue
                del offsets[bucket]
                try:
                    ids[bucket] = [_text(member) for member in reply[1]]
                except UnicodeDecodeError as e:
                    raise CorruptedDataError(
                        buckets[bucket][0], f"a member is not UTF-8 text ({e})", hint="remove it from the index"
                    ) from e
                expired += int(reply[2])
        return ids, expired

    async def _list_conversations(self) -> list[str]:
        return (await self._conversation_index("list", self._now_ms()))[0]

    async def _expired_conversations(self, now_ms: int) -> list[str]:
        return (await self._conversation_index("expired", now_ms))[0]

    async def _count_expired_conversations(self, now_ms: int) -> int:
        return (await self._conversation_index("expired", now_ms))[1]

    async def _remove_expired_conversations(self, now_ms: int) -> int:
        buckets = self._layout.conv_buckets()
        removed = 0
        while buckets:
            calls = [(bucket[:2], [*bucket[2:], now_ms, _BUDGET]) for bucket in buckets]
            swept = [int(n) for n in await self._scripts_over("conv_sweep", calls)]
            removed += sum(swept)
            # A bucket that had a full batch may have more.
            buckets = [bucket for bucket, n in zip(buckets, swept, strict=True) if n >= _BUDGET]
        return removed

    # ------------------------------------------------------------ the hooks

    async def _meta_read(
        self, conversation_id: str, now_ms: int, *, include_expired: bool = False
    ) -> MetaRecord | None:
        name = self.meta_key_of(conversation_id)
        reply = await self._call(f"reading {name}", name, self.client.hgetall, name, read=True)
        record = self._meta_record(conversation_id, reply)
        if record is None or (record.expired(now_ms) and not include_expired):
            return None
        return record

    def _meta_put_commands(self, conversation_id: str, record: MetaRecord | None) -> list[Command]:
        keys = self._script_keys(conversation_id)
        if record is None:
            return [Command("meta_put", keys[0], keys, [conversation_id, self._now_ms(), "0", "", "", "", "", "", ""])]
        args = self._meta_args(record)
        return [Command("meta_put", keys[0], keys, [conversation_id, self._now_ms(), "1", *args], len(args[-1]))]

    async def _meta_put(self, conversation_id: str, record: MetaRecord | None) -> None:
        await self._run(self._meta_put_commands(conversation_id, record)[0])

    async def _conversation_load(
        self, conversation_id: str, now_ms: int, *, include_expired: bool
    ) -> tuple[MetaRecord, list[dict[str, Any]]] | None:
        keys = self._script_keys(conversation_id)
        args = [conversation_id, now_ms, "1" if include_expired else "0"]
        reply = await self._script("conv_load", keys[0], keys, args, read=True)
        if not reply:
            return None
        record = self._meta_record(conversation_id, reply[0])
        if record is None:
            record = MetaRecord(conversation_id, None, None, None, None, None, None)
        return record, self._decode_messages(conversation_id, reply[1])

    async def _conversation_save(self, record: MetaRecord, messages: list[dict[str, Any]], now_ms: int) -> None:
        conversation_id = record.conversation_id
        encoded = [self._serializer.dumps(message) for message in messages]
        args = self._meta_args(record)
        size = self._check_size(self._conversation_keys(conversation_id)[2], [*encoded, args[-1]])
        keys = self._script_keys(conversation_id)
        await self._script("conv_save", keys[0], keys, [conversation_id, now_ms, *args, *encoded], size=size)

    async def _conversation_append(
        self, created: MetaRecord, messages: list[dict[str, Any]], now_ms: int, *, update_timestamp: bool
    ) -> MetaRecord:
        conversation_id = created.conversation_id
        encoded = [self._serializer.dumps(message) for message in messages]
        args = self._meta_args(created)
        size = self._check_size(self._conversation_keys(conversation_id)[2], [*encoded, args[-1]])
        keys = self._script_keys(conversation_id)
        flag = "1" if update_timestamp else "0"
        reply = await self._script(
            "conv_append_meta", keys[0], keys, [conversation_id, now_ms, flag, *args, *encoded], size=size
        )
        record = self._meta_record(conversation_id, reply)
        assert record is not None, "conv_append_meta always leaves metadata"
        return record

    async def _conversation_set_expiry(
        self, conversation_id: str, ttl: float | None, expires_ms: int | None, now_ms: int
    ) -> bool:
        keys = self._script_keys(conversation_id)
        args = [
            conversation_id, now_ms, b"" if ttl is None else orjson.dumps(ttl), _int_arg(expires_ms),
            self._serializer.dumps({}),
        ]  # fmt: skip
        return bool(await self._script("conv_set_expiry", keys[0], keys, args))

    async def _conversation_exists(self, conversation_id: str, now_ms: int) -> bool:
        keys = self._script_keys(conversation_id)
        return bool(await self._script("conv_exists", keys[0], keys, [conversation_id, now_ms], read=True))

    async def _meta_scan(self, now_ms: int) -> list[MetaRecord]:
        """One listing, then every metadata hash read in pipelines of 500; never a message."""
        records = []
        for batch in _batches((await self._conversation_index("list", now_ms))[0]):
            commands = [("hgetall", self.meta_key_of(conversation_id)) for conversation_id in batch]
            replies = await self._pipelined("reading conversation metadata", commands, strict=True)
            for conversation_id, reply in zip(batch, replies, strict=True):
                record = self._meta_record(conversation_id, reply)
                if record is None:
                    records.append(MetaRecord(conversation_id, None, None, None, None, None, None))
                elif not record.expired(now_ms):  # expired since the listing
                    records.append(record)
        return records

    async def _meta_problems(self) -> list[Problem]:
        """verify()'s findings among the metadata hashes: each that does not parse, by key."""
        problems = []
        for batch in _batches(await self._list_conversations()):
            commands = [("hgetall", self.meta_key_of(conversation_id)) for conversation_id in batch]
            replies = await self._pipelined("reading conversation metadata", commands)
            for conversation_id, reply in zip(batch, replies, strict=True):
                name = self.meta_key_of(conversation_id)
                if isinstance(reply, Exception):
                    error = self._translate(reply, f"reading {name}", name)
                    problems.append(Problem(name, str(error)))
                    continue
                try:
                    self._meta_record(conversation_id, reply)
                except CorruptedDataError as e:
                    problems.append(Problem(e.path, str(e)))
        return problems


@functools.lru_cache(maxsize=4096)
def _lean_keys(layout: KeyLayout, conversation_id: str, part: str) -> tuple[str, str, str]:
    # Cached: the same conversations are written again and again, and naming three keys
    # costs about a microsecond.
    return layout.conv_base(conversation_id) + "meta", part, layout.index("conversation", conversation_id)


def _batches(items: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(items), _BATCH):
        yield items[start : start + _BATCH]
