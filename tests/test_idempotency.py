"""Idempotency-Key: replay, conflict, in flight, and scoping per token."""

from __future__ import annotations

import asyncio
import hashlib

import httpx
import redis.asyncio

from relay.secrets import Keyring
from relay.store.idempotency import Claim, IdempotencyStore
from relay.tokens import BOOTSTRAP_ID
from tests.conftest import ClientFactory
from tests.flows import webhook
from tests.links import Link
from tests.support import TEST_MASTER_KEY, RedisServer

KEYRING = Keyring.from_strings([TEST_MASTER_KEY])


async def _token_count(admin: httpx.AsyncClient) -> int:
    return len((await admin.get("/v1/tokens", params={"limit": 100})).json()["data"])


async def test_same_key_same_body_replays_and_does_nothing_again(admin: httpx.AsyncClient) -> None:
    headers = {"Idempotency-Key": "create-publisher-1"}
    first = await admin.post("/v1/tokens", json={"role": "ingest"}, headers=headers)
    second = await admin.post("/v1/tokens", json={"role": "ingest"}, headers=headers)
    assert first.status_code == second.status_code == 201
    assert "idempotent-replayed" not in first.headers
    assert second.headers["idempotent-replayed"] == "true"
    assert second.json() == first.json()
    assert await _token_count(admin) == 1


async def test_same_key_different_body_is_422(admin: httpx.AsyncClient) -> None:
    headers = {"Idempotency-Key": "k1"}
    assert (
        await admin.post("/v1/tokens", json={"role": "ingest"}, headers=headers)
    ).status_code == 201
    response = await admin.post("/v1/tokens", json={"role": "admin"}, headers=headers)
    assert response.status_code == 422
    assert "Idempotency-Key" in response.json()["errors"]
    assert await _token_count(admin) == 1


async def test_same_key_on_another_path_is_422(admin: httpx.AsyncClient) -> None:
    made = (await admin.post("/v1/tokens", json={"role": "ingest"})).json()["data"]["id"]
    headers = {"Idempotency-Key": "k2"}
    assert (await admin.delete(f"/v1/tokens/{made}", headers=headers)).status_code == 200
    other = await admin.delete("/v1/tokens/tok_01m845mqv2vnzbymnrhzvx3yzc", headers=headers)
    assert other.status_code == 422


async def test_key_still_in_flight_is_409(
    admin: httpx.AsyncClient, redis_client: redis.asyncio.Redis
) -> None:
    # Another API replica has claimed the key and is still working on the same request.
    body = b'{"role":"ingest"}'
    fingerprint = hashlib.sha256(b"\0".join((b"POST", b"/v1/tokens", body))).hexdigest()
    assert (
        await IdempotencyStore(redis_client, KEYRING).claim(BOOTSTRAP_ID, "busy", fingerprint, 60)
        is Claim.RUN
    )
    response = await admin.post(
        "/v1/tokens",
        content=body,
        headers={"Idempotency-Key": "busy", "content-type": "application/json"},
    )
    assert response.status_code == 409
    assert response.json()["code"] == "conflict"
    assert await _token_count(admin) == 0


async def test_concurrent_repeats_create_exactly_one(admin: httpx.AsyncClient) -> None:
    headers = {"Idempotency-Key": "burst"}
    responses = await asyncio.gather(
        *(admin.post("/v1/tokens", json={"role": "ingest"}, headers=headers) for _ in range(20))
    )
    statuses = {r.status_code for r in responses}
    assert statuses <= {201, 409}
    created_ids = {r.json()["data"]["id"] for r in responses if r.status_code == 201}
    assert len(created_ids) == 1
    assert await _token_count(admin) == 1


async def test_errors_are_replayed_too(admin: httpx.AsyncClient) -> None:
    headers = {"Idempotency-Key": "bad-one"}
    first = await admin.post("/v1/tokens", json={"role": "root"}, headers=headers)
    again = await admin.post("/v1/tokens", json={"role": "root"}, headers=headers)
    assert first.status_code == again.status_code == 422
    assert again.headers["idempotent-replayed"] == "true"


