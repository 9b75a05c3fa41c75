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
    "FILL_STATS",
    "FORGET_SUSPECTS",
    "MIGRATIONS",
    "PRUNE_CONVERSATION",
    "SCHEMA_VERSION",
    "SET_MESSAGE_COUNT",
    "STATS",
    "STAT_TRIGGERS",
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

# 6: what get_storage_stats cannot count fast (see STATS below). ``suspects`` names every row
# that may not parse, as its key: triggers add one whenever a row that fails the statistics'
# own check is inserted or updated, by anyone (the library, another process, a hand edit in
# the sqlite3 shell), in the statement's own transaction. A name stays when its row is
# repaired or deleted: the statistics check each named row again, and cleanup() forgets the
# ones that are fine. ``counters`` holds one number, the total of chunk items over every
# stored chunk list, which the triggers keep in step with every insert, update and delete.
# Rows are never deleted through a trigger of their own (a DELETE trigger would load every
# deleted row), so a bulk write pays one check per inserted row (~1 us for 500 bytes).
_JSON_OBJECT = "CASE WHEN json_valid({0}) THEN json_type({0}) = 'object' ELSE 0 END"
_JSON_ARRAY = "CASE WHEN json_valid({0}) THEN json_type({0}) = 'array' ELSE 0 END"
_CHUNK_ITEMS = "CASE WHEN json_valid({0}) AND json_type({0}) = 'array' THEN json_array_length({0}) ELSE 0 END"
_META_GOOD = """CASE WHEN json_valid({0}.metadata) THEN (typeof({0}.created_ms) = 'integer'
    AND typeof({0}.updated_ms) = 'integer' AND typeof({0}.message_count) = 'integer' AND {0}.message_count >= 0
    AND ({0}.ttl IS NULL OR (typeof({0}.ttl) IN ('integer', 'real') AND {0}.ttl > 0))
    AND ({0}.expires_ms IS NULL OR typeof({0}.expires_ms) = 'integer') AND json_type({0}.metadata) = 'object')
    ELSE 0 END"""
# kv rows are judged by _sqlite_kv._ROW_OK (kept in step with it), written here on NEW.
_KV_GOOD = """(typeof(NEW.namespace) = 'text' AND typeof(NEW.key) = 'text' AND json_valid(NEW.value)
    AND typeof(NEW.created_ms) = 'integer' AND typeof(NEW.updated_ms) = 'integer'
    AND (NEW.expires_ms IS NULL OR typeof(NEW.expires_ms) = 'integer')
    AND CASE WHEN json_valid(NEW.tags) AND json_type(NEW.tags) = 'object'
        THEN NOT EXISTS (SELECT 1 FROM json_each(NEW.tags) WHERE json_each.type != 'text') ELSE 0 END)"""
