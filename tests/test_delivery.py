"""Events in, signed deliveries out: real API, real `relay worker` processes, real receivers."""

from __future__ import annotations

import asyncio

import httpx
import orjson
from standardwebhooks.webhooks import Webhook as Verifier

from tests.fixtures import ClientFactory
from tests.flows import Workers, commands_sent_while, post_event, wait_status, webhook
from tests.receivers import Receiver
from tests.support import RedisServer


async def test_event_reaches_every_matching_webhook_of_its_tenant_signed(
    admin: httpx.AsyncClient, workers: Workers
) -> None:
    await workers()
    async with Receiver() as ours, Receiver() as theirs:
        a = await webhook(admin, ours.url("/a"), headers={"X-Custom": "v"})
        b = await webhook(admin, ours.url("/b"), events=["post.published"])
        await webhook(admin, ours.url("/c"), events=["media.uploaded"])
        await webhook(admin, theirs.url("/x"), tenant="space_7")
        response = await post_event(admin, data={"post_id": 7, "extra": [1, 2]})
        assert response.status_code == 202, response.text
        event = response.json()["data"]
        assert event["id"].startswith("evt_") and event["tenant_id"] == "space_42"
        assert {d["webhook_id"] for d in event["deliveries"]} == {a["id"], b["id"]}
        assert all(d["status"] == "pending" for d in event["deliveries"])
        # The worker process was started just now: its start is in this wait too.
        received = await ours.wait_for(2, timeout=20)
        await asyncio.sleep(0.3)
        assert theirs.requests == []
    assert sorted(r.path for r in received) == ["/a", "/b"]
    for request in received:
        secret = a["secret"] if request.path == "/a" else b["secret"]
        Verifier(secret).verify(request.body, request.headers)
        assert request.headers["webhook-id"] == event["id"]
        body = orjson.loads(request.body)
        assert body == {
            "id": event["id"],
            "type": "post.published",
            "timestamp": event["created_at"],
            "tenant_id": "space_42",
            "data": {"post_id": 7, "extra": [1, 2]},
        }
    assert next(r for r in received if r.path == "/a").headers["x-custom"] == "v"
    for d in event["deliveries"]:
        done = await wait_status(admin, d["webhook_id"], d["id"], "delivered")
        assert done["attempt_count"] == 1 and done["last_status_code"] == 200
        assert done["delivered_at"] and done["next_attempt_at"] is None
        [attempt] = done["attempts"]
        assert attempt["number"] == 1 and attempt["status_code"] == 200
        assert attempt["request_headers"]["webhook-id"] == event["id"]
        assert "whsec_" not in orjson.dumps(attempt).decode()
        # The receiver got the custom header's value; the log names it without it.
        if d["webhook_id"] == a["id"]:
            assert attempt["request_headers"]["X-Custom"] == "[redacted]"


async def test_each_event_fans_out_to_the_webhooks_as_they_are_when_it_is_written(
    make_client: ClientFactory, own_redis: RedisServer
) -> None:
    # Two API processes on one Redis: one posts events, the other changes the webhooks.
    poster = await make_client(redis_url=own_redis.url)
    other = await make_client(redis_url=own_redis.url)
    first = await webhook(other, "https://hooks.example.com/1")
    alone = await post_event(poster, data={"post_id": "p_1"})
    assert [d["webhook_id"] for d in alone.json()["data"]["deliveries"]] == [first["id"]]

    # While the webhooks stay as they were, an event costs no Redis read besides its write:
    # nothing but script calls (the rate limit's and the write's).
    sent = await commands_sent_while(own_redis, post_event(poster, data={"post_id": "p_2"}))
    assert set(sent) == {"EVALSHA"}, sent

    # A webhook made through the other process gets the next event, alone or in a batch.
    second = await webhook(other, "https://hooks.example.com/2")
    both = {first["id"], second["id"]}
    posted = await post_event(poster, data={"post_id": "p_3"})
    assert {d["webhook_id"] for d in posted.json()["data"]["deliveries"]} == both
    third = await webhook(other, "https://hooks.example.com/3", events=["post.published"])
    events = [
        {"type": "post.published", "tenant_id": "space_42", "data": {"post_id": f"p_{n}"}}
        for n in range(4, 7)
    ]
    batch = await poster.post("/v1/events/batch", json={"events": events})
    assert batch.status_code == 207, batch.text
    for result in batch.json()["data"]:
        assert result["status"] == 202
        shown = {d["webhook_id"] for d in result["data"]["deliveries"]}
        assert shown == {*both, third["id"]}
    # And one it disabled gets none.
    disabled = await other.patch(f"/v1/webhooks/{first['id']}", json={"enabled": False})
    assert disabled.status_code == 200, disabled.text
    later = await post_event(poster, data={"post_id": "p_7"})
    assert {d["webhook_id"] for d in later.json()["data"]["deliveries"]} == {
        second["id"],
        third["id"],
    }
