"""A queued job is started by one worker only, and only once it is due."""

from __future__ import annotations

import redis.asyncio

from relay.store import keys
from relay.store.jobs import JobStarts

NOW = 1_700_000_000_000


async def test_due_jobs_are_taken_once_and_marked_running(
    redis_client: redis.asyncio.Redis,
) -> None:
    await redis_client.zadd(keys.QUEUE, {"due": NOW - 5, "later": NOW + 60_000, "running": NOW})
    await redis_client.set(keys.IN_PROGRESS_PREFIX + "running", b"1")
    starts = JobStarts(redis_client)

    taken = await starts.take(["due", "later", "running", "gone"], NOW, 30_000)

    assert taken == [("due", NOW - 5)]
    assert 0 < await redis_client.pttl(keys.IN_PROGRESS_PREFIX + "due") <= 30_000
    # Another worker polling the same ids finds nothing left to start.
    assert await JobStarts(redis_client).take(["due", "later", "running"], NOW, 30_000) == []
    assert await starts.take(["later"], NOW + 60_000, 30_000) == [("later", NOW + 60_000)]
