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
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

__all__ = ["RedisCluster", "RedisServer", "redis_cluster", "redis_server"]

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


# How long a new cluster may take to agree on its slots (cluster_state:ok on every node),
# and a replica to take over from a killed master. Bounds a broken setup; measures nothing.
_CLUSTER_GRACE_SECONDS = 30.0


class RedisCluster:
    """Six redis-server processes in cluster mode on 127.0.0.1: three masters, one replica each.

    Each node runs in its own directory with ``--cluster-node-timeout 1000``, so a killed
    master's replica is promoted about two seconds later. ``url`` names one node, as a
    caller's ``redis+cluster://`` URL would.
    """

    def __init__(self, directory: Path, size: int = 6) -> None:
        cluster_options = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        # A replica must have synced before its master dies, or it refuses to take over:
        # sync at once (the default waits 5 s for more replicas), and start() waits for it.
        cluster_options += ["--cluster-node-timeout", "1000", "--repl-diskless-sync-delay", "0"]
        self.nodes = [RedisServer(directory / f"node-{i}", _cluster_port(), extra=cluster_options) for i in range(size)]

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        cli = shutil.which("redis-cli") or str(Path(redis_server_binary()).with_name("redis-cli"))
        created = subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", "1", "--cluster-yes"],
            capture_output=True, text=True, timeout=_CLUSTER_GRACE_SECONDS, check=False,
        )  # fmt: skip
        if created.returncode != 0:
            self.stop()
            raise RuntimeError(f"redis-cli --cluster create failed:\n{created.stdout[-2000:]}{created.stderr[-2000:]}")
        self.wait_until(lambda: all(self.info(node).get("cluster_state") == "ok" for node in self.nodes), "be ok")
        self.wait_until(self.replicas_synced, "sync its replicas")

    def replicas_synced(self) -> bool:
        """Every replica's link to its master is up (INFO replication)."""
        roles = [self.command(node, "INFO", "replication") for node in self.nodes]
        replicas = [text for text in roles if "role:slave" in text]
        return len(replicas) == len(self.nodes) // 2 and all("master_link_status:up" in t for t in replicas)

    def command(self, node: RedisServer, *args: str) -> str:
        """One command sent to one node with redis-cli (raw reply text; empty when it is down)."""
        cli = shutil.which("redis-cli") or str(Path(redis_server_binary()).with_name("redis-cli"))
        done = subprocess.run(
            [cli, "-h", "127.0.0.1", "-p", str(node.port), *args],
            capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
        return done.stdout

    def info(self, node: RedisServer) -> dict[str, str]:
        lines = self.command(node, "CLUSTER", "INFO").splitlines()
        return dict(line.strip().split(":", 1) for line in lines if ":" in line)

    def masters(self) -> list[RedisServer]:
        """The live nodes that serve slots as masters now, as the first live node sees it."""
        by_port = {node.port: node for node in self.nodes}
        for node in self.nodes:
            if node.process is None or node.process.poll() is not None:
                continue
            masters = []
            for line in self.command(node, "CLUSTER", "NODES").splitlines():
                fields = line.split()
                flags = fields[2].split(",")
                port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
                alive = by_port[port].process is not None and by_port[port].process.poll() is None  # type: ignore[union-attr]
                if "master" in flags and not {"fail", "fail?"} & set(flags) and len(fields) > 8 and alive:
                    masters.append(by_port[port])
            return masters
        return []

    def wait_until(self, condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + _CLUSTER_GRACE_SECONDS
        while not condition():
            if time.monotonic() > deadline:
                states = {node.port: self.info(node).get("cluster_state") for node in self.nodes}
                raise RuntimeError(f"the Redis cluster did not {what} within {_CLUSTER_GRACE_SECONDS}s: {states}")
            time.sleep(0.05)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def _cluster_port() -> int:
    """A free port a cluster node can use: its bus port (10000 higher) must exist and be free too."""
    while True:
        port = free_port()
        if port > 55535:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A Redis Cluster shared by the whole session (three masters, three replicas); each
    test isolates itself by key prefix. Tests that kill a node start their own."""
    cluster = RedisCluster(tmp_path_factory.mktemp("redis-cluster"))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
