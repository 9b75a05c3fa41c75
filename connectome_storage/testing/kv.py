"""The key-value collection contract (``storage.kv(namespace)``), as every backend must keep it.

Run it through ``connectome_storage.testing`` (its docstring says how).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ..errors import (
    InvalidArgumentError,
    InvalidKeyError,
    SerializationError,
    StorageNotInitializedError,
)
from ..interface import StorageInterface
from ..kv import Entry, KVRecord, KVSelect, compile_pattern
from ._fixtures import START, FakeClock
from .core import BAD_IDS, HOSTILE_IDS, REFUSED_VALUES, ROUND_TRIP_VALUES

T0 = datetime.fromtimestamp(START, tz=UTC)

# ------------------------------------------------------------------ basics


async def test_set_get_exists_delete(storage: StorageInterface) -> None:
    kv = storage.kv("sessions")
    assert await kv.get("s1") is None
    assert await kv.exists("s1") is False
    assert await kv.set("s1", {"turn": 1}) is True
    assert await kv.get("s1") == {"turn": 1}
    assert await kv.exists("s1") is True
    assert await kv.delete("s1") is True
    assert await kv.delete("s1") is False
    assert await kv.get("s1") is None


async def test_default_namespace_and_namespaces_are_apart(storage: StorageInterface) -> None:
    await storage.kv().set("k", "default")
    await storage.kv("other").set("k", "other")
    assert storage.kv().namespace == "default"
    assert await storage.kv("default").get("k") == "default"
    assert await storage.kv("other").get("k") == "other"
    assert await storage.list_namespaces() == ["default", "other"]
    await storage.kv("other").delete("k")
    assert await storage.list_namespaces() == ["default"]


@pytest.mark.parametrize("value", ROUND_TRIP_VALUES, ids=repr)
async def test_values_round_trip_exactly(storage: StorageInterface, value: Any) -> None:
    kv = storage.kv()
    await kv.set("k", value)
    loaded = await kv.get("k")
    assert loaded == value
    assert type(loaded) is type(value)
    if isinstance(value, float):
        assert repr(loaded) == repr(value)  # -0.0 stays -0.0


@pytest.mark.parametrize("value", REFUSED_VALUES, ids=lambda v: type(v).__name__)
async def test_values_that_would_not_come_back_are_refused(storage: StorageInterface, value: Any) -> None:
    kv = storage.kv()
    await kv.set("k", "before")
    with pytest.raises(SerializationError):
        await kv.set("k", value)
    assert await kv.get("k") == "before"


@pytest.mark.parametrize("key", HOSTILE_IDS, ids=repr)
async def test_hostile_keys_and_namespaces_round_trip(make_storage: Any, key: str) -> None:
    async with make_storage() as storage:
        await storage.kv(key).set(key, {"k": key})
    async with make_storage() as storage:  # a fresh object reads what the first wrote
        assert await storage.kv(key).get(key) == {"k": key}
        assert await storage.kv(key).keys() == [key]
        assert key in await storage.list_namespaces()


@pytest.mark.parametrize("bad", BAD_IDS, ids=repr)
async def test_bad_keys_and_namespaces_are_refused(storage: StorageInterface, bad: Any) -> None:
    with pytest.raises(InvalidKeyError):
        storage.kv(bad)
    with pytest.raises(InvalidKeyError):
        await storage.kv().set(bad, 1)
    with pytest.raises(InvalidKeyError):
        await storage.kv().get(bad)
    assert await storage.list_namespaces() == []


async def test_methods_before_initialize_are_refused(make_storage: Any) -> None:
    kv = make_storage().kv()
    with pytest.raises(StorageNotInitializedError):
        await kv.set("k", 1)
    with pytest.raises(StorageNotInitializedError):
        await kv.get("k")


async def test_entries_survive_a_new_storage_object(make_storage: Any, clock: FakeClock) -> None:
    async with make_storage() as storage:
        await storage.kv("n").set("k", [1, 2], ttl=60, tags={"a": "b"})
    async with make_storage() as storage:
        entry = await storage.kv("n").get_entry("k")
    assert entry == Entry("k", [1, 2], {"a": "b"}, T0, T0, T0 + timedelta(seconds=60))


async def test_returned_values_are_copies(storage: StorageInterface) -> None:
    kv = storage.kv()
    await kv.set("k", {"list": [1]}, tags={"t": "v"})
    value = await kv.get("k")
    value["list"].append(2)
    entry = await kv.get_entry("k")
    assert entry is not None
    entry.tags["t"] = "changed"
    assert await kv.get("k") == {"list": [1]}
    assert (await kv.get_entry("k")).tags == {"t": "v"}  # type: ignore[union-attr]


# ------------------------------------------------------------ set semantics


async def test_set_replaces_value_tags_and_expiry_but_keeps_created_at(
    storage: StorageInterface, clock: FakeClock
) -> None:
    kv = storage.kv()
    await kv.set("k", 1, ttl=10, tags={"a": "1"})
    clock.advance(5)
    await kv.set("k", 2)
    entry = await kv.get_entry("k")
    assert entry is not None
    assert (entry.value, entry.tags, entry.expires_at) == (2, {}, None)
    assert entry.created_at == T0
    assert entry.updated_at == T0 + timedelta(seconds=5)
    assert await kv.find_by_tag("a", "1") == []


async def test_times_are_aware_utc_with_millisecond_precision(storage: StorageInterface, clock: FakeClock) -> None:
    clock.advance(0.1234)
    await storage.kv().set("k", 1)
    entry = await storage.kv().get_entry("k")
    assert entry is not None
    assert entry.created_at.tzinfo is not None and entry.created_at.utcoffset() == timedelta(0)
    assert entry.created_at == T0 + timedelta(milliseconds=123)


async def test_if_not_exists_leaves_a_live_entry_unchanged(storage: StorageInterface, clock: FakeClock) -> None:
    kv = storage.kv()
    assert await kv.set("k", "first", ttl=10, tags={"t": "1"}, if_not_exists=True) is True
    clock.advance(1)
    assert await kv.set("k", "second", tags={"t": "2"}, if_not_exists=True) is False
    entry = await kv.get_entry("k")
    assert entry is not None
    assert (entry.value, entry.tags, entry.updated_at) == ("first", {"t": "1"}, T0)
    clock.advance(10)  # now expired: the next if_not_exists wins and starts a new entry
    assert await kv.set("k", "third", if_not_exists=True) is True
    entry = await kv.get_entry("k")
    assert entry is not None
    assert (entry.value, entry.created_at) == ("third", T0 + timedelta(seconds=11))


@pytest.mark.parametrize(
    "tags",
    [{"t": 1}, {1: "v"}, {"": "v"}, {"t": None}, {"t": "a\x00b"}, ["t", "v"], "t=v", {"t": "\ud800"}],
    ids=repr,
)
async def test_bad_tags_are_refused_and_store_nothing(storage: StorageInterface, tags: Any) -> None:
    with pytest.raises(InvalidArgumentError):
        await storage.kv().set("k", 1, tags=tags)
    assert await storage.kv().exists("k") is False


@pytest.mark.parametrize("ttl", [0, -1, float("nan"), float("inf"), 1e12, "10", True, 3_155_760_001])
async def test_bad_ttls_are_refused_and_store_nothing(storage: StorageInterface, ttl: Any) -> None:
    kv = storage.kv()
    with pytest.raises(InvalidArgumentError, match="100 years"):
        await kv.set("k", 1, ttl=ttl)
    assert await kv.exists("k") is False
    await kv.set("k", 1)
    with pytest.raises(InvalidArgumentError):
        await kv.expire("k", ttl)
    assert await kv.ttl("k") == -1.0


async def test_the_longest_ttl_is_accepted(storage: StorageInterface, clock: FakeClock) -> None:
    await storage.kv().set("k", 1, ttl=3_155_760_000)
    assert await storage.kv().ttl("k") == 3_155_760_000.0


# ------------------------------------------------------------------- expiry


async def test_expired_entries_are_missing_for_every_method(storage: StorageInterface, clock: FakeClock) -> None:
    kv = storage.kv("n")
    await kv.set("gone", 1, ttl=5, tags={"t": "v"})
    await kv.set("kept", 2, tags={"t": "v"})
    clock.advance(5)
    assert await kv.get("gone") is None
    assert await kv.get_entry("gone") is None
    assert await kv.exists("gone") is False
    assert await kv.get_many(["gone", "kept"]) == {"kept": 2}
    assert await kv.keys() == ["kept"]
    assert await kv.count() == 1
    assert [k async for k, _ in kv.scan()] == ["kept"]
    assert await kv.find_by_tag("t", "v") == ["kept"]
    assert [e.key for e in await kv.query(tags={"t": "v"})] == ["kept"]
    assert await kv.count_query() == 1
    assert await kv.ttl("gone") == -2.0
    assert await kv.expire("gone", 10) is False
    assert await kv.persist("gone") is False
    assert await kv.delete("gone") is False
    assert await kv.delete_many(["gone", "kept"]) == 1
    assert await storage.list_namespaces() == []


async def test_ttl_expire_and_persist(storage: StorageInterface, clock: FakeClock) -> None:
    kv = storage.kv()
    assert await kv.ttl("k") == -2.0
    await kv.set("k", {"v": 1}, tags={"t": "x"})
    assert await kv.ttl("k") == -1.0
    assert await kv.expire("k", 30) is True
    clock.advance(10)
    assert await kv.ttl("k") == pytest.approx(20.0)
    assert await kv.persist("k") is True
    assert await kv.ttl("k") == -1.0
    entry = await kv.get_entry("k")
    assert entry is not None
    assert (entry.value, entry.tags, entry.updated_at) == ({"v": 1}, {"t": "x"}, T0)  # expiry only
    assert await kv.expire("missing", 5) is False
    assert await kv.persist("missing") is False


async def test_cleanup_removes_expired_entries(storage: StorageInterface, clock: FakeClock) -> None:
    kv = storage.kv("a")
    await kv.set("x", 1, ttl=1)
    await kv.set("y", 2)
    await storage.kv("b").set("z", 3, ttl=1)
    clock.advance(2)
    stats = await storage.get_storage_stats()
    assert (stats["kv_namespace_count"], stats["kv_entry_count"], stats["expired_kv_entry_count"]) == (1, 1, 2)
    assert await kv.cleanup() == 1
    assert (await storage.cleanup())["expired_kv_entries"] == 1
    stats = await storage.get_storage_stats()
    assert (stats["kv_namespace_count"], stats["kv_entry_count"], stats["expired_kv_entry_count"]) == (1, 1, 0)
    assert await kv.keys() == ["y"]


# ------------------------------------------------------------------ batches


async def test_get_many_keeps_the_order_asked_and_skips_missing(storage: StorageInterface) -> None:
    kv = storage.kv()
    await kv.set_many({"a": 1, "b": 2, "c": 3})
    assert list((await kv.get_many(["c", "missing", "a"])).items()) == [("c", 3), ("a", 1)]
    assert await kv.get_many([]) == {}
    with pytest.raises(InvalidKeyError):
        await kv.get_many("abc")


async def test_set_many_applies_ttl_and_tags_to_all(storage: StorageInterface, clock: FakeClock) -> None:
    kv = storage.kv()
    await kv.set_many([("a", 1), ("b", 2)], ttl=10, tags={"batch": "1"})
    assert await kv.find_by_tag("batch", "1") == ["a", "b"]
    assert await kv.ttl("a") == 10.0
    await kv.set_many({})  # nothing to do


@pytest.mark.parametrize(
    "items",
    [
        {"a": 1, "b": float("nan")},
        {"a": 1, "": 2},
        {"a": 1, "b\x00": 2},
        [("a", 1), ("b",)],
        {"a": 1, "b": {"bytes": b"x"}},
    ],
    ids=["nan", "empty key", "nul key", "not a pair", "bytes"],
)
async def test_set_many_is_all_or_nothing(storage: StorageInterface, items: Any) -> None:
    kv = storage.kv()
    await kv.set("a", "before")
    with pytest.raises((SerializationError, InvalidKeyError, InvalidArgumentError)):
        await kv.set_many(items)
    assert await kv.keys() == ["a"]
    assert await kv.get("a") == "before"


async def test_set_many_refuses_a_bad_ttl_before_writing(storage: StorageInterface) -> None:
    with pytest.raises(InvalidArgumentError):
        await storage.kv().set_many({"a": 1}, ttl=0)
    assert await storage.kv().count() == 0


async def test_delete_many_counts_what_existed(storage: StorageInterface) -> None:
    kv = storage.kv()
    await kv.set_many({"a": 1, "b": 2, "c": 3})
    assert await kv.delete_many(["a", "c", "missing", "a"]) == 2
    assert await kv.keys() == ["b"]
    assert await kv.delete_many([]) == 0


async def test_clear_removes_only_its_namespace(storage: StorageInterface) -> None:
    await storage.kv("a").set_many({"x": 1, "y": 2})
    await storage.kv("b").set("x", 3)
    assert await storage.kv("a").clear() == 2
    assert await storage.kv("a").keys() == []
    assert await storage.kv("b").get("x") == 3
    assert await storage.list_namespaces() == ["b"]


# ---------------------------------------------------------- keys, scan, tags

KEYS = ["user:1", "user:10", "user:2", "user:a", "users", "admin:1", "ü:1", "[x]", "a*b", "z"]


async def _fill(storage: StorageInterface, keys: list[str] = KEYS) -> None:
    await storage.kv().set_many({key: {"key": key} for key in keys})


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("*", sorted(KEYS)),
        ("user:*", ["user:1", "user:10", "user:2", "user:a"]),
        ("user:?", ["user:1", "user:2", "user:a"]),
        ("user:[0-9]*", ["user:1", "user:10", "user:2"]),
        ("user:[^0-9]", ["user:a"]),
        ("user:[!0-9]", ["user:a"]),
        ("[[]x]", ["[x]"]),
        ("a[*]b", ["a*b"]),
        ("USER:*", []),
        ("ü*", ["ü:1"]),
        ("*1", ["admin:1", "user:1", "ü:1"]),
    ],
)
async def test_keys_and_count_match_globs(storage: StorageInterface, pattern: str, expected: list[str]) -> None:
    await _fill(storage)
    assert await storage.kv().keys(pattern) == expected
    assert await storage.kv().count(pattern) == len(expected)
    assert [k async for k, _ in storage.kv().scan(pattern)] == expected


@pytest.mark.parametrize("pattern", ["[b-a]", 5, None])
async def test_a_bad_glob_is_refused(storage: StorageInterface, pattern: Any) -> None:
    await storage.kv().set("a", 1)
    with pytest.raises(InvalidArgumentError):
        await storage.kv().keys(pattern)
    with pytest.raises(InvalidArgumentError):
        await storage.kv().count(pattern)
    with pytest.raises(InvalidArgumentError):
        [k async for k, _ in storage.kv().scan(pattern)]


async def test_scan_pages_through_more_than_one_batch(
    storage: StorageInterface, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(storage, "_kv_scan_batch", 50)  # pages of 50: the paging is what is tested
    keys = [f"k{i:04d}" for i in range(50 * 2 + 3)]
    await storage.kv().set_many({key: i for i, key in enumerate(keys)})
    seen = [(k, v) async for k, v in storage.kv().scan()]
    assert seen == [(key, i) for i, key in enumerate(keys)]
    assert [k async for k, _ in storage.kv().scan("k01*")] == [k for k in keys if k.startswith("k01")]


async def test_find_by_tag_is_sorted_and_exact(storage: StorageInterface) -> None:
    kv = storage.kv()
    await kv.set("b", 1, tags={"user": "1", "type": "web"})
    await kv.set("a", 2, tags={"user": "1"})
    await kv.set("c", 3, tags={"user": "10"})
    assert await kv.find_by_tag("user", "1") == ["a", "b"]
    assert await kv.find_by_tag("user", "") == []
    assert await kv.find_by_tag("type", "web") == ["b"]
    await kv.set("b", 1, tags={"user": "2"})
    assert await kv.find_by_tag("user", "1") == ["a"]
    await kv.delete("a")
    assert await kv.find_by_tag("user", "1") == []


# --------------------------------------------------------------------- query


async def _fill_timed(storage: StorageInterface, clock: FakeClock) -> None:
    kv = storage.kv()
    # created in this order, one second apart; "b" updated last
    for key, tags in [("c", {"type": "web"}), ("a", {"type": "api"}), ("b", {"type": "web", "vip": "y"})]:
        await kv.set(key, key, tags=tags)
        clock.advance(1)
    await kv.set("c", "c2", tags={"type": "web"})
    clock.advance(1)
    await kv.set("user:9", 9)


async def test_query_orders_and_pages(storage: StorageInterface, clock: FakeClock) -> None:
    await _fill_timed(storage, clock)
    kv = storage.kv()

    async def keys(**kwargs: Any) -> list[str]:
        return [entry.key for entry in await kv.query(**kwargs)]

    assert await keys() == ["a", "b", "c", "user:9"]
    assert await keys(order_by="created_at") == ["c", "a", "b", "user:9"]
    assert await keys(order_by="updated_at") == ["a", "b", "c", "user:9"]
    assert await keys(order_by="updated_at", descending=True) == ["user:9", "c", "b", "a"]
    assert await keys(descending=True, limit=2) == ["user:9", "c"]
    assert await keys(limit=2, offset=1) == ["b", "c"]
    assert await keys(offset=10) == []
    assert await keys(limit=0) == []
    assert await kv.count_query(limit=1, offset=1) == 4


async def test_query_filters_combine(storage: StorageInterface, clock: FakeClock) -> None:
    await _fill_timed(storage, clock)
    kv = storage.kv()

    async def keys(**kwargs: Any) -> list[str]:
        found = [entry.key for entry in await kv.query(**kwargs)]
        if "limit" not in kwargs:
            assert await kv.count_query(**kwargs) == len(found)
        return found

    assert await keys(tags={"type": "web"}) == ["b", "c"]
    assert await keys(tags={"type": "web", "vip": "y"}) == ["b"]
    assert await keys(tags={"type": "web", "vip": "n"}) == []
    assert await keys(prefix="user:") == ["user:9"]
    assert await keys(prefix="") == ["a", "b", "c", "user:9"]
    assert await keys(since=T0 + timedelta(seconds=2)) == ["b", "c", "user:9"]  # inclusive
    assert await keys(until=T0 + timedelta(seconds=3)) == ["a", "b"]  # exclusive
    assert await keys(since=START + 2, until=START + 3) == ["b"]  # epoch seconds
    assert await keys(tags={"type": "web"}, order_by="updated_at", descending=True, limit=1) == ["c"]


async def test_query_returns_entries(storage: StorageInterface, clock: FakeClock) -> None:
    await storage.kv().set("k", {"v": 1}, ttl=60, tags={"t": "1"})
    [entry] = await storage.kv().query()
    assert entry == Entry("k", {"v": 1}, {"t": "1"}, T0, T0, T0 + timedelta(seconds=60))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"order_by": "value"},
        {"limit": -1},
        {"offset": -1},
        {"limit": 1.5},
        {"offset": None},
        {"since": "yesterday"},
        {"since": datetime(2026, 1, 1)},  # naive: ambiguous
        {"prefix": 5},
        {"tags": {"t": 5}},
    ],
    ids=repr,
)
async def test_bad_query_arguments_are_refused(storage: StorageInterface, kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgumentError):
        await storage.kv().query(**kwargs)
    with pytest.raises(InvalidArgumentError):
        await storage.kv().count_query(**kwargs)


async def test_query_and_count_agree_with_the_reference_on_many_entries(
    storage: StorageInterface, clock: FakeClock
) -> None:
    # The reference semantics (KVSelect.apply) against the backend's native answer.
    kv = storage.kv()
    records: list[KVRecord] = []
    for i in range(60):
        key = f"{'user' if i % 3 else 'team'}:{i % 17:02d}:{i}"
        tags = {"parity": str(i % 2), "bucket": str(i % 5)}
        ttl = 5 if i % 7 == 0 else None
        now = round(clock.now * 1000)
        await kv.set(key, i, tags=tags, ttl=ttl)
        records.append(KVRecord(key, i, tags, now, now, None if ttl is None else now + ttl * 1000))
        clock.advance(0.25)
    now_ms = round(clock.now * 1000)
    for select in [
        KVSelect(tags=(("parity", "1"),)),
        KVSelect(tags=(("bucket", "3"), ("parity", "0")), order_by="updated_at", descending=True),
        KVSelect(prefix="user:0", order_by="created_at", limit=5, offset=2),
        KVSelect(since_ms=round((START + 3) * 1000), until_ms=round((START + 9) * 1000), descending=True),
    ]:
        expected = [r.key for r in select.apply(records, now_ms)]
        since = None if select.since_ms is None else select.since_ms / 1000
        until = None if select.until_ms is None else select.until_ms / 1000
        found = await kv.query(
            prefix=select.prefix, tags=dict(select.tags), since=since, until=until, order_by=select.order_by,
            descending=select.descending, limit=select.limit, offset=select.offset,
        )  # fmt: skip
        assert [e.key for e in found] == expected
        assert expected  # each case selects something


# --------------------------------------------------------- whole-store views


async def test_stats_count_collections(storage: StorageInterface, clock: FakeClock) -> None:
    await storage.kv("a").set_many({"x": 1, "y": 2})
    await storage.kv("b").set("z", 3, ttl=1)
    await storage.kv("c").set("w", 4, ttl=1)
    clock.advance(1)
    stats = await storage.get_storage_stats()
    assert stats["kv_namespace_count"] == 1
    assert stats["kv_entry_count"] == 2
    assert stats["expired_kv_entry_count"] == 2
    assert stats["total_bytes"] > 0


async def test_verify_is_clean_with_collections(storage: StorageInterface) -> None:
    await storage.kv("a").set("x", {"v": [1, 2]}, tags={"t": "1"}, ttl=100)
    assert await storage.verify() == []


# ---------------------------------------------------------- reference helpers


def test_glob_compiles_like_the_documented_rules() -> None:
    assert compile_pattern("a?c").fullmatch("abc")
    assert not compile_pattern("a?c").fullmatch("ac")
    assert compile_pattern("[]]").fullmatch("]")
    assert compile_pattern("[!]]").fullmatch("x")
    assert compile_pattern("a[").fullmatch("a[")
    assert compile_pattern("*").fullmatch("line\nbreak")
    assert compile_pattern("a.b").fullmatch("a.b") and not compile_pattern("a.b").fullmatch("axb")
    assert compile_pattern("[a-c]").fullmatch("b") and not compile_pattern("[a-c]").fullmatch("d")


# What this module adds to the suite: every test above, in the order they are defined (so a
# new test cannot be left out of what `from connectome_storage.testing import *` runs).
__all__ = [name for name in list(globals()) if name.startswith("test_")]
