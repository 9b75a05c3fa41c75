"""migrate(): copy everything from one storage into another, losslessly.

Works between any two backends through the public API plus four hooks that carry what
the public API cannot: ``_replace_log`` (a chain history in one write, so a re-run does
not append it twice), ``_list_all_cache_keys``/``_read_cache``/``_write_cache`` (cache
entries with their own creation and expiry times) and ``_delete`` (a conversation part
the source does not have). Conversations are walked with ``_conversation_ids`` (streamed
where the backend can) and each is read whole with ``_conversation_parts``; a destination
with ``_migrate_batch`` set gets them in batches through ``_replace_conversations`` (one
durable write each). Every copy replaces what the destination holds under the same id, so running it again
changes nothing, and a file tree migrated to another backend and back is byte-identical
to the original.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Any

from .codec import encode
from .conversations import MetaRecord
from .errors import CorruptedDataError
from .interface import Kind, StorageInterface, _check_dict, _check_dict_list
from .kv import KVRecord, KVSelect
from .middleware._chain import bare, whole_store
from .naming import check_id

__all__ = ["MigrationReport", "migrate"]

Progress = Callable[[int, int], Any]


@dataclasses.dataclass
class MigrationReport:
    """What ``migrate`` copied.

    ``conversations``, ``conversation_metadata`` (conversations that have metadata),
    ``chunks`` (chunk lists), ``cache_entries``, ``system_states`` and ``kv_entries`` count
    entities; ``raw_messages``, ``memories`` and ``reasoning_chains`` count items one by
    one; ``messages`` counts message store messages and ``read_states`` the agents whose
    read state was copied. ``skipped_expired`` counts cache entries and conversations left
    behind because they had expired (expired key-value entries are left behind too,
    uncounted).
    """

    conversations: int = 0
    conversation_metadata: int = 0
    raw_messages: int = 0
    memories: int = 0
    chunks: int = 0
    reasoning_chains: int = 0
    cache_entries: int = 0
    system_states: int = 0
    kv_entries: int = 0
    messages: int = 0
    read_states: int = 0
    skipped_expired: int = 0

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


async def migrate(
    source: StorageInterface, destination: StorageInterface, *, progress: Progress | None = None
) -> MigrationReport:
    """Copy every conversation (all parts), reasoning chain history, unexpired cache entry
    (keeping its creation and expiry times), system state and live key-value entry (with
    its tags and times), and the message store's messages and read states, from ``source``
    to ``destination``; both must be initialized. A conversation's metadata (times, count,
    TTL) travels with it; an expired one is left behind and counted in ``skipped_expired``.

    Entities the destination holds under the same id are replaced; others are left alone.
    An entity that another process deletes from the source while this runs (listed, then
    gone when read) is skipped: nothing is written for it and it is not counted.
    ``progress(done, total)`` is called once before the first entity and after each one,
    ``done`` counting entities (conversations, expired ones included, agents, cache keys,
    state keys, key-value namespaces, messages, read states) up to ``total``. The
    conversations are counted by a first walk of their ids, so one added while this runs
    can make ``done`` pass that count: ``total`` then grows with ``done``, never below it.
    Expiry is judged by the source's clock when each conversation is read.

    Raises StorageNotInitializedError if either storage is not initialized, and whatever
    StorageError a read or write raises (CorruptedDataError for a source entity that does
    not parse: nothing is skipped silently).

    Conversation ids are streamed from the source (file tree, SQLite, PostgreSQL; Redis
    and the memory backend list them), never held as a list, and values are read one
    conversation (or one batch) at a time, so memory does not grow with the number of
    conversations; the ids of the other kinds (agents, cache keys, states, namespaces,
    messages) are listed up front. Into a destination whose writes cost one durable
    commit whatever they hold (SQLite), conversations are written in batches, one
    all-or-nothing write per batch: a migration killed half-way leaves whole batches
    there, and running it again finishes it (elsewhere each part is its own write, and a
    re-run completes it too).

    Values are copied as they are stored, past both storages' middleware: encrypted or
    compressed values stay so, byte for byte (open the destination with the same
    ``Encryption`` keys to read them), and a plain value stays plain.
    """

    # Stored values are copied as they are, past any middleware: an encrypted or compressed
    # value arrives byte-identical, readable with the same middleware (and keys) on the other
    # side. Each side's middleware sees the whole copy as one "migrate" call.
    async def copy() -> MigrationReport:
        return await _migrate(bare(source), bare(destination), progress)

    async def into_destination() -> MigrationReport:
        return await whole_store(destination, "migrate", True, copy)  # type: ignore[no-any-return]

    return await whole_store(source, "migrate", False, into_destination)  # type: ignore[no-any-return]


async def _migrate(
    source: StorageInterface, destination: StorageInterface, progress: Progress | None
) -> MigrationReport:
    # Every listing goes through public methods, so an uninitialized storage is refused
    # before anything is written. Conversations, the one kind a source holds by the
    # hundred thousand, are not listed: their ids are streamed twice (a count for
    # ``progress``, then the copy), so memory does not grow with their number; the other
    # kinds' ids are listed up front. Values are read one entity, or one batch of
    # conversations, at a time.
    source._require_initialized()
    await destination.list_conversations()
    report = MigrationReport()
    conversations = 0
    if progress is not None:
        async with aclosing(source._conversation_ids()) as ids:
            async for _conversation_id in ids:
                conversations += 1
    sections = [
        _Section(await source.list_agents(), _copy_reasoning_chains),
        _Section(sorted(await source._list_all_cache_keys()), _copy_cache_entry),
        _Section(await source.list_system_states(), _copy_system_state),
        _Section(await source.list_namespaces(), _copy_namespace),
        _Section(sorted(await source._msg_ids()), _copy_message),
        _Section(sorted(await source._msg_readers()), _copy_read_state),
    ]
    total = conversations + sum(len(section.ids) for section in sections)
    done = 0

    def tick() -> None:
        nonlocal done, total
        done += 1
        total = max(total, done)  # a conversation added since the count
        if progress is not None:
            progress(done, total)

    if progress is not None:
        progress(0, total)
    async with aclosing(source._conversation_ids()) as ids:
        await _copy_conversations(source, destination, ids, report, tick)
    for section in sections:
        for identifier in section.ids:
            await section.copy(source, destination, identifier, report)
            tick()
    return report


# One kind of entity: the ids listed in the source, and how to copy one of them (which
# counts what it copied in the report, and skips an id that has vanished since listing).
Copier = Callable[[StorageInterface, StorageInterface, str, MigrationReport], Awaitable[None]]


@dataclasses.dataclass(frozen=True)
class _Section:
    ids: list[str]
    copy: Copier


# A batch of conversations is also cut once it holds this many items (messages, memories,
# chunk lists, documents), so that a batch of long histories stays small in memory.
BATCH_ITEMS = 5_000


@dataclasses.dataclass
class _Conversation:
    """Every part of one source conversation, as stored."""

    conversation_id: str
    document: dict[str, Any] | None
    messages: list[dict[str, Any]]
    chunks: list[dict[str, Any]]
    memories: list[dict[str, Any]]
    metadata: MetaRecord | None

    def items(self) -> int:
        return 1 + len(self.messages) + len(self.memories) + (1 if self.chunks else 0)

    def checked(self) -> tuple[str, tuple[MetaRecord | None, Any, Any, list[Any], list[dict[str, Any]]]]:
        """The parts, refused as the public store methods would refuse them (SerializationError,
        InvalidKeyError), as ``_replace_conversations`` takes them."""
        if self.document is not None:
            _check_dict(self.document, "data")
        _check_dict_list(self.messages, "messages")
        _check_dict_list(self.chunks, "chunks")
        members: dict[str, dict[str, Any]] = {}
        for memory in self.memories:
            memory_id = memory["memory_id"]
            check_id(memory_id, "memory_id")
            _check_dict(memory, "memory")
            members[memory_id] = memory  # a repeated id replaces the memory in its place, as store_memory
        return self.conversation_id, (self.metadata, self.document, self.chunks, self.messages, list(members.values()))

    def count(self, report: MigrationReport) -> None:
        report.conversations += 1
        report.conversation_metadata += self.metadata is not None
        report.raw_messages += len(self.messages)
        report.chunks += 1 if self.chunks else 0
        report.memories += len(self.memories)


async def _copy_conversations(
    source: StorageInterface,
    destination: StorageInterface,
    ids: AsyncIterator[str],
    report: MigrationReport,
    tick: Callable[[], None],
) -> None:
    """Each conversation by its own writes, or, where the destination says a write costs one
    durable commit whatever it holds (``_migrate_batch``), batches of them read first, then
    written in one write (``_replace_conversations``): all of a batch or none of it is in
    the destination, even after a kill."""
    limit = destination._migrate_batch
    if limit <= 0:
        async for conversation_id in ids:
            conversation = await _read_conversation(source, conversation_id, report)
            if conversation is not None:
                await _write_conversation(destination, conversation)
                conversation.count(report)
            tick()
        return
    # While one batch is written (its commit waits on the destination's thread and disk),
    # the next one is read: at most two batches in memory, one writer at a time.
    writing: asyncio.Task[None] | None = None
    try:
        batch: list[_Conversation | None] = []
        items = 0
        async for conversation_id in ids:
            conversation = await _read_conversation(source, conversation_id, report)
            batch.append(conversation)
            items += conversation.items() if conversation is not None else 0
            if len(batch) >= limit or items >= BATCH_ITEMS:
                if writing is not None:
                    await writing
                writing = asyncio.ensure_future(_write_batch(destination, batch, report, tick))
                batch, items = [], 0
        if writing is not None:
            await writing
        if batch:
            await _write_batch(destination, batch, report, tick)
    finally:
        if writing is not None and not writing.done():
            # A read failed (or this was cancelled) while a batch was being written: the
            # batch ends first, committed or rolled back, before the error goes on.
            await asyncio.wait([writing])
            if not writing.cancelled():
                writing.exception()  # retrieved: the read's error is the one that propagates


async def _write_batch(
    destination: StorageInterface,
    batch: list[_Conversation | None],
    report: MigrationReport,
    tick: Callable[[], None],
) -> None:
    present = [copy for copy in batch if copy is not None]
    if present and not await destination._replace_conversations([copy.checked() for copy in present]):
        for copy in present:  # a destination without the hook: one write per part
            await _write_conversation(destination, copy)
    for counted in batch:  # counted once durable
        if counted is not None:
            counted.count(report)
        tick()


async def _read_conversation(
    source: StorageInterface, conversation_id: str, report: MigrationReport
) -> _Conversation | None:
    """Every part of one conversation, read at once past the middleware (as the public
    reads of ``bare(source)`` would return them); None when it is gone since it was
    listed, or expired (then counted in ``skipped_expired``)."""
    check_id(conversation_id, "conversation_id")  # as the public reads refuse a listed id
    source._require_initialized()  # FileStorage: a dead process's transaction is finished first
    now_ms = source._now_ms()
    metadata, document, chunks, messages, memories = await source._conversation_parts(conversation_id, now_ms)
    if metadata is not None and metadata.expired(now_ms):
        report.skipped_expired += 1
        return None
    if document is None and metadata is None and not (messages or chunks or memories):
        return None  # deleted since it was listed: a conversation exists while any part is stored
    return _Conversation(conversation_id, document, messages, chunks or [], memories, metadata)


async def _write_conversation(destination: StorageInterface, conversation: _Conversation) -> None:
    conversation_id = conversation.conversation_id
    if conversation.document is not None:
        await destination.store_conversation(conversation_id, conversation.document)
    else:
        await destination._delete(Kind.CONVERSATION, conversation_id)
    await destination.store_raw_messages(conversation_id, conversation.messages)  # [] removes the part
    await destination.store_chunks(conversation_id, conversation.chunks)

    # store_memory keeps an existing memory's place, so when the destination already holds
    # these memories in another order (or others besides), start it over.
    memories = conversation.memories
    wanted = [memory["memory_id"] for memory in memories]
    present = [memory["memory_id"] for memory in await destination.load_memories(conversation_id)]
    if present != wanted:
        for memory_id in present:
            await destination.delete_memory(conversation_id, memory_id)
    for memory in memories:
        await destination.store_memory(conversation_id, memory["memory_id"], memory)
    # Last: on Redis, writing the metadata gives every key of the conversation its expiry.
    metadata = conversation.metadata
    if metadata is not None or await destination._meta_read(conversation_id, destination._now_ms()) is not None:
        await destination._meta_put(conversation_id, metadata)


async def _copy_reasoning_chains(
    source: StorageInterface, destination: StorageInterface, agent_id: str, report: MigrationReport
) -> None:
    chains = await source.load_reasoning_chains(agent_id)
    if chains:  # [] when the agent's history was deleted since it was listed
        await destination._replace_log(Kind.REASONING_CHAINS, agent_id, chains)
        report.reasoning_chains += len(chains)


async def _copy_cache_entry(
    source: StorageInterface, destination: StorageInterface, cache_key: str, report: MigrationReport
) -> None:
    entry = await source._read_cache(cache_key)
    if entry is None:
        return  # deleted since it was listed
    if entry.expired(source._now_ms()):
        report.skipped_expired += 1
    else:
        await destination._write_cache(entry)
        report.cache_entries += 1


async def _copy_system_state(
    source: StorageInterface, destination: StorageInterface, state_key: str, report: MigrationReport
) -> None:
    value = await source.load_system_state(state_key)
    # None is both a storable value and what a missing key loads as: only a key that is
    # still listed holds a stored None; one that is gone was deleted since it was listed.
    if value is None and state_key not in await source.list_system_states():
        return
    await destination.store_system_state(state_key, value)
    report.system_states += 1


async def _copy_namespace(
    source: StorageInterface, destination: StorageInterface, namespace: str, report: MigrationReport
) -> None:
    # Page through the namespace in key order, so memory stays flat however large it is.
    size = source._kv_scan_batch
    after: str | None = None
    while True:
        select = KVSelect(limit=size, after_key=after)
        batch = await source._kv_select(namespace, select, source._now_ms())
        held = await destination._kv_get(namespace, [record.key for record in batch]) if batch else {}
        changed = [record for record in batch if _fingerprint(held.get(record.key)) != _fingerprint(record)]
        if changed:
            # Deleted first: a put keeps the created_at of an entry it replaces, and the copy
            # must carry the source's times exactly.
            keys = [record.key for record in changed]
            await destination._kv_delete(namespace, keys, destination._now_ms())
            await destination._kv_put(namespace, changed, destination._now_ms(), if_not_exists=False)
        report.kv_entries += len(batch)
        if len(batch) < size:
            return
        after = batch[-1].key


def _fingerprint(record: KVRecord | None) -> tuple[Any, ...] | None:
    """What must match for an entry to be a copy already (the value by its bytes: 1 == 1.0)."""
    if record is None:
        return None
    return (encode(record.value, pretty=False), record.tags, record.created_ms, record.updated_ms, record.expires_ms)


async def _copy_message(
    source: StorageInterface, destination: StorageInterface, message_id: str, report: MigrationReport
) -> None:
    message = await source._msg_get(message_id)
    if message is None:
        return  # gone since it was listed
    try:
        held = await destination._msg_get(message_id)
    except CorruptedDataError:
        held = None  # replaced by the copy
    if held is None or encode(held, pretty=False) != encode(message, pretty=False):
        await destination._msg_put(message, if_absent=False)  # a copy replaces what is there
    report.messages += 1


async def _copy_read_state(
    source: StorageInterface, destination: StorageInterface, agent_id: str, report: MigrationReport
) -> None:
    ids = await source._msg_read_ids(agent_id)
    if not ids:
        return  # gone since it was listed
    if await destination._msg_read_ids(agent_id) != ids:
        await destination._msg_set_read(agent_id, ids)
    report.read_states += 1
