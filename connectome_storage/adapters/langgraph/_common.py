"""What the LangGraph checkpoint saver and store share: collection names, value encoding, keys."""

from __future__ import annotations

import base64
import hashlib
import logging
import math
from collections.abc import Mapping
from typing import Any

from langchain_core._api import suppress_langchain_beta_warning
from langchain_core.load import dumpd, load
from langchain_core.messages import BaseMessage
from langgraph.checkpoint.serde.base import SerializerProtocol

from ...codec import _INT_MAX, _INT_MIN, MAX_DEPTH, is_utf8
from ...errors import InvalidKeyError, SerializationError
from ...naming import check_id

logger = logging.getLogger("connectome_storage")

CHECKPOINTS = "langgraph_checkpoints"
WRITES = "langgraph_writes"
STORE = "langgraph_store"

# How many entries a filtered listing reads at a time.
PAGE = 64
# A metadata str longer than this is filtered in Python rather than through a tag.
MAX_TAG_TEXT = 200
# Room kept in a checkpoint key prefix for "{checkpoint_id}|{task_id}" (two uuids and more).
KEY_TAIL_ROOM = 120


# ------------------------------------------------------------------ value encoding


def _json_ready(value: Any, depth: int = 0) -> bool:
    """Whether ``value`` is JSON of exact built-in types that the storage keeps exactly.

    Exact types, so a value comes back equal *and* of the same type (an enum or a tuple goes
    to the serde instead); the same limits as the storage's own check (64-bit ints, finite
    floats, valid UTF-8, nesting depth), in one pass because this runs on every channel value.
    """
    kind = type(value)
    if kind is str:
        return is_utf8(value)
    if kind is int:
        return bool(_INT_MIN <= value <= _INT_MAX)
    if kind is float:
        return math.isfinite(value)
    if kind is bool or value is None:
        return True
    if depth >= MAX_DEPTH:
        return False
    if kind is list:
        for item in value:  # noqa: SIM110 - a plain loop: all() over a generator is slower here
            if not _json_ready(item, depth + 1):
                return False
        return True
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str or not is_utf8(key) or not _json_ready(item, depth + 1):
                return False
        return True
    return False


def _lc_form(value: Any) -> Any | None:
    """LangChain's JSON form of a message (or a list of them), if it loads back equal.

    Only chat messages: they are what graph state holds most, and loading is restricted
    to them (``allowed_objects="messages"``), so a stored entry cannot make the loader
    build any other class. Everything else goes through the serde.
    """
    items = value if type(value) is list and value else [value]
    if not all(isinstance(item, BaseMessage) for item in items):
        return None
    try:
        form = dumpd(value)
        if _json_ready(form) and _load_messages(form) == value:
            return form
    except Exception:  # a message LangChain cannot serialize (an odd additional_kwargs): the serde takes it
        logger.debug("langgraph adapter: %s has no LangChain JSON form", type(value).__name__, exc_info=True)
    return None


def _load_messages(form: Any) -> Any:
    with suppress_langchain_beta_warning():
        return load(form, allowed_objects="messages")


class _Codec:
    """Values <-> JSON: plain JSON as it is, LangChain objects as ``dumpd``, the rest via the serde."""

    def __init__(self, serde: SerializerProtocol, readable: bool) -> None:
        self.serde = serde
        self.readable = readable

    def encode(self, value: Any, where: str) -> tuple[Any, str | None]:
        """``(json, None)`` for a value stored as it is, else ``(text, type)``."""
        if self.readable:
            if _json_ready(value):
                return value, None
            form = _lc_form(value)
            if form is not None:
                return form, "lc"
        try:
            kind, data = self.serde.dumps_typed(value)
        except Exception as e:  # the serde's own error class, whatever it is
            raise SerializationError(
                f"LangGraph's serializer cannot store {where} ({type(value).__name__}): {e}", location=where
            ) from e
        if kind == "json":
            return data.decode("utf-8"), "json"
        return base64.b64encode(data).decode("ascii"), kind

    def decode(self, stored: Any, kind: str | None) -> Any:
        if kind is None:
            return stored
        if kind == "lc":
            return _load_messages(stored)
        if kind == "json":
            return self.serde.loads_typed(("json", stored.encode("utf-8")))
        return self.serde.loads_typed((kind, base64.b64decode(stored)))


# ------------------------------------------------------------------ keys


def _escape(part: str) -> str:
    # "|" separates the parts of a key; "%" escapes; "#" marks a hashed part.
    return part.replace("%", "%25").replace("|", "%7C").replace("#", "%23")


def _hashed(part: str) -> str:
    return "#" + hashlib.sha256(part.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _thread_prefix(thread_id: str, checkpoint_ns: str) -> str:
    """``{thread}|{ns}|``: the key prefix of one thread's namespace, short enough for any backend.

    A part too long for a file name once the rest of a key is added is replaced by its
    hash: the entry still holds the original ids, only the key is shortened.
    """
    thread, ns = _escape(thread_id), _escape(checkpoint_ns)
    for candidate in (f"{thread}|{ns}|", f"{thread}|{_hashed(checkpoint_ns)}|"):
        try:
            check_id(candidate + "x" * KEY_TAIL_ROOM, "key")
            return candidate
        except InvalidKeyError:
            continue
    return f"{_hashed(thread_id)}|{_hashed(checkpoint_ns)}|"


def _glob(prefix: str) -> str:
    """A glob matching every key that starts with ``prefix`` (its glob characters made literal)."""
    return "".join(f"[{char}]" if char in "*?[" else char for char in prefix) + "*"


def _meta_tags(metadata: Mapping[str, Any]) -> dict[str, str]:
    """Tags for the metadata values a filter can match through a tag query."""
    tags: dict[str, str] = {}
    for name, value in metadata.items():
        tag = _meta_tag(value)
        if tag is not None and name and "\x00" not in name and _json_ready(name):
            tags[f"meta:{name}"] = tag
    return tags


def _meta_tag(value: Any) -> str | None:
    if type(value) is str and len(value) <= MAX_TAG_TEXT and "\x00" not in value and _json_ready(value):
        return "s:" + value
    if type(value) is int:
        return f"i:{value}"
    return None
