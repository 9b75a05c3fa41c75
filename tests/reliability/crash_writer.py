"""A writer for crash tests: works as fast as it can and prints each acknowledged operation.

    python crash_writer.py ROUND

The storage comes from the CONNECTOME_STORAGE_* variables. Each line on stdout, flushed
before the next operation starts, is an operation the storage acknowledged:
``doc ROUND I``, ``log ROUND I``, ``chain ROUND I``, ``mem ROUND I``.
"""

from __future__ import annotations

import asyncio
import sys

from connectome_storage import create_storage_from_env


def ack(kind: str, round_: int, i: int) -> None:
    sys.stdout.write(f"{kind} {round_} {i}\n")
    sys.stdout.flush()


async def main(round_: int) -> None:
    async with create_storage_from_env() as storage:
        print("ready", flush=True)
        i = 0
        while True:
            await storage.store_conversation("doc", {"round": round_, "i": i, "pad": "x" * 500})
            ack("doc", round_, i)
            await storage.append_raw_messages("log", [{"round": round_, "seq": i, "pad": "y" * 200}])
            ack("log", round_, i)
            await storage.store_reasoning_chain("agent", {"round": round_, "seq": i})
            ack("chain", round_, i)
            await storage.store_memory("log", f"m{i % 5}", {"round": round_, "i": i})
            ack("mem", round_, i)
            i += 1


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
