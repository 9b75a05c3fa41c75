"""What CI runs: the README's test command checks lint, format and types before pytest,
with tools the project's own `test` extra installs."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command() -> None:
    assert "bash scripts/test.sh" in (ROOT / "README.md").read_text()
    assert re.search(r"^bash scripts/test\.sh", (ROOT / ".ci/run").read_text(), re.M)


def test_lint_format_and_types_are_checked_before_the_tests() -> None:
    script = (ROOT / "scripts/test.sh").read_text()
    steps = [r"ruff check \.", r"ruff format --check \.", r"mypy\s*$", r"pytest -m \"not slow\""]
    found = [re.search(rf"^(?:exec )?python -m {step}", script, re.M) for step in steps]
    assert all(found), dict(zip(steps, found, strict=True))
    positions = [match.start() for match in found if match]
    assert positions == sorted(positions), "ruff and mypy must run before pytest, so failures come quickly"
    assert "set -euo pipefail" in script  # a failing check stops the script


def test_the_checkers_come_from_the_test_extra_and_mypy_is_strict() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    test_extra = " ".join(project["project"]["optional-dependencies"]["test"])
    assert "ruff" in test_extra and "mypy" in test_extra
    assert project["tool"]["mypy"]["strict"] is True
