"""Re-encrypt every stored value under the current key (``connectome-storage rotate-key``).

Resumable and safe to interrupt: each entity is rewritten in one atomic write (a memory,
a cache entry or a key-value entry on its own), and a value already under the current key
is left alone, so running it again after a crash finishes the job. Each kind is written
back the way ``migrate`` writes it: a log in one ``_replace_log``, memories in place (their
order kept), cache and key-value entries with their own times and tags.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..kv import KVRecord, KVSelect
from ._base import MiddlewareContext
from ._chain import bare, whole_store

if TYPE_CHECKING:
    from ..interface import StorageInterface
    from .encryption import Encryption

__all__ = ["RotationReport", "rotate_key"]


@dataclasses.dataclass
class RotationReport:
    """What ``rotate_key`` did: ``values`` re-encrypted (one by one: a message, a memory, a
    chain, an entry, ...), ``entities`` rewritten, ``current`` values already under the
    current key and left alone, ``expired_removed`` expired cache and key-value entries
    removed rather than re-encrypted."""

    values: int = 0
    entities: int = 0
    current: int = 0
    expired_removed: int = 0

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


async def rotate_key(
    storage: StorageInterface, encryption: Encryption, *, progress: Callable[[int, int], Any] | None = None
) -> RotationReport:
    """Re-encrypt every value of ``storage`` (initialized) under ``encryption``'s current key,
    reading values written under its old keys and plain values alike.

    Raises DecryptionError, naming the entity, for a value under a key ``encryption`` does
    not have; what was rewritten before it stays rewritten.
    """
    rotation = _Rotation(bare(storage), encryption, progress)
    return await whole_store(storage, "rotate_key", True, rotation.run)  # type: ignore[no-any-return]


class _Rotation:
    def __init__(
        self, storage: StorageInterface, encryption: Encryption, progress: Callable[[int, int], Any] | None
    ) -> None:
        self.storage = storage
        self.encryption = encryption
        self.progress = progress
        self.report = RotationReport()

    def ctx(self, kind: str, key: str, namespace: str | None = None) -> MiddlewareContext:
        # The same context the chain gives these values, so the associated data matches.
        return MiddlewareContext("rotate_key", kind, key, self.storage.backend_name, namespace, True, 0.0)

    def stale(self, value: Any) -> bool:
        return self.encryption.stored_key_id(value) != self.encryption.key_id

    def renew(self, ctx: MiddlewareContext, value: Any) -> Any:
        return self.encryption.encrypt(ctx, self.encryption.decrypt(ctx, value))

    def tally(self, values: list[Any]) -> list[bool]:
        flags = [self.stale(value) for value in values]
        self.report.current += flags.count(False)
        return flags

    def rewrote(self, count: int) -> None:
        self.report.values += count
        self.report.entities += 1

    async def run(self) -> RotationReport:
        from ..interface import Kind

        storage = self.storage
        now = storage._now_ms()
        # Expired entries are removed, not re-encrypted: they are gone for every reader already.
        self.report.expired_removed = await storage._delete_expired_cache(now)
        self.report.expired_removed += await storage._kv_remove_expired(None, now)
        sections: list[tuple[list[str], Callable[[str], Any]]] = [
            (await storage.list_conversations(), self.conversation),
            (await storage.list_agents(), lambda agent: self.log(Kind.REASONING_CHAINS, "reasoning_chains", agent)),
            (sorted(await storage._list_all_cache_keys()), self.cache_entry),
            (await storage.list_system_states(), self.system_state),
            (await storage.list_namespaces(), self.namespace),
            (sorted(await storage._msg_ids()), self.message),
        ]
        total = sum(len(ids) for ids, _ in sections)
        done = 0
        if self.progress is not None:
            self.progress(0, total)
        for ids, rotate in sections:
            for identifier in ids:
                await rotate(identifier)
                done += 1
                if self.progress is not None:
                    self.progress(done, total)
        return self.report

    async def conversation(self, conversation_id: str) -> None:
        from ..interface import Kind

        storage = self.storage
        document = await storage.load_conversation(conversation_id)
        if document is not None and self.tally([document])[0]:
            await storage.store_conversation(
                conversation_id, self.renew(self.ctx("conversation", conversation_id), document)
            )
            self.rewrote(1)
        await self.log(Kind.RAW_MESSAGES, "raw_messages", conversation_id)
        chunks = await storage.load_chunks(conversation_id)
        if any(self.tally(chunks)):
            ctx = self.ctx("chunks", conversation_id)
            await storage.store_chunks(conversation_id, [self.renew(ctx, chunk) for chunk in chunks])
            self.rewrote(len(chunks))
        ctx = self.ctx("memories", conversation_id)
        for memory in await storage.load_memories(conversation_id):
            memory_id = memory["memory_id"]
            value = {k: v for k, v in memory.items() if k != "memory_id"}
            if self.tally([value])[0]:
                # In place: the memory keeps its position in the order.
                await storage._put_member(
                    conversation_id, memory_id, {**self.renew(ctx, value), "memory_id": memory_id}
                )
                self.rewrote(1)

    async def log(self, kind: Any, kind_name: str, key: str) -> None:
        items = await self.storage._read_log(kind, key)
        if any(self.tally(items)):
            ctx = self.ctx(kind_name, key)
            await self.storage._replace_log(kind, key, [self.renew(ctx, item) for item in items])
            self.rewrote(len(items))

    async def cache_entry(self, cache_key: str) -> None:
        from ..interface import CacheEntry

        entry = await self.storage._read_cache(cache_key)
        if entry is not None and self.tally([entry.data])[0]:
            data = self.renew(self.ctx("cache", cache_key), entry.data)
            await self.storage._write_cache(CacheEntry(cache_key, data, entry.created_ms, entry.expires_ms))
            self.rewrote(1)

    async def system_state(self, state_key: str) -> None:
        from ..interface import Kind

        if state_key not in await self.storage._list_system_states():
            return
        value = await self.storage._read_document(Kind.SYSTEM, state_key)
        if self.tally([value])[0]:
            await self.storage._write_document(Kind.SYSTEM, state_key, self.renew(self.ctx("system", state_key), value))
            self.rewrote(1)

    async def message(self, message_id: str) -> None:
        from ._messages import ROUTING

        message = await self.storage._msg_get(message_id)
        if message is None:
            return
        content = {k: v for k, v in message.items() if k not in ROUTING}
        if self.tally([content])[0]:
            renewed = self.renew(self.ctx("messages", message_id), content)
            routing = {field: message[field] for field in ROUTING}
            await self.storage._msg_put({**routing, **renewed}, if_absent=False)
            self.rewrote(1)

    async def namespace(self, namespace: str) -> None:
        storage = self.storage
        size = storage._kv_scan_batch
        after: str | None = None
        while True:
            batch = await storage._kv_select(namespace, KVSelect(limit=size, after_key=after), storage._now_ms())
            for record, stale in zip(batch, self.tally([r.value for r in batch]), strict=True):
                if stale:
                    value = self.renew(self.ctx("kv", record.key, namespace), record.value)
                    renewed = KVRecord(
                        record.key, value, record.tags, record.created_ms, record.updated_ms, record.expires_ms
                    )
                    # One entry, one atomic put: its tags and times are kept as they are.
                    await storage._kv_put(namespace, [renewed], storage._now_ms(), if_not_exists=False)
                    self.rewrote(1)
            if len(batch) < size:
                return
            after = batch[-1].key
