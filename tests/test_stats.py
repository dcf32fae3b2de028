"""GET /v1/stats: the console's overview figures, from the same counters as /metrics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import httpx

from relay.stats import quantile_ms
from tests.conftest import ClientFactory
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


async def test_stats_are_for_admins_and_name_a_bad_window(
    admin: httpx.AsyncClient, token_for: Callable[..., Awaitable[str]], make_client: ClientFactory
) -> None:
    bad = await admin.get("/v1/stats", params={"window": "week"})
    assert bad.status_code == 422
    assert bad.json()["errors"] == {"window": ["one of hour, day"]}
    tenant = await make_client(await token_for("tenant", "space_42"))
    assert (await tenant.get("/v1/stats")).status_code == 403
