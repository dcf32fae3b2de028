"""The shared counters behind GET /metrics: adding to them, reading them; and the workers'
presence.

The counters live in one all-time hash (Prometheus takes its own rates); each process adds its
counts every few seconds. The overview's figures over time come from PostgreSQL instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from redis.asyncio import Redis

from relay.store import keys

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


async def snapshot(redis: Redis, now_ms: int) -> Snapshot:
    """The counters hash and the gauges."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.METRICS)
        pipe.zcount(keys.WORKERS, now_ms - WORKER_SILENCE_MS, "+inf")
        pipe.scard(keys.DISABLED_WEBHOOKS)
        pipe.xlen(keys.HISTORY)
        pipe.xrange(keys.HISTORY, "-", "+", count=1)
        results = await pipe.execute()
    counters, workers, disabled, waiting, oldest = results[-5:]
    pending, due = await queued(redis, now_ms)
    # A stream entry's id starts with the Redis time (ms) it was added at.
    lag = now_ms - int(oldest[0][0].decode().partition("-")[0]) if oldest else 0
    return Snapshot(counters, pending, due, int(workers), int(disabled), int(waiting), max(lag, 0))


async def backlog(redis: Redis) -> int:
    """How many deliveries are pending (due, waiting for a slot or their time) or in flight."""
    return (await queued(redis, None))[0]


async def queued(redis: Redis, now_ms: int | None) -> tuple[int, int]:
    """Deliveries in the endpoints' queues: all of them (pending or in flight), and those due
    by `now_ms` and not in flight (0 when None). Read through the schedule: every tenant with
    deliveries queued is in the tenants' set, and each of its endpoints with any in its own."""
    tenants = [t.decode() for t in await redis.zrange(keys.TENANTS, 0, -1)]
    if not tenants:
        return 0, 0
    async with redis.pipeline(transaction=False) as pipe:
        for tenant in tenants:
            pipe.zrange(keys.endpoints(tenant), 0, -1)
        listed = await pipe.execute()
    endpoints = sorted({e.decode() for found in listed for e in found})
    async with redis.pipeline(transaction=False) as pipe:
        for webhook_id in endpoints:
            pipe.zcard(keys.endpoint_queue(webhook_id))
            if now_ms is not None:
                pipe.zcount(keys.endpoint_queue(webhook_id), "-inf", now_ms)
        counts = [int(n) for n in await pipe.execute()]
    if now_ms is None:
        return sum(counts), 0
    return sum(counts[::2]), sum(counts[1::2])


# Counters and presence are written even when Redis is out of memory (allow-oom), which is when
# on-call needs them most: what was refused, and that the workers are alive (not counted out
# as gone). What they add is bounded: a fixed set of counter fields, one entry per live worker.
_ANNOUNCE = """#!lua flags=allow-oom
local worker, now_ms, kept_ms = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
if worker ~= '' then
  redis.call('ZADD', KEYS[2], now_ms, worker)
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now_ms - kept_ms)
  redis.call('PEXPIRE', KEYS[2], kept_ms)
end
for i = 4, #ARGV, 2 do redis.call('HINCRBYFLOAT', KEYS[1], ARGV[i], ARGV[i + 1]) end
"""


async def announce(
    redis: Redis, worker_id: str | None, now_ms: int, counts: Mapping[str, float]
) -> None:
    """Add a process's counts to the shared counters; and say that worker `worker_id` (if
    one) is alive."""
    added = [part for field, count in counts.items() if count for part in (field, count)]
    await redis.register_script(_ANNOUNCE)(
        keys=[keys.METRICS, keys.WORKERS],
        args=[worker_id or "", now_ms, 10 * WORKER_SILENCE_MS, *added],
    )