_SUSPECT = "INSERT INTO suspects (tbl, key1, key2) VALUES ('{table}', {key1}, {key2}) ON CONFLICT DO NOTHING"
_CONVERSATION_BAD = (
    f"(NEW.document IS NOT NULL AND NOT {_JSON_OBJECT.format('NEW.document')})"
    f" OR (NEW.chunks IS NOT NULL AND NOT {_JSON_ARRAY.format('NEW.chunks')})"
    f" OR (NEW.metadata IS NOT NULL AND NOT {_META_GOOD.format('NEW')})"
)
_ROW_TRIGGERS = [  # (table, good row, key1, key2)
    ("raw_messages", _JSON_OBJECT.format("NEW.data"), "NEW.id", "''"),
    ("memories", _JSON_OBJECT.format("NEW.data"), "NEW.id", "''"),
    ("reasoning_chains", _JSON_OBJECT.format("NEW.data"), "NEW.id", "''"),
    ("cache", "json_valid(NEW.data)", "NEW.cache_key", "''"),
    ("system_state", "json_valid(NEW.data)", "NEW.state_key", "''"),
    ("kv", _KV_GOOD, "NEW.namespace", "NEW.key"),
]
STAT_TRIGGERS: list[tuple[str, str]] = [  # (name, CREATE TRIGGER statement)
    *[
        (f"{table}_suspect_{event.lower()}",
         f"CREATE TRIGGER {table}_suspect_{event.lower()} AFTER {event} ON {table} WHEN NOT ({good}) BEGIN "
         f"{_SUSPECT.format(table=table, key1=key1, key2=key2)}; END")
        for table, good, key1, key2 in _ROW_TRIGGERS
        for event in ("INSERT", "UPDATE")
    ],
    ("conversations_suspect_insert",
     f"CREATE TRIGGER conversations_suspect_insert AFTER INSERT ON conversations WHEN {_CONVERSATION_BAD} BEGIN "
     f"{_SUSPECT.format(table='conversations', key1='NEW.conversation_id', key2=chr(39) * 2)}; END"),
    # Column lists: the message count each append sets must not re-check a 100 KB document.
    ("conversations_suspect_update",
     "CREATE TRIGGER conversations_suspect_update AFTER UPDATE OF conversation_id, document, chunks, created_ms, "
     f"updated_ms, message_count, ttl, expires_ms, metadata ON conversations WHEN {_CONVERSATION_BAD} BEGIN "
     f"{_SUSPECT.format(table='conversations', key1='NEW.conversation_id', key2=chr(39) * 2)}; END"),
    ("conversations_chunks_insert",
     "CREATE TRIGGER conversations_chunks_insert AFTER INSERT ON conversations WHEN NEW.chunks IS NOT NULL BEGIN "
     f"UPDATE counters SET value = value + {_CHUNK_ITEMS.format('NEW.chunks')} WHERE name = 'chunk_items'; END"),
    ("conversations_chunks_update",
     "CREATE TRIGGER conversations_chunks_update AFTER UPDATE OF chunks ON conversations BEGIN "
     f"UPDATE counters SET value = value + {_CHUNK_ITEMS.format('NEW.chunks')} - {_CHUNK_ITEMS.format('OLD.chunks')} "
     "WHERE name = 'chunk_items'; END"),
    ("conversations_chunks_delete",
     "CREATE TRIGGER conversations_chunks_delete AFTER DELETE ON conversations WHEN OLD.chunks IS NOT NULL BEGIN "
     f"UPDATE counters SET value = value - {_CHUNK_ITEMS.format('OLD.chunks')} WHERE name = 'chunk_items'; END"),
]  # fmt: skip
# Fills the tables for what a database held before version 6 (or before its triggers
# came back, see SqliteStorage._check_serializer): the same checks over every row, once.
FILL_STATS: tuple[str, ...] = (
    "DELETE FROM suspects",
    "INSERT OR REPLACE INTO counters (name, value) VALUES ('chunk_items', "
    f"(SELECT COALESCE(SUM({_CHUNK_ITEMS.format('chunks')}), 0) FROM conversations WHERE chunks IS NOT NULL))",
    *[
        f"INSERT INTO suspects (tbl, key1, key2) SELECT '{table}', {key1[4:]}, {key2.replace('NEW.', '')} "
        f"FROM {table} AS NEW WHERE NOT ({good})"
        for table, good, key1, key2 in _ROW_TRIGGERS
    ],
    f"INSERT INTO suspects (tbl, key1, key2) SELECT 'conversations', conversation_id, '' FROM conversations AS NEW "
    f"WHERE {_CONVERSATION_BAD}",
)
MIGRATIONS.append(
    (
        # key1, key2: the row's key (id, or namespace and key), not its rowid, which VACUUM may change.
        "CREATE TABLE suspects (tbl TEXT NOT NULL, key1 NOT NULL, key2 NOT NULL, PRIMARY KEY (tbl, key1, key2))"
        " WITHOUT ROWID",
        "CREATE TABLE counters (name TEXT PRIMARY KEY NOT NULL, value INTEGER NOT NULL)",
        *(statement for _name, statement in STAT_TRIGGERS),
        *FILL_STATS,
    )
)
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

# get_storage_stats without reading every row (SqliteStorage._collect_stats). Row counts are
# COUNT(*), which SQLite answers from the pages of the table's smallest index; a row whose
# value would not parse is found among ``suspects`` (checked again here with the same test
# the triggers ran), and is counted as unreadable instead of as data. The parts of a
# conversation expired at :now are absent: the expired conversations are found through
# their expiry index and their parts subtracted, so the cost grows with what has expired
# and not been cleaned up, never with what is live. Each query returns the columns named beside it.
_EXPIRED_IDS = "SELECT conversation_id FROM conversations WHERE expires_ms <= :now"
_LIVE_ROW = (
    "NOT EXISTS (SELECT 1 FROM conversations AS c WHERE c.conversation_id = t.conversation_id AND c.expires_ms <= :now)"
)


def _part_stats(table: str, live: bool) -> str:
    """(rows, unreadable rows) of a log or collection, live parts only when ``live``."""
    rows = f"(SELECT COUNT(*) FROM {table})"
    if live:
        rows += f" - (SELECT COUNT(*) FROM {table} WHERE conversation_id IN ({_EXPIRED_IDS}))"
    bad = (f"(SELECT COUNT(*) FROM suspects AS s JOIN {table} AS t ON t.id = s.key1 WHERE s.tbl = '{table}'"
           f" AND NOT {_JSON_OBJECT.format('t.data')}{' AND ' + _LIVE_ROW if live else ''})")  # fmt: skip
    return f"SELECT {rows}, {bad}"


