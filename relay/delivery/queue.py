"""Background jobs through arq's public API: the only module that imports arq.

Deliveries do not travel as arq jobs: each endpoint's queue holds them (see `claim.lua`), written
in the same atomic step as the state it serves. arq runs the long, resumable operator jobs —
a recovery's batches — with a deterministic `_job_id`, so enqueuing one twice is harmless.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from arq.connections import ArqRedis
from arq.worker import Worker, func
from redis.asyncio import Redis

from relay.store import keys

JobFunction = Callable[..., Awaitable[Any]]


class JobQueue:
    """Enqueues background jobs on relay's arq queue, over an existing Redis connection pool."""

    def __init__(self, redis: Redis) -> None:
        self._arq = ArqRedis(redis.connection_pool, default_queue_name=keys.QUEUE)

    async def enqueue(self, name: str, job_id: str, *args: Any) -> bool:
        """Queue `name(*args)` as job `job_id`; False if that job is already queued or ran."""
        return await self._arq.enqueue_job(name, *args, _job_id=job_id) is not None


def job_worker(
    redis: Redis,
    functions: Sequence[tuple[str, JobFunction]],
    ctx: dict[str, Any],
    timeout_seconds: float,
) -> Worker:
    """An arq worker running relay's background jobs over `redis`'s connection pool (closed
    with the worker); the caller supervises and stops it."""
    return Worker(
        functions=[
            func(f, name=name, timeout=timeout_seconds)  # type: ignore[arg-type]
            for name, f in functions
        ],
        queue_name=keys.QUEUE,
        # Over relay's own client, not one arq makes from the URL: it follows a Sentinel
        # failover, and fails fast like every other.
        redis_pool=ArqRedis(redis.connection_pool, default_queue_name=keys.QUEUE),
        ctx=ctx,
        max_jobs=4,
        keep_result=0,
        handle_signals=False,
        log_results=False,
    )
