"""Seeded random conversation-store queries, for the tests that hold a backend's SQL to the
reference (``conversation_query.MetaQuery.apply``). Each backend's test gives the value
pools its SQL has to get exactly right; the shapes of metadata and queries are shared."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from connectome_storage.errors import InvalidArgumentError

from ..conftest import START

__all__ = ["RandomQueries"]

_TIME_FIELDS = ("created_at", "updated_at", "expires_at")
_OPS = ["==", "!=", "<", "<=", ">", ">=", "in", "contains"]


@dataclass(frozen=True)
class RandomQueries:
    keys: list[str]  # metadata keys (and paths below "nested")
    strings: list[str]
    numbers: list[Any]
    conversation_ids: list[str]  # operands compared with conversation_id
    message_count: Callable[[random.Random], Any]  # an operand compared with message_count

    def scalar(self, rng: random.Random) -> Any:
        pick = rng.random()
        if pick < 0.1:
            return None
        if pick < 0.2:
            return rng.choice([True, False])
        if pick < 0.55:
            return rng.choice(self.numbers)
        return rng.choice(self.strings)

    def value(self, rng: random.Random, depth: int = 0) -> Any:
        pick = rng.random()
        if depth < 2 and pick < 0.15:
            return [self.value(rng, depth + 1) for _ in range(rng.randrange(4))]
        if depth < 2 and pick < 0.25:
            return {rng.choice(self.keys): self.value(rng, depth + 1) for _ in range(rng.randrange(3))}
        return self.scalar(rng)

    def metadata(self, rng: random.Random) -> dict[str, Any]:
        metadata = {key: self.value(rng) for key in rng.sample(self.keys, rng.randrange(len(self.keys)))}
        if rng.random() < 0.3:
            metadata["nested"] = {rng.choice(self.keys): self.value(rng) for _ in range(3)}
        return metadata

    def field(self, rng: random.Random) -> str:
        pick = rng.random()
        if pick < 0.25:
            return rng.choice(["conversation_id", "created_at", "updated_at", "message_count", "expires_at"])
        if pick < 0.4:
            return f"metadata.nested.{rng.choice(self.keys)}"
        return f"metadata.{rng.choice(self.keys)}"

    def operand(self, rng: random.Random, field: str) -> Any:
        if field in _TIME_FIELDS:
            return datetime.fromtimestamp(START + rng.randrange(-5, 40), tz=UTC)
        if field == "conversation_id" and rng.random() < 0.7:
            return rng.choice(self.conversation_ids)
        if field == "message_count" and rng.random() < 0.7:
            return self.message_count(rng)
        return self.scalar(rng)

    def query(self, store: Any, rng: random.Random) -> Any:
        query = store.query()
        for _ in range(rng.randrange(4)):
            field = self.field(rng)
            op = rng.choice(_OPS)
            operand = [self.operand(rng, field) for _ in range(rng.randrange(4))] if op == "in" else None
            try:
                query.where(field, op, operand if op == "in" else self.operand(rng, field))
            except InvalidArgumentError:
                continue  # an operand the builder refuses (e.g. < None): not a query
        for _ in range(rng.randrange(3)):
            query.order_by(self.field(rng), descending=rng.random() < 0.5)
        if rng.random() < 0.3:
            query.limit(rng.randrange(6))
        if rng.random() < 0.3:
            query.offset(rng.randrange(6))
        return query
