"""ConnectomeCheckpointSaver: LangGraph's BaseCheckpointSaver over key-value collections."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from typing import Any, cast

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    PendingWrite,
    get_checkpoint_id,
    get_checkpoint_metadata,
    writes_sort_key,
)
from langgraph.checkpoint.serde.base import SerializerProtocol

from ...errors import StorageError
from ...interface import StorageInterface
from ...kv import Entry, KeyValueStore
from .._bridge import StorageBridge
from ._common import (
    CHECKPOINTS,
    PAGE,
    WRITES,
    _Codec,
    _escape,
    _glob,
    _json_ready,
    _meta_tag,
    _meta_tags,
    _thread_prefix,
)

# ------------------------------------------------------------------ the checkpoint saver


def _config(thread_id: str, checkpoint_ns: str, checkpoint_id: str) -> RunnableConfig:
    return {"configurable": {"thread_id": thread_id, "checkpoint_ns": checkpoint_ns, "checkpoint_id": checkpoint_id}}


class ConnectomeCheckpointSaver(BaseCheckpointSaver[str]):
    """LangGraph ``BaseCheckpointSaver`` over key-value collections (see the module docstring).

    ``serde`` is LangGraph's serializer for values that are not JSON (defaults to its
    ``JsonPlusSerializer``); passing one (an ``EncryptedSerializer``, say) routes every value
    through it. ``readable=False`` does that with the default serializer too.
    """

    def __init__(
        self, storage: StorageInterface, *, serde: SerializerProtocol | None = None, readable: bool | None = None
    ) -> None:
        super().__init__(serde=serde)
        self._bridge = StorageBridge(storage)
        self._codec = _Codec(self.serde, serde is None if readable is None else bool(readable))

    def __repr__(self) -> str:
        return f"ConnectomeCheckpointSaver({self._bridge.storage!r})"

    @property
    def storage(self) -> StorageInterface:
        return self._bridge.storage

    def close(self) -> None:
        """Shut down the storage if the adapters opened it (every adapter over it stops with it)."""
        self._bridge.close()

    async def aclose(self) -> None:
        """``close()`` for async code."""
        await self._bridge.aclose()

    def get_next_version(self, current: str | int | float | None, channel: None) -> str:
        """``"{n:032}.{random:016}"`` as LangGraph's own savers write them (sortable as text)."""
        import random

        if current is None:
            number = 0
        elif isinstance(current, int | float):
            number = int(current)
        else:
            number = int(str(current).split(".")[0])
        return f"{number + 1:032}.{random.random():016}"

    # ------------------------------------------------------------ encoding entries

    def _checkpoint_value(
        self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        conf = config["configurable"]
        body = {k: v for k, v in checkpoint.items() if k != "channel_values"}
        values = checkpoint.get("channel_values", {})
        encoded: dict[str, Any] = {}
        stored_values: dict[str, Any] = {}
        for channel in sorted(values):
            stored_values[channel], kind = self._codec.encode(values[channel], f"channel {channel!r}")
            if kind is not None:
                encoded.setdefault("channel_values", {})[channel] = kind
        stored_body, kind = self._codec.encode(body, "the checkpoint")
        if kind is not None:
            encoded["checkpoint"] = kind
        full_metadata = get_checkpoint_metadata(config, metadata)
        stored_metadata, kind = self._codec.encode(full_metadata, "the checkpoint metadata")
        if kind is not None:
            encoded["metadata"] = kind
        value: dict[str, Any] = {
            "thread_id": conf["thread_id"],
            "checkpoint_ns": conf.get("checkpoint_ns", ""),
            "checkpoint_id": checkpoint["id"],
            "parent_checkpoint_id": conf.get("checkpoint_id"),
            "checkpoint": stored_body,
            "channel_values": stored_values,
            "metadata": stored_metadata,
        }
        if encoded:
            value["encoded"] = encoded
        return value, cast(dict[str, Any], full_metadata)

    def _metadata_of(self, value: Mapping[str, Any]) -> dict[str, Any]:
        kind = value.get("encoded", {}).get("metadata")
        return cast(dict[str, Any], self._codec.decode(value["metadata"], kind))

    def _tuple(self, value: Mapping[str, Any], writes: list[PendingWrite]) -> CheckpointTuple:
        encoded = value.get("encoded", {})
        body = self._codec.decode(value["checkpoint"], encoded.get("checkpoint"))
        kinds = encoded.get("channel_values", {})
        channel_values = {
            channel: self._codec.decode(stored, kinds.get(channel))
            for channel, stored in value["channel_values"].items()
        }
        thread_id, ns = value["thread_id"], value["checkpoint_ns"]
        parent = value.get("parent_checkpoint_id")
        return CheckpointTuple(
            config=_config(thread_id, ns, value["checkpoint_id"]),
            checkpoint=cast(Checkpoint, {**body, "channel_values": channel_values}),
            metadata=cast(CheckpointMetadata, self._metadata_of(value)),
            parent_config=_config(thread_id, ns, parent) if parent else None,
            pending_writes=writes,
        )

    def _writes_of(self, entries: Iterable[Any]) -> list[PendingWrite]:
        rows: list[tuple[tuple[str, str, int], PendingWrite]] = []
        for entry in entries:
            task_id, task_path = entry["task_id"], entry.get("task_path", "")
            for write in entry["writes"]:
                value = self._codec.decode(write["value"], write.get("type"))
                rows.append((writes_sort_key(task_path, task_id, write["idx"]), (task_id, write["channel"], value)))
        rows.sort(key=lambda row: row[0])
        return [write for _, write in rows]

    # ------------------------------------------------------------ storage bodies

    async def _pending(self, storage: StorageInterface, prefix: str, checkpoint_id: str) -> list[PendingWrite]:
        entries = await storage.kv(WRITES).query(prefix=f"{prefix}{_escape(checkpoint_id)}|")
        return self._writes_of(entry.value for entry in entries)

    async def _get_tuple(self, storage: StorageInterface, config: RunnableConfig) -> CheckpointTuple | None:
        conf = config["configurable"]
        prefix = _thread_prefix(conf["thread_id"], conf.get("checkpoint_ns", ""))
        checkpoints = storage.kv(CHECKPOINTS)
        checkpoint_id = get_checkpoint_id(config)
        if checkpoint_id:
            value, writes = await asyncio.gather(
                checkpoints.get(prefix + _escape(checkpoint_id)), self._pending(storage, prefix, checkpoint_id)
            )
            if value is None:
                return None
            return self._tuple(value, writes)
        latest = await checkpoints.query(prefix=prefix, order_by="key", descending=True, limit=1)
        if not latest:
            return None
        value = latest[0].value
        return self._tuple(value, await self._pending(storage, prefix, value["checkpoint_id"]))

    async def _put(
        self, storage: StorageInterface, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata
    ) -> RunnableConfig:
        conf = config["configurable"]
        thread_id, ns = conf["thread_id"], conf.get("checkpoint_ns", "")
        value, full_metadata = self._checkpoint_value(config, checkpoint, metadata)
        tags = {"thread_id": thread_id, "checkpoint_ns": ns, **_meta_tags(full_metadata)}
        await storage.kv(CHECKPOINTS).set(_thread_prefix(thread_id, ns) + _escape(checkpoint["id"]), value, tags=tags)
        return _config(thread_id, ns, checkpoint["id"])

    async def _put_writes(
        self,
        storage: StorageInterface,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str,
    ) -> None:
        conf = config["configurable"]
        thread_id, ns, checkpoint_id = conf["thread_id"], conf.get("checkpoint_ns", ""), conf["checkpoint_id"]
        fresh: dict[int, dict[str, Any]] = {}
        for index, (channel, value) in enumerate(writes):
            stored, kind = self._codec.encode(value, f"the write to channel {channel!r} of task {task_id!r}")
            row: dict[str, Any] = {"idx": WRITES_IDX_MAP.get(channel, index), "channel": channel, "value": stored}
            if kind is not None:
                row["type"] = kind
            fresh[row["idx"]] = row
        if not fresh:
            return
        kv = storage.kv(WRITES)
        key = f"{_thread_prefix(thread_id, ns)}{_escape(checkpoint_id)}|{_escape(task_id)}"
        entry = {
            "thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": checkpoint_id,
            "task_id": task_id, "task_path": task_path, "writes": [],
        }  # fmt: skip
        tags = {"thread_id": thread_id, "checkpoint_ns": ns}
        if await kv.set(key, {**entry, "writes": sorted(fresh.values(), key=_idx)}, tags=tags, if_not_exists=True):
            return
        # The task wrote before: a regular write (idx >= 0) already stored stays as it was
        # (a retried task must not duplicate it); a special one (error, interrupt) is replaced.
        current = await kv.get(key) or entry
        merged = {row["idx"]: row for row in current["writes"]}
        for idx, row in fresh.items():
            if idx < 0 or idx not in merged:
                merged[idx] = row
        await kv.set(key, {**current, "writes": sorted(merged.values(), key=_idx)}, tags=tags)

    async def _list(
        self,
        storage: StorageInterface,
        config: RunnableConfig | None,
        filter: Mapping[str, Any] | None,
        before: RunnableConfig | None,
        limit: int | None,
    ) -> list[CheckpointTuple]:
        if limit is not None and limit <= 0:
            return []
        kv = storage.kv(CHECKPOINTS)
        conf = config["configurable"] if config else {}
        thread_id: str | None = conf.get("thread_id")
        ns: str | None = conf.get("checkpoint_ns")
        wanted_id: str | None = conf.get("checkpoint_id")
        before_id = get_checkpoint_id(before) if before else None
        tags: dict[str, str] = {}
        residual: dict[str, Any] = {}
        for name, expected in (filter or {}).items():
            tag = _meta_tag(expected)
            if tag is not None and name and "\x00" not in name and _json_ready(name):
                tags[f"meta:{name}"] = tag
            else:
                residual[name] = expected
        # The thread and namespace tags narrow a listing across namespaces or threads; within
        # one thread's namespace the key prefix already does, and a tag would only add a join.
        scope: dict[str, str] = {}
        if thread_id is not None:
            scope["thread_id"] = thread_id
        if ns is not None:
            scope["checkpoint_ns"] = ns

        def keep(value: Mapping[str, Any]) -> bool:
            if wanted_id and value["checkpoint_id"] != wanted_id:
                return False
            if before_id and value["checkpoint_id"] >= before_id:
                return False
            if not residual:
                return True
            metadata = self._metadata_of(value)
            return all(metadata.get(name) == expected for name, expected in residual.items())

        values: list[Mapping[str, Any]] = []
        if thread_id is not None and ns is not None:
            # One thread's namespace: key order is checkpoint order, so newest first is a
            # descending key query, paged until enough entries pass the Python-side checks.
            prefix = _thread_prefix(thread_id, ns)
            if wanted_id:
                value = await kv.get(prefix + _escape(wanted_id))
                values = [value] if value is not None and keep(value) and _tags_match(value, tags, self) else []
            else:
                values = await self._paged(kv, prefix, tags, keep, limit)
        else:
            # Across namespaces or threads: newest first by checkpoint id, as LangGraph's SQL savers do.
            entries = await kv.query(tags={**tags, **scope})
            values = sorted((e.value for e in entries if keep(e.value)), key=_checkpoint_id, reverse=True)
            values = values[:limit] if limit is not None else values
        if not values:
            return []
        pending = await asyncio.gather(
            *(
                self._pending(storage, _thread_prefix(v["thread_id"], v["checkpoint_ns"]), v["checkpoint_id"])
                for v in values
            )
        )
        return [self._tuple(value, writes) for value, writes in zip(values, pending, strict=True)]

    @staticmethod
    async def _paged(
        kv: KeyValueStore, prefix: str, tags: dict[str, str], keep: Any, limit: int | None
    ) -> list[Mapping[str, Any]]:
        found: list[Mapping[str, Any]] = []
        offset = 0
        page = PAGE if limit is None else max(limit, 1)
        while True:
            entries = await kv.query(
                prefix=prefix, tags=tags, order_by="key", descending=True, limit=page, offset=offset
            )
            for entry in entries:
                if keep(entry.value):
                    found.append(entry.value)
                    if limit is not None and len(found) >= limit:
                        return found
            if len(entries) < page:
                return found
            offset += page
            page = PAGE

    async def _delete_thread(self, storage: StorageInterface, thread_id: str) -> None:
        for namespace in (CHECKPOINTS, WRITES):
            kv = storage.kv(namespace)
            keys = await kv.find_by_tag("thread_id", thread_id)
            if keys:
                await kv.delete_many(keys)

    async def _delete_checkpoints(self, storage: StorageInterface, values: Iterable[Mapping[str, Any]]) -> None:
        """Remove checkpoints and the writes stored against them."""
        checkpoint_keys: list[str] = []
        write_keys: list[str] = []
        writes = storage.kv(WRITES)
        for value in values:
            prefix = _thread_prefix(value["thread_id"], value["checkpoint_ns"])
            checkpoint_keys.append(prefix + _escape(value["checkpoint_id"]))
            write_keys += await writes.keys(_glob(f"{prefix}{_escape(value['checkpoint_id'])}|"))
        if checkpoint_keys:
            await storage.kv(CHECKPOINTS).delete_many(checkpoint_keys)
        if write_keys:
            await writes.delete_many(write_keys)

    async def _delete_for_runs(self, storage: StorageInterface, run_ids: Sequence[str]) -> None:
        kv = storage.kv(CHECKPOINTS)
        for run_id in run_ids:
            tag = _meta_tag(run_id)
            if tag is not None:
                entries = await kv.query(tags={"meta:run_id": tag})
                victims = [e.value for e in entries]
            else:  # a run id too long for a tag: look at every checkpoint's metadata
                victims = [e.value for e in await kv.query() if self._metadata_of(e.value).get("run_id") == run_id]
            await self._delete_checkpoints(storage, victims)

    async def _copy_thread(self, storage: StorageInterface, source: str, target: str) -> None:
        for namespace in (CHECKPOINTS, WRITES):
            kv = storage.kv(namespace)
            entries: list[Entry] = await kv.query(tags={"thread_id": source})
            for entry in entries:
                value = {**entry.value, "thread_id": target}
                prefix = _thread_prefix(target, value["checkpoint_ns"])
                tail = _escape(value["checkpoint_id"])
                if namespace == WRITES:
                    tail += "|" + _escape(value["task_id"])
                await kv.set(prefix + tail, value, tags={**entry.tags, "thread_id": target})

    async def _prune(self, storage: StorageInterface, thread_ids: Sequence[str], strategy: str) -> None:
        if strategy not in ("keep_latest", "delete"):
            raise StorageError(f"prune strategy must be 'keep_latest' or 'delete', got {strategy!r}")
        kv = storage.kv(CHECKPOINTS)
        for thread_id in thread_ids:
            if strategy == "delete":
                await self._delete_thread(storage, thread_id)
                continue
            values = [e.value for e in await kv.query(tags={"thread_id": thread_id})]
            latest: dict[str, str] = {}
            for value in values:
                ns = value["checkpoint_ns"]
                latest[ns] = max(latest.get(ns, ""), value["checkpoint_id"])
            await self._delete_checkpoints(
                storage, [v for v in values if v["checkpoint_id"] != latest[v["checkpoint_ns"]]]
            )

    # ------------------------------------------------------------ async API

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """The checkpoint ``config`` names (its ``checkpoint_id``), or the thread's latest."""
        return await self._bridge.arun(lambda s: self._get_tuple(s, config))

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        """Checkpoints newest first; ``filter`` matches metadata values, ``before`` a checkpoint id."""
        for item in await self._bridge.arun(lambda s: self._list(s, config, filter, before, limit)):
            yield item

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """Store a checkpoint (all its channel values) with its metadata and parent."""
        return await self._bridge.arun(lambda s: self._put(s, config, checkpoint, metadata))

    async def aput_writes(
        self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str, task_path: str = ""
    ) -> None:
        """Store a task's pending writes against the checkpoint ``config`` names."""
        await self._bridge.arun(lambda s: self._put_writes(s, config, writes, task_id, task_path))

    async def adelete_thread(self, thread_id: str) -> None:
        """Remove every checkpoint and write of a thread, in every namespace."""
        await self._bridge.arun(lambda s: self._delete_thread(s, thread_id))

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Remove the checkpoints (and their writes) whose metadata ``run_id`` is one of ``run_ids``."""
        await self._bridge.arun(lambda s: self._delete_for_runs(s, list(run_ids)))

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Copy every checkpoint and write of a thread (the whole parent chain) to another thread id."""
        await self._bridge.arun(lambda s: self._copy_thread(s, source_thread_id, target_thread_id))

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """``keep_latest``: keep each namespace's newest checkpoint; ``delete``: remove the threads."""
        await self._bridge.arun(lambda s: self._prune(s, list(thread_ids), strategy))

    # ------------------------------------------------------------ sync API

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return self._bridge.run(lambda s: self._get_tuple(s, config))

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        yield from self._bridge.run(lambda s: self._list(s, config, filter, before, limit))

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return self._bridge.run(lambda s: self._put(s, config, checkpoint, metadata))

    def put_writes(
        self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str, task_path: str = ""
    ) -> None:
        self._bridge.run(lambda s: self._put_writes(s, config, writes, task_id, task_path))

    def delete_thread(self, thread_id: str) -> None:
        self._bridge.run(lambda s: self._delete_thread(s, thread_id))

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        self._bridge.run(lambda s: self._delete_for_runs(s, list(run_ids)))

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        self._bridge.run(lambda s: self._copy_thread(s, source_thread_id, target_thread_id))

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        self._bridge.run(lambda s: self._prune(s, list(thread_ids), strategy))


def _idx(row: Mapping[str, Any]) -> int:
    return int(row["idx"])


def _checkpoint_id(value: Mapping[str, Any]) -> str:
    return str(value["checkpoint_id"])


def _tags_match(value: Mapping[str, Any], tags: Mapping[str, str], saver: ConnectomeCheckpointSaver) -> bool:
    """For a checkpoint fetched by key: whether it passes the tag part of a filter."""
    metadata = saver._metadata_of(value)
    for name, tag in tags.items():
        if name.startswith("meta:") and _meta_tag(metadata.get(name[5:])) != tag:
            return False
    return True
