"""The usage examples the library was first designed around run as written (file and
SQLite; the Redis example of that design was a sketch of an old aioredis API, replaced by
RedisStorage).

Each example is copied verbatim, with `from connectome_storage import` for
`from storage import`, inside an async function (the original used top-level await).
The only other change: its placeholder `conversation_data = {...}` becomes a real
conversation, since `{...}` is a set holding Ellipsis, which is not JSON.
"""

from __future__ import annotations

from pathlib import Path

import pytest

CONVERSATION = {"format": "typingcloud", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name in list(__import__("os").environ):
        if name.startswith("CONNECTOME_STORAGE_"):
            monkeypatch.delenv(name)


async def test_basic_usage(tmp_path: Path) -> None:
    from connectome_storage import create_file_storage, create_sqlite_storage  # noqa: F401

    # Create file storage
    storage = create_file_storage("./my_storage")
    await storage.initialize()

    # Store a conversation
    conversation_data = CONVERSATION  # Typingcloud format
    await storage.store_conversation("conv_001", conversation_data)

    # Load the conversation
    loaded = await storage.load_conversation("conv_001")

    await storage.shutdown()

    assert loaded == CONVERSATION
    assert (tmp_path / "my_storage/conversations/conv_001/current.json").is_file()


async def test_factory_file_storage(tmp_path: Path) -> None:
    from connectome_storage import StorageFactory

    # Create file storage with custom config
    storage = StorageFactory.create_storage(
        "file", {"base_dir": "./my_storage", "create_backups": True, "pretty_print_json": True}
    )

    async with storage:
        await storage.store_system_state("k", 1)
    assert (tmp_path / "my_storage/system/k.json").read_text() == "1\n"


async def test_monitoring_examples(capsys: pytest.CaptureFixture[str]) -> None:
    from connectome_storage import create_file_storage

    storage = create_file_storage("./storage_data")
    await storage.initialize()
    await storage.store_conversation("conv_001", CONVERSATION)

    health = await storage.health_check()
    print(f"Storage status: {health['status']}")

    stats = await storage.get_storage_stats()
    print(f"Conversations: {stats['conversation_count']}")
    print(f"Total size: {stats.get('total_bytes', 'N/A')} bytes")

    await storage.shutdown()
    out = capsys.readouterr().out
    assert "Storage status: healthy" in out and "Conversations: 1" in out
    assert "Total size: N/A" not in out


async def test_file_storage_configuration_dict(tmp_path: Path) -> None:
    from connectome_storage import StorageFactory

    file_config = {
        "base_dir": "./storage_data",  # Storage root directory
        "create_backups": True,  # Create timestamped backups
        "max_backup_files": 5,  # Keep 5 most recent backups
        "pretty_print_json": True,  # Human-readable JSON formatting
    }
    async with StorageFactory.create_storage("file", file_config) as storage:
        for n in range(7):
            await storage.store_conversation("c", {"n": n})
        kept = await storage.list_backups("conversations/c/current.json")
    assert len(kept) == 5


async def test_factory_sqlite_storage(tmp_path: Path) -> None:
    from connectome_storage import StorageFactory

    # Create SQLite storage
    storage = StorageFactory.create_storage("sqlite", {"db_path": "./my_database.db", "enable_wal_mode": True})

    async with storage:
        await storage.store_system_state("k", 1)
    assert (tmp_path / "my_database.db").is_file()


async def test_environment_configuration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONNECTOME_STORAGE_TYPE", "sqlite")
    monkeypatch.setenv("CONNECTOME_STORAGE_DB_PATH", "./production.db")
    monkeypatch.setenv("CONNECTOME_STORAGE_WAL_MODE", "true")

    from connectome_storage import create_storage_from_env

    storage = create_storage_from_env()
    await storage.initialize()

    assert storage.backend_name == "sqlite"
    await storage.store_conversation("c", CONVERSATION)
    await storage.shutdown()
    assert (tmp_path / "production.db").is_file()


async def test_data_migration(tmp_path: Path) -> None:
    from connectome_storage import create_file_storage as make_old

    async with make_old("./old_storage") as old:
        await old.store_conversation("conv_001", CONVERSATION)
        await old.store_raw_messages("conv_001", [{"role": "user", "content": "hi"}])
        await old.store_memory("conv_001", "mem_b", {"text": "second"})
        await old.store_memory("conv_001", "mem_a", {"text": "first"})

    from connectome_storage import create_file_storage, create_sqlite_storage

    # Load from file storage
    file_storage = create_file_storage("./old_storage")
    await file_storage.initialize()

    # Create SQLite storage
    sqlite_storage = create_sqlite_storage("./new_database.db")
    await sqlite_storage.initialize()

    # Migrate conversations
    conversations = await file_storage.list_conversations()
    for conv_id in conversations:
        data = await file_storage.load_conversation(conv_id)
        await sqlite_storage.store_conversation(conv_id, data)

        # Migrate associated data
        raw_messages = await file_storage.load_raw_messages(conv_id)
        await sqlite_storage.store_raw_messages(conv_id, raw_messages)

        memories = await file_storage.load_memories(conv_id)
        for memory in memories:
            await sqlite_storage.store_memory(conv_id, memory["memory_id"], memory)

    assert await sqlite_storage.load_conversation("conv_001") == CONVERSATION
    assert await sqlite_storage.load_memories("conv_001") == await file_storage.load_memories("conv_001")
    assert await sqlite_storage.load_raw_messages("conv_001") == [{"role": "user", "content": "hi"}]
    await file_storage.shutdown()
    await sqlite_storage.shutdown()
