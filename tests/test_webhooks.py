"""Webhook endpoints: registry, tenant scoping, secrets at rest, rotation, test sends."""

from __future__ import annotations

import asyncio
import base64
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
import redis.asyncio
from standardwebhooks.webhooks import Webhook as Verifier
from standardwebhooks.webhooks import WebhookVerificationError

from relay.secrets import generate_master_key
from relay.signing import generate_secret
from relay.store import codec, keys
from tests.fixtures import ClientFactory
from tests.flows import Workers, post_event, wait_status, webhook
from tests.receivers import Receiver, Reply, closed_port
from tests.support import RedisServer, relay_env, run_relay

TokenFor = Callable[..., Awaitable[str]]


async def create(client: httpx.AsyncClient, url: str, **fields: Any) -> dict[str, Any]:
    body = {"url": url, "tenant_id": "space_42", **fields}
    response = await client.post("/v1/webhooks", json=body)
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


def verify(secret: str, request: Any) -> None:
    Verifier(secret).verify(request.body, request.headers)


async def test_register_read_change_delete(admin: httpx.AsyncClient) -> None:
    made = await create(
        admin,
        "https://hooks.example.com/relay",
        events=["post.published"],
        description="publisher",
        headers={"X-Custom": "v"},
    )
    assert made["id"].startswith("wh_") and made["secret"].startswith("whsec_")
    for field in (
        "tenant_id",
        "url",
        "events",
        "description",
        "headers",
        "enabled",
        "disabled_reason",
        "rate_limit_per_second",
        "created_at",
        "updated_at",
    ):
        assert field in made
    assert made["enabled"] is True and made["disabled_reason"] is None

    got = (await admin.get(f"/v1/webhooks/{made['id']}")).json()["data"]
    assert "secret" not in got and got["headers"] == {"X-Custom": "[redacted]"}

    patched = await admin.patch(
        f"/v1/webhooks/{made['id']}", json={"events": ["*"], "enabled": False}
    )
    assert patched.status_code == 200
    data = patched.json()["data"]
    assert data["events"] == ["*"] and data["enabled"] is False
    assert data["description"] == "publisher" and "secret" not in data

    listed = (await admin.get("/v1/webhooks")).json()
    assert [w["id"] for w in listed["data"]] == [made["id"]]
    assert all("secret" not in w for w in listed["data"])

    assert (await admin.delete(f"/v1/webhooks/{made['id']}")).status_code == 200
    assert (await admin.get(f"/v1/webhooks/{made['id']}")).status_code == 404
    assert (await admin.get("/v1/webhooks")).json()["data"] == []


async def test_events_default_to_everything(admin: httpx.AsyncClient) -> None:
    assert (await create(admin, "https://a.example.com/"))["events"] == ["*"]


async def test_list_filters_by_tenant_and_pages(admin: httpx.AsyncClient) -> None:
    ours = [(await create(admin, f"https://a.example.com/{i}"))["id"] for i in range(3)]
    await create(admin, "https://b.example.com/", tenant_id="other")
    first = (await admin.get("/v1/webhooks", params={"tenant_id": "space_42", "limit": 2})).json()
    second = (
        await admin.get(
            "/v1/webhooks", params={"tenant_id": "space_42", "cursor": first["next_cursor"]}
        )
    ).json()
    assert [w["id"] for w in first["data"] + second["data"]] == ours[::-1]
    assert second["next_cursor"] is None


