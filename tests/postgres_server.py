"""A real PostgreSQL server for the tests: ``initdb`` and ``pg_ctl`` into a temp folder,
listening on 127.0.0.1 and a free port, never mocked.

``postgres_server`` is session-scoped and shared by every PostgreSQL test; each test
isolates itself in a schema of its own. Tests that stop or restart a server start their
own ``PostgresServer``. PostgreSQL refuses to run as root, so as root the server runs as
the ``postgres`` user that Debian's package creates (scripts/test.sh installs the package
when ``initdb`` is missing); the binaries come from ``$PG_BIN`` or Debian's
``/usr/lib/postgresql/<version>/bin`` or ``PATH``.

As another user, the server needs every folder above its own to be traversable; pytest
makes its ``pytest-of-<user>`` folder private again whenever another pytest run starts, so
such a server keeps its cluster in a folder of its own directly under the system's temp
folder (a link in ``directory`` points at it) and removes it when the test process exits.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .redis_server import free_port

__all__ = ["PASSWORD", "PostgresServer", "postgres_server"]

# The superuser's password: the server asks for it (scram-sha-256), so the tests of a wrong
# password get a real refusal.
PASSWORD = "connectome-test-password"
# Bounds a broken setup; measures nothing (a healthy server starts in about a second).
_STARTUP_GRACE_SECONDS = 60.0


def postgres_bin_dir() -> Path:
    """The folder holding ``initdb``, ``pg_ctl`` and ``postgres``; fails loudly when there is none."""
    explicit = os.environ.get("PG_BIN")
    candidates = [explicit] if explicit else sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(str(Path(on_path).resolve().parent))
    for candidate in candidates:
        if candidate and (Path(candidate) / "initdb").exists() and (Path(candidate) / "pg_ctl").exists():
            return Path(candidate)
    raise RuntimeError(
        "PostgreSQL's initdb and pg_ctl were not found: install them (apt install postgresql) or set "
        "PG_BIN to their folder; scripts/test.sh installs them for you"
    )


class PostgresServer:
    """One PostgreSQL cluster in ``directory`` (data folder, log, socket), on 127.0.0.1:``port``."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.bin = postgres_bin_dir()
        self.user = "postgres"
        self._run_as = "postgres" if os.geteuid() == 0 else None
        directory.mkdir(parents=True, exist_ok=True)
        if self._run_as:
            # Out of pytest's private folders (module docstring); the link says where it went.
            cluster = Path(tempfile.mkdtemp(prefix="connectome-pg-"))
            (directory / "cluster").symlink_to(cluster)
            entry = pwd.getpwnam(self._run_as)
            os.chown(cluster, entry.pw_uid, entry.pw_gid)
            atexit.register(self._remove)
            directory = cluster
        self.directory = directory
        self.data = directory / "data"

    def _remove(self) -> None:
        """At exit: a server still running is stopped (a crash is enough), then its folder goes."""
        try:
            if self.is_running():
                self.stop("immediate")
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    @property
    def dsn(self) -> str:
        return f"postgresql://{self.user}:{PASSWORD}@127.0.0.1:{self.port}/postgres"

    @property
    def log_path(self) -> Path:
        return self.directory / "postgres.log"

    def _command(self, *args: str) -> list[str]:
        command = [str(self.bin / args[0]), *args[1:]]
        return ["runuser", "-u", self._run_as, "--", *command] if self._run_as else command

    def _call(self, *args: str) -> None:
        result = subprocess.run(self._command(*args), capture_output=True, text=True, check=False)
        if result.returncode != 0:
            log = self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""
            raise RuntimeError(f"{' '.join(args[:2])} failed ({result.returncode}):\n{result.stderr}\n{log}")

    def init(self) -> None:
        """``initdb`` once: superuser ``postgres`` with ``PASSWORD``, scram authentication."""
        password_file = self.directory / "pwfile"
        password_file.write_text(PASSWORD + "\n")
        if self._run_as:
            entry = pwd.getpwnam(self._run_as)
            os.chown(password_file, entry.pw_uid, entry.pw_gid)
        self._call(
            "initdb", "-D", str(self.data), "-U", self.user, "--pwfile", str(password_file),
            "--auth", "scram-sha-256", "--encoding", "UTF8", "--locale", "C", "--no-sync",
        )  # fmt: skip
        password_file.unlink()

    def start(self) -> None:
        """Start (or restart, on the same port) and wait until it accepts connections."""
        if not self.data.exists():
            self.init()
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.directory} -c fsync=on"
        self._call("pg_ctl", "-D", str(self.data), "-l", str(self.log_path), "-o", options, "-w",
                   "-t", str(int(_STARTUP_GRACE_SECONDS)), "start")  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m mode``: ``immediate`` is a crash (recovery replays the WAL at the next start)."""
        if (self.data / "postmaster.pid").exists():
            self._call("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def is_running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def wait_until_ready(self) -> None:
        deadline = time.monotonic() + _STARTUP_GRACE_SECONDS
        while subprocess.run(
            [str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)], capture_output=True, check=False
        ).returncode:
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL on port {self.port} did not become ready")
            time.sleep(0.05)


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """The PostgreSQL server shared by the whole session; each test uses a schema of its own."""
    server = PostgresServer(tmp_path_factory.mktemp("postgres-server"))
    server.start()
    try:
        yield server
    finally:
        server.stop("immediate")
