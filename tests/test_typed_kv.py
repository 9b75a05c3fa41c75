"""Typed collections with schema versions (docs/kv.md, "Typed collections"), on every backend:
``storage.kv(name, model=..., version=N, upgrade={...})`` with pydantic models and dataclasses."""

from __future__ import annotations

import dataclasses
import enum
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pydantic
import pytest

from connectome_storage import StorageInterface
from connectome_storage.errors import InvalidArgumentError, SerializationError, UnsupportedFormatError
from connectome_storage.kv import KeyValueStore
from connectome_storage.typed import TypedKeyValueStore

from .conftest import FakeClock

ROOT = Path(__file__).resolve().parents[1]


class UserModel(pydantic.BaseModel):
    name: str
    age: int
    email: str | None = None


@dataclasses.dataclass
class UserClass:
    name: str
    age: int
    email: str | None = None


MODELS = {"pydantic": UserModel, "dataclass": UserClass}


@pytest.fixture(params=sorted(MODELS))
def model(request: pytest.FixtureRequest) -> Any:
    return MODELS[request.param]


def to_v2(value: dict[str, Any]) -> dict[str, Any]:
    """Version 1 stored ``full_name``; version 2 calls it ``name`` and adds ``age``."""
    return {"name": value["full_name"], "age": value.get("years", 0)}


# ------------------------------------------------------------------- basics


async def test_values_come_back_as_model_instances(storage: StorageInterface, model: Any) -> None:
    users = storage.kv("users", model=model)
    assert isinstance(users, TypedKeyValueStore) and isinstance(storage.kv("users"), KeyValueStore)
    alice, bob = model(name="Alice", age=30), model(name="Bob", age=41, email="b@x")
    assert await users.set("u1", alice, tags={"team": "a"})
    await users.set_many({"u2": bob, "u3": {"name": "Carol", "age": 5}})  # a dict that validates is taken
    got = await users.get("u1")
    assert type(got) is model and got == alice
    assert await users.get("missing") is None
    assert await users.get_many(["u3", "u1", "nope"]) == {"u3": model(name="Carol", age=5), "u1": alice}
    assert [(k, v) async for k, v in users.scan()] == [("u1", alice), ("u2", bob), ("u3", model(name="Carol", age=5))]
    [entry] = await users.query(tags={"team": "a"})
    assert entry.key == "u1" and entry.value == alice and entry.tags == {"team": "a"}
    full = await users.get_entry("u2")
    assert full is not None and full.value == bob
    assert await users.keys() == ["u1", "u2", "u3"] and await users.count() == 3
    assert await users.find_by_tag("team", "a") == ["u1"]
    # Stored as plain JSON: a plain collection over the same namespace reads the dict.
    assert await storage.kv("users").get("u2") == {"name": "Bob", "age": 41, "email": "b@x"}


async def test_a_value_that_fails_validation_names_the_field_and_writes_nothing(
    storage: StorageInterface, model: Any
) -> None:
    users = storage.kv("users", model=model)
    with pytest.raises(SerializationError, match=r"users\['u1'\]\.age: ") as caught:
        await users.set("u1", {"name": "Alice", "age": "thirty"})
    assert caught.value.location == "users['u1'].age"
    with pytest.raises(SerializationError, match=r"users\['u2'\]\.name: "):
        await users.set("u2", {"age": 3})  # missing name
    with pytest.raises(SerializationError, match=r"users\['u3'\] is a list, not a User"):
        await users.set("u3", [1, 2])
    with pytest.raises(SerializationError, match=r"users\['bad'\]\.age"):
        await users.set_many({"ok": {"name": "A", "age": 1}, "bad": {"name": "B", "age": None}})
    assert await users.count() == 0 and await storage.kv("users").keys() == []
    # What was stored by hand that does not fit the model is named on the way out too.
    await storage.kv("users").set("hand", {"name": "H", "age": "old"})
    with pytest.raises(SerializationError, match=r"users\['hand'\]\.age"):
        await users.get("hand")


# ----------------------------------------------------------------- versions


