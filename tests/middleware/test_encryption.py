"""Encryption at rest on every backend: round trips, the stored form, no plaintext anywhere,
key ids, old keys, DecryptionError, the environment variable and rotate-key."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from connectome_storage import StorageInterface, create_storage_from_env
from connectome_storage.errors import ConfigError, DecryptionError
from connectome_storage.middleware import Compression, Encryption

from ..conftest import FakeClock

MakeStorage = Callable[..., StorageInterface]

OLD, NEW = bytes(range(32)), bytes(range(100, 132))
OLD_B64, NEW_B64 = base64.b64encode(OLD).decode(), base64.b64encode(NEW).decode()
SECRET = "SECRET-7f3a9c-do-not-leak"
ENCRYPTED = re.compile(r"^[0-9a-f]{8}:[A-Za-z0-9+/]+={0,2}$")


async def store_everything(storage: StorageInterface, secret: str = SECRET) -> None:
    """A secret in every kind of value, and in a key-value entry with tags."""
    await storage.store_conversation("c1", {"title": secret})
    await storage.store_raw_messages("c1", [{"role": "user", "content": secret}])
    await storage.append_raw_messages("c1", [{"role": "assistant", "content": secret + "!"}])
    await storage.store_memory("c1", "m1", {"text": secret})
    await storage.store_memory("c1", "m2", {"text": "second " + secret})
    await storage.store_chunks("c1", [{"chunk": secret}])
    await storage.store_reasoning_chain("agent", {"thought": secret})
    await storage.store_cache("k1", {"answer": secret}, ttl=3600)
    await storage.store_system_state("s1", secret)
    await storage.kv("profiles").set("alice", {"phone": secret}, tags={"team": "blue"}, ttl=3600)
    store = storage.conversation_store()
    await store.save("c2", [{"content": secret}], metadata={"team": "blue"})
    await store.append("c2", [{"content": secret + "?"}])
    bus = storage.message_store()
    if not await bus.query(to="coder"):  # once: a message id is never reused
        await bus.save({"id": "msg-1", "from": "planner", "to": "coder", "content": secret})


async def expect_everything(storage: StorageInterface, secret: str = SECRET) -> None:
    assert await storage.load_conversation("c1") == {"title": secret}
    assert await storage.load_raw_messages("c1") == [
        {"role": "user", "content": secret}, {"role": "assistant", "content": secret + "!"}
    ]  # fmt: skip
    assert await storage.load_memories("c1") == [
        {"text": secret, "memory_id": "m1"}, {"text": "second " + secret, "memory_id": "m2"}
    ]  # fmt: skip
    assert await storage.load_chunks("c1") == [{"chunk": secret}]
    assert await storage.load_reasoning_chains("agent") == [{"thought": secret}]
    assert await storage.load_cache("k1") == {"answer": secret}
    assert await storage.load_system_state("s1") == secret
    entry = await storage.kv("profiles").get_entry("alice")
    assert entry is not None and entry.value == {"phone": secret} and entry.tags == {"team": "blue"}
    conversation = await storage.conversation_store().load("c2")
    assert conversation is not None and conversation.messages == [{"content": secret}, {"content": secret + "?"}]
    assert await storage.load_raw_messages("c2") == conversation.messages  # either API reads the other's
    message = await storage.message_store().get("msg-1")
    assert message is not None and message["content"] == secret and message["from"] == "planner"
    assert [m["content"] for m in await storage.message_store().query(to="coder")] == [secret]


def is_encrypted(value: Any, key: bytes = OLD) -> bool:
    if not (isinstance(value, dict) and set(value) == {"$encrypted"}):
        return False
    key_id, _, _payload = value["$encrypted"].partition(":")
    return bool(ENCRYPTED.match(value["$encrypted"])) and key_id == Encryption(key).key_id


async def test_every_kind_round_trips_and_is_stored_encrypted(make_storage: MakeStorage) -> None:
    async with make_storage(middleware=[Encryption(OLD)]) as storage:
        await store_everything(storage)
        await expect_everything(storage)
        assert await storage.pop_raw_message("c1") == {"role": "assistant", "content": SECRET + "!"}
        await storage.append_raw_messages("c1", [{"role": "assistant", "content": SECRET + "!"}])
    async with make_storage() as plain:
        # Every value sealed; ids, memory ids, tags, times and listings plain.
        assert is_encrypted(await plain.load_conversation("c1"))
        assert all(is_encrypted(m) for m in await plain.load_raw_messages("c1"))
        memories = await plain.load_memories("c1")
        assert [m["memory_id"] for m in memories] == ["m1", "m2"]
        assert all(is_encrypted({k: v for k, v in m.items() if k != "memory_id"}) for m in memories)
        assert all(is_encrypted(c) for c in await plain.load_chunks("c1"))
        assert all(is_encrypted(c) for c in await plain.load_reasoning_chains("agent"))
        assert is_encrypted(await plain.load_cache("k1"))
        assert is_encrypted(await plain.load_system_state("s1"))
        kv = plain.kv("profiles")
        assert is_encrypted(await kv.get("alice"))
        # A message's routing fields stay plain, so queries and read state work without the key.
        [stored] = await plain.message_store().query(to="coder")
        assert (stored["id"], stored["from"], stored["to"]) == ("msg-1", "planner", "coder")
        assert is_encrypted({k: v for k, v in stored.items() if k not in ("id", "from", "to", "timestamp")})
        assert await plain.message_store().get_unread_ids("coder") == {"msg-1"}
        assert await kv.find_by_tag("team", "blue") == ["alice"]
        assert [e.key for e in await kv.query(tags={"team": "blue"}, order_by="updated_at")] == ["alice"]
        assert 3599 < await kv.ttl("alice") <= 3600
        assert all(is_encrypted(m) for m in await plain.load_raw_messages("c2"))
        # The metadata dict stays plain, like tags, so queries can read it.
        [row] = await plain.conversation_store().query().where("metadata.team", "==", "blue").all()
        assert (row.conversation_id, row.message_count) == ("c2", 2)
        assert await plain.list_conversations() == ["c1", "c2"] and await plain.list_cache_keys() == ["k1"]
        stats = await plain.get_storage_stats()
        assert (stats["raw_message_count"], stats["memory_count"], stats["kv_entry_count"]) == (4, 2, 1)
        assert await plain.verify() == []


@pytest.mark.parametrize("backend", ["file", "sqlite", "redis"])  # memory stores nothing outside the process
async def test_no_plaintext_of_a_secret_anywhere(make_storage: MakeStorage, backend: str, tmp_path: Path) -> None:
    async with make_storage(middleware=[Encryption(OLD)]) as storage:
        await store_everything(storage)
        # Replacements keep backups on the file tree; appends go through its journal.
        await store_everything(storage)
        await storage.append_raw_messages("c1", [{"content": SECRET}])
        await storage.store_memory("c1", "m1", {"text": SECRET + " again"})
        await expect_everything_but_history(storage)
        if backend == "sqlite":
            assert_absent_in_files(tmp_path, {"connectome.db", "connectome.db-wal", "connectome.db-shm"})
    if backend == "redis":
        await assert_absent_in_redis(storage)
    else:
        names = {"connectome.db", "connectome.db-wal", "connectome.db-shm"} if backend == "sqlite" else None
        assert_absent_in_files(tmp_path, names)


async def expect_everything_but_history(storage: StorageInterface) -> None:
    assert (await storage.load_raw_messages("c1"))[-1] == {"content": SECRET}
    assert (await storage.load_memories("c1"))[0]["text"] == SECRET + " again"


def assert_absent_in_files(root: Path, names: set[str] | None) -> None:
    checked = 0
    for path in root.rglob("*"):
        if path.is_file() and (names is None or path.name in names):
            assert SECRET.encode() not in path.read_bytes(), path
            checked += 1
    assert checked >= (1 if names else 10)
    if names is None:  # the file tree: backups and journals were among what was read
        hidden = [p for p in root.rglob("*") if p.is_file() and any(part.startswith(".") for part in p.parts)]
        assert any("backup" in str(p) for p in hidden), hidden


async def assert_absent_in_redis(storage: StorageInterface) -> None:
    import redis.asyncio as aioredis

    settings: Any = storage.settings
    client = aioredis.Redis.from_url(settings.redis_url)
    try:
        keys = [key async for key in client.scan_iter(match=settings.key_prefix + "*")]
        assert len(keys) >= 8
        for key in keys:
            dumped = await client.dump(key)
            assert dumped is not None and SECRET.encode() not in dumped, key
            kind = (await client.type(key)).decode()
            if kind == "string":
                contents: list[Any] = [await client.get(key)]
            elif kind == "hash":
                contents = list((await client.hgetall(key)).items())
            elif kind == "list":
                contents = await client.lrange(key, 0, -1)
            elif kind == "set":
                contents = list(await client.smembers(key))
            else:
                contents = await client.zrange(key, 0, -1)
            assert SECRET.encode() not in repr(contents).encode(), key
    finally:
        await client.aclose()


@pytest.mark.parametrize("backend", ["file"])
async def test_the_file_tree_keeps_its_layout(make_storage: MakeStorage, tmp_path: Path) -> None:
    async with make_storage(middleware=[Encryption(OLD)]) as storage:
        await store_everything(storage)
    root = tmp_path / "storage_data"
    data = [p for top in ("conversations", "agents", "cache", "system", "kv") for p in (root / top).rglob("*.json")]
    assert len(data) == 10  # c2's history and metadata.json among them
    for path in data:
        json.loads(path.read_text("utf-8"))  # every file is JSON
    conv = root / "conversations" / "c1"
    assert is_encrypted(json.loads((conv / "current.json").read_text()))
    messages = json.loads((conv / "raw_messages.json").read_text())
    assert isinstance(messages, list) and len(messages) == 2 and all(is_encrypted(m) for m in messages)
    memories = json.loads((conv / "memories.json").read_text())
    assert [m["memory_id"] for m in memories] == ["m1", "m2"]
    cache = json.loads((root / "cache" / "k1.json").read_text())
    assert cache["cache_key"] == "k1" and is_encrypted(cache["data"])
    assert cache["created_at"] == "2026-11-21T09:30:00.000Z" and cache["expires_at"] == "2026-11-21T10:30:00.000Z"
    assert is_encrypted(json.loads((root / "system" / "s1.json").read_text()))
    entry = json.loads((root / "kv" / "profiles" / "alice.json").read_text())
    assert entry["key"] == "alice" and entry["tags"] == {"team": "blue"} and is_encrypted(entry["value"])
    assert entry["created_at"] == entry["updated_at"] == "2026-11-21T09:30:00.000Z"
    metadata = json.loads((root / "conversations" / "c2" / "metadata.json").read_text())
    assert metadata["metadata"] == {"team": "blue"} and metadata["message_count"] == 2  # plain, like tags
    assert all(is_encrypted(m) for m in json.loads((root / "conversations" / "c2" / "raw_messages.json").read_text()))


async def test_a_wrong_key_raises_decryption_error_and_old_keys_read(make_storage: MakeStorage) -> None:
    async with make_storage(middleware=[Encryption(OLD)]) as storage:
        await store_everything(storage)
    old_id, new_id = Encryption(OLD).key_id, Encryption(NEW).key_id
    async with make_storage(middleware=[Encryption(NEW)]) as storage:
        for load, names in [
            (lambda: storage.load_conversation("c1"), "conversation 'c1'"),
            (lambda: storage.load_memories("c1"), "memories of conversation 'c1'"),
            (lambda: storage.load_cache("k1"), "cache entry 'k1'"),
            (lambda: storage.kv("profiles").get("alice"), "entry 'alice' of namespace 'profiles'"),
        ]:
            with pytest.raises(DecryptionError) as caught:
                await load()
            message = str(caught.value)
            assert names in message and old_id in message and new_id in message
            assert OLD_B64 not in message and NEW_B64 not in message and OLD.hex() not in message
        # Listings and stats need no key.
        assert await storage.list_conversations() == ["c1", "c2"]
        assert (await storage.get_storage_stats())["memory_count"] == 2
    async with make_storage(middleware=[Encryption(NEW_B64, old_keys=[OLD_B64])]) as storage:
        await expect_everything(storage)
        await storage.store_system_state("s1", "rewritten")  # written under the current key
    async with make_storage() as plain:
        assert (await plain.load_system_state("s1"))["$encrypted"].startswith(new_id + ":")
        assert (await plain.load_conversation("c1"))["$encrypted"].startswith(old_id + ":")


async def test_a_value_copied_to_another_entity_does_not_decrypt(make_storage: MakeStorage) -> None:
    async with make_storage(middleware=[Encryption(OLD)]) as storage:
        await storage.store_conversation("c1", {"title": SECRET})
        await storage.kv("ns").set("a", SECRET)
    async with make_storage() as plain:
        await plain.store_conversation("c2", await plain.load_conversation("c1"))
        await plain.store_system_state("c1", await plain.load_conversation("c1"))  # same id, another kind
        await plain.kv("other").set("a", await plain.kv("ns").get("a"))  # same key, another namespace
    async with make_storage(middleware=[Encryption(OLD)]) as storage:
        assert await storage.load_conversation("c1") == {"title": SECRET}
        for load in (
            lambda: storage.load_conversation("c2"),
            lambda: storage.load_system_state("c1"),
            lambda: storage.kv("other").get("a"),
        ):
            with pytest.raises(DecryptionError, match="does not authenticate"):
                await load()


async def test_plain_values_stay_readable_when_encryption_is_turned_on(make_storage: MakeStorage) -> None:
    async with make_storage() as plain:
        await store_everything(plain)
    async with make_storage(middleware=[Encryption(OLD)]) as storage:
        await expect_everything(storage)
        await storage.store_conversation("c1", {"title": "new"})
    async with make_storage() as plain:
        assert is_encrypted(await plain.load_conversation("c1"))
        assert await plain.load_system_state("s1") == SECRET  # not rewritten yet: rotate-key does that


async def test_the_key_is_never_shown(make_storage: MakeStorage) -> None:
    encryption = Encryption(OLD_B64, old_keys=[NEW])
    storage = make_storage(middleware=[encryption])
    async with storage:
        await store_everything(storage)
        shown = " ".join(
            [
                repr(encryption), str(vars(encryption)), repr(storage.settings), str(await storage.get_storage_stats()),
                str(await storage.health_check()), str(await storage.verify()),
            ]
        )  # fmt: skip
    for secret in (OLD_B64, NEW_B64, OLD.hex(), NEW.hex(), repr(OLD), repr(NEW)):
        assert secret not in shown
    assert encryption.key_id in repr(encryption)


@pytest.mark.parametrize("bad", [b"short", "c2hvcnQ=", "not base64!", base64.b64encode(bytes(33)).decode(), 42])
def test_a_bad_key_is_refused_without_showing_it(bad: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        Encryption(bad)
    assert "32" in str(caught.value)
    assert str(bad) not in str(caught.value) or isinstance(bad, int)
    with pytest.raises(ConfigError, match=r"old_keys\[0\]"):
        Encryption(OLD, old_keys=[bad])


async def test_the_environment_variable_turns_encryption_on(tmp_path: Path) -> None:
    environ = {"CONNECTOME_STORAGE_BASE_DIR": str(tmp_path / "data"), "CONNECTOME_STORAGE_ENCRYPTION_KEY": OLD_B64}
    async with create_storage_from_env(environ) as storage:
        await storage.store_conversation("c1", {"title": SECRET})
        assert await storage.load_conversation("c1") == {"title": SECRET}
    stored = json.loads((tmp_path / "data" / "conversations" / "c1" / "current.json").read_text())
    assert is_encrypted(stored)
    with pytest.raises(ConfigError) as caught:
        create_storage_from_env({**environ, "CONNECTOME_STORAGE_ENCRYPTION_KEY": OLD_B64[:-4]})
    assert "CONNECTOME_STORAGE_ENCRYPTION_KEY" in str(caught.value) and OLD_B64[:-4] not in str(caught.value)


async def test_compression_then_encryption(make_storage: MakeStorage) -> None:
    big = {"text": SECRET * 400}
    async with make_storage(middleware=[Compression(threshold=1024), Encryption(OLD)]) as storage:
        await storage.store_conversation("c1", big)
        assert await storage.load_conversation("c1") == big
    async with make_storage(middleware=[Encryption(OLD)]) as storage:
        compressed = await storage.load_conversation("c1")  # decrypted, still compressed
        assert set(compressed) == {"$compressed"} and len(compressed["$compressed"]) < 1000


# ------------------------------------------------------------------ rotate-key


def cli_env(backend: str, tmp_path: Path, request: pytest.FixtureRequest, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONNECTOME_STORAGE_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    env["CONNECTOME_STORAGE_TYPE"] = backend
    if backend == "file":
        env["CONNECTOME_STORAGE_BASE_DIR"] = str(tmp_path / "storage_data")
    elif backend == "sqlite":
        env["CONNECTOME_STORAGE_DB_PATH"] = str(tmp_path / "connectome.db")
    else:
        env["CONNECTOME_STORAGE_REDIS_URL"] = request.getfixturevalue("redis_server").url
        env["CONNECTOME_STORAGE_KEY_PREFIX"] = f"test:{tmp_path.name}:"
    return {**env, **extra}


def rotate(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "connectome_storage", "rotate-key", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


async def all_under(storage: StorageInterface, key: bytes) -> bool:
    """Whether every stored value is encrypted under ``key`` (read without middleware)."""
    values: list[Any] = []
    for cid in await storage.list_conversations():
        document = await storage.load_conversation(cid)
        values += [document] if document is not None else []
        values += await storage.load_raw_messages(cid) + await storage.load_chunks(cid)
        values += [{k: v for k, v in m.items() if k != "memory_id"} for m in await storage.load_memories(cid)]
    for agent in await storage.list_agents():
        values += await storage.load_reasoning_chains(agent)
    values += [await storage.load_cache(k) for k in await storage.list_cache_keys()]
    values += [await storage.load_system_state(k) for k in await storage.list_system_states()]
    for namespace in await storage.list_namespaces():
        values += [value async for _key, value in storage.kv(namespace).scan()]
    return bool(values) and all(is_encrypted(value, key) for value in values)


@pytest.mark.parametrize("backend", ["file", "sqlite", "redis"])
async def test_rotate_key_re_encrypts_everything(
    make_storage: MakeStorage, backend: str, tmp_path: Path, request: pytest.FixtureRequest, clock: FakeClock
) -> None:
    # The CLI runs on real time: the data is written at real time too, with one cache entry
    # that expired a while ago.
    clock.now = time.time()
    async with make_storage(middleware=[Encryption(OLD)]) as storage:
        await store_everything(storage)
        clock.advance(-100)
        await storage.store_cache("gone", "x", ttl=10)
        clock.advance(100)
    async with make_storage() as plain:
        await plain.store_system_state("plain", {"written": "before encryption"})
        before = await plain.kv("profiles").get_entry("alice")
        cache_before = await plain._read_cache("k1")

    env = cli_env(backend, tmp_path, request, CONNECTOME_STORAGE_ENCRYPTION_KEY=NEW_B64, OLD_KEY=OLD_B64)
    missing = rotate(env)  # without the old key: stops at the first value under it
    assert missing.returncode == 1 and "DecryptionError" in missing.stderr and Encryption(OLD).key_id in missing.stderr
    done = rotate(env, "--old-key-env", "OLD_KEY", "--json")
    assert done.returncode == 0, done.stderr
    counts = json.loads(done.stdout)
    assert counts["key_id"] == Encryption(NEW).key_id
    assert counts["values"] >= 10  # the expired entry went in the first run, before it stopped
    assert OLD_B64 not in done.stdout + done.stderr and NEW_B64 not in done.stdout + done.stderr

    async with make_storage() as plain:
        assert await all_under(plain, NEW)
        after = await plain.kv("profiles").get_entry("alice")
        assert after is not None and before is not None
        assert (after.tags, after.created_at, after.updated_at, after.expires_at) == (
            before.tags, before.created_at, before.updated_at, before.expires_at
        )  # fmt: skip
        cache_after = await plain._read_cache("k1")
        assert cache_after is not None and cache_before is not None
        assert (cache_after.created_ms, cache_after.expires_ms) == (cache_before.created_ms, cache_before.expires_ms)
        assert [m["memory_id"] for m in await plain.load_memories("c1")] == ["m1", "m2"]
        assert "gone" not in await plain._list_all_cache_keys()  # removed, not re-encrypted
    async with make_storage(middleware=[Encryption(NEW)]) as storage:
        await expect_everything(storage)
        assert await storage.load_system_state("plain") == {"written": "before encryption"}

    again = rotate(env, "--json")  # nothing left under the old key: no old key needed
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["values"] == 0
    no_key = rotate({k: v for k, v in env.items() if k != "CONNECTOME_STORAGE_ENCRYPTION_KEY"})
    assert no_key.returncode == 2 and "CONNECTOME_STORAGE_ENCRYPTION_KEY" in no_key.stderr
    unset = rotate(env, "--old-key-env", "NO_SUCH_VARIABLE")
    assert unset.returncode == 2 and "NO_SUCH_VARIABLE" in unset.stderr


@pytest.mark.parametrize("backend", ["file", "sqlite"])
async def test_rotate_key_killed_midway_then_rerun_finishes(
    make_storage: MakeStorage, backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    count = 400
    async with make_storage(middleware=[Encryption(OLD)]) as storage:
        for i in range(count):
            await storage.store_conversation(f"c{i:03d}", {"n": i, "secret": SECRET})
            await storage.store_raw_messages(f"c{i:03d}", [{"n": i}, {"n": i + 1}])
            await storage.store_memory(f"c{i:03d}", "m", {"n": i})
    env = cli_env(backend, tmp_path, request, CONNECTOME_STORAGE_ENCRYPTION_KEY=NEW_B64, OLD_KEY=OLD_B64)
    command = [sys.executable, "-m", "connectome_storage", "rotate-key", "--old-key-env", "OLD_KEY"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    # On a pipe, progress comes as a line at 0, 25, 50, 75 and 100 %: kill it after a quarter.
    for line in process.stderr:
        if line.startswith("rotating: 25%"):
            break
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL

    async with make_storage() as plain:
        assert not await all_under(plain, NEW)  # interrupted: some values are still under the old key
    rerun = rotate(env, "--old-key-env", "OLD_KEY", "--json")
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads(rerun.stdout)["current"] > 0  # what the killed run did was kept
    async with make_storage() as plain:
        assert await all_under(plain, NEW)
        assert await plain.verify() == []
    async with make_storage(middleware=[Encryption(NEW)]) as storage:
        for i in range(count):
            assert await storage.load_conversation(f"c{i:03d}") == {"n": i, "secret": SECRET}
            assert await storage.load_raw_messages(f"c{i:03d}") == [{"n": i}, {"n": i + 1}]
            assert await storage.load_memories(f"c{i:03d}") == [{"n": i, "memory_id": "m"}]
