"""How SQLite and Redis turn a checked value into stored bytes: JSON (default) or msgpack.

Each storage picks one ``Serializer`` at construction (option ``serializer``) and every
value it stores goes through it: documents, log items, memories, cache data, system
states, key-value values. Values are checked by ``codec.check_value`` before they reach
a serializer, so both only ever see plain JSON values, and both bring them back equal:

- JSON is orjson with sorted keys on one line: readable with the sqlite3 shell and
  redis-cli.
- msgpack packs ``str`` as str and never as bytes (``use_bin_type=True``, unpacked with
  ``raw=False``), floats as 64-bit doubles (so ``-0.0`` and every float come back exact),
  ints up to 64 bits signed and unsigned, arrays back as lists (``use_list=True``), and
  map keys must be str on the way back (``strict_map_key``).

The file tree is always JSON and takes no serializer.
"""

from __future__ import annotations

from typing import Any, ClassVar

import orjson

from .codec import decode as decode_json
from .errors import ConfigError, CorruptedDataError

__all__ = ["SERIALIZERS", "JsonSerializer", "MsgpackSerializer", "Serializer", "make_serializer"]

SERIALIZERS = ("json", "msgpack")
_INSTALL_HINT = "the msgpack serializer needs the msgpack package: pip install connectome-storage[msgpack]"


class Serializer:
    """Turns checked values into bytes and back. Subclasses: JsonSerializer, MsgpackSerializer."""

    name: ClassVar[str]
    # Whether dumps() gives UTF-8 text (SQLite stores it as TEXT, so that json_extract and
    # the sqlite3 shell read it); msgpack gives a BLOB.
    text: ClassVar[bool]

    def dumps(self, value: Any) -> bytes:
        """Compact bytes of a value that passed ``codec.check_value``."""
        raise NotImplementedError

    def loads(self, data: bytes | str) -> Any:
        """The value back; raises one of ``errors`` on bytes that do not decode."""
        raise NotImplementedError

    # What loads() raises on bytes it cannot decode (a hand edit, another serializer's bytes).
    errors: tuple[type[BaseException], ...] = (ValueError, TypeError)

    def decode(self, data: bytes | str, source: str) -> Any:
        """``loads``, turning a failure into CorruptedDataError naming ``source``."""
        try:
            return self.loads(data)
        except self.errors as e:
            raise CorruptedDataError(source, f"invalid {self.name} ({type(e).__name__}: {e})") from e

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class JsonSerializer(Serializer):
    name = "json"
    text = True
    errors = (orjson.JSONDecodeError, TypeError)

    def dumps(self, value: Any) -> bytes:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)

    def loads(self, data: bytes | str) -> Any:
        return orjson.loads(data)

    def decode(self, data: bytes | str, source: str) -> Any:
        if not isinstance(data, bytes | str):  # a hand-written integer or NULL where JSON text belongs
            raise CorruptedDataError(source, f"a {type(data).__name__} where JSON text belongs")
        return decode_json(data, source)  # with the line and column of a parse error


class MsgpackSerializer(Serializer):
    name = "msgpack"
    text = False

    def __init__(self) -> None:
        try:
            import msgpack  # type: ignore[import-untyped]
        except ImportError as e:
            raise ImportError(_INSTALL_HINT) from e
        self._packb = msgpack.packb
        self._unpackb = msgpack.unpackb

    # ValueError covers truncated input, ExtraData, FormatError, StackError, a map key that
    # is not str and invalid UTF-8 (UnicodeDecodeError); TypeError a value that is not bytes.
    errors = (ValueError, TypeError)

    def dumps(self, value: Any) -> bytes:
        packed: bytes = self._packb(value, use_bin_type=True)
        return packed

    def loads(self, data: bytes | str) -> Any:
        if not isinstance(data, bytes):
            # Text is never msgpack this library wrote (SQLite keeps it as a BLOB, Redis as bytes).
            raise TypeError(f"a {type(data).__name__} where msgpack bytes belong")
        return self._unpackb(data, raw=False, use_list=True, strict_map_key=True)


def make_serializer(name: str) -> Serializer:
    """The serializer called ``name`` (``json`` or ``msgpack``, as config.py checked it)."""
    if name == "json":
        return JsonSerializer()
    if name == "msgpack":
        return MsgpackSerializer()
    raise ConfigError(f"serializer={name!r} is not a serializer; use {' or '.join(SERIALIZERS)}")
