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


async def _reply_bytes(redis_client: redis.asyncio.Redis) -> int:
    """Bytes Redis has written to its clients so far."""
    return int((await redis_client.info("stats"))["total_net_output_bytes"])


async def _webhooks(redis_client: redis.asyncio.Redis, count: int) -> list[str]:
    ids = [f"wh_{n}" for n in range(count)]
    for webhook_id in ids:
        await redis_client.set(
            keys.webhook(webhook_id), orjson.dumps({**WEBHOOK, "id": webhook_id})
        )
    return ids


def _large_event(event_id: str, size: int) -> NewEvent:
    payload = orjson.dumps({"id": event_id, "data": {"text": "x" * size}})
    return NewEvent(event_id, "post.published", "t1", rfc3339(now()), 0, None, payload)


async def test_a_claim_carries_an_events_payload_once_for_all_its_deliveries(
    redis_client: redis.asyncio.Redis, archive: Archive
) -> None:
    store = DeliveryStore(redis_client, 3600, 3600, archive)
    webhook_ids = await _webhooks(redis_client, 100)
    event = _large_event("evt_1", 1_048_576)
    await store.accept(event, [PlannedDelivery(f"dlv_{w}", w) for w in webhook_ids])

    before = await _reply_bytes(redis_client)
    claims = (await store.claim("a", 100, lease_ms=60_000, concurrency=4)).claims
    sent = await _reply_bytes(redis_client) - before

    assert len(claims) == 100
    assert all(c.payload == event.payload for c in claims)
    # Once, not once per delivery: Redis builds the reply while every other client waits.
    assert sent < 2 * len(event.payload), sent


async def test_a_claim_stops_at_its_payload_bound_and_leaves_the_rest_due_now(
    redis_client: redis.asyncio.Redis, archive: Archive
) -> None:
    size = 10_000
    store = DeliveryStore(redis_client, 3600, 3600, archive, payload_bytes_per_call=3 * size)
    [webhook_id] = await _webhooks(redis_client, 1)
    events = [_large_event(f"evt_{n}", size) for n in range(10)]
    for n, event in enumerate(events):
        await store.accept(event, [PlannedDelivery(f"dlv_{n}", webhook_id)])

    first = await store.claim("a", 100, lease_ms=60_000, concurrency=100)
    # Each payload is a little over `size`: two fit the bound, a third would pass it.
    assert [c.event_id for c in first.claims] == ["evt_0", "evt_1"]
    assert first.next_due_in_ms == 0
    taken = [c.event_id for c in first.claims]
    while len(taken) < len(events):
        poll = await store.claim("a", 100, lease_ms=60_000, concurrency=100)
        assert 1 <= len(poll.claims) <= 2
        taken += [c.event_id for c in poll.claims]
    assert taken == [e.id for e in events]
    assert [c.payload for c in first.claims] == [events[0].payload, events[1].payload]


async def test_an_event_larger_than_the_bound_is_still_claimed_alone(
    redis_client: redis.asyncio.Redis, archive: Archive
) -> None:
    store = DeliveryStore(redis_client, 3600, 3600, archive, payload_bytes_per_call=1024)
    webhook_ids = await _webhooks(redis_client, 3)
    large, small = _large_event("evt_1", 10_000), _large_event("evt_2", 10)
    await store.accept(large, [PlannedDelivery(f"dlv_1_{w}", w) for w in webhook_ids])
    await store.accept(small, [PlannedDelivery("dlv_2", webhook_ids[0])])

    first = (await store.claim("a", 100, lease_ms=60_000, concurrency=4)).claims
    assert [(c.event_id, c.payload) for c in first] == [("evt_1", large.payload)] * 3
    [then] = (await store.claim("a", 100, lease_ms=60_000, concurrency=4)).claims
    assert (then.event_id, then.payload) == ("evt_2", small.payload)


async def test_a_started_claim_holds_for_the_attempts_lease_and_a_lapsed_one_is_taken_over(
    redis_client: redis.asyncio.Redis, archive: Archive
) -> None:
    store = DeliveryStore(redis_client, 3600, 3600, archive)
    await redis_client.set(keys.webhook("wh_1"), orjson.dumps(WEBHOOK))
    for n in (1, 2):
        event = NewEvent(f"evt_{n}", "post.published", "t1", rfc3339(now()), 0, None, b"{}")
        await store.accept(event, [PlannedDelivery(f"dlv_{n}", "wh_1")])

    # Worker a got both claims; it starts the first and never hears of the second (a lost
    # reply would look the same to Redis).
    started, lost = (await store.claim("a", 10, lease_ms=100, concurrency=2)).claims
    assert await store.start([started], lease_ms=60_000) == [started]
    assert await store.start([started], lease_ms=60_000) == [started]  # asked again: the same
    await asyncio.sleep(0.2)  # past the claim's lease

    [taken] = (await store.claim("b", 10, lease_ms=100, concurrency=2)).claims
    assert (taken.delivery_id, taken.attempt) == (lost.delivery_id, 1)
    assert await store.start([taken], lease_ms=60_000) == [taken]
    assert await store.start([lost], lease_ms=60_000) == []
    assert not (await store.settle(lost, _result(500))).written
    # The started one still holds its endpoint slot, past the claim's lease: a third delivery
    # waits for one.
    event = NewEvent("evt_3", "post.published", "t1", rfc3339(now()), 0, None, b"{}")
    await store.accept(event, [PlannedDelivery("dlv_3", "wh_1")])
    assert (await store.claim("c", 10, lease_ms=100, concurrency=2)).claims == []
    assert await redis_client.zcard(keys.endpoint_parked("wh_1")) == 1

    assert (await store.settle(started, _result(200))).written
    assert (await store.settle(taken, _result(200))).written
    for n in (1, 2):
        delivery = await store.get(f"dlv_{n}")
        assert delivery.status is Status.DELIVERED and delivery.attempt_count == 1


async def test_a_claim_whose_lease_lapsed_cannot_be_started(
    redis_client: redis.asyncio.Redis, archive: Archive
) -> None:
    store = DeliveryStore(redis_client, 3600, 3600, archive)
    await redis_client.set(keys.webhook("wh_1"), orjson.dumps(WEBHOOK))
    event = NewEvent("evt_1", "post.published", "t1", rfc3339(now()), 0, None, b"{}")
    await store.accept(event, [PlannedDelivery("dlv_1", "wh_1")])

    [late] = (await store.claim("a", 10, lease_ms=50, concurrency=1)).claims
    await asyncio.sleep(0.1)
    # Nobody took it over yet, but anyone may at any moment: it is a new claim's.
    assert await store.start([late], lease_ms=60_000) == []
    [again] = (await store.claim("a", 10, lease_ms=60_000, concurrency=1)).claims
    assert again.delivery_id == "dlv_1" and again.token != late.token
