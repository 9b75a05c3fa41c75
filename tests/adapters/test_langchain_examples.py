"""examples/openai_agents_session.py and examples/langchain_store.py run offline, unchanged, on each backend."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ..redis_server import RedisServer

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_example(name: str, cwd: Path, env: dict[str, str]) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CONNECTOME_STORAGE_", "OPENAI_"))}
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name)], cwd=cwd, env=clean | env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def backend_env(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> dict[str, str]:
    if backend != "redis":
        return {"CONNECTOME_STORAGE_TYPE": backend}
    server: RedisServer = request.getfixturevalue("redis_server")
    return {
        "CONNECTOME_STORAGE_TYPE": "redis",
        "CONNECTOME_STORAGE_REDIS_URL": server.url,
        "CONNECTOME_STORAGE_KEY_PREFIX": f"examples:{tmp_path.name}:",
    }


@pytest.mark.parametrize("backend", ["file", "sqlite", "redis"])
def test_openai_agents_example(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    env = backend_env(backend, tmp_path, request)
    for _ in range(2):  # a second run starts from a cleared session and prints the same
        out = run_example("openai_agents_session.py", tmp_path, env)
        assert "assistant: Hello Ada!" in out and "assistant: Your name is Ada." in out
        assert "model saw 3 items on the second turn" in out and "stored history (4 items):" in out
    if backend == "file":
        stored = json.loads((tmp_path / "storage_data/conversations/user-123/raw_messages.json").read_text())
        assert [m["role"] for m in stored] == ["user", "assistant", "user", "assistant"]


@pytest.mark.parametrize("backend", ["file", "sqlite", "redis"])
def test_langchain_example(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    env = backend_env(backend, tmp_path, request)
    for _ in range(2):
        out = run_example("langchain_store.py", tmp_path, env)
        assert "users: ['user:ada', 'user:bob']" in out
        assert "ada: {'name': 'Ada', 'plan': 'pro'}" in out
        assert "cached: True" in out
        assert "chat: ['human: Hi, I am Ada.', 'ai: Hello Ada!']" in out
    if backend == "file":
        tree = tmp_path / "storage_data"
        assert json.loads((tree / "kv/langchain/user%3Aada.json").read_text())["value"]["name"] == "Ada"
        (entry,) = (tree / "cache").glob("langchain-llm-*.json")
        assert json.loads(entry.read_text())["data"]["prompt"] == "What is the capital of Portugal?"


DOCS = Path(__file__).resolve().parents[2] / "docs" / "adapters.md"


@pytest.mark.parametrize(
    ("section", "expected"), [("OpenAI Agents SDK", "Your name is Ada."), ("LangChain", "user:ada")]
)
def test_docs_example_runs(section: str, expected: str, tmp_path: Path) -> None:
    text = DOCS.read_text("utf-8")
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    code = body.split("```python\n", 1)[1].split("```", 1)[0]
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CONNECTOME_STORAGE_", "OPENAI_"))}
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=clean | {"OPENAI_AGENTS_DISABLE_TRACING": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout
