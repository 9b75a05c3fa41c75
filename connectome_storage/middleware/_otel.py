"""The OpenTelemetry database client attributes of a storage and a call (Metrics, Tracing).

Nothing here imports OpenTelemetry: these are plain strings, shared by the metrics
middleware (which works without OpenTelemetry) and the tracing one.
"""

from __future__ import annotations

import os
from functools import cache
from typing import TYPE_CHECKING

from ..config import redact_url
from ._base import MiddlewareContext

if TYPE_CHECKING:
    from ..interface import StorageInterface

__all__ = ["collection_name", "error_type", "namespace_of", "package_version", "system_name"]

# db.system.name: OpenTelemetry's registered value where the engine has one; the file tree
# and the in-process backend are this library's own, so they get a name under its prefix.
_SYSTEMS = {
    "sqlite": "sqlite",
    "redis": "redis",
    "postgres": "postgresql",
    "postgresql": "postgresql",
}


def system_name(storage: StorageInterface) -> str:
    """``db.system.name``: ``sqlite``, ``redis``, ``postgresql``, else ``connectome_storage.<backend>``
    (``connectome_storage.file``, ``connectome_storage.memory``)."""
    name = storage.backend_name
    return _SYSTEMS.get(name, f"connectome_storage.{name}")


def namespace_of(storage: StorageInterface) -> str | None:
    """``db.namespace``: the base dir, the database path or the Redis key prefix (a URL
    or DSN with its password replaced by ``***``); None for the in-process backend."""
    settings = storage.settings
    for attribute in ("base_dir", "db_path"):
        path = getattr(settings, attribute, None)
        if path is not None:
            return os.path.abspath(str(path))
    prefix = getattr(settings, "key_prefix", None)
    if isinstance(prefix, str):
        return prefix
    dsn = getattr(settings, "dsn", None)
    if isinstance(dsn, str):
        return redact_url(dsn)
    return None


def collection_name(ctx: MiddlewareContext) -> str | None:
    """``db.collection.name``: the key-value namespace, or the kind; None for whole-store calls."""
    if ctx.kind == "kv":
        return ctx.namespace
    return None if ctx.kind == "storage" else ctx.kind


def error_type(error: BaseException) -> str:
    """``error.type``: the exception's fully qualified class name (builtins by their bare name)."""
    cls = type(error)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


@cache
def package_version() -> str:
    """This library's version, for the instrumentation scope ("" when it is not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("connectome-storage")
    except PackageNotFoundError:
        return ""
