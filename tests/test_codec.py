"""Values of subclasses of the JSON types: accepted when they come back equal, else refused
with the place in the value, on a real file tree."""

from __future__ import annotations

import enum
from collections import OrderedDict
from pathlib import Path

import pytest

from connectome_storage import create_file_storage
from connectome_storage.errors import SerializationError


class Score(float):
    """Like numpy.float64: a float subclass."""


class Count(int):
    pass


class Name(str):
    pass


class Colour(enum.IntEnum):
    RED = 1


async def test_a_float_subclass_is_refused_naming_where_it_is(tmp_path: Path) -> None:
    async with create_file_storage(tmp_path) as storage:
        with pytest.raises(SerializationError) as caught:
            await storage.store_system_state("s", {"scores": [1.0, Score(0.5)]})
        assert caught.value.location == "data['scores'][1]"
        assert "data['scores'][1]" in str(caught.value) and "float(x)" in str(caught.value)
        assert await storage.list_system_states() == []  # nothing written


async def test_int_and_str_subclasses_are_stored_as_their_base_type(tmp_path: Path) -> None:
    value = {"n": Count(3), "name": Name("ada"), "colour": Colour.RED, "nested": OrderedDict(b=Count(2))}
    async with create_file_storage(tmp_path) as storage:
        await storage.store_system_state("s", value)
        loaded = await storage.load_system_state("s")
    assert loaded == {"n": 3, "name": "ada", "colour": 1, "nested": {"b": 2}}
    assert type(loaded["n"]) is int and type(loaded["name"]) is str
    assert (tmp_path / "system/s.json").read_text() == (
        '{\n  "colour": 1,\n  "n": 3,\n  "name": "ada",\n  "nested": {\n    "b": 2\n  }\n}\n'
    )


async def test_an_int_subclass_outside_64_bits_is_refused_with_its_place(tmp_path: Path) -> None:
    async with create_file_storage(tmp_path) as storage:
        with pytest.raises(SerializationError) as caught:
            await storage.store_system_state("s", {"big": Count(2**70)})
    assert caught.value.location == "data['big']"
