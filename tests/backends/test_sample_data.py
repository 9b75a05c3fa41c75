"""sample_data/ is exactly what scripts/make_sample_data.py writes today."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_regenerating_sample_data_changes_nothing(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("make_sample_data", ROOT / "scripts" / "make_sample_data.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.generate(tmp_path / "fresh")
    committed = tree_bytes(ROOT / "sample_data")
    fresh = tree_bytes(tmp_path / "fresh")
    assert sorted(fresh) == sorted(committed)
    changed = [name for name in fresh if fresh[name] != committed[name]]
    assert changed == [], f"sample_data/ is stale; run python scripts/make_sample_data.py ({changed})"
    assert "conversations/conv_001/current.json" in fresh
