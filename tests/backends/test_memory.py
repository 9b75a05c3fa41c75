"""What only MemoryStorage does: LRU eviction of whole conversations, size(), no persistence."""

from __future__ import annotations

import pytest

from connectome_storage import MemoryStorage, create_memory_storage, create_storage_from_env
from connectome_storage.errors import ConfigError


async def test_least_recently_used_conversation_is_evicted_whole() -> None:
    async with create_memory_storage(max_conversations=2) as storage:
        assert isinstance(storage, MemoryStorage)
        await storage.store_conversation("a", {"n": 1})
        await storage.store_memory("a", "m", {"text": "x"})
        await storage.append_raw_messages("b", [{"n": 1}])
        await storage.load_conversation("a")  # a is now more recent than b
        await storage.store_chunks("c", [{"start": 0}])
        assert await storage.list_conversations() == ["a", "c"]
        assert await storage.load_raw_messages("b") == []
        assert storage.size() == 2
        await storage.append_raw_messages("c", [{"n": 2}])  # c most recent; a least
        await storage.store_conversation("d", {})
        assert await storage.list_conversations() == ["c", "d"]
        assert await storage.load_memories("a") == []  # every part went at once
        assert await storage.load_conversation("a") is None


async def test_reads_of_a_missing_conversation_do_not_count_as_use() -> None:
    async with create_memory_storage(max_conversations=1) as storage:
        await storage.store_conversation("a", {})
        assert await storage.load_conversation("ghost") is None
        assert storage.size() == 1
        assert await storage.list_conversations() == ["a"]


async def test_deleting_parts_frees_room() -> None:
    async with create_memory_storage(max_conversations=2) as storage:
        await storage.store_raw_messages("a", [{"n": 1}])
        await storage.store_conversation("b", {})
        await storage.store_raw_messages("a", [])  # a has no part left
        assert storage.size() == 1
        await storage.store_conversation("c", {})
        assert await storage.list_conversations() == ["b", "c"]


async def test_other_kinds_are_never_evicted() -> None:
    async with create_memory_storage(max_conversations=1) as storage:
        await storage.store_system_state("s", 1)
        await storage.store_reasoning_chain("agent", {"step": 1})
        await storage.store_cache("k", 1)
        await storage.kv().set("k", 1)
        await storage.store_conversation("a", {})
        await storage.store_conversation("b", {})
        assert await storage.load_system_state("s") == 1
        assert await storage.load_reasoning_chains("agent") == [{"step": 1}]
        assert await storage.load_cache("k") == 1
        assert await storage.kv().get("k") == 1


async def test_capabilities_name_lru_eviction_only_when_bounded() -> None:
    assert create_memory_storage().capabilities == frozenset()
    bounded = create_memory_storage(max_conversations=10)
    assert bounded.supports("lru_eviction") and not bounded.supports("persistent")


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "10"])
def test_a_bad_bound_is_refused(bad: object) -> None:
    with pytest.raises(ConfigError, match="max_conversations"):
        create_memory_storage(max_conversations=bad)


async def test_separate_storages_hold_separate_data() -> None:
    async with create_memory_storage() as one, create_memory_storage() as two:
        await one.store_system_state("s", 1)
        assert await two.load_system_state("s") is None


async def test_chosen_from_the_environment() -> None:
    storage = create_storage_from_env({"CONNECTOME_STORAGE_TYPE": "memory", "CONNECTOME_STORAGE_CACHE_TTL": "5"})
    assert isinstance(storage, MemoryStorage)
    assert storage.settings.default_cache_ttl == 5.0
