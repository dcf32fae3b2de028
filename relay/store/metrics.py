"""The shared counters behind GET /metrics and GET /v1/stats: bumping them, reading them.

Each counter lives twice: in one all-time hash (for Prometheus, which takes its own rates) and
in a hash per five-minute bucket that expires after a day, so the API can show the last hour or
day without a time-series database.
"""

from __future__ import annotations

from collections.abc import Sequence

from redis.asyncio import Redis

from relay.store import keys

BUCKET_SECONDS = 300
# A bucket outlives the longest window shown (a day) by one bucket, then expires by itself.
BUCKET_TTL_SECONDS = 86_400 + BUCKET_SECONDS

# Lua prelude for the scripts that change state: `bump(total, bucket, field)` adds one to a
# counter in the all-time hash and in the current bucket, in the same atomic step.
BUMP = f"""
local function bump(total, bucket, field)
  redis.call('HINCRBY', total, field, 1)
  redis.call('HINCRBY', bucket, field, 1)
  redis.call('EXPIRE', bucket, {BUCKET_TTL_SECONDS}, 'NX')
end
"""


def bucket_start(unix_seconds: float) -> int:
    """The start of the bucket a moment falls in."""
    return int(unix_seconds) // BUCKET_SECONDS * BUCKET_SECONDS


def bucket_key(now_ms: int) -> str:
    """The key of the bucket counting what happens at `now_ms`."""
    return keys.metrics_bucket(bucket_start(now_ms / 1000))


async def snapshot(redis: Redis) -> tuple[dict[bytes, bytes], int]:
    """The counters hash and how many deliveries are pending or in flight."""
    counters: dict[bytes, bytes] = await redis.hgetall(keys.METRICS)  # type: ignore[misc]
    return counters, await backlog(redis)


async def backlog(redis: Redis) -> int:
    """How many deliveries are pending (due, waiting, parked behind their endpoint) or in flight."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zcard(keys.DUE)
        pipe.zrange(keys.WAKES, 0, -1)
        due, parking = await pipe.execute()
    if not parking:
        return int(due)
    async with redis.pipeline(transaction=False) as pipe:
        for webhook_id in parking:
            pipe.zcard(keys.endpoint_parked(webhook_id.decode()))
        parked = await pipe.execute()
    return int(due) + sum(int(n) for n in parked)


async def buckets(redis: Redis, starts: Sequence[int]) -> list[dict[str, int]]:
    """The counters of each bucket, in order; an expired or empty bucket is `{}`."""
    async with redis.pipeline(transaction=False) as pipe:
        for start in starts:
            pipe.hgetall(keys.metrics_bucket(start))
        rows: list[dict[bytes, bytes]] = await pipe.execute()
    return [{k.decode(): int(v) for k, v in row.items()} for row in rows]
