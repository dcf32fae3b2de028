"""The audit trail: every change made through the API, with who, what, which object, when and
the request it came in; tenants see only their own tenant's entries."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from tests.fixtures import ClientFactory
from tests.flows import Workers, post_event, wait_status, webhook
from tests.receivers import Receiver, Reply

ADMIN = {"token_id": "tok_bootstrap", "role": "admin"}


async def trail(client: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    """Every entry the client may see, oldest first, walking all pages."""
    entries: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {"limit": 5, **params} | ({"cursor": cursor} if cursor else {})
        response = await client.get("/v1/audit-log", params=query)
        assert response.status_code == 200, response.text
        entries += response.json()["data"]
        cursor = response.json()["next_cursor"]
        if cursor is None:
            return list(reversed(entries))


async def test_twelve_operator_actions_make_twelve_entries_in_order(
    admin: httpx.AsyncClient, make_client: ClientFactory
) -> None:
    made = (await admin.post("/v1/tokens", json={"role": "tenant", "tenant_id": "t1"})).json()
    tenant = await make_client(token=made["data"]["token"])
    tenant_actor = {"token_id": made["data"]["id"], "role": "tenant"}
    hook = await webhook(tenant, "https://a.example.com/", tenant="t1")
    on_hook = f"/v1/webhooks/{hook['id']}"
    assert (await tenant.patch(on_hook, json={"description": "orders"})).status_code == 200
    assert (await tenant.patch(on_hook, json={"enabled": False})).status_code == 200
    assert (await admin.patch(on_hook, json={"enabled": True})).status_code == 200
    assert (await tenant.get(f"{on_hook}/secret")).status_code == 200
    rotated = await tenant.post(
        f"{on_hook}/rotate-secret",
        json={"grace_seconds": 60},
        headers={"x-request-id": "rotate-42"},
    )
    assert rotated.status_code == 200
    event = (await post_event(admin, tenant="t1")).json()["data"]  # not a change: no entry
    delivery = f"{on_hook}/deliveries/{event['deliveries'][0]['id']}"
    assert (await admin.post(f"{delivery}/retry")).status_code == 202
    assert (await admin.post(f"{delivery}/cancel")).status_code == 200
    assert (await admin.post(f"/v1/events/{event['id']}/retry")).status_code == 202
    since = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    assert (await tenant.post(f"{on_hook}/recover", json={"since": since})).status_code == 202
    assert (await admin.delete(f"/v1/tokens/{made['data']['id']}")).status_code == 200

    entries = await trail(admin)
    expected = [
        ("token.create", ADMIN, made["data"]["id"], "t1"),
        ("webhook.create", tenant_actor, hook["id"], "t1"),
        ("webhook.update", tenant_actor, hook["id"], "t1"),
        ("webhook.disable", tenant_actor, hook["id"], "t1"),
        ("webhook.enable", ADMIN, hook["id"], "t1"),
        ("webhook.secret.reveal", tenant_actor, hook["id"], "t1"),
        ("webhook.secret.rotate", tenant_actor, hook["id"], "t1"),
        ("delivery.retry", ADMIN, event["deliveries"][0]["id"], "t1"),
        ("delivery.cancel", ADMIN, event["deliveries"][0]["id"], "t1"),
        ("event.retry", ADMIN, event["id"], "t1"),
        ("webhook.recover", tenant_actor, hook["id"], "t1"),
        ("token.revoke", ADMIN, made["data"]["id"], "t1"),
    ]
    assert len(entries) == 12
    for found, (action, actor, object_id, tenant_id) in zip(entries, expected, strict=True):
        assert found["action"] == action, found
        assert found["actor"] == actor, found
        assert found["object_id"] == object_id, found
        assert found["tenant_id"] == tenant_id, found
        assert found["id"].startswith("aud_") and found["at"].endswith("Z")
    assert entries[6]["request_id"] == "rotate-42"
    generated = [e["request_id"] for e in entries if e is not entries[6]]
    assert all(generated) and len(set(generated)) == 11
    # Nothing secret is in the trail: no token, no secret, only ids.
    text = str(entries)
    assert made["data"]["token"] not in text and hook["secret"] not in text
    assert rotated.json()["data"]["secret"] not in text


async def test_a_recovery_by_filter_is_recorded_as_the_recovery_it_started(
    admin: httpx.AsyncClient, make_client: ClientFactory
) -> None:
    made = (await admin.post("/v1/tokens", json={"role": "tenant", "tenant_id": "t1"})).json()
    tenant = await make_client(token=made["data"]["token"])
    mine = await tenant.post("/v1/recoveries", json={"event_type": "post.failed"})
    everyone = await admin.post("/v1/recoveries", json={})
    assert mine.status_code == everyone.status_code == 202, (mine.text, everyone.text)

    entries = [e for e in await trail(admin) if e["action"] == "deliveries.recover"]
    tenant_actor = {"token_id": made["data"]["id"], "role": "tenant"}
    assert [(e["actor"], e["object_id"], e["tenant_id"]) for e in entries] == [
        (tenant_actor, mine.json()["data"]["id"], "t1"),
        (ADMIN, everyone.json()["data"]["id"], None),
    ]


async def test_the_trail_filters_by_tenant_action_and_time(
    admin: httpx.AsyncClient,
) -> None:
    first = await webhook(admin, "https://a.example.com/", tenant="t1")
    # Entries are stamped to the millisecond: keep `middle` in a millisecond of its own.
    await asyncio.sleep(0.005)
    middle = datetime.now(UTC)
    await asyncio.sleep(0.005)
    second = await webhook(admin, "https://b.example.com/", tenant="t2")
    await admin.delete(f"/v1/webhooks/{second['id']}")

    assert [e["object_id"] for e in await trail(admin, tenant_id="t1")] == [first["id"]]
    deleted = await trail(admin, action="webhook.delete")
    assert [(e["object_id"], e["tenant_id"]) for e in deleted] == [(second["id"], "t2")]
    after = await trail(admin, since=middle.isoformat())
    assert [e["action"] for e in after] == ["webhook.create", "webhook.delete"]
    before = await trail(admin, until=middle.isoformat())
    assert [e["object_id"] for e in before] == [first["id"]]
    bad = await admin.get("/v1/audit-log", params={"since": "yesterday"})
    assert bad.status_code == 422 and "since" in bad.json()["errors"]


async def test_a_tenant_sees_only_its_own_tenants_entries(
    admin: httpx.AsyncClient, make_client: ClientFactory, token_for: Any
) -> None:
    mine = await make_client(token=await token_for("tenant", "t1"))
    theirs = await make_client(token=await token_for("tenant", "t2"))
    await webhook(mine, "https://a.example.com/", tenant="t1")
    other = await webhook(theirs, "https://b.example.com/", tenant="t2")
    await theirs.get(f"/v1/webhooks/{other['id']}/secret")

    seen = await trail(mine)
    # Its own token's issue is an entry of its tenant too.
    assert [e["action"] for e in seen] == ["token.create", "webhook.create"]
    assert all(e["tenant_id"] == "t1" for e in seen)
    assert other["id"] not in str(seen)
    asked = await mine.get("/v1/audit-log", params={"tenant_id": "t2"})
    assert asked.status_code == 404
    ingest = await make_client(token=await token_for("ingest"))
    assert (await ingest.get("/v1/audit-log")).status_code == 403
    # The admin sees both tenants, and the token issues besides.
    actions = [e["action"] for e in await trail(admin)]
    assert actions.count("webhook.create") == 2 and actions.count("token.create") == 3


async def test_an_automatic_disable_is_recorded_as_relay_itself(
    admin: httpx.AsyncClient, workers: Workers
) -> None:
    await workers()
    async with Receiver() as rx:
        rx.answer(Reply(410))
        hook = await webhook(admin, rx.url("/hook"))
        event = (await post_event(admin)).json()["data"]
        await wait_status(admin, hook["id"], event["deliveries"][0]["id"], "failed")
    # The worker records the disable once it has settled the delivery: wait for the entry.
    deadline = time.monotonic() + 20
    while not (entries := await trail(admin, action="webhook.auto_disable")):
        assert time.monotonic() < deadline, "no webhook.auto_disable entry"
        await asyncio.sleep(0.1)
    assert len(entries) == 1
    [found] = entries
    assert found["actor"] == {"token_id": "system", "role": "system"}
    assert found["object_id"] == hook["id"] and found["tenant_id"] == "space_42"
    assert found["request_id"] is None
