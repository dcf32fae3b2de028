"""Events in Redis, and the one atomic step that accepts an event with all its deliveries."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from redis.asyncio import Redis

from relay.errors import NotFound
from relay.store import codec, keys
from relay.store.jobs import JOB_TTL_MS, Job
from relay.store.metrics import BUMP, bucket_key

# Written in one script so that the event, its deliveries, their due times and their jobs exist
# together or not at all; an upstream id seen before returns the first event's id instead.
# The last key is the current metrics bucket.
_ACCEPT = (
    BUMP
    + """
local ttl = tonumber(ARGV[3])
if ARGV[1] == '1' then
  local first = redis.call('GET', KEYS[2])
  if first then return first end
  redis.call('SET', KEYS[2], ARGV[2], 'EX', ttl)
end
local now = tonumber(ARGV[4])
redis.call('HSET', KEYS[1], 'payload', ARGV[5], 'type', ARGV[6], 'tenant_id', ARGV[7],
  'created_at', ARGV[8], 'upstream_id', ARGV[9], 'deliveries', ARGV[10])
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('ZADD', KEYS[3], 0, ARGV[2])
redis.call('ZADD', KEYS[4], 0, ARGV[2])
redis.call('SADD', KEYS[7], KEYS[4])
bump(KEYS[8], KEYS[#KEYS], 'events_accepted:' .. ARGV[6])
local count = tonumber(ARGV[11])
for i = 0, count - 1 do
  local k = 9 + i * 5
  local a = 13 + i * 4
  local id = ARGV[a]
  redis.call('HSET', KEYS[k], 'id', id, 'event_id', ARGV[2], 'webhook_id', ARGV[a + 1],
    'tenant_id', ARGV[7], 'event_type', ARGV[6], 'status', 'pending', 'attempt_count', 0,
    'cycle_start', 0, 'next_attempt_at', now, 'created_at', ARGV[8], 'updated_at', ARGV[8])
  redis.call('EXPIRE', KEYS[k], ttl)
  redis.call('ZADD', KEYS[k + 1], 0, id)
  redis.call('ZADD', KEYS[k + 2], 0, id)
  redis.call('ZADD', KEYS[k + 3], 0, id)
  redis.call('SADD', KEYS[7], KEYS[k + 2], KEYS[k + 3])
  redis.call('ZADD', KEYS[5], now, id)
  redis.call('SET', KEYS[k + 4], ARGV[a + 3], 'PX', ARGV[12])
  redis.call('ZADD', KEYS[6], now, ARGV[a + 2])
end
return false
"""
)


@dataclass(frozen=True, slots=True)
class PlannedDelivery:
    """A delivery to create with its event: which webhook, and its first job."""

    id: str
    webhook_id: str
    job: Job


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An accepted event as it will be stored."""

    id: str
    type: str
    tenant_id: str
    created_at: str
    upstream_id: str | None
    payload: bytes


@dataclass(frozen=True, slots=True)
class StoredEvent(NewEvent):
    """An event as read back, with the deliveries it was fanned out to."""

    delivery_ids: list[str]


def _upstream_key(tenant_id: str, upstream_id: str) -> str:
    return keys.event_by_upstream_id(tenant_id, hashlib.sha256(upstream_id.encode()).hexdigest())


class EventStore:
    """Persistence of events."""

    def __init__(self, redis: Redis, retention_seconds: int) -> None:
        self._redis = redis
        self._ttl = retention_seconds
        self._accept = redis.register_script(_ACCEPT)

    async def accept(
        self, event: NewEvent, deliveries: Sequence[PlannedDelivery], now_ms: int
    ) -> str | None:
        """Write the event and its deliveries atomically.

        Returns None when written, or the id of the event first accepted under the same
        upstream id (then nothing is written).
        """
        script_keys = [
            keys.event(event.id),
            _upstream_key(event.tenant_id, event.upstream_id or ""),
            keys.EVENTS,
            keys.tenant_events(event.tenant_id),
            keys.DUE,
            keys.QUEUE,
            keys.INDEXES,
            keys.METRICS,
        ]
        args: list[bytes | str | int] = [
            "1" if event.upstream_id is not None else "0",
            event.id,
            self._ttl,
            now_ms,
            event.payload,
            event.type,
            event.tenant_id,
            event.created_at,
            event.upstream_id or "",
            codec.dumps([d.id for d in deliveries]),
            len(deliveries),
            JOB_TTL_MS,
        ]
        for d in deliveries:
            script_keys += [
                keys.delivery(d.id),
                keys.DELIVERIES,
                keys.tenant_deliveries(event.tenant_id),
                keys.webhook_deliveries(d.webhook_id),
                d.job.key,
            ]
            args += [d.id, d.webhook_id, d.job.id, d.job.payload]
        script_keys.append(bucket_key(now_ms))
        first = await self._accept(keys=script_keys, args=args)
        return first.decode() if first else None

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
