"""What every suite gets: the sizes of this run, a scratch folder, the Redis server, peers."""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

__all__ = ["FULL", "SMOKE", "Context", "Sizes"]


@dataclass(frozen=True)
class Sizes:
    """How much work each benchmark does; ``SMOKE`` only proves that everything runs."""

    repeats: int  # rounds per comparison (>= 5 in a real run)
    writes: int  # durable writes per batch
    reads: int  # reads per batch
    appends: int  # appends per batch (each batch appends to a history of its own)
    keys: int  # distinct ids a write or read batch cycles through
    histories: tuple[int, int, int]  # history lengths the append benchmark compares
    session_histories: tuple[int, int]  # histories loaded through SQLiteSession.get_items
    small_tree: int  # conversations in the "few" tree of the scale benchmark
    big_tree: int  # conversations (and cache entries) in the "many" tree
    expired: int  # expired cache entries planted before each cleanup
    scale_repeats: int  # rounds of the whole-tree operations (list, stats, cleanup)
    migrate: int  # conversations migrated per round
    concurrency: int  # coroutines of the concurrent variant
    per_coroutine: int  # operations each of them does
    memory_history: int  # messages in the history whose loading is measured for memory
    memory_migrate: tuple[int, int]  # conversations of the two migrations measured for memory


FULL = Sizes(
    repeats=7, writes=150, reads=1000, appends=40, keys=20,
    histories=(100, 1_000, 10_000), session_histories=(1_000, 10_000),
    small_tree=100, big_tree=100_000, expired=1_000, scale_repeats=5,
    migrate=10_000, concurrency=16, per_coroutine=20,
    memory_history=10_000, memory_migrate=(10_000, 100_000),
)  # fmt: skip

SMOKE = Sizes(
    repeats=2, writes=3, reads=10, appends=3, keys=3,
    histories=(10, 100, 1_000), session_histories=(100, 1_000),
    small_tree=10, big_tree=300, expired=20, scale_repeats=2,
    migrate=5, concurrency=4, per_coroutine=2,
    memory_history=100, memory_migrate=(20, 200),
)  # fmt: skip

# Peer packages of the ``bench`` extra: (import name, distribution name).
PEERS = {
    "kv": ("key_value.aio.stores.filetree", "py-key-value-aio"),
    "agents": ("agents.memory.sqlite_session", "openai-agents"),
    "diskcache": ("diskcache", "diskcache"),
    "langgraph_sqlite": ("langgraph.checkpoint.sqlite.aio", "langgraph-checkpoint-sqlite"),
}


@dataclass
class Context:
    sizes: Sizes
    smoke: bool
    tmp: Path  # scratch folder on the project's filesystem
    redis_url: str
    peers: dict[str, ModuleType] = field(default_factory=dict)
    missing_peers: dict[str, str] = field(default_factory=dict)  # distribution -> why
    # Clients and connections to close before the run ends (an open aiosqlite connection
    # keeps its thread, and so the process, alive).
    closers: list[Callable[[], Awaitable[object]]] = field(default_factory=list)
    postgres_dsn: str | None = None  # the run's PostgreSQL server, once a section started it (bench/backends.py)

    def load_peers(self) -> None:
        """Import each peer; a real run needs them all, a smoke run goes on without."""
        for short, (module, distribution) in PEERS.items():
            try:
                self.peers[short] = importlib.import_module(module)
            except ImportError as e:
                if not self.smoke:
                    raise SystemExit(
                        f"{distribution} is missing ({e}); install the bench extra: "
                        "pip install -e '.[bench]'  (or run with --smoke, which skips peers)"
                    ) from e
                self.missing_peers[distribution] = f"{type(e).__name__}: {e}"

    def peer(self, short: str) -> ModuleType | None:
        return self.peers.get(short)

    def folder(self, name: str) -> Path:
        path = self.tmp / name
        path.mkdir(parents=True, exist_ok=True)
        return path