async def test_plain_entries_are_version_1_and_upgrade_on_read(storage: StorageInterface, model: Any) -> None:
    plain = storage.kv("people")
    await plain.set("p1", {"full_name": "Ann", "years": 7}, tags={"k": "v"})
    people = storage.kv("people", model=model, version=2, upgrade={1: to_v2})
    assert await people.schema_version("p1") == 1
    assert await people.get("p1") == model(name="Ann", age=7)
    assert await plain.get("p1") == {"full_name": "Ann", "years": 7}  # a read changes nothing
    await people.set("p2", model(name="Ben", age=2))
    # Version 2 and later live in an envelope around the value; tags stay the user's own.
    assert await plain.get("p2") == {"$schema": 2, "value": {"name": "Ben", "age": 2, "email": None}}
    assert await people.schema_version("p2") == 2
    entry = await plain.get_entry("p2")
    assert entry is not None and entry.tags == {}


async def test_upgrades_run_in_order_from_any_older_version(storage: StorageInterface) -> None:
    @dataclasses.dataclass
    class V3:
        name: str
        age: int
        level: str

    calls: list[int] = []

    def step(n: int, change: Any) -> Any:
        def run(value: dict[str, Any]) -> dict[str, Any]:
            calls.append(n)
            return change(value)  # type: ignore[no-any-return]

        return run

    upgrade = {1: step(1, to_v2), 2: step(2, lambda v: {**v, "level": "basic"})}
    await storage.kv("u").set("old", {"full_name": "Old", "years": 1})
    await storage.kv("u").set("mid", {"$schema": 2, "value": {"name": "Mid", "age": 2}})
    users = storage.kv("u", model=V3, version=3, upgrade=upgrade)
    assert await users.get("old") == V3("Old", 1, "basic") and calls == [1, 2]
    calls.clear()
    assert await users.get("mid") == V3("Mid", 2, "basic") and calls == [2]


async def test_upgrade_all_rewrites_older_entries_keeping_tags_expiry_and_times(
    storage: StorageInterface, model: Any, clock: FakeClock
) -> None:
    plain = storage.kv("people")
    await plain.set("a", {"full_name": "A", "years": 1}, tags={"t": "x"}, ttl=3600)
    await plain.set("b", {"full_name": "B"})
    before = {key: await plain.get_entry(key) for key in ("a", "b")}
    clock.advance(10)
    people = storage.kv("people", model=model, version=2, upgrade={1: to_v2})
    await people.set("c", {"name": "C", "age": 3})
    assert await people.upgrade_all() == 2
    assert await people.upgrade_all() == 0  # nothing left at an older version
    for key in ("a", "b", "c"):
        assert await people.schema_version(key) == 2
    assert await plain.get("a") == {"$schema": 2, "value": {"name": "A", "age": 1, "email": None}}
    after = await plain.get_entry("a")
    assert after is not None and before["a"] is not None
    assert (after.tags, after.created_at, after.updated_at, after.expires_at) == (
        before["a"].tags, before["a"].created_at, before["a"].updated_at, before["a"].expires_at,
    )  # fmt: skip
    assert await people.get_many(["a", "b"]) == {"a": model(name="A", age=1), "b": model(name="B", age=0)}


async def test_upgrade_all_is_resumable_after_a_failure(storage: StorageInterface) -> None:
    plain = storage.kv("r")
    await plain.set_many({f"k{i}": {"full_name": f"N{i}", "years": i} for i in range(5)})
    seen: list[str] = []
    fail_on = {"N3"}

    def flaky(value: dict[str, Any]) -> dict[str, Any]:
        seen.append(value["full_name"])
        if value["full_name"] in fail_on:
            raise RuntimeError("interrupted")
        return to_v2(value)

    users = storage.kv("r", model=UserClass, version=2, upgrade={1: flaky})
    with pytest.raises(SerializationError, match=r"r\['k3'\]: upgrade\[1\] failed on it \(RuntimeError: interrupted"):
        await users.upgrade_all()
    assert [await users.schema_version(f"k{i}") for i in range(5)] == [2, 2, 2, 1, 1]
    fail_on.clear()
    seen.clear()
    assert await users.upgrade_all() == 2
    assert seen == ["N3", "N4"]  # the upgraded ones were skipped