async def test_admin_must_name_a_tenant(admin: httpx.AsyncClient) -> None:
    response = await admin.post("/v1/webhooks", json={"url": "https://a.example.com/"})
    assert response.status_code == 422
    assert "tenant_id" in response.json()["errors"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": "ftp://a.example.com/"}, "url"),
        ({"url": "https://a.example.com/", "events": ["post.deleted"]}, "events.0"),
        ({"url": "https://a.example.com/", "headers": {"X-A": "1\r\nX-B: 2"}}, "headers.X-A"),
        ({"url": "https://a.example.com/", "headers": {"Webhook-Id": "x"}}, "headers.Webhook-Id"),
        ({"url": "https://a.example.com/", "rate_limit_per_second": 0}, "rate_limit_per_second"),
        ({"url": "https://a.example.com/", "secret": "whsec_short"}, "secret"),
    ],
)
async def test_bad_webhooks_are_422_naming_the_field(
    admin: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    response = await admin.post("/v1/webhooks", json={"tenant_id": "t", **body})
    assert response.status_code == 422
    assert field in response.json()["errors"]
    assert "whsec_short" not in response.text


async def test_tenant_token_is_pinned_to_its_tenant(
    make_client: ClientFactory, admin: httpx.AsyncClient, token_for: TokenFor
) -> None:
    tenant = await make_client(token=await token_for("tenant", "space_42"))
    made = await tenant.post("/v1/webhooks", json={"url": "https://a.example.com/"})
    assert made.status_code == 201 and made.json()["data"]["tenant_id"] == "space_42"
    other = await create(admin, "https://b.example.com/", tenant_id="space_7")
    assert [w["tenant_id"] for w in (await tenant.get("/v1/webhooks")).json()["data"]] == [
        "space_42"
    ]
    assert (await tenant.get("/v1/webhooks", params={"tenant_id": "space_7"})).status_code == 404
    foreign = await tenant.post(
        "/v1/webhooks", json={"url": "https://a.example.com/", "tenant_id": "space_7"}
    )
    assert foreign.status_code == 404
    assert other["id"] not in foreign.text


async def test_another_tenants_webhook_is_404_on_every_route(
    make_client: ClientFactory, admin: httpx.AsyncClient, token_for: TokenFor
) -> None:
    theirs = (await create(admin, "https://b.example.com/", tenant_id="space_7"))["id"]
    tenant = await make_client(token=await token_for("tenant", "space_42"))
    calls = [
        ("GET", f"/v1/webhooks/{theirs}", None),
        ("PATCH", f"/v1/webhooks/{theirs}", {"description": "mine now"}),
        ("DELETE", f"/v1/webhooks/{theirs}", None),
        ("GET", f"/v1/webhooks/{theirs}/secret", None),
        ("POST", f"/v1/webhooks/{theirs}/rotate-secret", {"grace_seconds": 0}),
        ("POST", "/v1/webhooks/test", {"webhook_id": theirs, "type": "post.published"}),
    ]
    for method, path, body in calls:
        response = await tenant.request(method, path, json=body)
        assert response.status_code == 404, (method, path, response.text)
        assert response.json()["code"] == "not_found"
    untouched = (await admin.get(f"/v1/webhooks/{theirs}")).json()["data"]
    assert untouched["description"] == ""


async def test_ingest_tokens_cannot_touch_webhooks(
    make_client: ClientFactory, token_for: TokenFor
) -> None:
    ingest = await make_client(token=await token_for("ingest"))
    assert (await ingest.get("/v1/webhooks")).status_code == 403
    assert (await ingest.get("/v1/event-types")).status_code == 200


async def test_event_types_are_listed_with_schemas(admin: httpx.AsyncClient) -> None:
    listed = (await admin.get("/v1/event-types")).json()["data"]
    by_name = {t["name"]: t for t in listed}
    assert set(by_name) == {"post.published", "post.failed", "media.uploaded"}
    assert {"media_id", "url", "mime"} <= set(by_name["media.uploaded"]["schema"]["required"])


async def test_secret_is_revealed_to_its_owner(admin: httpx.AsyncClient) -> None:
    made = await create(admin, "https://a.example.com/")
    shown = (await admin.get(f"/v1/webhooks/{made['id']}/secret")).json()["data"]
    assert shown == {"secret": made["secret"], "previous": []}


async def test_imported_secret_signs(admin: httpx.AsyncClient) -> None:
    imported = generate_secret()
    async with Receiver() as rx:
        made = await create(admin, rx.url("/hook"), secret=imported)
        assert made["secret"] == imported
        await admin.post("/v1/webhooks/test", json={"webhook_id": made["id"]})
        [request] = await rx.wait_for(1)
    verify(imported, request)


async def test_no_secret_is_stored_in_plaintext(
    admin: httpx.AsyncClient, redis_client: redis.asyncio.Redis
) -> None:
    secrets: list[str] = []
    for _ in range(3):
        made = await create(admin, "https://a.example.com/")
        secrets.append(made["secret"])
        for _ in range(2):
            rotated = await admin.post(
                f"/v1/webhooks/{made['id']}/rotate-secret", json={"grace_seconds": 3600}
            )
            secrets.append(rotated.json()["data"]["secret"])
    needles = []
    for secret in secrets:
        raw = base64.b64decode(secret.removeprefix("whsec_"))
        needles += [
            secret.encode(),
            secret.removeprefix("whsec_").encode(),
            raw,
            raw.hex().encode(),
        ]
    scanned = 0
    async for key in redis_client.scan_iter("*"):
        value = await redis_client.dump(key)
        assert value is not None
        scanned += 1
        assert not any(n in value or n in key for n in needles), key
    assert scanned >= 3


async def test_test_send_reaches_a_real_receiver_signed(admin: httpx.AsyncClient) -> None:
    async with Receiver() as rx:
        rx.answer(Reply(200, body=b'{"ok": true}'))
        made = await create(admin, rx.url("/hook"), headers={"X-Custom": "v"})
        response = await admin.post(
            "/v1/webhooks/test", json={"webhook_id": made["id"], "type": "media.uploaded"}
        )
        [request] = await rx.wait_for(1)
    assert response.status_code == 200
    result = response.json()["data"]
    assert result["status_code"] == 200 and result["error"] is None
    assert result["response_body"] == '{"ok": true}' and result["duration_ms"] >= 0
    verify(made["secret"], request)
    assert request.headers["webhook-id"] == result["event_id"]
    assert request.headers["x-custom"] == "v"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"].startswith("relay/")
    sent = httpx.Response(200, content=request.body).json()
    assert sent["type"] == "media.uploaded" and sent["tenant_id"] == "space_42"
    assert sent["id"] == result["event_id"] and {"media_id", "url", "mime"} <= sent["data"].keys()
    assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 10


async def test_test_send_reports_failures(admin: httpx.AsyncClient) -> None:
    async with Receiver() as rx:
        rx.answer(Reply(500, body=b"x" * 10_000))
        failing = await create(admin, rx.url("/hook"))
        result = (await admin.post("/v1/webhooks/test", json={"webhook_id": failing["id"]})).json()
    assert result["data"]["status_code"] == 500
    assert len(result["data"]["response_body"]) == 4096

    dead = await create(admin, f"http://127.0.0.1:{closed_port()}/hook")
    result = (await admin.post("/v1/webhooks/test", json={"webhook_id": dead["id"]})).json()
    assert result["data"]["status_code"] is None and result["data"]["error"]


async def test_test_send_of_unknown_webhook_or_type(admin: httpx.AsyncClient) -> None:
    missing = await admin.post("/v1/webhooks/test", json={"webhook_id": "wh_nope"})
    assert missing.status_code == 404
    made = await create(admin, "https://a.example.com/")
    bad = await admin.post("/v1/webhooks/test", json={"webhook_id": made["id"], "type": "x.y"})
    assert bad.status_code == 422 and "type" in bad.json()["errors"]


async def test_test_sends_are_limited_per_tenant_to_10_a_minute(
    admin: httpx.AsyncClient, make_client: ClientFactory, token_for: TokenFor
) -> None:
    tenant = await make_client(token=await token_for("tenant", "space_42"))
    if time.time() % 60 > 55:  # the sends below must fall in one minute
        await asyncio.sleep(60 - time.time() % 60)
    async with Receiver() as rx:
        ours = await create(admin, rx.url("/ours"))
        theirs = await create(admin, rx.url("/theirs"), tenant_id="space_7")
        sends = [
            await admin.post("/v1/webhooks/test", json={"webhook_id": ours["id"]})
            for _ in range(10)
        ]
        # Another token of the same tenant shares its budget; another tenant has its own.
        limited = await tenant.post("/v1/webhooks/test", json={"webhook_id": ours["id"]})
        other = await admin.post("/v1/webhooks/test", json={"webhook_id": theirs["id"]})
        await asyncio.sleep(0.1)  # room for a late request, if one were coming

    assert [r.status_code for r in sends] == [200] * 10
    assert limited.status_code == 429
    assert limited.headers["content-type"] == "application/problem+json"
    problem = limited.json()
    assert problem["code"] == "rate_limited" and "10 a minute" in problem["detail"]
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    assert other.status_code == 200
    assert len(rx.requests_to("/ours")) == 10  # the refused one never left relay


async def test_the_test_send_limit_is_configurable(make_client: ClientFactory) -> None:
    admin = await make_client(test_sends_per_minute=2)
    if time.time() % 60 > 55:
        await asyncio.sleep(60 - time.time() % 60)
    made = await create(admin, f"http://127.0.0.1:{closed_port()}/hook")
    statuses = [
        (await admin.post("/v1/webhooks/test", json={"webhook_id": made["id"]})).status_code
        for _ in range(3)
    ]
    assert statuses == [200, 200, 429]


async def test_rotation_signs_with_both_secrets_during_grace(admin: httpx.AsyncClient) -> None:
    async with Receiver() as rx:
        made = await create(admin, rx.url("/hook"))
        old = made["secret"]
        rotated = await admin.post(
            f"/v1/webhooks/{made['id']}/rotate-secret", json={"grace_seconds": 3600}
        )
        assert rotated.status_code == 200
        new = rotated.json()["data"]["secret"]
        expires = rotated.json()["data"]["previous_expires_at"]
        assert new != old and expires.endswith("Z")
        assert (await admin.get(f"/v1/webhooks/{made['id']}/secret")).json()["data"][
            "secret"
        ] == new
        await admin.post("/v1/webhooks/test", json={"webhook_id": made["id"]})
        [request] = await rx.wait_for(1)
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    verify(old, request)
    verify(new, request)


async def test_rotation_without_grace_drops_the_old_secret(admin: httpx.AsyncClient) -> None:
    async with Receiver() as rx:
        made = await create(admin, rx.url("/hook"))
        rotated = await admin.post(
            f"/v1/webhooks/{made['id']}/rotate-secret", json={"grace_seconds": 0}
        )
        new = rotated.json()["data"]["secret"]
        await admin.post("/v1/webhooks/test", json={"webhook_id": made["id"]})
        [request] = await rx.wait_for(1)
    assert len(request.headers["webhook-signature"].split(" ")) == 1
    verify(new, request)
    with pytest.raises(WebhookVerificationError):
        verify(made["secret"], request)


async def test_rotation_default_grace_is_a_day_and_bounded(admin: httpx.AsyncClient) -> None:
    made = await create(admin, "https://a.example.com/")
    rotated = await admin.post(f"/v1/webhooks/{made['id']}/rotate-secret")
    assert rotated.status_code == 200
    from datetime import datetime

    expires = datetime.fromisoformat(rotated.json()["data"]["previous_expires_at"])
    assert 86_300 < expires.timestamp() - time.time() <= 86_400
    too_long = await admin.post(
        f"/v1/webhooks/{made['id']}/rotate-secret", json={"grace_seconds": 10**9}
    )
    assert too_long.status_code == 422


@pytest.mark.system
async def test_keys_reencrypt_moves_secrets_to_the_new_master_key(
    redis_server: RedisServer, make_client: ClientFactory, master_key: str
) -> None:
    old_only = await make_client()
    made = await create(old_only, "https://a.example.com/")
    new_key = generate_master_key()
    result = await run_relay(
        ["keys", "reencrypt"],
        relay_env(redis_server.url, RELAY_SECRET_KEYS=f"{new_key},{master_key}"),
    )
    assert result.returncode == 0, result.stderr
    assert "1 of 1" in result.stdout.decode()
    new_only = await make_client(secret_keys=new_key)
    shown = await new_only.get(f"/v1/webhooks/{made['id']}/secret")
    assert shown.json()["data"]["secret"] == made["secret"]


async def _sent_headers(client: httpx.AsyncClient, rx: Receiver, webhook_id: str) -> dict[str, str]:
    """The headers a receiver gets from a test send (after any it got before)."""
    before = len(rx.requests)
    sent = await client.post("/v1/webhooks/test", json={"webhook_id": webhook_id})
    assert sent.status_code == 200, sent.text
    return (await rx.wait_for(before + 1))[-1].headers


async def test_custom_header_values_are_never_shown_and_survive_a_read_edit_write(
    admin: httpx.AsyncClient,
) -> None:
    async with Receiver() as rx:
        made = await create(
            admin, rx.url("/hook"), headers={"Authorization": "Bearer s3cr3t-1", "X-Team": "ops"}
        )
        hidden = {"Authorization": "[redacted]", "X-Team": "[redacted]"}
        assert made["headers"] == hidden
        got = (await admin.get(f"/v1/webhooks/{made['id']}")).json()["data"]
        assert got["headers"] == hidden
        listed = (await admin.get("/v1/webhooks", params={"tenant_id": "space_42"})).json()
        assert "s3cr3t" not in str(listed)

        # What was read goes back with one header changed: the other keeps its value.
        edited = {**got["headers"], "X-Team": "payments"}
        patched = await admin.patch(f"/v1/webhooks/{made['id']}", json={"headers": edited})
        assert patched.status_code == 200, patched.text
        assert patched.json()["data"]["headers"] == hidden
        sent = await _sent_headers(admin, rx, made["id"])
        assert (sent["authorization"], sent["x-team"]) == ("Bearer s3cr3t-1", "payments")
        tests = (await admin.get(f"/v1/webhooks/{made['id']}/tests")).json()["data"]
        assert tests[0]["request_headers"]["Authorization"] == "[redacted]"

        # The placeholder cannot stand for a header the webhook does not have.
        unknown = await admin.patch(
            f"/v1/webhooks/{made['id']}", json={"headers": {"X-New": "[redacted]"}}
        )
        assert unknown.status_code == 422
        assert set(unknown.json()["errors"]) == {"headers.X-New"}
        refused = await admin.post(
            "/v1/webhooks",
            json={"url": rx.url("/b"), "tenant_id": "space_42", "headers": {"X-A": "[redacted]"}},
        )
        assert refused.status_code == 422 and set(refused.json()["errors"]) == {"headers.X-A"}

        dropped = await admin.patch(f"/v1/webhooks/{made['id']}", json={"headers": {}})
        assert dropped.json()["data"]["headers"] == {}
        assert "authorization" not in await _sent_headers(admin, rx, made["id"])


@pytest.mark.system
async def test_keys_reencrypt_seals_header_values_stored_in_the_clear(
    redis_server: RedisServer,
    redis_client: redis.asyncio.Redis,
    make_client: ClientFactory,
    master_key: str,
) -> None:
    old_only = await make_client()
    async with Receiver() as rx:
        made = await create(old_only, rx.url("/hook"), headers={"X-Api-Key": "k-old-form-77"})
        # The record as a release before header encryption wrote it: the value in the clear.
        key = keys.webhook(made["id"])
        record = codec.loads(await redis_client.get(key))
        assert "k-old-form-77" not in str(record)
        del record["sealed_headers"]
        record["headers"] = {"X-Api-Key": "k-old-form-77"}
        await redis_client.set(key, codec.dumps(record))
        # Still sent, and never shown.
        assert (await _sent_headers(old_only, rx, made["id"]))["x-api-key"] == "k-old-form-77"
        got = (await old_only.get(f"/v1/webhooks/{made['id']}")).json()["data"]
        assert got["headers"] == {"X-Api-Key": "[redacted]"}

        new_key = generate_master_key()
        result = await run_relay(
            ["keys", "reencrypt"],
            relay_env(redis_server.url, RELAY_SECRET_KEYS=f"{new_key},{master_key}"),
        )
        assert result.returncode == 0, result.stderr
        assert "1 of 1" in result.stdout.decode()
        assert b"k-old-form-77" not in await redis_client.get(key)
        new_only = await make_client(secret_keys=new_key)
        assert (await _sent_headers(new_only, rx, made["id"]))["x-api-key"] == "k-old-form-77"


@pytest.mark.system
def test_keys_generate_prints_a_usable_key() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "relay", "keys", "generate"], capture_output=True, timeout=30
    )
    assert len(base64.b64decode(result.stdout.strip(), validate=True)) == 32


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://127.1/hook",
        "http://0x7f000001/hook",
        "http://2130706433/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://localhost:8080/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://10.0.0.5/hook",
    ],
)
async def test_plainly_private_urls_are_refused_unless_allowed(
    make_client: ClientFactory, url: str
) -> None:
    guarded = await make_client(allow_private_targets="false")
    response = await guarded.post("/v1/webhooks", json={"url": url, "tenant_id": "t"})
    assert response.status_code == 422, response.text
    assert "url" in response.json()["errors"]
    made = await create(guarded, "https://hooks.example.com/")
    patched = await guarded.patch(f"/v1/webhooks/{made['id']}", json={"url": url})
    assert patched.status_code == 422
    trusting = await make_client(allow_private_targets="false", allowed_cidrs="10.0.0.0/8")
    allowed = await trusting.post("/v1/webhooks", json={"url": url, "tenant_id": "t"})
    assert allowed.status_code == (201 if url.startswith("http://10.") else 422)


