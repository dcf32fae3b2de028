"""What relay relies on from arq, through its public API: a failing test here means an arq
release changed behaviour relay depends on (see the pin in pyproject.toml)."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path
from typing import Any

import redis.asyncio

from relay.delivery.queue import JobQueue, job_worker
from relay.store.connect import connect_redis
from tests.support import RedisServer

RELAY = Path(__file__).resolve().parents[1] / "relay"


def test_only_the_queue_adapter_imports_arq() -> None:
    importers = []
    for path in RELAY.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            if any(n == "arq" or n.startswith("arq.") for n in names):
                importers.append(path.relative_to(RELAY).as_posix())
    assert sorted(set(importers)) == ["delivery/queue.py"]


async def test_a_job_id_is_enqueued_once_and_run_by_the_worker(
    redis_client: redis.asyncio.Redis, redis_server: RedisServer
) -> None:
    ran: list[tuple[str, int]] = []
    done = asyncio.Event()

    async def job(ctx: dict[str, Any], name: str, number: int) -> None:
        assert ctx["marker"] == "ours"  # the context relay passes reaches every job
        ran.append((name, number))
        done.set()

    queue = JobQueue(redis_client)
    assert await queue.enqueue("job", "job-1", "first", 1) is True
    # The same id again, queued or not yet run: nothing more is queued.
    assert await queue.enqueue("job", "job-1", "second", 2) is False

    own = connect_redis(redis_server.url)
    worker = job_worker(own, [("job", job)], {"marker": "ours"}, timeout_seconds=5)
    main = asyncio.create_task(worker.main())
    try:
        await asyncio.wait_for(done.wait(), 10)
        await asyncio.sleep(0.2)  # let arq finish the job's bookkeeping
    finally:
        main.cancel()
        await asyncio.gather(main, return_exceptions=True)
        await asyncio.gather(worker.close(), return_exceptions=True)
    assert ran == [("first", 1)]
