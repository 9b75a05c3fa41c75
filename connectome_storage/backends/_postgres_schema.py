"""The PostgreSQL schema: its version and the forward migrations.

Table ``schema_version`` (one row) holds the version a schema stands at; ``PostgresStorage``
applies ``MIGRATIONS[n]`` for every step from there to ``SCHEMA_VERSION`` in one
transaction, under an advisory lock, and refuses a schema whose version is newer.
docs/postgres.md draws the tables.

Stored values are of the domain ``stored``, which a schema's creation makes ``text`` (canonical
JSON, never ``jsonb``: it does not give every value back exactly) or ``bytea`` (msgpack),
after the storage's serializer, recorded in table ``meta`` (row ``serializer``); the SQL is
the same either way. Conversation metadata and kv tags are JSON ``text`` whatever the
serializer (queries read them). Times are epoch milliseconds in ``bigint``. Each part of the
backend keeps its tables in its own tuple below; version 1 is all of them.
"""

from __future__ import annotations

__all__ = [
    "CLAIM_SERIALIZER",
    "CORE_TABLES",
    "CREATE_STORED",
    "DROP_EXPIRED",
    "KV_TABLES",
    "LOCK_AGENT",
    "LOCK_CONVERSATION",
    "MESSAGE_TABLES",
    "META_TABLE",
    "MIGRATIONS",
    "PRUNE_CONVERSATION",
    "SCHEMA_VERSION",
    "SET_MESSAGE_COUNT",
    "STORED_SERIALIZER",
]

# Facts about the schema itself, created before any migration (version 0 included): row
# ``serializer`` says how stored values are kept (json or msgpack); the first storage that
# opens a new schema writes it, and a schema is only ever opened with that serializer.
META_TABLE = "CREATE TABLE IF NOT EXISTS meta (name text PRIMARY KEY, value text NOT NULL)"
STORED_SERIALIZER = "SELECT value FROM meta WHERE name = 'serializer'"
CLAIM_SERIALIZER = "INSERT INTO meta (name, value) VALUES ('serializer', $1)"
# The type of every stored value, made once with the schema, before migration 1 names it.
# JSON stays text, so that psql shows it and SQL reads it (``value::json``, json_kind);
# msgpack is bytes, which text cannot hold (a NUL byte, invalid UTF-8). Statements cast
# parameters to ``stored[]``, so one SQL text serves both.
CREATE_STORED = {"json": "CREATE DOMAIN stored AS text", "msgpack": "CREATE DOMAIN stored AS bytea"}

# Conversations and their parts, reasoning chains, cache, system state (postgres.py), and
# the conversation store's metadata columns (_postgres_conversations.py).
CORE_TABLES: tuple[str, ...] = (
    """CREATE TABLE conversations (
        conversation_id text PRIMARY KEY,
        document stored,        -- store_conversation value; NULL when not stored
        chunks stored,          -- store_chunks value; NULL when not stored
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
        data stored NOT NULL,
        PRIMARY KEY (conversation_id, seq)
    )""",
    """CREATE TABLE memories (
        conversation_id text NOT NULL REFERENCES conversations ON DELETE CASCADE,
        memory_id text NOT NULL,
        position bigint NOT NULL,  -- first-stored order; a replace keeps it
        data stored NOT NULL,
        PRIMARY KEY (conversation_id, memory_id),
        UNIQUE (conversation_id, position)
    )""",
    "CREATE TABLE agents (agent_id text PRIMARY KEY)",
    """CREATE TABLE reasoning_chains (
        agent_id text NOT NULL REFERENCES agents ON DELETE CASCADE,
        seq bigint NOT NULL,
        data stored NOT NULL,
        PRIMARY KEY (agent_id, seq)
    )""",
    """CREATE TABLE cache (
        cache_key text PRIMARY KEY,
        data stored NOT NULL,
        created_ms bigint NOT NULL,
        expires_ms bigint        -- NULL: never expires
    )""",
    "CREATE INDEX cache_expires ON cache (expires_ms, cache_key)",
    "CREATE TABLE system_state (state_key text PRIMARY KEY, data stored NOT NULL)",
    # get_storage_stats() and verify() judge stored text in SQL: the JSON type of ``value``
    # ('object', 'array', 'string', 'number', 'boolean', 'null'); NULL when it is not JSON;
    # 'unsure' when PostgreSQL's parser and the reader's (orjson) may disagree on it: numbers
    # beyond a double (an exponent of 3 digits, 200 digits in a row), \u escapes of NUL or of
    # a surrogate, nesting deeper than 1024. The caller decodes 'unsure' rows in Python, so
    # the verdict is exactly the reader's. PostgreSQL 15 has no error-free cast
    # (pg_input_is_valid is 16+): the cast runs in an EXCEPTION block (a subtransaction per
    # call; docs/postgres.md, "Statistics and verify", measures it). Not PARALLEL SAFE: a
    # parallel worker cannot start a subtransaction.
    r"""CREATE FUNCTION json_kind(value text) RETURNS text LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL RESTRICTED
    AS $$
    BEGIN
        IF value ~ '[0-9][eE][+-]?[0-9]{3}|[0-9]{200}|\\u(0000|[dD][89a-fA-F])'
                OR (length(value) > 2048 AND length(value) - length(translate(value, '[{', '')) > 1024) THEN
            RETURN 'unsure';
        END IF;
        RETURN json_typeof(value::json);
    EXCEPTION WHEN data_exception OR program_limit_exceeded THEN
        RETURN NULL;
    END $$""",
    # Conversation store queries: ranges and orders over the top fields, ties by id in code
    # point order (COLLATE "C", as the queries order ids whatever the database's collation).
    'CREATE INDEX conversations_updated ON conversations (updated_ms, conversation_id COLLATE "C")',
    'CREATE INDEX conversations_created ON conversations (created_ms, conversation_id COLLATE "C")',
    'CREATE INDEX conversations_message_count ON conversations (message_count, conversation_id COLLATE "C")',
    "CREATE INDEX conversations_expires ON conversations (expires_ms) WHERE expires_ms IS NOT NULL",
)

