"""Canonical JSON: the strict value check, the byte encoding, and time stamps.

Every backend stores values through this module, so ``load(store(x)) == x`` holds
everywhere and a value that could not come back equal is refused before anything is
written.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any

import orjson

from .errors import CorruptedDataError, SerializationError

__all__ = [
    "MAX_DEPTH",
    "check_value",
    "compact_text",
    "decode",
    "encode",
    "format_time",
    "is_utf8",
    "parse_time",
]

# orjson writes at most 254 containers nested in one another. Backends wrap a value in one
# more (a file holds an array of messages, a cache entry an envelope around its data), so a
# value may nest 253: then every backend and every method takes it, and an append to a
# file log accepts the same values in place as when it rewrites the whole file.
MAX_DEPTH = 253
_INT_MIN = -(2**63)
_INT_MAX = 2**64 - 1  # orjson writes unsigned 64-bit ints too

_PRETTY = orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE
_COMPACT = orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE


def check_value(value: Any, where: str = "value") -> None:
    """Raise SerializationError unless ``value`` is plain JSON that round-trips exactly.

    Accepted: dict with str keys, list, str, int (64-bit), finite float, bool, None.
    Tuples are refused because they would come back as lists, unequal to the original.
    """
    try:
        _check(value, 0)
    except _Refused as refused:
        location = where + "".join(reversed(refused.path))
        raise SerializationError(refused.describe(location), location=location) from refused.__cause__


class _Refused(Exception):
    """A refused value deep inside the one checked: ``describe(location)`` says why, and
    ``path`` gains one step (``[0]``, ``['key']``) per container on the way out. The
    location is spelled out only then: building it for every item cost most of a check."""

    def __init__(self, describe: Callable[[str], str], step: str = "") -> None:
        self.describe = describe
        self.path = [step] if step else []


def _check(value: Any, depth: int) -> None:
    # ``depth`` containers enclose ``value``; only containers count towards the limit.
    if depth >= MAX_DEPTH and isinstance(value, (dict, list)):
        raise _Refused(
            lambda where: (
                f"{where} nests containers more than {MAX_DEPTH} levels deep (or refers to itself); flatten the value"
            )
        )
    # Exact types first: they are the common case and cheaper than isinstance chains.
    kind = type(value)
    if kind is str:
        _check_str(value)
    elif kind is bool or value is None:
        return
    elif kind is int:
        _check_int(value)
    elif kind is float:
        _check_float(value)
    elif kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise _Refused(partial(_bad_key, key))
            try:
                _check_str(key)
            except _Refused as refused:
                refused.path.append(f" key {key!r}")
                raise
            try:
                _check(item, depth + 1)
            except _Refused as refused:
                refused.path.append(f"[{key!r}]")
                raise
    elif kind is list:
        for index, item in enumerate(value):
            try:
                _check(item, depth + 1)
            except _Refused as refused:
                refused.path.append(f"[{index}]")
                raise
    elif isinstance(value, float) and not isinstance(value, int):
        # orjson refuses float subclasses (numpy.float64 is one) when it writes, so say
        # where the value is and how to fix it, before anything is written.
        raise _Refused(
            lambda where: (
                f"{where} is a {kind.__module__}.{kind.__name__}, a float subclass that JSON encoding does not "
                f"take; convert it with float(x) (or .item() for a numpy scalar)"
            )
        )
    elif isinstance(value, (str, int, dict, list)):
        # Subclasses (OrderedDict, IntEnum, StrEnum...) come back as their base type,
        # which compares equal; check them by that base type.
        base: Any = next(t for t in (bool, str, int, dict, list) if isinstance(value, t))
        _check(base(value), depth)
    else:
        raise _Refused(
            lambda where: (
                f"{where} is a {kind.__name__}, which JSON cannot hold so that it comes back "
                "equal; use dict, list, str, int, float, bool or None"
            )
        )


def _bad_key(key: object, where: str) -> str:
    return f"{where} has a key of type {type(key).__name__} ({key!r}); JSON object keys must be str"


def _check_str(value: str) -> None:
    if value.isascii():
        return  # the common case, checked without building the UTF-8 bytes
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        start = e.start
        raise _Refused(
            lambda where: f"{where} holds a lone surrogate at index {start}, which is not valid UTF-8"
        ) from e


def _check_int(value: int) -> None:
    if not _INT_MIN <= value <= _INT_MAX:
        raise _Refused(
            lambda where: (
                f"{where} is the integer {value}, outside the 64-bit range JSON storage keeps exactly; "
                "store it as a string"
            )
        )


def _check_float(value: float) -> None:
    if not math.isfinite(value):
        raise _Refused(
            lambda where: (
                f"{where} is {value!r}; JSON has no NaN or infinity (it would come back as "
                "null), so store None or a string instead"
            )
        )


def encode(value: Any, *, pretty: bool = True) -> bytes:
    """Canonical bytes: UTF-8, sorted keys, 2-space indent (or one line), trailing newline.

    The value must have passed ``check_value``.
    """
    try:
        return orjson.dumps(value, option=_PRETTY if pretty else _COMPACT)
    except orjson.JSONEncodeError as e:  # pragma: no cover - check_value catches these first
        raise SerializationError(f"value cannot be encoded as JSON: {e}") from e


def compact_text(value: Any) -> str:
    """Canonical compact JSON as a str, without the trailing newline (a database column)."""
    return encode(value, pretty=False)[:-1].decode()


def is_utf8(text: str) -> bool:
    """False for a str holding a lone surrogate, which no UTF-8 text (a statement, a
    database value) can carry."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def decode(data: bytes | str, source: str) -> Any:
    """Parse JSON, turning a parse failure into CorruptedDataError naming ``source``."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as e:
        line, column = (e.lineno, e.colno) if data else (1, 1)
        problem = "the file is empty" if not data else f"invalid JSON ({e.msg})"
        raise CorruptedDataError(source, problem, line=line, column=column) from e


def format_time(epoch_ms: int) -> str:
    """``1795253400000`` -> ``"2026-11-21T09:30:00.000Z"`` (ISO 8601, UTC, milliseconds)."""
    moment = datetime.fromtimestamp(epoch_ms // 1000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{epoch_ms % 1000:03d}Z"


def parse_time(text: str) -> int:
    """Inverse of ``format_time``; raises ValueError on anything else."""
    if not (isinstance(text, str) and len(text) == 24 and text.endswith("Z")):
        raise ValueError(f"not a time stamp of the form 2026-11-21T09:30:00.000Z: {text!r}")
    # fromisoformat is ~100x faster than strptime; the checks above and the "T" and "."
    # positions keep it to exactly the form format_time writes.
    if text[10] != "T" or text[19] != ".":
        raise ValueError(f"not a time stamp of the form 2026-11-21T09:30:00.000Z: {text!r}")
    moment = datetime.fromisoformat(text[:-1]).replace(tzinfo=UTC)
    return round(moment.timestamp() * 1000)
