"""Reading the shared counters behind GET /metrics."""

from __future__ import annotations

from redis.asyncio import Redis

from relay.store import keys


async def snapshot(redis: Redis) -> tuple[dict[bytes, bytes], int]:
    """The counters hash and how many deliveries are pending or in flight."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.METRICS)
        pipe.zcard(keys.DUE)
        counters, pending = await pipe.execute()
    return counters, int(pending)
