"""Nothing accepted is lost: worker crashes, lost jobs, Redis restarts, and bounded memory."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter

import httpx
import redis.asyncio

from relay.delivery.archive import Archive
from relay.delivery.store import DeliveryStore
from relay.store import keys
from tests.fixtures import ClientFactory
from tests.flows import Workers, post_event, wait_status, webhook
from tests.receivers import Receiver, Reply
from tests.support import RedisServer


async def _all_delivered(client: httpx.AsyncClient, webhook_id: str, expected: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        page = await client.get(
            f"/v1/webhooks/{webhook_id}/deliveries", params={"status": "delivered", "limit": 100}
        )
        seen = len(page.json()["data"])
        cursor = page.json()["next_cursor"]
        while cursor:
            page = await client.get(
                f"/v1/webhooks/{webhook_id}/deliveries",
                params={"status": "delivered", "limit": 100, "cursor": cursor},
            )
            seen += len(page.json()["data"])
            cursor = page.json()["next_cursor"]
        if seen == expected:
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"only {seen} of {expected} delivered")


async def test_sigkilled_worker_loses_nothing(admin: httpx.AsyncClient, workers: Workers) -> None:
    total = 300
    doomed, survivor = await workers(2, RELAY_DELIVERY_TIMEOUT="1")
    async with Receiver() as rx:
        rx.answer(Reply(200, delay=0.05))
        hook = await webhook(admin, rx.url("/hook"))
        event_ids: list[str] = []
        for start in range(0, total, 50):
            batch = await asyncio.gather(
                *(post_event(admin, data={"post_id": i}) for i in range(start, start + 50))
            )
            assert all(r.status_code == 202 for r in batch)
            event_ids += [r.json()["data"]["id"] for r in batch]
            if start == 100:
                # Only where the worker dies: with deliveries in flight, at whatever pace a busy
                # machine allows.
                await rx.wait_for(60, timeout=30)
                doomed.send_signal(signal.SIGKILL)
        await asyncio.to_thread(doomed.wait, 10)
        await _all_delivered(admin, hook["id"], total)
        received = Counter(r.headers["webhook-id"] for r in rx.requests)
    assert set(received) == set(event_ids)
    duplicates = sum(n - 1 for n in received.values())
    print(f"{total} events, {len(rx.requests)} requests, {duplicates} duplicates")
    # At-least-once: an attempt in flight when the worker died may arrive twice.
    assert duplicates <= 100, duplicates
    assert survivor.poll() is None


async def test_a_delivery_whose_worker_died_after_claiming_it_is_taken_over(
    admin: httpx.AsyncClient,
    workers: Workers,
    redis_client: redis.asyncio.Redis,
    archive: Archive,
) -> None:
    async with Receiver() as rx:
        hook = await webhook(admin, rx.url("/hook"))
        event = (await post_event(admin)).json()["data"]
        [delivery] = event["deliveries"]
        # A worker that claims the delivery and dies before it sends anything.
        doomed = DeliveryStore(redis_client, 60, 3600, archive)
        poll = await doomed.claim("doomed", 10, lease_ms=1500, concurrency=4)
        assert [c.delivery_id for c in poll.claims] == [delivery["id"]]
        await workers()
        [request] = await rx.wait_for(1, timeout=15)
        await wait_status(admin, hook["id"], delivery["id"], "delivered")
    assert request.headers["webhook-id"] == event["id"]
    # The worker adds what it counted every few seconds.
    deadline = time.monotonic() + 15
    while "relay_sweeper_requeued_total 1.0" not in (metrics := (await admin.get("/metrics")).text):
        assert time.monotonic() < deadline, metrics
        await asyncio.sleep(0.2)


async def test_accepted_events_survive_a_redis_restart(
    make_client: ClientFactory, workers: Workers, own_redis: RedisServer
) -> None:
    server = own_redis
    client = await make_client(redis_url=server.url)
    async with Receiver() as rx:
        await webhook(client, rx.url("/hook"))
        ids = [(await post_event(client)).json()["data"]["id"] for _ in range(20)]
        await asyncio.to_thread(server.stop)  # SIGTERM: Redis flushes its AOF and exits
        await asyncio.to_thread(server.start)
        await workers(1, RELAY_REDIS_URL=server.url)
        await rx.wait_for(20, timeout=20)
        assert {r.headers["webhook-id"] for r in rx.requests} == set(ids)


async def test_every_key_expires_or_has_an_owner(
    admin: httpx.AsyncClient, workers: Workers, redis_client: redis.asyncio.Redis
) -> None:
    await workers()
    async with Receiver() as rx:
        hook = await webhook(admin, rx.url("/hook"))
        event = (await post_event(admin, id="upstream-1")).json()["data"]
        delivery_id = event["deliveries"][0]["id"]
        await wait_status(admin, hook["id"], delivery_id, "delivered")
    # A finished delivery, its attempts and its event are the history writer's until PostgreSQL
    # has them; then they leave Redis. The endpoint, and its tenant, leave the schedule at the
    # first claim after the last one's lease (5 s).
    finished = [
        keys.delivery(delivery_id),
        keys.attempts(delivery_id),
        keys.event(event["id"]),
        keys.endpoints("space_42"),
        keys.TENANTS,
    ]
    deadline = time.monotonic() + 15
    while await redis_client.exists(*finished):
        assert time.monotonic() < deadline, "history never took the finished delivery"
        await asyncio.sleep(0.1)
    retention = 30 * 86_400
    owned = {
        keys.WEBHOOKS,
        keys.WEBHOOKS_VERSION,  # configuration: changes with the webhooks, never grows
        keys.METRICS,
        keys.QUEUE,  # arq's queue: each job leaves it when it runs
        keys.WAKE,  # idle workers' wake-up list: emptied as they wake
        keys.HISTORY,  # records for history: each entry leaves once PostgreSQL has it
        keys.webhook(hook["id"]),
        keys.tenant_webhooks("space_42"),
    }
    expiring = 0
    async for raw in redis_client.scan_iter("*"):
        key = raw.decode()
        if key in owned:
            continue
        if key.startswith("relay:idem:") or key.startswith("arq:"):
            assert await redis_client.ttl(key) > 0, key
            continue
        # Milliseconds: a per-second counter near its end has a TTL that rounds to 0 seconds.
        ttl_ms = await redis_client.pttl(key)
        if ttl_ms == -2:
            continue  # expired since the scan saw it
        assert 0 < ttl_ms <= retention * 1000, (key, ttl_ms)
        expiring += 1
    assert expiring >= 1  # the upstream id
