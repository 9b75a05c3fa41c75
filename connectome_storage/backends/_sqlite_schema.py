"""The SQLite schema: its version, the forward migrations, and the statements that keep it.

``PRAGMA user_version`` holds the version a database stands at; ``SqliteStorage`` applies
``MIGRATIONS[n]`` for every step from there to ``SCHEMA_VERSION`` in one write transaction,
and refuses a database whose version is newer. docs/sqlite.md draws the tables.
"""

from __future__ import annotations

__all__ = [
    "APPLICATION_ID",
    "CLAIM_SERIALIZER",
    "DROP_EXPIRED",
    "ENSURE_PARENT",
    "MIGRATIONS",
    "PRUNE_CONVERSATION",
    "SCHEMA_VERSION",
    "SET_MESSAGE_COUNT",
    "STATS",
]

# Written into the file header so that a database of another application is never mistaken
# for an empty one of ours ("CnSt").
APPLICATION_ID = 0x436E5374

# MIGRATIONS[n] takes a database from user_version n to n + 1. Append, never edit: a
# database in the field may stand at any earlier version. Rowid tables (not WITHOUT
# ROWID) because rows hold whole messages and documents, which are often kilobytes.
MIGRATIONS: list[tuple[str, ...]] = [
    (
        """CREATE TABLE conversations (
            conversation_id TEXT PRIMARY KEY NOT NULL,
            document TEXT,  -- store_conversation value; NULL when not stored
            chunks TEXT     -- store_chunks value; NULL when not stored
        )""",
        """CREATE TABLE raw_messages (
            id INTEGER PRIMARY KEY,
            conversation_id TEXT NOT NULL
                REFERENCES conversations (conversation_id) ON DELETE CASCADE,
            seq INTEGER NOT NULL,  -- 0-based position in the history
            data TEXT NOT NULL,
            UNIQUE (conversation_id, seq)
        )""",
        """CREATE TABLE memories (
            id INTEGER PRIMARY KEY,
            conversation_id TEXT NOT NULL
                REFERENCES conversations (conversation_id) ON DELETE CASCADE,
            memory_id TEXT NOT NULL,
            position INTEGER NOT NULL,  -- first-stored order; a replace keeps it
            data TEXT NOT NULL,
            UNIQUE (conversation_id, memory_id),
            UNIQUE (conversation_id, position)
        )""",
        "CREATE TABLE agents (agent_id TEXT PRIMARY KEY NOT NULL)",
        """CREATE TABLE reasoning_chains (
            id INTEGER PRIMARY KEY,
            agent_id TEXT NOT NULL REFERENCES agents (agent_id) ON DELETE CASCADE,
            seq INTEGER NOT NULL,
            data TEXT NOT NULL,
            UNIQUE (agent_id, seq)
        )""",
        """CREATE TABLE cache (
            cache_key TEXT PRIMARY KEY NOT NULL,
            data TEXT NOT NULL,
            created_ms INTEGER NOT NULL,  -- epoch milliseconds, as CacheEntry holds them
            expires_ms INTEGER            -- NULL: never expires
        )""",
        # Covers list_cache_keys, the expired count and cleanup without touching the rows.
        "CREATE INDEX cache_expires ON cache (expires_ms, cache_key)",
        "CREATE TABLE system_state (state_key TEXT PRIMARY KEY NOT NULL, data TEXT NOT NULL)",
    ),
    # 2: key-value collections (``_sqlite_kv``). A rowid table, for the reason above: values
    # are whole session documents and checkpoints; the primary key index orders the keys.
    (
        """CREATE TABLE kv (
            namespace TEXT NOT NULL,
            key TEXT NOT NULL,
            value TEXT NOT NULL,          -- canonical compact JSON
            tags TEXT NOT NULL,           -- canonical JSON object of str to str; '{}' when none
            created_ms INTEGER NOT NULL,  -- epoch milliseconds
            updated_ms INTEGER NOT NULL,
            expires_ms INTEGER,           -- NULL: never expires
            PRIMARY KEY (namespace, key)
        )""",
        # order_by="updated_at" / "created_at" (ties by key) and since/until ranges.
        "CREATE INDEX kv_updated ON kv (namespace, updated_ms, key)",
        "CREATE INDEX kv_created ON kv (namespace, created_ms, key)",
        # Expired counts and cleanup read only the rows that have an expiry.
        "CREATE INDEX kv_expires ON kv (expires_ms, namespace) WHERE expires_ms IS NOT NULL",
        # One row per tag of an entry: find_by_tag and tag filters are index ranges, already
        # in key order. Small rows, so WITHOUT ROWID (the primary key is the table).
        """CREATE TABLE kv_tags (
            namespace TEXT NOT NULL,
            name TEXT NOT NULL,
            value TEXT NOT NULL,
            key TEXT NOT NULL,
            PRIMARY KEY (namespace, name, value, key),
            FOREIGN KEY (namespace, key) REFERENCES kv (namespace, key) ON DELETE CASCADE
        ) WITHOUT ROWID""",
        # The cascade and a rewrite find an entry's tag rows through this.
        "CREATE INDEX kv_tags_entry ON kv_tags (namespace, key)",
    ),
    # 3: facts about the database itself. Row ``serializer`` says how values are stored
    # (json or msgpack). A database that already holds data was written as JSON, so it is
    # recorded as such here; a new one is claimed by the first storage that opens it.
    (
        "CREATE TABLE meta (name TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL)",
        """INSERT INTO meta (name, value) SELECT 'serializer', 'json' WHERE EXISTS (SELECT 1 FROM conversations)
            OR EXISTS (SELECT 1 FROM agents) OR EXISTS (SELECT 1 FROM cache)
            OR EXISTS (SELECT 1 FROM system_state) OR EXISTS (SELECT 1 FROM kv)""",
    ),
    # 4: the message store (``_sqlite_messages``): sender, recipient ('*' for a broadcast) and
    # timestamp repeat the message's "from", "to" and "timestamp", so that queries are index
    # ranges in order; data is the whole message. read_messages holds one row per id an agent
    # marked read. Terse SQL: sqlite_master keeps it verbatim, and the schema fits one page.
    (
        "CREATE TABLE messages (message_id TEXT PRIMARY KEY NOT NULL, sender TEXT NOT NULL,"
        " recipient TEXT NOT NULL, timestamp TEXT NOT NULL, data TEXT NOT NULL)",
        "CREATE INDEX messages_recipient ON messages (recipient, timestamp, message_id)",
        "CREATE INDEX messages_sender ON messages (sender, timestamp, message_id)",
        "CREATE INDEX messages_order ON messages (timestamp, message_id)",
        "CREATE TABLE read_messages (agent_id TEXT NOT NULL, message_id TEXT NOT NULL,"
        " PRIMARY KEY (agent_id, message_id)) WITHOUT ROWID",
    ),
    # 5: conversation store metadata (``_sqlite_conversations``), columns of the conversation's
    # row: all NULL when the conversation has none, all set (``expires_ms`` NULL when it never
    # expires) when it has. ``metadata`` is the caller's dict as canonical JSON text whatever
    # the serializer, so queries read it with json_extract.
    (
        "ALTER TABLE conversations ADD COLUMN created_ms INTEGER",  # epoch milliseconds
        "ALTER TABLE conversations ADD COLUMN updated_ms INTEGER",
        "ALTER TABLE conversations ADD COLUMN message_count INTEGER",  # follows every raw history write
        "ALTER TABLE conversations ADD COLUMN ttl REAL",  # seconds; NULL: no expiry
        "ALTER TABLE conversations ADD COLUMN expires_ms INTEGER",  # NULL: never expires
        "ALTER TABLE conversations ADD COLUMN metadata TEXT",  # NULL: no metadata
        # Query ranges and orders over the top fields (ties by id, as queries break them).
        "CREATE INDEX conversations_updated ON conversations (updated_ms, conversation_id)",
        "CREATE INDEX conversations_created ON conversations (created_ms, conversation_id)",
        "CREATE INDEX conversations_message_count ON conversations (message_count, conversation_id)",
        # Expired listings, counts and cleanup read only the rows that can expire.
        "CREATE INDEX conversations_expires ON conversations (expires_ms) WHERE expires_ms IS NOT NULL",
    ),
]
SCHEMA_VERSION = len(MIGRATIONS)

