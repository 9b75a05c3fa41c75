"""Key-value collections on the file tree: the layout, bytes, locks, backups, scans, verify and watch.

The contract itself (every backend) is tests/test_conformance_kv.py; this file checks what
is particular to the JSON tree.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from connectome_storage import FileStorage, create_file_storage
from connectome_storage.errors import CorruptedDataError, StorageError
from connectome_storage.interface import Kind
from connectome_storage.kv import SCAN_BATCH

from ..conftest import FakeClock


@pytest.fixture
async def store(tmp_path: Path, clock: FakeClock) -> AsyncIterator[FileStorage]:
    storage = create_file_storage(tmp_path / "data", clock=clock)
    assert isinstance(storage, FileStorage)
    async with storage:
        yield storage


def _entry_path(storage: Any, namespace: str, key: str) -> Path:
    return Path(storage.base_dir) / "kv" / namespace / f"{key}.json"


# ------------------------------------------------------------------- layout


async def test_an_entry_is_one_canonical_json_file(store: FileStorage, clock: FakeClock) -> None:
    kv = store.kv("sessions")
    await kv.set("user:123", {"name": "Alice", "turns": [1, 2]}, ttl=3600, tags={"userId": "123", "type": "web"})
    clock.advance(1.5)
    await kv.set("user:123", {"name": "Alice", "turns": [1, 2, 3]}, ttl=3600, tags={"userId": "123", "type": "web"})
    path = store.base_dir / "kv" / "sessions" / "user%3A123.json"
    assert path.read_text(encoding="utf-8") == textwrap.dedent(
        """\
        {
          "created_at": "2026-11-21T09:30:00.000Z",
          "expires_at": "2026-11-21T10:30:01.500Z",
          "key": "user:123",
          "tags": {
            "type": "web",
            "userId": "123"
          },
          "updated_at": "2026-11-21T09:30:01.500Z",
          "value": {
            "name": "Alice",
            "turns": [
              1,
              2,
              3
            ]
          }
        }
        """
    )


async def test_no_expiry_is_null_and_compact_mode_writes_one_line(tmp_path: Path, clock: FakeClock) -> None:
    async with create_file_storage(tmp_path / "d", clock=clock, pretty_print_json=False) as storage:
        await storage.kv().set("k", [1])
        raw = _entry_path(storage, "default", "k").read_bytes()
    assert raw == (
        b'{"created_at":"2026-11-21T09:30:00.000Z","expires_at":null,"key":"k","tags":{},'
        b'"updated_at":"2026-11-21T09:30:00.000Z","value":[1]}\n'
    )


async def test_storing_equal_data_twice_gives_identical_bytes(tmp_path: Path) -> None:
    trees = []
    for name in ("a", "b"):
        async with create_file_storage(tmp_path / name, clock=FakeClock()) as storage:
            await storage.kv("n").set_many({"x": {"b": 1, "a": 2}, "y": "z"}, tags={"t": "1"})
        trees.append({p.name: p.read_bytes() for p in (tmp_path / name / "kv" / "n").iterdir()})
    assert trees[0] == trees[1] and set(trees[0]) == {"x.json", "y.json"}


async def test_namespace_and_key_names_are_mapped_like_every_id(store: FileStorage) -> None:
    await store.kv("../up").set("CON", 1)
    await store.kv("a/b").set(".hidden", 2)
    assert (store.base_dir / "kv" / "%2E.%2Fup" / "%43ON.json").is_file()
    assert (store.base_dir / "kv" / "a%2Fb" / "%2Ehidden.json").is_file()
    assert sorted(await store.list_namespaces()) == ["../up", "a/b"]
    assert await store.kv("a/b").keys() == [".hidden"]
    assert not (store.base_dir.parent / "up").exists()


async def test_the_kv_folder_exists_after_initialize(store: FileStorage) -> None:
    assert (store.base_dir / "kv").is_dir()


# ---------------------------------------------------------- empty folders


async def test_a_namespace_folder_goes_with_its_last_entry(store: FileStorage, clock: FakeClock) -> None:
    kv = store.kv("n")
    await kv.set_many({"a": 1, "b": 2})
    await kv.delete("a")
    assert (store.base_dir / "kv" / "n").is_dir()
    await kv.delete("b")
    assert not (store.base_dir / "kv" / "n").exists()
    await kv.set_many({"a": 1, "b": 2})
    assert await kv.clear() == 2
    assert not (store.base_dir / "kv" / "n").exists()
    await kv.set("e", 1, ttl=1)
    clock.advance(2)
    assert await kv.cleanup() == 1
    assert not (store.base_dir / "kv" / "n").exists()
    assert sorted(os.listdir(store.base_dir / "kv")) == []


async def test_a_writer_and_the_remover_of_the_last_entry_do_not_lose_an_entry(tmp_path: Path) -> None:
    # Two storage objects (two lock tables, two worker threads) on one tree: one keeps
    # emptying the namespace while the other adds entries to it.
    async with create_file_storage(tmp_path / "d") as first, create_file_storage(tmp_path / "d") as second:
        churn, adder = first.kv("n"), second.kv("n")

        async def churning() -> None:
            for _ in range(150):
                await churn.set("tmp", 1)
                await churn.delete("tmp")

        async def adding() -> None:
            for i in range(150):
                await adder.set(f"k{i:03d}", i)

        await asyncio.gather(churning(), adding())
        assert await adder.keys() == [f"k{i:03d}" for i in range(150)]


# ------------------------------------------------------------------ backups


async def test_replaced_and_deleted_entries_keep_backups(store: FileStorage, clock: FakeClock) -> None:
    kv = store.kv("n")
    await kv.set("k", "v1")
    clock.advance(1)
    await kv.set("k", "v2")
    clock.advance(1)
    await kv.delete("k")
    versions = await store.list_backups("kv/n/k.json")
    assert [json.loads(v.path.read_bytes())["value"] for v in versions] == ["v1", "v2"]


async def test_no_backups_when_turned_off(tmp_path: Path) -> None:
    async with create_file_storage(tmp_path / "d", create_backups=False) as storage:
        assert isinstance(storage, FileStorage)
        await storage.kv("n").set("k", 1)
        await storage.kv("n").set("k", 2)
        assert await storage.list_backups("kv/n/k.json") == []


async def test_max_backup_files_bounds_the_versions(tmp_path: Path, clock: FakeClock) -> None:
    async with create_file_storage(tmp_path / "d", clock=clock, max_backup_files=2) as storage:
        assert isinstance(storage, FileStorage)
        for i in range(6):
            await storage.kv("n").set("k", i)
            clock.advance(1)
        versions = await storage.list_backups("kv/n/k.json")
    assert [json.loads(v.path.read_bytes())["value"] for v in versions] == [3, 4]


# ------------------------------------------------------------ damaged files


async def test_a_damaged_entry_is_reported_everywhere_and_repaired_by_a_store(store: FileStorage) -> None:
    kv = store.kv("n")
    await kv.set_many({"good": 1, "bad": 2})
    path = _entry_path(store, "n", "bad")
    path.write_text('{"key": "bad",\n  "value": }\n', encoding="utf-8")
    with pytest.raises(CorruptedDataError) as caught:
        await kv.get("bad")
    assert (caught.value.path, caught.value.line) == (str(path), 2)
    assert await kv.get("good") == 1
    with pytest.raises(CorruptedDataError, match="line 2"):
        await kv.keys()  # a listing that meets it says so: nothing is skipped silently
    problems = await store.verify()
    assert [p.location for p in problems] == [str(path)]
    assert "line 2" in problems[0].message
    stats = await store.get_storage_stats()
    assert (stats["unreadable_count"], stats["kv_entry_count"]) == (1, 1)
    assert await kv.set("bad", 3) is True
    assert await kv.get("bad") == 3
    assert await store.verify() == []


@pytest.mark.parametrize(
    "content",
    [
        "[1, 2]",
        '{"key": "k", "value": 1}',
        '{"key": "other", "value": 1, "tags": {}, "created_at": "2026-11-21T09:30:00.000Z", '
        '"updated_at": "2026-11-21T09:30:00.000Z", "expires_at": null}',
        '{"key": "k", "value": 1, "tags": {"t": 1}, "created_at": "2026-11-21T09:30:00.000Z", '
        '"updated_at": "2026-11-21T09:30:00.000Z", "expires_at": null}',
        '{"key": "k", "value": 1, "tags": {}, "created_at": "yesterday", '
        '"updated_at": "2026-11-21T09:30:00.000Z", "expires_at": null}',
    ],
    ids=["array", "missing fields", "wrong key", "tag not a string", "bad time"],
)
async def test_a_wrong_shape_is_corrupted_data(store: FileStorage, content: str) -> None:
    await store.kv("n").set("k", 1)
    _entry_path(store, "n", "k").write_text(content, encoding="utf-8")
    with pytest.raises(CorruptedDataError, match=r"k\.json"):
        await store.kv("n").get("k")
    assert [p.location for p in await store.verify()] == [str(_entry_path(store, "n", "k"))]


async def test_verify_names_strays_inside_kv(store: FileStorage) -> None:
    await store.kv("n").set("k", 1)
    kv_dir = store.base_dir / "kv"
    (kv_dir / "n" / "notes.txt").write_text("x")
    (kv_dir / "n" / "nested.json").mkdir()
    (kv_dir / "%41").mkdir()  # not a canonical encoding
    (kv_dir / "loose.json").write_text("{}")
    found = {Path(p.location).name for p in await store.verify()}
    assert {"notes.txt", "nested.json", "%41", "loose.json"} <= found
    assert "k.json" not in found


@pytest.mark.skipif(sys.platform == "win32", reason="symbolic links need privileges on Windows")
async def test_a_symbolic_link_in_place_of_an_entry_is_refused(store: FileStorage, tmp_path: Path) -> None:
    outside = tmp_path / "outside.json"
    outside.write_text('{"secret": 1}')
    await store.kv("n").set("ok", 1)
    os.symlink(outside, _entry_path(store, "n", "k"))
    with pytest.raises(StorageError, match="symbolic link"):
        await store.kv("n").get("k")
    assert str(_entry_path(store, "n", "k")) in {p.location for p in await store.verify()}
    assert outside.read_text() == '{"secret": 1}'


# ------------------------------------------------------------ what scans read


@pytest.fixture
def opened() -> Iterator[list[str]]:
    """Paths of kv entry files opened while the test runs (Python's audit hook: real opens)."""
    paths: list[str] = []
    active = [True]

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if active[0] and event == "open" and isinstance(args[0], str | os.PathLike):
            path = os.fspath(args[0])
            if f"{os.sep}kv{os.sep}" in path and path.endswith(".json"):
                paths.append(path)

    sys.addaudithook(hook)  # hooks cannot be removed: the flag retires this one
    yield paths
    active[0] = False


async def test_a_key_ordered_page_reads_only_its_files(store: FileStorage, opened: list[str]) -> None:
    kv = store.kv("n")
    await kv.set_many({f"k{i:04d}": i for i in range(300)})
    opened.clear()
    entries = await kv.query(prefix="k01", limit=10, offset=5)
    assert [e.key for e in entries] == [f"k{i:04d}" for i in range(105, 115)]
    assert len(opened) == 15
    opened.clear()
    assert [k async for k, _ in kv.scan()] == [f"k{i:04d}" for i in range(300)]
    assert len(opened) == 300  # each file once


async def test_a_page_makes_up_for_expired_entries(
    store: FileStorage, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store, "_kv_scan_batch", SCAN_BATCH)
    kv = store.kv("n")
    await kv.set_many({f"a{i:03d}": i for i in range(SCAN_BATCH + 50)}, ttl=5)
    await kv.set_many({f"b{i:03d}": i for i in range(20)})
    clock.advance(10)
    assert [k async for k, _ in kv.scan()] == [f"b{i:03d}" for i in range(20)]
    assert [e.key for e in await kv.query(limit=3, descending=True)] == ["b019", "b018", "b017"]


# -------------------------------------------------------------- concurrency

_RACER = textwrap.dedent(
    """
    import asyncio, json, sys, time
    from connectome_storage import create_file_storage

    async def main(base, start_at, keys, name):
        async with create_file_storage(base) as storage:
            kv = storage.kv("race")
            time.sleep(max(0.0, start_at - time.time()))

            async def racer(coroutine):
                wins = []
                for key in keys:
                    if await kv.set(key, f"{name}/{coroutine}", if_not_exists=True):
                        wins.append(key)
                return wins

            results = await asyncio.gather(*(racer(c) for c in range(3)))
            print(json.dumps({f"{name}/{c}": wins for c, wins in enumerate(results)}))

    asyncio.run(main(sys.argv[1], float(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4]))
    """
)


async def test_if_not_exists_has_one_winner_across_processes_and_coroutines(tmp_path: Path) -> None:
    base = tmp_path / "d"
    async with create_file_storage(base):
        pass
    keys = [f"key{i}" for i in range(40)]
    start_at = str(time.time() + 1.5)  # a common start, so the processes overlap
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, str(base), start_at, json.dumps(keys), f"p{n}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(4)
    ]
    winners: dict[str, list[str]] = {key: [] for key in keys}
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        for racer, wins in json.loads(out).items():
            for key in wins:
                winners[key].append(racer)
    assert all(len(names) == 1 for names in winners.values()), winners
    async with create_file_storage(base) as storage:
        stored = await storage.kv("race").get_many(keys)
    assert stored == {key: names[0] for key, names in winners.items()}


