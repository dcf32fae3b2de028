"""The delivery scripts' own guarantees, driven directly: leases, their owners, and attempts made
by a worker that lost its lease."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from datetime import UTC, datetime

import orjson
import pytest
import redis.asyncio

from relay import ids
from relay.api.webhooks import WebhookCreate
from relay.delivery.archive import Archive
from relay.delivery.handover import HistoryHandover
from relay.delivery.model import RETRYABLE, Attempt, Claim, Settlement, Status, Trigger
from relay.delivery.store import DeliveryStore, NewEvent, PlannedDelivery
from relay.history import writer
from relay.history.db import Database
from relay.secrets import Keyring
from relay.store import keys, metrics
from relay.store.tokens import fingerprint
from relay.store.webhooks import WebhookStore
from relay.timefmt import now, rfc3339
from relay.tokens import TokenChanged, TokenCheck
from relay.webhooks import new_webhook
from tests.support import TEST_MASTER_KEY, PostgresServer, script_calls

WEBHOOK = {"id": "wh_1", "tenant_id": "t1", "enabled": True, "rate_limit_per_second": None}


def _result(
    code: int,
    status: Status | None = None,
    number: int = 1,
    trigger: Trigger = Trigger.SCHEDULED,
) -> Settlement:
    attempt = Attempt(number, rfc3339(now()), 5, code, None, "", {}, "http://127.0.0.1/", trigger)
    if status is None:
        status = Status.DELIVERED if code < 300 else Status.FAILED
    # A failed manual attempt has no delay of its own: the schedule's next attempt stays.
    delay = 60_000 if status is Status.PENDING and trigger is Trigger.SCHEDULED else None
    ok = code < 300
    return Settlement(status, attempt, delay, code, None if ok else f"HTTP {code}", endpoint_ok=ok)


async def _store_with(
    redis_client: redis.asyncio.Redis, archive: Archive, deliveries: int = 1
) -> tuple[DeliveryStore, list[str]]:
    """A store with one webhook and one event fanned out to it `deliveries` times."""
    store = DeliveryStore(redis_client, 3600, 3600, archive)
    await redis_client.set(keys.webhook("wh_1"), orjson.dumps(WEBHOOK))
    created = datetime.now(UTC)
    event = NewEvent(ids.new_id("evt"), "post.published", "t1", rfc3339(created), 0, None, b"{}")
    planned = [PlannedDelivery(ids.new_id("dlv"), "wh_1") for _ in range(deliveries)]
    await store.accept(event, planned)
    return store, [d.id for d in planned]


async def _taken_over(store: DeliveryStore) -> tuple[Claim, Claim]:
    """Worker a's claim, which stalls past its lease, and worker b's, which takes it over."""
    [stale] = (await store.claim("a", 10, lease_ms=50, concurrency=1)).claims
    await asyncio.sleep(0.1)
    [fresh] = (await store.claim("b", 10, lease_ms=60_000, concurrency=1)).claims
    assert fresh.delivery_id == stale.delivery_id and fresh.token != stale.token
    return stale, fresh


async def _leases_held(redis_client: redis.asyncio.Redis, webhook_id: str) -> int:
    """The endpoint's slots in use: the leases still running in its queue (scored by when they
    run out less IN_FLIGHT, before every pending delivery)."""
    now = _ms(await redis_client.time())
    return int(
        await redis_client.zcount(keys.endpoint_queue(webhook_id), now - keys.IN_FLIGHT, "(0")
    )


def _ms(time_reply: tuple[int, int]) -> int:
    return int(time_reply[0]) * 1000 + int(time_reply[1]) // 1000


async def _codes(store: DeliveryStore, delivery_id: str) -> list[tuple[object, object]]:
    """The delivery's attempts as (number, status code), as its log shows them."""
    delivery = await store.get(delivery_id)
    return [(a["number"], a["status_code"]) for a in await store.attempts(delivery)]


async def test_a_stale_lease_holder_cannot_settle_over_the_worker_that_took_over(
    redis_client: redis.asyncio.Redis, archive: Archive
) -> None:
    store, [delivery_id] = await _store_with(redis_client, archive)
    stale, fresh = await _taken_over(store)

    late = await store.settle(stale, _result(500, Status.PENDING))
    # Its attempt happened and is logged; the schedule stays b's, and so does b's slot.
    assert late.written
    delivery = await store.get(delivery_id)
    assert delivery.status is Status.DELIVERING and delivery.attempt_count == 1
    assert await _leases_held(redis_client, "wh_1") == 1
    assert (await store.claim("c", 10, lease_ms=60_000, concurrency=1)).claims == []

    assert (await store.settle(fresh, _result(200))).written
    delivery = await store.get(delivery_id)
    assert delivery.status is Status.DELIVERED and delivery.attempt_count == 2
    assert await _codes(store, delivery_id) == [(1, 500), (2, 200)]


async def test_attempts_that_end_together_settle_in_one_call_each_as_if_alone(
    redis_client: redis.asyncio.Redis, archive: Archive
) -> None:
    store, _ = await _store_with(redis_client, archive, deliveries=4)
    claims = (await store.claim("a", 10, lease_ms=60_000, concurrency=4)).claims
    assert len(claims) == 4

    before = await script_calls(redis_client)
    settled = await asyncio.gather(
        store.settle(claims[0], _result(200)),
        store.settle(claims[1], _result(500, Status.PENDING)),
        store.settle(claims[2], _result(410, Status.FAILED)),
        store.settle(claims[3], _result(200)),
    )

    assert await script_calls(redis_client) - before == 1
    assert [s.written for s in settled] == [True] * 4
    # The endpoint's failure streak began with the second, and the third found it running.
    assert [s.failing_since_ms is not None for s in settled] == [False, True, True, False]
    found = [await store.get(c.delivery_id) for c in claims]
    assert [d.status for d in found] == [
        Status.DELIVERED,
        Status.PENDING,
        Status.FAILED,
        Status.DELIVERED,
    ]
    assert [await _codes(store, c.delivery_id) for c in claims] == [
        [(1, 200)],
        [(1, 500)],
        [(1, 410)],
        [(1, 200)],
    ]
    assert await _leases_held(redis_client, "wh_1") == 0


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


async def test_a_payload_sent_to_a_process_is_not_sent_again_for_later_claims_of_its_event(
    redis_client: redis.asyncio.Redis, archive: Archive
) -> None:
    store = DeliveryStore(redis_client, 3600, 3600, archive)
    webhook_ids = await _webhooks(redis_client, 6)
    event = _large_event("evt_1", 100_000)
    await store.accept(event, [PlannedDelivery(f"dlv_{w}", w) for w in webhook_ids])

    # The tenant's limit lets one or two go at a time: the fan-out takes several claims.
    before = await _reply_bytes(redis_client)
    taken: list[Claim] = []
    for _ in webhook_ids:
        poll = await store.claim("a", 100, 60_000, concurrency=4, tenant_concurrency=2)
        assert 1 <= len(poll.claims) <= 2
        for claim in poll.claims:
            assert claim.payload == event.payload
            assert (await store.settle(claim, _result(200))).written
        taken += poll.claims
        if len(taken) == len(webhook_ids):
            break
    sent = await _reply_bytes(redis_client) - before

    assert sorted(c.webhook_id for c in taken) == sorted(webhook_ids)
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


