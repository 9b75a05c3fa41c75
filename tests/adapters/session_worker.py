"""A process of the pop/add race in test_openai_agents.py.

``python session_worker.py add SPEC SESSION COUNT GO DONE``: waits for the file GO, adds
items {"n": 0, 1, ...} one by one (COUNT, or more until the popper has popped one), prints
how many, then creates DONE.
``python session_worker.py pop SPEC SESSION COUNT GO DONE``: waits for GO, pops until DONE
exists (so some items usually stay stored), and prints the popped items as JSON.
SPEC is ``file:PATH`` or ``sqlite:PATH``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from connectome_storage import StorageInterface, create_file_storage, create_sqlite_storage
from connectome_storage.adapters.openai_agents import ConnectomeSession


def open_storage(spec: str) -> StorageInterface:
    kind, _, path = spec.partition(":")
    return create_file_storage(path) if kind == "file" else create_sqlite_storage(path)


async def add(session: ConnectomeSession, count: int, first_pop: Path) -> int:
    """Add ``count`` items, and go on adding (up to ten times as many) until the popper has
    popped one, so a race always takes place however the two processes are scheduled;
    returns how many were added."""
    n = 0
    while n < count or (not first_pop.exists() and n < 10 * count):
        await session.add_items([{"role": "user", "content": f"item {n}", "n": n}])  # type: ignore[list-item]
        n += 1
        # A breath between adds: SQLite's busy handler lets a writer in a tight loop take
        # the lock again and again, and the popper would seldom get a turn.
        await asyncio.sleep(0.002)
    return n


async def main(role: str, spec: str, session_id: str, count: int, go: Path, done: Path) -> None:
    first_pop = done.with_name(done.name + ".first-pop")
    while not go.exists():
        time.sleep(0.005)
    async with open_storage(spec) as storage:
        session = ConnectomeSession(session_id, storage)
        if role == "add":
            print(await add(session, count, first_pop))
            done.touch()
        else:
            # Leave some items behind on purpose: pop only until the adder has finished.
            print(json.dumps(await pop_some(session, done, first_pop)))


async def pop_some(session: ConnectomeSession, done: Path, first_pop: Path) -> list[Any]:
    popped: list[Any] = []
    while not done.exists():
        item = await session.pop_item()
        if item is not None:
            popped.append(item)
            first_pop.touch()
    return popped


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), Path(sys.argv[5]), Path(sys.argv[6])))
