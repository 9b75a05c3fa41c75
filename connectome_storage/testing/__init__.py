"""The storage contract as a pytest suite: run it on your own backend in one line.

Every test the project's own backends pass (memory, file tree, SQLite, Redis) is here, and
a backend of yours runs all of them from one test module that provides one fixture,
``storage_builder``::

    import pytest

    from connectome_storage.testing import *  # noqa: F403  (the whole contract)


    @pytest.fixture
    def storage_builder(tmp_path):
        return lambda clock, **options: MyStorage({"clock": clock, "path": str(tmp_path), **options})

``storage_builder`` returns a callable ``(clock, **options) -> StorageInterface`` (see
``StorageBuilder``): each call within one test returns a new, uninitialized storage over
the same data, as a second process would open the same store; ``clock`` is the test's
``FakeClock`` (use it as the storage's clock, so TTLs and time stamps are exact) and
``options`` are storage options some tests pass (``default_cache_ttl=60``). pytest collects
the test functions and fixtures the star import brings into the module. From it the suite
builds its own fixtures: ``clock``, ``make_storage(**options)`` (a storage, uninitialized)
and ``storage`` (initialized for the test, shut down after it); your tests can use them too.

The tests are ``async def``: they need pytest-asyncio in auto mode (``asyncio_mode =
"auto"`` under ``[tool.pytest.ini_options]``, or ``--asyncio-mode=auto``). Without it each
test fails with a message naming that setting. ``pip install connectome-storage[testing]``
installs pytest and pytest-asyncio; importing ``connectome_storage`` itself never imports
pytest.

Contents, each module with its own ``__all__`` of tests: ``core`` (lifecycle, conversations,
raw messages, memories, chunks, reasoning chains, cache, system state, ids, health, stats),
``kv`` (key-value collections), ``conversations`` (the conversation store), ``messages``
(the message store) and ``transactions``. A new module joins the suite with one line below;
its ``__all__`` names its tests, and a name two modules both export is refused at import,
since the later one would hide the earlier.
"""

from __future__ import annotations

from types import ModuleType

from ._fixtures import *  # noqa: F403
from .conversations import *  # noqa: F403
from .core import *  # noqa: F403
from .kv import *  # noqa: F403
from .messages import *  # noqa: F403
from .transactions import *  # noqa: F403


def _exports(namespace: dict[str, object]) -> list[str]:
    """The names of every submodule's ``__all__``, star-imported above, in import order."""
    owners: dict[str, str] = {}
    for module in list(namespace.values()):
        if not (isinstance(module, ModuleType) and module.__name__.startswith(f"{__name__}.")):
            continue
        for name in getattr(module, "__all__", ()):
            if name in owners:
                raise ImportError(
                    f"{name} is exported by both {owners[name]} and {module.__name__}: rename one, since a star "
                    "import of the suite keeps only the later one"
                )
            if namespace.get(name) is not getattr(module, name):
                raise ImportError(f"{module.__name__}.{name} is not in {__name__}: star-import {module.__name__} there")
            owners[name] = module.__name__
    return list(owners)


__all__ = _exports(globals())
