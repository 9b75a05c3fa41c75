"""The worked examples of docs/middleware.md's ReadCache, AuditLog, Metrics and Tracing
sections run as they are written and print what their comments say."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
DOC = ROOT / "docs" / "middleware.md"


def examples() -> dict[str, str]:
    """Runnable Python blocks (those ending in ``asyncio.run``) of each observability section."""
    text = DOC.read_text()
    found: dict[str, str] = {}
    for section in ("ReadCache", "AuditLog", "Metrics", "Tracing"):
        start = text.index(f"\n## {section}\n")
        end = text.index("\n## ", start + 1)
        blocks = [b for b in re.findall(r"```python\n(.*?)```", text[start:end], re.S) if "asyncio.run(" in b]
        assert len(blocks) == 1, f"{section}: expected one worked example"
        found[section] = blocks[0]
    return found


EXPECTED = {
    "ReadCache": [
        "{'title': 'draft'}",
        "{'title': 'final'}",
        "{'title': 'final'}",
        "{'entries': 1, 'hits': 2, 'misses': 2}",
        "day",
        "night",
    ],
    "AuditLog": ["InvalidKeyError", "False"],
    "Metrics": [
        '{"count": 4, "errors": 0, "bytes_written": 17, "bytes_read": 51}',
        "3",
        "db.client.operation.duration s",
    ],
    "Tracing": [
        "append_raw_messages raw_messages UNSET None",
        "kv.get sessions UNSET None",
        "load_chunks chunks ERROR connectome_storage.errors.InvalidKeyError",
    ],
}


@pytest.mark.parametrize("section", sorted(EXPECTED))
def test_worked_example_runs(section: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", examples()[section]], capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[: len(EXPECTED[section])] == EXPECTED[section]
    if section == "AuditLog":
        assert '"outcome":"error","error_type":"InvalidKeyError"' in lines[2]
