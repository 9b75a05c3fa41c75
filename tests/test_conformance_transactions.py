"""The transaction contract (connectome_storage.testing.transactions), once per backend (conftest.BACKENDS)."""

from __future__ import annotations

from connectome_storage.testing.transactions import *  # noqa: F403  (the whole contract)
