"""AuditLog on every backend: one JSON line per operation, never a value."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import textwrap
from collections.abc import Callable
from contextlib import aclosing
from pathlib import Path
from typing import Any

import pytest

from connectome_storage import StorageInterface, create_memory_storage
from connectome_storage.errors import InvalidArgumentError, InvalidKeyError, StorageError
from connectome_storage.middleware import AuditLog

from ..conftest import FakeClock

Make = Callable[..., StorageInterface]
SECRET = "correct horse battery staple 7f3a"
FIELDS = ["time", "operation", "kind", "id", "namespace", "backend", "write", "outcome", "error_type", "duration_ms"]


async def touch_everything(storage: StorageInterface) -> None:
    """Store and read the secret through every kind of value."""
    await storage.store_conversation("c1", {"note": SECRET})
    await storage.append_raw_messages("c1", [{"content": SECRET}])
    await storage.store_memory("c1", "m1", {"fact": SECRET})
    await storage.store_chunks("c1", [{"text": SECRET}])
    await storage.store_reasoning_chain("a1", {"thought": SECRET})
    await storage.store_cache("k1", SECRET)
    await storage.store_system_state("s1", SECRET)
    await storage.kv("ns").set("key", SECRET, tags={"t": "x"})
    assert (await storage.load_conversation("c1")) == {"note": SECRET}
    await storage.load_raw_messages("c1")
    await storage.load_memories("c1")
    await storage.load_chunks("c1")
    await storage.load_reasoning_chains("a1")
    assert await storage.load_cache("k1") == SECRET
    await storage.load_system_state("s1")
    assert await storage.kv("ns").get("key") == SECRET
    await storage.kv("ns").query(prefix="k")
    await storage.get_storage_stats()


async def test_one_line_per_operation_and_never_a_value(make_storage: Make, tmp_path: Path, backend: str) -> None:
    backend = backend.removesuffix("-msgpack")  # the serializer does not change the engine
    path = tmp_path / "audit.jsonl"
    async with make_storage(middleware=[AuditLog(path)]) as storage:
        await touch_everything(storage)
        with pytest.raises(InvalidKeyError):
            await storage.load_conversation("")
    text = path.read_text()
    assert SECRET not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert len(lines) == 19
    for line in lines:
        assert list(line) == FIELDS
        assert line["time"] == "2026-11-21T09:30:00.000Z"  # the storage's clock
        assert line["backend"] == backend
        assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0
    assert lines[0] == {**lines[0], "operation": "store_conversation", "kind": "conversation", "id": "c1",
                        "namespace": None, "write": True, "outcome": "ok", "error_type": None}  # fmt: skip
    kv_set = lines[7]
    assert (kv_set["operation"], kv_set["kind"], kv_set["id"], kv_set["namespace"]) == ("kv.set", "kv", "key", "ns")
    assert lines[-2]["operation"] == "get_storage_stats" and lines[-2]["kind"] == "storage"
    failed = lines[-1]
    assert (failed["operation"], failed["outcome"], failed["error_type"]) == (
        "load_conversation",
        "error",
        "InvalidKeyError",
    )
    assert [line["operation"] for line in lines if line["write"]] == [
        "store_conversation", "append_raw_messages", "store_memory", "store_chunks", "store_reasoning_chain",
        "store_cache", "store_system_state", "kv.set",
    ]  # fmt: skip


async def test_times_follow_the_storage_clock(make_storage: Make, tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "audit.jsonl"
    async with make_storage(middleware=[AuditLog(path)]) as storage:
        await storage.store_system_state("s1", 1)
        clock.advance(90.5)
        await storage.load_system_state("s1")
    times = [json.loads(line)["time"] for line in path.read_text().splitlines()]
    assert times == ["2026-11-21T09:30:00.000Z", "2026-11-21T09:31:30.500Z"]


async def test_a_logger_gets_one_record_per_operation(make_storage: Make, caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.audit")
    with caplog.at_level(logging.INFO, logger="test.audit"):
        async with make_storage(middleware=[AuditLog(logger)]) as storage:
            await touch_everything(storage)
            with pytest.raises(InvalidKeyError):
                await storage.delete_cache("")
    records = [r for r in caplog.records if r.name == "test.audit"]
    assert len(records) == 19
    assert all(SECRET not in r.getMessage() for r in records)
    assert [r.levelno for r in records] == [logging.INFO] * 18 + [logging.WARNING]
    audit: dict[str, Any] = records[-1].audit  # type: ignore[attr-defined]
    assert (audit["operation"], audit["outcome"], audit["error_type"]) == ("delete_cache", "error", "InvalidKeyError")
    assert json.loads(records[-1].getMessage()) == audit


async def test_processes_appending_to_one_file_never_mix_lines(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    code = textwrap.dedent(
        """
        import asyncio, sys
        from connectome_storage import create_memory_storage
        from connectome_storage.middleware import AuditLog

        async def main():
            async with create_memory_storage(middleware=[AuditLog(sys.argv[1])]) as storage:
                for i in range(300):
                    await storage.store_system_state(f"state-{sys.argv[2]}-{i:04d}-" + "x" * 200, i)

        asyncio.run(main())
        """
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    processes = [
        await asyncio.create_subprocess_exec(sys.executable, "-c", code, str(path), str(n), env=env) for n in range(4)
    ]
    codes = await asyncio.wait_for(asyncio.gather(*(p.wait() for p in processes)), 120)
    assert codes == [0, 0, 0, 0]
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == 1200
    for n in range(4):
        ids = [line["id"] for line in lines if line["id"].startswith(f"state-{n}-")]
        assert ids == sorted(ids) and len(ids) == 300


async def test_an_unwritable_path_fails_initialize(tmp_path: Path) -> None:
    storage = create_memory_storage(middleware=[AuditLog(tmp_path / "missing" / "audit.jsonl")])
    with pytest.raises(StorageError, match="audit log"):
        await storage.initialize()


async def test_calls_refused_before_initialize_are_audited(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    storage = create_memory_storage(middleware=[AuditLog(path)])
    with pytest.raises(StorageError):
        await storage.load_conversation("c1")
    [line] = [json.loads(line) for line in path.read_text().splitlines()]
    assert (line["operation"], line["error_type"]) == ("load_conversation", "StorageNotInitializedError")


async def test_a_scan_stopped_early_is_ok(make_storage: Make, tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    async with make_storage(middleware=[AuditLog(path)]) as storage:
        await storage.kv("ns").set_many({"a": 1, "b": 2})
        async with aclosing(storage.kv("ns").scan()) as stream:
            async for _ in stream:
                break
    scan = json.loads(path.read_text().splitlines()[-1])
    assert (scan["operation"], scan["namespace"], scan["outcome"]) == ("kv.scan", "ns", "ok")


def test_a_bad_target_is_refused() -> None:
    with pytest.raises(InvalidArgumentError, match=r"path or a logging\.Logger"):
        AuditLog(42)  # type: ignore[arg-type]


def test_one_audit_log_serves_one_storage(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "a.jsonl")
    create_memory_storage(middleware=[audit])
    with pytest.raises(StorageError, match="one storage"):
        create_memory_storage(middleware=[audit])


@pytest.mark.parametrize("backend", ["file"])
async def test_the_log_file_is_private(make_storage: Make, tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    async with make_storage(middleware=[AuditLog(path)]) as storage:
        await storage.store_system_state("s1", 1)
    assert path.stat().st_mode & 0o777 == 0o600
