"""The storage contract (connectome_storage.testing.core), run once per backend (see conftest.BACKENDS)."""

from __future__ import annotations

import pytest

from connectome_storage import StorageInterface
from connectome_storage.errors import InvalidArgumentError
from connectome_storage.interface import CAPABILITIES
from connectome_storage.testing.core import *  # noqa: F403  (the whole contract)


# Not in the shipped suite: it pins the capabilities of this project's own backends by name,
# which a backend of another name cannot match.
async def test_capabilities_and_supports(storage: StorageInterface) -> None:
    expected = {
        "file": {"watch", "backups", "persistent", "cross_process"},
        "sqlite": {"persistent", "cross_process"},
        "postgres": {"persistent", "cross_process"},
        "redis": {"native_ttl", "cross_process"},  # plus "persistent" when the server persists
        "memory": set(),  # plus "lru_eviction" when max_conversations is set
    }[storage.backend_name]
    capabilities = storage.capabilities
    assert isinstance(capabilities, frozenset)
    assert expected <= capabilities <= CAPABILITIES
    assert capabilities - expected <= {"persistent"}
    for name in CAPABILITIES:
        assert storage.supports(name) is (name in capabilities)
    with pytest.raises(InvalidArgumentError, match="lru_eviction"):
        storage.supports("teleport")
