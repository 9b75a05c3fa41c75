"""What only RedisStorage's key-value collections do: the native key layout, walks that
never use KEYS or SCAN, one round trip per operation, indexes that forget entries Redis
expired on its own. Everything runs against a real redis-server (tests/redis_server.py).
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio

from connectome_storage import RedisStorage
from connectome_storage.errors import CorruptedDataError
from connectome_storage.kv import KVSelect
from connectome_storage.naming import encode_name

from ..conftest import FakeClock
from ..redis_server import RedisServer
from .redis_fixtures import commands_of, eventually, make_fixture, prefix_fixture, raw_fixture, storage_fixture  # noqa: F401


def _round_trips(commands: list[dict[str, Any]]) -> list[str]:
    """Commands the client sent (those a script ran show up with client type lua)."""
    return [c["command"].split()[0].upper() for c in commands if c.get("client_type") != "lua"]


# --------------------------------------------------------------------- layout


async def test_native_layout_hash_tag_sets_two_zsets_and_pexpire(
    storage: RedisStorage, raw: Any, prefix: str, clock: FakeClock
) -> None:
    kv = storage.kv("sessions")
    await kv.set("user:123", {"name": "Alice"}, ttl=3600, tags={"userId": "123", "type": "web"})
    await kv.set("user:456", [1, 2], tags={"type": "web"})
    now_ms = round(clock() * 1000)
    base = f"{prefix}kv:{{sessions}}:"

    entry = await raw.hgetall(f"{base}e:user%3A123")
    assert entry == {
        b"value": b'{"name":"Alice"}', b"tags": b'{"type":"web","userId":"123"}',
        b"created_ms": str(now_ms).encode(), b"updated_ms": str(now_ms).encode(),
        b"expires_ms": str(now_ms + 3_600_000).encode(),
    }  # fmt: skip
    assert b"expires_ms" not in await raw.hgetall(f"{base}e:user%3A456")
    # Redis expires the hash itself, after the time left on the storage's (fake) clock.
    assert 3_590_000 < await raw.pttl(f"{base}e:user%3A123") <= 3_600_000
    assert await raw.pttl(f"{base}e:user%3A456") == -1
    assert await raw.smembers(f"{base}tag:type:web") == {b"user:123", b"user:456"}
    assert await raw.smembers(f"{base}tag:userId:123") == {b"user:123"}
    assert await raw.zrange(f"{base}keys", 0, -1, withscores=True) == [(b"user:123", 0.0), (b"user:456", 0.0)]
    assert await raw.zrange(f"{base}exp", 0, -1, withscores=True) == [(b"user:123", float(now_ms + 3_600_000))]
    assert await raw.hgetall(f"{base}etags") == {b"user:123": b'{"type":"web","userId":"123"}'}
    assert await raw.smembers(f"{prefix}idx:kv") == {b"sessions"}

    # Replacing tags moves the key between tag sets; persist() ends the native expiry.
    await kv.set("user:123", 1, ttl=60, tags={"type": "app"})
    assert await raw.smembers(f"{base}tag:type:web") == {b"user:456"}
    assert await raw.exists(f"{base}tag:userId:123") == 0
    assert await kv.persist("user:123")
    assert await raw.pttl(f"{base}e:user%3A123") == -1
    assert await raw.zcard(f"{base}exp") == 0
    assert await raw.hlen(f"{base}etags") == 0
    assert await kv.clear() == 2
    assert await raw.exists(f"{base}keys", f"{base}tag:type:app", f"{base}tag:type:web", f"{prefix}idx:kv") == 0


async def test_the_scripts_name_keys_exactly_as_naming_encode_name(storage: RedisStorage) -> None:
    names = [
        "plain", "a:b", "{x}", "with space", ".hidden", "trail.", "..", ".", "CON", "con.txt", "Lpt1.log",
        "COM0", "CONIN$", "aux_", "%41", "é", "日本語", "😀", "a/b\\c", "tab\there", "-_.~", "nul.", "x" * 80,
    ]  # fmt: skip
    rng = random.Random(7)
    alphabet = "aZ09._-:{}%/ .é日😀\n$"
    names += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12))) for _ in range(300)]
    encoded = await storage._script("kv_encode", "names", [], ["base", *names])
    assert [e.decode() for e in encoded] == [encode_name(name) for name in names]


async def test_keys_sort_in_code_point_order_like_python(storage: RedisStorage) -> None:
    kv = storage.kv()
    keys = ["b", "a", "é", "\uffff", "😀", "Z", "a\x01", "aa", "日本"]
    await kv.set_many({key: key for key in keys})
    assert await kv.keys() == sorted(keys)
    assert [key async for key, _ in kv.scan()] == sorted(keys)
    assert [e.key for e in await kv.query(prefix="a", limit=2)] == ["a", "a\x01"]


# ---------------------------------------------------- native answers = reference


async def test_native_queries_answer_what_the_reference_selection_answers(
    storage: RedisStorage, clock: FakeClock
) -> None:
    kv = storage.kv("ref")
    rng = random.Random(12)
    for round_ in range(5):
        items = {f"{rng.choice(['user:', 'u', 'item:', ''])}{rng.randint(0, 3000)}": round_ for _ in range(500)}
        for key, value in items.items():
            tags = {"color": rng.choice(["red", "blue"]), "size": rng.choice(["s", "m", "l"])}
            ttl = rng.choice([None, None, 5, 50])
            await kv.set(key, value, ttl=ttl, tags=tags if rng.random() < 0.7 else None)
        clock.advance(7)
    now_ms = round(clock() * 1000)
    everything = await storage._kv_select("ref", KVSelect(), now_ms)
    every = {r.key: r for r in await storage._kv_select("ref", KVSelect(after_key=""), -(2**62))}
    assert len(everything) < len(every)  # some expired on the clock are still stored
    selects = [
        KVSelect(prefix="user:", limit=10), KVSelect(pattern="u*1?", offset=3), KVSelect(pattern="[iu]*"),
        KVSelect(tags=(("color", "red"),), limit=10), KVSelect(tags=(("color", "red"), ("size", "m"))),
        KVSelect(tags=(("color", "blue"),), prefix="item:", order_by="updated_at", descending=True, limit=7),
        KVSelect(order_by="created_at", limit=25, offset=10), KVSelect(order_by="key", descending=True, limit=5),
        KVSelect(since_ms=now_ms - 15_000, until_ms=now_ms - 5_000), KVSelect(after_key="user:2", limit=300),
        KVSelect(prefix="user:", pattern="item:*"), KVSelect(pattern="*"), KVSelect(prefix="zzz"),
    ]  # fmt: skip
    for select in selects:
        expected = select.apply(every.values(), now_ms)
        assert await storage._kv_select("ref", select, now_ms) == expected, select
        unpaged = select.unpaged()
        assert await storage._kv_keys("ref", unpaged, now_ms) == [r.key for r in unpaged.apply(every.values(), now_ms)]
        assert await storage._kv_count("ref", unpaged, now_ms) == len(unpaged.apply(every.values(), now_ms))
    scanned = [key async for key, _ in kv.scan("user:*")]
    assert scanned == [r.key for r in KVSelect(pattern="user:*").apply(every.values(), now_ms)]
    assert len(scanned) > 256  # more than one scan batch


async def test_a_caller_client_with_decoded_replies_works_and_stays_open(
    make: Callable[..., RedisStorage], redis_server: RedisServer
) -> None:
    client = redis.asyncio.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        async with make(client=client) as storage:
            kv = storage.kv()
            await kv.set_many({f"k{i:04}": i for i in range(2500)}, tags={"t": "x"})
            assert [v async for _, v in kv.scan()] == list(range(2500))
            assert await kv.count("k1*") == 1000
            assert (await kv.get_entry("k0007")) is not None
            assert len(await kv.find_by_tag("t", "x")) == 2500
        assert await client.ping()  # shutdown() left the caller's client open
    finally:
        await client.aclose()


# ------------------------------------------------------------------ commands


async def test_no_kv_operation_uses_keys_or_scan(storage: RedisStorage, raw: Any, clock: FakeClock) -> None:
    async def calls(command: str) -> int:
        return int((await raw.info("commandstats")).get(f"cmdstat_{command}", {}).get("calls", 0))

    before = {command: await calls(command) for command in ("keys", "scan", "zrangebylex", "sinter")}
    kv = storage.kv("n")
    await kv.set_many({f"user:{i}": i for i in range(50)}, ttl=10, tags={"a": "1", "b": "2"})
    await kv.set("other", 1)
    clock.advance(20)
    await kv.set("user:late", 2, tags={"a": "1"})
    assert await kv.keys("user:*") == ["user:late"]
    assert await kv.count() == 2
    assert [k async for k, _ in kv.scan()] == ["other", "user:late"]
    assert await kv.find_by_tag("a", "1") == ["user:late"]
    assert len(await kv.query(tags={"a": "1", "b": "2"})) == 0
    assert await kv.count_query(prefix="user:", order_by="updated_at") == 1
    assert await storage.list_namespaces() == ["n"]
    stats = await storage.get_storage_stats()
    assert (stats["kv_entry_count"], stats["expired_kv_entry_count"]) == (2, 50)
    assert await storage.verify() == []
    assert (await storage.cleanup())["expired_kv_entries"] == 50
    assert await kv.clear() == 2
    assert await calls("keys") == before["keys"]
    assert await calls("scan") == before["scan"]
    assert await calls("zrangebylex") > before["zrangebylex"]  # proof commandstats saw the walks
    assert await calls("sinter") > before["sinter"]


async def test_each_operation_is_one_round_trip(storage: RedisStorage, raw: Any) -> None:
    kv = storage.kv("trips")
    await kv.set_many({f"k{i}": i for i in range(20)}, tags={"t": "1"})
    operations: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
        ("set", lambda: kv.set("a", 1, ttl=60, tags={"x": "y"})),
        ("set if_not_exists", lambda: kv.set("a", 2, if_not_exists=True)),
        ("get", lambda: kv.get("a")),
        ("get_entry", lambda: kv.get_entry("a")),
        ("exists", lambda: kv.exists("a")),
        ("ttl", lambda: kv.ttl("a")),
        ("expire", lambda: kv.expire("a", 10)),
        ("persist", lambda: kv.persist("a")),
        ("get_many", lambda: kv.get_many(["a", "k1", "k2", "missing"])),
        ("set_many", lambda: kv.set_many({"b": 1, "c": 2, "d": 3}, ttl=5, tags={"t": "1"})),
        ("delete_many", lambda: kv.delete_many(["b", "c", "missing"])),
        ("delete", lambda: kv.delete("d")),
        ("keys", lambda: kv.keys("k1*")),
        ("count", lambda: kv.count()),
        ("find_by_tag", lambda: kv.find_by_tag("t", "1")),
        ("query", lambda: kv.query(tags={"t": "1"}, order_by="updated_at", limit=3)),
        ("query by key", lambda: kv.query(prefix="k", limit=3)),
        ("count_query", lambda: kv.count_query(prefix="k")),
    ]
    for name, operation in operations:
        await operation()  # first use loads the script (EVALSHA, SCRIPT LOAD, EVALSHA)
        sent = _round_trips(await commands_of(raw, storage, operation))
        assert len(sent) == 1, (name, sent)
        assert sent[0] in ("EVALSHA", "HMGET", "MULTI"), (name, sent)


# ----------------------------------------------------------- native expiry


@pytest.mark.parametrize("clock_kind", ["real", "frozen"])
async def test_entries_redis_expired_leave_every_index(
    make: Callable[..., RedisStorage], raw: Any, prefix: str, clock: FakeClock, clock_kind: str
) -> None:
    # Redis expires the hash 50 ms after the write, on its own. With the real clock the
    # storage also sees it expire; with a frozen one it would still be live on the storage
    # clock, so only the scripts' check that the hash exists keeps it out of every answer.
    async with make(clock=time.time if clock_kind == "real" else clock) as storage:
        kv = storage.kv("native")
        await kv.set("gone", 1, ttl=0.05, tags={"color": "red"})
        await kv.set("stays", 2, tags={"color": "red"})
        base = f"{prefix}kv:{{native}}:"
        assert await eventually(lambda: _absent(raw, f"{base}e:gone"))
        # The hash is gone while the indexes still list it: the scripts must not trust them.
        assert await raw.zscore(f"{base}keys", "gone") is not None
        assert await raw.sismember(f"{base}tag:color:red", "gone")
        assert await kv.get("gone") is None
        assert await kv.keys() == ["stays"]
        assert await kv.find_by_tag("color", "red") == ["stays"]
        assert [e.key for e in await kv.query(tags={"color": "red"})] == ["stays"]
        assert await kv.count() == 1
        assert [k async for k, _ in kv.scan()] == ["stays"]
        await kv.set("gone2", 1, ttl=0.05, tags={"color": "blue"})
        assert await eventually(lambda: _absent(raw, f"{base}e:gone2"))
        assert await raw.zscore(f"{base}keys", "gone2") is not None  # nothing has met it yet
        removed = (await storage.cleanup())["expired_kv_entries"]
        assert removed == 1
        for index in ("keys", "exp"):
            assert await raw.zrange(f"{base}{index}", 0, -1) == ([b"stays"] if index == "keys" else [])
        assert await raw.exists(f"{base}tag:color:blue", f"{base}etags") == 0
        assert await raw.smembers(f"{base}tag:color:red") == {b"stays"}
        assert await kv.count() == 1


async def _absent(raw: Any, key: str) -> bool:
    return int(await raw.exists(key)) == 0


# ---------------------------------------------------------------- corrupt data


async def test_a_corrupt_entry_is_named_counted_reported_and_repaired_by_set(storage: RedisStorage, raw: Any) -> None:
    kv = storage.kv("bad")
    await kv.set_many({"good": 1, "broken": 2, "wrong": 3})
    broken, wrong = storage.kv_key_of("bad", "broken"), storage.kv_key_of("bad", "wrong")
    await raw.hset(broken, "value", "{not json")
    await raw.delete(wrong)
    await raw.set(wrong, "a string, not a hash")
    with pytest.raises(CorruptedDataError, match="broken"):
        await kv.get("broken")
    with pytest.raises(CorruptedDataError, match="wrong"):
        await kv.get("wrong")
    with pytest.raises(CorruptedDataError, match=r"broken|wrong"):
        await kv.query()
    assert await kv.get("good") == 1
    problems = await storage.verify()
    assert sorted(p.location for p in problems) == sorted([f"{broken} value", wrong])
    stats = await storage.get_storage_stats()
    assert stats["unreadable_count"] == 2
    await kv.set("broken", 4)
    await kv.set("wrong", 5)
    assert await kv.get_many(["good", "broken", "wrong"]) == {"good": 1, "broken": 4, "wrong": 5}
    assert await storage.verify() == []
