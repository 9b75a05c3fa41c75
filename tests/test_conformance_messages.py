"""The message store contract (connectome_storage.testing.messages), once per backend (conftest.BACKENDS)."""

from __future__ import annotations

from connectome_storage.testing.messages import *  # noqa: F403  (the whole contract)

# Every test once more on a Redis Cluster (tests/redis_server.py starts it once per session).
from .backends.redis_fixtures import cluster_backend_fixture, cluster_storage_builder_fixture  # noqa: F401
from .redis_server import redis_cluster  # noqa: F401
