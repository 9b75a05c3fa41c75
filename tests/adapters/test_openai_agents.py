"""ConnectomeSession: the OpenAI Agents SDK Session protocol, on every backend.

A real ``agents.Runner`` drives it with the SDK's own ``ScriptedModel`` (no network,
tracing off in conftest.py), plain and wrapped in the SDK's ``EncryptedSession``;
``pop_item`` races ``add_items`` from another process on the file tree and SQLite.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from agents import Agent, Runner
from agents.extensions.memory import EncryptedSession
from agents.memory.session import Session
from agents.memory.session_settings import SessionSettings
from agents.testing import ScriptedModel, assistant_message

from connectome_storage import StorageInterface
from connectome_storage.adapters.openai_agents import ConnectomeSession
from connectome_storage.errors import InvalidKeyError, SerializationError

Make = Callable[..., StorageInterface]
WORKER = Path(__file__).with_name("session_worker.py")


def item(n: int) -> Any:
    return {"role": "user", "content": f"message {n}"}


def two_turn_agent() -> tuple[Agent[Any], ScriptedModel]:
    model = ScriptedModel([[assistant_message("Hello Ada!")], [assistant_message("Your name is Ada.")]])
    return Agent(name="assistant", instructions="Answer briefly.", model=model), model


async def test_is_an_sdk_session(storage: StorageInterface) -> None:
    session = ConnectomeSession("s1", storage)
    assert isinstance(session, Session)
    assert session.session_id == "s1"
    assert session.session_settings == SessionSettings()
    assert ConnectomeSession("s1", storage, session_settings={"limit": 3}).session_settings == SessionSettings(limit=3)


async def test_bad_session_id_is_refused_at_once(storage: StorageInterface) -> None:
    with pytest.raises(InvalidKeyError):
        ConnectomeSession("bad\x00id", storage)


async def test_items_round_trip_in_order(storage: StorageInterface) -> None:
    session = ConnectomeSession("s1", storage)
    assert await session.get_items() == []
    await session.add_items([item(0), item(1)])
    await session.add_items([])
    await session.add_items([item(2)])
    assert await session.get_items() == [item(0), item(1), item(2)]
    assert await storage.load_raw_messages("s1") == [item(0), item(1), item(2)]


async def test_get_items_limit_is_the_latest_items_oldest_first(storage: StorageInterface) -> None:
    session = ConnectomeSession("s1", storage)
    await session.add_items([item(n) for n in range(5)])
    assert await session.get_items(limit=2) == [item(3), item(4)]
    assert await session.get_items(limit=9) == [item(n) for n in range(5)]
    assert await session.get_items(limit=0) == []
    assert await session.get_items(limit=-1) == [item(n) for n in range(5)]  # as SQLiteSession: no limit
    limited = ConnectomeSession("s1", storage, session_settings=SessionSettings(limit=3))
    assert await limited.get_items() == [item(2), item(3), item(4)]
    assert await limited.get_items(limit=1) == [item(4)]


async def test_empty_add_creates_nothing(storage: StorageInterface) -> None:
    await ConnectomeSession("s1", storage).add_items([])
    assert await storage.list_conversations() == []


async def test_pop_item_returns_the_newest(storage: StorageInterface) -> None:
    session = ConnectomeSession("s1", storage)
    assert await session.pop_item() is None
    await session.add_items([item(0), item(1)])
    assert await session.pop_item() == item(1)
    assert await session.get_items() == [item(0)]
    assert await session.pop_item() == item(0)
    assert await session.pop_item() is None


async def test_clear_session_removes_the_history_only(storage: StorageInterface) -> None:
    await storage.store_conversation("s1", {"title": "kept"})
    session = ConnectomeSession("s1", storage)
    await session.add_items([item(0)])
    await session.clear_session()
    assert await session.get_items() == []
    assert await storage.load_conversation("s1") == {"title": "kept"}
    await session.clear_session()  # nothing left: still fine


async def test_non_json_item_stores_nothing(storage: StorageInterface) -> None:
    session = ConnectomeSession("s1", storage)
    with pytest.raises(SerializationError):
        await session.add_items([item(0), {"content": float("nan")}])  # type: ignore[list-item]
    assert await session.get_items() == []


async def test_session_opens_an_uninitialized_storage(make_storage: Make) -> None:
    storage = make_storage()
    try:
        session = ConnectomeSession("s1", storage)
        await session.add_items([item(0)])
        assert await session.get_items() == [item(0)]
    finally:
        await storage.shutdown()


async def test_runner_two_turns_are_stored(make_storage: Make, backend: str, tmp_path: Path) -> None:
    agent, model = two_turn_agent()
    async with make_storage() as storage:
        session = ConnectomeSession("user-123", storage)
        first = await Runner.run(agent, "Hello, I am Ada.", session=session)
        second = await Runner.run(agent, "What is my name?", session=session)
    assert (first.final_output, second.final_output) == ("Hello Ada!", "Your name is Ada.")
    # The second model call saw the first turn, read back from the storage.
    seen = [entry.get("content") for entry in model.last_call.input]  # type: ignore[union-attr]
    assert seen[0] == "Hello, I am Ada." and seen[-1] == "What is my name?" and len(seen) == 3

    async with make_storage() as reopened:  # a fresh storage object: what is on the medium
        stored = await reopened.load_raw_messages("user-123")
    assert [m["role"] for m in stored] == ["user", "assistant", "user", "assistant"]
    assert stored[0]["content"] == "Hello, I am Ada." and stored[2]["content"] == "What is my name?"
    assert [m["content"][0]["text"] for m in stored[1::2]] == ["Hello Ada!", "Your name is Ada."]
    if backend == "file":
        transcript = tmp_path / "storage_data" / "conversations" / "user-123" / "raw_messages.json"
        assert json.loads(transcript.read_text("utf-8")) == stored
    if backend == "sqlite":
        import sqlite3

        with sqlite3.connect(tmp_path / "connectome.db") as db:
            rows = db.execute(
                "SELECT data FROM raw_messages WHERE conversation_id = ? ORDER BY seq", ("user-123",)
            ).fetchall()
        assert [json.loads(data) for (data,) in rows] == stored


async def test_runner_through_encrypted_session(make_storage: Make) -> None:
    from cryptography.fernet import Fernet

    key = Fernet.generate_key().decode("ascii")
    agent, model = two_turn_agent()
    async with make_storage() as storage:
        inner = ConnectomeSession("user-123", storage)
        session = EncryptedSession("user-123", inner, encryption_key=key, ttl=3600)  # type: ignore[arg-type]
        await Runner.run(agent, "Hello, I am Ada.", session=session)
        second = await Runner.run(agent, "What is my name?", session=session)
        assert second.final_output == "Your name is Ada."
        assert len(model.last_call.input) == 3  # type: ignore[union-attr]  # the first turn, decrypted

        stored = await storage.load_raw_messages("user-123")
        assert len(stored) == 4 and all(m.get("__enc__") == 1 for m in stored)
        assert "Ada" not in json.dumps(stored)  # the medium holds ciphertext only
        popped = await session.pop_item()
        assert popped is not None and popped["content"][0]["text"] == "Your name is Ada."  # type: ignore[index]
        assert len(await session.get_items()) == 3


@pytest.mark.parametrize("kind", ["file", "sqlite"])
def test_pop_races_add_from_another_process(kind: str, tmp_path: Path) -> None:
    count = 150
    spec = f"file:{tmp_path / 'tree'}" if kind == "file" else f"sqlite:{tmp_path / 'c.db'}"
    go, done = tmp_path / "go", tmp_path / "done"
    args = [spec, "race", str(count), str(go), str(done)]
    adder = subprocess.Popen(
        [sys.executable, str(WORKER), "add", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    popper = subprocess.Popen(
        [sys.executable, str(WORKER), "pop", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    go.touch()
    added, add_err = adder.communicate(timeout=240)
    out, pop_err = popper.communicate(timeout=240)
    assert adder.returncode == 0, add_err
    assert popper.returncode == 0, pop_err
    popped = [entry["n"] for entry in json.loads(out)]

    import asyncio

    from tests.adapters.session_worker import open_storage

    async def stored_items() -> list[int]:
        async with open_storage(spec) as storage:
            return [entry["n"] for entry in await storage.load_raw_messages("race")]

    stored = asyncio.run(stored_items())
    assert popped, "the popper never popped anything: no race took place"
    assert len(popped) == len(set(popped)), "an item was popped twice"
    assert not set(popped) & set(stored), "an item was both popped and kept"
    assert sorted(popped + stored) == list(range(int(added))), "an item was lost"
    assert stored == sorted(stored), "the kept history is out of order"
