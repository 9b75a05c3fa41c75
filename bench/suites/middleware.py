"""The cost of the middleware chain on a file-tree load_conversation."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

from connectome_storage import StorageInterface, create_file_storage
from connectome_storage.middleware import Encryption, Middleware, MiddlewareContext

from ..context import Context
from ..data import document
from ..harness import Section, Variant, compare, each

__all__ = ["run"]

INTRO = """\
`load_conversation` of a 2 KB document on the file tree, without middleware (the
baseline), with `middleware=[Middleware()]` (a middleware that overrides no hook: the
storage installs nothing, so it should cost nothing), with a middleware that overrides
every per-call hook with one that does nothing (the cost of running the chain itself:
a context, the hooks awaited, the around layer) and with `Encryption` (AES-256-GCM:
decrypting the value and parsing its JSON once more). Each variant has a tree of its own
holding the same documents."""


class PassThrough(Middleware):
    """Overrides every per-call hook with one that does nothing."""

    async def before_call(self, ctx: MiddlewareContext) -> None:
        return None

    async def before_write(self, ctx: MiddlewareContext, value: Any) -> Any:
        return value

    async def after_read(self, ctx: MiddlewareContext, value: Any) -> Any:
        return value

    async def after_write(self, ctx: MiddlewareContext) -> None:
        return None

    async def on_error(self, ctx: MiddlewareContext, error: BaseException) -> None:
        return None

    async def after_call(self, ctx: MiddlewareContext, error: BaseException | None) -> None:
        return None

    async def around(self, ctx: MiddlewareContext, call: Callable[[], Awaitable[Any]]) -> Any:
        return await call()


async def run(ctx: Context) -> Section:
    sizes = ctx.sizes
    root = ctx.folder("middleware")
    ids = [f"conv_{i:03d}" for i in range(sizes.keys)]
    section = Section("middleware", "The middleware chain's overhead on a file-tree load", INTRO)
    chains: dict[str, list[Middleware]] = {
        "none": [],
        "empty": [Middleware()],
        "pass": [PassThrough()],
        "encryption": [Encryption(os.urandom(32))],
    }
    storages: dict[str, StorageInterface] = {}
    for name, middleware in chains.items():
        storage = create_file_storage(root / name, middleware=middleware)
        await storage.initialize()
        for i, conversation_id in enumerate(ids):
            await storage.store_conversation(conversation_id, document(i))
        storages[name] = storage

    def loader(name: str) -> Callable[[int], Awaitable[None]]:
        storage = storages[name]

        async def load(i: int) -> None:
            assert await storage.load_conversation(ids[i % len(ids)]) is not None

        return load

    section.comparisons.append(
        await compare(
            "middleware.load",
            "load a 2 KB conversation document through a middleware chain",
            [
                Variant("no middleware", each(loader("none"))),
                Variant("[Middleware()]", each(loader("empty")), "overrides nothing: nothing installed"),
                Variant("[every hook, doing nothing]", each(loader("pass")), "the chain itself"),
                Variant("[Encryption(key)]", each(loader("encryption")), "AES-256-GCM"),
            ],
            ops=sizes.reads,
            repeats=sizes.repeats,
            warmup=len(ids),
        )
    )
    for storage in storages.values():
        await storage.shutdown()
    return section
