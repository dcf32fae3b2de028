"""Workers announce themselves every few seconds, so /metrics can count the live ones."""

from __future__ import annotations

import asyncio
import os
import socket
import time

import redis.exceptions
from redis.asyncio import Redis

from relay.metrics import Counts
from relay.store.metrics import announce

INTERVAL_SECONDS = 5.0


def worker_name() -> str:
    """`host:pid`: unique among live workers, and says where to look."""
    return f"{socket.gethostname()}:{os.getpid()}"


async def keep_announcing(client: Redis, name: str | None, counts: Counts) -> None:
    """Add what this process counted every few seconds until cancelled (and announce worker
    `name`, if any)."""
    while True:
        await flush(client, name, counts)
        await asyncio.sleep(INTERVAL_SECONDS)


async def flush(client: Redis, name: str | None, counts: Counts) -> None:
    """Add this process's counts to the shared counters (and announce worker `name`, if any);
    on failure keep them for next time, and count the failure."""
    taken = counts.take()
    try:
        await announce(client, name, time.time_ns() // 1_000_000, taken)
    except (redis.exceptions.RedisError, OSError):
        counts.give_back(taken)
        counts.add("redis_errors")
