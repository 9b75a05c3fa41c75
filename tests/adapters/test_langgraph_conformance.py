"""LangGraph's own checkpointer conformance suite (langgraph-checkpoint-conformance), unmodified.

``validate`` runs every base capability (put, put_writes, get_tuple, list, delete_thread)
and every optional one the saver implements (delete_for_runs, copy_thread, prune: it
detects them by override) against ``ConnectomeCheckpointSaver``, once per backend
(``make_storage`` in tests/conftest.py: memory, file, sqlite, redis), and once more per
backend for each way of handing the saver its storage: unopened (the saver opens it on its
private loop thread) and opened by the caller on the test's loop.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.conformance.capabilities import ALL_CAPABILITIES, BASE_CAPABILITIES

from connectome_storage import StorageInterface
from connectome_storage.adapters.langgraph import ConnectomeCheckpointSaver

Make = Callable[..., StorageInterface]


@pytest.mark.parametrize("opened", [False, True], ids=["unopened", "opened"])
async def test_checkpoint_conformance(make_storage: Make, backend: str, opened: bool) -> None:
    async def saver() -> AsyncIterator[ConnectomeCheckpointSaver]:
        storage = make_storage()
        if opened:
            await storage.initialize()
        checkpointer = ConnectomeCheckpointSaver(storage)
        try:
            yield checkpointer
        finally:
            if opened:
                await storage.shutdown()
            else:
                await checkpointer.aclose()

    registered = checkpointer_test(name=f"ConnectomeCheckpointSaver[{backend}]")(saver)
    report = await validate(registered)
    failures = {name: result.failures for name, result in report.results.items() if result.failures}
    assert not failures, failures
    assert report.passed_all_base(), report.results
    # Every capability, optional ones included, is detected and passes: none is skipped.
    assert {name for name, result in report.results.items() if result.detected} == {c.value for c in ALL_CAPABILITIES}
    assert all(report.results[c.value].passed for c in ALL_CAPABILITIES)
    assert BASE_CAPABILITIES <= ALL_CAPABILITIES
