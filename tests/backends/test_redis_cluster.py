"""RedisStorage on a real Redis Cluster (tests/redis_server.py: three masters, three replicas on
127.0.0.1): how to select it, where the keys land, WAIT, health, and a failover under writers.
The whole conformance suite also runs on the cluster (tests/test_conformance*.py)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio

from connectome_storage import RedisStorage, create_redis_storage, create_storage_from_env
from connectome_storage.errors import BackendUnavailableError, StorageError, StorageIOError
from connectome_storage.interface import Kind

from ..conftest import FakeClock
from ..redis_server import RedisCluster, RedisServer, redis_cluster
from .redis_fixtures import prefix_fixture

__all__ = ["prefix_fixture", "redis_cluster"]


@pytest.fixture(name="make")
def make_fixture(redis_cluster: RedisCluster, prefix: str, clock: FakeClock) -> Callable[..., RedisStorage]:
    def build(**options: Any) -> RedisStorage:
        options = {"key_prefix": prefix, "clock": clock, **options}
        storage = create_redis_storage(options.pop("url", redis_cluster.url), **options)
        assert isinstance(storage, RedisStorage)
        return storage

    return build


@pytest.fixture(name="raw")
async def raw_fixture(redis_cluster: RedisCluster) -> AsyncIterator[Any]:
    """A plain cluster client to look at what the storage wrote."""
    client = redis.asyncio.RedisCluster(host="127.0.0.1", port=redis_cluster.nodes[0].port)
    yield client
    await client.aclose()


async def keyslot(raw: Any, key: str) -> int:
    """The slot the server computes for ``key`` (CLUSTER KEYSLOT), not the client's own sum."""
    return int(await raw.execute_command("CLUSTER KEYSLOT", key, target_nodes=raw.get_random_node()))


async def test_cluster_is_selected_by_option_url_environment_or_client(
    redis_cluster: RedisCluster, prefix: str
) -> None:
    port = redis_cluster.nodes[1].port
    client = redis.asyncio.RedisCluster(host="127.0.0.1", port=port)
    storages = [
        create_redis_storage(f"redis://127.0.0.1:{port}", cluster=True, key_prefix=prefix),
        create_redis_storage(redis_cluster.url, key_prefix=prefix),
        create_storage_from_env(
            {
                "CONNECTOME_STORAGE_TYPE": "redis",
                "CONNECTOME_STORAGE_REDIS_URL": f"redis://127.0.0.1:{port}",
                "CONNECTOME_STORAGE_REDIS_CLUSTER": "true",
                "CONNECTOME_STORAGE_KEY_PREFIX": prefix,
            }
        ),
        create_redis_storage(client=client, key_prefix=prefix),
    ]
    for index, storage in enumerate(storages):
        async with storage:
            assert storage.supports("sharded")
            await storage.store_system_state(f"s{index}", index)
            health = await storage.health_check()
            assert health["status"] == "healthy", health
            assert health["details"]["cluster"]["masters"] == health["details"]["cluster"]["masters_up"] == 3
            assert health["details"]["cluster"]["cluster_slots_ok"] == 16384
    assert await client.ping()  # the caller's client is still open: shutdown() left it alone
    assert await storages[0].__aenter__() and await storages[0].list_system_states() == ["s0", "s1", "s2", "s3"]
    await storages[0].shutdown()
    await client.aclose()


