"""Redis's memory as relay depends on it: whether Redis is full, and whether it may evict."""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import ResponseError

# The one policy under which a full Redis refuses writes instead of dropping keys to make room.
SAFE_POLICY = "noeviction"


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


def _what_goes(policy: str) -> str:
    if policy.startswith("allkeys-"):
        return "any of relay's keys, accepted deliveries among them"
    if policy.startswith("volatile-"):
        return (
            "relay's keys that expire: idempotency records and upstream ids (a retried request "
            "or event would be taken twice), audit entries not yet in history, expiring tokens"
        )
    return "relay's keys"


async def policy(redis: Redis) -> str | None:
    """Redis's maxmemory-policy, or None when relay's user may not read it (INFO refused); a
    RedisError if Redis cannot be reached."""
    try:
        return (await read(redis)).policy
    except ResponseError:
        return None


def eviction_risk(policy: str | None) -> str | None:
    """Why relay's keys are not safe from eviction under `policy` (None: they are)."""
    fix = f"set maxmemory-policy {SAFE_POLICY} (in redis.conf, or CONFIG SET)"
    if policy is None:  # nothing tells what a full Redis would do
        return f"cannot read Redis's maxmemory-policy (INFO memory refused); allow it, and {fix}"
    if policy == SAFE_POLICY:
        return None
    return (
        f"Redis's maxmemory-policy is {policy}: when full it may evict {_what_goes(policy)}; {fix}"
    )
