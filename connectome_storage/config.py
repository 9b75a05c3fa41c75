"""Settings: explicit option, then ``CONNECTOME_STORAGE_*`` variable, then default.

Each backend declares a frozen dataclass of the options it takes. ``resolve_settings``
turns a config dict into one, refusing keys the backend does not take and values that do
not parse; ``read_environment`` validates every ``CONNECTOME_STORAGE_*`` variable that is
set, whichever backend is chosen, and returns them as config keys.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import math
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

from .errors import ConfigError

__all__ = [
    "ENCRYPTION_KEY_VARIABLE",
    "ENV_PREFIX",
    "ENV_VARIABLES",
    "TYPE_VARIABLE",
    "CommonSettings",
    "FileSettings",
    "PostgresSettings",
    "RedisSettings",
    "SqliteSettings",
    "parse_bool",
    "read_environment",
    "redact_url",
    "resolve_settings",
    "with_environment_middleware",
]

ENV_PREFIX = "CONNECTOME_STORAGE_"
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


@dataclasses.dataclass(frozen=True)
class CommonSettings:
    """Options every backend takes."""

    clock: Callable[[], float] = time.time
    default_cache_ttl: float | None = None
    # Middleware instances run around every public method, the first outermost (docs/middleware.md).
    middleware: tuple[Any, ...] = ()


@dataclasses.dataclass(frozen=True)
class FileSettings(CommonSettings):
    base_dir: Path = Path("./storage_data")
    create_backups: bool = True
    max_backup_files: int = 5
    pretty_print_json: bool = True
    connection_timeout: float = 30.0
    # How long backups and lock files of an entity that no longer exists are kept before
    # cleanup() removes them (7 days).
    backup_retention: float = 604800.0


@dataclasses.dataclass(frozen=True)
class SqliteSettings(CommonSettings):
    db_path: Path = Path("./storage_data/connectome.db")
    enable_wal_mode: bool = True
    connection_timeout: float = 30.0
    synchronous: str = "FULL"
    serializer: str = "json"


@dataclasses.dataclass(frozen=True)
class RedisSettings(CommonSettings):
    # Out of the repr: a URL may carry a password (redact_url shows it safely).
    redis_url: str = dataclasses.field(default="redis://localhost:6379/0", repr=False)
    key_prefix: str = "connectome:"
    connection_timeout: float = 30.0
    client: Any = None
    serializer: str = "json"
    # Redis Cluster (also chosen by a redis+cluster:// URL or a RedisCluster client).
    cluster: bool = False
    # Replicas that must acknowledge each write (WAIT) before it returns; 0: do not wait.
    wait_replicas: int = 0
    # How often connecting and a read are tried again after a broken connection (exponential
    # backoff); a write is never sent twice (docs/redis.md, "Retries").
    max_retries: int = 3
    # The parts of the server's address, as an alternative to the URL: each one given
    # replaces that part of redis_url (whose default is redis://localhost:6379/0).
    host: str | None = None
    port: int | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    db: int | None = None

    def __post_init__(self) -> None:
        path = None if self.db is None else str(self.db)
        url = with_url_parts(self.redis_url, "redis_url", self.host, self.port, None, self.password, path)
        object.__setattr__(self, "redis_url", url)


@dataclasses.dataclass(frozen=True)
class PostgresSettings(CommonSettings):
    # Out of the repr: a DSN may carry a password (redact_url shows it safely).
    dsn: str = dataclasses.field(default="postgresql://localhost/connectome", repr=False)
    # The PostgreSQL schema (namespace) that holds this storage's tables; one database can
    # hold several storages side by side.
    schema: str = "connectome"
    connection_timeout: float = 30.0
    # Connections the pool keeps open at most (asyncpg.create_pool max_size).
    pool_size: int = 10
    # How often a failed connection attempt or a read is tried again (exponential backoff);
    # a write is never sent twice (docs/postgres.md, "Retries").
    max_retries: int = 3
    # How stored values are kept: json (text columns) or msgpack (bytea); a schema keeps the
    # one it was created with (docs/postgres.md, "Serializer").
    serializer: str = "json"
    # The parts of the server's address, as an alternative to the DSN: each one given
    # replaces that part of dsn.
    host: str | None = None
    port: int | None = None
    user: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    database: str | None = None

    def __post_init__(self) -> None:
        dsn = with_url_parts(self.dsn, "dsn", self.host, self.port, self.user, self.password, self.database)
        object.__setattr__(self, "dsn", dsn)


def with_url_parts(
    url: str, name: str, host: str | None, port: int | None, user: str | None, password: str | None, path: str | None
) -> str:
    """``url`` with each given part replaced (the others kept as written); the new user and
    password are percent-encoded, so any character works in them."""
    if host is None and port is None and user is None and password is None and path is None:
        return url
    parts = urlsplit(url)
    if parts.scheme.lower() == "unix":
        raise ConfigError(f"{name} is a unix socket URL: host, port, password and db do not apply; give a URL instead")
    old_info, at, old_address = parts.netloc.rpartition("@")
    old_user, colon, old_password = old_info.partition(":") if at else ("", "", "")
    info = quote(user, safe="") if user is not None else old_user
    if password is not None:
        info += ":" + quote(password, safe="")
    elif colon:
        info += ":" + old_password
    address = old_address
    if host is not None or port is not None:
        old_host = parts.hostname or ""
        new_host = host if host is not None else old_host
        if ":" in new_host:  # an IPv6 address
            new_host = f"[{new_host}]"
        new_port = port if port is not None else parts.port
        address = new_host + ("" if new_port is None else f":{new_port}")
    netloc = f"{info}@{address}" if info else address
    new_path = parts.path if path is None else "/" + quote(path, safe="")
    return urlunsplit((parts.scheme, netloc, new_path, parts.query, parts.fragment))


_SECRET_QUERY = re.compile(r"(?i)([?&;](?:password|passwd|pwd)=)[^&;#]*")
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://([^?#]*)@")  # greedy: up to the last "@"


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, fit for messages, logs and reports.

    ``redis://user:pw@host`` -> ``redis://user:***@host``, ``redis://:pw@host`` ->
    ``redis://:***@host``, ``redis://host/0?password=pw`` -> ``redis://host/0?password=***``.
    A Redis URL's lone user info (``redis://pw@host``) is hidden too, since some clients
    read it as the password. The rest of the URL is kept as written.
    """

    def userinfo(match: re.Match[str]) -> str:
        scheme, info = match.group(1), match.group(2)
        user, colon, _password = info.partition(":")
        if colon:
            info = f"{user}:***"
        elif scheme.lower() in ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster"):
            info = "***"
        return f"{scheme}://{info}@"

    return _SECRET_QUERY.sub(r"\1***", _USERINFO.sub(userinfo, url, count=1))


