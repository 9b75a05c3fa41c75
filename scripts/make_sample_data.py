"""Regenerate sample_data/: a realistic storage tree written through the public API.

    python scripts/make_sample_data.py [TARGET]      # default: sample_data/

A fixed clock makes the bytes stable, so `git diff sample_data/` shows only real format
changes; tests/backends/test_sample_data.py regenerates it and requires zero difference.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
from pathlib import Path

from connectome_storage import create_file_storage

FIXED_NOW = 1795253400.0  # 2026-11-21T09:30:00.000Z
KEPT = ("conversations", "cache", "agents", "system", "messages", ".connectome-storage.json")

CONVERSATIONS = {
    "conv_001": {
        "document": {
            "title": "Planning a trip to Lisbon",
            "format": "typingcloud",
            "participants": ["user", "assistant"],
            "compressed_memories": ["User travels on a budget in early March."],
            "turn_count": 4,
        },
        "messages": [
            {"role": "user", "content": "Plan three days in Lisbon for me.", "ts": "2026-11-20T08:00:00Z"},
            {
                "role": "assistant",
                "content": "Happy to! When are you going, and what's your budget?",
                "ts": "2026-11-20T08:00:04Z",
            },
            {
                "role": "user",
                "content": "Early March. Cheap as possible, I love museums.",
                "ts": "2026-11-20T08:01:10Z",
            },
            {
                "role": "assistant",
                "content": "Many museums are free on Sunday mornings; I'll plan around that.",
                "ts": "2026-11-20T08:01:15Z",
            },
        ],
        "chunks": [
            {"chunk_id": "chunk_0", "start": 0, "end": 2, "reason": "trip request and clarifying question"},
            {"chunk_id": "chunk_1", "start": 2, "end": 4, "reason": "constraints: budget, museums"},
        ],
        "memories": {
            "mem_001": {
                "text": "User travels on a budget in early March.",
                "importance": 0.8,
                "source_chunk": "chunk_1",
            },
            "mem_002": {"text": "User loves museums.", "importance": 0.6, "source_chunk": "chunk_1"},
        },
    },
    "conv_002": {
        "document": {
            "title": "Debugging a flaky test",
            "format": "typingcloud",
            "participants": ["user", "assistant"],
            "compressed_memories": [],
            "turn_count": 2,
        },
        "messages": [
            {"role": "user", "content": "My pytest run fails one time in ten. Ideas?", "ts": "2026-11-21T07:12:00Z"},
            {
                "role": "assistant",
                "content": "Look for shared state between tests and unseeded randomness.",
                "ts": "2026-11-21T07:12:06Z",
            },
        ],
        "chunks": [{"chunk_id": "chunk_0", "start": 0, "end": 2, "reason": "single topic"}],
        "memories": {"mem_001": {"text": "User writes Python and uses pytest.", "importance": 0.4}},
    },
    "support/ticket 42": {
        "document": {
            "title": "Refund request (ünïcode and a slash in the id)",
            "format": "typingcloud",
            "participants": ["customer", "agent"],
            "turn_count": 1,
        },
        "messages": [{"role": "customer", "content": "I'd like a refund for order #42 — it arrived broken 😞"}],
        "chunks": [],
        "memories": {},
    },
}

CHAINS = {
    "research-agent": [
        {
            "goal": "draft itinerary",
            "steps": ["check season", "list free museums"],
            "tools": ["web_search"],
            "outcome": "draft ready",
        },
        {
            "goal": "price check",
            "steps": ["compare hostels"],
            "tools": ["web_search", "calculator"],
            "outcome": "3 options",
        },
    ],
    "support-agent": [
        {
            "goal": "triage ticket 42",
            "steps": ["read order", "check policy"],
            "tools": ["orders_api"],
            "outcome": "refund eligible",
        },
    ],
}


async def build(target: Path) -> None:
    async with create_file_storage(target, clock=lambda: FIXED_NOW, create_backups=False) as storage:
        store = storage.conversation_store()
        for conversation_id, parts in CONVERSATIONS.items():
            await storage.store_conversation(conversation_id, parts["document"])
            if conversation_id == "conv_001":  # through the conversation store: metadata.json too
                await store.save(conversation_id, parts["messages"], metadata={"userId": "u-1042", "source": "web"})
            else:
                await storage.store_raw_messages(conversation_id, parts["messages"])
            await storage.store_chunks(conversation_id, parts["chunks"])
            for memory_id, memory in parts["memories"].items():
                await storage.store_memory(conversation_id, memory_id, memory)
        for agent_id, chains in CHAINS.items():
            for chain in chains:
                await storage.store_reasoning_chain(agent_id, chain)
        await storage.store_cache(
            "llm:itinerary:lisbon:v1", {"model": "gpt-x", "text": "Day 1: Alfama and the castle..."}, ttl=86400
        )
        await storage.store_cache("embedding:conv_002:0", [0.12, -0.5, 0.33])
        await storage.store_system_state("last_run", {"status": "ok", "finished_at": "2026-11-21T09:30:00Z"})
        await storage.store_system_state("compression_config", {"chunk_size": 2, "model": "summarizer-v3"})
        bus = storage.message_store()
        await bus.save({"id": "msg_001", "from": "research-agent", "to": "support-agent", "content": "Budget: 300 EUR"})
        await bus.save({"id": "msg_002", "from": "support-agent", "to": "*", "content": "Ticket 42 closed"})
        await bus.mark_read("support-agent", ["msg_001"])


def generate(target: Path) -> None:
    """Write the sample tree into ``target`` (replacing what is there)."""
    with tempfile.TemporaryDirectory() as scratch:
        built = Path(scratch) / "tree"
        asyncio.run(build(built))
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        for name in KEPT:  # housekeeping such as .locks is not part of the sample
            source = built / name
            if source.is_dir():
                shutil.copytree(source, target / name)
            else:
                shutil.copy2(source, target / name)


if __name__ == "__main__":
    destination = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "sample_data"
    generate(destination)
    print(f"wrote {destination}")
