"""Wide fan-outs are written in bounded steps, and a half-written one is always finished."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import httpx
import orjson
import redis.asyncio

from relay.delivery.archive import Archive
from relay.delivery.model import Attempt, Settlement, Status
from relay.delivery.store import FANOUT_CHUNK, DeliveryStore, NewEvent, PlannedDelivery
from relay.event_types import envelope
from relay.ids import new_id
from relay.store import keys
from relay.store.metrics import backlog
from relay.timefmt import now, rfc3339
from tests.fixtures import ClientFactory
from tests.flows import Workers, webhook
from tests.receivers import Receiver

TENANT = "space_wide"
UPSTREAM_ID = "post-77-published"


def _store(
    redis_client: redis.asyncio.Redis, archive: Archive, chunk: int = FANOUT_CHUNK
) -> DeliveryStore:
    return DeliveryStore(redis_client, 3600, 3600, archive, fanout_chunk=chunk)


async def _queued(redis_client: redis.asyncio.Redis) -> int:
    """Deliveries in their endpoints' queues, pending or in flight."""
    return await backlog(redis_client)


def _event(upstream_id: str | None = UPSTREAM_ID) -> NewEvent:
    moment = now()
    created_ms = int(moment.timestamp() * 1000)
    event_id = new_id("evt", created_ms)
    created_at = rfc3339(moment)
    data = {"post_id": "p_77"}
    payload = envelope(event_id, "post.published", TENANT, data, created_at)
    return NewEvent(
        event_id, "post.published", TENANT, created_at, created_ms, upstream_id, payload
    )


def _planned(webhook_ids: list[str]) -> list[PlannedDelivery]:
    return [PlannedDelivery(new_id("dlv"), w) for w in webhook_ids]


async def _webhooks(client: httpx.AsyncClient, rx: Receiver, count: int) -> list[str]:
    """`count` webhooks of the tenant, each at its own path of the receiver; their ids."""
    ids: list[str] = []
    for start in range(0, count, 50):
        batch = range(start, min(count, start + 50))
        made = await asyncio.gather(*(webhook(client, rx.url(f"/{n}"), TENANT) for n in batch))
        ids += [w["id"] for w in made]
    return ids


