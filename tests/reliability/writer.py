"""A writer process for concurrency tests: several coroutines appending at once.

    python writer.py WRITER_ID COROUTINES COUNT GO_FILE

It prints "ready" once its storage is open, then waits for GO_FILE to exist, so that
all writers start at the same instant rather than one Python start-up apart.

The storage comes from the CONNECTOME_STORAGE_* variables, so the same script drives every
backend. Each coroutine appends COUNT raw messages to conversation "shared", COUNT
reasoning chains to agent "shared-agent" and stores COUNT memories, tagging each with
(writer, coroutine, seq) so the test can check counts and per-writer order. Every
coroutine also replaces the one memory "hot" with its latest tag, so that all writers
read-modify-write the same memory at once.

At the end it prints one JSON object: ``totals``, the totals that append_raw_messages
returned (across all writers, each total from 1 to the final count must appear exactly
once), and ``started``/``finished``, ``time.monotonic()`` (one clock for every process
on the machine) when its coroutines began and ended, so the test can tell they overlapped.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

from connectome_storage import StorageInterface, create_storage_from_env


async def coroutine(storage: StorageInterface, writer: str, worker: int, count: int, totals: list[int]) -> None:
    for seq in range(count):
        tag = {"writer": writer, "worker": worker, "seq": seq}
        totals.append(await storage.append_raw_messages("shared", [tag]))
        await storage.store_reasoning_chain("shared-agent", tag)
        await storage.store_memory("shared", f"{writer}-{worker}-{seq}", tag)
        await storage.store_memory("shared", "hot", tag)


async def main(writer: str, workers: int, count: int, go: Path) -> None:
    totals: list[int] = []
    async with create_storage_from_env() as storage:
        print("ready", flush=True)
        while not go.exists():
            await asyncio.sleep(0.001)
        started = time.monotonic()
        await asyncio.gather(*(coroutine(storage, writer, w, count, totals) for w in range(workers)))
        finished = time.monotonic()
    print(json.dumps({"totals": totals, "started": started, "finished": finished}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])))