def parse_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ConfigError(f"{name}={value!r} is not a boolean; use true/false, 1/0, yes/no or on/off")


def _parse_seconds(value: Any, name: str, *, allow_none: bool = False) -> float | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in {"", "none"}):
        if allow_none:
            return None
        raise ConfigError(f"{name} must be a number of seconds greater than 0, got {value!r}")
    try:
        if isinstance(value, bool):
            raise ValueError
        seconds = float(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"{name}={value!r} is not a number of seconds; use a number greater than 0 such as 30 or 2.5"
        ) from None
    if not (math.isfinite(seconds) and seconds > 0):
        raise ConfigError(f"{name}={value!r} must be a finite number of seconds greater than 0")
    return seconds


def _parse_timeout(value: Any, name: str) -> float:
    seconds = _parse_seconds(value, name)
    assert seconds is not None
    return seconds


def _parse_ttl(value: Any, name: str) -> float | None:
    return _parse_seconds(value, name, allow_none=True)


def _parse_count(value: Any, name: str) -> int:
    try:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError
        count = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={value!r} is not a whole number; use 0 or more") from None
    if count < 0:
        raise ConfigError(f"{name}={value!r} must be 0 or more")
    return count


def _parse_path(value: Any, name: str) -> Path:
    if isinstance(value, Path):
        return value
    if isinstance(value, str) and value.strip() and "\x00" not in value:
        return Path(value)
    raise ConfigError(f"{name}={value!r} is not a usable path; give a non-empty path string")


def _parse_text(value: Any, name: str) -> str:
    if isinstance(value, str) and "\x00" not in value:
        return value
    raise ConfigError(f"{name}={value!r} must be a string")


def _parse_secret_url(value: Any, name: str) -> str:
    # A URL may carry a password: no message shows it unredacted.
    if isinstance(value, str) and "\x00" not in value:
        return value
    raise ConfigError(f"{name} must be a URL string, got a {type(value).__name__}")


def _parse_redis_url(value: Any, name: str) -> str:
    text = _parse_secret_url(value, name)
    if not text.startswith(REDIS_SCHEMES):
        raise ConfigError(
            f"{name}={redact_url(text)!r} is not a Redis URL; use redis://HOST:PORT/DB, rediss://..., "
            "unix:///path/to/socket, or redis+cluster://HOST:PORT (rediss+cluster://) for Redis Cluster"
        )
    _check_url_parses(text, name)
    return text


