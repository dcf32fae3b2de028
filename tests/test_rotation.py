"""Secret rotation keeps its promise: every secret signs exactly until the time it was promised.

Each delivery here goes through a real worker to a real receiver and is checked with the
`standardwebhooks` library against every secret: the ones promised live must verify it, every
other one must not.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook as Verifier
from standardwebhooks.webhooks import WebhookVerificationError

from tests.flows import Workers, post_event, webhook
from tests.receivers import Receiver, Request

GRACE = {"grace_seconds": 3600}


def assert_signed_by_exactly(request: Request, live: list[str], ended: list[str]) -> None:
    """Every live secret verifies the request; no ended one does."""
    for secret in live:
        Verifier(secret).verify(request.body, request.headers)
    for secret in ended:
        with pytest.raises(WebhookVerificationError):
            Verifier(secret).verify(request.body, request.headers)
    assert len(request.headers["webhook-signature"].split(" ")) == len(live)


async def delivered(admin: httpx.AsyncClient, rx: Receiver) -> Request:
    """Post one event and return the request it arrives as."""
    seen = len(rx.requests)
    assert (await post_event(admin)).status_code == 202
    requests = await rx.wait_for(seen + 1, timeout=15)
    return requests[seen]


async def rotate(admin: httpx.AsyncClient, hook: dict[str, Any], **body: Any) -> httpx.Response:
    return await admin.post(f"/v1/webhooks/{hook['id']}/rotate-secret", json=body)


async def test_three_rotations_within_a_grace_keep_every_promised_secret_signing(
    admin: httpx.AsyncClient, workers: Workers
) -> None:
    await workers()
    async with Receiver() as rx:
        hook = await webhook(admin, rx.url("/hook"))
        secrets = [hook["secret"]]
        promised: list[str] = []
        assert_signed_by_exactly(await delivered(admin, rx), secrets, [])
        for _ in range(3):
            rotated = await rotate(admin, hook, **GRACE)
            assert rotated.status_code == 200, rotated.text
            secrets.insert(0, rotated.json()["data"]["secret"])
            promised.insert(0, rotated.json()["data"]["previous_expires_at"])
            assert_signed_by_exactly(await delivered(admin, rx), secrets, [])
    shown = (await admin.get(f"/v1/webhooks/{hook['id']}/secret")).json()["data"]
    assert shown == {"secret": secrets[0], "previous": [{"expires_at": t} for t in promised]}


async def test_a_rotation_past_the_cap_is_409_saying_when_a_slot_frees(
    admin: httpx.AsyncClient, workers: Workers
) -> None:
    await workers()
    async with Receiver() as rx:
        hook = await webhook(admin, rx.url("/hook"))
        secrets = [hook["secret"]]
        promised = []
        for _ in range(3):
            rotated = (await rotate(admin, hook, **GRACE)).json()["data"]
            secrets.insert(0, rotated["secret"])
            promised.append(rotated["previous_expires_at"])
        refused = await admin.post(
            f"/v1/webhooks/{hook['id']}/rotate-secret",
            json=GRACE,
            headers={"idempotency-key": "fourth"},
        )
        assert refused.status_code == 409
        assert refused.headers["content-type"] == "application/problem+json"
        problem = refused.json()
        assert problem["code"] == "conflict"
        assert "At most 4 secrets" in problem["detail"]
        assert f"stops signing at {promised[0]}" in problem["detail"]
        # Nothing changed: the same four secrets sign the next delivery.
        assert_signed_by_exactly(await delivered(admin, rx), secrets, [])
        shown = (await admin.get(f"/v1/webhooks/{hook['id']}/secret")).json()["data"]
        assert shown["secret"] == secrets[0] and len(shown["previous"]) == 3


async def test_grace_zero_ends_every_previous_secret_now(
    admin: httpx.AsyncClient, workers: Workers
) -> None:
    await workers()
    async with Receiver() as rx:
        hook = await webhook(admin, rx.url("/hook"))
        older = [hook["secret"]]
        for _ in range(2):
            older.append((await rotate(admin, hook, **GRACE)).json()["data"]["secret"])
        before = datetime.now(UTC)
        rotated = await rotate(admin, hook, grace_seconds=0)
        assert rotated.status_code == 200
        new = rotated.json()["data"]["secret"]
        ended_at = datetime.fromisoformat(rotated.json()["data"]["previous_expires_at"])
        assert before.replace(microsecond=before.microsecond // 1000 * 1000) <= ended_at
        assert ended_at <= datetime.now(UTC)
        assert_signed_by_exactly(await delivered(admin, rx), [new], older)
    shown = (await admin.get(f"/v1/webhooks/{hook['id']}/secret")).json()["data"]
    assert shown == {"secret": new, "previous": []}


async def test_a_previous_secret_stops_signing_at_its_promised_time(
    admin: httpx.AsyncClient, workers: Workers
) -> None:
    await workers()
    async with Receiver() as rx:
        hook = await webhook(admin, rx.url("/hook"))
        old = hook["secret"]
        rotated = (await rotate(admin, hook, grace_seconds=2)).json()["data"]
        ends = datetime.fromisoformat(rotated["previous_expires_at"])
        first = await delivered(admin, rx)
        # The stamp is the signing moment's whole second: signed before the end for certain
        # only if that second ended by then.
        if datetime.fromtimestamp(int(first.headers["webhook-timestamp"]) + 1, UTC) <= ends:
            assert_signed_by_exactly(first, [rotated["secret"], old], [])
        await asyncio.sleep((ends - datetime.now(UTC)).total_seconds() + 0.05)
        assert_signed_by_exactly(await delivered(admin, rx), [rotated["secret"]], [old])
    shown = (await admin.get(f"/v1/webhooks/{hook['id']}/secret")).json()["data"]
    assert shown["previous"] == []
