"""Fixed windows of counted uses per subject, shared by every API replica: a token's API
requests, a tenant's test sends, failed authentications from a client address."""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Callable

from redis.asyncio import Redis

from relay.store import keys, lua
from relay.store.gathering import Gathering


class WindowLimiter:
    """Allows `limit` uses per subject in each window of `window_seconds`.

    `key` names the counter of one subject in one window (numbered since the epoch); a limit of
    0 allows everything. Every API request is counted so: the uses a process makes at once go
    to Redis in one call (see Gathering), each counted and answered as if alone. A round trip
    of its own for each took a third of a request's CPU.
    """

    def __init__(
        self, redis: Redis, limit: int, window_seconds: int, key: Callable[[str, int], str]
    ) -> None:
        self._limit = limit
        self._window = window_seconds
        self._key = key
        self._count = lua.register(redis, "window_count")
        self._counting: Gathering[None, str, int] = Gathering(self._count_all)

    async def wait(self, subject: str) -> int:
        """Count one use; 0 while within the budget, else whole seconds until the window ends."""
        if self._limit <= 0:
            return 0
        now = time.time()
        window = int(now // self._window)
        used = await self._counting(None, self._key(subject, window))
        if used <= self._limit:
            return 0
        return max(1, math.ceil((window + 1) * self._window - now))

    async def _count_all(self, _: None, counters: list[str]) -> AsyncIterator[int]:
        # The counter outlives its window by a second, so a late INCR never starts it afresh.
        for used in await self._count(keys=counters, args=[self._window + 1]):
            yield int(used)


# Addresses this process has seen over the limit are kept at most this many at once.
_MAX_BLOCKED = 10_000


class AuthFailureLimiter:
    """Counts failed authentications per client address and minute, in Redis for every replica.

    Only failures are counted, so a valid token costs nothing more. Once an address is over the
    limit, this process answers it without looking any token up until the minute ends: each
    replica learns so from its own next failure from that address, so an address gets at most
    one more lookup per replica and minute than the limit.
    """

    def __init__(self, redis: Redis, per_minute: int) -> None:
        self._window = WindowLimiter(redis, per_minute, 60, keys.auth_failures)
        self._blocked: dict[str, float] = {}

    def wait(self, address: str) -> int | None:
        """Seconds until `address` may try again, or None if it may try now."""
        until = self._blocked.get(address)
        if until is None:
            return None
        left = until - time.time()
        if left <= 0:
            del self._blocked[address]
            return None
        return max(1, math.ceil(left))

    async def failed(self, address: str) -> int | None:
        """Count a failed authentication; seconds to wait if `address` is now over the limit."""
        wait = await self._window.wait(address)
        if not wait:
            return None
        now = time.time()
        if len(self._blocked) >= _MAX_BLOCKED:
            self._blocked = {a: t for a, t in self._blocked.items() if t > now}
        self._blocked[address] = now + wait
        return wait
