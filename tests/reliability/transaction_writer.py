"""A writer for the transaction crash test: loops transactions as fast as it can.

    python transaction_writer.py

The storage comes from the CONNECTOME_STORAGE_* variables. Round ``r`` is one transaction
writing ``r`` into a document, a raw message log append, a memory, a system state and a
key-value entry; after its commit returns, ``r`` is printed and flushed (acknowledged).
It starts from the round after the one the storage holds, so kills can follow each other.
"""

from __future__ import annotations

import asyncio
import sys

from connectome_storage import create_storage_from_env


async def main() -> None:
    async with create_storage_from_env() as storage:
        state = await storage.load_system_state("round")
        round_number = 0 if state is None else state["round"] + 1
        print("ready", flush=True)
        while True:
            async with storage.transaction() as tx:
                await tx.store_conversation("doc", {"round": round_number, "pad": "x" * 300})
                await tx.append_raw_messages("log", [{"round": round_number}])
                await tx.store_memory("doc", "m", {"round": round_number})
                await tx.store_system_state("round", {"round": round_number})
                await tx.kv("turns").set("last", {"round": round_number})
            sys.stdout.write(f"{round_number}\n")
            sys.stdout.flush()
            round_number += 1


if __name__ == "__main__":
    asyncio.run(main())
