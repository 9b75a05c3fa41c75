"""connectome-storage: durable, human-readable storage for an AI agent's memory.

One asyncio API over a JSON file tree (default), SQLite, Redis, PostgreSQL and memory; see README.md.
"""

from __future__ import annotations

import logging

from .backends.file import FileStorage
from .backends.memory import MemoryStorage
from .backends.postgres import PostgresStorage  # imports asyncpg only when built
from .backends.redis import RedisStorage  # imports the redis package only when built
from .backends.sqlite import SqliteStorage  # imports aiosqlite only when built
from .conversations import Conversation, ConversationMetadata, ConversationStore
from .errors import StorageError
from .factory import (
    StorageFactory,
    create_file_storage,
    create_memory_storage,
    create_postgres_storage,
    create_redis_storage,
    create_sqlite_storage,
    create_storage_from_env,
)
from .interface import ChangeEvent, StorageInterface
from .kv import Entry, KeyValueStore
from .messages import MessageStore
from .migrate import MigrationReport, migrate

__all__ = [
    "ChangeEvent",
    "Conversation",
    "ConversationMetadata",
    "ConversationStore",
    "Entry",
    "FileStorage",
    "KeyValueStore",
    "MemoryStorage",
    "MessageStore",
    "MigrationReport",
    "PostgresStorage",
    "RedisStorage",
    "SqliteStorage",
    "StorageError",
    "StorageFactory",
    "StorageInterface",
    "create_file_storage",
    "create_memory_storage",
    "create_postgres_storage",
    "create_redis_storage",
    "create_sqlite_storage",
    "create_storage_from_env",
    "migrate",
]
__version__ = "0.1.0"

# A library logs, the application decides where it goes: without this, Python's last-resort
# handler would print the library's warnings to stderr.
logging.getLogger("connectome_storage").addHandler(logging.NullHandler())