# A conversation row lives exactly as long as one of its parts (its metadata among them),
# so list_conversations is a plain scan of the table; every statement that removes a part
# runs this after it.
PRUNE_CONVERSATION = """DELETE FROM conversations WHERE conversation_id = :id
    AND document IS NULL AND chunks IS NULL AND metadata IS NULL
    AND NOT EXISTS (SELECT 1 FROM raw_messages WHERE conversation_id = :id)
    AND NOT EXISTS (SELECT 1 FROM memories WHERE conversation_id = :id)"""

# Before any write to a part of a conversation, in the same transaction: an expired one is
# removed whole (the foreign keys cascade), so the write starts a new conversation.
DROP_EXPIRED = "DELETE FROM conversations WHERE conversation_id = ? AND expires_ms <= ?"

# After a write to the raw history, in the same transaction: the metadata's count follows.
SET_MESSAGE_COUNT = "UPDATE conversations SET message_count = ? WHERE conversation_id = ? AND metadata IS NOT NULL"

# Records the serializer of a database that has none yet (inside BEGIN IMMEDIATE).
CLAIM_SERIALIZER = "INSERT INTO meta (name, value) VALUES ('serializer', ?) ON CONFLICT (name) DO NOTHING"

# Parent row of a log or collection; the foreign keys need it before the first child.
ENSURE_PARENT = {
    "conversations": "INSERT INTO conversations (conversation_id) VALUES (?) ON CONFLICT DO NOTHING",
    "agents": "INSERT INTO agents (agent_id) VALUES (?) ON CONFLICT DO NOTHING",
}

