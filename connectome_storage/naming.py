"""Ids and the file names they map to, reversibly and safely on every platform.

Rules (docs/file-format.md repeats them for users):

* ``[A-Za-z0-9._-]`` is kept as is, so ``conv_001`` stays ``conv_001``;
* every other character is percent-encoded as UTF-8 (``/`` -> ``%2F``, ``%`` -> ``%25``);
* a leading or trailing ``.`` is encoded (no hidden files, no ``.``/``..``, no name that
  Windows would silently strip), and so is the first letter of a Windows device name
  (``CON`` -> ``%43ON``, ``nul.txt`` -> ``%6Eul.txt``).

The encoding is canonical: ``decode_name`` accepts only names that ``encode_name`` could
have produced, so a stray file such as ``%41.json`` is never mistaken for id ``A``.

Every backend calls ``check_id``, so an id that the file tree could not hold (NUL, a
lone surrogate, a file name over 255 bytes) is refused everywhere and any storage can be
migrated to files.
"""

from __future__ import annotations

import re
from typing import Any

from .errors import InvalidKeyError

__all__ = ["MAX_NAME_BYTES", "check_id", "decode_name", "encode_name"]

# The longest file name is the id's name plus ".json"; 255 bytes is the common limit.
MAX_NAME_BYTES = 255 - len(".json")

_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")
_WINDOWS_DEVICES = frozenset(
    ["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"] + [f"{stem}{n}" for stem in ("COM", "LPT") for n in range(10)]
)
_ESCAPE = re.compile(r"%([0-9A-F]{2})")
# A character that is never kept as is (a name without one, neither starting nor ending
# with ".", is its own id).
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]").search


def check_id(value: Any, what: str) -> str:
    """Return ``value`` if it is a usable id, else raise InvalidKeyError naming ``what``."""
    if not isinstance(value, str):
        raise InvalidKeyError(f"{what} must be a str, got {type(value).__name__}: {value!r}")
    if not value:
        raise InvalidKeyError(f"{what} must not be empty")
    if "\x00" in value:
        raise InvalidKeyError(f"{what} {value!r} contains a NUL character, which no file name can hold")
    if value.isascii():
        if len(value) * 3 <= MAX_NAME_BYTES:
            return value  # no ASCII character encodes to more than 3 bytes: no need to measure
    else:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise InvalidKeyError(
                f"{what} {value!r} holds a lone surrogate at index {e.start}; ids must be valid UTF-8"
            ) from e
    size = len(encode_name(value).encode("ascii"))
    if size > MAX_NAME_BYTES:
        raise InvalidKeyError(
            f"{what} {value[:40]!r}... maps to a file name of {size} bytes; the limit is "
            f"{MAX_NAME_BYTES} (each non-ASCII-letter/digit character costs 3 bytes per UTF-8 "
            "byte); use a shorter id or a hash of it"
        )
    return value


def encode_name(identifier: str) -> str:
    """Map an id to a file name that is safe on Linux, macOS and Windows."""
    if _SAFE.issuperset(identifier) and not identifier.startswith("."):
        name = identifier
    else:
        name = "".join(ch if ch in _SAFE else _percent(ch) for ch in identifier)
        if name.startswith("."):
            name = "%2E" + name[1:]
    if name.endswith("."):
        name = name[:-1] + "%2E"
    if name.split(".", 1)[0].upper() in _WINDOWS_DEVICES:
        name = _percent(name[0]) + name[1:]
    return name


def decode_name(name: str) -> str | None:
    """Map a file name back to its id; ``None`` if ``encode_name`` would not produce it."""
    if name and _UNSAFE(name) is None and name[0] != "." and name[-1] != ".":
        # The common case, nothing encoded (a listing of 100,000 folders decodes every
        # name): only a Windows device name would have had its first letter encoded.
        stem = name.partition(".")[0]
        return None if len(stem) < 5 and stem.upper() in _WINDOWS_DEVICES else name
    try:
        identifier = _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), name)
        # Percent escapes are UTF-8 bytes: rebuild the bytes, then decode them.
        identifier = identifier.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return None
    if not identifier or encode_name(identifier) != name:
        return None
    return identifier


def _percent(ch: str) -> str:
    return "".join(f"%{byte:02X}" for byte in ch.encode("utf-8"))
