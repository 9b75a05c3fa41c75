"""migrate() streams: its peak memory does not grow with the number of conversations.

The sources are written straight into the file tree's layout by the bench's builder
(bench/suites/scale.py), which the first test holds to the bytes the API writes.
"""

from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from bench.suites.scale import build_migrate_source, migrate_conversation
from connectome_storage import create_file_storage, create_sqlite_storage, migrate

from .conftest import BACKENDS, FakeClock
from .test_migrate import tree

SMALL, BIG = 200, 2_000
# Generous: what a migration that read the whole source first would add, going from the
# small source to the big one, is about the whole big source; streaming adds next to
# nothing (ids, and what the process keeps per id it has seen: pathlib interns every
# path part, for one).
FACTOR = 4


async def test_the_bench_builder_writes_what_the_api_writes(tmp_path: Path) -> None:
    async with create_file_storage(tmp_path / "api") as storage:
        for i in range(3):
            document, history, memories = migrate_conversation(i)
            conversation_id = f"conv_{i:06d}"
            await storage.store_conversation(conversation_id, document)
            await storage.store_raw_messages(conversation_id, history)
            for memory in memories:
                await storage.store_memory(conversation_id, memory["memory_id"], memory)
    async with create_file_storage(tmp_path / "built") as storage:
        build_migrate_source(storage.base_dir, 3)
        assert await storage.load_memories("conv_000002") == migrate_conversation(2)[2]
    api = tree(tmp_path / "api", ("conversations",))
    assert len(api) == 4 * 3 + 1  # three files and a folder each, and conversations/
    assert tree(tmp_path / "built", ("conversations",)) == api


async def peak(call: Any) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        result = await call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        del result


async def held_whole(source_root: Path) -> int:
    """The peak of reading every conversation of the source into one list: what a
    migration that loaded everything first would hold at once."""
    async with create_file_storage(source_root) as source:

        async def everything() -> list[Any]:
            return [
                [await source.load_conversation(c), await source.load_raw_messages(c), await source.load_memories(c)]
                for c in await source.list_conversations()
            ]

        return await peak(everything)


@pytest.mark.parametrize("backend", ["sqlite", "redis"])  # batches of transactions; one conversation at a time
async def test_migrate_peak_memory_does_not_grow_with_the_number_of_conversations(
    tmp_path: Path, clock: FakeClock, backend: str, request: pytest.FixtureRequest
) -> None:
    peaks, whole = {}, {}
    for count in (SMALL, BIG):
        root = tmp_path / f"source-{count}"
        async with create_file_storage(root):
            build_migrate_source(root, count)
        whole[count] = await held_whole(root)
        if backend == "sqlite":
            destination = create_sqlite_storage(tmp_path / f"copy-{count}.db")
        else:
            url = request.getfixturevalue("redis_server").url
            destination = BACKENDS["redis"](tmp_path / f"{tmp_path.name}-{count}", clock, {"redis_url": url})
        async with create_file_storage(root) as source, destination:
            peaks[count] = await peak(lambda source=source, destination=destination: migrate(source, destination))
            assert len(await destination.list_conversations()) == count
    assert whole[BIG] > 8 * whole[SMALL]  # the sources differ in size as they should
    assert peaks[BIG] - peaks[SMALL] < (whole[BIG] - whole[SMALL]) / FACTOR, (peaks, whole)
