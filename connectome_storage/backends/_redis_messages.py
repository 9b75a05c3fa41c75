"""The message store on Redis (docs/messages.md): the ``_msg_*`` hooks of RedisStorage.

Key layout (``P`` is ``key_prefix``; ``<agent>`` is the agent id percent-encoded by
``naming.encode_name``, so ``*`` is ``%2A``; the braces are one cluster hash tag, so every
key of the message store lives in one slot and one script may touch them all)::

    P msg:{m}:all              hash  message id -> the message (compact JSON, or msgpack)
    P msg:{m}:to:<agent>       set   ids of messages whose "to" is the agent (to:%2A: broadcasts)
    P msg:{m}:from:<agent>     set   ids of messages the agent sent
    P msg:{m}:agents           set   agents named in a "to" or "from" (finds the sets above)
    P msg:{m}:read:<agent>     set   ids the agent marked read
    P msg:{m}:readers          set   agents with a read state

Saving is one script (HSETNX, then the index sets): one winner among concurrent savers of
an id, and the indexes never lag the hash. A query reads only the messages its sets name,
in one script call (one round trip), and applies the exact filter, order and limit in
Python; ``get_unread_ids`` reads only sets. Marking read is one SADD in MULTI/EXEC with the
readers index: a union, so concurrent marks never lose an id. (MULTI/EXEC goes on one
connection taken by hand, RedisStorage._multi: on a cluster, to the master of ``{m}``.)
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import CorruptedDataError, StorageError
from ..interface import Problem, StorageInterface
from ..messages import BROADCAST, MessageSelect, check_stored_message
from ..naming import encode_name

if TYPE_CHECKING:
    from ..serializer import Serializer

T = TypeVar("T")

__all__ = ["MSG_SCRIPTS", "RedisMessages"]

_name = functools.lru_cache(maxsize=4096)(encode_name)

MSG_SCRIPTS = {
    # KEYS: all, to-set, from-set, agents; ARGV: id, message, to, from. 1 if saved, 0 if the id is taken.
    "msg_save": """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('SADD', KEYS[4], ARGV[3], ARGV[4])
return 1
""",
    # KEYS: all, then the sets of each filter group; ARGV: how many sets each group has.
    # The ids in every group's union (a group: the sets one filter may find a message in),
    # with their messages: {id1, message1, id2, message2, ...}.
    "msg_query": """
local found = nil
local at = 2
for g = 1, #ARGV do
  local union = {}
  for s = 1, tonumber(ARGV[g]) do
    for _, id in ipairs(redis.call('SMEMBERS', KEYS[at])) do union[id] = true end
    at = at + 1
  end
  if found == nil then
    found = union
  else
    for id in pairs(found) do if not union[id] then found[id] = nil end end
  end
