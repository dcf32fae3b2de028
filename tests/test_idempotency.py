"""Idempotency-Key: replay, conflict, in flight, and scoping per token."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis.asyncio
import redis.exceptions

import relay.app
from relay.api import events
from relay.api.webhooks import WebhookCreate
from relay.app import OPERATIONS
from relay.errors import Conflict, Invalid
from relay.roles import Role
from relay.secrets import Keyring
from relay.store import keys
from relay.store.idempotency import CLAIM_MOVED, ClaimMoved, Held, IdempotencyStore, StoredResponse
from relay.store.tokens import TokenStore
from relay.store.webhooks import WebhookStore
from relay.tokens import BOOTSTRAP_ID, TokenSpec
from relay.webhooks import new_webhook
from tests.fixtures import ClientFactory
from tests.flows import post_event, webhook
from tests.links import Link
from tests.support import TEST_MASTER_KEY, RedisServer, script_calls

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


async def test_a_keyed_event_is_answered_with_one_script_call_more_than_an_unkeyed_one(
    admin: httpx.AsyncClient, redis_client: redis.asyncio.Redis
) -> None:
    # The claim of the key is the one call more: the answer goes with the event's write, and
    # the write says it did, so it is not stored a second time once sent.
    await webhook(admin, "https://hooks.example.com/keyed")
    assert (await post_event(admin)).status_code == 202  # scripts loaded, webhooks read

    async def calls(**headers: str) -> tuple[int, httpx.Response]:
        before = await script_calls(redis_client)
        answer = await admin.post(
            "/v1/events",
            json={"type": "post.published", "tenant_id": "space_42", "data": {"post_id": "k"}},
            headers=headers,
        )
        return await script_calls(redis_client) - before, answer

    plain, _ = await calls()
    keyed, first = await calls(**{"Idempotency-Key": "keyed-event"})
    assert first.status_code == 202 and keyed == plain + 1
    replayed, again = await calls(**{"Idempotency-Key": "keyed-event"})
    assert again.headers["idempotent-replayed"] == "true" and replayed == keyed - 1
    assert (again.status_code, again.json()) == (202, first.json())


async def test_a_keyed_repeat_of_an_upstream_id_replays_the_first_event(
    admin: httpx.AsyncClient,
) -> None:
    # A repeat writes nothing, so its answer went with no write: it is stored once sent, and
    # the retry under the same key replays it rather than finding the key still running.
    await webhook(admin, "https://hooks.example.com/repeat")
    first = await post_event(admin, id="up-keyed")
    assert first.status_code == 202
    data = {"post_id": "p_1"}
    body = {"type": "post.published", "tenant_id": "space_42", "id": "up-keyed", "data": data}
    headers = {"Idempotency-Key": "keyed-repeat"}
    repeat = await admin.post("/v1/events", json=body, headers=headers)
    again = await admin.post("/v1/events", json=body, headers=headers)
    assert (repeat.status_code, again.status_code) == (200, 200)
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == repeat.json()
    assert repeat.json()["data"]["id"] == first.json()["data"]["id"]


async def test_claims_made_at_once_are_one_call_each_decided_as_if_alone(
    redis_client: redis.asyncio.Redis,
) -> None:
    store = IdempotencyStore(redis_client, KEYRING)
    assert isinstance(await store.claim("tok", "warm", "f", 60), Held)  # Redis learns the script
    done = await store.claim("tok", "done", "f", 60)
    assert isinstance(done, Held)
    await store.complete(done, StoredResponse(201, {}, b'{"data": {}}'))
    before = await script_calls(redis_client)

    claims = [("new", "f"), ("new", "f"), ("done", "f"), ("done", "other"), ("new-2", "f")]
    outcomes = await asyncio.gather(
        *(store.claim("tok", key, fingerprint, 60) for key, fingerprint in claims),
        return_exceptions=True,
    )
    assert await script_calls(redis_client) - before == 1
    # The first claim of "new" holds it, so the second finds it running; "done" replays to the
    # same request and refuses another; "new-2" is claimed on its own.
    first, running, replay, mismatch, other = outcomes
    assert isinstance(first, Held) and isinstance(other, Held)
    assert isinstance(running, Conflict) and "in progress" in running.detail
    assert replay == StoredResponse(201, {}, b'{"data": {}}')
    assert isinstance(mismatch, Invalid)


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
    held = await IdempotencyStore(redis_client, KEYRING).claim(
        BOOTSTRAP_ID, "busy", fingerprint, 60
    )
    assert isinstance(held, Held)
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


async def _audit_entries(client: httpx.AsyncClient) -> int:
    """Changes in the audit trail (the checks' reveals of a secret aside)."""
    listed = (await client.get("/v1/audit-log", params={"limit": 100})).json()
    assert listed["next_cursor"] is None
    return sum(e["action"] != "webhook.secret.reveal" for e in listed["data"])


def _fingerprint(method: str, path: str, body: bytes) -> str:
    return hashlib.sha256(b"\0".join((method.encode(), path.encode(), body))).hexdigest()


# Asserts that exactly one write was made, and that `answer` tells what it made.
Check = Callable[[httpx.Response], Awaitable[None]]


@dataclass(frozen=True)
class Write:
    """A request with an Idempotency-Key, bytes only its write sends to Redis, and its check."""

    client: httpx.AsyncClient
    method: str
    path: str
    body: dict[str, Any] | None
    marker: bytes
    check: Check
    audited: bool = True  # the operation is one the audit trail records

    async def send(self) -> httpx.Response:
        headers = {"Idempotency-Key": "k"}
        return await self.client.request(self.method, self.path, json=self.body, headers=headers)


async def _create_webhook(client: httpx.AsyncClient) -> Write:
    await webhook(client, "https://hooks.example.com/first", tenant="t1")  # Redis has the script
    url = "https://hooks.example.com/made-once"
    body = {"url": url, "tenant_id": "t1"}

    async def check(answer: httpx.Response) -> None:
        assert answer.status_code == 201, answer.text
        made = answer.json()["data"]
        listed = (await client.get("/v1/webhooks", params={"tenant_id": "t1"})).json()["data"]
        assert [w["id"] for w in listed if w["url"] == url] == [made["id"]]
        shown = (await client.get(f"/v1/webhooks/{made['id']}")).json()["data"]
        assert {**shown, "secret": made["secret"]} == made
        secret = await client.get(f"/v1/webhooks/{made['id']}/secret")
        assert secret.json()["data"]["secret"] == made["secret"]

    return Write(client, "POST", "/v1/webhooks", body, url.encode(), check)


async def _rotate_secret(client: httpx.AsyncClient) -> Write:
    url = "https://hooks.example.com/rotated-once"
    hook = await webhook(client, url, tenant="t1")

    async def check(answer: httpx.Response) -> None:
        assert answer.status_code == 200, answer.text
        shown = (await client.get(f"/v1/webhooks/{hook['id']}/secret")).json()["data"]
        assert shown["secret"] == answer.json()["data"]["secret"] != hook["secret"]
        assert [p["expires_at"] for p in shown["previous"]] == [
            answer.json()["data"]["previous_expires_at"]
        ]

    # Only the record written back carries the URL.
    path = f"/v1/webhooks/{hook['id']}/rotate-secret"
    return Write(client, "POST", path, {}, url.encode(), check)


async def _create_token(client: httpx.AsyncClient) -> Write:
    body = {"role": "admin", "name": "made-once"}

    async def check(answer: httpx.Response) -> None:
        assert answer.status_code == 201, answer.text
        made = answer.json()["data"]
        listed = (await client.get("/v1/tokens", params={"limit": 100})).json()["data"]
        assert [t["id"] for t in listed if t["name"] == "made-once"] == [made["id"]]
        bearer = {"authorization": f"Bearer {made['token']}"}
        assert (await client.get("/v1/tokens", headers=bearer)).status_code == 200

    return Write(client, "POST", "/v1/tokens", body, b"made-once", check)


async def _update_webhook(client: httpx.AsyncClient) -> Write:
    hook = await webhook(client, "https://hooks.example.com/changed", tenant="t1")

    async def check(answer: httpx.Response) -> None:
        assert answer.status_code == 200, answer.text
        shown = (await client.get(f"/v1/webhooks/{hook['id']}")).json()["data"]
        assert answer.json()["data"] == shown
        assert shown["description"] == "changed-once"

    body = {"description": "changed-once"}
    return Write(client, "PATCH", f"/v1/webhooks/{hook['id']}", body, b"changed-once", check)


async def _delete_webhook(client: httpx.AsyncClient) -> Write:
    hook = await webhook(client, "https://hooks.example.com/deleted", tenant="t1")

    async def check(answer: httpx.Response) -> None:
        assert answer.status_code == 200, answer.text
        assert answer.json()["data"]["id"] == hook["id"]
        assert answer.json()["data"]["deleted"] is True
        assert (await client.get(f"/v1/webhooks/{hook['id']}")).status_code == 404

    # Only the delete names the webhook's failure streak.
    marker = keys.endpoint_failing(hook["id"]).encode()
    return Write(client, "DELETE", f"/v1/webhooks/{hook['id']}", None, marker, check)


async def _post_event(client: httpx.AsyncClient) -> Write:
    hook = await webhook(client, "https://hooks.example.com/a", tenant="t1")
    plain = {"type": "post.published", "tenant_id": "t1", "data": {"post_id": "sent-once"}}
    # One event gets through first, so Redis has the accept script cached.
    first = {**plain, "data": {"post_id": "p"}}
    assert (await client.post("/v1/events", json=first)).status_code == 202

    async def check(answer: httpx.Response) -> None:
        assert answer.status_code == 202, answer.text
        event = answer.json()["data"]
        assert [d["webhook_id"] for d in event["deliveries"]] == [hook["id"]]
        written = await _deliveries_of(client, hook["id"])
        assert written.count(event["id"]) == 1 and len(written) == 2, written
        shown = (await client.get(f"/v1/events/{event['id']}")).json()["data"]
        assert {k: shown[k] for k in ("id", "data", "created_at")} == {
            k: event[k] for k in ("id", "data", "created_at")
        }

    return Write(client, "POST", "/v1/events", plain, b"sent-once", check, audited=False)


WRITES = [
    _create_webhook,
    _rotate_secret,
    _create_token,
    _update_webhook,
    _delete_webhook,
    _post_event,
]


@pytest.mark.parametrize("reached", [True, False], ids=["reply-lost", "never-reached"])
@pytest.mark.parametrize("make", WRITES, ids=lambda make: make.__name__.strip("_"))
async def test_the_retry_of_a_write_that_lost_its_reply_learns_its_outcome(
    make: Callable[[httpx.AsyncClient], Awaitable[Write]],
    reached: bool,
    make_client: ClientFactory,
    own_redis: RedisServer,
) -> None:
    async with Link(own_redis.port) as link:
        client = await make_client(redis_url=f"redis://127.0.0.1:{link.port}/0")
        write = await make(client)
        audited_before = await _audit_entries(client)
        if reached:  # Redis makes the write, but its reply never comes back
            link.swallow_after = write.marker
        else:  # the connection dies before the write gets to Redis
            link.drop_at = write.marker
        lost = await write.send()
        link.swallow_after = link.drop_at = None
        assert (link.swallowed, link.dropped) == ((1, 0) if reached else (0, 1))
        assert lost.status_code == 503, lost.text

        # Relay could not tell which: either the write stored its answer with it and the
        # retry replays that, or nothing was written and the retry runs it, once.
        retry = await write.send()
        assert ("idempotent-replayed" in retry.headers) is reached, retry.text
        await write.check(retry)
        again = await write.send()
        assert again.headers["idempotent-replayed"] == "true"
        assert (again.status_code, again.json()) == (retry.status_code, retry.json())
        # The change is in the audit trail once, whichever run recorded it.
        made = await _audit_entries(client) - audited_before
        assert made == (1 if write.audited else 0)


async def test_a_transaction_whose_reply_was_lost_is_not_taken_for_a_conflict(
    make_client: ClientFactory, own_redis: RedisServer
) -> None:
    # Without a key: the optimistic loop must not read the lost EXEC reply as "changed
    # meanwhile" and rotate again (the first rotation may have, and here did, commit).
    async with Link(own_redis.port) as link:
        client = await make_client(redis_url=f"redis://127.0.0.1:{link.port}/0")
        url = "https://hooks.example.com/rotated"
        hook = await webhook(client, url, tenant="t1")
        link.swallow_after = url.encode()
        lost = await client.post(f"/v1/webhooks/{hook['id']}/rotate-secret", json={})
        link.swallow_after = None
        assert lost.status_code == 503, lost.text
        shown = (await client.get(f"/v1/webhooks/{hook['id']}/secret")).json()["data"]
    assert link.swallowed == 1
    assert shown["secret"] != hook["secret"]
    assert len(shown["previous"]) == 1, shown


async def test_an_event_with_an_upstream_id_whose_reply_was_lost_is_found_by_the_retry(
    make_client: ClientFactory, own_redis: RedisServer
) -> None:
    async with Link(own_redis.port) as link:
        client = await make_client(redis_url=f"redis://127.0.0.1:{link.port}/0")
        hook = await webhook(client, "https://hooks.example.com/a", tenant="t1")
        upstream = {
            "type": "post.published",
            "tenant_id": "t1",
            "data": {"post_id": "lost-reply"},
            "id": "up_1",
        }
        first = {**upstream, "data": {"post_id": "p"}, "id": "up_0"}
        assert (await client.post("/v1/events", json=first)).status_code == 202
        link.swallow_after = b"lost-reply"
        lost = await client.post("/v1/events", json=upstream, headers={"Idempotency-Key": "b"})
        link.swallow_after = None
        assert link.swallowed == 1
        assert lost.status_code == 503, lost.text

        found = await client.post("/v1/events", json=upstream, headers={"Idempotency-Key": "b"})
        assert found.status_code == 202, found.text
        replay = await client.post("/v1/events", json=upstream, headers={"Idempotency-Key": "b"})
        assert replay.headers["idempotent-replayed"] == "true"
        assert replay.json() == found.json()
        # The same upstream id under another key is the upstream id's repeat: nothing new.
        other = await client.post("/v1/events", json=upstream, headers={"Idempotency-Key": "c"})
        assert other.status_code == 200, other.text
        assert other.json()["data"]["id"] == found.json()["data"]["id"]
        written = await _deliveries_of(client, hook["id"])
    assert len(written) == 2, written
    assert found.json()["data"]["id"] in written


async def test_a_claim_whose_holder_died_before_its_write_runs_once_again(
    admin: httpx.AsyncClient, redis_client: redis.asyncio.Redis
) -> None:
    # An API process claimed the key and died before its write committed (a committed write
    # would have stored its answer): the lapsed claim is taken by the retry, which runs once.
    body = b'{"role":"ingest"}'
    store = IdempotencyStore(redis_client, KEYRING)
    fingerprint = _fingerprint("POST", "/v1/tokens", body)
    assert isinstance(await store.claim(BOOTSTRAP_ID, "orphan", fingerprint, 1), Held)
    await asyncio.sleep(1.2)
    headers = {"Idempotency-Key": "orphan", "content-type": "application/json"}
    response = await admin.post("/v1/tokens", content=body, headers=headers)
    assert response.status_code == 201, response.text
    again = await admin.post("/v1/tokens", content=body, headers=headers)
    assert again.json() == response.json()
    assert await _token_count(admin) == 1


async def test_a_claim_left_by_an_older_release_is_not_run_again(
    admin: httpx.AsyncClient, redis_client: redis.asyncio.Redis
) -> None:
    # Before writes stored their answers, a failed run left `unknown` with no run token: it
    # may have written, so it is still never run again.
    body = b'{"role":"ingest"}'
    key = IdempotencyStore._key(BOOTSTRAP_ID, "legacy")
    record = {"state": "unknown", "fingerprint": _fingerprint("POST", "/v1/tokens", body)}
    await redis_client.set(key, json.dumps(record), ex=3600)
    headers = {"Idempotency-Key": "legacy", "content-type": "application/json"}
    response = await admin.post("/v1/tokens", content=body, headers=headers)
    assert response.status_code == 409
    assert "may have taken effect" in response.json()["detail"]
    assert await _token_count(admin) == 0


async def test_a_stale_runs_delayed_write_cannot_land_after_the_claim_moved_on(
    redis_client: redis.asyncio.Redis,
) -> None:
    store = IdempotencyStore(redis_client, KEYRING)
    tokens = TokenStore(redis_client)
    webhooks = WebhookStore(redis_client, max_per_tenant=10)
    spec = TokenSpec(role=Role.INGEST)
    answer = StoredResponse(201, {}, b"{}")
    stale = await store.claim(BOOTSTRAP_ID, "k", "f", 60)
    assert isinstance(stale, Held)
    # The run failed (its reply timed out); a retry took the key over.
    await store.mark_unknown(stale)
    current = await store.claim(BOOTSTRAP_ID, "k", "f", 60)
    assert isinstance(current, Held)
    # The first run's writes arrive late, in a transaction and in a script: neither lands.
    with pytest.raises(ClaimMoved):
        await tokens.issue(spec, stale.commit(lambda _: answer))
    hook, _ = new_webhook(WebhookCreate(url="https://hooks.example.com/a"), "t1", KEYRING)
    with pytest.raises(redis.exceptions.ResponseError, match=CLAIM_MOVED):
        await webhooks.add(hook, stale.commit(lambda _: answer))
    assert await redis_client.zcard(keys.TOKENS) == 0
    assert await webhooks.all_ids() == []
    # Nor does its late failure undo what the retry stored.
    await tokens.issue(spec, current.commit(lambda _: answer))
    await store.mark_unknown(stale)
    await store.release(stale)
    await store.mark_unknown(current)
    assert await store.claim(BOOTSTRAP_ID, "k", "f", 60) == answer


async def test_an_operation_that_does_not_store_its_answer_with_its_write_fails_loudly(
    make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As if retrying an event had been declared to store its answer with its write and its
    # handler had not: a lost reply would let a retry run it twice, so a keyed call is refused.
    forgetful = [
        dataclasses.replace(op, repeats=False) if op.handler is events.retry_event else op
        for op in OPERATIONS
    ]
    monkeypatch.setattr(relay.app, "OPERATIONS", forgetful)
    client = await make_client()
    event = (await post_event(client)).json()["data"]
    path = f"/v1/events/{event['id']}/retry"
    assert (await client.post(path)).status_code == 202  # without a key nothing is at stake
    keyed = await client.post(path, headers={"Idempotency-Key": "forgot"})
    assert keyed.status_code == 500, keyed.text
    assert keyed.headers["content-type"] == "application/problem+json"