async def test_an_extended_claim_holds_for_the_attempts_lease_and_a_lapsed_one_is_taken_over(
    redis_client: redis.asyncio.Redis, archive: Archive
) -> None:
    store = DeliveryStore(redis_client, 3600, 3600, archive)
    await redis_client.set(keys.webhook("wh_1"), orjson.dumps(WEBHOOK))
    for n in (1, 2):
        event = NewEvent(f"evt_{n}", "post.published", "t1", rfc3339(now()), 0, None, b"{}")
        await store.accept(event, [PlannedDelivery(f"dlv_{n}", "wh_1")])

    # Worker a got both claims; it extends the first and never hears of the second (a lost
    # reply would look the same to Redis).
    extended, lost = (await store.claim("a", 10, lease_ms=100, concurrency=2)).claims
    assert await store.extend([extended], lease_ms=60_000) == [extended]
    assert await store.extend([extended], lease_ms=60_000) == [extended]  # asked again: the same
    await asyncio.sleep(0.2)  # past the claim's lease

    [taken] = (await store.claim("b", 10, lease_ms=100, concurrency=2)).claims
    assert (taken.delivery_id, taken.attempt) == (lost.delivery_id, 1)
    assert await store.extend([taken], lease_ms=60_000) == [taken]
    assert await store.extend([lost], lease_ms=60_000) == []
    # The extended one still holds its endpoint slot, past the claim's lease: a third delivery
    # waits for one.
    event = NewEvent("evt_3", "post.published", "t1", rfc3339(now()), 0, None, b"{}")
    await store.accept(event, [PlannedDelivery("dlv_3", "wh_1")])
    assert (await store.claim("c", 10, lease_ms=100, concurrency=2)).claims == []
    assert await _leases_held(redis_client, "wh_1") == 2

    assert (await store.settle(extended, _result(200))).written
    assert (await store.settle(taken, _result(200))).written
    for n in (1, 2):
        delivery = await store.get(f"dlv_{n}")
        assert delivery.status is Status.DELIVERED and delivery.attempt_count == 1


async def test_a_lapsed_claim_is_extended_until_another_claim_takes_it_over(
    redis_client: redis.asyncio.Redis, archive: Archive
) -> None:
    store = DeliveryStore(redis_client, 3600, 3600, archive)
    await redis_client.set(keys.webhook("wh_1"), orjson.dumps(WEBHOOK))
    for n in (1, 2):
        event = NewEvent(f"evt_{n}", "post.published", "t1", rfc3339(now()), 0, None, b"{}")
        await store.accept(event, [PlannedDelivery(f"dlv_{n}", "wh_1")])

    # Redis was away for longer than the claims' lease, with both attempts in flight.
    kept, lost = (await store.claim("a", 10, lease_ms=50, concurrency=2)).claims
    await asyncio.sleep(0.1)
    # Nobody took the first over: it is still its worker's, and now for the attempt's lease.
    assert await store.extend([kept], lease_ms=60_000) == [kept]
    [again] = (await store.claim("b", 10, lease_ms=60_000, concurrency=2)).claims
    assert again.delivery_id == lost.delivery_id and again.token != lost.token
    assert await store.extend([lost], lease_ms=60_000) == []
    assert (await store.claim("c", 10, lease_ms=60_000, concurrency=2)).claims == []


async def test_a_2xx_that_comes_back_after_the_lease_ran_out_is_logged_and_wins(
    redis_client: redis.asyncio.Redis, archive: Archive
) -> None:
    store, [delivery_id] = await _store_with(redis_client, archive)
    stale, fresh = await _taken_over(store)
    # b's attempt fails and ends the schedule; a's, which the receiver answered 200, comes back
    # only then.
    assert (await store.settle(fresh, _result(503))).written
    assert (await store.get(delivery_id)).status is Status.FAILED

    assert (await store.settle(stale, _result(200))).written
    delivery = await store.get(delivery_id)
    assert delivery.status is Status.DELIVERED and delivery.attempt_count == 2
    assert delivery.delivered_at is not None and delivery.last_status_code == 200
    assert await _codes(store, delivery_id) == [(1, 503), (2, 200)]


async def test_a_2xx_while_the_takeover_is_in_flight_ends_the_delivery_for_good(
    redis_client: redis.asyncio.Redis, archive: Archive
) -> None:
    store, [delivery_id] = await _store_with(redis_client, archive)
    stale, fresh = await _taken_over(store)

    assert (await store.settle(stale, _result(200))).written
    assert (await store.get(delivery_id)).status is Status.DELIVERED
    # b's attempt, answered 503, joins the log and changes nothing: a 2xx is final.
    assert (await store.settle(fresh, _result(503, Status.PENDING))).written
    delivery = await store.get(delivery_id)
    assert delivery.status is Status.DELIVERED and delivery.attempt_count == 2
    assert await _codes(store, delivery_id) == [(1, 200), (2, 503)]
    assert (await store.claim("c", 10, lease_ms=60_000, concurrency=1)).claims == []


async def test_a_late_2xx_reaches_a_delivery_that_only_history_holds(
    redis_client: redis.asyncio.Redis, archive: Archive, postgres_server: PostgresServer
) -> None:
    store, [delivery_id] = await _store_with(redis_client, archive)
    handover = HistoryHandover(redis_client)
    stale, fresh = await _taken_over(store)
    assert (await store.settle(fresh, _result(503))).written
    # History writes the failed delivery and Redis lets it go, all before a's answer comes back.
    database = Database(postgres_server.url)
    try:
        handed = await handover.handed_over("writer", 10, 10)
        await writer.write(await database.pool(), handed, set())
        await handover.release(handed)
        assert not await redis_client.exists(keys.delivery(delivery_id))

        assert (await store.settle(stale, _result(200))).written
        handed = await handover.handed_over("writer", 10, 10)
        await writer.write(await database.pool(), handed, set())
        await handover.release(handed)
    finally:
        await database.aclose()
    delivery = await store.get(delivery_id)
    assert delivery.status is Status.DELIVERED and delivery.attempt_count == 2
    assert await _codes(store, delivery_id) == [(1, 503), (2, 200)]


