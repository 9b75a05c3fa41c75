"""Where RedisStorage keeps each thing: the one place Redis key names are built.

A ``KeyLayout`` is chosen when the storage opens: ``SingleLayout`` for one Redis server
(the layout every existing prefix uses, unchanged), ``ClusterLayout`` for Redis Cluster.
``P`` is ``key_prefix``; ``<id>`` is the id percent-encoded by ``naming.encode_name``,
which never holds ``{``, ``}`` or ``:``.

On one server each kind has one index per prefix (``P idx:conversations``) and each
entity's keys share the hash tag ``{<id>}``. On a cluster every key one script or one
MULTI touches must be in one hash slot, and a script that writes an entity also updates
its index. So the cluster layout shards every index into ``BUCKETS`` buckets by the
entity's id, and the entity's keys carry its bucket's hash tag::

    bucket = crc32(<id>) % 256
    P conv:{c:<bucket>}:<id>:current ...        P idx:{c:<bucket>}:conversations
                                                P idx:{c:<bucket>}:conversation-expiry
    P agent:{a:<bucket>}:<id>:chains            P idx:{a:<bucket>}:agents
    P cache:{x:<bucket>}:<id>                   P idx:{x:<bucket>}:cache
    P system:{s:<bucket>}:<id>                  P idx:{s:<bucket>}:system
    P kv:{n:<bucket>}:<namespace>:e:<key> ...   P idx:{n:<bucket>}:kv

An entity, its index entry and (for a namespace) every key of the namespace are then in
one slot, so each operation stays one script and one round trip; a listing reads every
bucket of its index (one pipeline, which the cluster client sends to each master at once).
The message store (``P msg:{m}:...``) and the serializer marker are the same in both.
"""

from __future__ import annotations

import functools
import zlib
from typing import ClassVar

from ..naming import encode_name

__all__ = ["BUCKETS", "ClusterLayout", "KeyLayout", "SingleLayout", "make_layout"]

# Buckets per index on a cluster: enough that every master of any sensible cluster gets
# a share (256 tags spread over 16384 slots), few enough that a listing's pipeline of one
# read per bucket stays small.
BUCKETS = 256

_name = functools.lru_cache(maxsize=4096)(encode_name)

# The kinds of entity that have an index: the word in their keys, their index's name, and
# the letter of their bucket tags on a cluster.
KINDS = ("conversation", "agent", "cache", "system", "kv")
_INDEX_NAMES = {"agent": "agents", "cache": "cache", "system": "system", "kv": "kv", "conversation": "conversations"}
_TAG_LETTERS = {"conversation": "c", "agent": "a", "cache": "x", "system": "s", "kv": "n"}
_EXPIRY_NAME = "conversation-expiry"


class KeyLayout:
    """Key names of one prefix. Subclasses decide where hash tags and indexes go."""

    cluster: ClassVar[bool]

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.serializer_marker = prefix + "meta:serializer"
        self.msg_base = f"{prefix}msg:{{m}}:"

    # Every method below takes the id as given (not encoded).

    def conv_base(self, conversation_id: str) -> str:
        """What every key of a conversation starts with (then meta, current, raw, ...)."""
        head, tail = self.conv_template(conversation_id)
        return head + _name(conversation_id) + tail

    def conv_template(self, conversation_id: str) -> tuple[str, str]:
        """(head, tail): a conversation's key base is head + encoded id + tail. The listing
        scripts name keys from ids this way; every id of one bucket has the same pair."""
        raise NotImplementedError

    def entity_key(self, kind: str, key: str) -> str:
        """The one key of an agent's chains, a cache entry or a system state."""
        raise NotImplementedError

    def kv_base(self, namespace: str) -> str:
        """What every key of a namespace starts with (then keys, exp, etags, e:..., tag:...)."""
        raise NotImplementedError

    def index(self, kind: str, key: str | None = None) -> str:
        """The index listing ``key`` among the ids of ``kind``."""
        raise NotImplementedError

    def expiry_index(self, conversation_id: str | None = None) -> str:
        """The sorted set of conversations with an expiry that lists ``conversation_id``."""
        raise NotImplementedError

    def indexes(self, kind: str) -> list[str]:
        """Every index of ``kind`` (one per bucket): what a listing reads."""
        raise NotImplementedError

    def conv_buckets(self) -> list[tuple[str, str, str, str]]:
        """(index, expiry index, head, tail) of every bucket of conversations."""
        raise NotImplementedError

    def legacy_indexes(self) -> list[str]:
        """Keys whose existence shows data written before the serializer marker existed."""
        return []


