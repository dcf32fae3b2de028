"""Events in Redis, as read back (they are written with their deliveries by the delivery store)."""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from relay.errors import NotFound
from relay.store import codec, keys


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


class EventStore:
    """Reading events."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def get(self, event_id: str) -> StoredEvent:
        """An event by id, or NotFound."""
        fields: dict[bytes, bytes] = await self._redis.hgetall(keys.event(event_id))  # type: ignore[misc]
        if not fields:
            raise NotFound("No such event.")
        return StoredEvent(
            id=event_id,
            type=fields[b"type"].decode(),
            tenant_id=fields[b"tenant_id"].decode(),
            created_at=fields[b"created_at"].decode(),
            upstream_id=fields[b"upstream_id"].decode() or None,
            payload=fields[b"payload"],
            delivery_ids=codec.loads(fields[b"deliveries"]),
        )