async def test_a_late_attempt_is_history_s_newest_state_even_by_a_clock_running_behind(
    redis_client: redis.asyncio.Redis, archive: Archive, postgres_server: PostgresServer
) -> None:
    store, [delivery_id] = await _store_with(redis_client, archive)
    handover = HistoryHandover(redis_client)
    stale, fresh = await _taken_over(store)
    assert (await store.settle(fresh, _result(503))).written
    # a's reading of Redis's clock runs behind b's: its 2xx comes back just after b's ending,
    # stamped a little before it.
    lagging = dataclasses.replace(stale, now_ms=stale.now_ms - 5_000)
    assert (await store.settle(lagging, _result(200))).written
    database = Database(postgres_server.url)
    try:
        handed = await handover.handed_over("writer", 10, 10)
        await writer.write(await database.pool(), handed, set())
        await handover.release(handed)
        assert not await redis_client.exists(keys.delivery(delivery_id))
    finally:
        await database.aclose()
    delivery = await store.get(delivery_id)
    assert delivery.status is Status.DELIVERED and delivery.attempt_count == 2
    assert await _codes(store, delivery_id) == [(1, 503), (2, 200)]


async def _claim(
    store: DeliveryStore, owner: str, limit: int, lease_ms: int = 60_000
) -> list[Claim]:
    return (await store.claim(owner, limit, lease_ms=lease_ms, concurrency=2)).claims


async def test_a_pending_delivery_retried_while_it_waits_for_a_slot_keeps_its_next_schedule(
    redis_client: redis.asyncio.Redis, archive: Archive
) -> None:
    store, planned = await _store_with(redis_client, archive, deliveries=5)
    in_flight = await _claim(store, "w", 10)
    assert len(in_flight) == 2  # the endpoint's two slots; three more wait
    retried = planned[-1]
    assert retried not in [c.delivery_id for c in in_flight]
    assert (await store.restart([retried], frozenset({Status.PENDING})))[1] == ["ok"]

    taken: list[str] = []
    while in_flight:
        # One attempt ends at a time, the operator's first whenever it is in flight: it fails
        # and is due again in a minute; the others succeed.
        in_flight.sort(key=lambda c: c.delivery_id != retried)
        claim = in_flight.pop(0)
        code, status = (500, Status.PENDING) if claim.delivery_id == retried else (200, None)
        assert (await store.settle(claim, _result(code, status))).written
        claimed = await _claim(store, "w", 10)
        taken += [c.delivery_id for c in claimed]
        in_flight += claimed
    # Sent once now, as asked; the freed slots never sent it again ahead of its schedule.
    assert taken.count(retried) == 1
    delivery = await store.get(retried)
    assert delivery.status is Status.PENDING and delivery.attempt_count == 1
    assert [(await store.get(d)).status for d in planned[:-1]] == [Status.DELIVERED] * 4


async def _waiting(
    store: DeliveryStore, delivery_id: str, delay_ms: int = 60_000, lease_ms: int = 60_000
) -> tuple[str | None, list[Claim]]:
    """Its first attempt made and failed, the next due in `delay_ms`; then an operator's retry:
    the next attempt the schedule has, and the claims (leased for `lease_ms`) of the manual
    attempt that follows."""
    [first] = await _claim(store, "w", 10)
    assert first.trigger is Trigger.SCHEDULED
    failed = dataclasses.replace(_result(500, Status.PENDING), delay_ms=delay_ms)
    assert (await store.settle(first, failed)).written
    scheduled = (await store.get(delivery_id)).next_attempt_at
    assert (await store.restart([delivery_id], RETRYABLE))[1] == ["manual"]
    await asyncio.sleep(0.002)  # claims come a millisecond after, at least
    manual = await _claim(store, "w", 10, lease_ms)
    assert [(c.attempt, c.trigger) for c in manual] == [(2, Trigger.MANUAL)]
    return scheduled, manual


async def _triggers(store: DeliveryStore, delivery_id: str) -> list[tuple[object, object]]:
    """The delivery's attempts as (number, trigger), as its log shows them."""
    delivery = await store.get(delivery_id)
    return [(a["number"], a["trigger"]) for a in await store.attempts(delivery)]


async def test_a_failed_manual_attempt_leaves_the_schedule_where_it_was(
    redis_client: redis.asyncio.Redis, archive: Archive
) -> None:
    store, [delivery_id] = await _store_with(redis_client, archive)
    scheduled, [manual] = await _waiting(store, delivery_id, delay_ms=1_500)

    assert (await store.settle(manual, _result(500, Status.PENDING, 2, Trigger.MANUAL))).written
    delivery = await store.get(delivery_id)
    assert delivery.status is Status.PENDING and delivery.attempt_count == 2
    assert delivery.next_attempt_at == scheduled
    assert await _claim(store, "w", 10) == []  # nothing goes before the schedule's time
    assert await _triggers(store, delivery_id) == [(1, "scheduled"), (2, "manual")]

    # At its time, the schedule's second attempt: the manual one took none of its steps.
    await asyncio.sleep(1.6)
    [second] = await _claim(store, "w", 10)
    assert second.trigger is Trigger.SCHEDULED and second.attempt == 3
    assert second.attempt - second.cycle_start == 2


async def test_a_manual_attempt_that_succeeds_ends_the_delivery_delivered(
    redis_client: redis.asyncio.Redis, archive: Archive
) -> None:
    store, [delivery_id] = await _store_with(redis_client, archive)
    _, [manual] = await _waiting(store, delivery_id)

    assert (await store.settle(manual, _result(200, number=2, trigger=Trigger.MANUAL))).written
    delivery = await store.get(delivery_id)
    assert delivery.status is Status.DELIVERED and delivery.attempt_count == 2
    assert delivery.next_attempt_at is None
    assert await _triggers(store, delivery_id) == [(1, "scheduled"), (2, "manual")]
    assert await _claim(store, "w", 10) == []


async def test_a_stalled_manual_attempt_is_taken_over_as_manual_and_both_are_logged(
    redis_client: redis.asyncio.Redis, archive: Archive
) -> None:
    store, [delivery_id] = await _store_with(redis_client, archive)
    scheduled, [stale] = await _waiting(store, delivery_id, lease_ms=50)
    await asyncio.sleep(0.1)  # its worker stalls past the lease
    [fresh] = await _claim(store, "b", 10)
    assert fresh.trigger is Trigger.MANUAL and fresh.token != stale.token

    late = await store.settle(stale, _result(500, Status.PENDING, 2, Trigger.MANUAL))
    assert late.written
    assert (await store.settle(fresh, _result(500, Status.PENDING, 2, Trigger.MANUAL))).written
    delivery = await store.get(delivery_id)
    assert delivery.status is Status.PENDING and delivery.next_attempt_at == scheduled
    assert delivery.attempt_count == 3 and delivery.attempt_count - delivery.cycle_start == 1
    assert await _triggers(store, delivery_id) == [(1, "scheduled"), (2, "manual"), (3, "manual")]