async def test_a_newer_entry_or_a_missing_step_is_refused(storage: StorageInterface) -> None:
    await storage.kv("v").set("new", {"$schema": 3, "value": {"name": "N", "age": 1}})
    await storage.kv("v").set("old", {"full_name": "O"})
    users = storage.kv("v", model=UserClass, version=2)
    with pytest.raises(UnsupportedFormatError, match=r"v\['new'\] was written under schema version 3"):
        await users.get("new")
    with pytest.raises(SerializationError, match=r"v\['old'\] is at schema version 1 and no upgrade\[1\]"):
        await users.get("old")


async def test_bad_arguments_are_refused(storage: StorageInterface) -> None:
    class Plain:
        pass

    with pytest.raises(InvalidArgumentError, match="pydantic BaseModel subclass or a dataclass"):
        storage.kv("x", model=Plain)
    with pytest.raises(InvalidArgumentError, match="version must be an int >= 1"):
        storage.kv("x", model=UserClass, version=0)
    with pytest.raises(InvalidArgumentError, match=r"upgrade keys .* from 1 to 1"):
        storage.kv("x", model=UserClass, version=2, upgrade={2: to_v2})
    with pytest.raises(InvalidArgumentError, match="pass model= too"):
        storage.kv("x", version=2)  # type: ignore[call-overload]

    @dataclasses.dataclass
    class Odd:
        when: datetime

    with pytest.raises(InvalidArgumentError, match=r"Odd\.when is annotated .*datetime"):
        storage.kv("x", model=Odd)


# ---------------------------------------------------------- richer models


class Level(enum.Enum):
    LOW = "low"
    HIGH = "high"


@dataclasses.dataclass(frozen=True)
class Address:
    city: str
    zip_code: str | None = None


@dataclasses.dataclass
class Profile:
    name: str
    score: float
    level: Level
    kind: Literal["a", "b"]
    home: Address
    tags: list[str] = dataclasses.field(default_factory=list)
    extra: dict[str, int] = dataclasses.field(default_factory=dict)
    point: tuple[int, int] = (0, 0)
    anything: Any = None


async def test_dataclass_fields_of_every_supported_kind_round_trip(storage: StorageInterface) -> None:
    profiles = storage.kv("profiles", model=Profile)
    value = Profile("P", 2, Level.HIGH, "b", Address("Paris"), ["x"], {"n": 1}, (3, 4), {"free": [1, None]})
    await profiles.set("p", value)
    back = await profiles.get("p")
    assert back == value and isinstance(back, Profile) and type(back.score) is float and type(back.point) is tuple
    assert await storage.kv("profiles").get("p") == {
        "name": "P", "score": 2.0, "level": "high", "kind": "b", "home": {"city": "Paris", "zip_code": None},
        "tags": ["x"], "extra": {"n": 1}, "point": [3, 4], "anything": {"free": [1, None]},
    }  # fmt: skip
    bad = dataclasses.replace(value, home=Address(city=5))  # type: ignore[arg-type]
    with pytest.raises(SerializationError, match=r"profiles\['p'\]\.home\.city: expected a str, got 5"):
        await profiles.set("p", bad)
    with pytest.raises(SerializationError, match=r"profiles\['p'\]\.tags\[1\]: expected a str"):
        await profiles.set("p", dataclasses.replace(value, tags=["a", 2]))  # type: ignore[list-item]
    with pytest.raises(SerializationError, match=r"profiles\['p'\]\.score: expected a finite float"):
        await profiles.set("p", dataclasses.replace(value, score=float("inf")))
    with pytest.raises(SerializationError, match=r"profiles\['q'\]\.kind: expected one of"):
        await profiles.set("q", {**await storage.kv("profiles").get("p"), "kind": "c"})
    with pytest.raises(SerializationError, match=r"profiles\['q'\]\.colour: Profile has no field 'colour'"):
        await profiles.set("q", {**await storage.kv("profiles").get("p"), "colour": "red"})
    assert await profiles.get("p") == value and not await profiles.exists("q")


