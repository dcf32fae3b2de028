"""relay's Redis client: calls made at once go out together, however busy the event loop is."""

from __future__ import annotations

import asyncio
import time

from relay.store.connect import connect_redis
from tests.support import RedisServer

CALLS = 20


async def test_calls_made_at_once_do_not_wait_a_turn_of_the_event_loop_each(
    redis_server: RedisServer,
) -> None:
    client = connect_redis(redis_server.url)
    try:
        await asyncio.gather(*(client.ping() for _ in range(CALLS)))  # a connection for each
        turns = 0
        done = asyncio.Event()

        async def busy() -> None:
            # A task whose every turn takes 10 ms of CPU, as a request being validated does.
            nonlocal turns
            while not done.is_set():
                until = time.perf_counter() + 0.01
                while time.perf_counter() < until:
                    pass
                turns += 1
                await asyncio.sleep(0)

        spinning = asyncio.create_task(busy())
        assert await asyncio.gather(*(client.ping() for _ in range(CALLS))) == [True] * CALLS
        done.set()
        await spinning
        # Each call waited for the ones before it to have their connection checked, one a turn
        # of the loop, while a lock was held across the check: CALLS turns and more.
        assert turns < CALLS // 2, f"{CALLS} calls made at once took {turns} turns of the loop"
    finally:
        await client.aclose()
