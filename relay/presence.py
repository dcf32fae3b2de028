"""Workers announce themselves every few seconds, so /metrics can count the live ones."""

from __future__ import annotations

import asyncio
import os
import socket
import time

import redis.exceptions
from redis.asyncio import Redis

from relay.metrics import RedisErrorTally
from relay.store.metrics import announce

INTERVAL_SECONDS = 5.0


def worker_name() -> str:
    """`host:pid`: unique among live workers, and says where to look."""
    return f"{socket.gethostname()}:{os.getpid()}"


async def keep_announcing(client: Redis, name: str, errors: RedisErrorTally) -> None:
    """Announce `name` until cancelled, passing on the Redis errors this process counted."""
    while True:
        untold = errors.take()
        try:
            await announce(client, name, time.time_ns() // 1_000_000, untold)
        except (redis.exceptions.RedisError, OSError):
            errors.note(untold + 1)
        await asyncio.sleep(INTERVAL_SECONDS)
