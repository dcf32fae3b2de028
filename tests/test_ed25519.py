"""Ed25519 webhooks (Standard Webhooks `v1a`): receivers verify with nothing but a public key.

The verifier below is written from the Standard Webhooks specification's text, with the
`cryptography` package's Ed25519, not with relay's signer: the signed content is
`{webhook-id}.{webhook-timestamp}.{body}`, each `v1a,` entry of `webhook-signature` is the
base64 Ed25519 signature of it, and a `whpk_` key is the base64 of the raw 32-byte public key.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import httpx
import pytest
import redis.asyncio
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from standardwebhooks.webhooks import Webhook as HmacVerifier
from standardwebhooks.webhooks import WebhookVerificationError

from tests.flows import Workers, post_event, wait_status, webhook
from tests.receivers import Receiver, Request

TOLERANCE_SECONDS = 5 * 60


def verify_v1a(public_key: str, request: Request) -> None:
    """Accept the request if one `v1a` signature verifies under `public_key`; else raise."""
    assert public_key.startswith("whpk_")
    key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key.removeprefix("whpk_")))
    msg_id = request.headers["webhook-id"]
    timestamp = request.headers["webhook-timestamp"]
    assert abs(int(timestamp) - time.time()) < TOLERANCE_SECONDS
    signed = f"{msg_id}.{timestamp}.".encode() + request.body
    for entry in request.headers["webhook-signature"].split(" "):
        version, _, value = entry.partition(",")
        if version != "v1a":
            continue
        try:
            key.verify(base64.b64decode(value), signed)
            return
        except InvalidSignature:
            continue
    raise AssertionError(f"no v1a signature verifies under {public_key}")


def versions(request: Request) -> list[str]:
    return [entry.split(",")[0] for entry in request.headers["webhook-signature"].split(" ")]


async def ed25519_hook(admin: httpx.AsyncClient, url: str) -> dict[str, Any]:
    return await webhook(admin, url, signature_scheme="ed25519")


async def test_deliveries_verify_with_the_public_key_alone(
    admin: httpx.AsyncClient, workers: Workers
) -> None:
    await workers()
    async with Receiver() as rx:
        hook = await ed25519_hook(admin, rx.url("/hook"))
        public = hook["secret"]
        assert public.startswith("whpk_") and hook["signature_scheme"] == "ed25519"
        shown = (await admin.get(f"/v1/webhooks/{hook['id']}/secret")).json()["data"]
        assert shown == {"secret": public, "previous": []}
        event = (await post_event(admin)).json()["data"]
        await wait_status(admin, hook["id"], event["deliveries"][0]["id"], "delivered")
        [request] = await rx.wait_for(1)
    assert versions(request) == ["v1a"]
    verify_v1a(public, request)
    # The public key is no HMAC secret: read as one, it verifies nothing.
    as_hmac = "whsec_" + public.removeprefix("whpk_")
    with pytest.raises(WebhookVerificationError):
        HmacVerifier(as_hmac).verify(request.body, request.headers)


async def test_test_sends_are_signed_v1a(admin: httpx.AsyncClient) -> None:
    async with Receiver() as rx:
        hook = await ed25519_hook(admin, rx.url("/hook"))
        answer = await admin.post("/v1/webhooks/test", json={"webhook_id": hook["id"]})
        assert answer.status_code == 200 and answer.json()["data"]["status_code"] == 200
        [request] = await rx.wait_for(1)
    verify_v1a(hook["secret"], request)
    tampered = Request(request.method, request.path, request.headers, request.body + b" ")
    with pytest.raises(AssertionError):
        verify_v1a(hook["secret"], tampered)


async def test_rotation_grace_signs_with_every_live_key(
    admin: httpx.AsyncClient, workers: Workers
) -> None:
    await workers()
    async with Receiver() as rx:
        hook = await ed25519_hook(admin, rx.url("/hook"))
        rotated = await admin.post(
            f"/v1/webhooks/{hook['id']}/rotate-secret", json={"grace_seconds": 3600}
        )
        new = rotated.json()["data"]["secret"]
        assert new.startswith("whpk_") and new != hook["secret"]
        event = (await post_event(admin)).json()["data"]
        await wait_status(admin, hook["id"], event["deliveries"][0]["id"], "delivered")
        [in_grace] = await rx.wait_for(1)
        await admin.post(f"/v1/webhooks/{hook['id']}/rotate-secret", json={"grace_seconds": 0})
        newest = (await admin.get(f"/v1/webhooks/{hook['id']}/secret")).json()["data"]["secret"]
        await admin.post("/v1/webhooks/test", json={"webhook_id": hook["id"]})
        after = (await rx.wait_for(2))[1]
    assert versions(in_grace) == ["v1a", "v1a"]
    verify_v1a(new, in_grace)
    verify_v1a(hook["secret"], in_grace)
    assert versions(after) == ["v1a"]
    verify_v1a(newest, after)
    for ended in (new, hook["secret"]):
        with pytest.raises(AssertionError):
            verify_v1a(ended, after)


async def test_switching_scheme_keeps_the_old_secret_signing_through_a_grace(
    admin: httpx.AsyncClient,
) -> None:
    async with Receiver() as rx:
        hook = await webhook(admin, rx.url("/hook"))
        switched = await admin.patch(
            f"/v1/webhooks/{hook['id']}", json={"signature_scheme": "ed25519"}
        )
        assert switched.status_code == 200
        assert switched.json()["data"]["signature_scheme"] == "ed25519"
        shown = (await admin.get(f"/v1/webhooks/{hook['id']}/secret")).json()["data"]
        assert shown["secret"].startswith("whpk_") and len(shown["previous"]) == 1
        await admin.post("/v1/webhooks/test", json={"webhook_id": hook["id"]})
        [request] = await rx.wait_for(1)
    assert versions(request) == ["v1a", "v1"]
    verify_v1a(shown["secret"], request)
    HmacVerifier(hook["secret"]).verify(request.body, request.headers)


async def test_an_imported_secret_is_for_hmac_webhooks_only(admin: httpx.AsyncClient) -> None:
    body = {
        "url": "https://a.example.com/",
        "tenant_id": "space_42",
        "signature_scheme": "ed25519",
        "secret": "whsec_" + base64.b64encode(b"k" * 32).decode(),
    }
    refused = await admin.post("/v1/webhooks", json=body)
    assert refused.status_code == 422 and "secret" in refused.json()["errors"]
    bad = await admin.post("/v1/webhooks", json={**body, "secret": None, "signature_scheme": "x"})
    assert bad.status_code == 422 and "signature_scheme" in bad.json()["errors"]


async def test_private_keys_are_stored_only_encrypted(
    admin: httpx.AsyncClient, redis_client: redis.asyncio.Redis
) -> None:
    hook = await ed25519_hook(admin, "https://a.example.com/")
    await admin.post(f"/v1/webhooks/{hook['id']}/rotate-secret", json={"grace_seconds": 60})
    public = base64.b64decode(hook["secret"].removeprefix("whpk_"))
    async for key in redis_client.scan_iter("*"):
        value = await redis_client.dump(key)
        assert value is not None
        for needle in (b"whsk_", b"whpk_", public, base64.b64encode(public)):
            assert needle not in value and needle not in key, key
