"""Riding out Redis outages: which errors mean Redis is away, and how long to wait for it."""

from __future__ import annotations

import asyncio
import random

from redis.exceptions import RedisError

from relay.store.replicas import NotReplicated

# Redis restarted, killed, failed over (MasterNotFoundError, ReadOnlyError and ConnectionError
# are RedisErrors), paused or unreachable, or too few of its replicas answering: wait and try
# again.
REDIS_AWAY = (RedisError, OSError, NotReplicated)


class Backoff:
    """Waits that grow from 0.1 s to 5 s while Redis is away, with jitter against herds."""

    def __init__(self) -> None:
        self._tries = 0

    def reset(self) -> None:
        """Redis answered: the next failure starts from the shortest wait again."""
        self._tries = 0

    async def wait(self) -> None:
        """Sleep for the next wait."""
        self._tries += 1
        await asyncio.sleep(min(5.0, 0.1 * 2 ** min(self._tries, 6)) * random.uniform(0.5, 1.0))