async def test_a_retry_of_a_delivery_already_due_is_its_scheduled_attempt_sent_once(
    redis_client: redis.asyncio.Redis, archive: Archive
) -> None:
    store, [delivery_id] = await _store_with(redis_client, archive)
    # Accepted and due now, not yet claimed: a retry adds no second request.
    assert (await store.restart([delivery_id], RETRYABLE))[1] == ["ok"]
    await asyncio.sleep(0.002)
    [claim] = await _claim(store, "w", 10)
    assert claim.trigger is Trigger.SCHEDULED and claim.attempt - claim.cycle_start == 1


async def _expired_behind_a_busy_endpoint(store: DeliveryStore) -> tuple[Claim, list[Claim]]:
    """Worker a's claim of the first delivery, whose lease runs out while the endpoint's two
    slots are taken by other attempts (a's stalled one is not taken over yet), and those."""
    [stale] = await _claim(store, "a", 1, lease_ms=50)
    others = await _claim(store, "b", 1)
    await asyncio.sleep(0.1)
    others += await _claim(store, "c", 10)  # the third delivery takes the slot a's had
    assert len(others) == 2 and stale.delivery_id not in [c.delivery_id for c in others]
    return stale, others


async def test_a_slow_worker_settling_after_its_lease_ran_out_keeps_the_schedule(
    redis_client: redis.asyncio.Redis, archive: Archive
) -> None:
    store, _ = await _store_with(redis_client, archive, deliveries=3)
    stale, others = await _expired_behind_a_busy_endpoint(store)
    assert (await store.settle(stale, _result(500, Status.PENDING))).written
    for claim in others:  # the others end, freeing both slots
        assert (await store.settle(claim, _result(200))).written
        assert await _claim(store, "c", 10) == []
    delivery = await store.get(stale.delivery_id)
    assert delivery.status is Status.PENDING and delivery.attempt_count == 1
    assert delivery.next_attempt_at is not None and delivery.next_attempt_at > rfc3339(now())


async def test_a_delivery_whose_lease_ran_out_is_pending_and_may_be_canceled_or_retried(
    redis_client: redis.asyncio.Redis, archive: Archive
) -> None:
    store, _ = await _store_with(redis_client, archive, deliveries=3)
    stale, _ = await _expired_behind_a_busy_endpoint(store)
    # No attempt is in flight that anyone waits for: it waits for its next one.
    assert (await store.get(stale.delivery_id)).status is Status.PENDING
    assert (await store.restart([stale.delivery_id], frozenset({Status.PENDING})))[1] == ["ok"]
    assert await store.cancel(stale.delivery_id) == "ok"
    # The stalled attempt, when it comes back, is logged; the delivery stays canceled.
    assert (await store.settle(stale, _result(500, Status.PENDING))).written
    delivery = await store.get(stale.delivery_id)
    assert delivery.status is Status.CANCELED and delivery.attempt_count == 1
    assert await _codes(store, stale.delivery_id) == [(1, 500)]


# -- who goes next -------------------------------------------------------------------------


async def _hooks_and_events(
    redis_client: redis.asyncio.Redis, archive: Archive, backlog: list[tuple[str, str, int]]
) -> tuple[DeliveryStore, dict[str, list[str]]]:
    """A store with each (tenant, webhook, count) of `backlog` accepted in that order: the
    delivery ids per webhook."""
    store = DeliveryStore(redis_client, 3600, 3600, archive)
    made: dict[str, list[str]] = {}
    for tenant, webhook_id, count in backlog:
        record = {**WEBHOOK, "id": webhook_id, "tenant_id": tenant}
        await redis_client.set(keys.webhook(webhook_id), orjson.dumps(record))
        for _ in range(count):
            created = rfc3339(datetime.now(UTC))
            event = NewEvent(ids.new_id("evt"), "post.published", tenant, created, 0, None, b"{}")
            delivery_id = ids.new_id("dlv")
            await store.accept(event, [PlannedDelivery(delivery_id, webhook_id)])
            made.setdefault(webhook_id, []).append(delivery_id)
    await asyncio.sleep(0.002)  # claims come a millisecond after, at least
    return store, made


async def test_a_claim_takes_what_is_due_behind_a_busy_endpoints_backlog(
    redis_client: redis.asyncio.Redis, archive: Archive
) -> None:
    store, made = await _hooks_and_events(
        redis_client, archive, [("t1", "wh_busy", 500), ("t1", "wh_idle", 1)]
    )
    poll = await store.claim("w", 10, lease_ms=60_000, concurrency=1)
    # One attempt to the busy endpoint, and the idle one's delivery in the same call: no
    # backlog the busy endpoint cannot take keeps the claim from it.
    assert sorted(c.webhook_id for c in poll.claims) == ["wh_busy", "wh_idle"]
    assert made["wh_idle"][0] in [c.delivery_id for c in poll.claims]


async def _served_in_turn(store: DeliveryStore, slow: str, seconds: float) -> list[str]:
    """With one attempt at a time, the webhook of each attempt, until none is due: those to
    `slow` take `seconds`, the others answer at once."""
    order: list[str] = []
    while claims := (await store.claim("w", 1, lease_ms=60_000, concurrency=10)).claims:
        [claim] = claims
        order.append(claim.webhook_id)
        # Turns are kept to the millisecond: any attempt takes one at least.
        await asyncio.sleep(seconds if claim.webhook_id == slow else 0.002)
        assert (await store.settle(claim, _result(200))).written
    return order


async def test_a_tenants_endpoints_take_turns(
    redis_client: redis.asyncio.Redis, archive: Archive
) -> None:
    store, _ = await _hooks_and_events(
        redis_client, archive, [("t1", "wh_a_slow", 3), ("t1", "wh_b_fast", 3)]
    )
    order = await _served_in_turn(store, "wh_a_slow", 0.2)
    # The fast one's deliveries, accepted after all of the slow one's, do not wait for them.
    assert order == ["wh_a_slow", "wh_b_fast"] * 3, order


async def test_tenants_take_turns(redis_client: redis.asyncio.Redis, archive: Archive) -> None:
    store, _ = await _hooks_and_events(
        redis_client, archive, [("t_a", "wh_a_slow", 3), ("t_b", "wh_b_fast", 3)]
    )
    order = await _served_in_turn(store, "wh_a_slow", 0.2)
    assert order == ["wh_a_slow", "wh_b_fast"] * 3, order


