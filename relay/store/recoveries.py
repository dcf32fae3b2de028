"""Recoveries' progress records, kept for the retention period."""

from __future__ import annotations

from redis.asyncio import Redis

from relay.errors import NotFound
from relay.store import keys


class RecoveryStore:
    """Where each recovery has got to."""

    def __init__(self, redis: Redis, retention_seconds: int) -> None:
        self._redis = redis
        self._retention = retention_seconds

    async def start_recovery(self, recovery_id: str, record: dict[str, str | int]) -> None:
        """Store a new recovery's progress record."""
        key = keys.recovery(recovery_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=record)
            pipe.expire(key, self._retention)
            await pipe.execute()

    async def recovery_progress(
        self, recovery_id: str, cursor: str, requeued: int, done: bool
    ) -> None:
        """Advance a recovery: where it got to, how many went again, whether it finished."""
        await self._redis.hset(  # type: ignore[misc]
            keys.recovery(recovery_id),
            mapping={
                "cursor": cursor,
                "requeued": requeued,
                "status": "done" if done else "running",
            },
        )

    async def recovery(self, recovery_id: str) -> dict[str, str]:
        """A recovery's progress record, or NotFound."""
        raw: dict[bytes, bytes] = await self._redis.hgetall(keys.recovery(recovery_id))  # type: ignore[misc]
        if not raw:
            raise NotFound("No such recovery.")
        return {k.decode(): v.decode() for k, v in raw.items()}
