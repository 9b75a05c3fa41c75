"""The storage contract (connectome_storage.testing.core), run once per backend (see conftest.BACKENDS)."""

from __future__ import annotations

import pytest

from connectome_storage import StorageInterface
from connectome_storage.errors import InvalidArgumentError
from connectome_storage.interface import CAPABILITIES
from connectome_storage.testing.core import *  # noqa: F403  (the whole contract)

# Every test once more on a Redis Cluster (tests/redis_server.py starts it once per session).
from .backends.redis_fixtures import cluster_backend_fixture, cluster_storage_builder_fixture  # noqa: F401
from .redis_server import redis_cluster  # noqa: F401


# Not in the shipped suite: it pins the capabilities of this project's own backends by name,
# which a backend of another name cannot match.
async def test_capabilities_and_supports(storage: StorageInterface, request: pytest.FixtureRequest) -> None:
    expected = {
        "file": {"watch", "backups", "persistent", "cross_process"},
        "sqlite": {"persistent", "cross_process"},
        "postgres": {"persistent", "cross_process"},
        "redis": {"native_ttl", "cross_process"},  # plus "persistent" when the server persists, "sharded" on a cluster
        "memory": set(),  # plus "lru_eviction" when max_conversations is set
    }[storage.backend_name]
    capabilities = storage.capabilities
    assert isinstance(capabilities, frozenset)
    assert expected <= capabilities <= CAPABILITIES
    assert capabilities - expected <= {"persistent", "sharded"}
    assert ("sharded" in capabilities) is (request.node.callspec.params.get("backend") == "redis-cluster")
    for name in CAPABILITIES:
        assert storage.supports(name) is (name in capabilities)
    with pytest.raises(InvalidArgumentError, match="lru_eviction"):
        storage.supports("teleport")
