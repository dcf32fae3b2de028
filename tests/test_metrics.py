"""GET /metrics as Prometheus sees it: the gauges and counters the alerts and dashboard use."""

from __future__ import annotations

import asyncio
import re

import httpx
import redis.asyncio

from tests.fixtures import ClientFactory
from tests.flows import Workers, post_event, wait_status, webhook
from tests.receivers import Receiver, Reply
from tests.support import RedisServer


def _value(scrape: str, name: str) -> float | None:
    match = re.search(rf"^{re.escape(name)} (\S+)$", scrape, re.M)
    return float(match[1]) if match else None


async def _scrape(client: httpx.AsyncClient) -> str:
    response = await client.get("/metrics")
    assert response.status_code == 200
    return response.text


async def test_metrics_say_redis_is_unreachable_and_count_the_errors_once_it_is_back(
    make_client: ClientFactory, own_redis: RedisServer
) -> None:
    client = await make_client(redis_url=own_redis.url)
    before = await _scrape(client)
    assert _value(before, "relay_redis_up") == 1
    assert _value(before, "relay_redis_errors_total") == 0

    own_redis.stop()
    down = await _scrape(client)  # still a page, so Prometheus can alert on it
    assert _value(down, "relay_redis_up") == 0
    assert _value(down, "relay_deliveries_due") is None  # nothing made up
    assert (await client.get("/readyz")).status_code == 503
    assert (await client.get("/v1/webhooks")).status_code == 503

    own_redis.start()
    for _ in range(100):
        if (await client.get("/readyz")).status_code == 200:
            break
        await asyncio.sleep(0.1)
    after = await _scrape(client)
    assert _value(after, "relay_redis_up") == 1
    # The failed scrape, the failed readiness check and the 503 were each counted.
    errors = _value(after, "relay_redis_errors_total")
    assert errors is not None and errors >= 3


async def test_disabled_webhooks_are_counted(admin: httpx.AsyncClient) -> None:
    first = await webhook(admin, "https://example.com/a")
    second = await webhook(admin, "https://example.com/b")
    assert _value(await _scrape(admin), "relay_webhooks_disabled") == 0

    for hook in (first, second):
        await admin.patch(f"/v1/webhooks/{hook['id']}", json={"enabled": False})
    assert _value(await _scrape(admin), "relay_webhooks_disabled") == 2

    await admin.patch(f"/v1/webhooks/{first['id']}", json={"enabled": True})
    await admin.delete(f"/v1/webhooks/{second['id']}")
    assert _value(await _scrape(admin), "relay_webhooks_disabled") == 0


async def test_live_workers_are_counted(admin: httpx.AsyncClient, workers: Workers) -> None:
    assert _value(await _scrape(admin), "relay_workers") == 0
    started = await workers(2)

    async def count() -> float | None:
        return _value(await _scrape(admin), "relay_workers")

    for _ in range(200):
        if await count() == 2:
            break
        await asyncio.sleep(0.1)
    assert await count() == 2 and len(started) == 2


async def test_an_event_that_goes_nowhere_says_why_and_is_counted(
    admin: httpx.AsyncClient,
) -> None:
    await webhook(admin, "https://example.com/posts", tenant="acme", events=["post.*"])
    off = await webhook(admin, "https://example.com/media", tenant="acme", events=["media.*"])
    await admin.patch(f"/v1/webhooks/{off['id']}", json={"enabled": False})
    media = {"media_id": "m_1", "url": "https://example.com/m.png", "mime": "image/png"}

    async def reason(tenant: str, **fields: object) -> object:
        response = await post_event(admin, tenant, **fields)
        assert response.status_code == 202, response.text
        event = response.json()["data"]
        assert event["deliveries"] or event["undeliverable"] is not None
        return event["undeliverable"]

    assert await reason("acmee") == "no_webhooks"  # a mistyped tenant
    assert await reason("acmee") == "no_webhooks"
    assert (
        await reason("acme", type="post.failed", data={"post_id": 1, "error": {"message": "x"}})
        is None
    )
    assert await reason("acme", type="media.uploaded", data=media) == "webhooks_disabled"
    admin_types = await admin.post(
        "/v1/event-types", json={"name": "order.placed", "schema": {"type": "object"}}
    )
    assert admin_types.status_code == 201, admin_types.text
    assert await reason("acme", type="order.placed", data={}) == "no_subscribers"

    # A repeat of an upstream id shows the first event as it is; it accepted nothing new.
    first = await post_event(admin, "acmee", id="up_1")
    repeat = await post_event(admin, "acmee", id="up_1")
    assert first.json()["data"]["undeliverable"] == "no_webhooks"
    assert repeat.status_code == 200 and "undeliverable" not in repeat.json()["data"]

    scrape = await _scrape(admin)
    assert _value(scrape, 'relay_events_undelivered_total{reason="no_webhooks"}') == 3
    assert _value(scrape, 'relay_events_undelivered_total{reason="webhooks_disabled"}') == 1
    assert _value(scrape, 'relay_events_undelivered_total{reason="no_subscribers"}') == 1
    assert _value(scrape, 'relay_events_accepted_total{type="post.failed"}') == 1


