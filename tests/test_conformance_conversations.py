"""The conversation store contract (connectome_storage.testing.conversations), once per backend (conftest.BACKENDS)."""

from __future__ import annotations

from connectome_storage.testing.conversations import *  # noqa: F403  (the whole contract)
