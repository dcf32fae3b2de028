"""Steps many delivery tests share: register webhooks, post events, wait; the `workers`
fixture's schedule and type (tests/fixtures.py)."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import redis.asyncio

from tests.support import RedisServer

# Short steps so a whole schedule runs within a test; jitter still applies (±20 %).
SCHEDULE = "0.3,0.6,1.2"
Workers = Callable[..., Awaitable[list[subprocess.Popen[bytes]]]]


async def webhook(
    client: httpx.AsyncClient, url: str, tenant: str = "space_42", **fields: Any
) -> dict[str, Any]:
    response = await client.post("/v1/webhooks", json={"url": url, "tenant_id": tenant, **fields})
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


async def post_event(
    client: httpx.AsyncClient, tenant: str = "space_42", **fields: Any
) -> httpx.Response:
    body = {"type": "post.published", "tenant_id": tenant, "data": {"post_id": "p_1"}, **fields}
    return await client.post("/v1/events", json=body)


async def wait_status(
    client: httpx.AsyncClient, webhook_id: str, delivery_id: str, status: str, timeout: float = 20
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        response = await client.get(f"/v1/webhooks/{webhook_id}/deliveries/{delivery_id}")
        data: dict[str, Any] = response.json()["data"]
        if data["status"] == status:
            return data
        if time.monotonic() > deadline:
            raise AssertionError(f"still {data['status']} after {timeout}s: {data}")
        await asyncio.sleep(0.05)


async def commands_sent_while(
    own_redis: RedisServer, action: Awaitable[httpx.Response]
) -> list[str]:
    """The commands relay sent Redis while `action` ran (not those its scripts ran)."""
    end = "end-of-watch"
    async with (
        redis.asyncio.Redis.from_url(own_redis.url) as client,
        client.monitor() as monitor,
    ):
        response = await action
        assert response.status_code < 300, response.text
        await client.echo(end)
        sent: list[str] = []
        async for seen in monitor.listen():
            if end in seen["command"]:
                return sent
            if seen["client_type"] != "lua":
                sent.append(seen["command"].split()[0].upper())
    raise AssertionError("the monitor stopped")