async def test_a_slot_that_frees_goes_at_once_to_the_endpoint_at_its_concurrency(
    redis_client: redis.asyncio.Redis, archive: Archive
) -> None:
    store, planned = await _store_with(redis_client, archive, deliveries=2)
    [first] = (await store.claim("w", 10, lease_ms=60_000, concurrency=1)).claims
    full = await store.claim("w", 10, lease_ms=60_000, concurrency=1)
    # At its concurrency: the endpoint is looked at again when the lease runs out at the latest.
    assert full.claims == [] and full.next_due_in_ms is not None and full.next_due_in_ms > 50_000

    assert (await store.settle(first, _result(200))).written
    after = await store.claim("w", 10, lease_ms=60_000, concurrency=1)
    assert [c.delivery_id for c in after.claims] == [planned[1]]


async def _quick(redis_client: redis.asyncio.Redis, *webhook_ids: str) -> None:
    """Mark endpoints as answering quickly, as a quick attempt's settle does."""
    for webhook_id in webhook_ids:
        await redis_client.set(keys.endpoint_quick(webhook_id), 1)


async def _tenant_at_its_concurrency(
    redis_client: redis.asyncio.Redis, archive: Archive
) -> tuple[DeliveryStore, Claim, list[str]]:
    """A tenant of concurrency 1 with two quick endpoints, one delivery each: the first claimed,
    the second found waiting for the tenant's slot (until a lease runs out, at the latest).
    Returns the store, the first claim and the other endpoint's delivery ids."""
    store, made = await _hooks_and_events(
        redis_client, archive, [("t1", "wh_a", 1), ("t1", "wh_b", 1)]
    )
    # Known to answer quickly: they wait for the tenant's slots, not for its slow share.
    await _quick(redis_client, "wh_a", "wh_b")
    [first] = (await store.claim("w", 10, 60_000, concurrency=4, tenant_concurrency=1)).claims
    full = await store.claim("w", 10, 60_000, concurrency=4, tenant_concurrency=1)
    assert full.claims == [] and full.next_due_in_ms is not None and full.next_due_in_ms > 50_000
    [other] = [w for w in made if w != first.webhook_id]
    return store, first, made[other]


async def test_a_slot_that_frees_goes_at_once_to_the_tenant_at_its_concurrency(
    redis_client: redis.asyncio.Redis, archive: Archive
) -> None:
    store, first, other = await _tenant_at_its_concurrency(redis_client, archive)

    assert (await store.settle(first, _result(200))).written
    after = await store.claim("w", 10, 60_000, concurrency=4, tenant_concurrency=1)
    assert [c.delivery_id for c in after.claims] == other


async def test_a_freed_slot_goes_to_the_waiting_tenant_even_by_a_clock_running_behind(
    redis_client: redis.asyncio.Redis, archive: Archive
) -> None:
    store, first, other = await _tenant_at_its_concurrency(redis_client, archive)

    # The worker's reading of Redis's clock runs behind it (its settle went a while after it was
    # reckoned): the other endpoint, due by Redis's clock, is not yet due by the worker's.
    lagging = dataclasses.replace(first, now_ms=first.now_ms - 5_000)
    assert (await store.settle(lagging, _result(200))).written
    after = await store.claim("w", 10, 60_000, concurrency=4, tenant_concurrency=1)
    assert [c.delivery_id for c in after.claims] == other


async def test_a_tenants_freed_slot_goes_at_once_though_its_worker_reads_redis_clock_behind(
    redis_client: redis.asyncio.Redis, archive: Archive
) -> None:
    store, made = await _hooks_and_events(redis_client, archive, [("t1", "wh_a", 3)])
    other_worker = DeliveryStore(redis_client, 3600, 3600, archive)
    await _quick(redis_client, "wh_a")
    [first] = (await store.claim("a", 1, 60_000, concurrency=4, tenant_concurrency=2)).claims
    await asyncio.sleep(0.05)  # the other worker's claim comes after, by 50 ms
    second = await other_worker.claim("b", 10, 60_000, concurrency=4, tenant_concurrency=2)
    assert [c.delivery_id for c in second.claims] == made["wh_a"][1:2]
    # At its concurrency: the tenant is looked at again when a lease runs out at the latest.
    full = await other_worker.claim("b", 10, 60_000, concurrency=4, tenant_concurrency=2)
    assert full.claims == [] and full.next_due_in_ms is not None and full.next_due_in_ms > 50_000

    # A worker reads Redis's clock as of its last TIME reply, late by that reply's latency, which
    # under load can be more than the time between two claims: here the first worker's reading
    # says its attempt ended when it was claimed, before the other worker's claim.
    behind = dataclasses.replace(first, taken_at=time.monotonic())
    assert (await store.settle(behind, _result(200))).written
    # The slot it freed goes at once to the tenant's endpoint, whose third delivery is due.
    after = await other_worker.claim("b", 10, 60_000, concurrency=4, tenant_concurrency=2)
    assert [c.delivery_id for c in after.claims] == made["wh_a"][2:]


async def test_a_freed_slot_has_the_waiting_tenant_looked_at_when_its_soonest_endpoint_is(
    redis_client: redis.asyncio.Redis, archive: Archive
) -> None:
    store, first, _ = await _tenant_at_its_concurrency(redis_client, archive)

    # A claim whose reading of Redis's clock ran ahead of it scored the other endpoint's turn
    # a moment after now: not due by the settle's clock, nor by Redis's.
    seconds, micros = await redis_client.time()
    ahead_ms = seconds * 1000 + micros // 1000 + 2_000
    other_webhook = "wh_b" if first.webhook_id == "wh_a" else "wh_a"
    await redis_client.zadd(keys.endpoints("t1"), {other_webhook: ahead_ms}, xx=True)
    assert (await store.settle(first, _result(200))).written
    # The tenant's freed slot is not left waiting for the first lease (a minute) to run out.
    after = await store.claim("w", 10, 60_000, concurrency=4, tenant_concurrency=1)
    assert after.claims == []
    assert after.next_due_in_ms is not None and after.next_due_in_ms <= 2_000


async def test_a_freed_slot_has_the_waiting_endpoint_looked_at_when_its_next_delivery_is_due(
    redis_client: redis.asyncio.Redis, archive: Archive
) -> None:
    store, made = await _hooks_and_events(redis_client, archive, [("t1", "wh_a", 2)])
    await _quick(redis_client, "wh_a")
    [first] = (await store.claim("w", 10, 60_000, concurrency=1)).claims
    full = await store.claim("w", 10, 60_000, concurrency=1)
    assert full.claims == [] and full.next_due_in_ms is not None and full.next_due_in_ms > 50_000
    # The endpoint's other delivery is due a moment after now (as a delivery scheduled by a
    # clock running ahead of Redis's would be): not due by the settle's clock, nor by Redis's.
    [other] = [d for d in made["wh_a"] if d != first.delivery_id]
    seconds, micros = await redis_client.time()
    ahead_ms = seconds * 1000 + micros // 1000 + 2_000
    await redis_client.zadd(keys.endpoint_queue("wh_a"), {other: ahead_ms}, xx=True)
    assert (await store.settle(first, _result(200))).written
    # The endpoint's freed slot is not left waiting for the first lease (a minute) to run out.
    after = await store.claim("w", 10, 60_000, concurrency=1)
    assert after.claims == []
    assert after.next_due_in_ms is not None and after.next_due_in_ms <= 2_000