def _check_url_parses(url: str, name: str) -> None:
    # Caught here, so that the driver never raises a bare ValueError (with the URL in it)
    # when it connects.
    try:
        urlsplit(url).port  # noqa: B018 - reading .port checks it
    except ValueError as e:
        raise ConfigError(
            f"{name}={redact_url(url)!r} does not parse as a URL ({e}); check the host and port"
        ) from None


def _parse_dsn(value: Any, name: str) -> str:
    text = _parse_secret_url(value, name)
    if not text.startswith(("postgresql://", "postgres://")):
        raise ConfigError(
            f"{name}={redact_url(text)!r} is not a PostgreSQL DSN; use postgresql://USER@HOST:PORT/DATABASE"
        )
    _check_url_parses(text, name)
    return text


_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def _parse_schema(value: Any, name: str) -> str:
    schema = _parse_text(value, name)
    if not _SCHEMA_NAME.fullmatch(schema) or schema.startswith("pg_"):
        raise ConfigError(
            f"{name}={value!r} is not a usable PostgreSQL schema name; use lower-case letters, digits and _ "
            "(at most 63, not starting with a digit or pg_), e.g. connectome"
        )
    return schema


def _parse_pool_size(value: Any, name: str) -> int:
    size = _parse_count(value, name)
    if size < 1:
        raise ConfigError(f"{name}={value!r} must be 1 or more connections")
    return size


def _parse_host(value: Any, name: str) -> str:
    host = _parse_text(value, name).strip()
    if not host or any(char in host for char in "/@?#"):
        raise ConfigError(f"{name}={value!r} is not a host name or address; use e.g. db.internal or 10.0.0.5")
    return host


def _parse_port(value: Any, name: str) -> int:
    port = _parse_count(value, name)
    if not 1 <= port <= 65535:
        raise ConfigError(f"{name}={value!r} is not a TCP port; use a whole number from 1 to 65535")
    return port


def _parse_password(value: Any, name: str) -> str:
    if isinstance(value, str) and "\x00" not in value:
        return value
    raise ConfigError(f"{name} must be a string (value not shown)")


def _parse_serializer(value: Any, name: str) -> str:
    serializer = _parse_text(value, name).strip().lower()
    if serializer not in ("json", "msgpack"):
        raise ConfigError(f"{name}={value!r} is not a serializer; use json (the default) or msgpack")
    return serializer


# The URL schemes RedisStorage takes; a ``+cluster`` one selects Redis Cluster.
REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "redis+cluster://", "rediss+cluster://")


ENCRYPTION_KEY_VARIABLE = "CONNECTOME_STORAGE_ENCRYPTION_KEY"


def _parse_encryption_key(value: Any, name: str) -> bytes:
    """The 32 key bytes of base64 text; the value is never shown, even when malformed.

    ``create_storage_from_env`` and the CLI turn it into an ``Encryption`` middleware
    (``with_environment_middleware``)."""
    try:
        if not isinstance(value, str):
            raise ValueError
        key = base64.b64decode(value.strip(), validate=True)
    except (ValueError, binascii.Error):
        key = b""
    if len(key) != 32:
        raise ConfigError(
            f"{name} is not a usable key (value not shown): it must be base64 of exactly 32 random bytes, "
            "e.g. from `python -c 'import base64, os; print(base64.b64encode(os.urandom(32)).decode())'`"
        )
    return key