async def test_a_name_resolving_to_loopback_is_blocked_at_send_time(
    make_client: ClientFactory,
) -> None:
    async with Receiver() as rx:
        # Registered while private targets were allowed, sent once they are not: the check
        # at connect time must hold even for a URL that passed registration.
        lenient = await make_client()
        made = await create(lenient, rx.url("/hook", host="localhost"))
        guarded = await make_client(allow_private_targets="false")
        result = (await guarded.post("/v1/webhooks/test", json={"webhook_id": made["id"]})).json()
        await asyncio.sleep(0.2)
    assert result["data"]["status_code"] is None
    assert "blocked" in result["data"]["error"]
    assert rx.connections == 0


async def test_a_tenant_has_at_most_the_configured_number_of_webhooks(
    make_client: ClientFactory,
) -> None:
    client = await make_client(max_webhooks_per_tenant=3)
    made = [await create(client, f"https://a.example.com/{i}") for i in range(3)]
    refused = await client.post(
        "/v1/webhooks", json={"url": "https://a.example.com/4", "tenant_id": "space_42"}
    )
    assert refused.status_code == 422
    assert "RELAY_MAX_WEBHOOKS_PER_TENANT" in refused.json()["detail"]
    assert refused.json()["errors"] == {"tenant_id": ["at most 3 webhooks per tenant"]}
    other = await client.post(
        "/v1/webhooks", json={"url": "https://a.example.com/", "tenant_id": "space_43"}
    )
    assert other.status_code == 201
    assert (await client.delete(f"/v1/webhooks/{made[0]['id']}")).status_code == 200
    await create(client, "https://a.example.com/again")