async def test_a_disabled_webhooks_delivery_ending_leaves_the_freed_slot_to_whoever_waits(
    redis_client: redis.asyncio.Redis, archive: Archive
) -> None:
    store, made = await _hooks_and_events(
        redis_client, archive, [("t1", "wh_on", 2), ("t1", "wh_off", 1)]
    )
    off = {**WEBHOOK, "id": "wh_off", "enabled": False}
    await redis_client.set(keys.webhook("wh_off"), orjson.dumps(off))
    await _quick(redis_client, "wh_on")
    claimed = (await store.claim("w", 10, 60_000, concurrency=4, tenant_concurrency=1)).claims
    # The disabled webhook's delivery takes no slot; the enabled one's first takes the only one.
    assert sorted(c.delivery_id for c in claimed) == sorted([made["wh_on"][0], *made["wh_off"]])
    ended = next(c for c in claimed if c.webhook_id == "wh_off")
    held = next(c for c in claimed if c.webhook_id == "wh_on")
    assert not ended.holds_slot and held.holds_slot
    assert (await store.claim("w", 10, 60_000, concurrency=4, tenant_concurrency=1)).claims == []

    # Ending the one that held no slot frees none: the tenant still waits for the other.
    assert (await store.settle(ended, Settlement(Status.CANCELED, None, None, None, None))).written
    assert (await store.claim("w", 10, 60_000, concurrency=4, tenant_concurrency=1)).claims == []
    assert (await store.settle(held, _result(200))).written
    after = await store.claim("w", 10, 60_000, concurrency=4, tenant_concurrency=1)
    assert [c.delivery_id for c in after.claims] == [made["wh_on"][1]]


async def _commands(redis_client: redis.asyncio.Redis) -> int:
    """Commands Redis ran since the last CONFIG RESETSTAT, those inside scripts included (the
    INFO that reads them is not yet counted)."""
    stats = await redis_client.info("commandstats")
    return sum(int(s["calls"]) for name, s in stats.items() if name != "cmdstat_config|resetstat")


async def test_settling_an_attempt_nobody_waits_for_costs_six_redis_commands(
    redis_client: redis.asyncio.Redis, archive: Archive
) -> None:
    store, _ = await _store_with(redis_client, archive, deliveries=2)
    [first] = (await store.claim("w", 1, lease_ms=60_000, concurrency=4)).claims
    quick = dataclasses.replace(_result(200), quick=True)
    # The script is loaded by now, and the endpoint known to answer quickly (no slow share).
    assert (await store.settle(first, quick)).written
    [second] = (await store.claim("w", 1, lease_ms=60_000, concurrency=4)).claims
    assert second.endpoint_quick

    await redis_client.config_resetstat()
    assert (await store.settle(second, quick)).written
    # The script, its read of the delivery, the two sets it leaves (its queue, which held its
    # endpoint's slot, and its tenant's slots), its write and its hand-off to history; nothing
    # to look up for a waiter.
    assert await _commands(redis_client) == 6


async def test_claiming_the_only_delivery_of_a_small_event_costs_eleven_redis_commands(
    redis_client: redis.asyncio.Redis, archive: Archive
) -> None:
    store, _ = await _store_with(redis_client, archive)
    await _quick(redis_client, "wh_1")
    [first] = (await store.claim("w", 10, lease_ms=60_000, concurrency=4)).claims
    assert (await store.settle(first, _result(200))).written
    # The scripts are loaded by now, and the endpoint known to answer quickly (no slow share).
    event = NewEvent("evt_2", "post.published", "t1", rfc3339(now()), 0, None, b'{"n": 2}')
    await store.accept(event, [PlannedDelivery("dlv_2", "wh_1")])
    await asyncio.sleep(0.002)

    await redis_client.config_resetstat()
    [claim] = (await store.claim("w", 10, lease_ms=60_000, concurrency=4)).claims
    assert (claim.delivery_id, claim.payload) == ("dlv_2", b'{"n": 2}')
    # The script; the turns of the tenants, of the tenant's endpoints and of the endpoint's
    # queue read, and the tenant's slots counted; the webhook read; the delivery read, with
    # its event's payload; its lease, its place in the queue and its tenant's slot; the
    # tenant's next turn (its only endpoint keeps its own).
    assert await _commands(redis_client) == 11


async def test_events_accepted_in_one_call_bring_their_endpoint_and_tenant_forward_once(
    redis_client: redis.asyncio.Redis, archive: Archive
) -> None:
    store, first = await _store_with(redis_client, archive)
    await redis_client.set(keys.webhook("wh_2"), orjson.dumps({**WEBHOOK, "id": "wh_2"}))
    await redis_client.zrem(keys.TENANTS, "t1")  # as a claim leaves an idle tenant
    await redis_client.delete(keys.WAKE)

    def event(n: int, *webhooks: str) -> tuple[NewEvent, list[PlannedDelivery], None]:
        created = rfc3339(now())
        new = NewEvent(f"evt_{n}", "post.published", "t1", created, 0, None, b"{}")
        return new, [PlannedDelivery(f"dlv_{n}_{w}", w) for w in webhooks], None

    batch = [event(1, "wh_1"), event(2, "wh_1", "wh_2"), event(3, "wh_1"), event(4, "wh_2")]
    await redis_client.config_resetstat()
    assert await store.accept_many(batch) == [None] * 4
    # The script; per event its record and its hand-off to history; per delivery its record
    # and its place in its queue; then once each, the two endpoints' and the tenant's turns
    # brought forward, and one worker woken.
    assert await _commands(redis_client) == 1 + 4 * 2 + 5 * 2 + 2 + 1 + 1
    assert await redis_client.zrange(keys.endpoints("t1"), 0, -1) == [b"wh_1", b"wh_2"]
    assert await redis_client.zscore(keys.TENANTS, "t1") is not None
    assert await redis_client.llen(keys.WAKE) == 1
    claims = (await store.claim("w", 10, lease_ms=60_000, concurrency=4)).claims
    queued = [*first, *(d.id for _, planned, _ in batch for d in planned)]
    assert sorted(c.delivery_id for c in claims) == sorted(queued)


