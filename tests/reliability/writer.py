"""A writer process for concurrency tests: several coroutines appending at once.

    python writer.py WRITER_ID COROUTINES COUNT

The storage comes from the CONNECTOME_STORAGE_* variables, so the same script drives every
backend. Each coroutine appends COUNT raw messages to conversation "shared", COUNT
reasoning chains to agent "shared-agent" and stores COUNT memories, tagging each with
(writer, coroutine, seq) so the test can check counts and per-writer order.
"""

from __future__ import annotations

import asyncio
import sys

from connectome_storage import create_storage_from_env


async def coroutine(storage, writer: str, worker: int, count: int) -> None:  # type: ignore[no-untyped-def]
    for seq in range(count):
        tag = {"writer": writer, "worker": worker, "seq": seq}
        await storage.append_raw_messages("shared", [tag])
        await storage.store_reasoning_chain("shared-agent", tag)
        await storage.store_memory("shared", f"{writer}-{worker}-{seq}", tag)


async def main(writer: str, workers: int, count: int) -> None:
    async with create_storage_from_env() as storage:
        await asyncio.gather(*(coroutine(storage, writer, w, count) for w in range(workers)))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
