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


async def announce(
    redis: Redis, worker_id: str | None, now_ms: int, counts: Mapping[str, float]
) -> None:
    """Add a process's counts to the shared counters; and say that worker `worker_id` (if
    one) is alive."""
    async with redis.pipeline(transaction=True) as pipe:
        if worker_id is not None:
            pipe.zadd(keys.WORKERS, {worker_id: now_ms})
            pipe.zremrangebyscore(keys.WORKERS, "-inf", now_ms - 10 * WORKER_SILENCE_MS)
            pipe.pexpire(keys.WORKERS, 10 * WORKER_SILENCE_MS)
        for field, count in counts.items():
            if count:
                pipe.hincrbyfloat(keys.METRICS, field, count)
        await pipe.execute()
