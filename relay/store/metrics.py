"""The shared counters behind GET /metrics and GET /v1/stats: bumping them, reading them;
and the workers' presence.

Each counter lives twice: in one all-time hash (for Prometheus, which takes its own rates) and
in a hash per five-minute bucket that expires after a day, so the API can show the last hour or
day without a time-series database.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

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


# A worker that has not announced itself for this long is counted as gone.
WORKER_SILENCE_MS = 30_000


@dataclass(slots=True, frozen=True)
class Snapshot:
    """Everything /metrics shows, read in one round trip."""

    counters: dict[bytes, bytes]
    pending: int
    due: int
    workers: int
    disabled_webhooks: int
    history_backlog: int = 0
    history_lag_ms: int = 0


async def snapshot(redis: Redis, now_ms: int, redis_errors: int = 0) -> Snapshot:
    """The counters hash and the gauges; first adds this process's untold Redis errors."""
    async with redis.pipeline(transaction=False) as pipe:
        if redis_errors:
            pipe.hincrby(keys.METRICS, "redis_errors", redis_errors)
        pipe.hgetall(keys.METRICS)
        pipe.zcount(keys.DUE, "-inf", now_ms)
        pipe.zcount(keys.WORKERS, now_ms - WORKER_SILENCE_MS, "+inf")
        pipe.scard(keys.DISABLED_WEBHOOKS)
        pipe.xlen(keys.HISTORY)
        pipe.xrange(keys.HISTORY, "-", "+", count=1)
        results = await pipe.execute()
    counters, due, workers, disabled, waiting, oldest = results[-6:]
    pending = await backlog(redis)
    # A stream entry's id starts with the Redis time (ms) it was added at.
    lag = now_ms - int(oldest[0][0].decode().partition("-")[0]) if oldest else 0
    return Snapshot(
        counters, pending, int(due), int(workers), int(disabled), int(waiting), max(lag, 0)
    )


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


async def announce(
    redis: Redis, worker_id: str, now_ms: int, counts: Mapping[str, int] | None = None
) -> None:
    """Say that a worker is alive (and add the failures it counted meanwhile, by counter)."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.zadd(keys.WORKERS, {worker_id: now_ms})
        pipe.zremrangebyscore(keys.WORKERS, "-inf", now_ms - 10 * WORKER_SILENCE_MS)
        pipe.pexpire(keys.WORKERS, 10 * WORKER_SILENCE_MS)
        for field, count in (counts or {}).items():
            if count:
                pipe.hincrby(keys.METRICS, field, count)
        await pipe.execute()
