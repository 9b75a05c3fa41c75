"""The LangGraph checkpointer: ConnectomeCheckpointSaver on SQLite against langgraph-checkpoint-sqlite.

A section of ``python -m bench`` (alone: ``python -m bench --only adapters_langgraph [--smoke]``).
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from connectome_storage import create_sqlite_storage

from ..context import Context
from ..floors import PlainLog
from ..harness import Section, Variant, compare, each

__all__ = ["run"]

INTRO = """\
`aput` of one checkpoint (a counter and a 20-message history of plain dicts, the parent
linked) and `aget_tuple` of a thread's latest checkpoint with its pending writes, on
SQLite, against langgraph-checkpoint-sqlite's `AsyncSqliteSaver` on a file database in the
same run. The storage is opened by the caller, so the saver runs on the caller's loop.
Ratios against AsyncSqliteSaver."""

MESSAGES = 20


def _checkpoint(i: int) -> Any:
    from langgraph.checkpoint.base import empty_checkpoint

    checkpoint = empty_checkpoint()
    checkpoint["channel_values"] = {
        "count": i,
        "messages": [{"role": "user", "content": f"message {m}: " + "x" * 100} for m in range(MESSAGES)],
    }
    checkpoint["channel_versions"] = {"count": i + 1, "messages": i + 1}
    return checkpoint


def _config(thread: str, parent: str | None = None) -> Any:
    configurable = {"thread_id": thread, "checkpoint_ns": ""}
    if parent:
        configurable["checkpoint_id"] = parent
    return {"configurable": configurable}


async def _fill(saver: Any, thread: str, n: int) -> None:
    parent = None
    for i in range(n):
        checkpoint = _checkpoint(i)
        stored = await saver.aput(_config(thread, parent), checkpoint, {"source": "loop", "step": i}, {})
        parent = stored["configurable"]["checkpoint_id"]
        await saver.aput_writes(stored, [("count", i)], f"task-{i}")


async def run(ctx: Context) -> Section:
    section = Section("adapters_langgraph", "LangGraph checkpointer on SQLite against AsyncSqliteSaver", INTRO)
    if ctx.peer("langgraph_sqlite") is None:
        section.notes.append("langgraph-checkpoint-sqlite is not installed: this section was skipped (smoke run).")
        return section
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    from connectome_storage.adapters.langgraph import ConnectomeCheckpointSaver

    sizes = ctx.sizes
    root = ctx.folder("adapters_langgraph")
    async with (
        create_sqlite_storage(root / "ours.db") as storage,
        AsyncSqliteSaver.from_conn_string(str(root / "peer.db")) as peer,
    ):
        await peer.setup()
        ours = ConnectomeCheckpointSaver(storage)
        for saver in (ours, peer):
            await _fill(saver, "read", 20)
        parents: dict[str, str | None] = {"ours": None, "peer": None}

        def putter(name: str, saver: Any) -> Any:
            async def put(i: int) -> None:
                stored = await saver.aput(
                    _config(f"write-{name}", parents[name]), _checkpoint(i), {"source": "loop", "step": i}, {}
                )
                parents[name] = stored["configurable"]["checkpoint_id"]

            return put

        floor = PlainLog(root / "floor.db")

        async def floor_put(i: int) -> None:
            data = orjson.dumps([_checkpoint(i), {"source": "loop", "step": i}]).decode()
            await asyncio.to_thread(floor.commit, data)

        def getter(saver: Any) -> Any:
            async def get(i: int) -> None:
                tup = await saver.aget_tuple(_config("read"))
                assert tup is not None and len(tup.checkpoint["channel_values"]["messages"]) == MESSAGES

            return get

        section.comparisons.append(
            await compare(
                "adapters_langgraph.put",
                "put one checkpoint",
                [
                    Variant("AsyncSqliteSaver.aput", each(putter("peer", peer))),
                    Variant("ConnectomeCheckpointSaver (SQLite)", each(putter("ours", ours))),
                    Variant(
                        "one INSERT + COMMIT in asyncio.to_thread", each(floor_put), "floor: the checkpoint as JSON"
                    ),
                ],
                ops=sizes.writes,
                repeats=sizes.repeats,
                warmup=5,
            )
        )
        floor.close()
        section.comparisons.append(
            await compare(
                "adapters_langgraph.get_tuple",
                "get a thread's latest checkpoint",
                [
                    Variant("AsyncSqliteSaver.aget_tuple", each(getter(peer))),
                    Variant("ConnectomeCheckpointSaver (SQLite)", each(getter(ours))),
                ],
                ops=sizes.reads,
                repeats=sizes.repeats,
                warmup=5,
            )
        )
    return section
