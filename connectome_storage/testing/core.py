"""The storage contract (API, values, errors): lifecycle, conversations, raw messages, memories, chunks,
reasoning chains, cache, system state, ids, health and stats, as every backend must keep it.

Run it through ``connectome_storage.testing`` (its docstring says how).
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from ..errors import (
    InvalidArgumentError,
    InvalidKeyError,
    SerializationError,
    StorageError,
    StorageNotInitializedError,
)
from ..interface import STATS_KEYS, StorageInterface
from ..naming import MAX_NAME_BYTES
from ._fixtures import FakeClock

HOSTILE_IDS = [
    "../../etc/passwd",
    "a/b\\c",
    ".",
    "..",
    ".hidden",
    "trailing.",
    "CON",
    "nul.txt",
    "com1",
    "with space",
    "100%",
    "%41",
    "ümlaut-日本語-🙂",
    "tab\tnewline\n",
    "Conv",
    "x" * MAX_NAME_BYTES,
]
BAD_IDS: list[Any] = ["", "a\x00b", "x" * (MAX_NAME_BYTES + 1), "🙂" * 30, "\ud800", 7, None, b"bytes"]

ROUND_TRIP_VALUES: list[Any] = [
    None,
    True,
    0,
    -(2**63),
    2**64 - 1,
    1.5,
    -0.0,
    1e308,
    5e-324,
    "",
    'ünïcödé \u2028 \x00 "quoted" \\ 🙂',
    [],
    {},
    {"nested": [{"deep": [1, 2.5, None, {"k": "v"}]}], "": "empty key", "z": False, "a": 1},
    [[[]], {"x": []}],
]
REFUSED_VALUES: list[Any] = [
    float("nan"),
    float("inf"),
    -float("inf"),
    {"score": float("nan")},
    2**64,
    -(2**63) - 1,
    {1: "int key"},
    {("t",): 1},
    b"bytes",
    {1, 2},
    (1, 2),
    object(),
    {"s": "\ud800"},
]
_cycle: list[Any] = []
_cycle.append(_cycle)
_deep: list[Any] = []
for _ in range(300):
    _deep = [_deep]
REFUSED_VALUES += [_cycle, _deep]


# --------------------------------------------------------------------- lifecycle


async def test_initialize_and_shutdown_are_idempotent(make_storage: Any) -> None:
    storage = make_storage()
    assert await storage.initialize() is True
    assert await storage.initialize() is True
    await storage.store_system_state("k", 1)
    await storage.shutdown()
    await storage.shutdown()
    async with make_storage() as again:
        assert await again.load_system_state("k") == 1


async def test_data_methods_before_initialize_say_how_to_fix(make_storage: Any) -> None:
    storage = make_storage()
    with pytest.raises(StorageNotInitializedError, match="initialize"):
        await storage.load_conversation("c1")
    with pytest.raises(StorageNotInitializedError):
        await storage.store_cache("k", 1)
    with pytest.raises(StorageNotInitializedError):
        await storage.get_storage_stats()


async def test_use_after_shutdown_is_refused(make_storage: Any) -> None:
    storage = make_storage()
    async with storage:
        pass
    with pytest.raises(StorageNotInitializedError):
        await storage.list_conversations()


async def test_async_with_returns_the_storage(make_storage: Any) -> None:
    storage = make_storage()
    async with storage as opened:
        assert opened is storage


# ----------------------------------------------------------------- conversations


async def test_conversation_round_trip_and_replace(storage: StorageInterface) -> None:
    assert await storage.load_conversation("c1") is None
    assert await storage.store_conversation("c1", {"title": "first", "turns": [1, 2]}) is True
    assert await storage.load_conversation("c1") == {"title": "first", "turns": [1, 2]}
    await storage.store_conversation("c1", {"title": "second"})
    assert await storage.load_conversation("c1") == {"title": "second"}


async def test_pop_raw_message_takes_the_newest(storage: StorageInterface) -> None:
    assert await storage.pop_raw_message("c1") is None
    await storage.append_raw_messages("c1", [{"n": 1}, {"n": 2}])
    assert await storage.pop_raw_message("c1") == {"n": 2}
    assert await storage.load_raw_messages("c1") == [{"n": 1}]
    assert await storage.append_raw_messages("c1", [{"n": 3}]) == 2
    assert await storage.pop_raw_message("c1") == {"n": 3}
    assert await storage.pop_raw_message("c1") == {"n": 1}
    assert await storage.pop_raw_message("c1") is None
    assert await storage.list_conversations() == []  # an emptied history is no stored part


async def test_list_conversations_is_sorted_and_counts_any_part(storage: StorageInterface) -> None:
    await storage.store_conversation("b", {})
    await storage.append_raw_messages("c", [{"role": "user"}])
    await storage.store_memory("a", "m", {"text": "x"})
    await storage.store_chunks("d", [{"start": 0}])
    assert await storage.list_conversations() == ["a", "b", "c", "d"]


async def test_delete_conversation_removes_every_part(storage: StorageInterface) -> None:
    await storage.store_conversation("c1", {"t": 1})
    await storage.store_raw_messages("c1", [{"m": 1}])
    await storage.store_chunks("c1", [{"c": 1}])
    await storage.store_memory("c1", "m1", {"x": 1})
    await storage.store_conversation("other", {"t": 2})
    assert await storage.delete_conversation("c1") is True
    assert await storage.load_conversation("c1") is None
    assert await storage.load_raw_messages("c1") == []
    assert await storage.load_chunks("c1") == []
    assert await storage.load_memories("c1") == []
    assert await storage.list_conversations() == ["other"]
    assert await storage.delete_conversation("c1") is False
    assert await storage.load_conversation("other") == {"t": 2}


async def test_a_fresh_object_sees_what_another_stored(storage: StorageInterface, make_storage: Any) -> None:
    await storage.store_conversation("c1", {"t": 1})
    await storage.append_raw_messages("c1", [{"n": 1}])
    async with make_storage() as restarted:
        assert await restarted.load_conversation("c1") == {"t": 1}
        assert await restarted.load_raw_messages("c1") == [{"n": 1}]


# ------------------------------------------------------------------ raw messages


async def test_raw_messages_store_append_load(storage: StorageInterface) -> None:
    assert await storage.load_raw_messages("c1") == []
    assert await storage.store_raw_messages("c1", [{"n": 1}, {"n": 2}]) is True
    assert await storage.append_raw_messages("c1", [{"n": 3}]) == 3
    assert await storage.append_raw_messages("c1", [{"n": 4}, {"n": 5}]) == 5
    assert await storage.load_raw_messages("c1") == [{"n": i} for i in range(1, 6)]
    assert await storage.append_raw_messages("c1", []) == 5
    await storage.store_raw_messages("c1", [{"n": 9}])
    assert await storage.load_raw_messages("c1") == [{"n": 9}]


async def test_storing_empty_raw_messages_removes_the_part(storage: StorageInterface) -> None:
    await storage.store_raw_messages("c1", [{"n": 1}])
    assert await storage.list_conversations() == ["c1"]
    await storage.store_raw_messages("c1", [])
    assert await storage.load_raw_messages("c1") == []
    assert await storage.list_conversations() == []
    assert await storage.append_raw_messages("c1", []) == 0
    assert await storage.list_conversations() == []


async def test_raw_messages_must_be_a_list_of_dicts(storage: StorageInterface) -> None:
    await storage.store_raw_messages("c1", [{"n": 1}])
    for bad in ({"n": 1}, [1], ["text"], [{"n": 1}, None], "x"):
        with pytest.raises(SerializationError):
            await storage.append_raw_messages("c1", bad)  # type: ignore[arg-type]
        with pytest.raises(SerializationError):
            await storage.store_raw_messages("c1", bad)  # type: ignore[arg-type]
    assert await storage.load_raw_messages("c1") == [{"n": 1}]


# ---------------------------------------------------------------------- memories


async def test_memories_keep_first_stored_order_and_carry_their_id(storage: StorageInterface) -> None:
    await storage.store_memory("c1", "m2", {"text": "second id, stored first"})
    await storage.store_memory("c1", "m1", {"text": "one"})
    await storage.store_memory("c1", "m3", {"text": "three", "memory_id": "m3"})
    await storage.store_memory("c1", "m2", {"text": "replaced"})
    assert await storage.load_memories("c1") == [
        {"memory_id": "m2", "text": "replaced"},
        {"memory_id": "m1", "text": "one"},
        {"memory_id": "m3", "text": "three"},
    ]


async def test_delete_memory(storage: StorageInterface) -> None:
    await storage.store_memory("c1", "m1", {"x": 1})
    await storage.store_memory("c1", "m2", {"x": 2})
    assert await storage.delete_memory("c1", "m1") is True
    assert await storage.delete_memory("c1", "m1") is False
    assert await storage.delete_memory("nobody", "m1") is False
    assert await storage.load_memories("c1") == [{"memory_id": "m2", "x": 2}]
    await storage.delete_memory("c1", "m2")
    assert await storage.load_memories("c1") == []
    assert await storage.list_conversations() == []


async def test_memory_with_a_conflicting_memory_id_is_refused(storage: StorageInterface) -> None:
    with pytest.raises(InvalidKeyError, match="m-other"):
        await storage.store_memory("c1", "m1", {"memory_id": "m-other"})
    assert await storage.load_memories("c1") == []


async def test_memories_are_per_conversation(storage: StorageInterface) -> None:
    await storage.store_memory("c1", "m", {"v": 1})
    await storage.store_memory("c2", "m", {"v": 2})
    assert await storage.load_memories("c1") == [{"memory_id": "m", "v": 1}]
    assert await storage.load_memories("c2") == [{"memory_id": "m", "v": 2}]


# ------------------------------------------------------------------------ chunks


async def test_chunks_replace_and_empty_removes(storage: StorageInterface) -> None:
    assert await storage.load_chunks("c1") == []
    await storage.store_chunks("c1", [{"start": 0, "end": 10}])
    await storage.store_chunks("c1", [{"start": 0, "end": 5}, {"start": 5, "end": 10}])
    assert await storage.load_chunks("c1") == [{"start": 0, "end": 5}, {"start": 5, "end": 10}]
    await storage.store_chunks("c1", [])
    assert await storage.load_chunks("c1") == []
    assert await storage.list_conversations() == []


# -------------------------------------------------------------- reasoning chains


async def test_reasoning_chains_append_oldest_first(storage: StorageInterface) -> None:
    assert await storage.load_reasoning_chains("agent") == []
    for step in range(3):
        assert await storage.store_reasoning_chain("agent", {"step": step}) is True
    await storage.store_reasoning_chain("other", {"step": 0})
    assert await storage.load_reasoning_chains("agent") == [{"step": 0}, {"step": 1}, {"step": 2}]
    assert await storage.list_agents() == ["agent", "other"]


async def test_reasoning_chain_must_be_a_dict(storage: StorageInterface) -> None:
    with pytest.raises(SerializationError):
        await storage.store_reasoning_chain("agent", [{"step": 1}])  # type: ignore[arg-type]
    assert await storage.list_agents() == []


# ------------------------------------------------------------------------- cache


async def test_cache_round_trip_without_ttl_never_expires(storage: StorageInterface, clock: FakeClock) -> None:
    await storage.store_cache("k", {"answer": 42})
    clock.advance(10 * 365 * 86400)
    assert await storage.load_cache("k") == {"answer": 42}
    assert await storage.list_cache_keys() == ["k"]


async def test_cache_ttl_expires_on_the_clock(storage: StorageInterface, clock: FakeClock) -> None:
    await storage.store_cache("short", "s", ttl=10)
    # A fractional ttl, long enough that Redis's native expiry (real time) never beats the
    # test's clock on a slow machine.
    await storage.store_cache("float", "f", ttl=2.5)
    await storage.store_cache("long", "l", ttl=1000)
    clock.advance(2.4)
    assert await storage.load_cache("float") == "f"
    clock.advance(0.2)
    assert await storage.load_cache("float") is None
    assert await storage.list_cache_keys() == ["long", "short"]
    clock.advance(10)
    assert await storage.load_cache("short") is None
    assert await storage.list_cache_keys() == ["long"]
    stats = await storage.get_storage_stats()
    assert (stats["cache_entry_count"], stats["expired_cache_entry_count"]) == (1, 2)
    assert await storage.cleanup_expired_cache() == 2
    assert await storage.cleanup_expired_cache() == 0
    assert await storage.load_cache("long") == "l"


async def test_default_cache_ttl_applies_when_ttl_is_none(make_storage: Any, clock: FakeClock) -> None:
    async with make_storage(default_cache_ttl=60) as storage:
        await storage.store_cache("default", 1)
        await storage.store_cache("explicit", 2, ttl=3600)
        clock.advance(61)
        assert await storage.load_cache("default") is None
        assert await storage.load_cache("explicit") == 2


async def test_cache_store_replaces_and_restarts_ttl(storage: StorageInterface, clock: FakeClock) -> None:
    await storage.store_cache("k", 1, ttl=5)
    clock.advance(4)
    await storage.store_cache("k", 2)
    clock.advance(100)
    assert await storage.load_cache("k") == 2


async def test_delete_cache(storage: StorageInterface, clock: FakeClock) -> None:
    await storage.store_cache("k", 1)
    await storage.store_cache("gone", 1, ttl=1)
    clock.advance(2)
    assert await storage.delete_cache("k") is True
    assert await storage.delete_cache("k") is False
    assert await storage.delete_cache("gone") is True  # an expired entry is still deletable
    assert await storage.list_cache_keys() == []


@pytest.mark.parametrize("ttl", [0, -1, float("nan"), float("inf"), "10", True, 1e12, 1e17, 1e308, 3_155_760_001])
async def test_bad_ttl_is_refused(storage: StorageInterface, ttl: Any) -> None:
    with pytest.raises(InvalidArgumentError, match="100 years"):
        await storage.store_cache("k", 1, ttl=ttl)
    assert await storage.list_cache_keys() == []


async def test_a_ttl_of_100_years_is_accepted(storage: StorageInterface, clock: FakeClock) -> None:
    await storage.store_cache("k", 1, ttl=3_155_760_000)
    clock.advance(3_155_759_999)
    assert await storage.load_cache("k") == 1


async def test_cache_values_can_be_any_json(storage: StorageInterface) -> None:
    for index, value in enumerate(ROUND_TRIP_VALUES):
        await storage.store_cache(f"k{index}", value)
    for index, value in enumerate(ROUND_TRIP_VALUES):
        assert await storage.load_cache(f"k{index}") == value


# ------------------------------------------------------------------ system state


async def test_system_state_round_trip(storage: StorageInterface) -> None:
    assert await storage.load_system_state("missing") is None
    for index, value in enumerate(ROUND_TRIP_VALUES):
        assert await storage.store_system_state(f"s{index}", value) is True
    for index, value in enumerate(ROUND_TRIP_VALUES):
        loaded = await storage.load_system_state(f"s{index}")
        assert loaded == value and type(loaded) is type(value)
    assert await storage.list_system_states() == sorted(f"s{i}" for i in range(len(ROUND_TRIP_VALUES)))
    assert await storage.delete_system_state("s0") is True
    assert await storage.delete_system_state("s0") is False
    assert "s0" not in await storage.list_system_states()


async def test_negative_zero_and_extreme_floats_survive(storage: StorageInterface) -> None:
    await storage.store_system_state("f", [-0.0, 1e308, 5e-324, 0.1 + 0.2])
    loaded = await storage.load_system_state("f")
    assert loaded == [-0.0, 1e308, 5e-324, 0.1 + 0.2]
    assert math.copysign(1, loaded[0]) == -1


# ------------------------------------------------------------------------ values


@pytest.mark.parametrize("value", REFUSED_VALUES, ids=lambda v: type(v).__name__)
async def test_values_that_cannot_come_back_equal_are_refused(storage: StorageInterface, value: Any) -> None:
    await storage.store_system_state("s", "before")
    await storage.store_cache("k", "before")
    await storage.store_conversation("c", {"v": "before"})
    with pytest.raises(SerializationError):
        await storage.store_system_state("s", value)
    with pytest.raises(SerializationError):
        await storage.store_cache("k", value)
    with pytest.raises(SerializationError):
        await storage.store_conversation("c", {"v": value})
    with pytest.raises(SerializationError):
        await storage.append_raw_messages("c", [{"ok": 1}, {"v": value}])
    assert await storage.load_system_state("s") == "before"
    assert await storage.load_cache("k") == "before"
    assert await storage.load_conversation("c") == {"v": "before"}
    assert await storage.load_raw_messages("c") == []


async def test_serialization_error_names_the_place(storage: StorageInterface) -> None:
    with pytest.raises(SerializationError) as caught:
        await storage.store_conversation("c", {"turns": [{"score": 1.0}, {"score": float("nan")}]})
    assert "['turns'][1]['score']" in str(caught.value)
    assert caught.value.location == "data['turns'][1]['score']"


async def test_conversation_data_must_be_a_dict(storage: StorageInterface) -> None:
    for bad in ([], "text", None, 1):  # type: ignore[var-annotated]
        with pytest.raises(SerializationError, match="dict"):
            await storage.store_conversation("c", bad)  # type: ignore[arg-type]
    assert await storage.list_conversations() == []


# --------------------------------------------------------------------------- ids


@pytest.mark.parametrize("identifier", HOSTILE_IDS)
async def test_unusual_ids_round_trip_everywhere(storage: StorageInterface, identifier: str) -> None:
    await storage.store_conversation(identifier, {"id": identifier})
    await storage.append_raw_messages(identifier, [{"n": 1}])
    await storage.store_memory(identifier, identifier, {"m": 1})
    await storage.store_reasoning_chain(identifier, {"a": 1})
    await storage.store_cache(identifier, identifier)
    await storage.store_system_state(identifier, identifier)
    assert await storage.load_conversation(identifier) == {"id": identifier}
    assert await storage.load_memories(identifier) == [{"memory_id": identifier, "m": 1}]
    assert await storage.list_conversations() == [identifier]
    assert await storage.list_agents() == [identifier]
    assert await storage.list_cache_keys() == [identifier]
    assert await storage.list_system_states() == [identifier]
    assert await storage.load_cache(identifier) == identifier
    assert await storage.delete_conversation(identifier) is True
    assert await storage.list_conversations() == []


async def test_ids_differing_only_in_case_are_distinct(storage: StorageInterface) -> None:
    await storage.store_system_state("State", 1)
    await storage.store_system_state("state", 2)
    assert await storage.load_system_state("State") == 1
    assert await storage.load_system_state("state") == 2


@pytest.mark.parametrize("bad", BAD_IDS, ids=repr)
async def test_bad_ids_raise_invalid_key_error_on_every_method(storage: StorageInterface, bad: Any) -> None:
    calls = [
        storage.store_conversation(bad, {}),
        storage.load_conversation(bad),
        storage.delete_conversation(bad),
        storage.append_raw_messages(bad, [{}]),
        storage.store_memory("c", bad, {}),
        storage.store_memory(bad, "m", {}),
        storage.delete_memory("c", bad),
        storage.store_reasoning_chain(bad, {}),
        storage.store_cache(bad, 1),
        storage.load_cache(bad),
        storage.store_system_state(bad, 1),
        storage.delete_system_state(bad),
    ]
    for call in calls:
        with pytest.raises(InvalidKeyError):
            await call
    assert await storage.list_conversations() == []
    assert await storage.list_system_states() == []


def test_invalid_key_error_is_a_storage_error_and_a_value_error() -> None:
    assert issubclass(InvalidKeyError, StorageError)
    assert issubclass(InvalidKeyError, ValueError)


# ---------------------------------------------------------------- health, stats


async def test_health_check_reports_healthy(storage: StorageInterface) -> None:
    report = await storage.health_check()
    assert report["status"] == "healthy"
    assert report["backend"] == storage.backend_name
    assert isinstance(report["latency_ms"], float) and report["latency_ms"] >= 0
    assert isinstance(report["details"], dict)


async def test_health_check_before_initialize_is_unhealthy_not_raised(make_storage: Any) -> None:
    report = await make_storage().health_check()
    assert report["status"] == "unhealthy"
    assert "initialize" in report["details"]["error"]


async def test_stats_count_every_kind(storage: StorageInterface, clock: FakeClock) -> None:
    empty = await storage.get_storage_stats()
    assert empty["conversation_count"] == 0 and empty["unreadable_count"] == 0
    await storage.store_conversation("c1", {"t": 1})
    await storage.store_raw_messages("c1", [{"n": 1}, {"n": 2}])
    await storage.append_raw_messages("c2", [{"n": 1}])
    await storage.store_memory("c1", "m1", {})
    await storage.store_memory("c3", "m1", {})
    await storage.store_memory("c3", "m2", {})
    await storage.store_reasoning_chain("a1", {})
    await storage.store_reasoning_chain("a1", {})
    await storage.store_reasoning_chain("a2", {})
    await storage.store_cache("live", 1)
    await storage.store_cache("dying", 1, ttl=1)
    await storage.store_system_state("s", 1)
    clock.advance(5)
    stats = await storage.get_storage_stats()
    expected = {
        "backend": storage.backend_name,
        "conversation_count": 3,
        "raw_message_count": 3,
        "memory_count": 3,
        "agent_count": 2,
        "reasoning_chain_count": 3,
        "cache_entry_count": 1,
        "expired_cache_entry_count": 1,
        "system_state_count": 1,
        "unreadable_count": 0,
    }
    assert {key: stats[key] for key in expected} == expected
    assert stats["total_bytes"] > empty["total_bytes"]


async def test_stats_keys_come_in_one_order_on_every_backend(storage: StorageInterface) -> None:
    await storage.store_system_state("s", None)  # a None state is stored, listed and counted
    stats = await storage.get_storage_stats()
    assert list(stats)[: len(STATS_KEYS)] == list(STATS_KEYS)
    assert stats["system_state_count"] == 1 == len(await storage.list_system_states())


async def test_cleanup_reports_what_it_removed(storage: StorageInterface, clock: FakeClock) -> None:
    await storage.store_cache("dying", 1, ttl=1)
    await storage.store_cache("live", 1)
    await storage.kv("n").set("k", 1, ttl=1)
    clock.advance(2)
    removed = await storage.cleanup()
    assert removed["expired_cache"] == 1 and removed["expired_kv_entries"] == 1
    assert all(isinstance(count, int) for count in removed.values())
    assert await storage.list_cache_keys() == ["live"]
    assert (await storage.cleanup())["expired_cache"] == 0


async def test_verify_finds_nothing_wrong_in_a_clean_store(storage: StorageInterface) -> None:
    await storage.store_conversation("c1", {"t": 1})
    await storage.store_memory("c1", "m", {})
    await storage.store_cache("k", 1)
    assert await storage.verify() == []


# What this module adds to the suite: every test above, in the order they are defined (so a
# new test cannot be left out of what `from connectome_storage.testing import *` runs).
__all__ = [name for name in list(globals()) if name.startswith("test_")]
