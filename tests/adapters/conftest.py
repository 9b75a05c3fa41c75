"""Fixtures shared by the framework adapter tests (tests/adapters/)."""

from __future__ import annotations

import os

# The OpenAI Agents SDK would export traces over the network; these tests run offline.
os.environ.setdefault("OPENAI_AGENTS_DISABLE_TRACING", "1")
