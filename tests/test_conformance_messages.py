"""The message store contract (connectome_storage.testing.messages), once per backend (conftest.BACKENDS)."""

from __future__ import annotations

from connectome_storage.testing.messages import *  # noqa: F403  (the whole contract)
