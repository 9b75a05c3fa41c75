"""examples/langgraph_checkpoint.py runs offline, unchanged, on each backend, and resumes its thread."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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


DOCS = Path(__file__).resolve().parents[2] / "docs" / "adapters.md"


def test_docs_example_runs(tmp_path: Path) -> None:
    """The first python block of the LangGraph section of docs/adapters.md, as it is, on the file tree."""
    body = DOCS.read_text("utf-8").split("\n## LangGraph\n", 1)[1].split("\n## ", 1)[0]
    code = body.split("```python\n", 1)[1].split("```", 1)[0]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CONNECTOME_STORAGE_")}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=clean, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "{'turns': 2}" in result.stdout
    assert len(list((tmp_path / "storage_data" / "kv" / "langgraph_checkpoints").iterdir())) == 6
