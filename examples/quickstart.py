"""Quickstart: store every kind of agent memory, then reload it as after a restart.

    python examples/quickstart.py                                 # file tree in ./storage_data
    CONNECTOME_STORAGE_TYPE=sqlite python examples/quickstart.py  # same code, SQLite

The backend comes from the CONNECTOME_STORAGE_* variables (default: the file tree).
"""

from __future__ import annotations

import asyncio

from connectome_storage import create_storage_from_env

CONVERSATION_ID = "conv_001"
AGENT_ID = "research-agent"


async def store_everything() -> None:
    async with create_storage_from_env() as storage:
        await storage.store_conversation(
            CONVERSATION_ID,
            {
                "title": "Planning a trip to Lisbon",
                "participants": ["user", "assistant"],
                "summary": "The user wants a three-day itinerary in early spring.",
            },
        )
        await storage.store_raw_messages(
            CONVERSATION_ID,
            [
                {"role": "user", "content": "Plan three days in Lisbon for me."},
                {"role": "assistant", "content": "Happy to! When are you going?"},
            ],
        )
        count = await storage.append_raw_messages(
            CONVERSATION_ID, [{"role": "user", "content": "Early March, on a budget."}]
        )
        print(f"raw history now holds {count} messages")
        await storage.store_memory(
            CONVERSATION_ID,
            "mem_001",
            {"text": "User travels on a budget in early March.", "importance": 0.8},
        )
        await storage.store_chunks(CONVERSATION_ID, [{"start": 0, "end": 3, "reason": "one topic"}])
        await storage.store_reasoning_chain(
            AGENT_ID,
            {"goal": "draft itinerary", "steps": ["check season", "list free museums"]},
        )
        await storage.store_cache("llm:itinerary:v1", {"text": "Day 1: Alfama..."}, ttl=3600)
        await storage.store_system_state("last_run", {"status": "ok", "conversations": 1})


async def reload_everything() -> None:
    # A fresh storage object, as after a restart of the application.
    async with create_storage_from_env() as storage:
        conversation = await storage.load_conversation(CONVERSATION_ID)
        assert conversation is not None, "the conversation should have been stored"
        print(f"conversation: {conversation['title']}")
        print(f"raw messages: {len(await storage.load_raw_messages(CONVERSATION_ID))}")
        print(f"memories:     {[m['memory_id'] for m in await storage.load_memories(CONVERSATION_ID)]}")
        print(f"chunks:       {len(await storage.load_chunks(CONVERSATION_ID))}")
        print(f"chains:       {len(await storage.load_reasoning_chains(AGENT_ID))} for {AGENT_ID}")
        print(f"cache:        {await storage.load_cache('llm:itinerary:v1')}")
        print(f"system state: {await storage.load_system_state('last_run')}")
        health = await storage.health_check()
        print(f"health:       {health['status']} ({health['backend']})")
        where = getattr(storage, "base_dir", None) or getattr(storage.settings, "db_path", None)
        if where is None:
            where = getattr(storage.settings, "redis_url", "?")
        print(f"your data is in {where}")
        if storage.backend_name == "file":
            print(f"open {where}/conversations/{CONVERSATION_ID}/current.json in an editor")


if __name__ == "__main__":
    asyncio.run(store_everything())
    asyncio.run(reload_everything())