async def test_an_event_for_a_tenants_only_endpoint_in_flight_wakes_a_worker(
    redis_client: redis.asyncio.Redis, archive: Archive
) -> None:
    store, _ = await _store_with(redis_client, archive, deliveries=2)
    [first] = (await store.claim("w", 1, lease_ms=60_000, concurrency=4)).claims
    [second] = (await store.claim("w", 1, lease_ms=60_000, concurrency=4)).claims
    idle = await store.claim("w", 10, lease_ms=60_000, concurrency=4)
    assert idle.next_due_in_ms is not None and idle.next_due_in_ms > 50_000
    await redis_client.delete(keys.WAKE)

    # Nothing was due until the leases run out: a new event is, and an idle worker hears of it.
    event = NewEvent("evt_2", "post.published", "t1", rfc3339(now()), 0, None, b"{}")
    await store.accept(event, [PlannedDelivery("dlv_2", "wh_1")])
    assert await redis_client.llen(keys.WAKE) == 1
    await asyncio.sleep(0.002)
    [third] = (await store.claim("w", 10, lease_ms=60_000, concurrency=4)).claims
    assert third.delivery_id == "dlv_2" and first.delivery_id != second.delivery_id


async def test_a_delivery_goes_to_history_without_the_copy_of_its_events_payload(
    redis_client: redis.asyncio.Redis, archive: Archive
) -> None:
    store, [delivery_id] = await _store_with(redis_client, archive)
    assert await store.cancel(delivery_id) == "ok"
    [(_, entry)] = await redis_client.xrevrange(keys.HISTORY, count=1)
    record = orjson.loads(entry[b"r"])
    assert record["delivery"]["status"] == "canceled" and "payload" not in record["delivery"]


async def test_an_event_let_go_with_its_whole_fan_out_leaves_redis_without_being_counted(
    redis_client: redis.asyncio.Redis, archive: Archive
) -> None:
    store, planned = await _store_with(redis_client, archive, deliveries=3)
    handover = HistoryHandover(redis_client)
    [first, *rest] = (await store.claim("w", 10, lease_ms=60_000, concurrency=4)).claims
    assert (await store.settle(first, _result(200))).written
    # History takes the event and one delivery: the event stays for the two still in flight.
    handed = await handover.handed_over("writer", 10, 10)
    assert len(handed) == 2
    await handover.release(handed)
    assert await redis_client.hget(keys.event(first.event_id), "live") == b"2"
    for claim in rest:
        assert (await store.settle(claim, _result(200))).written
    handed = await handover.handed_over("writer", 10, 10)
    await handover.release(handed)
    assert not await redis_client.exists(keys.event(first.event_id))

    store, planned = await _store_with(redis_client, archive, deliveries=3)
    for claim in (await store.claim("w", 10, lease_ms=60_000, concurrency=4)).claims:
        assert (await store.settle(claim, _result(200))).written
    handed = await handover.handed_over("writer", 10, 10)
    assert len(handed) == 4
    await redis_client.config_resetstat()
    await handover.release(handed)
    # The script, its read of each of the three deliveries, one DEL for all, the entries'
    # acknowledgement and deletion: the batch holds every holder of the event, nothing to count.
    assert await _commands(redis_client) == 7
    gone = [keys.event(first.event_id), *(keys.delivery(d) for d in planned)]
    assert not await redis_client.exists(*gone)


async def test_a_delivery_handed_over_twice_in_one_batch_lets_its_event_go_once(
    redis_client: redis.asyncio.Redis, archive: Archive
) -> None:
    store, _ = await _store_with(redis_client, archive, deliveries=2)
    handover = HistoryHandover(redis_client)
    [first, second] = (await store.claim("w", 10, lease_ms=60_000, concurrency=4)).claims
    assert (await store.settle(first, _result(200))).written
    handed = await handover.handed_over("writer", 10, 10)
    [ended] = [h for h in handed if h.delivery is not None]
    # The same delivery twice (as a writer reading its entry again might hand it): it is one
    # holder, and the event stays for the delivery still in flight.
    await handover.release([*handed, ended])
    assert await redis_client.hget(keys.event(first.event_id), "live") == b"1"
    assert (await store.settle(second, _result(200))).written
    await handover.release(await handover.handed_over("writer", 10, 10))
    assert not await redis_client.exists(keys.event(first.event_id))


async def test_a_deleted_webhook_leaves_no_slots_behind_once_its_deliveries_end(
    redis_client: redis.asyncio.Redis, archive: Archive
) -> None:
    store = DeliveryStore(redis_client, 3600, 3600, archive)
    webhooks = WebhookStore(redis_client, max_per_tenant=10)
    hook, _ = new_webhook(
        WebhookCreate(url="https://hooks.example.com/a"),
        "t1",
        Keyring.from_strings([TEST_MASTER_KEY]),
    )
    await webhooks.add(hook)
    event = NewEvent(ids.new_id("evt"), "post.published", "t1", rfc3339(now()), 0, None, b"{}")
    await store.accept(event, [PlannedDelivery(ids.new_id("dlv"), hook.id) for _ in range(3)])
    # Worker a takes the one slot (the others wait for it), then dies with its attempt.
    [lost] = (await store.claim("a", 10, lease_ms=50, concurrency=1)).claims
    await webhooks.delete(hook.id)
    await asyncio.sleep(0.1)

    # Worker b ends all three, the one a left too, as the webhook is gone.
    ended = (await store.claim("b", 10, lease_ms=60_000, concurrency=1)).claims
    assert len(ended) == 3 and lost.delivery_id in {c.delivery_id for c in ended}
    for claim in ended:
        canceled = Settlement(Status.CANCELED, None, None, None, "the webhook was deleted")
        assert (await store.settle(claim, canceled)).written
    assert not await redis_client.exists(keys.endpoint_queue(hook.id), keys.endpoint_slots(hook.id))


async def test_deliveries_an_older_relay_queued_are_moved_to_their_endpoints_queues(
    redis_client: redis.asyncio.Redis, archive: Archive
) -> None:
    store, planned = await _store_with(redis_client, archive, deliveries=3)
    # As an older relay left them: two in its due set, one parked behind its endpoint.
    await redis_client.delete(keys.TENANTS, keys.endpoints("t1"), keys.endpoint_queue("wh_1"))
    await redis_client.zadd(keys.OLD_DUE, {planned[0]: 1, planned[1]: 2})
    await redis_client.zadd(keys.OLD_PARKED_PREFIX + "wh_1", {planned[2]: 3})
    await redis_client.zadd(keys.OLD_WAKES, {"wh_1": 4})
    assert (await store.claim("w", 10, lease_ms=60_000, concurrency=4)).claims == []

    assert await store.requeue_old_layout() == 3
    assert await store.requeue_old_layout() == 0
    claims = (await store.claim("w", 10, lease_ms=60_000, concurrency=4)).claims
    assert sorted(c.delivery_id for c in claims) == sorted(planned)
    assert not await redis_client.exists(keys.OLD_DUE, keys.OLD_WAKES)


