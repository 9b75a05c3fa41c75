"""FileStorage's whole-conversation read and its streamed listing of conversation ids.

``migrate`` reads every conversation of a source once, and a transaction reads a
conversation whole at its first touch (``StorageInterface._conversation_parts``). Read
part by part, that costs five point reads, each looking at the conversation's folder
(refusing a link) and at its metadata again. Here the folder is looked at once, the
metadata is read once and expiry judged once, and then each part is read: one ``lstat``
for a part that is absent, ``lstat`` + ``open`` + ``fstat`` + ``read`` for one that is
there (``read_small_at``: a link, FIFO, socket or device is refused unopened). Small files
are read on the event loop, as the point reads do; a conversation with a large part, or a
raw history that does not parse (an append in place half-way in another process), is read
again in a worker thread, where the history gets the settled read of ``_read_log_settled``.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
from collections.abc import AsyncGenerator, Iterator
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from ..codec import decode
from ..conversations import MetaRecord
from ..errors import CorruptedDataError
from ..interface import Kind
from ..naming import encode_name
from . import _fs
from ._file_scan import READ_IN_LOOP_LIMIT, entity_folder, read_small_at
from ._layout import META_FILE, PART_FILES, check_shape

if TYPE_CHECKING:
    from .file import FileStorage

__all__ = ["Parts", "conversation_parts", "stream_ids"]

# (metadata even if expired, document, chunks, raw history, memories), as
# ``StorageInterface._conversation_parts`` returns them.
Parts = tuple[MetaRecord | None, Any, Any, list[Any], list[dict[str, Any]]]
# Ids handed over per worker-thread hop by ``stream_ids``.
ID_CHUNK = 1024


async def conversation_parts(storage: FileStorage, conversation_id: str, now_ms: int) -> Parts:
    """Every part of one conversation, as the five point reads would return them: an
    expired conversation's parts read as missing (its metadata is returned); damaged data
    raises CorruptedDataError naming the file, a link in place of a folder or file
    StorageIOError."""
    parts = _read(storage, conversation_id, now_ms, READ_IN_LOOP_LIMIT)
    if parts is None:
        parts = await asyncio.to_thread(_read, storage, conversation_id, now_ms, None)
    assert parts is not None
    return parts


def _read(storage: FileStorage, conversation_id: str, now_ms: int, limit: int | None) -> Parts | None:
    """The parts; None (only with a ``limit``) when this must be done in a worker thread."""
    top = storage._conversations_dir
    folder = f"{top}{os.sep}{encode_name(conversation_id)}"
    path = folder
    record: MetaRecord | None = None
    try:
        if storage._case.active:
            storage._case.check(Path(folder), conversation_id)
        if entity_folder(storage._root, top, folder) is None:
            return None, None, None, [], []  # new lists each time: a transaction appends to them
        raw: dict[Kind, bytes] = {}
        for kind in (Kind.METADATA, Kind.CONVERSATION, Kind.RAW_MESSAGES, Kind.CHUNKS, Kind.MEMORIES):
            path = f"{folder}{os.sep}{PART_FILES[kind]}"
            data = read_small_at(path, sys.maxsize if limit is None else limit)
            if data is False:
                if limit is not None:
                    return None  # large: read in a thread
                raise CorruptedDataError(path, "a folder stands where a file belongs")
            if isinstance(data, bytes):
                raw[kind] = data
            if kind is Kind.METADATA:
                record = _metadata(storage, raw.get(kind), f"{folder}{os.sep}{META_FILE}", conversation_id)
                if record is not None and record.expired(now_ms):
                    return record, None, None, [], []  # expired: every part reads as missing
    except OSError as e:
        raise _fs.os_error(e, "reading", path) from e
    history: list[Any] = []
    if Kind.RAW_MESSAGES in raw:
        history_path = f"{folder}{os.sep}{PART_FILES[Kind.RAW_MESSAGES]}"
        try:
            history = _parse(Kind.RAW_MESSAGES, raw[Kind.RAW_MESSAGES], history_path)
        except CorruptedDataError:
            if limit is not None:
                return None  # maybe an append in place half-way: the settled read, in a thread
            history = storage._read_log_settled(Kind.RAW_MESSAGES, Path(history_path), conversation_id)
    return (
        record,
        _parsed(raw, Kind.CONVERSATION, folder),
        _parsed(raw, Kind.CHUNKS, folder),
        history,
        _parsed(raw, Kind.MEMORIES, folder) or [],
    )


def _metadata(storage: FileStorage, raw: bytes | None, path: str, conversation_id: str) -> MetaRecord | None:
    """The stored metadata, expired or not; CorruptedDataError naming a damaged file."""
    if raw is None:
        return None
    value = _parse(Kind.METADATA, raw, path)
    record = MetaRecord.from_document(value, path)
    if record.conversation_id != conversation_id:
        storage._meta_record(value, Path(path), conversation_id)  # raises, naming the file
    return record


def _parsed(raw: dict[Kind, bytes], kind: Kind, folder: str) -> Any:
    data = raw.get(kind)
    return None if data is None else _parse(kind, data, f"{folder}{os.sep}{PART_FILES[kind]}")


def _parse(kind: Kind, raw: bytes, path: str) -> Any:
    """``parse_part`` without a Path for a file of the usual shape: pathlib interns every
    part of a path it builds, and the interned-strings table grew with every conversation
    migrated (a one-off resize of several megabytes at 100,000)."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        value = decode(raw, path)  # raises, naming the file and where
    if _usual(kind, value):
        return value
    return check_shape(kind, value, Path(path))  # raises (or takes it), naming the file


def _usual(kind: Kind, value: Any) -> bool:
    """Whether ``value`` has the shape ``check_shape`` asks of ``kind``, checked the quick
    way (exact types); False leaves the verdict to ``check_shape``."""
    if kind in (Kind.CONVERSATION, Kind.METADATA):
        return type(value) is dict
    if type(value) is not list or not all(type(item) is dict for item in value):
        return False
    if kind is Kind.MEMORIES:
        ids = [item.get("memory_id") for item in value]
        return all(type(memory_id) is str for memory_id in ids) and len(set(ids)) == len(ids)
    return kind in (Kind.RAW_MESSAGES, Kind.CHUNKS)


async def stream_ids(ids: Iterator[str]) -> AsyncGenerator[str, None]:
    """The ids of a scan of ``conversations/``, advanced in a worker thread ``ID_CHUNK``
    at a time: the scan holds one open ``scandir`` and no list."""
    try:
        while True:
            chunk = await asyncio.to_thread(_take, ids, ID_CHUNK)
            for conversation_id in chunk:
                yield conversation_id
            if len(chunk) < ID_CHUNK:
                return
    finally:
        # Closes the scandir; a hop still running (this was cancelled) leaves it to the
        # garbage collector.
        close = getattr(ids, "close", None)  # a generator's
        if close is not None:
            with suppress(ValueError):
                close()


def _take(ids: Iterator[str], count: int) -> list[str]:
    return list(itertools.islice(ids, count))
