"""POST /v1/events/batch: each event accepted or refused on its own, as POST /v1/events would,
with one result per event in order."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from tests.fixtures import ClientFactory
from tests.flows import commands_sent_while, webhook
from tests.links import Link
from tests.support import RedisServer

BATCH = "/v1/events/batch"


def _event(post_id: str, tenant: str = "t1", **fields: Any) -> dict[str, Any]:
    return {"type": "post.published", "tenant_id": tenant, "data": {"post_id": post_id}, **fields}


async def _events_of(client: httpx.AsyncClient, tenant: str) -> list[dict[str, Any]]:
    listed = await client.get("/v1/events", params={"tenant_id": tenant, "limit": 100})
    assert listed.status_code == 200, listed.text
    events: list[dict[str, Any]] = listed.json()["data"]
    return events


async def test_each_event_of_a_batch_gets_its_own_result_in_order(
    admin: httpx.AsyncClient,
) -> None:
    hook = await webhook(admin, "https://hooks.example.com/a", tenant="t1")
    first = await admin.post("/v1/events", json=_event("p_0", id="up_1"))
    assert first.status_code == 202, first.text
    invalid = {"type": "post.published", "tenant_id": "t1", "data": {"title": "no post_id"}}
    unknown = {"type": "post.deleted", "tenant_id": "t1", "data": {}}
    events = [
        _event("p_1"),
        invalid,
        _event("p_2", id="up_1"),  # a repeat of the event posted above
        unknown,
        "not an event",
        _event("p_3", id="up_2"),
        _event("p_4", id="up_2"),  # a repeat of the one just before it, in the same batch
    ]

    answer = await admin.post(BATCH, json={"events": events})

    assert answer.status_code == 207, answer.text
    results = answer.json()["data"]
    assert [r["status"] for r in results] == [202, 422, 200, 422, 422, 202, 200]
    # A refused event is answered as POST /v1/events answers it, problem and all.
    for result, event in ((results[1], invalid), (results[3], unknown)):
        alone = await admin.post("/v1/events", json=event)
        assert alone.status_code == 422
        assert result == alone.json()
    assert results[1]["errors"] == {"data.post_id": ["Field required"]}
    assert results[4]["errors"] == {"body": ["must be an object"]}
    # A repeated upstream id is the first event, whichever request posted it.
    assert results[2]["data"]["id"] == first.json()["data"]["id"]
    assert results[6]["data"]["id"] == results[5]["data"]["id"]
    accepted = [results[0]["data"], results[5]["data"]]
    for event in accepted:
        assert [d["webhook_id"] for d in event["deliveries"]] == [hook["id"]]
        shown = await admin.get(f"/v1/events/{event['id']}")
        assert shown.json()["data"]["deliveries"] == event["deliveries"]
    assert results[0]["data"]["data"] == {"post_id": "p_1"}
    assert results[5]["data"]["upstream_id"] == "up_2"
    listed = await _events_of(admin, "t1")
    assert sorted(e["id"] for e in listed) == sorted(
        [first.json()["data"]["id"], *(e["id"] for e in accepted)]
    )


async def test_an_ingest_token_posts_batches_and_a_tenant_token_is_refused_as_alone(
    make_client: ClientFactory, token_for: Any, admin: httpx.AsyncClient
) -> None:
    ingest = await make_client(token=await token_for("ingest"))
    made = await ingest.post(BATCH, json={"events": [_event("p_1")]})
    assert made.status_code == 207, made.text
    assert made.json()["data"][0]["status"] == 202

    # Tenant tokens may not post events: not alone, not in a batch, not even their own tenant's.
    tenant = await make_client(token=await token_for("tenant", "t2"))
    own, other = _event("p_2", tenant="t2"), _event("p_3", tenant="t3")
    alone = await tenant.post("/v1/events", json=own)
    batch = await tenant.post(BATCH, json={"events": [own, other]})
    assert alone.status_code == batch.status_code == 403
    assert batch.json()["code"] == alone.json()["code"] == "forbidden"
    assert await _events_of(admin, "t2") == await _events_of(admin, "t3") == []


async def test_a_batch_past_the_most_events_is_a_422_naming_the_limit(
    make_client: ClientFactory,
) -> None:
    client = await make_client(max_batch_events=3)
    too_many = await client.post(BATCH, json={"events": [_event(f"p_{n}") for n in range(4)]})
    assert too_many.status_code == 422, too_many.text
    problem = too_many.json()
    assert "3" in problem["detail"]
    assert problem["errors"] == {
        "events": ["must hold 1 to 3 events (RELAY_MAX_BATCH_EVENTS); this one holds 4"]
    }
    empty = await client.post(BATCH, json={"events": []})
    assert empty.status_code == 422
    assert "events" in empty.json()["errors"]
    not_a_batch = await client.post(BATCH, json=_event("p_1"))
    assert not_a_batch.status_code == 422
    assert set(not_a_batch.json()["errors"]) == {"type", "tenant_id", "data", "events"}
    assert await _events_of(client, "t1") == []
    at_most = await client.post(BATCH, json={"events": [_event(f"p_{n}") for n in range(3)]})
    assert [r["status"] for r in at_most.json()["data"]] == [202, 202, 202]


async def test_an_event_past_the_body_limit_is_refused_alone(make_client: ClientFactory) -> None:
    client = await make_client(max_body_bytes=2048, max_batch_events=3)
    large = _event("p_large")
    large["data"]["text"] = "x" * 2100
    # Posted alone, the event is too large; in a batch, so is it, and only it.
    assert (await client.post("/v1/events", json=large)).status_code == 413
    answer = await client.post(BATCH, json={"events": [large, _event("p_small")]})
    assert answer.status_code == 207, answer.text
    refused, accepted = answer.json()["data"]
    assert refused["status"] == 413 and refused["code"] == "payload_too_large"
    assert "2048" in refused["detail"]
    assert accepted["status"] == 202
    assert [e["data"]["post_id"] for e in await _events_of(client, "t1")] == ["p_small"]
    # The whole batch is held to as many events of that size as it may carry: 3 x 2048 bytes.
    whole = [
        {**_event(f"p_{n}"), "data": {"post_id": f"p_{n}", "text": "x" * 1900}} for n in range(4)
    ]
    over = await client.post(BATCH, json={"events": whole})
    assert over.status_code == 413, over.text
    assert "6144" in over.json()["detail"]


def _keys(value: object) -> object:
    """The keys of every object in `value`, in the order the JSON has them."""
    if isinstance(value, dict):
        return [(key, _keys(item)) for key, item in value.items()]
    if isinstance(value, list):
        return [_keys(item) for item in value]
    return None


async def test_each_result_of_a_batch_has_its_fields_in_the_order_posted_alone_gives(
    make_client: ClientFactory,
) -> None:
    client = await make_client(max_body_bytes=2048)
    await webhook(client, "https://hooks.example.com/a", tenant="t1")
    large = _event("p_large")
    large["data"]["text"] = "x" * 2100
    invalid = {"type": "post.published", "tenant_id": "t1", "data": {}}
    posted = [_event("p_1", id="up_1"), _event("p_1", id="up_1"), invalid, large]
    alone = [await client.post("/v1/events", json=event) for event in posted]
    assert [a.status_code for a in alone] == [202, 200, 422, 413]

    batch = await client.post(BATCH, json={"events": [_event("p_2", id="up_2"), *posted[1:]]})

    assert batch.status_code == 207, batch.text
    accepted, repeated, *refused = batch.json()["data"]
    # An event as `{"status", "data"}`, its data as alone; a refusal as the problem alone.
    assert _keys(accepted) == [("status", None), ("data", _keys(alone[0].json()["data"]))]
    assert _keys(repeated) == [("status", None), ("data", _keys(alone[1].json()["data"]))]
    assert "undeliverable" not in repeated["data"]
    assert [_keys(r) for r in refused] == [_keys(a.json()) for a in alone[2:]]
    assert [list(r) for r in refused] == [
        ["type", "title", "status", "detail", "code", "errors"],
        ["type", "title", "status", "detail", "code"],
    ]


async def test_an_idempotency_key_replays_the_whole_batch(admin: httpx.AsyncClient) -> None:
    await webhook(admin, "https://hooks.example.com/a", tenant="t1")
    body = {"events": [_event("p_1"), {"type": "nope", "tenant_id": "t1", "data": {}}]}
    headers = {"Idempotency-Key": "batch-1"}
    first = await admin.post(BATCH, json=body, headers=headers)
    again = await admin.post(BATCH, json=body, headers=headers)
    assert first.status_code == again.status_code == 207
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    assert len(await _events_of(admin, "t1")) == 1
    # The same key with another batch is refused, as for any request.
    other = await admin.post(BATCH, json={"events": [_event("p_2")]}, headers=headers)
    assert other.status_code == 422
    assert "Idempotency-Key" in other.json()["errors"]
    assert len(await _events_of(admin, "t1")) == 1


async def test_the_retry_of_a_batch_whose_reply_was_lost_writes_each_event_once(
    make_client: ClientFactory, own_redis: RedisServer
) -> None:
    async with Link(own_redis.port) as link:
        client = await make_client(redis_url=f"redis://127.0.0.1:{link.port}/0")
        hook = await webhook(client, "https://hooks.example.com/a", tenant="t1")
        # One event gets through first, so Redis has the accept script cached.
        assert (await client.post(BATCH, json={"events": [_event("warm")]})).status_code == 207
        events = [_event("p_1"), _event("lost-reply"), _event("p_3"), {"type": "nope"}]
        headers = {"Idempotency-Key": "lost"}
        link.swallow_after = b"lost-reply"  # Redis writes the events; their replies never come
        lost = await client.post(BATCH, json={"events": events}, headers=headers)
        link.swallow_after = None
        assert link.swallowed == 1
        assert lost.status_code == 503, lost.text

        retry = await client.post(BATCH, json={"events": events}, headers=headers)
        assert retry.status_code == 207, retry.text
        results = retry.json()["data"]
        assert [r["status"] for r in results] == [202, 202, 202, 422]
        listed = await _events_of(client, "t1")
        posted = [e for e in listed if e["data"]["post_id"] != "warm"]
        # Written once, by the run whose reply was lost; the retry answers with those events.
        assert sorted(e["id"] for e in posted) == sorted(r["data"]["id"] for r in results[:3])
        deliveries = await client.get(f"/v1/webhooks/{hook['id']}/deliveries")
        assert len(deliveries.json()["data"]) == 4
        replay = await client.post(BATCH, json={"events": events}, headers=headers)
        assert replay.headers["idempotent-replayed"] == "true"
        assert replay.json() == retry.json()


async def test_a_batch_of_small_events_is_written_in_one_redis_call(
    make_client: ClientFactory, own_redis: RedisServer
) -> None:
    client = await make_client(redis_url=own_redis.url)
    hook = await webhook(client, "https://hooks.example.com/a", tenant="t1")
    assert (await client.post(BATCH, json={"events": [_event("warm")]})).status_code == 207
    events = [_event(f"p_{n}", id=f"up_{n}") for n in range(10)]

    sent = await commands_sent_while(own_redis, client.post(BATCH, json={"events": events}))

    # The token's rate limit, then one script call writing the whole batch.
    assert sent == ["EVALSHA", "EVALSHA"], sent
    listed = await _events_of(client, "t1")
    assert len(listed) == 11
    for event in listed:
        shown = await client.get(f"/v1/events/{event['id']}")
        assert [d["webhook_id"] for d in shown.json()["data"]["deliveries"]] == [hook["id"]]
    # Each event is still its own: posted again, each is a repeat of its upstream id.
    again = await client.post(BATCH, json={"events": events})
    assert [r["status"] for r in again.json()["data"]] == [200] * 10
    assert len(await _events_of(client, "t1")) == 11


async def test_single_events_posted_at_once_share_their_script_calls_each_its_own(
    make_client: ClientFactory, own_redis: RedisServer
) -> None:
    client = await make_client(redis_url=own_redis.url, api_rate_limit=0)
    hook = await webhook(client, "https://hooks.example.com/a", tenant="t1")
    assert (await client.post("/v1/events", json=_event("warm"))).status_code == 202
    posts = [_event(f"p_{n}") for n in range(10)] + [_event("p_0", id="up_0"), {"type": "x"}]
    answers: list[httpx.Response] = []

    async def at_once() -> httpx.Response:
        answers.extend(await asyncio.gather(*(client.post("/v1/events", json=b) for b in posts)))
        return answers[0]

    sent = await commands_sent_while(own_redis, at_once())

    assert [a.status_code for a in answers] == [202] * 11 + [422]
    assert 1 <= sent.count("EVALSHA") < 11, sent
    created = [a.json()["data"] for a in answers[:11]]
    assert len({e["id"] for e in created}) == 11
    for event in created:
        assert [d["webhook_id"] for d in event["deliveries"]] == [hook["id"]]
        shown = await client.get(f"/v1/events/{event['id']}")
        assert shown.json()["data"]["data"] == event["data"]
    repeat = await client.post("/v1/events", json=posts[10])
    assert (repeat.status_code, repeat.json()["data"]["id"]) == (200, created[10]["id"])
    assert len(await _events_of(client, "t1")) == 12
