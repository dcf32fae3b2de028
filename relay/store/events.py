"""Events as read back: from Redis while any of their deliveries is in flight, else from history.

They are written with their deliveries by the delivery store."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from redis.asyncio import Redis

from relay.errors import NotFound
from relay.store import codec, keys
from relay.store.gathering import Gathering

if TYPE_CHECKING:
    from relay.delivery.archive import Archive


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event as read back, with the deliveries it was fanned out to."""

    id: str
    type: str
    tenant_id: str
    created_at: str
    upstream_id: str | None
    payload: bytes
    delivery_ids: list[str]


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events a list shows."""

    tenant_id: str | None = None
    type: str | None = None
    upstream_id: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None


class EventStore:
    """Reading events."""

    def __init__(self, redis: Redis, archive: Archive) -> None:
        self._redis = redis
        self._archive = archive
        self._looking_up: Gathering[None, tuple[str, str], StoredEvent | None] = Gathering(
            self._look_up_all
        )

    async def get(self, event_id: str) -> StoredEvent:
        """An event by id, or NotFound."""
        fields: dict[bytes, bytes] = await self._redis.hgetall(keys.event(event_id))  # type: ignore[misc]
        if fields:
            return stored_event(event_id, fields)
        archived = await self._archive.event(event_id)
        if archived is None:
            raise NotFound("No such event.")
        return archived

    async def first_with_upstream_id(self, tenant_id: str, upstream_id: str) -> StoredEvent | None:
        """The event an upstream id was first accepted as, if history has it (Redis remembers
        the upstream ids of the events it still holds; the accept script looks there).

        Every event posted with an upstream id asks, so the questions of requests made at the
        same moment go to PostgreSQL as one query (see Gathering): a query of its own for each
        cost more than the rest of an accept."""
        return await self._looking_up(None, (tenant_id, upstream_id))

    async def first_with_upstream_ids(
        self, pairs: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], StoredEvent]:
        """`first_with_upstream_id` of each (tenant, upstream id) pair, by pair, in one query;
        a pair history does not have is left out."""
        return await self._archive.events_with_upstream_ids(pairs) if pairs else {}

    async def _look_up_all(
        self, _: None, pairs: list[tuple[str, str]]
    ) -> AsyncIterator[StoredEvent | None]:
        found = await self.first_with_upstream_ids(pairs)
        for pair in pairs:
            yield found.get(pair)

    async def page(
        self, query: EventFilter, limit: int, cursor: str | None
    ) -> tuple[list[StoredEvent], str | None]:
        """Matching events newest first, as history lists them (from when the writer has them,
        well under a second after they were accepted)."""
        return await self._archive.event_page(query, limit, cursor)


def stored_event(event_id: str, fields: dict[bytes, bytes]) -> StoredEvent:
    """An event from its Redis hash."""
    return StoredEvent(
        id=event_id,
        type=fields[b"type"].decode(),
        tenant_id=fields[b"tenant_id"].decode(),
        created_at=fields[b"created_at"].decode(),
        upstream_id=fields[b"upstream_id"].decode() or None,
        payload=fields[b"payload"],
        delivery_ids=codec.loads(fields[b"deliveries"]),
    )