end
local ids = {}
for id in pairs(found or {}) do ids[#ids + 1] = id end
if #ids == 0 then return {} end
local out = {}
for start = 1, #ids, 1000 do
  local batch = {unpack(ids, start, math.min(start + 999, #ids))}
  local values = redis.call('HMGET', KEYS[1], unpack(batch))
  for i, id in ipairs(batch) do
    if values[i] then out[#out + 1] = id; out[#out + 1] = values[i] end
  end
end
return out
""",
}


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


class RedisMessages(StorageInterface):
    """The ``_msg_*`` hooks of RedisStorage (listed before StorageInterface in its bases)."""

    if TYPE_CHECKING:  # what RedisStorage provides (redis.py)
        _prefix: str
        _serializer: Serializer

        @property
        def client(self) -> Any: ...
        async def _call(
            self, what: str, key: str | None, function: Callable[..., Awaitable[T]], *args: Any, read: bool = False,
            size: int = 0,
        ) -> T: ...  # fmt: skip
        async def _script(
            self, name: str, key: str, keys: Sequence[str], args: Sequence[Any], size: int = 0, *, read: bool = False
        ) -> Any: ...
        async def _pipelined(
            self, what: str, commands: Sequence[tuple[Any, ...]], *, key: str | None = None,
            transaction: bool = False, strict: bool = False,
        ) -> list[Any]: ...  # fmt: skip
        async def _multi(
            self, what: str, key: str, commands: Sequence[tuple[Any, ...]], *, write: bool = True
        ) -> list[Any]: ...
        def _decode(self, raw: bytes | str, source: str) -> Any: ...
        def _check_size(self, key: str, payloads: Sequence[bytes]) -> int: ...

    # ------------------------------------------------------------------ names

    @property
    def _msg_base(self) -> str:
        return f"{self._prefix}msg:{{m}}:"

    def _msg_all(self) -> str:
        return self._msg_base + "all"

    def _msg_set(self, which: str, agent_id: str) -> str:
        """``to``, ``from`` or ``read`` set of an agent."""
        return f"{self._msg_base}{which}:{_name(agent_id)}"

    def _msg_message(self, message_id: str, raw: bytes | str) -> dict[str, Any]:
        source = f"{self._msg_all()} field {message_id!r}"
        return check_stored_message(self._decode(raw, source), source, message_id)

    # --------------------------------------------------------------- messages

    async def _msg_put(self, message: dict[str, Any], *, if_absent: bool) -> bool:
        message_id, sender, recipient = message["id"], message["from"], message["to"]
        data = self._serializer.dumps(message)
        everything = self._msg_all()
        size = self._check_size(everything, [data])
        to_set, from_set = self._msg_set("to", recipient), self._msg_set("from", sender)
        if if_absent:
            keys = [everything, to_set, from_set, self._msg_base + "agents"]
            saved = await self._script("msg_save", everything, keys, [message_id, data, recipient, sender], size=size)
            return bool(saved)
        # Replacing (migrate): the old version's index entries go first, in the same MULTI.
        commands: list[tuple[Any, ...]] = []
        try:
            old = await self._msg_get(message_id)
        except CorruptedDataError:
            old = None
        if old is not None:
            commands += [("srem", self._msg_set("to", old["to"]), message_id)]
            commands += [("srem", self._msg_set("from", old["from"]), message_id)]
        commands += [
            ("hset", everything, message_id, data),
            ("sadd", to_set, message_id),
            ("sadd", from_set, message_id),
            ("sadd", self._msg_base + "agents", recipient, sender),
        ]
        await self._multi(f"saving message {message_id}", everything, commands)
        return True

    async def _msg_get(self, message_id: str) -> dict[str, Any] | None:
        everything = self._msg_all()
        raw = await self._call(f"reading {everything}", everything, self.client.hget, everything, message_id, read=True)
        return None if raw is None else self._msg_message(message_id, raw)

    async def _msg_ids(self) -> list[str]:
        everything = self._msg_all()
        ids = await self._call(f"listing {everything}", everything, self.client.hkeys, everything, read=True)
        return [_text(i) for i in ids]

    async def _msg_select(self, select: MessageSelect) -> list[dict[str, Any]]:
        groups: list[list[str]] = []
        if select.to is not None:
            groups.append([self._msg_set("to", select.to), self._msg_set("to", BROADCAST)])
        if select.from_ is not None:
            groups.append([self._msg_set("from", select.from_)])
        if select.conversation_with is not None:
            peer = select.conversation_with
            groups.append([self._msg_set("from", peer), self._msg_set("to", peer), self._msg_set("to", BROADCAST)])
        everything = self._msg_all()
        if groups:
            keys = [everything, *(key for group in groups for key in group)]
            flat = await self._script("msg_query", everything, keys, [len(group) for group in groups], read=True)
            pairs = [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]
        else:
            found = await self._call(f"reading {everything}", everything, self.client.hgetall, everything, read=True)
            pairs = list(found.items())
        return select.apply(self._msg_message(_text(i), raw) for i, raw in pairs)

    # ------------------------------------------------------------- read state

    async def _msg_readers(self) -> list[str]:
        index = self._msg_base + "readers"
        return [_text(a) for a in await self._call(f"listing {index}", index, self.client.smembers, index, read=True)]

    async def _msg_read_ids(self, agent_id: str) -> list[str]:
        key = self._msg_set("read", agent_id)
        return sorted(_text(i) for i in await self._call(f"reading {key}", key, self.client.smembers, key, read=True))

    async def _msg_add_read(self, agent_id: str, ids: list[str]) -> None:
        key = self._msg_set("read", agent_id)
        commands = [("sadd", key, *ids), ("sadd", self._msg_base + "readers", agent_id)]
        await self._multi(f"marking read in {key}", key, commands)

    async def _msg_set_read(self, agent_id: str, ids: list[str]) -> None:
        key, readers = self._msg_set("read", agent_id), self._msg_base + "readers"
        commands: list[tuple[Any, ...]] = [("delete", key)]
        commands += [("sadd", key, *ids), ("sadd", readers, agent_id)] if ids else [("srem", readers, agent_id)]
        await self._multi(f"writing {key}", key, commands)

    async def _msg_unread(self, agent_id: str) -> set[str]:
        commands = [
            ("smembers", self._msg_set("to", agent_id)),
            ("sdiff", self._msg_set("to", BROADCAST), self._msg_set("from", agent_id)),
            ("smembers", self._msg_set("read", agent_id)),
        ]
        direct, broadcast, read = await self._multi(
            "reading unread messages", self._msg_set("read", agent_id), commands, write=False
        )
        return {_text(i) for i in (set(direct) | set(broadcast)) - set(read)}

    # ---------------------------------------------------------- stats, bytes

    async def _msg_census(self) -> tuple[int, int, list[Problem]]:
        everything, readers = self._msg_all(), self._msg_base + "readers"
        found, reader_count = await self._pipelined(
            "counting messages", [("hgetall", everything), ("scard", readers)], key=everything, strict=True
        )
        count, problems = 0, []
        for message_id, raw in found.items():
            try:
                self._msg_message(_text(message_id), raw)
                count += 1
            except StorageError as e:
                problems.append(Problem(getattr(e, "path", None) or everything, str(e)))
        return count, int(reader_count), problems

    async def _msg_all_keys(self) -> list[str]:
        """Every Redis key of the message store (for total_bytes), found through its indexes."""
        base = self._msg_base
        agents, readers = await self._pipelined(
            "listing message store keys", [("smembers", base + "agents"), ("smembers", base + "readers")], strict=True
        )
        keys = [base + "all", base + "agents", base + "readers"]
        for agent in sorted(_text(a) for a in agents):
            keys += [self._msg_set("to", agent), self._msg_set("from", agent)]
        return keys + [self._msg_set("read", _text(a)) for a in sorted(readers)]