async def test_concurrent_creates_cannot_pass_the_webhook_cap_together(
    make_client: ClientFactory,
) -> None:
    clients = [await make_client(max_webhooks_per_tenant=5) for _ in range(4)]
    body = {"url": "https://a.example.com/", "tenant_id": "space_42"}
    answers = await asyncio.gather(
        *(clients[i % 4].post("/v1/webhooks", json=body) for i in range(20))
    )
    assert sorted(a.status_code for a in answers) == [201] * 5 + [422] * 15
    listed = await clients[0].get("/v1/webhooks", params={"tenant_id": "space_42"})
    assert len(listed.json()["data"]) == 5


@pytest.mark.parametrize(("capture", "kept"), [("0", 0), ("10", 10), (None, 4096)])
async def test_response_capture_is_bounded_and_can_be_turned_off(
    make_client: ClientFactory, capture: str | None, kept: int
) -> None:
    client = await make_client(
        **({"capture_response_bytes": capture} if capture is not None else {})
    )
    async with Receiver() as rx:
        rx.answer(Reply(200, body=b"y" * 10_000))
        hook = await create(client, rx.url("/hook"))
        result = (await client.post("/v1/webhooks/test", json={"webhook_id": hook["id"]})).json()
    assert result["data"]["status_code"] == 200
    assert result["data"]["response_body"] == "y" * kept


