"""Stopping background tasks."""

from __future__ import annotations

import asyncio

from relay import tasks


async def test_a_task_that_lost_its_cancellation_is_still_stopped() -> None:
    # As a loop does when a cancellation reaches it just as a redis-py write completes (Python
    # 3.11's asyncio.wait_for drops it): it goes on as if nothing had happened.
    rounds = 0

    async def loop() -> None:
        nonlocal rounds
        while True:
            rounds += 1
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if rounds > 1:
                    raise
                asyncio.current_task().uncancel()  # type: ignore[union-attr]

    task = asyncio.create_task(loop())
    await asyncio.sleep(0)
    await asyncio.wait_for(tasks.cancel([task]), 5)
    assert task.cancelled()
    assert rounds == 2
