"""The PostgreSQL schema: its version and the forward migrations.

Table ``schema_version`` (one row) holds the version a schema stands at; ``PostgresStorage``
applies ``MIGRATIONS[n]`` for every step from there to ``SCHEMA_VERSION`` in one
transaction, under an advisory lock, and refuses a schema whose version is newer.
docs/postgres.md draws the tables.

Values are canonical JSON ``text`` (never ``jsonb``: it does not give every value back
exactly); times are epoch milliseconds in ``bigint``. Each part of the backend keeps its
tables in its own tuple below; version 1 is all of them.
"""

from __future__ import annotations

__all__ = ["CORE_TABLES", "KV_TABLES", "MESSAGE_TABLES", "MIGRATIONS", "SCHEMA_VERSION"]

# Conversations and their parts, reasoning chains, cache, system state (postgres.py), and
# the conversation store's metadata columns (_postgres_conversations.py).
CORE_TABLES: tuple[str, ...] = (
    """CREATE TABLE conversations (
        conversation_id text PRIMARY KEY,
        document text,          -- store_conversation value; NULL when not stored
        chunks text,            -- store_chunks value; NULL when not stored
        created_ms bigint,      -- conversation store metadata: all NULL when it has none
        updated_ms bigint,
        message_count bigint,   -- follows every raw history write
        ttl double precision,   -- seconds; NULL: no expiry
        expires_ms bigint,      -- NULL: never expires
        metadata text           -- the caller's dict as canonical JSON; NULL: no metadata
    )""",
    """CREATE TABLE raw_messages (
        conversation_id text NOT NULL REFERENCES conversations ON DELETE CASCADE,
        seq bigint NOT NULL,    -- 0-based position in the history
        data text NOT NULL,
        PRIMARY KEY (conversation_id, seq)
    )""",
    """CREATE TABLE memories (
        conversation_id text NOT NULL REFERENCES conversations ON DELETE CASCADE,
        memory_id text NOT NULL,
        position bigint NOT NULL,  -- first-stored order; a replace keeps it
        data text NOT NULL,
        PRIMARY KEY (conversation_id, memory_id),
        UNIQUE (conversation_id, position)
    )""",
    "CREATE TABLE agents (agent_id text PRIMARY KEY)",
    """CREATE TABLE reasoning_chains (
        agent_id text NOT NULL REFERENCES agents ON DELETE CASCADE,
        seq bigint NOT NULL,
        data text NOT NULL,
        PRIMARY KEY (agent_id, seq)
    )""",
    """CREATE TABLE cache (
        cache_key text PRIMARY KEY,
        data text NOT NULL,
        created_ms bigint NOT NULL,
        expires_ms bigint        -- NULL: never expires
    )""",
    "CREATE INDEX cache_expires ON cache (expires_ms, cache_key)",
    "CREATE TABLE system_state (state_key text PRIMARY KEY, data text NOT NULL)",
    # Conversation store queries: ranges and orders over the top fields (ties by id).
    "CREATE INDEX conversations_updated ON conversations (updated_ms, conversation_id)",
    "CREATE INDEX conversations_created ON conversations (created_ms, conversation_id)",
    "CREATE INDEX conversations_message_count ON conversations (message_count, conversation_id)",
    "CREATE INDEX conversations_expires ON conversations (expires_ms) WHERE expires_ms IS NOT NULL",
)

# Key-value collections (_postgres_kv.py).
KV_TABLES: tuple[str, ...] = ()

# The message store (_postgres_messages.py).
MESSAGE_TABLES: tuple[str, ...] = ()

# MIGRATIONS[n] takes a schema from version n to n + 1. Append, never edit once released.
MIGRATIONS: list[tuple[str, ...]] = [CORE_TABLES + KV_TABLES + MESSAGE_TABLES]
SCHEMA_VERSION = len(MIGRATIONS)
