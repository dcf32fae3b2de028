"""Redis's memory as relay depends on it: whether Redis is full, and whether it may evict."""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis


@dataclass(frozen=True, slots=True)
class Memory:
    """What INFO memory says of the limit and of what counts against it."""

    used: int
    maxmemory: int  # 0: no limit
    not_counted: int  # replication and AOF buffers, which Redis leaves out of the limit
    policy: str

    @property
    def full(self) -> bool:
        """Whether Redis refuses writes for lack of memory now: its own test, from its figures."""
        return 0 < self.maxmemory < self.used - self.not_counted


async def read(redis: Redis) -> Memory:
    """Redis's memory figures, in one INFO call (CONFIG may be disabled on managed Redis)."""
    info = await redis.info("memory")
    return Memory(
        used=int(info["used_memory"]),
        maxmemory=int(info.get("maxmemory", 0)),
        not_counted=int(info.get("mem_not_counted_for_evict", 0)),
        policy=str(info.get("maxmemory_policy", "unknown")),
    )