class Event(pydantic.BaseModel):
    at: datetime
    score: float
    items: list[int] = []


class Loose(pydantic.BaseModel):
    data: Any


async def test_pydantic_values_keep_their_types_and_refuse_what_json_would_change(storage: StorageInterface) -> None:
    events = storage.kv("events", model=Event)
    value = Event(at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), score=-0.0, items=[1, 2])
    await events.set("e", value)
    back = await events.get("e")
    assert back == value and str(back.score) == "-0.0" if back else False
    with pytest.raises(SerializationError, match=r"events\['e'\]\.score is inf"):
        await events.set("e", Event(at=value.at, score=float("inf")))
    with pytest.raises(SerializationError, match=r"loose\['t'\]\.data would not come back equal"):
        await storage.kv("loose", model=Loose).set("t", Loose(data=(1, 2)))  # a tuple comes back a list
    with pytest.raises(SerializationError, match=r"events\['e'\]\.items\[1\]: "):
        await events.set("e", {"at": value.at, "score": 1, "items": [1, "x"]})
    assert await events.get("e") == value


async def test_the_file_tree_entry_stays_readable_json(tmp_path: Path, clock: FakeClock) -> None:
    from connectome_storage import create_file_storage

    async with create_file_storage(tmp_path / "data", clock=clock) as storage:
        await storage.kv("users", model=UserModel, version=2, upgrade={1: to_v2}).set("u1", UserModel(name="A", age=1))
    stored = json.loads((tmp_path / "data" / "kv" / "users" / "u1.json").read_text())
    assert stored["value"] == {"$schema": 2, "value": {"age": 1, "email": None, "name": "A"}}
    assert stored["tags"] == {} and stored["key"] == "u1"


def test_pydantic_is_not_imported_for_dataclass_models(tmp_path: Path) -> None:
    script = f"""
import asyncio, dataclasses, sys
from connectome_storage import create_file_storage

@dataclasses.dataclass
class Note:
    text: str

async def main():
    async with create_file_storage({str(tmp_path / "d")!r}) as storage:
        notes = storage.kv("notes", model=Note)
        await notes.set("n", Note("hi"))
        assert await notes.get("n") == Note("hi")
    print("pydantic" in sys.modules)

asyncio.run(main())
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, check=True)
    assert result.stdout.strip() == "False"


# ------------------------------------------------------------------ middleware


async def test_a_typed_collection_goes_through_the_storages_middleware(make_storage: Any) -> None:
    from connectome_storage.middleware import Middleware, MiddlewareContext

    seen: list[tuple[str, Any]] = []

    class Recorder(Middleware):
        async def before_write(self, ctx: MiddlewareContext, value: Any) -> Any:
            seen.append((ctx.operation, value))
            return value

    async with make_storage(middleware=[Recorder()]) as storage:
        users = storage.kv("users", model=UserClass, version=2)
        await users.set("u1", UserClass(name="Ada", age=36))
        assert await users.get("u1") == UserClass(name="Ada", age=36)
    assert seen == [("kv.set", {"$schema": 2, "value": {"name": "Ada", "age": 36, "email": None}})]


async def test_upgrade_all_under_encryption_reads_and_writes_through_it(make_storage: Any) -> None:
    from connectome_storage.middleware import Encryption

    key = bytes(range(32))
    async with make_storage(middleware=[Encryption(key)]) as storage:
        await storage.kv("users").set("u1", {"full_name": "Ada Secretname", "years": 36})
        users = storage.kv("users", model=UserClass, version=2, upgrade={1: to_v2})
        assert await users.upgrade_all() == 1
        assert await users.schema_version("u1") == 2
        assert await users.get("u1") == UserClass(name="Ada Secretname", age=36)
        assert await users.upgrade_all() == 0
    async with make_storage() as bare:  # without the key: what is stored is ciphertext
        stored = await bare.kv("users").get("u1")
        assert isinstance(stored, dict) and set(stored) == {"$encrypted"} and "Secretname" not in str(stored)