async def test_an_endpoint_keeps_to_its_concurrency_behind_more_dead_leases_than_a_claim_reads(
    redis_client: redis.asyncio.Redis, archive: Archive
) -> None:
    store, _ = await _store_with(redis_client, archive, deliveries=8)
    # Worker a took six at a concurrency of six, and died with them.
    dead = (await store.claim("a", 6, lease_ms=50, concurrency=6)).claims
    assert len(dead) == 6
    await asyncio.sleep(0.1)
    taken = (await store.claim("b", 2, lease_ms=60_000, concurrency=6)).claims
    assert len(taken) == 2

    # The concurrency is two now, both in use by b's attempts: nothing goes, neither one of a's
    # (their leases ran out, and come first in the queue) nor anything else.
    assert (await store.claim("c", 1, lease_ms=60_000, concurrency=2)).claims == []
    assert await _leases_held(redis_client, "wh_1") == 2
    # A slot that frees goes at once to one of a's, taken over: two in flight again.
    assert (await store.settle(taken[0], _result(200))).written
    poll = await store.claim("c", 10, lease_ms=60_000, concurrency=2)
    assert len(poll.claims) == 1 and poll.taken_over == 1
    assert poll.claims[0].delivery_id in {c.delivery_id for c in dead}
    assert await _leases_held(redis_client, "wh_1") == 2


async def test_an_attempt_an_older_relay_left_in_flight_is_delivered_after_an_upgrade(
    redis_client: redis.asyncio.Redis, archive: Archive
) -> None:
    store, [running, stalled] = await _store_with(redis_client, archive, deliveries=2)
    claims = (await store.claim("old", 1, lease_ms=60_000, concurrency=2)).claims
    claims += (await store.claim("old", 1, lease_ms=50, concurrency=2)).claims
    assert [c.delivery_id for c in claims] == [running, stalled]
    # As a relay before IN_FLIGHT left them: each attempt in flight scored by its lease alone in
    # its queue, and counted in the endpoint's set of slots. The worker of one of them is gone.
    leases = {}
    for claim in claims:
        leases[claim.delivery_id] = int(
            await redis_client.hget(keys.delivery(claim.delivery_id), "lease_until")
        )
    await redis_client.zadd(keys.endpoint_queue("wh_1"), leases)
    await redis_client.zadd(keys.endpoint_slots("wh_1"), leases)
    await asyncio.sleep(0.1)

    # The attempt still running is not sent twice; the stalled one is taken over and sent.
    poll = await store.claim("new", 10, lease_ms=60_000, concurrency=2)
    assert [c.delivery_id for c in poll.claims] == [stalled] and poll.taken_over == 1
    for claim in (claims[0], poll.claims[0]):
        assert (await store.settle(claim, _result(200))).written
    for delivery_id in (running, stalled):
        assert (await store.get(delivery_id)).status is Status.DELIVERED
    assert not await redis_client.exists(keys.endpoint_queue("wh_1"))


async def test_metrics_count_attempts_in_flight_as_pending_and_those_whose_worker_died_as_due(
    redis_client: redis.asyncio.Redis, archive: Archive
) -> None:
    store, planned = await _store_with(redis_client, archive, deliveries=4)
    await store.claim("alive", 1, lease_ms=60_000, concurrency=4)
    [died] = (await store.claim("dead", 1, lease_ms=50, concurrency=4)).claims
    await asyncio.sleep(0.1)
    now = _ms(await redis_client.time())

    queued = await metrics.queued(redis_client, now)
    # Four queued: one in flight, one whose lease ran out and two never sent, all three due.
    assert (queued.pending, queued.due) == (4, 3)
    assert queued.oldest_due_ms is not None and queued.oldest_due_ms < now - 50
    assert await metrics.webhook_backlog(redis_client, "wh_1") == 4
    assert died.delivery_id in planned


async def _stored_token(redis_client: redis.asyncio.Redis) -> bytes:
    """An ingest token's record, stored under the hash `h1`."""
    record = b'{"id": "tok_1", "role": "ingest"}'
    await redis_client.set(keys.token_by_hash("h1"), record)
    return record


async def test_an_accept_checking_a_token_record_writes_only_while_it_is_as_checked(
    redis_client: redis.asyncio.Redis, archive: Archive
) -> None:
    store = DeliveryStore(redis_client, 3600, 3600, archive)
    record = await _stored_token(redis_client)

    def event(upstream_id: str) -> NewEvent:
        created = datetime.now(UTC)
        return NewEvent(
            ids.new_id("evt"), "post.published", "t1", rfc3339(created), 0, upstream_id, b"{}"
        )

    first = event("up_1")
    check = TokenCheck("h1", fingerprint(record), remembered=True)
    assert await store.accept(first, [PlannedDelivery("dlv_1", "wh_1")], token=check) is None
    assert check.confirmed

    # Changed (or gone): neither a new event nor a repeat of an upstream id gets through.
    await redis_client.set(keys.token_by_hash("h1"), b'{"id": "tok_1", "role": "tenant"}')
    for attempt in (event("up_2"), event("up_1")):
        stale = TokenCheck("h1", fingerprint(record), remembered=True)
        with pytest.raises(TokenChanged):
            await store.accept(attempt, [PlannedDelivery("dlv_2", "wh_1")], token=stale)
        assert not stale.confirmed
    assert not await redis_client.exists(keys.delivery("dlv_2"))
    assert await redis_client.zrange(keys.endpoint_queue("wh_1"), 0, -1) == [b"dlv_1"]


async def test_accepts_made_at_once_are_each_written_or_refused_on_their_own(
    redis_client: redis.asyncio.Redis, archive: Archive
) -> None:
    store = DeliveryStore(redis_client, 3600, 3600, archive)
    record = await _stored_token(redis_client)
    current = TokenCheck("h1", fingerprint(record), remembered=True)
    outdated = TokenCheck("h1", fingerprint(b'{"id": "tok_1"}'), remembered=True)
    created = rfc3339(datetime.now(UTC))
    events = [
        NewEvent(f"evt_{n}", "post.published", "t1", created, 0, None, b"{}") for n in range(4)
    ]

    outcomes = await asyncio.gather(
        store.accept(events[0], [PlannedDelivery("dlv_0", "wh_1")], token=current),
        store.accept(events[1], [PlannedDelivery("dlv_1", "wh_1")], token=outdated),
        store.accept(events[2], [PlannedDelivery("dlv_2", "wh_1")]),
        store.accept(events[3], [PlannedDelivery("dlv_3", "wh_1")], token=current),
        return_exceptions=True,
    )

    assert outcomes[0] is outcomes[2] is outcomes[3] is None
    assert isinstance(outcomes[1], TokenChanged)
    assert current.confirmed and not outdated.confirmed
    queued = await redis_client.zrange(keys.endpoint_queue("wh_1"), 0, -1)
    assert sorted(queued) == [b"dlv_0", b"dlv_2", b"dlv_3"]
