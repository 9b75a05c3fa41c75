"""LangChain's own published test suites (langchain-tests), unmodified, on every backend.

Each class subclasses a suite and provides only its fixtures; the suites' own
``test_no_overrides_DO_NOT_OVERRIDE`` checks that no test was changed. ``make_storage``
(tests/conftest.py) runs each class once per backend: memory, file, sqlite, redis.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from langchain_tests.integration_tests import (
    AsyncCacheTestSuite,
    BaseStoreAsyncTests,
    BaseStoreSyncTests,
    SyncCacheTestSuite,
)

from connectome_storage import StorageInterface
from connectome_storage.adapters.langchain import ConnectomeLLMCache, ConnectomeStore

Make = Callable[..., StorageInterface]
VALUES = ({"name": "Ada", "tags": ["a", "b"]}, "plain text", [1, 2.5, None, True])


class TestConnectomeStoreSync(BaseStoreSyncTests[Any]):
    @pytest.fixture
    def kv_store(self, make_storage: Make) -> Iterator[ConnectomeStore]:
        store = ConnectomeStore(make_storage())
        yield store
        store.close()

    @pytest.fixture
    def three_values(self) -> tuple[Any, Any, Any]:
        return VALUES


class TestConnectomeStoreAsync(BaseStoreAsyncTests[Any]):
    @pytest.fixture
    async def kv_store(self, make_storage: Make) -> AsyncIterator[ConnectomeStore]:
        store = ConnectomeStore(make_storage())
        yield store
        await store.aclose()

    @pytest.fixture
    def three_values(self) -> tuple[Any, Any, Any]:
        return VALUES


class TestConnectomeLLMCacheSync(SyncCacheTestSuite):
    @pytest.fixture
    def cache(self, make_storage: Make) -> Iterator[ConnectomeLLMCache]:
        cache = ConnectomeLLMCache(make_storage())
        yield cache
        cache.close()


class TestConnectomeLLMCacheAsync(AsyncCacheTestSuite):
    @pytest.fixture
    async def cache(self, make_storage: Make) -> AsyncIterator[ConnectomeLLMCache]:
        cache = ConnectomeLLMCache(make_storage())
        yield cache
        await cache.aclose()
