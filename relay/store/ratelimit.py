"""Fixed windows of counted uses per subject (a token's API requests, a tenant's test sends),
shared by every API replica."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from redis.asyncio import Redis

_COUNT = """
local used = redis.call('INCR', KEYS[1])
if used == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return used
"""


class WindowLimiter:
    """Allows `limit` uses per subject in each window of `window_seconds`; one round trip a use.

    `key` names the counter of one subject in one window (numbered since the epoch); a limit of
    0 allows everything.
    """

    def __init__(
        self, redis: Redis, limit: int, window_seconds: int, key: Callable[[str, int], str]
    ) -> None:
        self._limit = limit
        self._window = window_seconds
        self._key = key
        self._count = redis.register_script(_COUNT)

    async def wait(self, subject: str) -> int:
        """Count one use; 0 while within the budget, else whole seconds until the window ends."""
        if self._limit <= 0:
            return 0
        now = time.time()
        window = int(now // self._window)
        # The counter outlives its window by a second, so a late INCR never starts it afresh.
        used = await self._count(keys=[self._key(subject, window)], args=[self._window + 1])
        if int(used) <= self._limit:
            return 0
        return max(1, math.ceil((window + 1) * self._window - now))