async def _listed(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    """Every delivery of the tenant, as the listing pages through them."""
    found: list[dict[str, Any]] = []
    params = {"tenant_id": TENANT, "limit": "100"}
    while True:
        page = (await client.get("/v1/deliveries", params=params)).json()
        found += page["data"]
        if not page["next_cursor"]:
            return found
        params["cursor"] = page["next_cursor"]


async def _all_delivered(client: httpx.AsyncClient, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 60
    while True:
        listed = await _listed(client)
        if sum(d["status"] == "delivered" for d in listed) >= count:
            return listed
        assert time.monotonic() < deadline, Counter(d["status"] for d in listed)
        await asyncio.sleep(0.2)


def _one_each(listed: list[dict[str, Any]], webhook_ids: list[str]) -> None:
    """Each delivery is listed once, and each webhook has exactly one."""
    assert len({d["id"] for d in listed}) == len(listed)
    assert sorted(d["webhook_id"] for d in listed) == sorted(webhook_ids)


async def test_a_fan_out_several_chunks_wide_delivers_once_per_webhook(
    make_client: ClientFactory, workers: Workers, redis_client: redis.asyncio.Redis
) -> None:
    count = 2 * FANOUT_CHUNK + 50
    client = await make_client(max_webhooks_per_tenant=count)
    async with Receiver() as rx:
        webhook_ids = await _webhooks(client, rx, count)
        body = {"type": "post.published", "tenant_id": TENANT, "data": {"post_id": "p_1"}}
        # Under a key, the answer is stored with the first step and replayed as the 202 was.
        key = {"Idempotency-Key": "wide-1"}
        accepted = await client.post("/v1/events", json=body, headers=key)
        assert accepted.status_code == 202, accepted.text
        again = await client.post("/v1/events", json=body, headers=key)
        assert again.headers.get("idempotent-replayed") == "true", again.text
        assert (again.status_code, again.json()) == (202, accepted.json())
        event = accepted.json()["data"]
        listed_events = (await client.get("/v1/events", params={"tenant_id": TENANT})).json()
        assert [e["id"] for e in listed_events["data"]] == [event["id"]]
        _one_each(event["deliveries"], webhook_ids)
        assert await redis_client.zcard(keys.ACCEPTING) == 0
        await workers()
        listed = await _all_delivered(client, count)
        _one_each(listed, webhook_ids)
        arrived = Counter(r.path for r in rx.requests)
    assert arrived == Counter(f"/{n}" for n in range(count))
    assert {r.headers["webhook-id"] for r in rx.requests} == {event["id"]}
    shown = (await client.get(f"/v1/events/{event['id']}")).json()["data"]
    _one_each(shown["deliveries"], webhook_ids)


async def test_no_script_call_writes_more_than_one_chunk_of_deliveries(
    redis_client: redis.asyncio.Redis, archive: Archive
) -> None:
    written: list[int] = []

    class Watched(redis.asyncio.Redis):
        async def evalsha(self, sha: str, numkeys: int, *args: Any) -> Any:  # type: ignore[override]
            # Counted once Redis ran it: a first call that finds the script not loaded yet
            # (NOSCRIPT) is made again, and wrote nothing.
            done = await super().evalsha(sha, numkeys, *args)
            arg = orjson.loads(args[0])
            # A call's first steps of a group of events, or one later step of one event.
            steps = arg.get("events", []) + ([arg["event"]] if "event" in arg else [])
            written.append(sum(len(step.get("deliveries", [])) for step in steps))
            return done

    watched = Watched(connection_pool=redis_client.connection_pool)
    count = 2 * FANOUT_CHUNK + 1
    event = _event()
    assert (
        await _store(watched, archive).accept(event, _planned([f"wh_{n}" for n in range(count)]))
        is None
    )
    assert sum(written) == count
    assert max(written) <= FANOUT_CHUNK
    assert await _queued(redis_client) == count  # each written, due now
    assert await redis_client.zcard(keys.ACCEPTING) == 0
    assert await redis_client.exists(keys.event_plan(event.id)) == 0


async def test_a_fan_out_within_one_chunk_is_one_call(
    redis_client: redis.asyncio.Redis, archive: Archive
) -> None:
    store = _store(redis_client, archive, chunk=3)
    begun = await store.begin_accept(_event(), _planned(["wh_1", "wh_2", "wh_3"]))
    assert not begun.unfinished and not begun.repeat
    assert await _queued(redis_client) == 3
    assert await redis_client.zcard(keys.ACCEPTING) == 0


async def test_finishing_twice_at_once_writes_each_delivery_once_and_keeps_progress(
    redis_client: redis.asyncio.Redis, archive: Archive
) -> None:
    store = _store(redis_client, archive, chunk=3)
    event = _event()
    planned = _planned([f"wh_{n}" for n in range(10)])
    begun = await store.begin_accept(event, planned)
    assert begun.unfinished and begun.event_id == event.id
    # A written delivery goes out before the rest is written, as it may.
    for n in range(3):
        record = {"id": f"wh_{n}", "enabled": True, "rate_limit_per_second": None}
        await redis_client.set(keys.webhook(f"wh_{n}"), orjson.dumps(record))
    claims = (await store.claim("w", 10, lease_ms=60_000, concurrency=1)).claims
    assert sorted(c.delivery_id for c in claims) == sorted(d.id for d in planned[:3])
    attempt = Attempt(1, rfc3339(now()), 5, 200, None, "", {}, "http://127.0.0.1/")
    delivered = Settlement(Status.DELIVERED, attempt, None, 200, None, endpoint_ok=True)
    assert (await store.settle(claims[0], delivered)).written

    assert await store.finish_abandoned(idle_ms=60_000) == 0  # it is not stale yet
    await asyncio.gather(
        store.finish_accept(event.id), _store(redis_client, archive).finish_accept(event.id)
    )

    assert [d.id for d in await store.many([d.id for d in planned])] == [d.id for d in planned]
    assert (await store.get(claims[0].delivery_id)).status is Status.DELIVERED
    # The delivered one is done; the two claimed ones are leased; seven wait, due now.
    assert await _queued(redis_client) == 9
    assert await redis_client.zcard(keys.ACCEPTING) == 0
    assert await redis_client.exists(keys.event_plan(event.id)) == 0
    assert await store.finish_abandoned(idle_ms=0) == 0


async def _cut_off_after_first_chunk(
    client: httpx.AsyncClient, redis_client: redis.asyncio.Redis, archive: Archive, rx: Receiver
) -> tuple[NewEvent, list[str]]:
    """An accept of ten deliveries whose API process died after the first step (three)."""
    webhook_ids = await _webhooks(client, rx, 10)
    event = _event()
    begun = await _store(redis_client, archive, chunk=3).begin_accept(event, _planned(webhook_ids))
    assert begun.unfinished
    shown = (await client.get(f"/v1/events/{event.id}")).json()["data"]
    assert len(shown["deliveries"]) == 3  # what is written so far, and nothing else
    return event, webhook_ids


async def test_a_retry_of_the_upstream_id_finishes_a_cut_off_accept(
    admin: httpx.AsyncClient,
    workers: Workers,
    redis_client: redis.asyncio.Redis,
    archive: Archive,
) -> None:
    async with Receiver() as rx:
        event, webhook_ids = await _cut_off_after_first_chunk(admin, redis_client, archive, rx)
        body = {
            "type": "post.published",
            "tenant_id": TENANT,
            "data": {"post_id": "p_77"},
            "id": UPSTREAM_ID,
        }
        again = await admin.post("/v1/events", json=body)
        assert again.status_code == 200, again.text
        assert again.json()["data"]["id"] == event.id
        _one_each(again.json()["data"]["deliveries"], webhook_ids)
        assert await redis_client.zcard(keys.ACCEPTING) == 0
        await workers()
        _one_each(await _all_delivered(admin, 10), webhook_ids)
    assert Counter(r.path for r in rx.requests) == Counter(f"/{n}" for n in range(10))
    events = (await admin.get("/v1/events", params={"tenant_id": TENANT})).json()["data"]
    assert [e["id"] for e in events] == [event.id]


async def test_a_worker_finishes_an_accept_its_api_process_abandoned(
    admin: httpx.AsyncClient,
    workers: Workers,
    redis_client: redis.asyncio.Redis,
    archive: Archive,
) -> None:
    async with Receiver() as rx:
        event, webhook_ids = await _cut_off_after_first_chunk(admin, redis_client, archive, rx)
        # Its last progress was long ago, past the grace a live writer gets.
        await redis_client.zadd(keys.ACCEPTING, {event.id: 0}, xx=True)
        await workers()
        _one_each(await _all_delivered(admin, 10), webhook_ids)
    assert Counter(r.path for r in rx.requests) == Counter(f"/{n}" for n in range(10))
    assert await redis_client.zcard(keys.ACCEPTING) == 0
    shown = (await admin.get(f"/v1/events/{event.id}")).json()["data"]
    _one_each(shown["deliveries"], webhook_ids)
