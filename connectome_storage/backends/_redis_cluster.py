"""What differs between one Redis server and Redis Cluster, apart from key names (_redis_layout.py).

- ``make_client``: a ``redis.asyncio.Redis`` or ``RedisCluster`` from the URL, with the
  storage's timeouts; ``make_retry``: the retries of connecting and of reads (never of a
  write whose bytes may have reached the server: a resent RPUSH appends twice).
- ``Held``: one connection to the server (on a cluster: to the master serving a key's
  slot), held for commands that must share a connection: WATCH and the MULTI/EXEC it
  guards, or a write and the WAIT that counts the replicas that received it.
- ``cluster_health``: the cluster's own view of itself for ``health_check()``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "BACKOFF_BASE", "BACKOFF_CAP", "Held", "cluster_health", "is_cluster_client", "make_client", "make_retry",
    "plain_url", "wait_command",
]  # fmt: skip


def wait_command(replicas: int, timeout: float) -> tuple[str, int, int]:
    """WAIT for ``replicas`` replicas, within the socket timeout ``timeout`` (seconds) with a
    margin, so that a slow replica gives WAIT's own answer rather than a broken connection.
    (The server checks blocked clients' timeouts about every 100 ms: the margin is 250 ms.)"""
    milliseconds = int(timeout * 1000)
    return ("WAIT", replicas, max(1, milliseconds - max(250, milliseconds // 10)))


def plain_url(url: str) -> str:
    """``redis+cluster://`` -> ``redis://`` (``rediss+cluster://`` -> ``rediss://``): what redis-py parses."""
    scheme, sep, rest = url.partition("://")
    return scheme.removesuffix("+cluster") + sep + rest


def is_cluster_client(client: Any) -> bool:
    return isinstance(client, _cluster_class())


@functools.cache
def _cluster_class() -> type:
    # Imported once, not on every call: Held.take asks on every write (an import statement
    # costs about a microsecond even when the module is loaded).
    from redis.asyncio.cluster import RedisCluster

    return RedisCluster


# Exponential backoff between tries (redis-py's ExponentialBackoff: min(cap, base * 2**n)
# seconds after the n-th failure): 0.1, 0.2, 0.4, 0.8, then 1 s each. max_retries=3 waits
# 0.7 s in all, long enough for a restarting server or a dropped connection to come back.
BACKOFF_BASE = 0.05
BACKOFF_CAP = 1.0


def make_retry(redis: Any, retries: int, *, cluster: bool = False) -> Any:
    """redis-py's Retry with our backoff, on a broken connection only (ConnectionError, which
    covers a refused connect and a server still loading its data; on a cluster also
    CLUSTERDOWN). Never on a timeout: a hung server costs one connection_timeout, not n."""
    errors: tuple[type[Exception], ...] = (redis.exceptions.ConnectionError,)
    if cluster:
        errors += (redis.exceptions.ClusterDownError,)
    backoff = redis.backoff.ExponentialBackoff(cap=BACKOFF_CAP, base=BACKOFF_BASE)
    return redis.asyncio.retry.Retry(backoff, retries, supported_errors=errors)


def make_client(redis: Any, url: str, timeout: float, *, cluster: bool, retries: int) -> Any:
    """A client the storage owns.

    One server: the pool's connections carry ``make_retry(retries)``, which redis-py applies
    to connecting (pool.get_connection) and to every command it sends itself. The storage
    sends reads that way; it sends writes on a connection it takes from the pool (``Held``),
    once, so only their connecting is tried again (docs/redis.md, Retries).

    Cluster: no retries inside redis-py. RedisCluster retries a command whole (connect,
    send and read, with no way to tell which failed), which could apply a write twice; the
    storage retries reads itself with ``make_retry(retries, cluster=True)``.
    """
    options = {"socket_connect_timeout": timeout, "socket_timeout": timeout}
    if not cluster:
        return redis.asyncio.Redis.from_url(url, retry=make_retry(redis, retries), **options)
    no_retry = redis.asyncio.retry.Retry(redis.backoff.NoBackoff(), 0)
    # The URL's node is the startup node; the client learns the others from it. A command
    # sent to a node that is gone fails at once and makes the client read the cluster's
    # layout again before the next one.
    return redis.asyncio.RedisCluster.from_url(plain_url(url), retry=no_retry, **options)


@dataclass
class Held:
    """One connection taken out of the pool until ``release``."""

    connection: Any
    node: Any = None  # the cluster node it belongs to; None on a single server
    pool: Any = None  # the single server's pool
    broken: bool = False  # closed on release instead of reused

    @classmethod
    async def take(cls, client: Any, key: str) -> Held:
        if is_cluster_client(client):
            await client.initialize()  # no-op unless the client must (re)learn the cluster's layout
            node = client.get_node_from_key(key)
            return cls(node.acquire_connection(), node=node)
        pool = client.connection_pool
        held = cls(await pool.get_connection(), pool=pool)
        try:
            await held._replace_if_closed()
        except BaseException:
            await held.release()
            raise
        return held

    async def _replace_if_closed(self) -> None:
        """Reconnect a pooled connection the server has closed (a restart, an idle timeout)
        before anything is sent on it. redis-py's pool checks this itself only when push
        notifications are off (RESP3 turns them on); a command it sends itself is retried
        anyway, but a write sent on a dead connection could not be. Connecting again is
        retried by the connection's Retry (max_retries)."""
        connection = self.connection
        try:
            closed = await connection.can_read()  # EOF seen, or bytes nobody asked for
        except Exception:  # ConnectionError, OSError: the socket is unusable
            closed = True
        if closed:
            await connection.disconnect()
            await connection.connect()

    async def send(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Send ``commands`` in one write and read every reply; an error reply comes back as
        its exception (ResponseError), a broken connection raises (and marks it broken)."""
        from redis.exceptions import ResponseError

        connection = self.connection
        try:
            await connection.send_packed_command(connection.pack_commands(commands))
            replies: list[Any] = []
            for _ in commands:
                try:
                    replies.append(await connection.read_response())
                except ResponseError as e:
                    replies.append(e)
            return replies
        except BaseException:  # a connection error, a timeout, a cancellation: unread replies may follow
            self.broken = True
            raise

    async def release(self) -> None:
        connection, self.connection = self.connection, None
        if connection is None:
            return
        if self.broken:
            await connection.disconnect()
        if self.node is not None:
            self.node.release(connection)
        else:
            await self.pool.release(connection)


async def cluster_health(client: Any) -> dict[str, Any]:
    """Nodes, masters and slot coverage as the cluster reports them (CLUSTER INFO, PING of
    every master). ``ok`` is False when a slot is not served or a master does not answer."""
    info = await client.cluster_info()
    masters = client.get_primaries()
    answering = 0
    for node in masters:
        try:
            if await client.ping(target_nodes=node):
                answering += 1
        except Exception:  # a master that does not answer is what we count
            pass
    slots_ok = int(info.get("cluster_slots_ok", 0))
    state = info.get("cluster_state")
    return {
        "ok": state == "ok" and slots_ok == 16384 and answering == len(masters),
        "cluster_state": state,
        "cluster_slots_ok": slots_ok,
        "cluster_known_nodes": int(info.get("cluster_known_nodes", 0)),
        "nodes": len(client.get_nodes()),
        "masters": len(masters),
        "masters_up": answering,
    }
