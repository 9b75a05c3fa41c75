"""RedisStorage: the same API on a Redis server, using Redis types natively.

Key layout (``P`` is ``key_prefix``; ``<id>`` is the id percent-encoded by
``naming.encode_name``, which never holds ``{``, ``}`` or ``:``, so every key is
unambiguous and the braces are a cluster hash tag grouping one conversation's keys)::

    P conv:{<id>}:current   string  conversation document (compact JSON, or msgpack)
    P conv:{<id>}:chunks    string  chunking decisions (JSON array)
    P conv:{<id>}:raw       list    raw messages, one JSON text per element
    P conv:{<id>}:mem       hash    memory_id -> memory JSON
    P conv:{<id>}:order     zset    memory_id scored by insertion sequence (first-stored order)
    P conv:{<id>}:meta      hash    conversation store metadata (_redis_conv.py)
    P agent:{<id>}:chains   list    reasoning chains, one JSON text per element
    P cache:{<id>}          string  {"created_ms", "expires_ms", "data"}, expired by Redis (PX)
    P system:{<id>}         string  the state value
    P idx:conversations     set     ids of conversations with any stored part
    P idx:conversation-expiry zset  ids of conversations with an expiry, scored by expires_ms
    P idx:agents            set     ids of agents with chains
    P idx:system            set     state keys
    P idx:cache             zset    cache keys scored by expires_ms (+inf: never)
    P meta:serializer       string  json or msgpack: how every value under the prefix is stored
    P msg:{m}:...                   the message store (_redis_messages.py)
    P health:{<random>}     string  health_check()'s probe, deleted at once (PX 60 s in case it is not)

On Redis Cluster (``cluster=True``, a ``redis+cluster://`` URL, or a RedisCluster client)
every key that one script or one MULTI touches must be in one hash slot, so the indexes
are sharded into 256 buckets by id (``bucket = crc32(<id>) % 256``) and each entity's keys
carry its bucket's hash tag (_redis_layout.py builds every key name, for both layouts)::

    P conv:{c:<bucket>}:<id>:current ...        P idx:{c:<bucket>}:conversations
                                                P idx:{c:<bucket>}:conversation-expiry
    P agent:{a:<bucket>}:<id>:chains            P idx:{a:<bucket>}:agents
    P cache:{x:<bucket>}:<id>                   P idx:{x:<bucket>}:cache
    P system:{s:<bucket>}:<id>                  P idx:{s:<bucket>}:system
    P kv:{n:<bucket>}:<namespace>:...           P idx:{n:<bucket>}:kv
    P msg:{m}:..., P meta:serializer            as on one server

Listings, stats, cleanup and verify read every bucket in one pipeline (the cluster client
sends each master its share at once). A transaction may touch one hash slot (_redis_tx.py).

Values (JSON texts above) go through the serializer of the ``serializer`` option
(``serializer.py``): compact JSON by default, or msgpack; ``meta:serializer`` records
which one wrote the prefix, and a storage opened with the other is refused.

Every operation that touches several keys is one Lua script (_redis_lua.py), so it is
atomic and one round trip. Replacing a system state or appending to a reasoning chain
whose key already exists is one plain command instead (SET XX, RPUSHX): an existing key
is always listed in its index already, so there is nothing else to touch, and Redis runs
a plain command faster than a script. Every write of a conversation part is a script,
because it also checks the conversation's expiry on the storage clock (and removes an
expired conversation first): _redis_conv.py. Reads of a part are a script too on an
injected clock; on the default clock (time.time) every key of the conversation carries its
PEXPIRE, so they are a plain GET or LRANGE. docs/redis.md explains expiry, faults and retries.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, ClassVar, TypeVar
from urllib.parse import unquote

from ..config import RedisSettings, redact_url
from ..errors import (
    AccessDeniedError,
    BackendUnavailableError,
    ConfigError,
    CorruptedDataError,
    StorageError,
    StorageFullError,
    StorageIOError,
    ValueTooLargeError,
)
from ..interface import CacheEntry, Kind, Problem, StorageInterface
from ..naming import encode_name as _encode_name
from ..serializer import Serializer, make_serializer
from ._redis_cluster import Held, cluster_health, is_cluster_client, make_client, make_retry, wait_command
from ._redis_conv import RedisConversations
from ._redis_kv import RedisKV
from ._redis_kv_lua import KV_SCRIPTS
from ._redis_layout import KeyLayout, make_layout
from ._redis_lua import SCRIPTS
from ._redis_messages import MSG_SCRIPTS, RedisMessages
from ._redis_tx import Command, RedisTransactions

# redact_url lives in config (the CLI and every backend show URLs); it is re-exported here
# because this is where Redis URLs are used.
__all__ = ["RedisStorage", "redact_url"]

T = TypeVar("T")

logger = logging.getLogger("connectome_storage")

_INSTALL_HINT = "RedisStorage needs the redis package: pip install connectome-storage[redis]"
_HINT = "store the entity again to replace it, or delete the key"
# Ids per pipeline or script call: big enough to amortise round trips, small enough that
# one call never blocks the server for long.
_BATCH = 500
# Conversations (or keys) per stats script: about 10 commands each on the server, so a
# script of 1,000 runs a few milliseconds.
_STATS_BATCH = 1000
# Redis refuses one bulk argument (a string value, a list element, a hash field) longer than
# proto-max-bulk-len: 512 MiB unless the server is configured otherwise, and never below
# 1 MiB. Over it, the server closes the connection mid-request instead of answering.
_DEFAULT_BULK_LIMIT = 512 * 1024 * 1024
_MIN_BULK_LIMIT = 1024 * 1024
# The error a conversation script raises for a metadata key that is not a hash.
_META_WRONGTYPE = re.compile(r"WRONGTYPE (.+) \(conversation metadata\) is not a hash")
# A health probe key left behind (a probe cut off between its write and its delete) expires.
_PROBE_TTL_MS = 60_000

_SUFFIX = {Kind.CONVERSATION: "current", Kind.CHUNKS: "chunks", Kind.RAW_MESSAGES: "raw", Kind.MEMORIES: "mem"}
# Where each part's key is in the conversation scripts' KEYS (1-based; see _redis_lua.py).
_SLOT = {Kind.CONVERSATION: 2, Kind.RAW_MESSAGES: 3, Kind.CHUNKS: 4, Kind.MEMORIES: 5}
_ORDER_SLOT = 6
# The layout's name of each kind that has an index (_redis_layout.py).
_KIND = {Kind.REASONING_CHAINS: "agent", Kind.CACHE: "cache", Kind.SYSTEM: "system"}


def _import_redis() -> Any:
    try:
        import redis.asyncio
        import redis.asyncio.retry
        import redis.backoff
        import redis.exceptions
    except ImportError as e:
        raise ImportError(_INSTALL_HINT) from e
    return redis


class RedisStorage(RedisTransactions, RedisConversations, RedisKV, RedisMessages, StorageInterface):
    """Stores everything on a Redis server under ``key_prefix``.

    Options: ``redis_url``, ``key_prefix``, ``connection_timeout`` (connect and socket
    timeout, seconds), ``client`` (an existing ``redis.asyncio.Redis``, which stays the
    caller's: shutdown() never closes it), ``serializer`` (``json`` or ``msgpack``),
    ``clock``, ``default_cache_ttl``. Raises ImportError naming the extra when the redis
    package (or msgpack, for that serializer) is missing.
    """

    backend_name: ClassVar[str] = "redis"
    settings_class: ClassVar[type[RedisSettings]] = RedisSettings
    settings: RedisSettings

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__(config)
        self._redis = _import_redis()
        self._prefix = self.settings.key_prefix
        # Redis Cluster when asked for (cluster=True, a redis+cluster:// URL) or handed a
        # RedisCluster client; the key layout follows (_redis_layout.py), chosen here once.
        url_scheme = self.settings.redis_url.partition("://")[0].lower()
        self._cluster = bool(
            self.settings.cluster or url_scheme.endswith("+cluster") or is_cluster_client(self.settings.client)
        )
        self._layout: KeyLayout = make_layout(self._prefix, cluster=self._cluster)
        self._serializer: Serializer = make_serializer(self.settings.serializer)
        # Typed Any: redis-py annotates its commands as sync-or-async unions that only
        # type-check with a cast at every call.
        self._client: Any = None
        self._owns_client = False
        # On a cluster, the retries of reads (make_client says why they are not the client's);
        # on one server redis-py retries them itself, and this stays None.
        self._read_retry: Any = None
        self._scripts: dict[str, Any] = {}
        # Shown in messages, health and repr: never the password (docs/redis.md, Secrets).
        self._server = redact_url(self.settings.redis_url)
        self._secrets = _url_secrets(self.settings.redis_url)
        # Read from the server at initialize() (CONFIG GET); these are the values assumed
        # when CONFIG is not permitted.
        self._bulk_limit = _DEFAULT_BULK_LIMIT
        self._persistent: bool | None = None
        # On the default clock (time.time) the server's own expiry gives every read the answer
        # the clock would (every key of a conversation carries its PEXPIRE, keys created later
        # included), so a conversation part is read with a plain GET or LRANGE; an injected
        # clock may be far from the server's, so its reads check expires_ms in a script
        # (docs/redis.md, "Conversation expiry").
        self._native_expiry = self.settings.clock is time.time

    def __repr__(self) -> str:
        return f"{type(self).__name__}(server={self._server!r}, key_prefix={self._prefix!r})"

    # ----------------------------------------------------------------- lifecycle

    async def _open(self) -> None:
        client = self.settings.client
        self._owns_client = client is None
        if client is None:
            client = self._make_client()
        else:
            self._server = _describe_client(client)
        self._client = client
        if self._cluster:
            self._read_retry = make_retry(self._redis, self.settings.max_retries, cluster=True)
        self._scripts = {
            name: client.register_script(source) for name, source in (SCRIPTS | KV_SCRIPTS | MSG_SCRIPTS).items()
        }
        try:
            await self._call("connecting", None, client.ping, read=True)
            await self._read_server_config()
            await self._check_serializer()
        except BaseException:
            await self._close()
            raise

    def _make_client(self) -> Any:
        # Connecting and reads are retried (max_retries), writes never resent: _call, _send_once.
        settings = self.settings
        try:
            return make_client(
                self._redis, settings.redis_url, settings.connection_timeout,
                cluster=self._cluster, retries=settings.max_retries,
            )  # fmt: skip
        except (ValueError, self._redis.exceptions.RedisClusterException) as e:  # redis-py's own URL parsing
            raise ConfigError(
                f"redis_url {self._server!r} is not usable: {self._scrub(str(e))}; use "
                "redis://[[user]:password@]host:port/db, rediss://..., unix:///path/to/socket, or "
                "redis+cluster://host:port for Redis Cluster (no db, no unix socket)"
            ) from e

    async def _read_server_config(self) -> None:
        """Whether the server persists, and its value size limit, from CONFIG GET.

        A user whose ACL forbids CONFIG (or a managed server that renamed it) gets the
        defaults: not known to persist, and the 512 MiB limit.
        """
        names = ("appendonly", "save", "proto-max-bulk-len")
        replies = await self._server_calls("reading CONFIG", [("config_get", name) for name in names])
        values = dict(
            zip(names, (_config_value(reply, name) for reply, name in zip(replies, names, strict=True)), strict=True)
        )
        appendonly, save, limit = values["appendonly"], values["save"], values["proto-max-bulk-len"]
        self._persistent = None if appendonly is None or save is None else appendonly == "yes" or bool(save.strip())
        if limit is not None and limit.isdigit():
            self._bulk_limit = int(limit)

    async def _check_serializer(self) -> None:
        """Refuse a prefix written with another serializer; claim a new one for ours (one
        script, so two clients opening a new prefix with different serializers cannot both win)."""
        wanted = self._serializer.name
        pool = getattr(self._client, "connection_pool", None)
        if not self._serializer.text and getattr(pool, "connection_kwargs", {}).get("decode_responses"):
            raise ConfigError(
                f"serializer={wanted!r} stores bytes, but the client passed in was made with "
                "decode_responses=True, which would turn them into text; pass a client without it"
            )
        marker = self._layout.serializer_marker
        # On one server the indexes tell whether the prefix holds data from before the
        # marker existed (then JSON); on a cluster there is no such data, and the marker's
        # script touches the marker alone (one slot).
        keys = [marker, *self._layout.legacy_indexes()]
        try:
            # Not waited for (wait_replicas): it writes once per prefix, and a lost marker is claimed again.
            stored: bytes | str | None = await self._script("claim_serializer", marker, keys, [wanted], wait=False)
        except AccessDeniedError:
            # An ACL that forbids writing the prefix (or touching it at all): every operation
            # will say so itself, as health_check() does. A marker it may read is still checked.
            try:
                stored = await self._get(marker)
            except AccessDeniedError:
                stored = None
        if stored is not None and _text(stored) != wanted:
            stored = _text(stored)
            raise ConfigError(
                f"key_prefix {self._prefix!r} on Redis at {self._server} was written with serializer={stored!r}, "
                f"but this storage was opened with serializer={wanted!r}; open it with serializer={stored!r} "
                f"(CONNECTOME_STORAGE_SERIALIZER={stored}), or copy it with migrate() under another key_prefix "
                f"that uses {wanted!r}"
            )

    def _capabilities(self) -> frozenset[str]:
        # "persistent" only when the server said so at initialize(): an unknown server is
        # not promised to keep data over a restart.
        # "sharded" on a cluster: a transaction may touch the entities of one hash slot only.
        extra = ({"persistent"} if self._persistent else set()) | ({"sharded"} if self._cluster else set())
        return frozenset({"native_ttl", "cross_process"} | extra)

    async def _close(self) -> None:
        client, self._client = self._client, None
        if client is not None and self._owns_client:
            await client.aclose()

    @property
    def client(self) -> Any:
        """The redis.asyncio client in use (only while initialized)."""
        assert self._client is not None, "RedisStorage is not initialized"
        return self._client

    # ---------------------------------------------------------------------- keys

    def key_of(self, kind: Kind, key: str) -> str:
        """The Redis key that holds ``kind`` for ``key`` (memories: the hash)."""
        if kind in _SUFFIX:
            return self._layout.conv_base(key) + _SUFFIX[kind]
        return self._layout.entity_key(_KIND[kind], key)

    def _order_key(self, conversation_id: str) -> str:
        return self._layout.conv_base(conversation_id) + "order"

    def _part_keys(self, conversation_id: str) -> list[str]:
        """Every key of a conversation, its metadata included."""
        return self._conversation_keys(conversation_id)

    def index_of(self, kind: Kind, key: str | None = None) -> str:
        """The set (zset for the cache) listing ``key`` among the ids stored of ``kind``
        (on one server one per kind, so ``key`` may be left out; on a cluster one per bucket)."""
        return self._layout.index(_KIND.get(kind, "conversation"), key)

    # ---------------------------------------------------------------- engine calls

    async def _call(
        self,
        what: str,
        key: str | None,
        function: Callable[..., Awaitable[T]],
        *args: Any,
        read: bool = False,
        size: int = 0,
    ) -> T:
        """Run one Redis call, turning engine errors into StorageError subclasses.

        A ``read`` whose connection broke is tried again, up to ``max_retries`` times with
        exponential backoff: on one server by redis-py itself (the pool's connections carry
        the Retry, make_client), on a cluster here, with redis-py's Retry. A timeout is not
        retried, so a hung server costs one ``connection_timeout``. A write is never resent
        (``_send_once``): a lost reply does not say whether it was applied. ``size`` is the
        longest value a write sends: a connection the server closed on it may mean the value
        was over its limit.
        """
        exceptions = self._redis.exceptions
        try:
            if read and self._read_retry is not None:
                return await self._read_retry.call_with_retry(lambda: function(*args), _nothing_to_undo)  # type: ignore[no-any-return]
            return await function(*args)
        except (exceptions.RedisError, exceptions.RedisClusterException, OSError) as e:
            broken = isinstance(e, exceptions.ConnectionError | OSError)
            broken = broken and not isinstance(e, exceptions.AuthenticationError)
            # Over the limit, Redis answers "invalid bulk length" and closes the
            # connection; redis-py raises whichever it meets first.
            if key is not None and size >= _MIN_BULK_LIMIT and (broken or _is_bulk_error(e)):
                too_large = await self._too_large_after_all(key, size)
                if too_large is not None:
                    raise too_large from e
            raise self._translate(e, what, key) from e

    async def _send_once(self, key: str, *command: Any) -> Any:
        """Send one write command once; its reply (an error reply raises).

        On one server it goes on a connection taken from the pool: taking it is what is
        retried (connecting, or replacing a pooled connection the server closed, as after a
        restart), and nothing has been sent then. Once it is sent, a broken connection
        raises: the server may have run it. On a cluster it goes through the cluster client,
        which retries nothing (make_client) and follows MOVED and ASK, refusals that ran nothing.
        """
        if self._cluster:
            return await self.client.execute_command(*command)
        held = await Held.take(self.client, key)
        try:
            (reply,) = await held.send([command])
        finally:
            await held.release()
        if isinstance(reply, Exception):
            raise reply
        return reply

    def _check_size(self, key: str, payloads: Sequence[bytes]) -> int:
        """Refuse, before sending anything, a value over the server's limit; the longest size."""
        size = max(map(len, payloads), default=0)
        if size > self._bulk_limit:
            raise self._too_large(key, size, self._bulk_limit)
        return size

    async def _too_large_after_all(self, key: str, size: int) -> ValueTooLargeError | None:
        """After the server dropped the connection on a big write: was the limit lowered
        since initialize()? Reads it again (on a fresh connection); None when not over it
        or when CONFIG is not permitted."""
        try:  # as a read: the connection the server closed may be tried first, then a fresh one
            reply = await self._call("reading CONFIG", None, self.client.config_get, "proto-max-bulk-len", read=True)
        except StorageError:
            return None
        limit = _config_value(reply, "proto-max-bulk-len")
        if limit is None or not limit.isdigit():
            return None
        self._bulk_limit = int(limit)
        return self._too_large(key, size, self._bulk_limit) if size > self._bulk_limit else None

    def _too_large(self, key: str, size: int | None, limit: int) -> ValueTooLargeError:
        measured = "" if size is None else f" is {size:,} bytes,"
        return ValueTooLargeError(
            f"the value for {key}{measured} is over the limit of {limit:,} bytes ({limit / 2**20:g} MiB) "
            f"that Redis at {self._server} takes for one string, list element or hash field "
            "(proto-max-bulk-len; 512 MiB unless configured); nothing was written. "
            "Store it in smaller parts, or raise proto-max-bulk-len on the server"
        )

    def _scrub(self, text: str) -> str:
        """``text`` (an engine's message) with any password of the URL replaced by ``***``."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    async def _script(
        self,
        name: str,
        key: str,
        keys: Sequence[str],
        args: Sequence[Any],
        size: int = 0,
        *,
        read: bool = False,
        wait: bool = True,
    ) -> Any:
        """Run one of ``_redis_lua.SCRIPTS``; ``key`` is the entity named in errors.

        A write is followed by WAIT (``wait_replicas``) unless ``wait`` is False. Retried
        only if ``read`` (a script that writes nothing), as ``_call`` retries reads,
        or for a server that does not know the script (restarted, or SCRIPT FLUSH): it then
        did not run at all, so it is loaded and sent once more.
        """
        script = self._scripts[name]
        client = self.client
        no_script = self._redis.exceptions.NoScriptError
        if wait and not read and self.settings.wait_replicas:
            command = ("EVALSHA", script.sha, len(keys), *keys, *args)
            return await self._call(
                f"running {name} on {key}", key, lambda: self._write_and_wait(key, [command], script), size=size
            )

        # EVALSHA directly rather than through redis-py's Script.__call__, which costs
        # about 4 us a call (measured; a local round trip is about 60 us) in argument
        # copies and an import statement; the NOSCRIPT fallback is the same as its own
        # (NOSCRIPT: the script did not run, so sending it again applies it once).
        async def send() -> Any:
            if read:
                return await client.evalsha(script.sha, len(keys), *keys, *args)
            return await self._send_once(key, "EVALSHA", script.sha, len(keys), *keys, *args)

        async def run() -> Any:
            try:
                return await send()
            except no_script:
                script.sha = await client.script_load(script.script)
                return await send()

        return await self._call(f"running {name} on {key}", key, run, read=read, size=size)

    async def _write_and_wait(self, key: str, commands: list[tuple[Any, ...]], script: Any = None) -> Any:
        """Send ``commands`` (writes) and WAIT on one connection to the server (on a cluster:
        the master of ``key``'s slot); the last write's reply. WAIT counts the replicas that
        received every write of this connection so far, so it must follow on the same one.
        A script the server does not know (NOSCRIPT: it did not run) is loaded and sent again."""
        wanted = self.settings.wait_replicas
        wait = wait_command(wanted, self.settings.connection_timeout)
        held = await Held.take(self.client, key)
        try:
            try:
                replies = await held.send([*commands, wait])
                if script is not None and isinstance(replies[0], self._redis.exceptions.NoScriptError):
                    replies = (await held.send([("SCRIPT", "LOAD", script.script), *commands, wait]))[1:]
            except (self._redis.exceptions.ConnectionError, self._redis.exceptions.TimeoutError):
                await self._relearn_cluster()
                raise
        finally:
            await held.release()
        for reply in replies[:-1]:
            if isinstance(reply, Exception):
                if isinstance(reply, self._redis.exceptions.MovedError):
                    await self._relearn_cluster()
                raise reply
        if int(replies[-1]) < wanted:
            raise StorageIOError(
                f"the write to {key} was applied on Redis at {self._server}, but only {replies[-1]} of the "
                f"{wanted} replicas it waits for (wait_replicas) acknowledged it within connection_timeout="
                f"{self.settings.connection_timeout}s; it may be lost if the master fails now. Check the replicas "
                "(INFO replication), or lower wait_replicas"
            )
        return replies[-2]

    async def _multi(
        self, what: str, key: str, commands: Sequence[tuple[Any, ...]], *, write: bool = True
    ) -> list[Any]:
        """``commands`` (redis-py method names and arguments, every key in ``key``'s slot) as one
        MULTI/EXEC on one connection, followed by WAIT when ``wait_replicas`` is set and they
        ``write``; EXEC's replies."""
        names = {"delete": "DEL"}
        sent = [("MULTI",), *((names.get(c, c.upper()), *args) for c, *args in commands), ("EXEC",)]

        async def run() -> list[Any]:
            if write and self.settings.wait_replicas:
                return await self._write_and_wait(key, sent)  # type: ignore[no-any-return]
            held = await Held.take(self.client, key)
            try:
                replies = await held.send(sent)
            except (self._redis.exceptions.ConnectionError, self._redis.exceptions.TimeoutError):
                await self._relearn_cluster()
                raise
            finally:
                await held.release()
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
            return replies[-1]  # type: ignore[no-any-return]

        results = await self._call(what, key, run)
        for result in results:
            if isinstance(result, Exception):
                raise self._translate(result, what, key) from result
        return results

    async def _relearn_cluster(self) -> None:
        """After a connection error or a MOVED on a connection taken by hand: read the
        cluster's slots again (redis-py does so itself for the commands it routes)."""
        if self._cluster:
            try:
                await self.client.nodes_manager.initialize()
            except Exception as e:  # the next command will say what is wrong
                logger.debug("Redis Cluster: reading the slots again failed (%s: %s)", type(e).__name__, e)

    async def _run(self, command: Command, *, read: bool = False) -> Any:
        """Send one command a write hook built (``_<hook>_commands``) as a script call now."""
        return await self._script(command.script, command.key, command.keys, command.args, command.size, read=read)

    def _translate(self, error: BaseException, what: str, key: str | None) -> StorageError:
        exceptions = self._redis.exceptions
        text = self._scrub(str(error))
        if isinstance(error, exceptions.AuthenticationError) or text.startswith(("WRONGPASS", "NOAUTH")):
            return AccessDeniedError(
                f"Redis at {self._server} refused to authenticate while {what} ({text}); check the user "
                "name and password in redis_url (redis://user:password@host:port/db)"
            )
        if isinstance(error, exceptions.NoPermissionError) or text.startswith("NOPERM"):
            return AccessDeniedError(
                f"Redis at {self._server} denied {what} by its ACL (NOPERM: {text}): the user is authenticated "
                f"but not authorized; grant it the keys ~{self._prefix}* and the commands it needs "
                "(docs/redis.md, Access control)"
            )
        if _is_bulk_error(error):
            return self._too_large(key or what, None, self._bulk_limit)
        if isinstance(error, exceptions.OutOfMemoryError) or text.startswith("OOM"):
            return StorageFullError(
                f"Redis at {self._server} is out of memory while {what}; nothing was written. "
                "Free memory, raise maxmemory or choose an eviction policy"
            )
        if isinstance(error, _cluster_trouble(exceptions)):
            return BackendUnavailableError(
                f"Redis Cluster at {self._server} cannot serve {what} right now ({type(error).__name__}: {text}): "
                "a master is failing over or slots are moving; try again in a moment (the storage follows the "
                "cluster's new layout by itself). If it lasts, check CLUSTER INFO on the nodes"
            )
        if isinstance(error, exceptions.ConnectionError | exceptions.TimeoutError | OSError):
            return BackendUnavailableError(
                f"Redis at {self._server} is unavailable while {what} ({type(error).__name__}: "
                f"{text}); check that the server runs and is reachable (connection_timeout="
                f"{self.settings.connection_timeout}s). The same storage works again once it is back."
            )
        if text.startswith("WRONGTYPE") and key is not None:
            # A conversation script names the metadata key it found damaged (_redis_lua.py).
            meta = _META_WRONGTYPE.match(text)
            if meta:
                return CorruptedDataError(meta[1], "conversation metadata is not a Redis hash", hint=_HINT)
            return CorruptedDataError(key, f"the key holds the wrong Redis type ({text})", hint=_HINT)
        return StorageIOError(f"Redis at {self._server} failed while {what}: {text}")

    def _decode(self, raw: bytes | str, source: str) -> Any:
        try:
            return self._serializer.decode(raw, source)
        except CorruptedDataError as e:
            raise CorruptedDataError(e.path, e.problem, line=e.line, column=e.column, hint=_HINT) from e

    async def _get(self, key: str) -> bytes | str | None:
        return await self._call(f"reading {key}", key, self.client.get, key, read=True)

    async def _members(self, index: str) -> list[str]:
        members = await self._call(f"listing {index}", index, self.client.smembers, index, read=True)
        return _ids(members, index)

    async def _read_indexes(self, kind: str, command: str, *args: Any) -> dict[str, list[str]]:
        """``command`` (smembers, zrange, ...) on every index of ``kind`` (one per bucket on a
        cluster) in one pipeline, which a cluster client sends to every master at once; the
        members of each index that has any."""
        indexes = self._layout.indexes(kind)
        commands = [(command, index, *args) for index in indexes]
        replies = await self._pipelined(f"listing the {kind} index", commands, key=indexes[0], strict=True)
        return {index: _ids(reply, index) for index, reply in zip(indexes, replies, strict=True) if reply}

    async def _listed(self, kind: str) -> list[str]:
        """Every id in the set indexes of ``kind``."""
        return [key for ids in (await self._read_indexes(kind, "smembers")).values() for key in ids]

    async def _scripts_over(self, name: str, calls: Sequence[tuple[Sequence[str], Sequence[Any]]]) -> list[Any]:
        """Run script ``name`` once per (keys, args), all in one pipeline (a listing's or a
        cleanup's work over every bucket); their replies. Calls the server answered NOSCRIPT
        did not run: the script is loaded and they are sent again."""
        script = self._scripts[name]
        replies: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        for attempt in (1, 2):
            commands = [("evalsha", script.sha, len(calls[i][0]), *calls[i][0], *calls[i][1]) for i in todo]
            if not commands:
                break
            got = await self._pipelined(f"running {name}", commands, key=calls[todo[0]][0][0])
            missing = []
            for index, reply in zip(todo, got, strict=True):
                if isinstance(reply, self._redis.exceptions.NoScriptError) and attempt == 1:
                    missing.append(index)
                elif isinstance(reply, Exception):
                    key = calls[index][0][0]
                    raise self._translate(reply, f"running {name} on {key}", key) from reply
                else:
                    replies[index] = reply
            if missing:
                await self._call(f"loading {name}", None, self.client.script_load, script.script)
            todo = missing
        return replies

    # ----------------------------------------------------------------- documents
    #
    # A conversation part (_SUFFIX kinds) is read and written by a conversation script
    # (_redis_lua.py), which also checks the conversation's expiry on the storage clock:
    # still one round trip, one EVALSHA in place of one plain command.

    async def _read_document(self, kind: Kind, key: str) -> Any:
        name = self.key_of(kind, key)
        if kind in _SUFFIX and not self._native_expiry:
            keys = [self.meta_key_of(key), name]
            raw = await self._script("conv_get", name, keys, [self._now_ms()], read=True)
        else:
            raw = await self._get(name)
        return None if raw is None else _check_shape(kind, self._decode(raw, name), name)

    # Each write hook has a builder, ``_<hook>_commands``, giving the script call(s) it sends
    # (Command: script, keys, args): the hook runs them at once, a transaction's commit
    # queues those of all its ops in one MULTI/EXEC (_redis_tx.py). The builders check sizes
    # and serialize, so a refusal comes before anything is sent.

    def _write_document_commands(self, kind: Kind, key: str, value: Any) -> list[Command]:
        name = self.key_of(kind, key)
        data = self._serializer.dumps(value)
        size = self._check_size(name, [data])
        if kind in _SUFFIX:
            return [Command("conv_set", name, self._lean_keys(key, name), [key, self._now_ms(), data], size)]
        return [Command("write", name, [name, self.index_of(kind, key)], [key, data], size)]

    async def _write_document(self, kind: Kind, key: str, value: Any) -> None:
        (command,) = self._write_document_commands(kind, key, value)
        if command.script == "write" and not self.settings.wait_replicas:
            # Replacing an existing value needs no script: every script that creates a key also
            # lists its id, and none unlists an id while one of its keys exists, so a key that
            # exists when SET XX runs is listed. Measured: a script costs about 10 us more
            # than a plain SET, a sixth of a local round trip.
            name, data = command.key, command.args[1]
            if await self._call(
                f"writing {name}", name, self._send_once, name, "SET", name, data, "XX", size=command.size
            ):
                return
        await self._run(command)

    def _delete_commands(self, kind: Kind, key: str) -> list[Command]:
        name = self.key_of(kind, key)
        if kind in _SUFFIX:
            slots = [_SLOT[kind], _ORDER_SLOT] if kind is Kind.MEMORIES else [_SLOT[kind]]
            return [Command("conv_delete_part", name, self._script_keys(key), [key, self._now_ms(), *slots])]
        command = "ZREM" if kind is Kind.CACHE else "SREM"
        return [Command("delete", name, [self.index_of(kind, key), name], [key, command, 1])]

    async def _delete(self, kind: Kind, key: str) -> bool:
        return bool(await self._run(self._delete_commands(kind, key)[0]))

    # ---------------------------------------------------------------------- logs

    async def _read_log(self, kind: Kind, key: str) -> list[Any]:
        name = self.key_of(kind, key)
        if kind in _SUFFIX and not self._native_expiry:
            keys = [self.meta_key_of(key), name]
            items = await self._script("conv_lrange", name, keys, [self._now_ms()], read=True)
        else:
            items = await self._call(f"reading {name}", name, self.client.lrange, name, 0, -1, read=True)
        # Parsed in one comprehension and checked in one pass; only a history with a bad item
        # is read again item by item, to name it (a source string per item costs ~10% of a load).
        loads, values = self._serializer.loads, None
        with contextlib.suppress(*self._serializer.errors):
            values = [loads(raw) for raw in items]
        if values is None or not all(type(value) is dict for value in values):
            return [_check_item(self._decode(raw, f"{name}[{i}]"), f"{name}[{i}]") for i, raw in enumerate(items)]
        return values

    def _append_log_commands(self, kind: Kind, key: str, items: list[Any]) -> list[Command]:
        name = self.key_of(kind, key)
        encoded = [self._serializer.dumps(item) for item in items]
        size = self._check_size(name, encoded)
        if kind in _SUFFIX:
            return [Command("conv_append", name, self._lean_keys(key, name), [key, self._now_ms(), *encoded], size)]
        return [Command("append", name, [name, self.index_of(kind, key)], [key, *encoded], size)]

    async def _append_log(self, kind: Kind, key: str, items: list[Any]) -> int:
        (command,) = self._append_log_commands(kind, key, items)
        if command.script == "append" and not self.settings.wait_replicas:
            # RPUSHX pushes only onto an existing list, which is listed already (see
            # _write_document); it answers 0, having written nothing, when the list is new.
            name, encoded = command.key, command.args[1:]
            length = await self._call(
                f"appending to {name}", name, self._send_once, name, "RPUSHX", name, *encoded, size=command.size
            )
            if length:
                return int(length)
        return int(await self._run(command))

    def _replace_log_commands(self, kind: Kind, key: str, items: list[Any]) -> list[Command]:
        name = self.key_of(kind, key)
        encoded = [self._serializer.dumps(item) for item in items]
        size = self._check_size(name, encoded)
        if kind in _SUFFIX:
            return [Command("conv_replace", name, self._script_keys(key), [key, self._now_ms(), *encoded], size)]
        return [Command("replace_log", name, [name, self.index_of(kind, key)], [key, *encoded], size)]

    async def _replace_log(self, kind: Kind, key: str, items: list[Any]) -> None:
        await self._run(self._replace_log_commands(kind, key, items)[0])

    async def _pop_log(self, kind: Kind, key: str) -> Any:
        name = self.key_of(kind, key)
        conversation = kind in _SUFFIX
        keys = self._script_keys(key) if conversation else [name, self.index_of(kind, key)]
        while True:
            if conversation:  # a peek that removes an expired conversation first, as any write does
                raw = await self._script("conv_peek", name, keys, [key, self._now_ms()])
            else:
                raw = await self._call(f"reading {name}", name, self.client.lindex, name, -1, read=True)
            if raw is None:
                return None
            item = _check_item(self._decode(raw, f"{name}[-1]"), f"{name}[-1]")  # a bad item stays put
            if conversation:
                popped = await self._script("conv_pop", name, keys, [key, self._now_ms(), raw])
            else:
                popped = await self._script("pop_log", name, keys, [key, raw])
            if popped:
                return item

    # ------------------------------------------------------------------- members

    def _put_member_commands(self, conversation_id: str, memory_id: str, memory: dict[str, Any]) -> list[Command]:
        name = self.key_of(Kind.MEMORIES, conversation_id)
        data = self._serializer.dumps(memory)
        size = self._check_size(f"{name}[{memory_id!r}]", [data])
        args = [conversation_id, self._now_ms(), memory_id, data]
        return [Command("conv_put_member", name, self._script_keys(conversation_id), args, size)]

    async def _put_member(self, conversation_id: str, memory_id: str, memory: dict[str, Any]) -> None:
        await self._run(self._put_member_commands(conversation_id, memory_id, memory)[0])

    async def _read_members(self, conversation_id: str) -> list[dict[str, Any]]:
        name, order_key = self.key_of(Kind.MEMORIES, conversation_id), self._order_key(conversation_id)
        # One script: the order and the hash are read at one instant, with the expiry check.
        keys = [self.meta_key_of(conversation_id), name, order_key]
        order, values = await self._script("conv_members", name, keys, [self._now_ms()], read=True)
        by_id = {_text(field): raw for field, raw in zip(values[::2], values[1::2], strict=True)}
        ids = [_text(member) for member in order]
        if set(ids) != set(by_id):
            raise CorruptedDataError(name, f"the memories hash and {order_key} list different ids", hint=_HINT)
        memories = []
        for memory_id in ids:
            source = f"{name}[{memory_id!r}]"
            memory = _check_item(self._decode(by_id[memory_id], source), source)
            if memory.get("memory_id") != memory_id:
                raise CorruptedDataError(source, "memory_id does not match the hash field", hint=_HINT)
            memories.append(memory)
        return memories

    def _delete_member_commands(self, conversation_id: str, memory_id: str) -> list[Command]:
        name = self.key_of(Kind.MEMORIES, conversation_id)
        args = [conversation_id, self._now_ms(), memory_id]
        return [Command("conv_delete_member", name, self._script_keys(conversation_id), args)]

    async def _delete_member(self, conversation_id: str, memory_id: str) -> bool:
        return bool(await self._run(self._delete_member_commands(conversation_id, memory_id)[0]))

    # ------------------------------------------------------------- conversations

    def _delete_conversation_commands(self, conversation_id: str) -> list[Command]:
        keys = self._script_keys(conversation_id)
        return [Command("conv_drop", keys[0], keys, [conversation_id, self._now_ms()])]

    async def _delete_conversation(self, conversation_id: str) -> bool:
        # One script: readers see every part or none, and the indexes change with them;
        # True only when the conversation was live (not expired on the storage clock).
        return bool(await self._run(self._delete_conversation_commands(conversation_id)[0]))

    # _list_conversations: RedisConversations (it prunes expired conversations' entries).

    async def _list_agents(self) -> list[str]:
        return await self._listed("agent")

    async def _list_system_states(self) -> list[str]:
        return await self._listed("system")

    # --------------------------------------------------------------------- cache

    def _write_cache_commands(self, entry: CacheEntry) -> list[Command]:
        name = self.key_of(Kind.CACHE, entry.key)
        envelope = {"created_ms": entry.created_ms, "expires_ms": entry.expires_ms, "data": entry.data}
        px, score = "", "+inf"
        if entry.expires_ms is not None:
            # Redis expires the key itself after the time left on our clock; the interface
            # still checks expires_ms against the clock, so an injected clock stays exact.
            px, score = str(max(1, entry.expires_ms - self._now_ms())), str(entry.expires_ms)
        data = self._serializer.dumps(envelope)
        size = self._check_size(name, [data])
        index = self.index_of(Kind.CACHE, entry.key)
        return [Command("write_cache", name, [name, index], [entry.key, data, px, score], size)]

    async def _write_cache(self, entry: CacheEntry) -> None:
        await self._run(self._write_cache_commands(entry)[0])

    async def _read_cache(self, cache_key: str) -> CacheEntry | None:
        name = self.key_of(Kind.CACHE, cache_key)
        raw = await self._get(name)
        if raw is None:
            return None
        envelope = self._decode(raw, name)
        try:
            created, expires, data = envelope["created_ms"], envelope["expires_ms"], envelope["data"]
            if type(created) is not int or not (expires is None or type(expires) is int):
                raise TypeError("created_ms and expires_ms must be integers")
        except (KeyError, TypeError) as e:
            raise CorruptedDataError(
                name, f"not a cache entry ({e}); expected created_ms, expires_ms, data", hint=_HINT
            ) from e
        return CacheEntry(cache_key, data, created, expires)

    async def _cache_index(self) -> tuple[list[str], int]:
        """Every id in the cache index, after dropping those Redis has expired natively,
        and how many were dropped."""
        listed = await self._read_indexes("cache", "zrange", 0, -1)
        calls = [
            ([index, *(self.key_of(Kind.CACHE, key) for key in batch)], batch)
            for index, ids in listed.items()
            for batch in _batches(ids)
        ]
        gone = {_text(member) for removed in await self._scripts_over("prune_cache", calls) for member in removed}
        return [key for ids in listed.values() for key in ids if key not in gone], len(gone)

    async def _list_all_cache_keys(self) -> list[str]:
        return (await self._cache_index())[0]

    async def _list_cache_keys(self, now_ms: int) -> list[str]:
        await self._cache_index()
        live = await self._read_indexes("cache", "zrangebyscore", f"({now_ms}", "+inf")
        return [key for ids in live.values() for key in ids]

    async def _delete_expired_cache(self, now_ms: int) -> int:
        # Entries Redis already expired count as removed too: they were expired entries,
        # and the file backend would have removed them here. On the default clock Redis
        # removes an entry at its expires_ms or a little after, never before, so those are
        # among the members scored up to now and expire_cache counts them; only an injected
        # clock (which may be behind the server's) needs every member checked first.
        removed = 0 if self._native_expiry else (await self._cache_index())[1]
        expired = await self._read_indexes("cache", "zrangebyscore", "-inf", now_ms)
        calls = [
            ([index, *(self.key_of(Kind.CACHE, key) for key in batch)], [now_ms, *batch])
            for index, ids in expired.items()
            for batch in _batches(ids)
        ]
        return removed + sum(int(count) for count in await self._scripts_over("expire_cache", calls))

    async def _cleanup_housekeeping(self, now_ms: int) -> dict[str, int]:
        """Drop index entries whose keys are all gone: evicted under a maxmemory policy, or
        deleted by hand. (On an injected clock the expired-cache step has reconciled the
        cache index already; on the default clock it looked at expired members only.)"""
        groups: list[tuple[Kind, Callable[[str], list[str]]]] = [
            (Kind.CONVERSATION, self._part_keys),
            (Kind.REASONING_CHAINS, lambda agent_id: [self.key_of(Kind.REASONING_CHAINS, agent_id)]),
            (Kind.SYSTEM, lambda state_key: [self.key_of(Kind.SYSTEM, state_key)]),
        ]
        removed = 0
        for kind, keys_of in groups:
            calls = [
                ([index, *(key for member in batch for key in keys_of(member))], [len(keys_of(batch[0])), *batch])
                for index, ids in (await self._read_indexes(_KIND.get(kind, "conversation"), "smembers")).items()
                for batch in _batches(ids)
            ]
            removed += sum(len(gone) for gone in await self._scripts_over("prune_index", calls))
        if self._native_expiry:
            removed += (await self._cache_index())[1]
        return {"stale_index_entries": removed}

    # ------------------------------------------------------------- health, stats

    async def _probe(self) -> dict[str, Any]:
        """PING, then write, read and delete a probe key under the prefix: a user whose ACL
        cannot touch the prefix's keys is unhealthy, though PING and INFO work for it."""
        started = time.perf_counter()
        await self._call("pinging", None, self.client.ping)
        ping_ms = round((time.perf_counter() - started) * 1000, 3)
        probe = f"{self._prefix}health:{{{os.urandom(8).hex()}}}"
        token = os.urandom(8).hex().encode()
        # set(name, value, ex, px): the probe expires if the delete never runs.
        commands = [("set", probe, token, None, _PROBE_TTL_MS), ("get", probe), ("delete", probe)]
        _, read_back, _ = await self._pipelined(f"probing {probe}", commands, key=probe, strict=True)
        if read_back is None or (read_back if isinstance(read_back, bytes) else read_back.encode()) != token:
            raise StorageIOError(f"Redis at {self._server} did not return the probe value written to {probe}")
        # INFO is informative only: a user allowed the data but not INFO is still healthy.
        server, memory = await self._server_calls("reading INFO", [("info", "server"), ("info", "memory")])
        server, memory = ({} if isinstance(r, Exception) else r for r in (server, memory))
        cluster: dict[str, Any] = {}
        if self._cluster:
            cluster = await self._call("reading CLUSTER INFO", None, cluster_health, self.client, read=True)
            if not cluster.pop("ok"):
                raise BackendUnavailableError(
                    f"Redis Cluster at {self._server} does not serve every slot: {cluster}; writes to the "
                    "missing slots fail until a replica takes over or the master is back (check CLUSTER INFO)"
                )
        return {
            **({"cluster": cluster} if cluster else {}),
            "server": self._server,
            "key_prefix": self._prefix,
            "ping_ms": ping_ms,
            "redis_version": server.get("redis_version"),
            "used_memory": memory.get("used_memory"),
            "maxmemory": memory.get("maxmemory"),
            "persistent": self._persistent,
            "serializer": self._serializer.name,
            "max_value_bytes": self._bulk_limit,
            "client_owned_by_caller": not self._owns_client,
        }

    async def _pipelined(
        self,
        what: str,
        commands: Sequence[tuple[Any, ...]],
        *,
        key: str | None = None,
        transaction: bool = False,
        strict: bool = False,
    ) -> list[Any]:
        """Send ``(command, *args)`` tuples as one pipeline (MULTI/EXEC if ``transaction``).

        Unless ``strict``, a command that fails on the data (WRONGTYPE) comes back as an
        exception value, so stats can count it and go on; connection trouble always raises
        BackendUnavailableError.
        """

        async def run() -> list[Any]:
            async with self.client.pipeline(transaction=transaction) as pipe:
                for command, *args in commands:
                    if command == "evalsha":  # a cluster pipeline refuses the method, not the command
                        pipe.execute_command("EVALSHA", *args)
                    else:
                        getattr(pipe, command)(*args)
                return await pipe.execute(raise_on_error=False)  # type: ignore[no-any-return]

        results = await self._call(what, key, run, read=True)
        exceptions = self._redis.exceptions
        fatal = Exception if strict else exceptions.ConnectionError | exceptions.TimeoutError
        for result in results:
            if isinstance(result, fatal):
                raise self._translate(result, what, key) from result
        return results

    async def _server_calls(self, what: str, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Commands about the server (CONFIG GET, INFO), whose failure (an ACL) comes back as
        the exception: one pipeline on a single server; on a cluster (whose pipelines refuse
        them) one call each, answered by one node."""
        if not self._cluster:
            return await self._pipelined(what, commands)
        replies: list[Any] = []
        for command, *args in commands:
            try:
                replies.append(await self._call(what, None, getattr(self.client, command), *args, read=True))
            except BackendUnavailableError:
                raise
            except StorageError as e:
                replies.append(e)
        return replies

    async def _collect_stats(self, now_ms: int) -> dict[str, Any]:
        """Counts from cardinalities and lengths, never KEYS/SCAN; every conversation's counts
        and bytes are taken on the server, by one script per batch of ids (``conv_stats``).

        Only chunk documents are parsed (a chunk count needs it); ``unreadable_count``
        covers them and keys of the wrong type. ``verify()`` parses everything.
        """
        cache_keys, _ = await self._cache_index()
        # Prunes the entries of expired conversations, so the counts below leave them out.
        by_bucket, expired_conversations = await self._conversation_buckets("list", now_ms)
        # One pipeline over every index (every bucket of each, on a cluster).
        layout = self._layout
        caches, systems = layout.indexes("cache"), layout.indexes("system")
        counts = [
            *(("scard", index) for index in systems),
            *(("zcount", index, f"({now_ms}", "+inf") for index in caches),
            *(("zcount", index, "-inf", now_ms) for index in caches),
        ]
        replies = await self._pipelined("counting entities", counts, key=caches[0], strict=True)
        states = sum(replies[: len(systems)])
        live = sum(replies[len(systems) : len(systems) + len(caches)])
        expired = sum(replies[len(systems) + len(caches) :])
        agents = await self._listed("agent")
        stats = {
            "conversation_count": sum(map(len, by_bucket)), "expired_conversation_count": expired_conversations,
            "raw_message_count": 0, "memory_count": 0,
            "chunk_count": 0, "agent_count": len(agents), "reasoning_chain_count": 0,
            "cache_entry_count": live, "expired_cache_entry_count": expired,
            "system_state_count": states, "unreadable_count": 0,
        }  # fmt: skip
        total_bytes = 0
        # Each script gets the ids of one bucket (one slot on a cluster) and names their keys
        # itself, as the listing does: MEMORY USAGE, LLEN, HLEN and GET of 500,000 keys sent
        # one by one cost redis-py more than the server's work (docs/redis.md, stats).
        calls = [
            (bucket[:2], [*bucket[2:], now_ms, *batch])
            for bucket, ids in zip(layout.conv_buckets(), by_bucket, strict=True)
            for batch in _batches(ids, _STATS_BATCH)
        ]
        source = "a chunks key"
        for raw, memories, wrong_type, size, chunk_documents in await self._scripts_over("conv_stats", calls):
            stats["raw_message_count"] += int(raw)
            stats["memory_count"] += int(memories)
            stats["unreadable_count"] += int(wrong_type)
            total_bytes += int(size)
            for document in chunk_documents:
                try:
                    stats["chunk_count"] += len(_check_shape(Kind.CHUNKS, self._decode(document, source), source))
                except CorruptedDataError:
                    stats["unreadable_count"] += 1
        for batch in _batches(agents):
            commands = [("llen", self.key_of(Kind.REASONING_CHAINS, a)) for a in batch]
            for length in await self._pipelined("counting reasoning chains", commands):
                if isinstance(length, Exception):
                    stats["unreadable_count"] += 1
                else:
                    stats["reasoning_chain_count"] += length
        # Every other key: the indexes, the marker, chains, cache entries, states, key-value
        # namespaces and the message store.
        keys = [index for kind in ("conversation", "agent", "cache", "system") for index in layout.indexes(kind)]
        keys += [bucket[1] for bucket in layout.conv_buckets()] + [layout.serializer_marker]
        keys += [self.key_of(Kind.REASONING_CHAINS, a) for a in agents]
        keys += [self.key_of(Kind.CACHE, c) for c in cache_keys]
        keys += [self.key_of(Kind.SYSTEM, s) for s in await self._list_system_states()]
        keys += await self._kv_all_keys() + await self._msg_all_keys()
        stats["total_bytes"] = total_bytes + await self._memory_usage(keys)
        return stats

    async def _memory_usage(self, keys: list[str]) -> int:
        """The sum of MEMORY USAGE over ``keys`` (0 for a missing one), one script per batch
        of keys of one slot (every key of a script must be in one slot, on a cluster)."""
        if self._cluster:
            by_slot: dict[int, list[str]] = {}
            for key in keys:
                by_slot.setdefault(self.client.keyslot(key), []).append(key)
            groups = list(by_slot.values())
        else:
            groups = [keys]
        calls = [(batch, ()) for group in groups for batch in _batches(group, _STATS_BATCH)]
        return sum(int(size) for size in await self._scripts_over("memory_usage", calls))

    async def _all_keys(self) -> list[str]:
        """Every key this storage owns, found through the index sets (no KEYS, no SCAN)."""
        layout = self._layout
        keys = [index for kind in ("conversation", "agent", "cache", "system") for index in layout.indexes(kind)]
        keys += [bucket[1] for bucket in layout.conv_buckets()] + [layout.serializer_marker]
        for conversation_id in await self._list_conversations():
            keys += self._part_keys(conversation_id)
        keys += [self.key_of(Kind.REASONING_CHAINS, a) for a in await self._list_agents()]
        keys += [self.key_of(Kind.CACHE, c) for c in await self._list_all_cache_keys()]
        keys += [self.key_of(Kind.SYSTEM, s) for s in await self._list_system_states()]
        return keys + await self._kv_all_keys() + await self._msg_all_keys()

    async def verify(self) -> list[Problem]:
        """Every entity's problems, and each conversation's metadata hash that does not parse."""
        problems: dict[str, Problem] = {}
        # A damaged metadata key spoils the read of every part of its conversation: one report.
        for problem in await super().verify() + await self._meta_problems():
            problems.setdefault(problem.location, problem)
        return list(problems.values())

    async def _total_bytes(self) -> int:
        """Bytes Redis reports for this prefix's keys (MEMORY USAGE; big lists are sampled)."""
        return await self._memory_usage(await self._all_keys())


# ------------------------------------------------------------------- helpers


# Every operation names its key, and the same ids come back again and again: an id that
# needs percent-encoding (``llm:answer:42``) costs about 1.5 us to encode, a cache hit 0.1.
_name = functools.lru_cache(maxsize=4096)(_encode_name)


async def _nothing_to_undo(error: BaseException) -> None:
    """Retry's failure hook: the cluster client already dropped the broken connection."""


def _text(value: bytes | str) -> str:
    """Replies are bytes, or str on a caller's client made with decode_responses=True."""
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _ids(members: Any, index: str) -> list[str]:
    """Index members as ids; one that is not UTF-8 was not written by this library."""
    try:
        return [_text(member) for member in members]
    except UnicodeDecodeError as e:
        raise CorruptedDataError(index, f"a member is not UTF-8 text ({e})", hint="remove it from the index") from e


def _batches(items: list[str], size: int = _BATCH) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _url_secrets(url: str) -> list[str]:
    """The passwords a URL carries (user info, ``password=`` query), as written and decoded,
    longest first; short ones are left out, since replacing them would garble messages."""
    found: set[str] = set()
    rest = url.partition("://")[2]
    info, at, _ = rest.split("?", 1)[0].rpartition("@")
    if at:
        found.add(info.partition(":")[2] or info)
    found.update(re.findall(r"(?i)[?&;](?:password|passwd|pwd)=([^&;#]*)", url))
    found |= {unquote(secret) for secret in found}
    return sorted((secret for secret in found if len(secret) >= 3), key=len, reverse=True)


def _cluster_trouble(exceptions: Any) -> tuple[type[BaseException], ...]:
    """redis-py's errors for a cluster that is failing over, resharding or not fully served."""
    return (
        exceptions.ClusterError,  # CLUSTERDOWN, MASTERDOWN, "TTL exhausted"
        exceptions.AskError,  # MOVED and ASK on a connection taken by hand
        exceptions.TryAgainError,
        exceptions.RedisClusterException,  # no node serves the slot, no node answers
    )


def _is_bulk_error(error: BaseException) -> bool:
    """Redis's refusal of a value over proto-max-bulk-len (or of a string grown past it)."""
    text = str(error)
    return "invalid bulk length" in text or "exceeds maximum allowed size" in text


def _config_value(reply: Any, name: str) -> str | None:
    """One value of a CONFIG GET reply; None when it failed (an ACL, a renamed command)."""
    if not isinstance(reply, dict):
        return None
    for key, value in reply.items():
        if _text(key) == name:
            return _text(value)
    return None


def _describe_client(client: Any) -> str:
    if is_cluster_client(client):
        nodes = getattr(client, "startup_nodes", None) or [None]
        return f"redis+cluster://{getattr(nodes[0], 'name', '?')}"
    kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", {})
    if "path" in kwargs:
        return f"unix://{kwargs['path']}"
    return f"redis://{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def _check_item(value: Any, source: str, top_level: bool = True) -> dict[str, Any]:
    if not isinstance(value, dict):
        line = 1 if top_level else None  # a nested item has no position we could name
        problem = f"expected a JSON object, found {_json_type(value)}"
        raise CorruptedDataError(source, problem, line=line, column=line, hint=_HINT)
    return value


def _check_shape(kind: Kind, value: Any, source: str) -> Any:
    """Refuse a parsed value whose shape does not fit its kind (an object where a list belongs)."""
    if kind is Kind.CONVERSATION:
        return _check_item(value, source)
    if kind is Kind.CHUNKS:
        if not isinstance(value, list):
            raise CorruptedDataError(
                source, f"expected a JSON array, found {_json_type(value)}", line=1, column=1, hint=_HINT
            )
        for index, item in enumerate(value):
            _check_item(item, f"{source}[{index}]", top_level=False)
    return value
