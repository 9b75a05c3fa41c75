"""Settings: explicit option, then ``CONNECTOME_STORAGE_*`` variable, then default.

Each backend declares a frozen dataclass of the options it takes. ``resolve_settings``
turns a config dict into one, refusing keys the backend does not take and values that do
not parse; ``read_environment`` validates every ``CONNECTOME_STORAGE_*`` variable that is
set, whichever backend is chosen, and returns them as config keys.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from .errors import ConfigError

__all__ = [
    "ENV_PREFIX",
    "ENV_VARIABLES",
    "CommonSettings",
    "FileSettings",
    "RedisSettings",
    "SqliteSettings",
    "parse_bool",
    "read_environment",
    "resolve_settings",
]

ENV_PREFIX = "CONNECTOME_STORAGE_"
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


@dataclasses.dataclass(frozen=True)
class CommonSettings:
    """Options every backend takes."""

    clock: Callable[[], float] = time.time
    default_cache_ttl: float | None = None


@dataclasses.dataclass(frozen=True)
class FileSettings(CommonSettings):
    base_dir: Path = Path("./storage_data")
    create_backups: bool = True
    max_backup_files: int = 5
    pretty_print_json: bool = True
    connection_timeout: float = 30.0


@dataclasses.dataclass(frozen=True)
class SqliteSettings(CommonSettings):
    db_path: Path = Path("./storage_data/connectome.db")
    enable_wal_mode: bool = True
    connection_timeout: float = 30.0
    synchronous: str = "FULL"


@dataclasses.dataclass(frozen=True)
class RedisSettings(CommonSettings):
    redis_url: str = "redis://localhost:6379/0"
    key_prefix: str = "connectome:"
    connection_timeout: float = 30.0
    client: Any = None


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


def _parse_redis_url(value: Any, name: str) -> str:
    text = _parse_text(value, name)
    if not text.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(
            f"{name}={value!r} is not a Redis URL; use redis://HOST:PORT/DB, rediss://... or unix:///path/to/socket"
        )
    return text


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
}

# Variable -> config key, in the order of DESIGN section 6.
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
