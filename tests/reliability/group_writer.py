"""A writer for the group-commit crash test: many coroutines appending at once, one SqliteStorage.

    python group_writer.py PROCESS ROUND COROUTINES

The storage comes from the CONNECTOME_STORAGE_* variables. Coroutine ``w`` appends one or
two messages at a time to its own conversation ``PROCESS-w`` (odd coroutines through the
conversation store, which keeps ``message_count``); each line on stdout, flushed before
that coroutine's next write, is an append the storage acknowledged: ``PROCESS W ROUND SEQ``
(the last message's seq). One more coroutine keeps appending to conversation ``refused``,
whose rows a trigger of the test refuses: its writes fail inside the same groups as the
others', and must take nothing of theirs with them.
"""

from __future__ import annotations

import asyncio
import sys

from connectome_storage import StorageError, StorageInterface, create_storage_from_env


async def appender(storage: StorageInterface, process: str, worker: int, round_: int) -> None:
    store = storage.conversation_store()
    conversation_id = f"{process}-{worker}"
    seq = 0
    while True:
        batch = [{"w": worker, "round": round_, "seq": seq + k} for k in range(1 + seq % 2)]
        if worker % 2:
            await store.append(conversation_id, batch)
        else:
            await storage.append_raw_messages(conversation_id, batch)
        seq += len(batch)
        sys.stdout.write(f"{process} {worker} {round_} {seq - 1}\n")
        sys.stdout.flush()


async def refused(storage: StorageInterface) -> None:
    while True:
        try:
            await storage.append_raw_messages("refused", [{"never": True}])
        except StorageError:
            continue
        raise SystemExit("a refused append was acknowledged")


async def main(process: str, round_: int, workers: int) -> None:
    async with create_storage_from_env() as storage:
        print("ready", flush=True)
        await asyncio.gather(refused(storage), *(appender(storage, process, w, round_) for w in range(workers)))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
