"""Every error the library raises.

The tree::

    StorageError                                  root: ``except StorageError`` catches them all
    ├── ConfigError               (ValueError)    bad option, environment variable or backend name
    ├── StorageNotInitializedError (RuntimeError) data method called before ``initialize()``
    ├── InvalidKeyError           (ValueError)    id that is empty, not a str, holds NUL, too long
    ├── InvalidArgumentError      (ValueError)    an argument other than an id or value is wrong
    ├── SerializationError        (ValueError)    value that would not come back equal from JSON
    ├── CorruptedDataError                        stored data that does not parse or has the wrong shape
    ├── LockTimeoutError          (TimeoutError)  per-entity lock not obtained in time
    ├── BackendUnavailableError   (ConnectionError) server down, connection refused
    ├── StorageFullError                          disk (or server memory) full
    ├── AccessDeniedError         (PermissionError) wrong password, ACL, file permissions
    ├── ValueTooLargeError        (ValueError)    a value over a backend's own size limit
    ├── TransactionError                          a transaction misused or unable to commit
    ├── DecryptionError                           a value that the configured keys cannot decrypt
    ├── UnsupportedFormatError                    data written by a newer version of the library
    ├── NotSupportedError         (NotImplementedError) feature this backend lacks
    └── StorageIOError                            any other failure of the medium

Messages say what happened, to which id or path, and what to do about it.
"""

from __future__ import annotations

__all__ = [
    "AccessDeniedError",
    "BackendUnavailableError",
    "ConfigError",
    "CorruptedDataError",
    "DecryptionError",
    "InvalidArgumentError",
    "InvalidKeyError",
    "LockTimeoutError",
    "NotSupportedError",
    "SerializationError",
    "StorageError",
    "StorageFullError",
    "StorageIOError",
    "StorageNotInitializedError",
    "TransactionError",
    "UnsupportedFormatError",
    "ValueTooLargeError",
]


class StorageError(Exception):
    """Root of every error raised by connectome_storage."""


class ConfigError(StorageError, ValueError):
    """A configuration key, environment variable or backend name is not acceptable."""


class StorageNotInitializedError(StorageError, RuntimeError):
    """A data method was called before ``await storage.initialize()``."""


class InvalidKeyError(StorageError, ValueError):
    """An id (conversation, agent, memory, cache or state key) is not acceptable."""


class InvalidArgumentError(StorageError, ValueError):
    """An argument that is neither an id nor a stored value is not acceptable (a ttl, say)."""


class SerializationError(StorageError, ValueError):
    """A value cannot be stored as JSON and come back equal.

    ``location`` names where in the value the problem is, e.g. ``data["turns"][3]["score"]``.
    """

    def __init__(self, message: str, *, location: str | None = None) -> None:
        super().__init__(message)
        self.location = location


class CorruptedDataError(StorageError):
    """Stored data does not parse or does not have the shape its kind requires.

    ``path`` is the file (or database / key) holding it; ``line`` and ``column`` are
    1-based, or ``None`` where they do not apply.
    """

    def __init__(
        self,
        path: str,
        problem: str,
        *,
        line: int | None = None,
        column: int | None = None,
        hint: str | None = None,
    ) -> None:
        self.path = path
        self.line = line
        self.column = column
        self.problem = problem
        where = f"{path}, line {line}, column {column}"
        hint = hint or (
            "fix the file by hand, restore a backup (`connectome-storage restore PATH`), "
            "or store the entity again to replace it"
        )
        super().__init__(f"corrupted data in {where}: {problem}; {hint}")


class LockTimeoutError(StorageError, TimeoutError):
    """A per-entity lock was not obtained within ``connection_timeout`` seconds."""

    def __init__(self, message: str, *, lock_path: str | None = None) -> None:
        super().__init__(message)
        self.lock_path = lock_path


class BackendUnavailableError(StorageError, ConnectionError):
    """The backend cannot be reached (server down, connection refused, timeout)."""


class StorageFullError(StorageError):
    """The medium has no room left (ENOSPC, EDQUOT, Redis OOM); nothing was changed."""


class NotSupportedError(StorageError, NotImplementedError):
    """This backend does not offer the feature asked for (``watch()`` is file-backend only)."""


class StorageIOError(StorageError):
    """Any other failure of the storage medium (permission denied, I/O error, ...)."""


class UnsupportedFormatError(StorageError):
    """The tree or database was written by a newer format version than this library reads."""


class AccessDeniedError(StorageError, PermissionError):
    """The backend refused access: a wrong password, an ACL, or file permissions (the message says which)."""


class ValueTooLargeError(StorageError, ValueError):
    """A value is over a backend's own size limit (Redis strings: 512 MiB); the message names the limit."""


class TransactionError(StorageError):
    """A transaction was nested or misused, or its commit could not complete (nothing of it was applied)."""


class DecryptionError(StorageError):
    """A stored value cannot be decrypted with the configured keys; the message names the entity."""
