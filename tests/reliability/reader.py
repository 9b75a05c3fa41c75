"""A reader process for concurrency tests: loads the shared history until STOP_FILE exists.

Exits 1 if a load ever fails or the history ever shrinks; prints how many loads it did.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from connectome_storage import create_storage_from_env


async def main(stop_file: Path) -> int:
    loads, last = 0, 0
    async with create_storage_from_env() as storage:
        while not stop_file.exists():
            count = len(await storage.load_raw_messages("shared"))
            if count < last:
                print(f"history shrank from {last} to {count}", file=sys.stderr)
                return 1
            last, loads = count, loads + 1
    print(loads)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(Path(sys.argv[1]))))
