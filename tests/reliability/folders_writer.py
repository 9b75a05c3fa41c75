"""A writer for the folder crash test: creates, appends to and deletes conversations on a
file tree as fast as it can, printing each operation before it starts and once it is
acknowledged.

    python folders_writer.py BASE_DIR ROUND

``B <op> <id>`` is printed (and flushed) before an operation starts, ``A <op> <id>`` once
the storage acknowledged it; ``op`` is ``create``, ``append`` or ``delete``.
"""

from __future__ import annotations

import asyncio
import random
import sys

from connectome_storage import FileStorage

MSG = [{"role": "user", "content": "hi"}]


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def create(storage: FileStorage, key: str, way: int) -> None:
    if way == 0:
        await storage.store_conversation(key, {"id": key})
    elif way == 1:
        await storage.append_raw_messages(key, MSG)
    elif way == 2:
        await storage.store_memory(key, "m", {"id": key})
    elif way == 3:
        await storage.conversation_store().save(key, MSG, ttl=3600)
    else:
        async with storage.transaction() as tx:
            await tx.store_conversation(key, {"id": key})
            await tx.append_raw_messages(key, MSG)


async def delete(storage: FileStorage, key: str, way: int) -> None:
    if way == 0:
        await storage.delete_conversation(key)
    elif way == 1:
        await storage.conversation_store().delete(key)
    elif way == 2:
        async with storage.transaction() as tx:
            await tx.delete_conversation(key)
    else:
        # Part by part: a removal of its last part takes the folder with it.
        await storage.store_raw_messages(key, [])
        await storage.delete_memory(key, "m")
        await storage.delete_conversation(key)


async def main(base: str, round_: int) -> None:
    rng = random.Random(round_)
    storage = FileStorage({"base_dir": base})
    async with storage:
        alive = await storage.list_conversations()
        say("ready")
        i = 0
        while True:
            roll = rng.random()
            if alive and roll < 0.35:
                key = alive.pop(rng.randrange(len(alive)))
                say(f"B delete {key}")
                await delete(storage, key, rng.randrange(4))
                say(f"A delete {key}")
            elif alive and roll < 0.5:
                key = rng.choice(alive)
                say(f"B append {key}")
                await storage.append_raw_messages(key, MSG)
                say(f"A append {key}")
            else:
                key = f"c{round_}-{i}"
                i += 1
                say(f"B create {key}")
                await create(storage, key, rng.randrange(5))
                say(f"A create {key}")
                alive.append(key)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
