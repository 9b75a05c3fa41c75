"""serializer="msgpack" against serializer="json" (the default) on SQLite and Redis."""

from __future__ import annotations

from typing import Any

from connectome_storage.serializer import JsonSerializer, MsgpackSerializer

from ..backends import open_storage
from ..context import Context
from ..data import message, messages
from ..harness import Section, Variant, compare, each

__all__ = ["run"]

INTRO = """\
The same storage with `serializer="json"` (the default: orjson, sorted keys, readable with
the sqlite3 shell and redis-cli; the baseline of each table) and `serializer="msgpack"`
(the msgpack package's C extension), on SQLite (WAL, synchronous=FULL) and on Redis (the
bench's local redis-server). Each operation stores or loads a whole raw-message history
of 10,000 messages of about 500 bytes (`store_raw_messages`, `load_raw_messages`: one row
or list element per message) or one conversation document of about 100 KB
(`store_conversation`, `load_conversation`). Values are checked by the same code whichever
the serializer, so the difference is the encoding and decoding, and the bytes moved."""

HISTORY_FULL, HISTORY_SMOKE = 10_000, 100
DOCUMENT_FULL, DOCUMENT_SMOKE = 100_000, 10_000


def big_document(target: int) -> dict[str, Any]:
    """A conversation document of about ``target`` bytes of JSON: nested turns of text."""
    turns = [message(i) for i in range(max(1, target // 500))]
    return {"conversation_id": "conv_big", "title": "A long one", "turns": turns, "metadata": {"n": len(turns)}}


def encoded_size(value: Any, items: bool) -> tuple[int, int]:
    """Bytes of ``value`` (each item of it when ``items``) as JSON and as msgpack."""
    parts = value if items else [value]
    json, packed = JsonSerializer(), MsgpackSerializer()
    return sum(len(json.dumps(p)) for p in parts), sum(len(packed.dumps(p)) for p in parts)


def _store_history(storage: Any, history: list[dict[str, Any]], document: dict[str, Any]) -> Any:
    async def op(i: int) -> None:
        await storage.store_raw_messages("history", history)

    return op


def _load_history(storage: Any, history: list[dict[str, Any]], document: dict[str, Any]) -> Any:
    async def op(i: int) -> None:
        assert len(await storage.load_raw_messages("history")) == len(history)

    return op


def _store_document(storage: Any, history: list[dict[str, Any]], document: dict[str, Any]) -> Any:
    async def op(i: int) -> None:
        await storage.store_conversation("big", document)

    return op


def _load_document(storage: Any, history: list[dict[str, Any]], document: dict[str, Any]) -> Any:
    async def op(i: int) -> None:
        assert await storage.load_conversation("big") is not None

    return op


async def run(ctx: Context) -> Section:
    section = Section("serializer", "JSON against msgpack on SQLite and Redis", INTRO)
    history = messages(HISTORY_SMOKE if ctx.smoke else HISTORY_FULL)
    document = big_document(DOCUMENT_SMOKE if ctx.smoke else DOCUMENT_FULL)
    ops_history, ops_document = (2, 3) if ctx.smoke else (3, 30)
    plan = [
        ("history.store", f"store a history of {len(history):,} messages", _store_history, ops_history),
        ("history.load", f"load a history of {len(history):,} messages", _load_history, ops_history),
        ("document.store", "store a document of about 100 KB", _store_document, ops_document),
        ("document.load", "load a document of about 100 KB", _load_document, ops_document),
    ]
    for backend in ("sqlite", "redis"):
        stores = {}
        for name in ("json", "msgpack"):
            stores[name] = storage = await open_storage(ctx, backend, f"serializer-{backend}-{name}", serializer=name)
            await storage.store_raw_messages("history", history)
            await storage.store_conversation("big", document)
        for key, title, make, ops in plan:
            variants = [
                Variant(f"{backend} {name}", each(make(storage, history, document))) for name, storage in stores.items()
            ]
            comparison = await compare(
                f"serializer.{backend}.{key}", f"{title} ({backend})", variants,
                ops=ops, repeats=ctx.sizes.repeats, warmup=1,
            )  # fmt: skip
            section.comparisons.append(comparison)
        for storage in stores.values():
            await storage.shutdown()
    (history_json, history_packed), (document_json, document_packed) = (
        encoded_size(history, items=True), encoded_size(document, items=False),
    )  # fmt: skip
    section.notes.append(
        f"Stored bytes: the history {history_json:,} as JSON, {history_packed:,} as msgpack "
        f"({history_packed / history_json:.0%}); the document {document_json:,} as JSON, "
        f"{document_packed:,} as msgpack ({document_packed / document_json:.0%})."
    )
    return section
