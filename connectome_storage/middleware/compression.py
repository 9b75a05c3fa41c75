"""``Compression``: zstd over each stored value longer than a threshold (docs/middleware.md).

A value whose canonical compact JSON is longer than ``threshold`` bytes is stored as
``{"$compressed": "zstd:<base64>"}`` (a dict, so every shape rule holds); smaller values
are stored as they are and stay readable in the file tree or with the sqlite3 shell.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import orjson

from ..codec import encode
from ..errors import ConfigError, CorruptedDataError
from ._base import Middleware, MiddlewareContext
from .encryption import entity_name

__all__ = ["COMPRESSED", "Compression"]

COMPRESSED = "$compressed"
# Frames larger than this are refused on read: a damaged or hostile frame must not make
# the reader allocate without bound (a stored value is at most what a backend holds).
MAX_DECOMPRESSED_BYTES = 1 << 31


class Compression(Middleware):
    """zstd compression of every stored value longer than ``threshold`` bytes of JSON.

    ``level`` is zstd's (1 fastest to 22 smallest; 3 by default). A value that does not
    shrink is stored as it is. Needs the ``compression`` extra (``zstandard``).
    """

    def __init__(self, threshold: int = 4096, *, level: int = 3) -> None:
        try:
            import zstandard
        except ImportError as e:  # pragma: no cover - the test extra installs it
            raise ImportError(
                "Compression needs the zstandard package: pip install 'connectome-storage[compression]'"
            ) from e
        if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 0:
            raise ConfigError(f"Compression threshold must be an int of bytes >= 0, got {threshold!r}")
        if isinstance(level, bool) or not isinstance(level, int) or not 1 <= level <= 22:
            raise ConfigError(f"Compression level must be an int from 1 to 22, got {level!r}")
        self.threshold = threshold
        self.level = level
        self._compressor = zstandard.ZstdCompressor(level=level)
        self._decompressor = zstandard.ZstdDecompressor()
        self._error = zstandard.ZstdError

    def __repr__(self) -> str:
        return f"Compression(threshold={self.threshold!r}, level={self.level!r})"

    async def before_write(self, ctx: MiddlewareContext, value: Any) -> Any:
        return self.compress(value)

    async def after_read(self, ctx: MiddlewareContext, value: Any) -> Any:
        return self.decompress(ctx, value)

    def compress(self, value: Any) -> Any:
        data = encode(value, pretty=False).rstrip(b"\n")  # the JSON itself, without the file's newline
        if len(data) <= self.threshold:
            return value
        packed = base64.b64encode(self._compressor.compress(data)).decode("ascii")
        if len(packed) + 24 >= len(data):  # no gain: keep it readable
            return value
        return {COMPRESSED: f"zstd:{packed}"}

    def decompress(self, ctx: MiddlewareContext, value: Any) -> Any:
        if not (isinstance(value, dict) and len(value) == 1 and isinstance(value.get(COMPRESSED), str)):
            return value
        method, _, payload = value[COMPRESSED].partition(":")
        if method != "zstd":
            raise CorruptedDataError(
                entity_name(ctx), f"compressed with {method!r}, which this version cannot read (only zstd)"
            )
        try:
            data = self._decompressor.decompress(
                base64.b64decode(payload, validate=True), max_output_size=MAX_DECOMPRESSED_BYTES
            )
            return orjson.loads(data)
        except (ValueError, binascii.Error, self._error, orjson.JSONDecodeError) as e:
            raise CorruptedDataError(
                entity_name(ctx), f"compressed value does not decompress ({e})", hint="store it again"
            ) from None
