"""Test sends' results: each webhook's most recent ones, kept for the retention period."""

from __future__ import annotations

from redis.asyncio import Redis

from relay.store import codec, keys

# Test sends kept per webhook.
_TESTS_KEPT = 50


class SampleLog:
    """The results of recent test sends, per webhook."""

    def __init__(self, redis: Redis, retention_seconds: int) -> None:
        self._redis = redis
        self._retention = retention_seconds

    async def record_test(self, webhook_id: str, result: dict[str, object]) -> None:
        """Keep a test send's result with the webhook's recent ones (newest first)."""
        key = keys.webhook_tests(webhook_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.lpush(key, codec.dumps(result))
            pipe.ltrim(key, 0, _TESTS_KEPT - 1)
            pipe.expire(key, self._retention)
            await pipe.execute()

    async def tests(self, webhook_id: str) -> list[dict[str, object]]:
        """A webhook's recent test sends, newest first."""
        rows = await self._redis.lrange(keys.webhook_tests(webhook_id), 0, -1)  # type: ignore[misc]
        return [codec.loads(r) for r in rows]
