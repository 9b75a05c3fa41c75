"""Worker processes released together: start them, wait until each is ready at the start
line, let them go at once, and collect what they print (the race tests share this)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from subprocess import PIPE
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
HANG = 300  # seconds: a process slower than this hangs, whatever the machine


def start(script: str | Path, *args: Any) -> subprocess.Popen[str]:
    """``python script args...`` with this checkout importable, stdout and stderr captured."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(
        [sys.executable, str(script), *map(str, args)], stdout=PIPE, stderr=PIPE, text=True, env=env
    )


async def race(
    procs: list[subprocess.Popen[str]], readies: list[Path], go: Path, *, meanwhile: Callable[[], None] | None = None
) -> list[str]:
    """Wait for every ``readies`` file, create ``go``, and return each process's stdout once
    all exited 0; ``meanwhile`` is called again and again while they run."""
    try:
        deadline = time.monotonic() + HANG
        while not all(r.exists() for r in readies):
            failed = [p for p in procs if p.poll() not in (None, 0)]
            assert not failed, failed[0].communicate()[1]
            assert time.monotonic() < deadline, "the racing processes never got ready"
            await asyncio.sleep(0.01)
        go.write_text("go")
        while meanwhile is not None and any(p.poll() is None for p in procs):
            meanwhile()
            assert time.monotonic() < deadline + HANG, "the racing processes hang"
            await asyncio.sleep(0.0005)
        outputs = [p.communicate(timeout=HANG) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err
    return [out for out, _err in outputs]
