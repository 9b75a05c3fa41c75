"""examples/langgraph_checkpoint.py runs offline, unchanged, on each backend, and resumes its thread."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .test_langchain_examples import backend_env, run_example


@pytest.mark.parametrize("backend", ["file", "sqlite", "redis"])
def test_langgraph_example(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    env = backend_env(backend, tmp_path, request)
    first = run_example("langgraph_checkpoint.py", tmp_path, env)
    assert "reply: Hello Ada, this is turn 1 (visit 1)." in first
    assert "turns: 1 | messages in the thread: 2" in first
    # A second process picks the thread up where the first left it.
    second = run_example("langgraph_checkpoint.py", tmp_path, env)
    assert "reply: Hello Ada, this is turn 2 (visit 2)." in second
    assert "turns: 2 | messages in the thread: 4" in second
    assert "checkpoints in the thread: 6" in second
    if backend == "file":
        kv = tmp_path / "storage_data" / "kv"
        visits = json.loads((kv / "langgraph_store" / "users.ada..visits.json").read_text())
        assert visits["value"] == {"key": "visits", "namespace": ["users", "ada"], "value": {"count": 2}}
        newest = max((kv / "langgraph_checkpoints").iterdir())
        state = json.loads(newest.read_text())["value"]["channel_values"]
        assert state["turns"] == 2
        assert [m["kwargs"]["content"] for m in state["messages"]][-1] == "Hello Ada, this is turn 2 (visit 2)."
