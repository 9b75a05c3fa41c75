"""connectome_storage.testing: a backend of another name runs the whole contract from one test module.

The module run here is the one docs/configuration.md shows (its "Custom backends" section),
written to a directory of its own with the pytest configuration the page shows, and run by
a pytest of its own: no fixture of tests/ is there to help.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import connectome_storage.testing
from connectome_storage.testing import core, kv

ROOT = Path(__file__).resolve().parents[1]


def documented_blocks() -> tuple[str, str]:
    """The Python and TOML blocks of the custom-backend section of docs/configuration.md."""
    text = (ROOT / "docs" / "configuration.md").read_text()
    section = text.split("\n## Custom backends\n", 1)[1].split("\n## ", 1)[0]
    [python] = re.findall(r"```python\n(.*?)```", section, re.S)
    [toml] = re.findall(r"```toml\n(.*?)```", section, re.S)
    return python, toml


def run_pytest(directory: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    # The package from this checkout, whatever is installed; no cache files in the test's directory.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *arguments],
        cwd=directory, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def outcome_counts(output: str) -> dict[str, int]:
    """{"passed": 211, "failed": 0, ...} from pytest's last line."""
    last = output.strip().splitlines()[-1]
    return {word: int(count) for count, word in re.findall(r"(\d+) (passed|failed|errors?|skipped)", last)}


def suite_size() -> int:
    """How many tests the suite has for one backend: its test functions, each with every parametrized case."""
    size = 0
    for name in connectome_storage.testing.__all__:
        if name.startswith("test_"):
            cases = 1
            for mark in getattr(getattr(connectome_storage.testing, name), "pytestmark", []):
                if mark.name == "parametrize":
                    cases *= len(mark.args[1])
            size += cases
    return size


def test_a_third_party_backend_runs_the_whole_contract_from_the_documented_module(tmp_path: Path) -> None:
    python, toml = documented_blocks()
    assert "from connectome_storage.testing import *" in python and 'backend_name = "mine"' in python
    (tmp_path / "pyproject.toml").write_text(toml)
    (tmp_path / "test_my_storage.py").write_text(python)
    result = run_pytest(tmp_path, "test_my_storage.py")
    output = result.stdout + result.stderr
    counts = outcome_counts(result.stdout)
    assert result.returncode == 0, output[-4000:]
    assert set(counts) == {"passed"}, output[-4000:]  # nothing failed, errored or was skipped
    assert counts["passed"] > 100
    assert counts["passed"] == suite_size()  # every test of every suite module ran


def test_without_auto_mode_each_async_test_names_the_setting(tmp_path: Path) -> None:
    python, _ = documented_blocks()
    (tmp_path / "pytest.ini").write_text("[pytest]\nasyncio_mode = strict\n")
    (tmp_path / "test_my_storage.py").write_text(python)
    result = run_pytest(tmp_path, "test_my_storage.py", "-x")
    assert result.returncode == 1
    assert "needs pytest-asyncio's auto mode, but asyncio_mode is 'strict'" in result.stdout, result.stdout[-4000:]
    assert 'asyncio_mode = "auto"' in result.stdout


def test_importing_the_library_does_not_import_pytest() -> None:
    code = "import sys, connectome_storage; print(sorted(m for m in sys.modules if 'pytest' in m))"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_the_package_exports_every_test_of_its_modules_and_the_fixtures() -> None:
    exported = set(connectome_storage.testing.__all__)
    for module in (core, kv):
        tests = {name for name in vars(module) if name.startswith("test_")}
        assert tests and tests <= exported
    assert {"storage", "make_storage", "clock", "FakeClock"} <= exported


def test_two_modules_exporting_one_name_are_refused() -> None:
    # A later star import would silently hide the earlier test of the same name.
    first, second = ModuleType("connectome_storage.testing.first"), ModuleType("connectome_storage.testing.second")
    first.test_same = second.test_same = lambda: None  # type: ignore[attr-defined]
    first.__all__ = second.__all__ = ["test_same"]  # type: ignore[attr-defined]
    with pytest.raises(ImportError, match="test_same is exported by both"):
        connectome_storage.testing._exports({"first": first, "second": second, "test_same": second.test_same})