async def test_delivery_lag_is_how_long_the_oldest_due_delivery_has_waited(
    admin: httpx.AsyncClient, workers: Workers
) -> None:
    async with Receiver() as rx:
        hook = await webhook(admin, rx.url("/hook"))
        assert _value(await _scrape(admin), "relay_delivery_lag_seconds") == 0
        # No worker yet: the delivery is due at once and waits.
        event = (await post_event(admin)).json()["data"]
        await asyncio.sleep(1.5)
        waited = _value(await _scrape(admin), "relay_delivery_lag_seconds")
        assert waited is not None and 1.4 <= waited < 10, waited
        assert _value(await _scrape(admin), "relay_deliveries_due") == 1

        await workers(1)
        await wait_status(admin, hook["id"], event["deliveries"][0]["id"], "delivered")
        assert _value(await _scrape(admin), "relay_delivery_lag_seconds") == 0


async def test_api_requests_are_counted_by_route_and_status_with_their_latency(
    admin: httpx.AsyncClient,
) -> None:
    hook = await webhook(admin, "https://example.com/hook")
    for _ in range(2):
        assert (await post_event(admin)).status_code == 202
    assert (await admin.get(f"/v1/webhooks/{hook['id']}")).status_code == 200
    assert (await admin.get("/v1/webhooks/wh_nothing")).status_code == 404
    assert (await admin.get("/v1/no/such/path/wh_x")).status_code == 404
    too_large = await admin.post("/v1/events", content=b"{" + b" " * 2_000_000 + b"}")
    assert too_large.status_code == 413

    scrape = await _scrape(admin)
    requests = "relay_http_requests_total"
    post = 'method="POST",route="/v1/events"'
    assert _value(scrape, f'{requests}{{{post},status="202"}}') == 2
    assert _value(scrape, f'{requests}{{{post},status="413"}}') == 1
    one = 'method="GET",route="/v1/webhooks/{id}"'
    assert _value(scrape, f'{requests}{{{one},status="200"}}') == 1
    assert _value(scrape, f'{requests}{{{one},status="404"}}') == 1
    assert _value(scrape, f'{requests}{{method="GET",route="unmatched",status="404"}}') == 1
    # Routes, never paths: no object's id makes a series of its own.
    assert hook["id"] not in scrape and "wh_nothing" not in scrape and "wh_x" not in scrape

    duration = "relay_http_request_duration_seconds"
    assert _value(scrape, f"{duration}_count{{{post}}}") == 3
    assert _value(scrape, f'{duration}_bucket{{le="+Inf",{post}}}') == 3
    assert _value(scrape, f'{duration}_bucket{{le="30.0",{post}}}') == 3
    total = _value(scrape, f"{duration}_sum{{{post}}}")
    assert total is not None and 0 < total < 30


async def test_redis_memory_is_shown_against_its_limit(
    make_client: ClientFactory, own_redis: RedisServer
) -> None:
    client = await make_client(redis_url=own_redis.url)
    direct = redis.asyncio.Redis.from_url(own_redis.url)
    try:
        await direct.config_set("maxmemory", 64 * 1024 * 1024)
        scrape = await _scrape(client)
        assert _value(scrape, "relay_redis_memory_max_bytes") == 64 * 1024 * 1024
        used = _value(scrape, "relay_redis_memory_used_bytes")
        assert used is not None and 0 < used < 64 * 1024 * 1024

        await direct.config_set("maxmemory", 0)
        assert _value(await _scrape(client), "relay_redis_memory_max_bytes") == 0
    finally:
        await direct.aclose()


async def test_webhooks_disabled_for_failing_are_counted_apart_from_those_their_owner_disabled(
    admin: httpx.AsyncClient, workers: Workers
) -> None:
    owned = await webhook(admin, "https://example.com/paused")
    await admin.patch(f"/v1/webhooks/{owned['id']}", json={"enabled": False})
    assert _value(await _scrape(admin), "relay_webhooks_auto_disabled_total") == 0

    await workers()
    async with Receiver() as rx:
        rx.answer(Reply(410))  # gone: disabled at its first answer
        hook = await webhook(admin, rx.url("/hook"))
        event = (await post_event(admin)).json()["data"]
        await wait_status(admin, hook["id"], event["deliveries"][0]["id"], "failed")
    for _ in range(100):  # the worker adds its counts every few seconds
        if _value(await _scrape(admin), "relay_webhooks_auto_disabled_total") == 1:
            break
        await asyncio.sleep(0.1)
    scrape = await _scrape(admin)
    assert _value(scrape, "relay_webhooks_auto_disabled_total") == 1
    assert _value(scrape, "relay_webhooks_disabled") == 2
