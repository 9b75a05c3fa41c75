"""Middleware: hooks run around every public method of a storage (docs/middleware.md).

``create_file_storage(path, middleware=[Compression(), Encryption(key)])``. Importing this
package imports no optional package: each class imports its own (cryptography, zstandard,
opentelemetry) when it is built, and raises ImportError naming the extra to install.
"""

from __future__ import annotations

from typing import Any

from ._base import Middleware, MiddlewareContext

__all__ = [
    "AuditLog",
    "Compression",
    "Encryption",
    "Metrics",
    "Middleware",
    "MiddlewareContext",
    "ReadCache",
    "Tracing",
]

# Each built-in middleware lives in its own module, loaded on first use.
_LAZY = {
    "Encryption": ".encryption",
    "Compression": ".compression",
    "ReadCache": ".read_cache",
    "AuditLog": ".audit",
    "Metrics": ".metrics",
    "Tracing": ".tracing",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
