"""GET /v1/stats: the console's overview figures, from the same counters as /metrics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from relay.stats import quantile_ms
from tests.fixtures import ClientFactory
from tests.flows import Workers, post_event, wait_status, webhook
from tests.receivers import Receiver, Reply


def test_latency_quantiles_interpolate_within_histogram_buckets() -> None:
    # 10 attempts: 4 within 10 ms, 4 more within 50 ms, 2 more within 1 s.
    counters = {
        "attempt_seconds_count": 10,
        "attempt_seconds_bucket:0.005": 0,
        "attempt_seconds_bucket:0.01": 4,
        "attempt_seconds_bucket:0.025": 4,
        "attempt_seconds_bucket:0.05": 8,
        "attempt_seconds_bucket:0.1": 8,
        "attempt_seconds_bucket:0.25": 8,
        "attempt_seconds_bucket:0.5": 8,
        "attempt_seconds_bucket:1.0": 10,
    }
    assert quantile_ms(counters, 0.5) == 31  # a quarter of the way from 25 ms to 50 ms
    assert quantile_ms(counters, 0.95) == 875
    assert quantile_ms({}, 0.5) is None


async def test_stats_count_the_last_hour_of_events_attempts_and_outcomes(
    admin: httpx.AsyncClient, workers: Workers
) -> None:
    async with Receiver() as rx:
        rx.answer(Reply(status=500), "/down")
        up = await webhook(admin, rx.url("/up"), "space_stats")
        down = await webhook(admin, rx.url("/down"), "space_down")
        await workers(RELAY_RETRY_SCHEDULE="0.2")
        sent = await post_event(admin, "space_stats")
        failed = await post_event(admin, "space_down")
        await wait_status(admin, up["id"], sent.json()["data"]["deliveries"][0]["id"], "delivered")
        await wait_status(admin, down["id"], failed.json()["data"]["deliveries"][0]["id"], "failed")

    # The figures come from history: they show once the history writer has what they count.
    deadline = time.monotonic() + 10
    while True:
        response = await admin.get("/v1/stats", params={"window": "hour"})
        assert response.status_code == 200, response.text
        stats = response.json()["data"]
        totals = stats["totals"]
        if sum(totals["deliveries"].values()) == 2 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert totals["events_accepted"] == 2
    assert (totals["attempts"], totals["attempts_succeeded"]) == (3, 1)
    assert totals["success_rate"] == round(1 / 3, 4)
    assert totals["deliveries"] == {"delivered": 1, "failed": 1, "canceled": 0}
    assert 0 < totals["latency_p50_ms"] <= totals["latency_p95_ms"]
    assert len(stats["series"]) == 12 and stats["step_seconds"] == 300
    assert stats["series"][-1]["events_accepted"] == 2
    assert stats["backlog"] == 0
    [troubled] = stats["webhooks"]
    assert (troubled["id"], troubled["enabled"]) == (down["id"], True)
    assert troubled["failing_since"] is not None

    day = (await admin.get("/v1/stats", params={"window": "day"})).json()["data"]
    assert len(day["series"]) == 24 and day["totals"]["events_accepted"] == 2


async def test_stats_are_for_admins_and_tenants_and_name_a_bad_window(
    admin: httpx.AsyncClient, token_for: Callable[..., Awaitable[str]], make_client: ClientFactory
) -> None:
    bad = await admin.get("/v1/stats", params={"window": "week"})
    assert bad.status_code == 422
    assert bad.json()["errors"] == {"window": ["one of hour, day"]}
    bad = await admin.get("/v1/stats", params={"webhook_id": "nope"})
    assert bad.status_code == 422 and "webhook_id" in bad.json()["errors"]
    ingest = await make_client(await token_for("ingest"))
    assert (await ingest.get("/v1/stats")).status_code == 403
    tenant = await make_client(await token_for("tenant", "space_42"))
    assert (await tenant.get("/v1/stats")).status_code == 200


async def _settled(client: httpx.AsyncClient, finished: int, **params: str) -> dict[str, Any]:
    """The stats once history holds `finished` finished deliveries of their scope."""
    deadline = time.monotonic() + 10
    while True:
        response = await client.get("/v1/stats", params=params)
        assert response.status_code == 200, response.text
        stats: dict[str, Any] = response.json()["data"]
        if sum(stats["totals"]["deliveries"].values()) >= finished:
            return stats
        assert time.monotonic() < deadline, stats["totals"]
        await asyncio.sleep(0.1)


async def test_a_tenant_sees_its_own_figures_and_never_another_tenants(
    admin: httpx.AsyncClient,
    workers: Workers,
    token_for: Callable[..., Awaitable[str]],
    make_client: ClientFactory,
) -> None:
    async with Receiver() as rx:
        rx.answer(Reply(status=500), "/down")
        mine = await webhook(admin, rx.url("/mine"), "space_mine")
        theirs = await webhook(admin, rx.url("/down"), "space_theirs")
        await workers(RELAY_RETRY_SCHEDULE="0.2")
        sent = [(await post_event(admin, "space_mine")).json()["data"] for _ in range(2)]
        failed = (await post_event(admin, "space_theirs")).json()["data"]
        for event in sent:
            await wait_status(admin, mine["id"], event["deliveries"][0]["id"], "delivered")
        await wait_status(admin, theirs["id"], failed["deliveries"][0]["id"], "failed")
    await _settled(admin, 3)

    me = await make_client(await token_for("tenant", "space_mine"))
    stats = await _settled(me, 2)
    totals = stats["totals"]
    assert totals["events_accepted"] == 2
    assert (totals["attempts"], totals["attempts_succeeded"]) == (2, 2)
    assert totals["deliveries"] == {"delivered": 2, "failed": 0, "canceled": 0}
    assert sum(p["events_accepted"] for p in stats["series"]) == 2
    # The other tenant's failing webhook is not this tenant's concern, nor visible to it.
    assert stats["webhooks"] == [] and stats["backlog"] == 0

    them = await make_client(await token_for("tenant", "space_theirs"))
    stats = await _settled(them, 1)
    assert stats["totals"]["events_accepted"] == 1
    assert stats["totals"]["deliveries"] == {"delivered": 0, "failed": 1, "canceled": 0}
    assert [w["id"] for w in stats["webhooks"]] == [theirs["id"]]

    # Asking for the other tenant's figures, by tenant or by webhook, finds nothing.
    for params in ({"tenant_id": "space_theirs"}, {"webhook_id": theirs["id"]}):
        response = await me.get("/v1/stats", params=params)
        assert response.status_code == 404, response.text
    # An admin sees everyone's, or narrows to one tenant.
    assert (await _settled(admin, 3))["totals"]["events_accepted"] == 3
    one = await _settled(admin, 1, tenant_id="space_theirs")
    assert one["totals"]["events_accepted"] == 1


async def test_a_tenants_backlog_counts_its_own_deliveries_only(
    admin: httpx.AsyncClient,
    token_for: Callable[..., Awaitable[str]],
    make_client: ClientFactory,
) -> None:
    # No worker runs: every delivery stays pending, so the backlogs stay as posted.
    async with Receiver() as rx:
        mine = await webhook(admin, rx.url("/mine"), "space_mine")
        await webhook(admin, rx.url("/theirs"), "space_theirs")
        for tenant, count in (("space_mine", 2), ("space_theirs", 3)):
            for _ in range(count):
                assert (await post_event(admin, tenant)).status_code == 202
        me = await make_client(await token_for("tenant", "space_mine"))
        assert (await me.get("/v1/stats")).json()["data"]["backlog"] == 2
        hook = (await me.get("/v1/stats", params={"webhook_id": mine["id"]})).json()["data"]
        assert hook["backlog"] == 2
        assert (await admin.get("/v1/stats")).json()["data"]["backlog"] == 5
        theirs = await admin.get("/v1/stats", params={"tenant_id": "space_theirs"})
        assert theirs.json()["data"]["backlog"] == 3


async def test_a_webhooks_own_figures_chart_its_success_rate_and_latency(
    admin: httpx.AsyncClient, workers: Workers
) -> None:
    async with Receiver() as rx:
        rx.answer(Reply(status=500), "/down")
        up = await webhook(admin, rx.url("/up"), "space_pair")
        down = await webhook(admin, rx.url("/down"), "space_pair")
        await workers(RELAY_RETRY_SCHEDULE="0.2")
        event = (await post_event(admin, "space_pair")).json()["data"]
        by_webhook = {d["webhook_id"]: d["id"] for d in event["deliveries"]}
        await wait_status(admin, up["id"], by_webhook[up["id"]], "delivered")
        await wait_status(admin, down["id"], by_webhook[down["id"]], "failed")

    good = await _settled(admin, 1, webhook_id=up["id"])
    bad = await _settled(admin, 1, webhook_id=down["id"])
    assert (good["totals"]["attempts"], good["totals"]["success_rate"]) == (1, 1.0)
    assert good["totals"]["deliveries"]["delivered"] == 1 and good["webhooks"] == []
    assert (bad["totals"]["attempts"], bad["totals"]["success_rate"]) == (2, 0.0)
    assert bad["totals"]["deliveries"]["failed"] == 1
    assert [w["id"] for w in bad["webhooks"]] == [down["id"]]
    # Events belong to a tenant, not to one of its webhooks.
    assert good["totals"]["events_accepted"] == 0
    assert len(good["series"]) == 12
    assert good["series"][-1]["success_rate"] == 1.0
    assert good["series"][-1]["latency_p50_ms"] is not None
