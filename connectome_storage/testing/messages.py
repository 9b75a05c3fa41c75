"""The message store's contract (docs/messages.md), on every backend.

Only the ``storage``, ``make_storage`` and ``clock`` fixtures are used, so these tests run
wherever the conformance suite runs (file, SQLite, Redis, memory and the msgpack variants).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

from connectome_storage import MessageStore, StorageInterface
from connectome_storage import messages as messages_module
from connectome_storage.codec import format_time
from connectome_storage.errors import (
    InvalidArgumentError,
    InvalidKeyError,
    SerializationError,
    StorageNotInitializedError,
)

if TYPE_CHECKING:
    from ._fixtures import FakeClock

ID_FORM = re.compile(r"msg_[0-9a-f]{12}_[0-9a-f]{16}")


async def everything(bus: MessageStore) -> list[dict[str, Any]]:
    return await bus.query()


async def test_save_generates_a_time_sortable_id_and_a_timestamp(
    storage: StorageInterface, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ids only grow within a process: one made earlier on the real clock, later than this
    # test's, would carry its milliseconds on. Start this test's ids from the clock alone.
    monkeypatch.setattr(messages_module, "_last", (-1, 0))
    bus = storage.message_store()
    message_id = await bus.save({"from": "planner", "to": "coder", "content": "go"})
    assert ID_FORM.fullmatch(message_id)
    assert message_id[4:16] == f"{round(clock.now * 1000):012x}"  # the storage clock's milliseconds
    stamp = format_time(round(clock.now * 1000))
    assert await bus.get(message_id) == {"id": message_id, "from": "planner", "to": "coder", "content": "go",
                                         "timestamp": stamp}  # fmt: skip
    assert (await bus.get(message_id) or {})["timestamp"] == "2026-11-21T09:30:00.000Z"


async def test_ids_strictly_increase_within_one_millisecond(storage: StorageInterface) -> None:
    bus = storage.message_store()
    ids = [await bus.save({"from": "a", "to": "b", "n": n}) for n in range(50)]  # the fake clock stands still
    assert ids == sorted(ids) and len(set(ids)) == 50
    assert [m["id"] for m in await bus.query()] == ids  # equal timestamps: ordered by id, so in saving order


async def test_given_id_and_timestamp_are_kept(storage: StorageInterface) -> None:
    bus = storage.message_store()
    message = {"id": "m-1", "from": "a", "to": "b", "timestamp": "2020-01-01T00:00:00.000Z", "x": [1, {"y": None}]}
    assert await bus.save(message) == "m-1"
    assert await bus.get("m-1") == message
    assert await bus.get("missing") is None


async def test_save_stores_a_copy_and_leaves_the_callers_dict_alone(storage: StorageInterface) -> None:
    bus = storage.message_store()
    message: dict[str, Any] = {"from": "a", "to": "b", "body": {"items": [1]}}
    message_id = await bus.save(message)
    assert message == {"from": "a", "to": "b", "body": {"items": [1]}}  # no id or timestamp added
    message["body"]["items"].append(2)
    message["to"] = "c"
    stored = await bus.get(message_id)
    assert stored is not None and stored["body"] == {"items": [1]} and stored["to"] == "b"
    stored["body"]["items"].append(3)  # a returned value is a copy too
    assert (await bus.get(message_id) or {})["body"] == {"items": [1]}
    (await bus.query())[0]["body"]["items"].append(4)
    assert (await bus.get(message_id) or {})["body"] == {"items": [1]}


async def test_an_existing_id_is_refused_and_the_first_message_kept(storage: StorageInterface) -> None:
    bus = storage.message_store()
    await bus.save({"id": "dup", "from": "a", "to": "b", "v": 1})
    with pytest.raises(InvalidKeyError, match="dup"):
        await bus.save({"id": "dup", "from": "c", "to": "d", "v": 2})
    assert (await bus.get("dup") or {})["v"] == 1
    assert await bus.query(to="d") == [] and await bus.query(from_="c") == []


@pytest.mark.parametrize(
    ("message", "error", "field"),
    [
        ({"to": "b"}, InvalidKeyError, "'from'"),
        ({"from": "a"}, InvalidKeyError, "'to'"),
        ({"from": "", "to": "b"}, InvalidKeyError, "from"),
        ({"from": "a", "to": 7}, InvalidKeyError, "to"),
        ({"from": "a\x00", "to": "b"}, InvalidKeyError, "from"),
        ({"from": "*", "to": "b"}, InvalidKeyError, "from"),
        ({"from": "a", "to": "b", "id": ""}, InvalidKeyError, "id"),
        ({"from": "a", "to": "b", "id": "x" * 300}, InvalidKeyError, "id"),
        ({"from": "a", "to": "b", "timestamp": 5}, SerializationError, "timestamp"),
        ({"from": "a", "to": "b", "n": float("nan")}, SerializationError, "'n'"),
        ({"from": "a", "to": "b", "s": {1, 2}}, SerializationError, "'s'"),
        ({"from": "a", "to": "b", 1: "non-str key"}, SerializationError, "key"),
    ],
)
async def test_bad_messages_are_refused_naming_the_field_and_store_nothing(
    storage: StorageInterface, message: dict[Any, Any], error: type[Exception], field: str
) -> None:
    bus = storage.message_store()
    kept = await bus.save({"id": "kept", "from": "a", "to": "b"})
    with pytest.raises(error, match=re.escape(field)):
        await bus.save(message)
    assert [m["id"] for m in await bus.query()] == [kept]
    assert (await storage.get_storage_stats())["message_count"] == 1


async def test_a_message_must_be_a_dict(storage: StorageInterface) -> None:
    with pytest.raises(SerializationError, match="message must be a dict"):
        await storage.message_store().save(["from", "to"])  # type: ignore[arg-type]


async def test_query_filters_combine_with_and_and_broadcasts_reach_all_but_the_sender(
    storage: StorageInterface, clock: FakeClock
) -> None:
    bus = storage.message_store()
    sent = {}
    for name, sender, recipient in [
        ("p2c", "planner", "coder"), ("c2p", "coder", "planner"), ("p_all", "planner", "*"),
        ("r2c", "reviewer", "coder"), ("c_all", "coder", "*"), ("r2p", "reviewer", "planner"),
    ]:  # fmt: skip
        clock.advance(1)
        sent[name] = await bus.save({"from": sender, "to": recipient, "name": name})

    async def names(**filters: Any) -> list[str]:
        return [m["name"] for m in await bus.query(**filters)]

    assert await names() == ["p2c", "c2p", "p_all", "r2c", "c_all", "r2p"]
    assert await names(to="coder") == ["p2c", "p_all", "r2c"]  # not its own broadcast
    assert await names(to="planner") == ["c2p", "c_all", "r2p"]
    assert await names(to="reviewer") == ["p_all", "c_all"]
    assert await names(to="*") == ["p_all", "c_all"]
    assert await names(from_="planner") == ["p2c", "p_all"]
    assert await names(conversation_with="planner") == ["p2c", "c2p", "p_all", "c_all", "r2p"]
    assert await names(conversation_with="reviewer") == ["p_all", "r2c", "c_all", "r2p"]
    assert await names(to="coder", from_="reviewer") == ["r2c"]
    assert await names(to="planner", conversation_with="coder") == ["c2p", "c_all"]
    assert await names(from_="coder", conversation_with="planner") == ["c2p", "c_all"]
    assert await names(to="nobody-yet") == ["p_all", "c_all"]
    assert await names(from_="nobody") == []
    assert await names(to="coder", limit=2) == ["p2c", "p_all"]
    assert await names(limit=1) == ["p2c"]
    assert await names(limit=100) == await names()


async def test_order_is_timestamp_then_id_whatever_the_saving_order(storage: StorageInterface) -> None:
    bus = storage.message_store()
    for message_id, stamp in [("b", "2026-01-02T00:00:00.000Z"), ("c", "2026-01-01T00:00:00.000Z"),
                              ("a", "2026-01-02T00:00:00.000Z"), ("d", "2026-01-01T00:00:00.000Z")]:  # fmt: skip
        await bus.save({"id": message_id, "from": "x", "to": "y", "timestamp": stamp})
    assert [m["id"] for m in await bus.query()] == ["c", "d", "a", "b"]
    assert [m["id"] for m in await bus.query(to="y", limit=3)] == ["c", "d", "a"]


@pytest.mark.parametrize("limit", [0, -1, 1.5, True, "2"])
async def test_limit_must_be_a_positive_int(storage: StorageInterface, limit: Any) -> None:
    with pytest.raises(InvalidArgumentError, match="limit"):
        await storage.message_store().query(limit=limit)


async def test_query_checks_its_ids(storage: StorageInterface) -> None:
    bus = storage.message_store()
    for filters in ({"to": ""}, {"from_": 3}, {"conversation_with": "a\x00b"}):
        with pytest.raises(InvalidKeyError):
            await bus.query(**filters)
    with pytest.raises(InvalidKeyError):
        await bus.get("")


async def test_read_state_unread_ids_and_idempotent_mark_read(storage: StorageInterface) -> None:
    bus = storage.message_store()
    direct = await bus.save({"from": "planner", "to": "coder"})
    broadcast = await bus.save({"from": "planner", "to": "*"})
    own = await bus.save({"from": "coder", "to": "*"})
    other = await bus.save({"from": "planner", "to": "reviewer"})
    assert await bus.get_unread_ids("coder") == {direct, broadcast}
    assert await bus.get_unread_ids("planner") == {own}
    assert await bus.get_unread_ids("reviewer") == {broadcast, own, other}
    await bus.mark_read("coder", [direct])
    assert await bus.get_unread_ids("coder") == {broadcast}
    await bus.mark_read("coder", [direct, direct])  # again: nothing changes
    await bus.mark_read("coder", [])
    assert await bus.get_unread_ids("coder") == {broadcast}
    await bus.mark_read("coder", (i for i in [broadcast, "not-stored-yet"]))  # any iterable; unknown ids are harmless
    assert await bus.get_unread_ids("coder") == set()
    assert await bus.get_unread_ids("reviewer") == {broadcast, own, other}  # read state is per agent
    later = await bus.save({"id": "not-stored-yet", "from": "planner", "to": "coder"})
    assert await bus.get_unread_ids("coder") == set() and later == "not-stored-yet"
    fresh = await bus.save({"from": "planner", "to": "coder"})
    assert await bus.get_unread_ids("coder") == {fresh}


async def test_mark_read_checks_its_arguments_and_changes_nothing_on_error(storage: StorageInterface) -> None:
    bus = storage.message_store()
    message_id = await bus.save({"from": "a", "to": "b"})
    for agent in ("", "*", 5):
        with pytest.raises(InvalidKeyError):
            await bus.mark_read(agent, [message_id])  # type: ignore[arg-type]
        with pytest.raises(InvalidKeyError):
            await bus.get_unread_ids(agent)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="ids"):
        await bus.mark_read("b", message_id)  # a str is not a list of ids
    with pytest.raises(InvalidKeyError):
        await bus.mark_read("b", [message_id, ""])  # one bad id: none is marked
    assert await bus.get_unread_ids("b") == {message_id}
    assert (await storage.get_storage_stats())["message_read_state_count"] == 0


async def test_concurrent_mark_read_on_two_storage_objects_loses_nothing(
    storage: StorageInterface, make_storage: Callable[..., StorageInterface]
) -> None:
    ids = [await storage.message_store().save({"from": "a", "to": "b", "n": n}) for n in range(30)]
    async with make_storage() as other:
        buses = [storage.message_store(), other.message_store()]
        await asyncio.gather(*(buses[n % 2].mark_read("b", [message_id]) for n, message_id in enumerate(ids)))
    assert await storage.message_store().get_unread_ids("b") == set()


async def test_everything_persists_across_storage_objects(
    storage: StorageInterface, make_storage: Callable[..., StorageInterface]
) -> None:
    bus = storage.message_store()
    first = await bus.save({"from": "a", "to": "b", "v": [1.5, None, "ü🙂"]})
    await bus.save({"from": "b", "to": "*"})
    await bus.mark_read("b", [first])
    async with make_storage() as reopened:
        again = reopened.message_store()
        assert await again.query() == await bus.query()
        assert await again.get(first) == await bus.get(first)
        assert await again.get_unread_ids("b") == set()
        assert await again.get_unread_ids("a") == await bus.get_unread_ids("a") != set()
        with pytest.raises(InvalidKeyError):
            await again.save({"id": first, "from": "a", "to": "b"})


async def test_unusual_ids_round_trip(storage: StorageInterface) -> None:
    bus = storage.message_store()
    odd = ["../../etc/passwd", "ümlaut-日本語-🙂", "CON", "with space", "100%", ".hidden", "a:b{c}"]
    for n, name in enumerate(odd):
        await bus.save({"id": name, "from": name, "to": odd[-1 - n], "timestamp": f"{n:02}"})
        await bus.mark_read(name, [name])
    assert [m["id"] for m in await bus.query()] == odd
    for n, name in enumerate(odd):
        assert (await bus.get(name) or {})["from"] == name
        assert [m["id"] for m in await bus.query(from_=name)] == [name]
        assert name in {m["id"] for m in await bus.query(to=odd[-1 - n])}
    assert await bus.get_unread_ids(odd[0]) == {odd[-1]}


async def test_stats_count_messages_and_read_states_and_list_agents_is_unchanged(storage: StorageInterface) -> None:
    stats = await storage.get_storage_stats()
    assert stats["message_count"] == stats["message_read_state_count"] == 0
    keys = list(stats)
    assert keys.index("expired_kv_entry_count") + 1 == keys.index("message_count")
    assert keys.index("message_count") + 1 == keys.index("message_read_state_count")
    bus = storage.message_store()
    await bus.save({"from": "a", "to": "b", "content": "x" * 1000})
    await bus.save({"from": "b", "to": "*"})
    await bus.mark_read("reader", ["anything"])
    stats = await storage.get_storage_stats()
    assert (stats["message_count"], stats["message_read_state_count"], stats["unreadable_count"]) == (2, 1, 0)
    assert stats["total_bytes"] > 1000
    # "agents" are those with reasoning chains: read state alone does not list an agent.
    assert await storage.list_agents() == [] and stats["agent_count"] == 0
    await storage.store_reasoning_chain("reader", {"step": 1})
    assert await storage.list_agents() == ["reader"]
    assert await bus.get_unread_ids("reader") == {m["id"] for m in await bus.query(to="reader")}
    assert await storage.verify() == []


async def test_every_method_needs_an_initialized_storage(make_storage: Callable[..., StorageInterface]) -> None:
    bus = make_storage().message_store()
    calls = [
        bus.save({"from": "a", "to": "b"}), bus.get("x"), bus.query(), bus.mark_read("a", ["x"]),
        bus.get_unread_ids("a"),
    ]  # fmt: skip
    for call in calls:
        with pytest.raises(StorageNotInitializedError):
            await call


# What this module adds to the suite: every test above, in the order they are defined.
__all__ = [name for name in list(globals()) if name.startswith("test_")]
