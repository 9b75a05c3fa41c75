"""The values every benchmark stores: 2 KB conversation documents and 500-byte messages.

Sizes are measured as the library writes them: a document pretty-printed (the file
backend's default), a message as one compact line. Every value carries its index, so
two writes never hold the same bytes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson

__all__ = [
    "DOCUMENT_BYTES",
    "MESSAGE_BYTES",
    "PRETTY",
    "cache_value",
    "document",
    "durable_write",
    "fsync_folder",
    "message",
    "messages",
    "write_synced",
]

DOCUMENT_BYTES = 2048
MESSAGE_BYTES = 500
# The options codec.encode uses: the bytes a plain script writes are the library's bytes.
PRETTY = orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE
COMPACT = orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE

_WORDS = [
    "the", "agent", "planned", "a", "trip", "to", "lisbon", "and", "asked", "about",
    "museums", "trains", "food", "weather",
]  # fmt: skip


def _text(length: int) -> str:
    words: list[str] = []
    size = 0
    i = 0
    while size < length:
        word = _WORDS[i % len(_WORDS)]
        words.append(word)
        size += len(word) + 1
        i += 7
    return " ".join(words)[:length]


def _fit(make: Any, target: int, options: int) -> str:
    """The filler text that brings ``make(filler)`` to ``target`` encoded bytes."""
    base = len(orjson.dumps(make(""), option=options))
    return _text(max(0, target - base))


# The text is made once: values are built inside timed operations, so building one must
# cost next to nothing. Each value differs from the others by its index alone.
def _document(i: int, summary: str) -> dict[str, Any]:
    return {
        "conversation_id": "conv_000001",
        "title": "Planning a trip",
        "participants": ["user", "assistant"],
        "created_at": "2026-11-21T09:30:00.000Z",
        "revision": i,
        "metadata": {"language": "en", "model": "some-model", "tags": ["travel", "museums"]},
        "summary": summary,
    }


def _message(i: int, content: str) -> dict[str, Any]:
    return {
        "role": "user" if i % 2 == 0 else "assistant",
        "timestamp": "2026-11-21T09:30:00.000Z",
        "sequence": i,
        "content": content,
    }


_SUMMARY = _fit(lambda text: _document(100_000, text), DOCUMENT_BYTES, PRETTY)
_CONTENT = _fit(lambda text: _message(100_000, text), MESSAGE_BYTES, COMPACT)


def document(i: int) -> dict[str, Any]:
    """A conversation document of about 2 KB (pretty-printed), distinct for each ``i``."""
    return _document(i, _SUMMARY)


def message(i: int) -> dict[str, Any]:
    """A raw message of about 500 bytes (compact JSON), distinct for each ``i``."""
    return _message(i, _CONTENT)


def messages(count: int, start: int = 0) -> list[dict[str, Any]]:
    return [message(i) for i in range(start, start + count)]


def cache_value(i: int) -> dict[str, Any]:
    """An LLM answer to cache: the size of a document."""
    return {"model": "some-model", "answer": _SUMMARY, "tokens": i}


def durable_write(path: Path, data: bytes) -> None:
    """The plain way to replace a file durably: temp file in the same folder, write,
    fsync, os.replace, fsync of the folder. No lock, no backup, no thread."""
    temp = path.with_name(f".{path.name}.tmp")
    write_synced(temp, data)
    os.replace(temp, path)
    fsync_folder(path.parent)


def write_synced(path: Path, data: bytes, *, append: bool = False) -> None:
    """Write ``data`` to ``path`` (created; truncated, or appended to), then fsync."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC), 0o666)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
