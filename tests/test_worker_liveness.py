"""A worker's liveness endpoint (RELAY_WORKER_HEALTH_PORT): alive while its claim loop turns,
through Redis outages too; 503 once the loop is stuck, so that the orchestrator restarts it."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from relay import liveness
from relay.config import Settings
from relay.delivery.store import Poll
from relay.resources import Resources
from relay.worker import DeliveryWorker
from tests.support import RedisServer, free_port, relay_env, spawn_relay, wait_http


async def _health(port: int) -> httpx.Response:
    async with httpx.AsyncClient(timeout=2) as client:
        return await client.get(f"http://127.0.0.1:{port}/healthz")


async def _health_once(port: int, status: int, timeout: float = 15) -> httpx.Response:
    """The liveness answer as soon as it has `status`; the last one if it has not by `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        answer = await _health(port)
        if answer.status_code == status or time.monotonic() > deadline:
            return answer
        await asyncio.sleep(0.05)


@pytest.mark.system
async def test_a_worker_serves_its_liveness_on_the_port_it_is_given(
    redis_server: RedisServer,
) -> None:
    port = free_port()
    env = relay_env(redis_server.url, RELAY_WORKER_HEALTH_PORT=str(port))
    proc = spawn_relay(["worker"], env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        await asyncio.to_thread(wait_http, f"http://127.0.0.1:{port}/healthz")
        alive = await _health(port)
        assert alive.status_code == 200 and alive.json()["status"] == "ok"
        async with httpx.AsyncClient(timeout=2) as client:
            other = await client.get(f"http://127.0.0.1:{port}/metrics")
        assert other.status_code == 404
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 15)


@pytest.fixture
async def served_worker(
    settings_for: Callable[..., Settings], own_redis: RedisServer
) -> AsyncIterator[tuple[DeliveryWorker, Resources, int]]:
    """A worker in the test's process, claiming from its own Redis, with its liveness served."""
    svc = Resources.open(settings_for(redis_url=own_redis.url))
    worker = DeliveryWorker(svc)
    port = free_port()
    server = await liveness.serve(worker.heartbeat, port)
    task = asyncio.create_task(worker.run())
    yield worker, svc, port
    worker.stop()
    await asyncio.wait_for(task, 10)
    server.close()
    await svc.aclose()


async def test_a_redis_outage_does_not_make_a_worker_look_stuck(
    served_worker: tuple[DeliveryWorker, Resources, int], own_redis: RedisServer
) -> None:
    worker, _, port = served_worker
    # Just above the longest wait between tries while Redis is away (5 s).
    worker.heartbeat.stuck_after = 6.0
    assert (await _health(port)).status_code == 200
    own_redis.stop()
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        answer = await _health(port)
        assert answer.status_code == 200, answer.text
        await asyncio.sleep(0.5)
    own_redis.start()


async def test_a_stuck_claim_loop_fails_the_liveness_check(
    served_worker: tuple[DeliveryWorker, Resources, int],
) -> None:
    worker, svc, port = served_worker
    assert (await _health(port)).status_code == 200
    released = asyncio.Event()
    claim = svc.deliveries.claim

    async def hang(*args: Any, **kwargs: Any) -> Poll:
        await released.wait()
        return await claim(*args, **kwargs)

    # A claim that never returns: the loop stops turning while the process still serves.
    svc.deliveries.claim = hang  # type: ignore[method-assign]
    worker.heartbeat.stuck_after = 0.5
    stuck = await _health_once(port, 503)
    assert stuck.status_code == 503, stuck.text
    assert stuck.json()["status"] == "stuck" and "claim loop" in stuck.json()["detail"]
    released.set()
    worker.heartbeat.stuck_after = 6.0
    # The loop turns again: alive again.
    assert (await _health_once(port, 200)).status_code == 200