async def test_the_attempt_log_keeps_no_response_when_capture_is_off(
    admin: httpx.AsyncClient, workers: Workers
) -> None:
    await workers(RELAY_CAPTURE_RESPONSE_BYTES="0")
    async with Receiver() as rx:
        rx.answer(Reply(200, body=b"internal data from a private network"))
        hook = await create(admin, rx.url("/hook"))
        event = (await post_event(admin)).json()["data"]
        found = await wait_status(admin, hook["id"], event["deliveries"][0]["id"], "delivered")
    [attempt] = found["attempts"]
    assert attempt["status_code"] == 200 and attempt["response_body"] == ""


async def test_every_change_to_a_webhook_reaches_the_next_event_from_two_api_processes(
    make_client: ClientFactory,
) -> None:
    # Each API process keeps a copy of a tenant's webhooks; a change made through one process
    # must be what the other fans the next event out to.
    one, other = await make_client(), await make_client()

    async def targets() -> list[str]:
        event = (await post_event(other)).json()["data"]
        return [d["webhook_id"] for d in event["deliveries"]]

    assert await targets() == []
    hook = await webhook(one, "https://hooks.example.com/a")
    assert await targets() == [hook["id"]]
    changed = await one.patch(f"/v1/webhooks/{hook['id']}", json={"events": ["media.uploaded"]})
    assert changed.status_code == 200, changed.text
    assert await targets() == []
    await one.patch(f"/v1/webhooks/{hook['id']}", json={"events": ["post.published"]})
    assert await targets() == [hook["id"]]
    assert (await one.delete(f"/v1/webhooks/{hook['id']}")).status_code == 200
    assert await targets() == []
