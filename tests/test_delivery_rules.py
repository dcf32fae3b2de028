"""Delivery rules as a user sees them: retries, failures, operator actions, ingest and lists.

Real API (in process), real `relay worker` subprocesses (schedule 0.3,0.6,1.2 s, timeout 2 s)
and real loopback receivers. Everything is asserted through the API and at the receiver.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
from prometheus_client.parser import text_string_to_metric_families
from standardwebhooks.webhooks import Webhook as Verifier

from tests.fixtures import ClientFactory
from tests.flows import Workers, post_event, wait_status, webhook
from tests.receivers import Receiver, Reply

Json = dict[str, Any]
# Where the schedule itself is not under test: the same 4 attempts, over in a moment.
QUICK = "0.05,0.05,0.05"
MEDIA = {"media_id": "m_1", "url": "https://cdn.example.com/m_1.png", "mime": "image/png"}


# -- helpers -------------------------------------------------------------------------------


def seconds(stamp: str) -> float:
    """Unix seconds of an RFC 3339 timestamp from the API."""
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def problem(response: httpx.Response, status: int, code: str) -> Json:
    """Assert an RFC 9457 problem with this status and code; return its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: Json = response.json()
    assert body["status"] == status and body["code"] == code, body
    return body


async def accepted(client: httpx.AsyncClient, tenant: str = "space_42", **fields: Any) -> Json:
    """Post an event that must be accepted (202); its data."""
    response = await post_event(client, tenant, **fields)
    assert response.status_code == 202, response.text
    data: Json = response.json()["data"]
    return data


def delivery_to(event: Json, hook: Json) -> str:
    """The id of the event's delivery to `hook`."""
    [found] = [str(d["id"]) for d in event["deliveries"] if d["webhook_id"] == hook["id"]]
    return found


async def delivery(client: httpx.AsyncClient, hook: Json, delivery_id: str) -> Json:
    response = await client.get(f"/v1/webhooks/{hook['id']}/deliveries/{delivery_id}")
    assert response.status_code == 200, response.text
    data: Json = response.json()["data"]
    return data


