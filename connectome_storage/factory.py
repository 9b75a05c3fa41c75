"""StorageFactory and the ``create_*`` helpers.

Backends are registered by import path and loaded on first use, so choosing ``file``
never imports aiosqlite or redis, and a missing optional package fails only when its
backend is asked for, with an ImportError that names the extra to install.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from .config import TYPE_VARIABLE, read_environment, with_environment_middleware
from .errors import ConfigError
from .interface import StorageInterface

__all__ = [
    "StorageFactory",
    "create_file_storage",
    "create_memory_storage",
    "create_postgres_storage",
    "create_redis_storage",
    "create_sqlite_storage",
    "create_storage_from_env",
]


class StorageFactory:
    """Creates storages by backend name: ``file``, ``sqlite``, ``redis``, ``postgres``, ``memory`` or a
    registered one."""

    _backends: ClassVar[dict[str, type[StorageInterface] | str]] = {
        "file": "connectome_storage.backends.file:FileStorage",
        "sqlite": "connectome_storage.backends.sqlite:SqliteStorage",
        "redis": "connectome_storage.backends.redis:RedisStorage",
        "memory": "connectome_storage.backends.memory:MemoryStorage",
        "postgres": "connectome_storage.backends.postgres:PostgresStorage",
    }

    @classmethod
    def register_backend(cls, name: str, backend: type[StorageInterface]) -> None:
        """Make ``backend`` available as ``name`` (replacing any backend of that name)."""
        if not (isinstance(backend, type) and issubclass(backend, StorageInterface)):
            raise ConfigError(f"backend {name!r} must be a StorageInterface subclass, got {backend!r}")
        cls._backends[name.strip().lower()] = backend

    @classmethod
    def available_backends(cls) -> list[str]:
        """Names ``create_storage`` accepts."""
        return sorted(cls._backends)

    @classmethod
    def backend_class(cls, name: str, source: str | None = None) -> type[StorageInterface]:
        """The class registered as ``name``; ConfigError listing the known names otherwise.

        ``source`` names where the name came from (``CONNECTOME_STORAGE_TYPE``, ``--type``)
        so the message points at what to fix.
        """
        key = name.strip().lower() if isinstance(name, str) else name
        backend = cls._backends.get(key)
        if backend is None:
            given = f"{source}={name!r}" if source else repr(name)
            raise ConfigError(f"unknown storage backend {given}; known backends: {', '.join(cls.available_backends())}")
        if isinstance(backend, str):
            module_name, _, class_name = backend.partition(":")
            backend = getattr(importlib.import_module(module_name), class_name)
            cls._backends[key] = backend
        return backend

    @classmethod
    def create_storage(cls, storage_type: str, config: Mapping[str, Any] | None = None) -> StorageInterface:
        """A new, not yet initialized storage of ``storage_type`` built from ``config``.

        Raises ConfigError for an unknown backend, an option it does not take or a value
        that does not parse; ImportError when the backend's optional package is missing.
        """
        return cls.backend_class(storage_type)(dict(config or {}))


def create_file_storage(base_dir: str | Path = "./storage_data", **options: Any) -> StorageInterface:
    """A FileStorage rooted at ``base_dir``; options as in docs/configuration.md."""
    return StorageFactory.create_storage("file", {"base_dir": base_dir, **options})


def create_sqlite_storage(db_path: str | Path = "./storage_data/connectome.db", **options: Any) -> StorageInterface:
    """A SqliteStorage on ``db_path`` (needs ``pip install connectome-storage[sqlite]``)."""
    return StorageFactory.create_storage("sqlite", {"db_path": db_path, **options})


def create_redis_storage(url: str | None = None, *, client: Any = None, **options: Any) -> StorageInterface:
    """A RedisStorage on ``url`` or on ``client``, which stays the caller's to close.

    Needs ``pip install connectome-storage[redis]``.
    """
    config = dict(options)
    if url is not None:
        config["redis_url"] = url
    if client is not None:
        config["client"] = client
    return StorageFactory.create_storage("redis", config)


def create_postgres_storage(dsn: str | None = None, **options: Any) -> StorageInterface:
    """A PostgresStorage on the database ``dsn`` names (``postgresql://user:password@host:port/db``).

    Needs ``pip install connectome-storage[postgres]``.
    """
    config = dict(options)
    if dsn is not None:
        config["dsn"] = dsn
    return StorageFactory.create_storage("postgres", config)


def create_memory_storage(**options: Any) -> StorageInterface:
    """A MemoryStorage: everything in this process's memory (``max_conversations`` bounds it)."""
    return StorageFactory.create_storage("memory", options)


def create_storage_from_env(environ: Mapping[str, str] | None = None) -> StorageInterface:
    """A storage chosen and configured by the ``CONNECTOME_STORAGE_*`` variables.

    Every variable that is set is validated (ConfigError names it, its value and what is
    accepted); those that belong to another backend are then ignored.
    ``CONNECTOME_STORAGE_ENCRYPTION_KEY`` adds an ``Encryption`` middleware with that key.
    """
    backend, config = read_environment(os.environ if environ is None else environ)
    config = with_environment_middleware(config)  # CONNECTOME_STORAGE_ENCRYPTION_KEY: Encryption
    cls = StorageFactory.backend_class(backend, TYPE_VARIABLE)
    accepted = {name for name in cls.settings_class.__dataclass_fields__}
    return cls({key: value for key, value in config.items() if key in accepted})