async def test_each_entity_and_its_index_entry_share_one_slot(make: Callable[..., RedisStorage], raw: Any) -> None:
    async with make() as storage:
        store = storage.conversation_store()
        await store.save("conv/1", [{"role": "user", "content": "hi"}], ttl=600, metadata={"a": 1})
        await storage.store_conversation("conv/1", {"title": "t"})
        await storage.store_chunks("conv/1", [{"c": 1}])
        await storage.store_memory("conv/1", "m1", {"text": "x"})
        await storage.store_reasoning_chain("agent 7", {"step": 1})
        await storage.store_cache("cache:key", {"v": 1}, ttl=60)
        await storage.store_system_state("state", 1)
        await storage.kv("sessions").set("s1", {"v": 1}, tags={"user": "u1"}, ttl=60)
        groups = {
            "conversation": [
                *storage._part_keys("conv/1"),
                storage.index_of(Kind.CONVERSATION, "conv/1"),
                storage.expiry_index_of("conv/1"),
            ],
            "agent": [
                storage.key_of(Kind.REASONING_CHAINS, "agent 7"),
                storage.index_of(Kind.REASONING_CHAINS, "agent 7"),
            ],
            "cache": [storage.key_of(Kind.CACHE, "cache:key"), storage.index_of(Kind.CACHE, "cache:key")],
            "system": [storage.key_of(Kind.SYSTEM, "state"), storage.index_of(Kind.SYSTEM, "state")],
            "namespace": [
                *storage._kv_indexes("sessions"),
                storage._kv_ns_index("sessions"),
                storage.kv_key_of("sessions", "s1"),
                storage.kv_tag_key("sessions", "user", "u1"),
            ],
        }
        for name, keys in groups.items():
            assert await raw.exists(*keys) == len(keys), name  # every key named is really used
            assert len({await keyslot(raw, key) for key in keys}) == 1, name
        # Every bucket of every index is one slot: an index with its expiry index.
        for index, expiry, head, _ in storage._layout.conv_buckets()[:16]:
            assert await keyslot(raw, index) == await keyslot(raw, expiry) == await keyslot(raw, head + "x:meta")


async def test_the_data_of_200_conversations_is_spread_over_every_master(
    make: Callable[..., RedisStorage], redis_cluster: RedisCluster, prefix: str
) -> None:
    ids = [f"conversation-{n}" for n in range(200)]
    async with make() as storage:
        for conversation_id in ids:
            await storage.append_raw_messages(conversation_id, [{"n": conversation_id}])
        assert sorted(await storage.list_conversations()) == sorted(ids)
        await storage.store_cache("k", 1, ttl=60)
        await storage.store_system_state("s", 1)
        stats = await storage.get_storage_stats()
        assert (stats["conversation_count"], stats["raw_message_count"]) == (200, 200)
    masters = redis_cluster.masters()
    assert len(masters) == 3
    per_master, total_bytes = [], 0
    for master in masters:  # what each master holds of this prefix (SCAN on that node alone)
        client = redis.asyncio.Redis(port=master.port)
        per_master.append(len([key async for key in client.scan_iter(match=f"{prefix}conv:*:raw", count=1000)]))
        total_bytes += sum([await client.memory_usage(k) async for k in client.scan_iter(match=f"{prefix}*")])
        await client.aclose()
    # The stats' scripts measured every key of the prefix, each on the master of its slot.
    assert stats["total_bytes"] == total_bytes
    assert sum(per_master) == 200
    assert all(count > 20 for count in per_master), per_master


async def test_wait_replicas_waits_for_a_replica_and_says_when_too_few_answered(
    make: Callable[..., RedisStorage], redis_cluster: RedisCluster
) -> None:
    async def waits() -> int:
        total = 0
        for master in redis_cluster.masters():
            client = redis.asyncio.Redis(port=master.port)
            total += (await client.info("commandstats")).get("cmdstat_wait", {}).get("calls", 0)
            await client.aclose()
        return total

    async with make(wait_replicas=1) as storage:
        before = await waits()  # initialize() wrote (and waited for) the serializer marker
        await storage.append_raw_messages("c1", [{"n": 1}])
        await storage.store_system_state("s", 1)
        await storage.kv("ns").set("k", 1)
        async with storage.transaction() as tx:
            await tx.append_raw_messages("c1", [{"n": 2}])
        await storage.message_store().mark_read("agent", ["m1"])
    assert await waits() - before == 5  # one WAIT after each write, on its master's connection
    async with make(wait_replicas=2, connection_timeout=0.6) as storage:  # each master has one replica
        with pytest.raises(StorageIOError, match=r"only 1 of the 2 replicas.*wait_replicas"):
            await storage.append_raw_messages("c1", [{"n": 3}])
        # Applied on the master all the same: WAIT narrows the window, it does not undo.
        assert await storage.load_raw_messages("c1") == [{"n": 1}, {"n": 2}, {"n": 3}]


