"""Fixed one-second windows of API requests per token, shared by every API replica."""

from __future__ import annotations

import time

from redis.asyncio import Redis

from relay.store import keys

_COUNT = """
local used = redis.call('INCR', KEYS[1])
if used == 1 then redis.call('EXPIRE', KEYS[1], 2) end
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
        used = await self._count(keys=[keys.token_rate(token_id, int(time.time()))])
        return int(used) <= self._per_second
