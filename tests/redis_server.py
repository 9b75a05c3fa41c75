"""A real ``redis-server`` for the tests: started on 127.0.0.1 and a free port, never mocked.

``redis_server`` is session-scoped and shared by every Redis test; tests that kill or pause
a server start their own ``RedisServer`` so the shared one stays up. The binary comes
from ``$REDIS_SERVER_BIN`` or ``PATH`` (scripts/test.sh installs it when missing).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["RedisServer", "redis_server"]

# How long a starting server may take to answer PING before we give up and show its log.
# This bounds a broken setup, it measures nothing: a healthy server answers in milliseconds.
_STARTUP_GRACE_SECONDS = 30.0


def redis_server_binary() -> str:
    """Path of the redis-server to run; skips nothing, fails loudly when there is none."""
    binary = os.environ.get("REDIS_SERVER_BIN") or shutil.which("redis-server")
    if not binary:
        raise RuntimeError(
            "redis-server not found: install it (apt install redis-server) or set "
            "REDIS_SERVER_BIN; scripts/test.sh installs it for you"
        )
    return binary


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RedisServer:
    """One redis-server process with no persistence, in its own directory.

    ``password`` sets ``requirepass`` (the default user then needs it); ``extra`` are more
    ``--name value`` arguments (``["--appendonly", "yes"]`` to make it persist).
    """

    def __init__(
        self, directory: Path, port: int | None = None, *, password: str | None = None, extra: list[str] | None = None
    ) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.password = password
        self.extra = list(extra or [])
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.directory / "redis.log"

    def start(self) -> None:
        """Start (or restart, on the same port) and wait until it answers PING."""
        command = [
            redis_server_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.directory),
            "--logfile", str(self.log_path),
            "--daemonize", "no",
        ]  # fmt: skip
        if self.password is not None:
            command += ["--requirepass", self.password]
        command += self.extra  # later arguments win over the defaults above
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + _STARTUP_GRACE_SECONDS
        while not self.answers_ping():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
                raise RuntimeError(f"redis-server on port {self.port} did not start:\n{log[-2000:]}")
            time.sleep(0.02)

    def answers_ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as connection:
                if self.password is not None:
                    connection.sendall(f"AUTH {self.password}\r\n".encode())
                    if not connection.recv(16).startswith(b"+OK"):
                        return False
                connection.sendall(b"PING\r\n")
                return connection.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL, as a crash or a pulled plug would; waits until the process is gone."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def pause(self) -> None:
        """SIGSTOP: the port still accepts connections but nothing answers (a hung server)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """SIGTERM and wait; SIGKILL if it does not go."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGCONT)  # a paused server cannot act on SIGTERM
        self.process.terminate()
        try:
            self.process.wait(timeout=_STARTUP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            self.kill()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """The redis-server shared by the whole session; each test isolates itself by key prefix."""
    server = RedisServer(tmp_path_factory.mktemp("redis-server"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