# A conversation row lives exactly as long as one of its parts (its metadata among them),
# so list_conversations is a plain scan of the table; every statement that removes a part
# runs this after it ($1: conversation_id).
PRUNE_CONVERSATION = """DELETE FROM conversations AS c WHERE c.conversation_id = $1
    AND c.document IS NULL AND c.chunks IS NULL AND c.metadata IS NULL
    AND NOT EXISTS (SELECT 1 FROM raw_messages AS r WHERE r.conversation_id = $1)
    AND NOT EXISTS (SELECT 1 FROM memories AS m WHERE m.conversation_id = $1)"""

# Before any write to a part of a conversation, in the same transaction: an expired one is
# removed whole (the foreign keys cascade), so the write starts a new conversation
# ($1: conversation_id, $2: now in epoch ms).
DROP_EXPIRED = "DELETE FROM conversations WHERE conversation_id = $1 AND expires_ms <= $2"

# After a write to the raw history, in the same transaction: the metadata's count follows
# ($1: conversation_id, $2: the new length).
SET_MESSAGE_COUNT = "UPDATE conversations SET message_count = $2 WHERE conversation_id = $1 AND metadata IS NOT NULL"

# The parent row of a conversation's parts (or of an agent's chains), created when missing
# and row-locked either way, in one statement: the writers of one conversation's history or
# memories queue here until the first commits, so "MAX(seq) + 1" and "MAX(position) + 1"
# never race (the advisory lock a write takes is shared, it does not order writers).
# The no-op update is what takes the lock when the row exists ($1: the id).
LOCK_CONVERSATION = """INSERT INTO conversations (conversation_id) VALUES ($1)
    ON CONFLICT (conversation_id) DO UPDATE SET conversation_id = excluded.conversation_id"""
LOCK_AGENT = """INSERT INTO agents (agent_id) VALUES ($1)
    ON CONFLICT (agent_id) DO UPDATE SET agent_id = excluded.agent_id"""

# Key-value collections (_postgres_kv.py). Ordered and range-compared text is COLLATE "C"
# whatever the database's collation: UTF-8 byte order, the code point order of Python's str.
KV_TABLES: tuple[str, ...] = (
    """CREATE TABLE kv (
        namespace text COLLATE "C" NOT NULL,
        key text COLLATE "C" NOT NULL,
        value stored NOT NULL,      -- canonical compact JSON, or msgpack
        tags text NOT NULL,         -- canonical JSON object of str to str; '{}' when none
        created_ms bigint NOT NULL, -- epoch milliseconds
        updated_ms bigint NOT NULL,
        expires_ms bigint,          -- NULL: never expires
        PRIMARY KEY (namespace, key)
    )""",
    # order_by="updated_at" / "created_at" (ties by key) and since/until ranges.
    "CREATE INDEX kv_updated ON kv (namespace, updated_ms, key)",
    "CREATE INDEX kv_created ON kv (namespace, created_ms, key)",
    # Expired counts and cleanup read only the rows that have an expiry.
    "CREATE INDEX kv_expires ON kv (expires_ms, namespace) WHERE expires_ms IS NOT NULL",
    # One row per tag of an entry: find_by_tag and tag filters are index ranges in key order.
    """CREATE TABLE kv_tags (
        namespace text COLLATE "C" NOT NULL,
        name text COLLATE "C" NOT NULL,
        value text COLLATE "C" NOT NULL,
        key text COLLATE "C" NOT NULL,
        PRIMARY KEY (namespace, name, value, key),
        FOREIGN KEY (namespace, key) REFERENCES kv (namespace, key) ON DELETE CASCADE
    )""",
    # The cascade and a rewrite find an entry's tag rows through this.
    "CREATE INDEX kv_tags_entry ON kv_tags (namespace, key)",
)

# The message store (_postgres_messages.py): sender, recipient ('*' for a broadcast) and
# timestamp repeat the message's "from", "to" and "timestamp", so that queries are index
# ranges in order. The timestamp is its UTF-8 bytes: bytea orders like Python's str and,
# unlike text, holds a U+0000 a caller may put in it. read_messages: one row per id an
# agent marked read.
MESSAGE_TABLES: tuple[str, ...] = (
    """CREATE TABLE messages (
        message_id text COLLATE "C" PRIMARY KEY,
        sender text COLLATE "C" NOT NULL,
        recipient text COLLATE "C" NOT NULL,
        timestamp bytea NOT NULL,
        data stored NOT NULL        -- the whole message, canonical JSON or msgpack
    )""",
    "CREATE INDEX messages_recipient ON messages (recipient, timestamp, message_id)",
    "CREATE INDEX messages_sender ON messages (sender, timestamp, message_id)",
    "CREATE INDEX messages_order ON messages (timestamp, message_id)",
    """CREATE TABLE read_messages (
        agent_id text COLLATE "C" NOT NULL,
        message_id text COLLATE "C" NOT NULL,
        PRIMARY KEY (agent_id, message_id)
    )""",
)

# MIGRATIONS[n] takes a schema from version n to n + 1. Append, never edit once released.
MIGRATIONS: list[tuple[str, ...]] = [CORE_TABLES + KV_TABLES + MESSAGE_TABLES]
SCHEMA_VERSION = len(MIGRATIONS)