def with_environment_middleware(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` from ``read_environment`` with its ``encryption_key`` (if any) turned into an
    ``Encryption`` middleware, placed after any middleware already in ``config`` (innermost)."""
    key = config.pop("encryption_key", None)
    if key is None:
        return config
    from .middleware.encryption import Encryption

    return {**config, "middleware": (*config.get("middleware", ()), Encryption(key))}


def _parse_middleware(value: Any, name: str) -> tuple[Any, ...]:
    from .middleware._chain import check_middleware  # imported on use: config is imported first

    return check_middleware(value, name)


def _parse_clock(value: Any, name: str) -> Callable[[], float]:
    if callable(value):
        return value  # type: ignore[no-any-return]
    raise ConfigError(f"{name} must be a callable returning epoch seconds, got {value!r}")


def _parse_synchronous(value: Any, name: str) -> str:
    level = _parse_text(value, name).strip().upper()
    if level not in {"FULL", "NORMAL", "EXTRA"}:
        raise ConfigError(f"{name}={value!r} is not accepted; use FULL, EXTRA or NORMAL")
    return level


_PARSERS: dict[str, Callable[[Any, str], Any]] = {
    "clock": _parse_clock,
    "middleware": _parse_middleware,
    "default_cache_ttl": _parse_ttl,
    "base_dir": _parse_path,
    "create_backups": parse_bool,
    "max_backup_files": _parse_count,
    "pretty_print_json": parse_bool,
    "connection_timeout": _parse_timeout,
    "db_path": _parse_path,
    "enable_wal_mode": parse_bool,
    "synchronous": _parse_synchronous,
    "redis_url": _parse_redis_url,
    "key_prefix": _parse_text,
    "client": lambda value, name: value,
    "backup_retention": _parse_timeout,
    "serializer": _parse_serializer,
    "cluster": parse_bool,
    "wait_replicas": _parse_count,
    "dsn": _parse_dsn,
    "host": _parse_host,
    "port": _parse_port,
    "user": _parse_text,
    "password": _parse_password,
    "db": _parse_count,
    "database": _parse_text,
    "schema": _parse_schema,
    "pool_size": _parse_pool_size,
    "max_retries": _parse_count,
    "encryption_key": _parse_encryption_key,
}

# Variable -> config key, in the order of the table in docs/configuration.md.
ENV_VARIABLES: dict[str, str] = {
    "CONNECTOME_STORAGE_BASE_DIR": "base_dir",
    "CONNECTOME_STORAGE_DB_PATH": "db_path",
    "CONNECTOME_STORAGE_CREATE_BACKUPS": "create_backups",
    "CONNECTOME_STORAGE_PRETTY_JSON": "pretty_print_json",
    "CONNECTOME_STORAGE_WAL_MODE": "enable_wal_mode",
    "CONNECTOME_STORAGE_TIMEOUT": "connection_timeout",
    "CONNECTOME_STORAGE_MAX_BACKUPS": "max_backup_files",
    "CONNECTOME_STORAGE_REDIS_URL": "redis_url",
    "CONNECTOME_STORAGE_KEY_PREFIX": "key_prefix",
    "CONNECTOME_STORAGE_CACHE_TTL": "default_cache_ttl",
    "CONNECTOME_STORAGE_SQLITE_SYNCHRONOUS": "synchronous",
    "CONNECTOME_STORAGE_BACKUP_RETENTION": "backup_retention",
    "CONNECTOME_STORAGE_SERIALIZER": "serializer",
    "CONNECTOME_STORAGE_POSTGRES_DSN": "dsn",
    "CONNECTOME_STORAGE_POSTGRES_SCHEMA": "schema",
    "CONNECTOME_STORAGE_POOL_SIZE": "pool_size",
    "CONNECTOME_STORAGE_MAX_RETRIES": "max_retries",
    "CONNECTOME_STORAGE_REDIS_CLUSTER": "cluster",
    "CONNECTOME_STORAGE_REDIS_WAIT_REPLICAS": "wait_replicas",
    # Not a backend option: with_environment_middleware makes it an Encryption middleware.
    ENCRYPTION_KEY_VARIABLE: "encryption_key",
}
TYPE_VARIABLE = "CONNECTOME_STORAGE_TYPE"

S = TypeVar("S", bound=CommonSettings)


def resolve_settings(settings_class: type[S], config: Mapping[str, Any] | None, backend: str) -> S:
    """Build ``settings_class`` from ``config``, validating every key and value."""
    config = dict(config or {})
    known = {field.name for field in dataclasses.fields(settings_class)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ConfigError(
            f"the {backend} backend does not take the option(s) {', '.join(map(repr, unknown))}; "
            f"it takes: {', '.join(sorted(known))}"
        )
    values = {}
    for key, value in config.items():
        parser = _PARSERS.get(key)
        values[key] = parser(value, key) if parser else value
    return settings_class(**values)


def read_environment(environ: Mapping[str, str]) -> tuple[str, dict[str, Any]]:
    """Return (backend name, config) from ``CONNECTOME_STORAGE_*`` variables.

    Every variable that is set is validated; an unknown ``CONNECTOME_STORAGE_*`` name is
    refused too, since a typo would otherwise be ignored silently.
    """
    config: dict[str, Any] = {}
    for variable, raw in environ.items():
        if not variable.startswith(ENV_PREFIX) or variable == TYPE_VARIABLE:
            continue
        key = ENV_VARIABLES.get(variable)
        if key is None:
            raise ConfigError(
                f"unknown environment variable {variable}; known ones are {', '.join([TYPE_VARIABLE, *ENV_VARIABLES])}"
            )
        config[key] = _PARSERS[key](raw, variable)
    backend = environ.get(TYPE_VARIABLE, "file").strip().lower() or "file"
    return backend, config
