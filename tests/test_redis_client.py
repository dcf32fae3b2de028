"""relay's Redis client: calls made at once go out together, however busy the event loop is, on
at most MAX_CONNECTIONS connections a process."""

from __future__ import annotations

import asyncio
import time

from relay.store.connect import MAX_CONNECTIONS, connect_redis
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


async def test_a_flood_of_calls_waits_for_a_connection_rather_than_open_one_each(
    redis_server: RedisServer,
) -> None:
    client = connect_redis(redis_server.url)
    watcher = connect_redis(redis_server.url)
    try:
        clients = int((await watcher.info("clients"))["connected_clients"])
        # More calls at once than the bound, each holding its connection for 1 s: the ones past
        # it wait for a connection to free (within a call's timeout of 1.5 s), then run.
        calls = MAX_CONNECTIONS + 50
        flood = asyncio.gather(*(client.blpop(["nothing"], timeout=1) for _ in range(calls)))
        await asyncio.sleep(0.8)
        during = int((await watcher.info("clients"))["connected_clients"]) - clients
        assert await flood == [None] * calls
        assert 0 < during <= MAX_CONNECTIONS, f"{during} connections for {calls} calls at once"
    finally:
        await client.aclose()
        await watcher.aclose()
