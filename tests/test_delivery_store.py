"""The delivery scripts' own guarantees, driven directly: leases and their owners."""

from __future__ import annotations

import asyncio

import orjson
import redis.asyncio

from relay.delivery.archive import Archive
from relay.delivery.model import Attempt, Settlement, Status
from relay.delivery.store import DeliveryStore, NewEvent, PlannedDelivery
from relay.store import keys
from relay.timefmt import now, rfc3339

WEBHOOK = {"id": "wh_1", "enabled": True, "rate_limit_per_second": None}


def _result(code: int) -> Settlement:
    attempt = Attempt(1, rfc3339(now()), 5, code, None, "", {}, "http://127.0.0.1/")
    return Settlement(Status.DELIVERED, attempt, None, code, None, endpoint_ok=True)


async def test_a_stale_lease_holder_cannot_settle_over_the_worker_that_took_over(
    redis_client: redis.asyncio.Redis, archive: Archive
) -> None:
    store = DeliveryStore(redis_client, 3600, 3600, archive)
    await redis_client.set(keys.webhook("wh_1"), orjson.dumps(WEBHOOK))
    event = NewEvent("evt_1", "post.published", "t1", rfc3339(now()), 0, None, b"{}")
    await store.accept(event, [PlannedDelivery("dlv_1", "wh_1")])

    [stale] = (await store.claim("a", 10, lease_ms=50, concurrency=1)).claims
    await asyncio.sleep(0.1)  # worker a stalls past its lease
    [fresh] = (await store.claim("b", 10, lease_ms=60_000, concurrency=1)).claims
    assert fresh.attempt == stale.attempt == 1 and fresh.token != stale.token

    refused = await store.settle(stale, _result(500))
    # b's slot is still held: the endpoint's concurrency cap still counts b's attempt.
    assert not refused.written
    assert await redis_client.zcard(keys.endpoint_slots("wh_1")) == 1
    assert (await store.claim("c", 10, lease_ms=60_000, concurrency=1)).claims == []

    assert (await store.settle(fresh, _result(200))).written
    delivery = await store.get("dlv_1")
    assert delivery.status is Status.DELIVERED and delivery.attempt_count == 1
    assert [a["status_code"] for a in await store.attempts(delivery)] == [200]