async def poll(
    fetch: Callable[[], Awaitable[Json]], done: Callable[[Json], bool], timeout: float = 15
) -> Json:
    """Fetch until `done` holds; fail with the last value on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = await fetch()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {value}")
        await asyncio.sleep(0.02)


async def listing(client: httpx.AsyncClient, path: str, **params: Any) -> Json:
    response = await client.get(path, params=params)
    assert response.status_code == 200, response.text
    body: Json = response.json()
    return body


async def walk(client: httpx.AsyncClient, path: str, **params: Any) -> list[list[Json]]:
    """Every page of a list, following next_cursor until it is null."""
    pages: list[list[Json]] = []
    cursor: str | None = None
    while True:
        body = await listing(client, path, **params, **({"cursor": cursor} if cursor else {}))
        pages.append(body["data"])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages
        assert len(pages) < 50, "pagination does not end"


def recover_body(since: datetime, until: datetime) -> Json:
    return {"since": rfc3339(since), "until": rfc3339(until)}


# -- retries and failures ------------------------------------------------------------------


async def test_a_flaky_receiver_gets_it_on_the_third_attempt_with_growing_gaps(
    admin: httpx.AsyncClient, workers: Workers
) -> None:
    await workers()
    async with Receiver() as rx:
        rx.fail(2)
        hook = await webhook(admin, rx.url("/flaky"))
        event = await accepted(admin)
        done = await wait_status(admin, hook["id"], delivery_to(event, hook), "delivered")
        await asyncio.sleep(0.3)
        received = list(rx.requests)
    assert done["attempt_count"] == 3 and done["last_status_code"] == 200
    assert done["next_attempt_at"] is None and done["delivered_at"]
    attempts = done["attempts"]
    assert [a["number"] for a in attempts] == [1, 2, 3]
    assert [a["status_code"] for a in attempts] == [500, 500, 200]
    starts = [seconds(a["started_at"]) for a in attempts]
    first_gap, second_gap = starts[1] - starts[0], starts[2] - starts[1]
    # 0.3 s then 0.6 s, each ±20 %: the waits grow along the schedule.
    assert first_gap >= 0.2 and second_gap >= 0.4, (first_gap, second_gap)
    assert second_gap > first_gap, (first_gap, second_gap)
    assert first_gap < 1.5 and second_gap < 2.0, (first_gap, second_gap)

    assert len(received) == 3
    for request, attempt, started in zip(received, attempts, starts, strict=True):
        Verifier(hook["secret"]).verify(request.body, request.headers)
        assert request.headers["webhook-id"] == event["id"]
        stamp = int(request.headers["webhook-timestamp"])
        # Each attempt is signed at its own time, not at the first attempt's or the event's.
        assert stamp == int(attempt["request_headers"]["webhook-timestamp"])
        assert int(started) <= stamp <= started + 1, (stamp, started)
        assert orjson.loads(request.body)["id"] == event["id"]
    assert len({r.body for r in received}) == 1  # the very same body every time


async def test_an_always_failing_receiver_exhausts_the_schedule(
    admin: httpx.AsyncClient, workers: Workers
) -> None:
    await workers()
    async with Receiver() as rx:
        rx.answer(Reply(status=500, body=b"boom"))
        hook = await webhook(admin, rx.url("/down"))
        event = await accepted(admin)
        failed = await wait_status(admin, hook["id"], delivery_to(event, hook), "failed")
        await asyncio.sleep(0.5)
        assert len(rx.requests) == 4  # 3 steps in the schedule + the first attempt, no more
    assert failed["attempt_count"] == 4 and failed["last_status_code"] == 500
    assert failed["next_attempt_at"] is None and failed["delivered_at"] is None
    assert "exhausted" in failed["last_error"].lower()
    assert [a["number"] for a in failed["attempts"]] == [1, 2, 3, 4]
    assert {a["status_code"] for a in failed["attempts"]} == {500}
    assert failed["attempts"][-1]["response_body"] == "boom"


async def test_retry_after_is_honoured_and_capped_at_the_largest_step(
    admin: httpx.AsyncClient, workers: Workers
) -> None:
    await workers()
    async with Receiver() as rx:
        rx.fail(1, Reply(status=429, headers={"retry-after": "1"}))
        rx.fail(1, Reply(status=503, headers={"retry-after": "3600"}))
        hook = await webhook(admin, rx.url("/busy"))
        event = await accepted(admin)
        done = await wait_status(admin, hook["id"], delivery_to(event, hook), "delivered", 15)
    assert [a["status_code"] for a in done["attempts"]] == [429, 503, 200]
    starts = [seconds(a["started_at"]) for a in done["attempts"]]
    # The schedule alone would wait 0.3 s then 0.6 s (±20 %).
    asked = starts[1] - starts[0]
    assert 0.9 <= asked < 2.0, asked  # Retry-After: 1
    capped = starts[2] - starts[1]
    assert 0.9 <= capped < 2.2, capped  # Retry-After: 3600, capped at 1.2 s


async def test_redirects_are_never_followed(admin: httpx.AsyncClient, workers: Workers) -> None:
    await workers(RELAY_RETRY_SCHEDULE=QUICK)
    async with Receiver() as rx:
        for code in (302, 307):
            rx.answer(Reply(status=code, headers={"location": rx.url("/target")}), f"/r{code}")
        rx.answer(Reply(status=200), "/target")
        hooks = {code: await webhook(admin, rx.url(f"/r{code}")) for code in (302, 307)}
        event = await accepted(admin)
        ends = {
            code: await wait_status(admin, hook["id"], delivery_to(event, hook), "failed")
            for code, hook in hooks.items()
        }
        await asyncio.sleep(0.3)
        assert rx.requests_to("/target") == []
        for code in (302, 307):
            assert len(rx.requests_to(f"/r{code}")) == 4
    for code, end in ends.items():
        assert end["attempt_count"] == 4 and end["last_status_code"] == code
        assert [a["status_code"] for a in end["attempts"]] == [code] * 4


async def test_410_gone_fails_at_once_and_disables_the_webhook(
    admin: httpx.AsyncClient, workers: Workers
) -> None:
    await workers()
    async with Receiver() as rx:
        rx.answer(Reply(status=410), "/gone")
        gone = await webhook(admin, rx.url("/gone"))
        fine = await webhook(admin, rx.url("/fine"))
        event = await accepted(admin)
        failed = await wait_status(admin, gone["id"], delivery_to(event, gone), "failed")
        assert failed["attempt_count"] == 1 and failed["last_status_code"] == 410
        assert failed["next_attempt_at"] is None

        async def current() -> Json:
            data: Json = (await admin.get(f"/v1/webhooks/{gone['id']}")).json()["data"]
            return data

        disabled = await poll(current, lambda w: w["enabled"] is False, timeout=5)
        assert disabled["disabled_reason"]
        assert "410" in disabled["disabled_reason"] or "gone" in disabled["disabled_reason"]

        later = await accepted(admin)
        assert [d["webhook_id"] for d in later["deliveries"]] == [fine["id"]]
        await wait_status(admin, fine["id"], delivery_to(later, fine), "delivered")
        await asyncio.sleep(0.6)  # past the first retry step
        assert len(rx.requests_to("/gone")) == 1
        assert len(rx.requests_to("/fine")) == 2
    listed = await listing(admin, f"/v1/webhooks/{gone['id']}/deliveries")
    assert [d["id"] for d in listed["data"]] == [delivery_to(event, gone)]


async def test_a_receiver_slower_than_the_timeout_is_a_failed_attempt(
    admin: httpx.AsyncClient, workers: Workers
) -> None:
    await workers()
    async with Receiver() as rx:
        rx.fail(1, Reply(status=200, delay=3.0))
        hook = await webhook(admin, rx.url("/slow"))
        event = await accepted(admin)
        done = await wait_status(admin, hook["id"], delivery_to(event, hook), "delivered", 15)
    slow, quick = done["attempts"]
    assert slow["status_code"] is None
    assert "timeout" in slow["error"].lower() or "timed out" in slow["error"].lower()
    assert 1500 <= slow["duration_ms"] < 3000, slow["duration_ms"]
    assert quick["status_code"] == 200 and quick["error"] is None
    assert done["attempt_count"] == 2


# -- operator actions ----------------------------------------------------------------------


async def test_manual_retry_starts_one_new_cycle_and_keeps_history(
    admin: httpx.AsyncClient, workers: Workers
) -> None:
    async with Receiver() as rx:
        rx.answer(Reply(status=500))
        hook = await webhook(admin, rx.url("/r"))
        event = await accepted(admin)
        dlv = delivery_to(event, hook)
        retry = f"/v1/webhooks/{hook['id']}/deliveries/{dlv}/retry"
        # No worker yet: a pending delivery is only made due now, nothing else changes.
        early = await admin.post(retry)
        assert early.status_code == 202, early.text
        assert early.json()["data"]["status"] == "pending"
        assert early.json()["data"]["attempt_count"] == 0

        [worker] = await workers(RELAY_RETRY_SCHEDULE=QUICK)
        failed = await wait_status(admin, hook["id"], dlv, "failed")
        assert failed["attempt_count"] == 4 and len(rx.requests) == 4

        # A retry gets a whole fresh schedule: 4 more attempts, not 1.
        response = await admin.post(retry)
        assert response.status_code == 202, response.text
        restarted = response.json()["data"]
        assert restarted["id"] == dlv and restarted["status"] == "pending"
        assert restarted["next_attempt_at"] and restarted["attempt_count"] == 4
        again = await wait_status(admin, hook["id"], dlv, "failed")
        assert again["attempt_count"] == 8 and len(rx.requests) == 8
        assert [a["number"] for a in again["attempts"]] == list(range(1, 9))

        # With no worker running, racing calls start one cycle: the others find it pending
        # and only make it due now.
        worker.send_signal(signal.SIGTERM)
        await asyncio.to_thread(worker.wait, 15)
        rx.answer(Reply(status=200))
        responses = await asyncio.gather(*(admin.post(retry) for _ in range(50)))
        assert {r.status_code for r in responses} == {202}
        assert {r.json()["data"]["status"] for r in responses} == {"pending"}
        waiting = await delivery(admin, hook, dlv)
        assert waiting["status"] == "pending" and waiting["attempt_count"] == 8
        assert [a["status_code"] for a in waiting["attempts"]] == [500] * 8  # history kept

        # The next attempt must carry a timestamp of its own: let the clock pass a second.
        first_stamp = int(rx.requests[0].headers["webhook-timestamp"])
        await asyncio.sleep(max(0.0, first_stamp + 1.05 - time.time()))
        await workers(RELAY_RETRY_SCHEDULE=QUICK)
        done = await wait_status(admin, hook["id"], dlv, "delivered")
        await asyncio.sleep(0.3)
        assert len(rx.requests) == 9  # exactly one new request
        first, newest = rx.requests[0], rx.requests[-1]
    assert done["attempt_count"] == 9 and done["last_status_code"] == 200
    assert [a["number"] for a in done["attempts"]] == list(range(1, 10))
    assert [a["status_code"] for a in done["attempts"]] == [500] * 8 + [200]
    # Each retry of the failed delivery started a fresh schedule: all its attempts are the
    # schedule's (a manual attempt is one sent outside the schedule of a pending delivery).
    assert {a["trigger"] for a in done["attempts"]} == {"scheduled"}
    Verifier(hook["secret"]).verify(newest.body, newest.headers)
    assert newest.headers["webhook-id"] == first.headers["webhook-id"] == event["id"]
    assert int(newest.headers["webhook-timestamp"]) > first_stamp


async def test_manual_retries_of_a_waiting_delivery_neither_use_up_nor_move_its_schedule(
    admin: httpx.AsyncClient, workers: Workers
) -> None:
    # Three attempts in all, a minute apart: the schedule's second is far beyond this test.
    await workers(RELAY_RETRY_SCHEDULE="60,60")
    async with Receiver() as rx:
        rx.answer(Reply(status=500))
        hook = await webhook(admin, rx.url("/debugged"))
        dlv = delivery_to(await accepted(admin), hook)
        waiting = await poll(
            lambda: delivery(admin, hook, dlv),
            lambda d: d["attempt_count"] == 1 and d["status"] == "pending",
        )
        scheduled = waiting["next_attempt_at"]
        retry = f"/v1/webhooks/{hook['id']}/deliveries/{dlv}/retry"

        # Three debugging clicks, more than the schedule has attempts left: each is sent at
        # once, fails, and leaves the delivery waiting for the same scheduled attempt.
        for made in (2, 3, 4):
            response = await admin.post(retry)
            assert response.status_code == 202, response.text
            assert response.json()["data"]["next_attempt_at"] == scheduled
            after = await poll(
                lambda: delivery(admin, hook, dlv),
                lambda d, made=made: d["attempt_count"] == made and d["status"] == "pending",
            )
            assert after["next_attempt_at"] == scheduled and after["last_status_code"] == 500
        assert len(rx.requests) == 4
        assert [(a["number"], a["trigger"]) for a in after["attempts"]] == [
            (1, "scheduled"),
            (2, "manual"),
            (3, "manual"),
            (4, "manual"),
        ]

        # The receiver is fixed: the next click delivers, and nothing is sent after it.
        rx.answer(Reply(status=200))
        assert (await admin.post(retry)).status_code == 202
        done = await wait_status(admin, hook["id"], dlv, "delivered")
        await asyncio.sleep(0.3)
        assert len(rx.requests) == 5
    assert done["attempt_count"] == 5 and done["next_attempt_at"] is None
    assert [(a["number"], a["trigger"], a["status_code"]) for a in done["attempts"]] == [
        (1, "scheduled", 500),
        (2, "manual", 500),
        (3, "manual", 500),
        (4, "manual", 500),
        (5, "manual", 200),
    ]


async def test_cancel_stops_a_waiting_delivery_and_refuses_a_finished_one(
    admin: httpx.AsyncClient, workers: Workers
) -> None:
    await workers()
    async with Receiver() as rx:
        # Retry-After keeps the delivery waiting 1.2 s (the cap) between attempts.
        rx.answer(Reply(status=503, headers={"retry-after": "60"}), "/wait")
        waiting = await webhook(admin, rx.url("/wait"))
        fine = await webhook(admin, rx.url("/fine"))
        event = await accepted(admin)
        dlv = delivery_to(event, waiting)
        pending = await poll(
            lambda: delivery(admin, waiting, dlv),
            lambda d: d["attempt_count"] == 1 and d["status"] == "pending",
        )
        [attempt] = pending["attempts"]
        due_in = seconds(pending["next_attempt_at"]) - seconds(attempt["started_at"])
        assert 0.9 <= due_in <= 2.0, due_in  # Retry-After: 60, capped at 1.2 s
        assert pending["last_status_code"] == 503
        response = await admin.post(f"/v1/webhooks/{waiting['id']}/deliveries/{dlv}/cancel")
        assert response.status_code == 200, response.text
        canceled = response.json()["data"]
        assert canceled["status"] == "canceled" and canceled["next_attempt_at"] is None

        done_id = delivery_to(event, fine)
        await wait_status(admin, fine["id"], done_id, "delivered")
        problem(
            await admin.post(f"/v1/webhooks/{fine['id']}/deliveries/{done_id}/cancel"),
            409,
            "conflict",
        )
        problem(
            await admin.post(f"/v1/webhooks/{waiting['id']}/deliveries/{dlv}/cancel"),
            409,
            "conflict",
        )
        await asyncio.sleep(1.5)  # past the 1.2 s the next attempt was due after
        assert len(rx.requests_to("/wait")) == 1
    after = await delivery(admin, waiting, dlv)
    assert after["status"] == "canceled" and after["attempt_count"] == 1
    assert len(after["attempts"]) == 1
    assert (await delivery(admin, fine, done_id))["status"] == "delivered"


async def test_a_delivery_canceled_while_its_job_is_queued_is_never_sent(
    admin: httpx.AsyncClient, workers: Workers
) -> None:
    async with Receiver() as rx:
        hook = await webhook(admin, rx.url("/canceled"))
        control = await webhook(admin, rx.url("/control"), tenant="space_ctl")
        event = await accepted(admin)
        dlv = delivery_to(event, hook)
        response = await admin.post(f"/v1/webhooks/{hook['id']}/deliveries/{dlv}/cancel")
        assert response.status_code == 200, response.text
        assert response.json()["data"]["status"] == "canceled"

        await workers()
        # An event posted after the canceled one shows the worker has taken the queue.
        later = await accepted(admin, tenant="space_ctl")
        await wait_status(admin, control["id"], delivery_to(later, control), "delivered")
        await asyncio.sleep(0.5)
        assert rx.requests_to("/canceled") == []
        assert len(rx.requests_to("/control")) == 1
    after = await delivery(admin, hook, dlv)
    assert after["status"] == "canceled" and after["attempt_count"] == 0
    assert after["attempts"] == []


async def test_event_retry_resends_only_the_failed_deliveries(
    admin: httpx.AsyncClient, workers: Workers
) -> None:
    async with Receiver() as rx:
        rx.answer(Reply(status=500), "/bad")
        good = await webhook(admin, rx.url("/good"))
        bad = await webhook(admin, rx.url("/bad"))
        held = await webhook(admin, rx.url("/held"))
        event = await accepted(admin)
        held_id = delivery_to(event, held)
        canceled = await admin.post(f"/v1/webhooks/{held['id']}/deliveries/{held_id}/cancel")
        assert canceled.status_code == 200, canceled.text

        await workers(RELAY_RETRY_SCHEDULE=QUICK)
        await wait_status(admin, good["id"], delivery_to(event, good), "delivered")
        await wait_status(admin, bad["id"], delivery_to(event, bad), "failed")
        assert len(rx.requests_to("/bad")) == 4

        rx.answer(Reply(status=200), "/bad")
        response = await admin.post(f"/v1/events/{event['id']}/retry")
        assert response.status_code == 202, response.text
        view = response.json()["data"]
        assert view["id"] == event["id"]
        statuses = {d["webhook_id"]: d["status"] for d in view["deliveries"]}
        assert statuses[good["id"]] == "delivered" and statuses[bad["id"]] != "failed"
        assert statuses[held["id"]] == "canceled"

        done = await wait_status(admin, bad["id"], delivery_to(event, bad), "delivered")
        assert done["attempt_count"] == 5

        # Nothing failed any more: a second retry sends nothing.
        response = await admin.post(f"/v1/events/{event['id']}/retry")
        assert response.status_code == 202, response.text
        await asyncio.sleep(0.5)
        assert len(rx.requests_to("/good")) == 1
        assert len(rx.requests_to("/bad")) == 5
        assert rx.requests_to("/held") == []
    assert (await delivery(admin, good, delivery_to(event, good)))["attempt_count"] == 1
    assert (await delivery(admin, held, held_id))["status"] == "canceled"


async def test_recover_requeues_exactly_the_failed_deliveries_of_the_window(
    admin: httpx.AsyncClient, workers: Workers
) -> None:
    await workers(RELAY_RETRY_SCHEDULE=QUICK)
    start = datetime.now(UTC)
    async with Receiver() as rx:
        hook = await webhook(admin, rx.url("/r"))
        recover = f"/v1/webhooks/{hook['id']}/recover"
        ok = await accepted(admin)
        await wait_status(admin, hook["id"], delivery_to(ok, hook), "delivered")

        rx.answer(Reply(status=500))
        early = await accepted(admin)
        await asyncio.sleep(0.2)
        middle = datetime.now(UTC)
        await asyncio.sleep(0.05)
        late = await accepted(admin)
        for event in (early, late):
            await wait_status(admin, hook["id"], delivery_to(event, hook), "failed")
        rx.answer(Reply(status=200))

        backwards = recover_body(start, start - timedelta(seconds=1))
        problem(await admin.post(recover, json=backwards), 422, "validation")
        # An empty time is not an open window: it would send every failed delivery again.
        problem(await admin.post(recover, json={"since": ""}), 422, "validation")
        before = recover_body(start - timedelta(hours=1), start - timedelta(seconds=1))
        response = await admin.post(recover, json=before)
        assert response.status_code == 202, response.text
        started = response.json()["data"]
        assert started["requeued"] == 0
        # Found under its webhook: where the answer and its Location say to follow it.
        under_hook = f"/v1/webhooks/{hook['id']}/recoveries/{started['id']}"
        assert response.headers["location"] == started["url"] == under_hook
        assert (await admin.get(under_hook)).json()["data"] == started

        response = await admin.post(recover, json=recover_body(start, middle))
        assert response.status_code == 202, response.text
        assert response.json()["data"]["requeued"] == 1  # the early one, not the delivered
        await wait_status(admin, hook["id"], delivery_to(early, hook), "delivered")
        assert (await delivery(admin, hook, delivery_to(late, hook)))["status"] == "failed"

        everything = recover_body(start, datetime.now(UTC) + timedelta(seconds=5))
        response = await admin.post(recover, json=everything)
        assert response.status_code == 202, response.text
        assert response.json()["data"]["requeued"] == 1  # only the late one is failed now
        await wait_status(admin, hook["id"], delivery_to(late, hook), "delivered")
        await asyncio.sleep(0.3)
        per_event = {e["id"]: 0 for e in (ok, early, late)}
        for request in rx.requests:
            per_event[request.headers["webhook-id"]] += 1
    assert per_event == {ok["id"]: 1, early["id"]: 5, late["id"]: 5}
    for event in (early, late):
        assert (await delivery(admin, hook, delivery_to(event, hook)))["attempt_count"] == 5


async def test_a_recovery_by_filter_requeues_exactly_the_failed_deliveries_that_match(
    admin: httpx.AsyncClient,
    make_client: ClientFactory,
    token_for: Callable[..., Awaitable[str]],
    workers: Workers,
) -> None:
    await workers(RELAY_RETRY_SCHEDULE=QUICK)
    start = datetime.now(UTC)
    async with Receiver() as rx:
        rx.answer(Reply(status=500))
        first = await webhook(admin, rx.url("/first"), tenant="space_a")
        second = await webhook(admin, rx.url("/second"), tenant="space_a")
        theirs = await webhook(admin, rx.url("/theirs"), tenant="space_b")
        published = await accepted(admin, "space_a")
        crashed = await accepted(
            admin, "space_a", type="post.failed", data={"post_id": "p", "error": {"message": "x"}}
        )
        other = await accepted(admin, "space_b")
        ended = [
            (hook, delivery_to(event, hook))
            for event in (published, crashed)
            for hook in (first, second)
        ] + [(theirs, delivery_to(other, theirs))]
        for hook, delivery_id in ended:
            await wait_status(admin, hook["id"], delivery_id, "failed")
        rx.answer(Reply(status=200))

        tenant = await make_client(token=await token_for("tenant", "space_a"))
        for body in ({"tenant_id": "space_b"}, {"webhook_id": theirs["id"]}):
            problem(await tenant.post("/v1/recoveries", json=body), 404, "not_found")
        backwards = recover_body(start, start - timedelta(seconds=1))
        problem(await tenant.post("/v1/recoveries", json=backwards), 422, "validation")
        for empty in ({"since": ""}, {"until": ""}):
            problem(await tenant.post("/v1/recoveries", json=empty), 422, "validation")
        problem(await tenant.post("/v1/recoveries", json={"status": "failed"}), 422, "validation")
        mixed = {"tenant_id": "space_b", "webhook_id": first["id"]}
        problem(await admin.post("/v1/recoveries", json=mixed), 422, "validation")

        # A tenant's filter: its own failed deliveries of one event type, on every webhook.
        response = await tenant.post("/v1/recoveries", json={"event_type": "post.failed"})
        assert response.status_code == 202, response.text
        started = response.json()["data"]
        assert response.headers["location"] == started["url"] == f"/v1/recoveries/{started['id']}"
        assert (started["tenant_id"], started["webhook_id"], started["event_type"]) == (
            "space_a",
            None,
            "post.failed",
        )
        assert (started["status"], started["requeued"]) == ("done", 2)
        progress = await tenant.get(started["url"])
        assert progress.status_code == 200 and progress.json()["data"] == started
        for hook in (first, second):
            await wait_status(admin, hook["id"], delivery_to(crashed, hook), "delivered")
        assert (await delivery(admin, first, delivery_to(published, first)))["status"] == "failed"

        # One webhook's, within a window: found under that webhook too.
        window = recover_body(start, datetime.now(UTC) + timedelta(seconds=5))
        response = await admin.post("/v1/recoveries", json={"webhook_id": first["id"], **window})
        assert response.status_code == 202, response.text
        one = response.json()["data"]
        assert (one["tenant_id"], one["requeued"]) == ("space_a", 1)
        assert one["url"] == f"/v1/webhooks/{first['id']}/recoveries/{one['id']}"
        assert (await admin.get(f"/v1/recoveries/{one['id']}")).json()["data"] == one
        await wait_status(admin, first["id"], delivery_to(published, first), "delivered")

        # Every tenant's, which only an admin may follow; any window RFC 3339 can write.
        widest = {"since": "0001-01-01T00:00:00Z", "until": "9999-12-31T23:59:59.999Z"}
        response = await admin.post("/v1/recoveries", json=widest)
        assert response.status_code == 202, response.text
        everyone = response.json()["data"]
        assert (everyone["tenant_id"], everyone["requeued"]) == (None, 2)
        problem(await tenant.get(everyone["url"]), 404, "not_found")
        for hook, delivery_id in ended:
            await wait_status(admin, hook["id"], delivery_id, "delivered")
        await asyncio.sleep(0.3)
        per_event = {e["id"]: 0 for e in (published, crashed, other)}
        for request in rx.requests:
            per_event[request.headers["webhook-id"]] += 1
    # Four attempts each that failed, then exactly one that went again.
    assert per_event == {published["id"]: 10, crashed["id"]: 10, other["id"]: 5}


# -- ingest --------------------------------------------------------------------------------


async def test_a_repeated_upstream_id_is_one_event_per_tenant(
    admin: httpx.AsyncClient, workers: Workers
) -> None:
    await workers()
    async with Receiver() as rx:
        ours = await webhook(admin, rx.url("/42"))
        theirs = await webhook(admin, rx.url("/7"), tenant="space_7")
        first = await accepted(admin, id="upstream-1")
        for data in ({"post_id": "p_1"}, {"post_id": "p_2"}):
            again = await post_event(admin, id="upstream-1", data=data)
            assert again.status_code == 200, again.text
            repeat = again.json()["data"]
            assert repeat["id"] == first["id"]
            assert [d["id"] for d in repeat["deliveries"]] == [d["id"] for d in first["deliveries"]]
        other = await accepted(admin, tenant="space_7", id="upstream-1")
        assert other["id"] != first["id"]
        assert [d["webhook_id"] for d in other["deliveries"]] == [theirs["id"]]

        await wait_status(admin, ours["id"], delivery_to(first, ours), "delivered")
        await wait_status(admin, theirs["id"], delivery_to(other, theirs), "delivered")
        await asyncio.sleep(0.5)
        assert len(rx.requests_to("/42")) == 1
        assert len(rx.requests_to("/7")) == 1
        assert orjson.loads(rx.requests_to("/42")[0].body)["data"] == {"post_id": "p_1"}
    listed = await listing(admin, f"/v1/webhooks/{ours['id']}/deliveries")
    assert len(listed["data"]) == 1


async def test_events_without_subscribers_and_invalid_events(admin: httpx.AsyncClient) -> None:
    await webhook(admin, "http://127.0.0.1:9/media", events=["media.uploaded"])
    for tenant in ("space_42", "space_nobody"):
        event = await accepted(admin, tenant=tenant)
        assert event["deliveries"] == []
        fetched = await admin.get(f"/v1/events/{event['id']}")
        assert fetched.status_code == 200 and fetched.json()["data"]["deliveries"] == []

    unknown = await post_event(admin, type="post.exploded")
    assert "type" in problem(unknown, 422, "validation")["errors"]
    missing = await post_event(admin, data={"url": "https://example.com/p"})
    assert "data.post_id" in problem(missing, 422, "validation")["errors"]
    wrong = await post_event(admin, data={"post_id": {"nested": True}})
    assert "data.post_id" in problem(wrong, 422, "validation")["errors"]
    listed = await listing(admin, "/v1/deliveries")
    assert listed["data"] == []


async def test_who_may_post_and_read_events_and_deliveries(
    admin: httpx.AsyncClient,
    make_client: ClientFactory,
    token_for: Callable[..., Awaitable[str]],
) -> None:
    mine = await webhook(admin, "http://127.0.0.1:9/mine")
    theirs = await webhook(admin, "http://127.0.0.1:9/theirs", tenant="space_7")
    ingest = await make_client(token=await token_for("ingest"))
    tenant = await make_client(token=await token_for("tenant", "space_42"))

    posted = await post_event(ingest)
    assert posted.status_code == 202, posted.text
    own = posted.json()["data"]
    fetched = await ingest.get(f"/v1/events/{own['id']}")
    assert fetched.status_code == 200 and fetched.json()["data"]["id"] == own["id"]
    problem(await post_event(tenant), 403, "forbidden")
    problem(await ingest.get("/v1/deliveries"), 403, "forbidden")

    other = await accepted(admin, tenant="space_7")
    own_dlv, other_dlv = delivery_to(own, mine), delivery_to(other, theirs)

    seen = await tenant.get(f"/v1/events/{own['id']}")
    assert seen.status_code == 200 and seen.json()["data"]["tenant_id"] == "space_42"
    problem(await tenant.get(f"/v1/events/{other['id']}"), 404, "not_found")
    problem(await tenant.post(f"/v1/events/{other['id']}/retry"), 404, "not_found")
    for path in (
        f"/v1/webhooks/{theirs['id']}/deliveries/{other_dlv}",
        f"/v1/webhooks/{mine['id']}/deliveries/{other_dlv}",
    ):
        problem(await tenant.get(path), 404, "not_found")
        problem(await tenant.post(f"{path}/cancel"), 404, "not_found")
        problem(await tenant.post(f"{path}/retry"), 404, "not_found")
    problem(await tenant.get(f"/v1/webhooks/{theirs['id']}/deliveries"), 404, "not_found")

    for query in ({"tenant_id": "space_7"}, {"webhook_id": theirs["id"]}):
        response = await tenant.get("/v1/deliveries", params=query)
        if response.status_code != 404:
            assert response.status_code == 200, response.text
            assert response.json()["data"] == []
    everything = await listing(tenant, "/v1/deliveries")
    assert [d["id"] for d in everything["data"]] == [own_dlv]
    own_view = await tenant.get(f"/v1/webhooks/{mine['id']}/deliveries/{own_dlv}")
    assert own_view.status_code == 200 and own_view.json()["data"]["id"] == own_dlv
    # The admin still sees both: the 404s above are about visibility, not existence.
    assert (await delivery(admin, theirs, other_dlv))["tenant_id"] == "space_7"


# -- lists ---------------------------------------------------------------------------------


async def test_delivery_lists_filter_and_paginate_newest_first(
    admin: httpx.AsyncClient, workers: Workers
) -> None:
    # One retry 50 ms later: failures are final within a moment.
    await workers(RELAY_RETRY_SCHEDULE="0.05")
    async with Receiver() as rx:
        rx.answer(Reply(status=500), "/bad")
        good = await webhook(admin, rx.url("/good"))
        bad = await webhook(admin, rx.url("/bad"))
        elsewhere = await webhook(admin, rx.url("/seven"), tenant="space_7")
        events: list[Json] = []
        for kind in ("post", "media", "post", "media", "post"):
            if kind == "post":
                events.append(await accepted(admin))
            else:
                events.append(await accepted(admin, type="media.uploaded", data=MEDIA))
            await asyncio.sleep(0.005)  # distinct milliseconds, so the order is defined
        seventh = await accepted(admin, tenant="space_7")
        for event in events:
            await wait_status(admin, good["id"], delivery_to(event, good), "delivered")
            await wait_status(admin, bad["id"], delivery_to(event, bad), "failed")
        await wait_status(admin, elsewhere["id"], delivery_to(seventh, elsewhere), "delivered")

    newest_first = {h["id"]: [delivery_to(e, h) for e in reversed(events)] for h in (good, bad)}
    media = [delivery_to(e, good) for e in reversed(events) if e["type"] == "media.uploaded"]

    def ids(body: Json) -> list[str]:
        return [d["id"] for d in body["data"]]

    good_list = f"/v1/webhooks/{good['id']}/deliveries"
    bad_list = f"/v1/webhooks/{bad['id']}/deliveries"

    # Lists by status read history: wait until the worker has handed each ended one over.
    async def ended_in_history() -> int:
        delivered = await listing(admin, good_list, status="delivered")
        failed = await listing(admin, bad_list, status="failed")
        return min(len(delivered["data"]), len(failed["data"]))

    deadline = time.monotonic() + 20
    while await ended_in_history() < len(events):
        assert time.monotonic() < deadline, "the ended deliveries never reached history"
        await asyncio.sleep(0.1)
    assert ids(await listing(admin, good_list)) == newest_first[good["id"]]
    assert ids(await listing(admin, good_list, status="delivered")) == newest_first[good["id"]]
    assert ids(await listing(admin, good_list, status="failed")) == []
    failed = await listing(admin, bad_list, status="failed")
    assert ids(failed) == newest_first[bad["id"]]
    assert all(d["status"] == "failed" and d["attempt_count"] == 2 for d in failed["data"])
    assert ids(await listing(admin, bad_list, status="delivered")) == []
    by_type = await listing(admin, good_list, event_type="media.uploaded")
    assert ids(by_type) == media
    assert {d["event_type"] for d in by_type["data"]} == {"media.uploaded"}
    assert len(ids(await listing(admin, bad_list, status="failed", event_type="post.published")))
    assert ids(await listing(admin, good_list, event_type="post.failed")) == []

    by_webhook = await listing(admin, "/v1/deliveries", webhook_id=bad["id"])
    assert ids(by_webhook) == newest_first[bad["id"]]
    by_tenant = await listing(admin, "/v1/deliveries", tenant_id="space_7")
    assert ids(by_tenant) == [delivery_to(seventh, elsewhere)]
    tenant_failed = await listing(admin, "/v1/deliveries", tenant_id="space_42", status="failed")
    assert ids(tenant_failed) == newest_first[bad["id"]]
    tenant_all = ids(await listing(admin, "/v1/deliveries", tenant_id="space_42"))
    assert sorted(tenant_all) == sorted(newest_first[good["id"]] + newest_first[bad["id"]])
    assert tenant_all == sorted(tenant_all, reverse=True)

    created = [seconds(e["created_at"]) for e in events]
    since = await listing(admin, good_list, since=events[2]["created_at"])
    assert ids(since) == newest_first[good["id"]][:3]
    until = await listing(admin, good_list, until=events[1]["created_at"])
    assert ids(until) == newest_first[good["id"]][3:]
    late = rfc3339(datetime.fromtimestamp(created[-1] + 60, UTC))
    assert ids(await listing(admin, good_list, since=late)) == []

    pages = await walk(admin, good_list, limit=2)
    assert [len(p) for p in pages] == [2, 2, 1]
    assert [d["id"] for p in pages for d in p] == newest_first[good["id"]]
    stamps = [seconds(d["created_at"]) for p in pages for d in p]
    assert stamps == sorted(stamps, reverse=True)
    pages = await walk(admin, "/v1/deliveries", tenant_id="space_42", limit=3)
    walked = [d["id"] for p in pages for d in p]
    assert walked == tenant_all and all(pages[:-1]) and len(pages[-1]) <= 3
    pages = await walk(admin, bad_list, limit=2, event_type="post.published")
    assert [d["id"] for p in pages for d in p] == [
        delivery_to(e, bad) for e in reversed(events) if e["type"] == "post.published"
    ]


async def test_the_last_page_of_deliveries_has_no_cursor(admin: httpx.AsyncClient) -> None:
    hook = await webhook(admin, "http://127.0.0.1:9/hook")
    for _ in range(4):
        await accepted(admin)
        await asyncio.sleep(0.005)
    path = f"/v1/webhooks/{hook['id']}/deliveries"
    # A page that happens to hold the oldest delivery says there is nothing more.
    assert (await listing(admin, path, limit=4))["next_cursor"] is None
    pages = await walk(admin, path, limit=2)
    assert [len(p) for p in pages] == [2, 2]


# -- webhook changes while deliveries wait -------------------------------------------------


async def test_disabled_and_deleted_webhooks_get_nothing_more(
    admin: httpx.AsyncClient, workers: Workers
) -> None:
    async with Receiver() as rx:
        rx.answer(Reply(status=503, headers={"retry-after": "60"}), "/later")
        fine = await webhook(admin, rx.url("/fine"))
        off = await webhook(admin, rx.url("/off"))
        gone = await webhook(admin, rx.url("/gone"))
        later = await webhook(admin, rx.url("/later"))
        event = await accepted(admin)
        assert len(event["deliveries"]) == 4

        # Before any worker runs: one webhook is disabled, one deleted.
        response = await admin.patch(f"/v1/webhooks/{off['id']}", json={"enabled": False})
        assert response.status_code == 200 and response.json()["data"]["enabled"] is False
        response = await admin.delete(f"/v1/webhooks/{gone['id']}")
        assert response.status_code == 200, response.text

        await workers()
        await wait_status(admin, fine["id"], delivery_to(event, fine), "delivered")
        ended = await wait_status(admin, off["id"], delivery_to(event, off), "failed")
        assert "disabled" in ended["last_error"].lower()
        assert ended["attempt_count"] == 0 and ended["attempts"] == []

        async def status_of_gone() -> Json:
            view = (await admin.get(f"/v1/events/{event['id']}")).json()["data"]
            [found] = [d for d in view["deliveries"] if d["webhook_id"] == gone["id"]]
            return dict(found)

        await poll(status_of_gone, lambda d: d["status"] == "canceled", timeout=5)

        # Disabled while waiting between attempts: the next attempt is never made.
        waiting = delivery_to(event, later)
        await poll(
            lambda: delivery(admin, later, waiting),
            lambda d: d["attempt_count"] == 1 and d["status"] == "pending",
        )
        response = await admin.patch(f"/v1/webhooks/{later['id']}", json={"enabled": False})
        assert response.status_code == 200, response.text
        stopped = await wait_status(admin, later["id"], waiting, "failed", 10)
        assert "disabled" in stopped["last_error"].lower()
        assert stopped["attempt_count"] == 1
        await asyncio.sleep(0.3)
        assert len(rx.requests_to("/fine")) == 1
        assert rx.requests_to("/off") == [] and rx.requests_to("/gone") == []
        assert len(rx.requests_to("/later")) == 1
    tenant_view = await listing(admin, "/v1/deliveries", tenant_id="space_42")
    [deleted] = [d for d in tenant_view["data"] if d["webhook_id"] == gone["id"]]
    assert deleted["status"] == "canceled" and deleted["attempt_count"] == 0


# -- metrics -------------------------------------------------------------------------------


async def metric_samples(client: httpx.AsyncClient) -> dict[tuple[str, str], float]:
    """Every sample of /metrics as {(name, labels as text): value}."""
    response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    found: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            found[(sample.name, labels)] = sample.value
    return found


async def test_metrics_count_events_attempts_and_pending_deliveries(
    admin: httpx.AsyncClient, workers: Workers
) -> None:
    async with Receiver() as rx:
        rx.fail(1)
        hook = await webhook(admin, rx.url("/m"))
        event = await accepted(admin)
        await accepted(admin, type="media.uploaded", data=MEDIA, tenant="space_nobody")

        before = await metric_samples(admin)
        assert before[("relay_events_accepted_total", 'type="post.published"')] == 1
        assert before[("relay_events_accepted_total", 'type="media.uploaded"')] == 1
        assert before[("relay_deliveries_pending", "")] == 1
        assert before.get(("relay_attempts_total", 'status="2xx"'), 0) == 0

        await workers()
        await wait_status(admin, hook["id"], delivery_to(event, hook), "delivered")
        # A worker adds what it counted every few seconds, not one write per attempt.
        deadline = time.monotonic() + 15
        while True:
            after = await metric_samples(admin)
            if after.get(("relay_attempts_total", 'status="2xx"')) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
    assert after[("relay_attempts_total", 'status="2xx"')] == 1
    assert after[("relay_attempts_total", 'status="5xx"')] == 1
    assert after[("relay_deliveries_pending", "")] == 0
    assert after[("relay_attempt_duration_seconds_count", "")] == 2
    assert after[("relay_attempt_duration_seconds_bucket", 'le="+Inf"')] == 2
    assert 0 < after[("relay_attempt_duration_seconds_sum", "")] < 4
    buckets = sorted(
        (float(labels.split('"')[1]), value)
        for (name, labels), value in after.items()
        if name == "relay_attempt_duration_seconds_bucket"
    )
    assert len(buckets) > 3
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)  # cumulative