# get_storage_stats in one pass per table. json_valid/json_type check each row in C, so a
# row that would not parse is counted as unreadable instead of as data, and nothing is
# decoded in Python. Each query returns (good, bad) or the columns named beside it. The
# parts of a conversation expired at :now are absent, so they are not counted.
_OBJECT_ROWS = """SELECT COALESCE(SUM(ok), 0), COALESCE(SUM(1 - ok), 0) FROM (SELECT CASE
    WHEN json_valid(data) AND json_type(data) = 'object' THEN 1 ELSE 0 END AS ok FROM {table}{where})"""
_LIVE_PARTS = """ WHERE NOT EXISTS (SELECT 1 FROM conversations AS c
    WHERE c.conversation_id = {table}.conversation_id AND c.expires_ms <= :now)"""
# A metadata row that SqliteConversations._record decodes (keep the two in step).
_META_OK = """(typeof(created_ms) = 'integer' AND typeof(updated_ms) = 'integer'
    AND typeof(message_count) = 'integer' AND message_count >= 0
    AND (ttl IS NULL OR (typeof(ttl) IN ('integer', 'real') AND ttl > 0))
    AND (expires_ms IS NULL OR typeof(expires_ms) = 'integer')
    AND json_valid(metadata) AND json_type(metadata) = 'object')"""
STATS = {
    "raw_message_count": _OBJECT_ROWS.format(table="raw_messages", where=_LIVE_PARTS.format(table="raw_messages")),
    "memory_count": _OBJECT_ROWS.format(table="memories", where=_LIVE_PARTS.format(table="memories")),
    "reasoning_chain_count": _OBJECT_ROWS.format(table="reasoning_chains", where=""),
    # (live, expired, bad) at :now
    "cache": """SELECT COALESCE(SUM(ok AND live), 0), COALESCE(SUM(ok AND NOT live), 0),
        COALESCE(SUM(NOT ok), 0) FROM (SELECT json_valid(data) AS ok,
        (expires_ms IS NULL OR expires_ms > :now) AS live FROM cache)""",
    # (live conversations, their chunks, expired conversations, bad documents + bad chunk
    # lists of live ones + bad metadata of any) at :now
    "conversations": f"""SELECT COALESCE(SUM(live), 0),
        COALESCE(SUM(CASE WHEN live AND chunks_ok THEN json_array_length(chunks) END), 0),
        COALESCE(SUM(NOT live), 0),
        COALESCE(SUM(live AND document IS NOT NULL AND NOT document_ok), 0)
            + COALESCE(SUM(live AND chunks IS NOT NULL AND NOT chunks_ok), 0)
            + COALESCE(SUM(metadata IS NOT NULL AND NOT meta_ok), 0)
        FROM (SELECT document, chunks, metadata,
            NOT COALESCE(expires_ms <= :now, 0) AS live,
            json_valid(document) AND json_type(document) = 'object' AS document_ok,
            json_valid(chunks) AND json_type(chunks) = 'array' AS chunks_ok,
            CASE WHEN json_valid(metadata) THEN {_META_OK} ELSE 0 END AS meta_ok FROM conversations)""",
    # (states, bad)
    "system_state": "SELECT COUNT(*), COALESCE(SUM(NOT json_valid(data)), 0) FROM system_state",
    "agents": "SELECT COUNT(*) FROM agents",
}
