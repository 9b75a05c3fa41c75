"""``Encryption``: AES-256-GCM over each stored value (docs/middleware.md).

A value becomes ``{"$encrypted": "<key id>:<base64 of nonce + ciphertext>"}``: a dict, so
every shape rule of the storage holds, and still JSON on the file tree. Ids, tags and
times are never given to the middleware and stay plain. The plaintext is the value's
canonical compact JSON; the associated data binds the ciphertext to its entity (kind,
namespace and id), so a value copied to another entity does not decrypt there.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Iterable
from typing import Any

import orjson

from ..codec import encode
from ..errors import ConfigError, CorruptedDataError, DecryptionError
from ._base import Middleware, MiddlewareContext

__all__ = ["ENCRYPTED", "Encryption", "entity_name", "key_id", "parse_key"]

ENCRYPTED = "$encrypted"
NONCE_BYTES = 12


def parse_key(key: Any, where: str = "key") -> bytes:
    """32 bytes, given as bytes or as base64 text of 32 bytes; ConfigError otherwise (never showing it)."""
    if isinstance(key, bytes | bytearray):
        raw = bytes(key)
    elif isinstance(key, str):
        try:
            raw = base64.b64decode(key.strip(), validate=True)
        except (ValueError, binascii.Error):
            raw = b""
    else:
        raise ConfigError(f"{where} must be 32 bytes or base64 text of 32 bytes, got a {type(key).__name__}")
    if len(raw) != 32:
        raise ConfigError(
            f"{where} is not a usable AES-256 key (value not shown): it must be 32 random bytes or base64 of exactly "
            "32 bytes, e.g. from `python -c 'import base64, os; print(base64.b64encode(os.urandom(32)).decode())'`"
        )
    return raw


def key_id(raw: bytes) -> str:
    """The first 8 hex digits of the key's SHA-256: names a key without revealing it."""
    return hashlib.sha256(raw).hexdigest()[:8]


def entity_name(ctx: MiddlewareContext) -> str:
    """``the memories of conversation 'c1'``-like words for messages."""
    if ctx.kind == "kv":
        return f"key-value entry {ctx.key!r} of namespace {ctx.namespace!r}"
    owner = {"raw_messages": "conversation", "chunks": "conversation", "memories": "conversation"}.get(ctx.kind)
    if owner:
        return f"{ctx.kind} of {owner} {ctx.key!r}"
    if ctx.kind == "reasoning_chains":
        return f"reasoning chains of agent {ctx.key!r}"
    names = {"conversation": "conversation", "cache": "cache entry", "system": "system state"}
    return f"{names.get(ctx.kind, ctx.kind)} {ctx.key!r}"


def _associated_data(ctx: MiddlewareContext) -> bytes:
    return orjson.dumps(["connectome-storage", ctx.kind, ctx.namespace, ctx.key])


class Encryption(Middleware):
    """AES-256-GCM encryption at rest of every stored value.

    ``key``: 32 bytes, or base64 text of 32 bytes (``CONNECTOME_STORAGE_ENCRYPTION_KEY``'s
    form). ``old_keys``: earlier keys, used only to read values written under them
    (``connectome-storage rotate-key`` re-encrypts those under ``key``). A value that is
    not encrypted is read as it is, so encryption can be turned on for an existing store.
    Reading a value whose key is not given, or that does not authenticate, raises
    ``DecryptionError`` naming the entity and the key id it needs. Needs the
    ``encryption`` extra (``cryptography``).
    """

    def __init__(self, key: bytes | str, *, old_keys: Iterable[bytes | str] = ()) -> None:
        try:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        except ImportError as e:  # pragma: no cover - the test extra installs it
            raise ImportError(
                "Encryption needs the cryptography package: pip install 'connectome-storage[encryption]'"
            ) from e
        current = parse_key(key, "key")
        if isinstance(old_keys, str | bytes):
            raise ConfigError("old_keys must be a list of keys, not one key (wrap it: [old_key])")
        olds = [parse_key(old, f"old_keys[{index}]") for index, old in enumerate(old_keys)]
        # Only the ciphers are kept: the raw keys are not attributes of this object.
        self._key_id = key_id(current)
        self._ciphers = {key_id(raw): AESGCM(raw) for raw in [*reversed(olds), current]}
        self._cipher = self._ciphers[self._key_id]
        self._old_key_ids = tuple(key_id(raw) for raw in olds)

    @property
    def key_id(self) -> str:
        """The id of the current key (the first 8 hex digits of its SHA-256)."""
        return self._key_id

    @property
    def old_key_ids(self) -> tuple[str, ...]:
        return self._old_key_ids

    def __repr__(self) -> str:
        return f"Encryption(key_id={self._key_id!r}, old_key_ids={self._old_key_ids!r})"

    # ------------------------------------------------------------------ hooks

    async def before_write(self, ctx: MiddlewareContext, value: Any) -> Any:
        return self.encrypt(ctx, value)

    async def after_read(self, ctx: MiddlewareContext, value: Any) -> Any:
        return self.decrypt(ctx, value)

    # ------------------------------------------------------------- the cipher

    def encrypt(self, ctx: MiddlewareContext, value: Any) -> dict[str, str]:
        """``{"$encrypted": "<key id>:<base64>"}`` of ``value`` (a checked JSON value) under the current key."""
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._cipher.encrypt(nonce, encode(value, pretty=False), _associated_data(ctx))
        return {ENCRYPTED: f"{self._key_id}:{base64.b64encode(nonce + sealed).decode('ascii')}"}

    @staticmethod
    def stored_key_id(value: Any) -> str | None:
        """The key id of an encrypted stored value; None for a value that is not encrypted."""
        if isinstance(value, dict) and len(value) == 1 and isinstance(value.get(ENCRYPTED), str):
            return str(value[ENCRYPTED]).partition(":")[0]
        return None

    def decrypt(self, ctx: MiddlewareContext, value: Any) -> Any:
        """The value an encrypted stored value holds; any other value as it is."""
        if self.stored_key_id(value) is None:
            return value
        wanted, _, payload = value[ENCRYPTED].partition(":")
        cipher = self._ciphers.get(wanted)
        if cipher is None:
            known = ", ".join([self._key_id, *self._old_key_ids])
            raise DecryptionError(
                f"cannot decrypt the {entity_name(ctx)}: it was encrypted under key id {wanted}, and the keys "
                f"given have ids {known}; pass the key with id {wanted} (as the key, or in old_keys)"
            )
        from cryptography.exceptions import InvalidTag

        try:
            sealed = base64.b64decode(payload, validate=True)
            if len(sealed) <= NONCE_BYTES:
                raise ValueError("too short")
            plaintext = cipher.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], _associated_data(ctx))
        except (ValueError, binascii.Error, InvalidTag):
            raise DecryptionError(
                f"cannot decrypt the {entity_name(ctx)} with key id {wanted}: the value does not authenticate "
                "(it was altered, damaged, or copied from another entity); restore it from a backup or store it again"
            ) from None
        try:
            return orjson.loads(plaintext)
        except orjson.JSONDecodeError as e:  # pragma: no cover - authenticated data is what was encrypted
            raise CorruptedDataError(entity_name(ctx), f"decrypted value is not JSON ({e})") from e
