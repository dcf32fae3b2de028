"""Fixed windows shared by every API replica: requests per token per second, and failed
authentications per client address per minute."""

from __future__ import annotations

import math
import time

from redis.asyncio import Redis

from relay.store import keys

_COUNT = """
local used = redis.call('INCR', KEYS[1])
if used == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return used
"""


class TokenRateLimiter:
    """Counts each token's requests per second; one round trip per request."""

    def __init__(self, redis: Redis, per_second: int) -> None:
        self._per_second = per_second
        self._count = redis.register_script(_COUNT)

    async def allow(self, token_id: str) -> bool:
        """Count this request; False once the token is over its budget for this second."""
        if self._per_second <= 0:
            return True
        used = await self._count(keys=[keys.token_rate(token_id, int(time.time()))], args=[2])
        return int(used) <= self._per_second


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
        self._per_minute = per_minute
        self._count = redis.register_script(_COUNT)
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
        if self._per_minute <= 0:
            return None
        now = time.time()
        minute = int(now // 60)
        used = await self._count(keys=[keys.auth_failures(address, minute)], args=[120])
        if int(used) <= self._per_minute:
            return None
        if len(self._blocked) >= _MAX_BLOCKED:
            self._blocked = {a: t for a, t in self._blocked.items() if t > now}
        self._blocked[address] = (minute + 1) * 60
        return self.wait(address)
