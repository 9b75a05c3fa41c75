"""The PostgreSQL server crashes under writers: nothing acknowledged is lost, nothing is half done.

Writer processes loop plain appends and transactions on a server of the test's own; the
test crashes the server (``pg_ctl stop -m immediate``: no shutdown checkpoint, recovery
replays the WAL at the next start), keeps it down a moment, and starts it again on the
same port. Each writer prints every write the storage acknowledged and the class of every
error it got. Afterwards:

- every acknowledged plain append is in its log, in order, and only appends that were
  tried are there (one whose outcome was unknown may be there or not, never twice);
- every transaction is all or nothing: its document, log item, key-value entry and system
  state are all there or none, and all there when it was acknowledged;
- during the outage writes failed with BackendUnavailableError (a transaction's commit
  with TransactionError), never with an asyncpg or OS exception;
- after the restart every writer got writes acknowledged again without being restarted:
  the storage reconnected by itself.

The short form (one crash) runs in CI; the long form is marked slow:

    python -m pytest -s tests/reliability/test_postgres_restart.py -m slow

Run as a script, this file is one writer (the test starts two).
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402

from connectome_storage import create_storage_from_env  # noqa: E402
from connectome_storage.errors import StorageError  # noqa: E402
from tests.postgres_server import PostgresServer  # noqa: E402

WRITERS = 2
LONG_RESTARTS = 25
# Seconds after which a writer is taken to hang: a guard against a stuck suite, not a measure of speed.
HANG = 120
# Errors a write may raise while the server is away (a transaction's commit: TransactionError).
EXPECTED_ERRORS = {"BackendUnavailableError", "TransactionError"}


# ------------------------------------------------------------------ the writer


async def write(name: str, out: Path, stop: Path) -> None:
    """Alternate a plain append and a transaction until ``stop`` exists; one line per outcome:
    ``plain I``, ``tx I`` (acknowledged), ``error I CLASS``, ``raw I CLASS message`` (not a StorageError)."""
    with out.open("a", buffering=1) as log:
        async with create_storage_from_env() as storage:
            log.write("ready\n")
            i = 0
            while not stop.exists():
                try:
                    if i % 2 == 0:
                        await storage.append_raw_messages(f"log-{name}", [{"i": i}])
                        log.write(f"plain {i}\n")
                    else:
                        async with storage.transaction() as tx:
                            await tx.store_conversation(f"doc-{name}-{i}", {"i": i})
                            await tx.append_raw_messages(f"txlog-{name}", [{"i": i}])
                            await tx.kv("turns").set(f"{name}-{i}", {"i": i})
                            await tx.store_system_state(f"{name}-{i}", {"i": i})
                        log.write(f"tx {i}\n")
                except StorageError as e:
                    log.write(f"error {i} {type(e).__name__}\n")
                    await asyncio.sleep(0.02)
                except Exception as e:  # what the test exists to catch
                    log.write(f"raw {i} {type(e).__module__}.{type(e).__name__} {e!r}\n".replace("\n", " ") + "\n")
                    await asyncio.sleep(0.02)
                i += 1
            log.write(f"done {i}\n")


# -------------------------------------------------------------------- the test


def lines(path: Path) -> list[list[str]]:
    text = path.read_text() if path.exists() else ""
    return [line.split() for line in text.splitlines(keepends=True) if line.endswith("\n") and line.strip()]


def wait_for(what: str, condition: object, procs: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + HANG
    while not condition():  # type: ignore[operator]
        for proc in procs:
            if proc.poll() is not None:
                raise AssertionError(f"a writer exited while waiting for {what}: {proc.stderr.read().decode()}")  # type: ignore[union-attr]
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.01)


def acks_after_last_error(rows: list[list[str]]) -> int:
    last_error = max((n for n, row in enumerate(rows) if row[0] in ("error", "raw")), default=-1)
    return sum(1 for row in rows[last_error + 1 :] if row[0] in ("plain", "tx"))


def crash_and_restart(
    server: PostgresServer, outs: list[Path], procs: list[subprocess.Popen[bytes]], rng: random.Random
) -> None:
    """Crash the server while the writers write; start it again once each writer has seen
    the outage; return once each has had writes acknowledged since."""
    before = [len(lines(out)) for out in outs]
    server.stop("immediate")
    wait_for(
        "an error in every writer",
        lambda: all(any(r[0] in ("error", "raw") for r in lines(out)[n:]) for out, n in zip(outs, before, strict=True)),
        procs,
    )
    time.sleep(rng.uniform(0.0, 0.5))  # a longer or shorter outage
    server.start()
    wait_for(
        "acknowledged writes after the restart", lambda: all(acks_after_last_error(lines(o)) >= 4 for o in outs), procs
    )


async def check(env: dict[str, str], outs: list[Path]) -> dict[str, int]:
    figures = {"plain": 0, "tx": 0, "errors": 0, "unknown plain present": 0, "unacknowledged tx applied": 0}
    async with create_storage_from_env(env) as storage:
        assert await storage.verify() == []
        for n, out in enumerate(outs):
            name, rows = f"w{n}", lines(out)
            raw = [row for row in rows if row[0] == "raw"]
            assert raw == [], f"{name} got exceptions that are not StorageErrors: {raw[:3]}"
            errors = {row[2] for row in rows if row[0] == "error"}
            assert "BackendUnavailableError" in errors and errors <= EXPECTED_ERRORS, errors
            tried = int(next(row[1] for row in rows if row[0] == "done"))
            acked = {(row[0], int(row[1])) for row in rows if row[0] in ("plain", "tx")}
            figures["errors"] += sum(1 for row in rows if row[0] == "error")

            log = [item["i"] for item in await storage.load_raw_messages(f"log-{name}")]
            assert log == sorted(set(log)), f"{name}: the plain log is out of order or holds a duplicate"
            assert set(log) <= set(range(0, tried, 2)), f"{name}: the plain log holds an append never tried"
            plain_acked = {i for kind, i in acked if kind == "plain"}
            assert plain_acked <= set(log), f"{name}: acknowledged appends lost: {sorted(plain_acked - set(log))}"
            figures["plain"] += len(plain_acked)
            figures["unknown plain present"] += len(set(log) - plain_acked)

            txlog = {item["i"] for item in await storage.load_raw_messages(f"txlog-{name}")}
            turns = storage.kv("turns")
            for i in range(1, tried, 2):
                parts = {
                    "document": await storage.load_conversation(f"doc-{name}-{i}") == {"i": i},
                    "log": i in txlog,
                    "kv": await turns.get(f"{name}-{i}") == {"i": i},
                    "state": await storage.load_system_state(f"{name}-{i}") == {"i": i},
                }
                assert len(set(parts.values())) == 1, f"{name}: transaction {i} applied in part: {parts}"
                if ("tx", i) in acked:
                    assert all(parts.values()), f"{name}: acknowledged transaction {i} lost"
                    figures["tx"] += 1
                elif all(parts.values()):
                    figures["unacknowledged tx applied"] += 1
    return figures


def run(tmp_path: Path, restarts: int, seed: int) -> dict[str, int]:
    server = PostgresServer(tmp_path / "pg")
    server.start()
    env = {
        "CONNECTOME_STORAGE_TYPE": "postgres",
        "CONNECTOME_STORAGE_POSTGRES_DSN": server.dsn,
        "CONNECTOME_STORAGE_POSTGRES_SCHEMA": "restart",
    }
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CONNECTOME_STORAGE_")} | env
    full_env["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    stop = tmp_path / "stop"
    outs = [tmp_path / f"w{n}.out" for n in range(WRITERS)]
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, f"w{n}", str(outs[n]), str(stop)],
            env=full_env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for n in range(WRITERS)
    ]
    rng = random.Random(seed)
    try:
        wait_for(
            "the writers to start writing", lambda: all(acks_after_last_error(lines(o)) >= 10 for o in outs), procs
        )
        for restart in range(restarts):
            time.sleep(rng.uniform(0.0, 0.3))  # the crash lands anywhere in the writers' loop
            crash_and_restart(server, outs, procs, rng)
            if (restart + 1) % 5 == 0:  # progress of a long run, seen with -s
                print(f"{restart + 1} server crashes survived", flush=True)
        stop.touch()
        for proc in procs:
            _, err = proc.communicate(timeout=HANG)
            assert proc.returncode == 0, err.decode()
        return asyncio.run(check(env, outs))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        server.stop("immediate")


def test_server_crash_and_restart_under_writers(tmp_path: Path) -> None:
    figures = run(tmp_path, restarts=1, seed=1)
    print(f"1 server crash: {figures}")


@pytest.mark.slow
def test_server_crash_and_restart_long_form(tmp_path: Path) -> None:
    figures = run(tmp_path, restarts=LONG_RESTARTS, seed=7)
    print(f"{LONG_RESTARTS} server crashes: {figures}")


if __name__ == "__main__":
    asyncio.run(write(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])))