async def test_wait_replicas_on_a_single_server_without_replicas(redis_server: RedisServer, prefix: str) -> None:
    async with create_redis_storage(redis_server.url, key_prefix=prefix, wait_replicas=1, connection_timeout=0.6) as s:
        with pytest.raises(StorageIOError, match="only 0 of the 1 replicas"):
            await s.store_system_state("state", 1)
        assert await s.load_system_state("state") == 1


# ------------------------------------------------------------------ failover


@pytest.fixture(name="own_cluster")
def own_cluster_fixture(tmp_path: Path) -> Iterator[RedisCluster]:
    """A cluster for one test alone, free to lose a master."""
    cluster = RedisCluster(tmp_path / "own-cluster")
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


async def test_writers_carry_on_through_a_master_failover_and_lose_no_waited_write(
    own_cluster: RedisCluster, prefix: str
) -> None:
    """SIGKILL a master while writers append with wait_replicas=1: errors meanwhile are
    StorageErrors (never redis-py's), its replica takes over, the old master comes back as its
    replica, the writers carry on, and every append that returned (so a replica had it) is
    there afterwards, once, in order."""
    acknowledged: dict[str, list[int]] = {}
    errors: list[BaseException] = []
    stop = asyncio.Event()
    storage = create_redis_storage(own_cluster.url, key_prefix=prefix, wait_replicas=1, connection_timeout=1)

    async def writer(conversation_id: str) -> None:
        done = acknowledged.setdefault(conversation_id, [])
        n = 0
        while not stop.is_set():
            n += 1
            try:
                await storage.append_raw_messages(conversation_id, [{"n": n}])
                done.append(n)
            except StorageError as e:
                errors.append(e)
                await asyncio.sleep(0.05)
            except BaseException as e:  # anything else is a failure of the test
                errors.append(e)
                raise
            await asyncio.sleep(0.005)

    async with storage:
        writers = [asyncio.create_task(writer(f"c{i}")) for i in range(12)]
        await asyncio.sleep(0.3)
        victim = own_cluster.masters()[0]
        victim.process.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        victim.process.wait()  # type: ignore[union-attr]
        survivors = [node for node in own_cluster.nodes if node is not victim]
        await asyncio.to_thread(
            own_cluster.wait_until,
            lambda: (
                len(own_cluster.masters()) == 3
                and all(own_cluster.info(node).get("cluster_state") == "ok" for node in survivors)
            ),
            "promote a replica",
        )
        # The new master has no replica yet: its writes are applied but WAIT 1 says so
        # (StorageIOError) until the old master is back, as a replica of the new one.
        await asyncio.to_thread(victim.start)
        await asyncio.to_thread(own_cluster.wait_until, own_cluster.replicas_synced, "sync the returned node")
        counts = {c: len(done) for c, done in acknowledged.items()}
        for _ in range(400):  # until every writer stored again after the failover
            if all(len(acknowledged[c]) > counts[c] for c in counts):
                break
            await asyncio.sleep(0.025)
        stop.set()
        await asyncio.gather(*writers)
        assert all(len(acknowledged[c]) > counts[c] for c in counts), f"a writer did not recover: {errors[-3:]}"
        assert errors, "the kill happened while writers wrote: some write must have failed"
        assert all(isinstance(e, BackendUnavailableError | StorageIOError) for e in errors), errors
        for conversation_id, done in acknowledged.items():
            stored = [message["n"] for message in await storage.load_raw_messages(conversation_id)]
            assert len(stored) == len(set(stored)), "a write was applied twice"
            assert stored == sorted(stored)
            assert set(done) <= set(stored), f"{conversation_id} lost an acknowledged write"
        assert (await storage.health_check())["status"] == "healthy"
