"""The key-value collection contract (connectome_storage.testing.kv), run once per backend (see conftest.BACKENDS)."""

from __future__ import annotations

from connectome_storage.testing.kv import *  # noqa: F403  (the whole contract)
