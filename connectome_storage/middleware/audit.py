"""``AuditLog``: one JSON line per storage operation, never a value.

Each line says when (ISO 8601 UTC from the storage's clock), what (operation, kind, id,
key-value namespace, backend, whether it writes), how it ended (``"ok"`` or ``"error"``
with the error's type, never its message) and how long it took. Values are never given
to this middleware at all: it uses only ``after_call``, whose context carries ids.

A path is opened with ``O_APPEND`` and each line is one ``write()``, so several processes
can append to the same file without interleaving their lines. A ``logging.Logger`` gets
one record per operation instead (INFO, WARNING for a failed call), the line as its
message and the fields as the record's ``audit`` attribute.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from ..backends._fs import os_error
from ..codec import format_time
from ..errors import ConfigError, InvalidArgumentError
from ._base import Middleware, MiddlewareContext

if TYPE_CHECKING:
    from ..interface import StorageInterface

__all__ = ["AuditLog"]


class AuditLog(Middleware):
    """Append one JSON line per operation to ``path_or_logger`` (a path or a ``logging.Logger``).

    An audit line that cannot be written (disk full, permissions) raises the StorageError
    of that failure from the call being audited, after the call itself has run: a trail
    with holes is worse than a loud failure. One AuditLog serves one storage; several
    AuditLogs (in several processes, too) may append to the same path.
    """

    def __init__(self, path_or_logger: str | os.PathLike[str] | logging.Logger) -> None:
        self.logger: logging.Logger | None = None
        self.path: Path | None = None
        if isinstance(path_or_logger, logging.Logger):
            self.logger = path_or_logger
        elif isinstance(path_or_logger, str | os.PathLike):
            self.path = Path(path_or_logger)
        else:
            raise InvalidArgumentError(
                f"AuditLog takes a file path or a logging.Logger, got {type(path_or_logger).__name__}"
            )
        self._storage: StorageInterface | None = None
        self._fd: int | None = None

    def __repr__(self) -> str:
        return f"AuditLog({self.logger if self.path is None else str(self.path)!r})"

    def attach(self, storage: StorageInterface) -> None:
        if self._storage is not None and self._storage is not storage:
            raise ConfigError("an AuditLog serves one storage; give each storage its own AuditLog(...)")
        self._storage = storage

    async def on_open(self, storage: StorageInterface) -> None:
        # Opened here, so a path that cannot be written fails initialize() instead of the first call.
        if self.path is not None and self._fd is None:
            self._fd = self._open()

    async def on_close(self, storage: StorageInterface) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    async def after_call(self, ctx: MiddlewareContext, error: BaseException | None) -> None:
        if isinstance(error, GeneratorExit):
            error = None  # a scan the caller stopped early ended normally
        record = self.record(ctx, error)
        line = orjson.dumps(record)
        if self.logger is not None:
            level = logging.INFO if error is None else logging.WARNING
            self.logger.log(level, line.decode(), extra={"audit": record})
        else:
            self._append(line + b"\n")

    def record(self, ctx: MiddlewareContext, error: BaseException | None) -> dict[str, Any]:
        """The fields of one audit line (ids and times only: never a value, never a message)."""
        storage = self._storage
        now_ms = storage._now_ms() if storage is not None else round(time.time() * 1000)
        return {
            "time": format_time(now_ms),
            "operation": ctx.operation,
            "kind": ctx.kind,
            "id": ctx.key,
            "namespace": ctx.namespace,
            "backend": ctx.backend,
            "write": ctx.write,
            "outcome": "ok" if error is None else "error",
            "error_type": None if error is None else type(error).__name__,
            "duration_ms": round((time.perf_counter() - ctx.started) * 1000, 3),
        }

    def _open(self) -> int:
        assert self.path is not None
        try:
            return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise os_error(e, "opening the audit log", self.path) from e

    def _append(self, data: bytes) -> None:
        assert self.path is not None
        fd = self._fd
        # A call outside open/close (one refused as not initialized) is audited too,
        # through a descriptor opened for that one line.
        transient = fd is None
        if fd is None:
            fd = self._open()
        try:
            # One write() with O_APPEND: the line lands whole at the end of the file, even
            # with other writers; a short write (a full disk) is finished and then reported.
            written = os.write(fd, data)
            while written < len(data):
                written += os.write(fd, data[written:])
        except OSError as e:
            raise os_error(e, "appending to the audit log", self.path) from e
        finally:
            if transient:
                os.close(fd)