# -------------------------------------------------------------------- watch


async def test_watch_reports_kv_entries_with_their_namespace(tmp_path: Path) -> None:
    async with create_file_storage(tmp_path / "d") as storage, create_file_storage(tmp_path / "d") as other:
        ready = asyncio.Event()
        events: list[Any] = []

        async def collect() -> None:
            async for event in storage.watch(debounce_ms=50, ready=ready):
                events.append(event)
                if len(events) == 3:
                    return

        task = asyncio.create_task(collect())
        await ready.wait()
        await other.kv("sess/1").set("user:1", {"v": 1})
        await asyncio.sleep(0.3)
        await other.kv("sess/1").set("user:1", {"v": 2})
        await asyncio.sleep(0.3)
        await other.kv("sess/1").delete("user:1")
        await asyncio.wait_for(task, 20)
    assert [(e.kind, e.kind_name, e.namespace, e.id, e.change, e.own, e.valid) for e in events] == [
        (Kind.KV, "kv", "sess/1", "user:1", "added", False, True),
        (Kind.KV, "kv", "sess/1", "user:1", "modified", False, True),
        (Kind.KV, "kv", "sess/1", "user:1", "deleted", False, True),
    ]


async def test_a_kept_version_of_an_entry_can_be_restored(store: FileStorage, clock: FakeClock) -> None:
    kv = store.kv("a/b")
    await kv.set("user:1", "v1", tags={"t": "1"})
    clock.advance(1)
    await kv.set("user:1", "v2")
    restored = await store.restore_backup("kv/a%2Fb/user%3A1.json")
    assert restored.number == 1
    entry = await kv.get_entry("user:1")
    assert entry is not None and (entry.value, entry.tags) == ("v1", {"t": "1"})


async def test_a_scan_lists_the_folder_once_per_page_and_sees_changes_between_pages(
    store: FileStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store, "_kv_scan_batch", 100)
    kv = store.kv("n")
    keys = [f"k{i:04d}" for i in range(210)]
    await kv.set_many(dict.fromkeys(keys, 1))
    folder = store.base_dir / "kv" / "n"
    listings: list[str] = []
    active = [True]

    def hook(event: str, args: tuple[Any, ...]) -> None:
        path = args[0] if active[0] and event == "os.scandir" and args else None
        if isinstance(path, str | os.PathLike) and os.fspath(path) == str(folder):
            listings.append(event)

    sys.addaudithook(hook)  # hooks cannot be removed: the flag retires this one
    try:
        seen = []
        async for key, _ in kv.scan():
            seen.append(key)
            if key == "k0150":  # changes to the next page while the scan is on this one
                await kv.set("k0205a", 2)
                await kv.delete("k0205")
        assert len(listings) == 3  # three pages of 100, one listing each
    finally:
        active[0] = False
    expected = sorted([*keys, "k0205a"])
    expected.remove("k0205")
    assert seen == expected
