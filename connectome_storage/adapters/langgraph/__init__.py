"""LangGraph: ``ConnectomeCheckpointSaver`` (``BaseCheckpointSaver``) and ``ConnectomeStore`` (``BaseStore``).

```python
from langgraph.graph import StateGraph
from connectome_storage import create_storage_from_env
from connectome_storage.adapters.langgraph import ConnectomeCheckpointSaver, ConnectomeStore

storage = create_storage_from_env()               # not initialized: the adapters open it
graph = builder.compile(checkpointer=ConnectomeCheckpointSaver(storage), store=ConnectomeStore(storage))
graph.invoke({"count": 1}, {"configurable": {"thread_id": "t1"}})
```

Both live in key-value collections of the storage (docs/adapters.md shows the stored tree):

- ``langgraph_checkpoints``: one entry per checkpoint, key ``{thread}|{ns}|{checkpoint_id}``,
  tags ``thread_id``, ``checkpoint_ns`` and ``meta:{name}`` for each str/int metadata value
  (so a metadata filter and ``delete_for_runs`` are tag queries). Checkpoint ids sort by
  time, so "newest first" is the key order, descending.
- ``langgraph_writes``: one entry per (checkpoint, task) holding that task's pending writes,
  key ``{thread}|{ns}|{checkpoint_id}|{task_id}``.
- ``langgraph_store``: ``ConnectomeStore``'s items, key ``{label}.{label}..{key}`` (labels
  cannot contain ``.``, so ``..`` ends the namespace).

Values stay readable where the data allows: a JSON value (dict, list, str, int, float,
bool, None) is stored as it is, LangChain messages and other LangChain ``Serializable``
objects as LangChain's own JSON form (``dumpd``), and anything else through the saver's
serializer (``serde.dumps_typed``) as base64 with its type recorded beside it under
``"encoded"``. With a custom ``serde`` (an ``EncryptedSerializer``, say) every value goes
through it, so nothing is written in clear.

Sync and async methods both work, from any thread and inside a running loop:
``adapters._bridge`` says where storage calls run. Needs the ``langgraph`` extra.
"""

from __future__ import annotations

try:
    import langgraph.checkpoint.base
    import langgraph.store.base  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "connectome_storage.adapters.langgraph needs langgraph: pip install 'connectome-storage[langgraph]'"
    ) from e

from ._checkpoint import ConnectomeCheckpointSaver
from ._common import CHECKPOINTS, STORE, WRITES
from ._store import ConnectomeStore

__all__ = ["CHECKPOINTS", "STORE", "WRITES", "ConnectomeCheckpointSaver", "ConnectomeStore"]
