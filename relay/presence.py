"""Workers announce themselves every few seconds, so /metrics can count the live ones."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Mapping

import redis.exceptions
from redis.asyncio import Redis

from relay.metrics import Tally
from relay.store.metrics import announce

INTERVAL_SECONDS = 5.0


def worker_name() -> str:
    """`host:pid`: unique among live workers, and says where to look."""
    return f"{socket.gethostname()}:{os.getpid()}"


async def keep_announcing(client: Redis, name: str, tallies: Mapping[str, Tally]) -> None:
    """Announce `name` until cancelled, adding up the failures this process counted (by the
    counter each tally feeds)."""
    while True:
        untold = {field: tally.take() for field, tally in tallies.items()}
        try:
            await announce(client, name, time.time_ns() // 1_000_000, untold)
        except (redis.exceptions.RedisError, OSError):
            for field, tally in tallies.items():
                tally.note(untold[field] + (field == "redis_errors"))
        await asyncio.sleep(INTERVAL_SECONDS)
