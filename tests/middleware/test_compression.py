"""Compression on every backend: large values stored compressed, small ones as they are."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from connectome_storage import StorageInterface
from connectome_storage.errors import ConfigError, CorruptedDataError
from connectome_storage.middleware import Compression

MakeStorage = Callable[..., StorageInterface]

BIG = {"content": "the same sentence over and over. " * 300}  # ~10 KB of JSON
SMALL = {"content": "hi"}


def compressed(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"$compressed"} and value["$compressed"].startswith("zstd:")


async def test_large_values_are_compressed_and_small_ones_stay_readable(make_storage: MakeStorage) -> None:
    async with make_storage(middleware=[Compression()]) as storage:
        await storage.store_conversation("c1", BIG)
        await storage.store_raw_messages("c1", [SMALL, BIG])
        assert await storage.append_raw_messages("c1", [BIG]) == 3
        await storage.store_memory("c1", "m1", BIG)
        await storage.store_chunks("c1", [BIG, SMALL])
        await storage.store_reasoning_chain("a", BIG)
        await storage.store_cache("k", BIG)
        await storage.store_system_state("s", "x" * 5000)
        await storage.kv("ns").set("big", BIG, tags={"t": "1"})
        await storage.kv("ns").set("small", SMALL)

        assert await storage.load_conversation("c1") == BIG
        assert await storage.load_raw_messages("c1") == [SMALL, BIG, BIG]
        assert await storage.load_memories("c1") == [{**BIG, "memory_id": "m1"}]
        assert await storage.load_chunks("c1") == [BIG, SMALL]
        assert await storage.load_reasoning_chains("a") == [BIG]
        assert await storage.load_cache("k") == BIG
        assert await storage.load_system_state("s") == "x" * 5000
        assert await storage.kv("ns").get_many(["big", "small"]) == {"big": BIG, "small": SMALL}

    async with make_storage() as plain:
        assert compressed(await plain.load_conversation("c1"))
        messages = await plain.load_raw_messages("c1")
        assert messages[0] == SMALL and compressed(messages[1]) and compressed(messages[2])
        (memory,) = await plain.load_memories("c1")
        assert memory["memory_id"] == "m1" and compressed({"$compressed": memory["$compressed"]})
        assert len(memory["$compressed"]) < 1000
        chunks = await plain.load_chunks("c1")
        assert compressed(chunks[0]) and chunks[1] == SMALL
        assert compressed(await plain.load_cache("k"))
        assert compressed(await plain.load_system_state("s"))
        assert compressed(await plain.kv("ns").get("big")) and await plain.kv("ns").get("small") == SMALL
        assert await plain.kv("ns").find_by_tag("t", "1") == ["big"]


async def test_the_threshold_decides(make_storage: MakeStorage) -> None:
    value = {"content": "a" * 200}
    size = len(b'{"content":""}') + 200  # its canonical compact JSON
    async with make_storage(middleware=[Compression(threshold=size)]) as storage:
        await storage.store_system_state("at", value)
    async with make_storage(middleware=[Compression(threshold=size - 1)]) as storage:
        await storage.store_system_state("over", value)
        assert await storage.load_system_state("over") == value
    async with make_storage() as plain:
        assert await plain.load_system_state("at") == value
        assert compressed(await plain.load_system_state("over"))


async def test_a_value_that_does_not_shrink_is_stored_as_it_is(make_storage: MakeStorage) -> None:
    import base64
    import os

    noise = base64.b64encode(os.urandom(6000)).decode()
    async with make_storage(middleware=[Compression(threshold=100)]) as storage:
        await storage.store_system_state("noise", noise)
    async with make_storage() as plain:
        assert await plain.load_system_state("noise") == noise


async def test_a_damaged_compressed_value_is_corrupted_data_naming_the_entity(make_storage: MakeStorage) -> None:
    async with make_storage() as plain:
        await plain.store_system_state("s", {"$compressed": "zstd:bm90IHpzdGQ="})
        await plain.store_conversation("c1", {"$compressed": "lz4:AAAA"})
    async with make_storage(middleware=[Compression()]) as storage:
        with pytest.raises(CorruptedDataError, match="system state 's'"):
            await storage.load_system_state("s")
        with pytest.raises(CorruptedDataError, match="lz4"):
            await storage.load_conversation("c1")


@pytest.mark.parametrize("options", [{"threshold": -1}, {"threshold": "4k"}, {"level": 0}, {"level": 23}])
def test_bad_options_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        Compression(**options)