async def test_keys_are_scoped_per_token(make_client: ClientFactory, token_for) -> None:  # type: ignore[no-untyped-def]
    one = await make_client(token=await token_for("admin"))
    two = await make_client(token=await token_for("admin"))
    headers = {"Idempotency-Key": "shared-name"}
    a = await one.post("/v1/tokens", json={"role": "ingest"}, headers=headers)
    b = await two.post("/v1/tokens", json={"role": "ingest"}, headers=headers)
    assert a.status_code == b.status_code == 201
    assert "idempotent-replayed" not in b.headers
    assert a.json()["data"]["id"] != b.json()["data"]["id"]


async def test_keys_expire_after_a_day(
    admin: httpx.AsyncClient, redis_client: redis.asyncio.Redis
) -> None:
    await admin.post("/v1/tokens", json={"role": "ingest"}, headers={"Idempotency-Key": "ttl"})
    keys = [k async for k in redis_client.scan_iter("relay:idem:*")]
    assert len(keys) == 1
    assert 86_000 < await redis_client.ttl(keys[0]) <= 86_400


async def test_bad_key_is_422(admin: httpx.AsyncClient) -> None:
    response = await admin.post(
        "/v1/tokens", json={"role": "ingest"}, headers={"Idempotency-Key": "x" * 256}
    )
    assert response.status_code == 422


async def _deliveries_of(client: httpx.AsyncClient, webhook_id: str) -> list[str]:
    listed = await client.get(f"/v1/webhooks/{webhook_id}/deliveries", params={"limit": 100})
    return [d["event_id"] for d in listed.json()["data"]]


async def test_a_write_whose_reply_was_lost_is_never_made_twice(
    make_client: ClientFactory, own_redis: RedisServer
) -> None:
    async with Link(own_redis.port) as link:
        client = await make_client(redis_url=f"redis://127.0.0.1:{link.port}/0")
        hook = await webhook(client, "https://hooks.example.com/a", tenant="t1")
        plain = {"type": "post.published", "tenant_id": "t1", "data": {"post_id": "lost-reply"}}
        upstream = {**plain, "data": {"post_id": "lost-reply-2"}, "id": "up_1"}
        # One event gets through first, so Redis has the accept script cached.
        assert (
            await client.post("/v1/events", json={**plain, "data": {"post_id": "p"}})
        ).status_code == 202
        # Redis runs the accept, but its reply never comes back: relay cannot know it wrote.
        link.swallow_after = b"lost-reply"
        first = await client.post("/v1/events", json=plain, headers={"Idempotency-Key": "a"})
        second = await client.post("/v1/events", json=upstream, headers={"Idempotency-Key": "b"})
        link.swallow_after = None
        assert link.swallowed == 2
        assert first.status_code == second.status_code == 503, (first.text, second.text)

        # Without an upstream id nothing can tell whether the first try wrote: the key stays
        # taken and a retry says so, rather than writing the event a second time.
        retry = await client.post("/v1/events", json=plain, headers={"Idempotency-Key": "a"})
        assert retry.status_code == 409, retry.text
        assert "may have taken effect" in retry.json()["detail"]
        # With one, the upstream id decides: the retry finds the event the first try wrote.
        found = await client.post("/v1/events", json=upstream, headers={"Idempotency-Key": "b"})
        assert found.status_code == 200, found.text
        replay = await client.post("/v1/events", json=upstream, headers={"Idempotency-Key": "b"})
        assert replay.headers["idempotent-replayed"] == "true"
        assert replay.json() == found.json()

        written = await _deliveries_of(client, hook["id"])
    assert len(written) == 3, written
    assert found.json()["data"]["id"] in written


async def test_a_claim_whose_holder_died_is_not_run_again(
    admin: httpx.AsyncClient, redis_client: redis.asyncio.Redis
) -> None:
    # An API process claimed the key, sent its write and died before recording the outcome.
    body = b'{"role":"ingest"}'
    fingerprint = hashlib.sha256(b"\0".join((b"POST", b"/v1/tokens", body))).hexdigest()
    store = IdempotencyStore(redis_client, KEYRING)
    assert await store.claim(BOOTSTRAP_ID, "orphan", fingerprint, 1) is Claim.RUN
    await asyncio.sleep(1.2)
    response = await admin.post(
        "/v1/tokens",
        content=body,
        headers={"Idempotency-Key": "orphan", "content-type": "application/json"},
    )
    assert response.status_code == 409
    assert await _token_count(admin) == 0
