"""Surviving a failover: relay finds the primary through Redis Sentinel and follows it when it
changes, and with RELAY_REDIS_MIN_REPLICAS=1 no event answered 202 dies with the old primary."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.flows import Workers, webhook
from tests.receivers import Receiver
from tests.support import SentinelGroup, free_port, relay_env, spawn_relay, wait_http

pytestmark = pytest.mark.system

ADMIN = "failover-admin-token"
# Events are posted this often, each by a task that retries it until relay answers 200 or 202.
POST_EVERY = 0.05


@dataclass
class Posts:
    """What posting gave: the events relay answered for, and how it answered."""

    answered: dict[str, str] = field(default_factory=dict)  # upstream id -> event id
    statuses: Counter[int] = field(default_factory=Counter)  # 0: no answer at all
    not_replicated: int = 0  # 503s saying too few replicas hold the event
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


async def _post_until_answered(client: httpx.AsyncClient, number: int, posts: Posts) -> None:
    """Post event `number` as an upstream service would: the same upstream id until relay
    answers 200 or 202."""
    body = {
        "type": "post.published",
        "tenant_id": "space_42",
        "data": {"post_id": number},
        "id": f"failover-{number}",
    }
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            response = await client.post("/v1/events", json=body)
        except httpx.HTTPError:
            posts.statuses[0] += 1
        else:
            posts.statuses[response.status_code] += 1
            if response.status_code in (200, 202):
                posts.answered[body["id"]] = response.json()["data"]["id"]
                return
            assert response.status_code == 503, response.text
            assert response.headers["content-type"] == "application/problem+json"
            assert response.headers["retry-after"] == "1"
            problem = response.json()
            assert problem["code"] == "unavailable", problem
            posts.not_replicated += "RELAY_REDIS_MIN_REPLICAS" in problem["detail"]
        await asyncio.sleep(0.2)
    raise AssertionError(f"{body['id']} was never answered")


async def _post_for(client: httpx.AsyncClient, posts: Posts, first: int, count: int) -> None:
    for number in range(first, first + count):
        posts.tasks.append(asyncio.create_task(_post_until_answered(client, number, posts)))
        await asyncio.sleep(POST_EVERY)


async def _wait_for(check: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"not within {timeout} s"
        await asyncio.sleep(0.1)


async def test_every_event_answered_202_is_delivered_after_the_primary_dies(
    sentinel_group: SentinelGroup, workers: Workers, tmp_path: Path
) -> None:
    group = sentinel_group
    settings = {"RELAY_REDIS_URL": group.url, "RELAY_REDIS_MIN_REPLICAS": "1"}
    port = free_port()
    with (tmp_path / "api.log").open("wb") as log:
        api = spawn_relay(
            ["api", "--port", str(port)],
            relay_env(
                group.url,
                RELAY_ADMIN_TOKEN=ADMIN,
                RELAY_API_RATE_LIMIT="0",
                RELAY_ALLOW_PRIVATE_TARGETS="true",
                **settings,
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    relay_workers = await workers(2, **settings)
    base = f"http://127.0.0.1:{port}"
    try:
        await asyncio.to_thread(wait_http, base + "/healthz")
        headers = {"authorization": f"Bearer {ADMIN}"}
        async with (
            httpx.AsyncClient(base_url=base, headers=headers, timeout=10) as client,
            Receiver() as rx,
        ):
            await webhook(client, rx.url("/hook"))
            posts = Posts()
            await _post_for(client, posts, 0, 40)  # events flow…
            old = group.kill_primary()  # …when the primary dies
            flowing = asyncio.create_task(_post_for(client, posts, 40, 60))
            await asyncio.to_thread(group.wait_failed_over, old)
            # The new primary has no replica until the old one comes back as one: what it
            # takes meanwhile is refused, as not known to be durable.
            await _wait_for(lambda: posts.not_replicated, timeout=20)
            await asyncio.to_thread(group.rejoin, old)
            await flowing
            after = len(posts.tasks)
            await _post_for(client, posts, after, 40)
            await asyncio.gather(*posts.tasks)

            accepted = set(posts.answered.values())
            await _wait_for(
                lambda: accepted <= {r.headers["webhook-id"] for r in rx.requests}, timeout=60
            )
            # The same processes throughout: the API and the workers followed the new primary.
            assert api.poll() is None and all(w.poll() is None for w in relay_workers)
            assert posts.statuses[202] >= len(posts.answered) - posts.statuses[200]
            assert all(f"failover-{n}" in posts.answered for n in range(after, after + 40))
    finally:
        api.send_signal(signal.SIGTERM)
        await asyncio.to_thread(api.wait, 15)
