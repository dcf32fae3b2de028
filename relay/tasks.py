"""Stopping a process's background tasks."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

# How long a cancelled task has to end before it is cancelled again.
_AGAIN_AFTER_SECONDS = 0.1


async def cancel(tasks: Iterable[asyncio.Task[object]]) -> None:
    """Cancel `tasks` and wait until each has ended.

    A task is cancelled again until it ends: on Python 3.11, `asyncio.wait_for` — which redis-py
    wraps around every write to a socket with a timeout — drops a cancellation that arrives just
    as the write completes, and a loop that lost its cancellation would run on forever.
    """
    pending = set(tasks)
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=_AGAIN_AFTER_SECONDS)
