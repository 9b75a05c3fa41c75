"""Middleware inside a transaction: values go through the value hooks as outside one, call
hooks see each operation, and a read cache never serves or keeps what a transaction has
not committed (docs/transactions.md)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from connectome_storage import StorageInterface
from connectome_storage.middleware import ReadCache

from .conftest import Recorder, Wrap

MakeStorage = Callable[..., StorageInterface]


async def test_values_written_in_a_transaction_go_through_the_value_hooks(make_storage: MakeStorage) -> None:
    wrap = Wrap("w")
    async with make_storage(middleware=[wrap]) as storage:
        async with storage.transaction() as tx:
            await tx.store_conversation("c1", {"title": "t"})
            await tx.append_raw_messages("c1", [{"n": 1}])
            await tx.kv("ns").set("k", [1, 2])
            assert await tx.load_conversation("c1") == {"title": "t"}  # read back through the hooks
        assert await storage.load_conversation("c1") == {"title": "t"}
        assert await storage.kv("ns").get("k") == [1, 2]
    async with make_storage() as plain:
        assert await plain.load_conversation("c1") == {"$wrapped": ["w", {"title": "t"}]}
        assert await plain.load_raw_messages("c1") == [{"$wrapped": ["w", {"n": 1}]}]
        assert await plain.kv("ns").get("k") == {"$wrapped": ["w", [1, 2]]}


async def test_call_hooks_see_the_operations_and_the_commit(make_storage: MakeStorage) -> None:
    log: list[tuple[str, str, str]] = []
    async with make_storage(middleware=[Recorder("A", log)]) as storage, storage.transaction() as tx:
        await tx.store_system_state("s", 1)
        await tx.kv("ns").set("k", 1)
    operations = [op for _name, hook, op in log if hook == "before_call"]
    assert operations == ["store_system_state", "kv.set", "transaction"]
    # The view runs no around hook (a read cache must not see uncommitted values); the commit does.
    arounds = [op for _name, hook, op in log if hook == "around:start"]
    assert arounds == ["transaction"]


async def test_a_read_cache_drops_what_a_commit_changed_and_never_keeps_uncommitted_values(
    make_storage: MakeStorage,
) -> None:
    cache = ReadCache(ttl=3600)
    async with make_storage(middleware=[cache]) as storage:
        await storage.store_system_state("s", "old")
        assert await storage.load_system_state("s") == "old"  # cached now
        async with storage.transaction() as tx:
            await tx.store_system_state("s", "new")
            assert await tx.load_system_state("s") == "new"
            assert await storage.load_system_state("s") == "old"  # not committed yet
        assert await storage.load_system_state("s") == "new"
        with pytest.raises(RuntimeError):
            async with storage.transaction() as tx:
                await tx.store_system_state("s", "rolled back")
                assert await tx.load_system_state("s") == "rolled back"
                raise RuntimeError("roll it back")
        assert await storage.load_system_state("s") == "new"