class SingleLayout(KeyLayout):
    """One Redis server: one index per kind; ``{<id>}`` tags only group an entity's keys."""

    cluster = False

    def conv_template(self, conversation_id: str) -> tuple[str, str]:
        return f"{self.prefix}conv:{{", "}:"

    def entity_key(self, kind: str, key: str) -> str:
        if kind == "agent":
            return f"{self.prefix}agent:{{{_name(key)}}}:chains"
        return f"{self.prefix}{kind}:{{{_name(key)}}}"

    def kv_base(self, namespace: str) -> str:
        return f"{self.prefix}kv:{{{_name(namespace)}}}:"

    def index(self, kind: str, key: str | None = None) -> str:
        return f"{self.prefix}idx:{_INDEX_NAMES[kind]}"

    def expiry_index(self, conversation_id: str | None = None) -> str:
        return f"{self.prefix}idx:{_EXPIRY_NAME}"

    def indexes(self, kind: str) -> list[str]:
        return [self.index(kind)]

    def conv_buckets(self) -> list[tuple[str, str, str, str]]:
        return [(self.index("conversation"), self.expiry_index(), *self.conv_template(""))]

    def legacy_indexes(self) -> list[str]:
        return [self.index(kind) for kind in KINDS]


class ClusterLayout(KeyLayout):
    """Redis Cluster: every index sharded in ``BUCKETS`` buckets by id, each bucket one
    hash tag shared with the keys of the entities it lists."""

    cluster = True

    @staticmethod
    def bucket(key: str) -> int:
        return zlib.crc32(_name(key).encode("ascii")) % BUCKETS

    def _tag(self, kind: str, key: str) -> str:
        return f"{{{_TAG_LETTERS[kind]}:{self.bucket(key)}}}"

    def conv_template(self, conversation_id: str) -> tuple[str, str]:
        return f"{self.prefix}conv:{self._tag('conversation', conversation_id)}:", ":"

    def entity_key(self, kind: str, key: str) -> str:
        base = f"{self.prefix}{kind}:{self._tag(kind, key)}:{_name(key)}"
        return base + ":chains" if kind == "agent" else base

    def kv_base(self, namespace: str) -> str:
        return f"{self.prefix}kv:{self._tag('kv', namespace)}:{_name(namespace)}:"

    def _bucket_index(self, kind: str, bucket: int, name: str) -> str:
        return f"{self.prefix}idx:{{{_TAG_LETTERS[kind]}:{bucket}}}:{name}"

    def index(self, kind: str, key: str | None = None) -> str:
        if key is None:
            raise ValueError(f"on Redis Cluster the {kind} index is sharded: name the id whose bucket you want")
        return self._bucket_index(kind, self.bucket(key), _INDEX_NAMES[kind])

    def expiry_index(self, conversation_id: str | None = None) -> str:
        if conversation_id is None:
            raise ValueError("on Redis Cluster the expiry index is sharded: name the conversation")
        return self._bucket_index("conversation", self.bucket(conversation_id), _EXPIRY_NAME)

    def indexes(self, kind: str) -> list[str]:
        return [self._bucket_index(kind, bucket, _INDEX_NAMES[kind]) for bucket in range(BUCKETS)]

    def conv_buckets(self) -> list[tuple[str, str, str, str]]:
        return [
            (
                self._bucket_index("conversation", bucket, "conversations"),
                self._bucket_index("conversation", bucket, _EXPIRY_NAME),
                f"{self.prefix}conv:{{c:{bucket}}}:",
                ":",
            )
            for bucket in range(BUCKETS)
        ]


def make_layout(prefix: str, *, cluster: bool) -> KeyLayout:
    return ClusterLayout(prefix) if cluster else SingleLayout(prefix)
