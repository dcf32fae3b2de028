"""Registered event types in Redis: one JSON record per type, and an index of their names."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from functools import lru_cache
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from relay.errors import Conflict
from relay.event_types import RegisteredType
from relay.store import codec, keys
from relay.store.gathering import Gathering
from relay.store.idempotency import Commit
from relay.store.records import edit_record, transact


@lru_cache(maxsize=256)
def _registered(raw: bytes) -> RegisteredType:
    # Read once per record as stored: a changed type is another record, read afresh.
    return RegisteredType.from_record(codec.loads(raw))


class EventTypeStore:
    """Persistence of the event types operators register."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        # Every event of a registered type reads its type: the reads of requests made at the
        # same moment go in one MGET (see Gathering), each still read afresh.
        self._reading: Gathering[None, str, bytes | None] = Gathering(self._read_all)

    async def add(
        self, event_type: RegisteredType, commit: Commit[RegisteredType] | None = None
    ) -> None:
        """Register a new type; Conflict if one of that name exists."""
        key = keys.event_type(event_type.name)

        def decide(raw: bytes | None) -> RegisteredType:
            if raw is not None:
                raise Conflict(f"The event type {event_type.name} exists; PATCH it to change it.")
            return event_type

        def write(pipe: Pipeline, _: RegisteredType) -> None:
            pipe.set(key, codec.dumps(event_type.record()))
            pipe.zadd(keys.EVENT_TYPES, {event_type.name: 0})

        await transact(self._redis, key, decide, write, "event type", commit)

    async def get(self, name: str) -> RegisteredType | None:
        """A registered type by name, as Redis has it now (so that a PATCH applies at once)."""
        raw = await self._reading(None, name)
        return _registered(raw) if raw else None

    async def _read_all(self, _: None, names: list[str]) -> AsyncIterator[bytes | None]:
        for raw in await self._redis.mget([keys.event_type(name) for name in names]):
            yield raw

    async def names(self) -> list[str]:
        """The names of every registered type."""
        return [n.decode() for n in await self._redis.zrange(keys.EVENT_TYPES, 0, -1)]

    async def all(self) -> list[RegisteredType]:
        """Every registered type, by name."""
        names = await self.names()
        if not names:
            return []
        rows = await self._redis.mget([keys.event_type(n) for n in names])
        return [RegisteredType.from_record(codec.loads(r)) for r in rows if r]

    async def change(
        self,
        name: str,
        edit: Callable[[RegisteredType], RegisteredType],
        commit: Commit[RegisteredType] | None = None,
    ) -> RegisteredType:
        """Read, edit and write a type atomically; retried if it changed meanwhile."""

        def apply(record: dict[str, Any]) -> tuple[RegisteredType, object]:
            event_type = edit(RegisteredType.from_record(record))
            return event_type, event_type.record()

        return await edit_record(
            self._redis, keys.event_type(name), apply, "event type", commit=commit
        )