STATS = {
    "raw_message_count": _part_stats("raw_messages", live=True),
    "memory_count": _part_stats("memories", live=True),
    "reasoning_chain_count": _part_stats("reasoning_chains", live=False),
    # (rows, rows expired at :now, unreadable rows, unreadable rows expired at :now)
    "cache": """SELECT (SELECT COUNT(*) FROM cache), (SELECT COUNT(*) FROM cache WHERE expires_ms <= :now),
        COUNT(*), COALESCE(SUM(c.expires_ms <= :now), 0)
        FROM suspects AS s JOIN cache AS c ON c.cache_key = s.key1 WHERE s.tbl = 'cache' AND NOT json_valid(c.data)""",
    # (rows, expired rows, chunk items of every row, chunk items of expired rows, bad documents +
    # bad chunk lists of live rows + bad metadata of any)
    "conversations": f"""SELECT (SELECT COUNT(*) FROM conversations),
        (SELECT COUNT(*) FROM conversations WHERE expires_ms <= :now),
        (SELECT value FROM counters WHERE name = 'chunk_items'),
        (SELECT COALESCE(SUM({_CHUNK_ITEMS.format("chunks")}), 0) FROM conversations WHERE expires_ms <= :now),
        (SELECT COALESCE(SUM(NOT COALESCE(t.expires_ms <= :now, 0) AND t.document IS NOT NULL
                                 AND NOT {_JSON_OBJECT.format("t.document")}), 0)
              + COALESCE(SUM(NOT COALESCE(t.expires_ms <= :now, 0) AND t.chunks IS NOT NULL
                                 AND NOT {_JSON_ARRAY.format("t.chunks")}), 0)
              + COALESCE(SUM(t.metadata IS NOT NULL AND NOT {_META_GOOD.format("t")}), 0)
         FROM suspects AS s JOIN conversations AS t ON t.conversation_id = s.key1 WHERE s.tbl = 'conversations')""",
    # (rows, unreadable rows)
    "system_state": """SELECT (SELECT COUNT(*) FROM system_state), (SELECT COUNT(*) FROM suspects AS s
        JOIN system_state AS t ON t.state_key = s.key1 WHERE s.tbl = 'system_state' AND NOT json_valid(t.data))""",
    "agents": "SELECT COUNT(*) FROM agents",
    # (namespaces with a live readable entry, rows, rows expired at :now, unreadable rows,
    # unreadable rows expired at :now). A namespace without unreadable rows has a live
    # readable entry when it has a live entry: one probe of the primary key per namespace.
    "kv": f"""WITH RECURSIVE ns (name) AS (
            SELECT MIN(namespace) FROM kv
            UNION ALL SELECT (SELECT MIN(namespace) FROM kv WHERE namespace > ns.name)
            FROM ns WHERE ns.name IS NOT NULL),
        bad AS (SELECT t.namespace, t.expires_ms FROM suspects AS s JOIN kv AS t
            ON t.namespace = s.key1 AND t.key = s.key2 WHERE s.tbl = 'kv' AND NOT {_KV_GOOD.replace("NEW.", "t.")})
        SELECT (SELECT COUNT(*) FROM ns WHERE typeof(name) = 'text' AND EXISTS (SELECT 1 FROM kv AS NEW
                    WHERE NEW.namespace = ns.name AND (NEW.expires_ms IS NULL OR NEW.expires_ms > :now)
                    AND (NOT EXISTS (SELECT 1 FROM bad WHERE bad.namespace = ns.name) OR {_KV_GOOD}))),
            (SELECT COUNT(*) FROM kv), (SELECT COUNT(*) FROM kv WHERE expires_ms <= :now),
            (SELECT COUNT(*) FROM bad), (SELECT COUNT(*) FROM bad WHERE expires_ms <= :now)""",
}
# cleanup() forgets the suspects whose rows are gone or fine now.
FORGET_SUSPECTS = [
    f"DELETE FROM suspects WHERE tbl = '{table}' AND NOT EXISTS (SELECT 1 FROM {table} AS NEW WHERE "
    f"NEW.{key1[4:]} = suspects.key1{'' if key2 == chr(39) * 2 else ' AND NEW.key = suspects.key2'} AND NOT ({good}))"
    for table, good, key1, key2 in _ROW_TRIGGERS
] + [
    "DELETE FROM suspects WHERE tbl = 'conversations' AND NOT EXISTS (SELECT 1 FROM conversations AS NEW "
    f"WHERE NEW.conversation_id = suspects.key1 AND ({_CONVERSATION_BAD}))"
]
