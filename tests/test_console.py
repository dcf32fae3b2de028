"""The console in a real browser (Debian's Chromium through Playwright) against a real relay:
an API and a worker process on a Redis of their own, delivering to a loopback receiver.

One browser serves the whole module; each test opens a fresh context, so sessionStorage (where
the console keeps its token) starts empty. Set CONSOLE_SCREENSHOTS=<dir> to save a PNG of each
main page, as docs/ shows them.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from relay.config import ConfigError, load_settings
from tests.fixtures import ClientFactory
from tests.flows import post_event, wait_status, webhook
from tests.receivers import Receiver, Reply, closed_port
from tests.support import RedisServer, free_port, relay_env, spawn_relay, wait_http

# One test process runs the module, so that its browser and relay processes start once.
pytestmark = [pytest.mark.system, pytest.mark.xdist_group("console")]

ADMIN = "console-admin-token"
XSS = "<img src=x onerror=alert(1)>"
SHOTS = os.environ.get("CONSOLE_SCREENSHOTS")
# Pages served from http://localhost may frame the console (at 127.0.0.1); others may not.
FRAMERS = "http://localhost:*"
VIEWER_ZONE = "Asia/Kolkata"

expect.set_options(timeout=15_000)


@pytest.fixture(scope="module")
def relay_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    redis_server = RedisServer(tmp_path_factory.mktemp("console-redis")).start()
    env = relay_env(
        redis_server.url,
        RELAY_ADMIN_TOKEN=ADMIN,
        RELAY_ALLOW_PRIVATE_TARGETS="true",
        RELAY_RETRY_SCHEDULE="0.3,0.3",
        RELAY_DELIVERY_TIMEOUT="2",
        RELAY_CONSOLE_FRAME_ANCESTORS=FRAMERS,
    )
    port = free_port()
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    procs = [
        spawn_relay(["api", "--port", str(port)], env, **quiet),
        spawn_relay(["worker"], env, **quiet),
    ]
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        yield f"http://127.0.0.1:{port}"
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        redis_server.stop()


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    chromium = shutil.which("chromium")
    assert chromium, "chromium is not installed (make test installs it)"
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        yield launched
        await launched.close()


@pytest.fixture
async def api(relay_url: str) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"authorization": f"Bearer {ADMIN}"}
    async with httpx.AsyncClient(base_url=relay_url, headers=headers) as client:
        yield client


@pytest.fixture
async def page(browser: Browser, relay_url: str) -> AsyncIterator[Page]:
    # A zone half an hour off any whole-hour one, so a time read in the wrong zone finds the
    # wrong deliveries.
    context = await browser.new_context(
        base_url=relay_url, viewport={"width": 1280, "height": 900}, timezone_id=VIEWER_ZONE
    )
    opened = await context.new_page()
    dialogs: list[str] = []
    errors: list[str] = []
    opened.on("dialog", lambda d: dialogs.append(d.message))
    opened.on("pageerror", lambda e: errors.append(str(e)))
    opened.dialogs = dialogs  # type: ignore[attr-defined]
    yield opened
    await context.close()
    assert errors == [], "the console's scripts failed"


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with Receiver() as rx:
        yield rx


async def sign_in(page: Page, token: str) -> None:
    await page.goto("/console")
    await page.get_by_label("API token").fill(token)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("button", name="Sign out")).to_be_visible()


async def shot(page: Page, name: str) -> None:
    if SHOTS:
        await page.screenshot(path=str(Path(SHOTS) / f"console-{name}.png"), full_page=True)


async def tenant_token(api: httpx.AsyncClient, tenant: str) -> str:
    response = await api.post("/v1/tokens", json={"role": "tenant", "tenant_id": tenant})
    assert response.status_code == 201, response.text
    token: str = response.json()["data"]["token"]
    return token


async def event_for(api: httpx.AsyncClient, tenant: str, **data: Any) -> dict[str, Any]:
    response = await post_event(api, tenant, data={"post_id": "p_1", **data})
    assert response.status_code == 202, response.text
    event: dict[str, Any] = response.json()["data"]
    return event


def test_the_console_is_served_under_a_strict_policy(relay_url: str) -> None:
    response = httpx.get(f"{relay_url}/console")
    assert response.status_code == 200
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and f"frame-ancestors {FRAMERS}" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    # No inline script for the policy to forbid: every script is a file of the package.
    assert re.findall(r"<script[^>]*>", response.text) == [
        '<script type="module" src="/console/assets/js/main.js">'
    ]
    script = httpx.get(f"{relay_url}/console/assets/js/main.js")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")


async def test_admin_signs_in_sees_the_overview_and_creates_a_webhook(
    page: Page, api: httpx.AsyncClient, receiver: Receiver
) -> None:
    await sign_in(page, ADMIN)
    await expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    await expect(page.get_by_text("Events accepted").first).to_be_visible()

    await page.get_by_role("link", name="Webhooks").click()
    await page.get_by_label("URL").fill(receiver.url("/created"))
    await page.get_by_label("Tenant", exact=True).last.fill("space_console")
    await page.get_by_label("Event types (comma-separated; * for all)").fill("post.published")
    await page.get_by_label("Signature scheme").select_option("ed25519")
    await page.get_by_role("button", name="Create webhook").click()
    created = page.get_by_role("status").filter(has_text="Created")
    await expect(created).to_contain_text("Its public key")
    await expect(created.locator("code")).to_contain_text("whpk_")

    # Listed at once, and the form is ready for the next one.
    await expect(page.get_by_role("link", name=receiver.url("/created"))).to_be_visible()
    await expect(page.get_by_label("URL")).to_have_value("")
    listed = (await api.get("/v1/webhooks", params={"tenant_id": "space_console"})).json()["data"]
    assert [(w["url"], w["events"], w["signature_scheme"]) for w in listed] == [
        (receiver.url("/created"), ["post.published"], "ed25519")
    ]
    await page.reload()
    await expect(page.get_by_role("link", name=receiver.url("/created"))).to_be_visible()
    await shot(page, "webhooks")


async def test_a_failing_delivery_shows_its_attempts_and_a_retry_delivers_it(
    page: Page, api: httpx.AsyncClient, receiver: Receiver
) -> None:
    receiver.answer(Reply(status=500, body=b"receiver is down"), "/flaky")
    hook = await webhook(api, receiver.url("/flaky"), "space_flaky")
    event = await event_for(api, "space_flaky")
    [delivery] = event["deliveries"]

    await sign_in(page, ADMIN)
    await page.goto(f"/console#/deliveries/{delivery['id']}")
    attempts = page.locator("details.attempt")
    await expect(attempts).to_have_count(3)
    await expect(page.locator("dd .badge")).to_have_text("failed")
    await expect(attempts.first.locator("summary .badge").first).to_have_text("scheduled")
    await attempts.first.locator("summary").click()
    await expect(attempts.first).to_contain_text("receiver is down")
    await expect(attempts.first).to_contain_text("webhook-signature")
    await shot(page, "delivery")

    receiver.answer(Reply(status=200, body=b"thanks"), "/flaky")
    await page.get_by_role("button", name="Retry").click()
    await expect(page.locator("dd .badge")).to_have_text("delivered")
    await expect(attempts).to_have_count(4)

    # Only a pending delivery can be canceled: a delivered one offers no Cancel.
    await expect(page.get_by_role("button", name="Retry")).to_be_visible()
    await expect(page.get_by_role("button", name="Cancel")).to_have_count(0)

    await page.goto("/console#/deliveries?status=delivered")
    await expect(page.get_by_role("link", name=hook["id"]).first).to_be_visible()
    await shot(page, "deliveries")


async def test_a_delivery_id_alone_opens_its_page_for_those_who_may_see_it(
    page: Page, api: httpx.AsyncClient, receiver: Receiver
) -> None:
    receiver.answer(Reply(status=202, body=b"got it"), "/by-id")
    hook = await webhook(api, receiver.url("/by-id"), "space_by_id")
    event = await event_for(api, "space_by_id")
    delivery_id = event["deliveries"][0]["id"]
    await wait_status(api, hook["id"], delivery_id, "delivered")

    await sign_in(page, ADMIN)
    await page.get_by_role("link", name="Deliveries", exact=True).click()
    # Pasted from a log line, stray spaces and all, and opened with Enter.
    await page.get_by_label("Delivery id").fill(f" {delivery_id} ")
    await page.get_by_label("Delivery id").press("Enter")
    await expect(page.get_by_role("heading", name=f"Delivery {delivery_id}")).to_be_visible()
    facts = page.locator("dl.facts")
    await expect(facts).to_contain_text(hook["id"])
    await expect(facts.locator(".badge")).to_have_text("delivered")
    await expect(page.locator("details.attempt")).to_contain_text("202")
    assert page.url.endswith(f"/console#/deliveries/{delivery_id}")
    await page.reload()
    await expect(facts.locator(".badge")).to_have_text("delivered")

    missing = "dlv_" + "0" * 26
    await page.goto(f"/console#/deliveries/{missing}")
    await expect(page.get_by_role("alert")).to_contain_text(f"No delivery with id {missing}.")
    # Links that also name the webhook, as the console made them before, still open the page.
    await page.goto(f"/console#/deliveries/{hook['id']}/{delivery_id}")
    await expect(facts.locator(".badge")).to_have_text("delivered")

    # Another tenant's delivery is not found, as the API answers it.
    await page.get_by_role("button", name="Sign out").click()
    await sign_in(page, await tenant_token(api, "space_by_id_other"))
    await page.goto(f"/console#/deliveries/{delivery_id}")
    await expect(page.get_by_role("alert")).to_contain_text(f"No delivery with id {delivery_id}.")
    await expect(page.locator("dl.facts")).to_have_count(0)


async def test_an_event_is_found_by_its_id_or_upstream_id_and_its_failures_retried(
    page: Page, api: httpx.AsyncClient, receiver: Receiver
) -> None:
    receiver.answer(Reply(status=503, body=b"busy"), "/lookup")
    hook = await webhook(api, receiver.url("/lookup"), "space_lookup")
    upstream = "order-1234"
    mine, twin = [
        (await post_event(api, tenant, id=upstream)).json()["data"]
        for tenant in ("space_lookup", "space_lookup_twin")
    ]
    delivery_id = mine["deliveries"][0]["id"]
    await wait_status(api, hook["id"], delivery_id, "failed")

    # A tenant's session lists and finds its own events only.
    await sign_in(page, await tenant_token(api, "space_lookup"))
    await page.get_by_role("link", name="Events", exact=True).click()
    await expect(page.get_by_role("row").filter(has_text=mine["id"])).to_contain_text(upstream)
    await expect(page.get_by_role("link", name=twin["id"])).to_have_count(0)
    outcome = page.get_by_role("search", name="Find an event").get_by_role("status")
    for unknown in ("no-such-order", twin["id"]):
        await page.get_by_label("Event id or upstream id").fill(unknown)
        await page.get_by_label("Event id or upstream id").press("Enter")
        await expect(outcome).to_have_text(f"No event with id {unknown}.")

    await page.get_by_label("Event id or upstream id").fill(upstream)
    await page.get_by_role("button", name="Find").click()
    await expect(page.get_by_role("heading", name=f"Event {mine['id']}")).to_be_visible()
    row = page.get_by_role("row").filter(has_text=delivery_id)
    await expect(row.locator(".badge")).to_have_text("failed")
    receiver.answer(Reply(status=200), "/lookup")
    await page.get_by_role("button", name="Retry failed deliveries").click()
    await expect(page.get_by_role("status").filter(has_text="Requeued")).to_have_text(
        "Requeued 1 failed deliveries."
    )
    # The page follows the delivery it sent again, without a reload.
    await expect(row.locator(".badge")).to_have_text("delivered")

    # An admin finds the upstream id in both tenants and picks one; the search is a link.
    await page.get_by_role("button", name="Sign out").click()
    await sign_in(page, ADMIN)
    await page.goto(f"/console#/events?id={upstream}")
    found = page.get_by_role("search", name="Find an event")
    await expect(found.get_by_role("status")).to_have_text(
        f"2 events have the upstream id {upstream}, one in each of these tenants."
    )
    await expect(found.get_by_role("row").filter(has_text=twin["id"])).to_contain_text(
        "space_lookup_twin"
    )
    await shot(page, "events")
    await found.get_by_role("link", name=twin["id"]).click()
    await expect(page.get_by_role("heading", name=f"Event {twin['id']}")).to_be_visible()
    await page.reload()
    await expect(page.locator("dl.facts")).to_contain_text("space_lookup_twin")

    await page.get_by_role("link", name="Events", exact=True).click()
    await page.get_by_label("Event id or upstream id").fill(mine["id"])
    await page.get_by_label("Event id or upstream id").press("Enter")
    await expect(page.get_by_role("heading", name=f"Event {mine['id']}")).to_be_visible()
    missing = "evt_" + "0" * 26
    await page.goto(f"/console#/events/{missing}")
    await expect(page.get_by_role("alert")).to_contain_text(f"No event with id {missing}.")


async def test_deliveries_filter_by_event_type_and_a_time_range_in_the_viewers_zone(
    page: Page, api: httpx.AsyncClient, receiver: Receiver
) -> None:
    await webhook(api, receiver.url("/types"), "space_types")
    await event_for(api, "space_types")
    response = await post_event(
        api, "space_types", type="post.failed", data={"post_id": "p_2", "error": {"message": "x"}}
    )
    assert response.status_code == 202, response.text
    failed_delivery = response.json()["data"]["deliveries"][0]["id"]

    await sign_in(page, ADMIN)
    await page.goto("/console#/deliveries?tenant_id=space_types")
    rows = page.locator("tbody tr")
    await expect(rows).to_have_count(2)
    filters = page.get_by_role("search", name="Filter deliveries")
    event_type = filters.get_by_label("Event type")
    await expect(filters.locator('datalist option[value="post.failed"]')).to_have_count(1)
    await event_type.fill("post.failed")
    await event_type.press("Enter")
    await expect(rows).to_have_count(1)
    await expect(rows.get_by_role("cell").nth(2)).to_have_text("post.failed")
    await page.reload()
    await expect(event_type).to_have_value("post.failed")
    await expect(rows).to_have_count(1)

    # Times are typed in the viewer's zone and asked of the API in UTC.
    now = datetime.now(ZoneInfo(VIEWER_ZONE)).replace(second=0, microsecond=0)
    since, until = now - timedelta(minutes=10), now + timedelta(minutes=10)
    await filters.get_by_label("Since").fill(since.strftime("%Y-%m-%dT%H:%M"))
    await filters.get_by_label("Until").fill(until.strftime("%Y-%m-%dT%H:%M"))
    await filters.get_by_role("button", name="Filter").click()
    utc_since = since.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:00.000Z")
    await expect(page).to_have_url(re.compile(f"since={re.escape(quote(utc_since))}"))
    await expect(rows).to_have_count(1)
    await expect(filters.get_by_label("Since")).to_have_value(since.strftime("%Y-%m-%dT%H:%M"))
    await rows.get_by_role("link").first.click()
    await expect(page.get_by_role("heading", name=f"Delivery {failed_delivery}")).to_be_visible()
    await page.go_back()

    await filters.get_by_label("Until").fill(
        (now - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M")
    )
    await filters.get_by_role("button", name="Filter").click()
    await expect(page.get_by_text("No deliveries match these filters.")).to_be_visible()
    await page.get_by_role("link", name="Clear filters").click()
    await expect(event_type).to_have_value("")
    await expect(filters.get_by_label("Since")).to_have_value("")


async def refresh_every(page: Page, ms: int) -> None:
    """Live views of this page read again every `ms` ms instead of every few seconds."""
    await page.evaluate("(ms) => { document.documentElement.dataset.refreshMs = String(ms); }", ms)


async def set_hidden(page: Page, hidden: bool) -> None:
    """The tab goes to the background (or comes back), as the page's scripts see it."""
    await page.evaluate(
        """(hidden) => {
            const state = hidden ? "hidden" : "visible";
            const as = (value) => ({ configurable: true, get: () => value });
            Object.defineProperty(document, "visibilityState", as(state));
            Object.defineProperty(document, "hidden", as(hidden));
            document.dispatchEvent(new Event("visibilitychange"));
        }""",
        hidden,
    )


async def test_the_deliveries_list_follows_new_deliveries_unless_the_tab_is_hidden(
    page: Page, api: httpx.AsyncClient, receiver: Receiver
) -> None:
    await webhook(api, receiver.url("/live"), "space_live")
    await event_for(api, "space_live")
    await sign_in(page, ADMIN)
    await refresh_every(page, 100)
    await page.goto("/console#/deliveries?tenant_id=space_live")
    rows = page.locator("tbody tr")
    await expect(rows).to_have_count(1)

    # A delivery made while the list is open appears without a reload.
    await event_for(api, "space_live")
    await expect(rows).to_have_count(2)

    # In a background tab the list asks relay for nothing, and catches up once shown again.
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url) if "/v1/deliveries" in r.url else None)
    await set_hidden(page, True)
    await asyncio.sleep(0.3)  # a read already on its way when the tab was hidden
    asked.clear()
    await event_for(api, "space_live")
    await asyncio.sleep(1.5)  # fifteen refresh intervals
    assert asked == []
    await expect(rows).to_have_count(2)
    await set_hidden(page, False)
    await expect(rows).to_have_count(3)
    assert asked


async def failed_deliveries(api: httpx.AsyncClient, tenant: str, count: int) -> dict[str, Any]:
    """A webhook whose endpoint refuses connections, with `count` deliveries that failed."""
    hook = await webhook(api, f"http://127.0.0.1:{closed_port()}/down", tenant)
    for start in range(0, count, 100):
        batch = [
            {"type": "post.published", "tenant_id": tenant, "data": {"post_id": f"p_{n}"}}
            for n in range(start, min(count, start + 100))
        ]
        response = await api.post("/v1/events/batch", json={"events": batch})
        assert response.status_code == 207, response.text
    await wait_failed(api, hook["id"], count)
    return hook


async def wait_failed(api: httpx.AsyncClient, webhook_id: str, count: int) -> None:
    """Until `count` of the webhook's deliveries have failed (their schedules are short)."""
    for _ in range(600):
        failed, cursor = 0, None
        while True:
            params = {"webhook_id": webhook_id, "status": "failed", "limit": 100}
            page = (await api.get("/v1/deliveries", params={**params, "cursor": cursor})).json()
            failed += len(page["data"])
            if not (cursor := page["next_cursor"]):
                break
        if failed == count:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{failed} of {count} deliveries failed")


async def test_a_recovery_larger_than_a_batch_shows_its_progress_until_done(
    page: Page, api: httpx.AsyncClient
) -> None:
    # More than the 200 a recovery restarts at once: the rest go as a background job.
    hook = await failed_deliveries(api, "space_recover_many", 201)
    await sign_in(page, ADMIN)
    await refresh_every(page, 100)
    await page.goto(f"/console#/webhooks/{hook['id']}")
    # Started from a tab in the background, its progress is not read until the tab is shown.
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url) if "/recoveries/" in r.url else None)
    await set_hidden(page, True)
    await page.get_by_role("button", name="Recover failed deliveries").click()
    form = page.get_by_role("form", name="Recover failed deliveries")
    await expect(form.get_by_role("status")).to_contain_text("so far")
    await asyncio.sleep(1.5)  # fifteen refresh intervals
    assert asked == []
    await set_hidden(page, False)
    await expect(form.get_by_role("status")).to_have_text("Requeued 201 failed deliveries.")
    assert asked
    # They fail again; once they have, the figures other tests read stand still.
    await wait_failed(api, hook["id"], 201)


async def test_events_filter_by_type_and_a_time_range_kept_in_the_address(
    page: Page, api: httpx.AsyncClient
) -> None:
    published = await event_for(api, "space_event_filters")
    response = await post_event(
        api,
        "space_event_filters",
        type="post.failed",
        data={"post_id": "p_2", "error": {"message": "x"}},
    )
    assert response.status_code == 202, response.text
    failed = response.json()["data"]

    await sign_in(page, ADMIN)
    await page.goto("/console#/events?tenant_id=space_event_filters")
    rows = page.locator("tbody tr")
    await expect(rows).to_have_count(2)
    filters = page.get_by_role("search", name="Filter events")
    event_type = filters.get_by_label("Event type")
    await expect(filters.locator('datalist option[value="post.failed"]')).to_have_count(1)
    await event_type.fill("post.failed")
    await event_type.press("Enter")
    await expect(rows).to_have_count(1)
    await expect(rows).to_contain_text(failed["id"])
    await page.reload()
    await expect(event_type).to_have_value("post.failed")
    await expect(rows).to_have_count(1)

    # Times are typed in the viewer's zone and asked of the API in UTC.
    now = datetime.now(ZoneInfo(VIEWER_ZONE)).replace(second=0, microsecond=0)
    await event_type.fill("")
    await filters.get_by_label("Since").fill(
        (now - timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M")
    )
    await filters.get_by_label("Until").fill(
        (now + timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M")
    )
    await filters.get_by_role("button", name="Filter").click()
    await expect(page).to_have_url(re.compile("since=.*until="))
    await expect(rows).to_have_count(2)
    await expect(rows.first).to_contain_text(failed["id"])
    await expect(rows.last).to_contain_text(published["id"])
    await filters.get_by_label("Until").fill(
        (now - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M")
    )
    await filters.get_by_role("button", name="Filter").click()
    await expect(page.get_by_text("No events match these filters.")).to_be_visible()
    await page.get_by_role("link", name="Clear filters").click()
    await expect(filters.get_by_label("Until")).to_have_value("")
    await expect(rows.first).to_be_visible()


async def test_retry_all_matching_sends_every_failed_delivery_the_filters_select(
    page: Page, api: httpx.AsyncClient, receiver: Receiver
) -> None:
    # More than one batch, on more than one page of the list.
    hook = await failed_deliveries(api, "space_bulk", 201)
    receiver.answer(Reply(status=500), "/bulk-other")
    other = await webhook(api, receiver.url("/bulk-other"), "space_bulk_other")
    left = (await event_for(api, "space_bulk_other"))["deliveries"][0]["id"]
    await wait_status(api, other["id"], left, "failed")

    await sign_in(page, ADMIN)
    await refresh_every(page, 100)
    await page.goto("/console#/deliveries?status=pending&tenant_id=space_bulk")
    await expect(page.get_by_text("No deliveries match these filters.")).to_be_visible()
    await expect(page.get_by_role("button", name="Retry all matching")).to_have_count(0)
    await page.goto("/console#/deliveries?status=failed&tenant_id=space_bulk")
    await expect(page.locator("tbody tr")).to_have_count(50)
    bulk = page.get_by_role("region", name="Retry all matching")
    await bulk.get_by_role("button", name="Retry all matching").click()
    await expect(bulk.get_by_role("status")).to_have_text("Requeued 201 failed deliveries.")
    await wait_failed(api, hook["id"], 201)
    # Another tenant's failure was not among those the filters selected.
    kept = await wait_status(api, other["id"], left, "failed")
    assert kept["attempt_count"] == 3


async def test_rotating_a_secret_shows_the_new_one(
    page: Page, api: httpx.AsyncClient, receiver: Receiver
) -> None:
    hook = await webhook(api, receiver.url("/rotate"), "space_rotate")
    await sign_in(page, ADMIN)
    await page.goto(f"/console#/webhooks/{hook['id']}")
    await page.get_by_role("button", name="Reveal secret").click()
    await expect(page.locator("code.secret")).to_have_text(hook["secret"])

    await page.get_by_label("Grace for the previous secret (seconds)").fill("60")
    await page.get_by_role("button", name="Rotate secret").click()
    await expect(page.get_by_role("status").filter(has_text="New secret")).to_be_visible()
    shown = await page.locator("code.secret").text_content()
    current = (await api.get(f"/v1/webhooks/{hook['id']}/secret")).json()["data"]["secret"]
    assert shown == current != hook["secret"]
    await page.get_by_role("button", name="Reveal secret").click()
    await expect(page.locator("code.secret")).to_have_text(current)
    await expect(page.get_by_text("a previous secret signs until")).to_be_visible()
    await shot(page, "webhook")


async def test_payloads_and_response_bodies_are_shown_as_text_never_run(
    page: Page, api: httpx.AsyncClient, receiver: Receiver
) -> None:
    receiver.answer(Reply(body=XSS.encode()), "/xss")
    hook = await webhook(api, receiver.url("/xss"), "space_xss", description=XSS)
    event = await event_for(api, "space_xss", title=XSS)
    delivery_id = event["deliveries"][0]["id"]
    await wait_status(api, hook["id"], delivery_id, "delivered")

    await sign_in(page, ADMIN)
    await page.goto(f"/console#/events/{event['id']}")
    await expect(page.locator("pre")).to_contain_text(XSS)
    await page.get_by_role("button", name="Retry failed deliveries").click()
    await expect(page.get_by_role("status").filter(has_text="Requeued")).to_have_text(
        "Requeued 0 failed deliveries."
    )
    await shot(page, "event")

    await page.get_by_role("link", name=delivery_id).click()
    await page.locator("details.attempt summary").click()
    await expect(page.locator("details.attempt pre")).to_have_text(XSS)
    await page.goto(f"/console#/webhooks/{hook['id']}")
    await expect(page.locator("dl.facts").first).to_contain_text(XSS)
    assert await page.locator("img").count() == 0
    assert page.dialogs == []  # type: ignore[attr-defined]


async def test_a_portal_link_signs_a_tenant_in_to_its_own_webhooks_only(
    page: Page, api: httpx.AsyncClient, receiver: Receiver
) -> None:
    mine = await webhook(api, receiver.url("/mine"), "space_mine")
    theirs = await webhook(api, receiver.url("/theirs"), "space_theirs")
    response = await api.post("/v1/portal-sessions", json={"tenant_id": "space_mine"})
    assert response.status_code == 201, response.text
    link = response.json()["data"]["url"]

    await page.goto(link)
    await expect(page.get_by_role("heading", name="Webhooks")).to_be_visible()
    await expect(page.locator("#who")).to_contain_text("Portal session")
    # The token left the address bar (and history) for this tab's sessionStorage; no cookie.
    assert "token=" not in page.url
    assert await page.evaluate("document.cookie") == ""
    await expect(page.get_by_role("link", name="Tokens")).to_have_count(0)
    await expect(page.get_by_role("link", name=mine["url"])).to_be_visible()
    await expect(page.get_by_role("link", name=theirs["url"])).to_have_count(0)

    await page.goto(f"/console#/webhooks/{theirs['id']}")
    await expect(page.get_by_role("alert")).to_contain_text("Not found")
    await page.goto(f"/console#/webhooks/{mine['id']}")
    await expect(page.get_by_role("heading", name=re.compile("Webhook"))).to_contain_text(
        mine["url"]
    )
    await shot(page, "portal")


async def test_a_portal_link_opened_in_a_tab_already_on_the_console_signs_in(
    page: Page, api: httpx.AsyncClient, receiver: Receiver
) -> None:
    mine = await webhook(api, receiver.url("/same-tab"), "space_same_tab")
    await sign_in(page, ADMIN)
    await expect(page.get_by_role("link", name="Tokens")).to_be_visible()
    response = await api.post("/v1/portal-sessions", json={"tenant_id": "space_same_tab"})
    link = response.json()["data"]["url"]

    # Only the fragment differs: the browser fires hashchange and loads nothing.
    await page.evaluate("(link) => { location.href = link; }", link)
    await expect(page.locator("#who")).to_contain_text("Portal session")
    await expect(page.get_by_role("link", name=mine["url"])).to_be_visible()
    await expect(page.get_by_role("link", name="Tokens")).to_have_count(0)
    assert "token=" not in page.url
    await page.go_back()
    assert "token=" not in page.url
    await page.go_forward()
    assert "token=" not in page.url


async def test_a_platform_embeds_a_portal_link_and_only_allowed_sites_may(
    page: Page, api: httpx.AsyncClient, receiver: Receiver
) -> None:
    await webhook(api, receiver.url("/embedded"), "space_embed")
    response = await api.post("/v1/portal-sessions", json={"tenant_id": "space_embed"})
    link = response.json()["data"]["url"]
    settings_page = f'<h1>Your settings</h1><iframe src="{link}" title="Webhooks"></iframe>'
    receiver.answer(
        Reply(headers={"content-type": "text/html"}, body=settings_page.encode()), "/settings"
    )

    await page.goto(receiver.url("/settings", host="localhost"))
    portal = page.frame_locator("iframe")
    await expect(portal.get_by_role("link", name=receiver.url("/embedded"))).to_be_visible()

    await page.goto(receiver.url("/settings"))  # 127.0.0.1 is not in the frame-ancestors
    await expect(page.get_by_role("heading", name="Your settings")).to_be_visible()
    assert await portal.get_by_role("heading", name="Webhooks").count() == 0


async def test_a_tenant_token_pasted_in_is_scoped_like_the_api(
    page: Page, api: httpx.AsyncClient, receiver: Receiver
) -> None:
    theirs = await webhook(api, receiver.url("/other"), "space_other")
    await sign_in(page, await tenant_token(api, "space_pasted"))
    await expect(page.get_by_role("heading", name="Webhooks")).to_be_visible()
    await expect(page.get_by_text("No webhooks yet. Create one below.")).to_be_visible()
    await page.goto(f"/console#/deliveries?webhook_id={theirs['id']}")
    await expect(page.get_by_role("alert")).to_contain_text("404")


async def test_signing_in_reads_the_tokens_role_without_being_refused_anything(
    page: Page, api: httpx.AsyncClient
) -> None:
    # The console asks the API what the token is; it never finds out by trying routes, which
    # would put a 403 in the operator's logs and metrics for every tenant who signs in.
    answered: list[tuple[int, str]] = []
    page.on("response", lambda r: answered.append((r.status, r.url)) if "/v1/" in r.url else None)
    await sign_in(page, await tenant_token(api, "space_signs_in"))
    await expect(page.get_by_role("heading", name="Webhooks")).to_be_visible()
    await expect(page.locator("#who")).to_contain_text("Tenant")
    await expect(page.get_by_role("link", name="Tokens")).to_have_count(0)

    await page.get_by_role("button", name="Sign out").click()
    ingest = await api.post("/v1/tokens", json={"role": "ingest"})
    await page.get_by_label("API token").fill(ingest.json()["data"]["token"])
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("alert")).to_contain_text("This token may only post events")
    assert [status for status, _ in answered if status >= 400] == [], answered


async def test_an_owner_tests_edits_disables_recovers_and_deletes_a_webhook(
    page: Page, api: httpx.AsyncClient, receiver: Receiver
) -> None:
    receiver.answer(Reply(status=201, body=b"hello from the receiver"), "/edit")
    hook = await webhook(api, receiver.url("/edit"), "space_edit")
    # Keyboard only: type the token and press Enter.
    await page.goto(f"/console#/webhooks/{hook['id']}")
    await page.get_by_label("API token").fill(ADMIN)
    await page.keyboard.press("Enter")

    await page.get_by_role("button", name="Send test event").click()
    await expect(page.get_by_label("Response body")).to_have_text("hello from the receiver")
    await expect(page.locator("form", has_text="Send a test event")).to_contain_text("201")

    edit = page.locator("form", has_text="Save changes")
    await edit.get_by_label("Description").fill("billing")
    await edit.get_by_label("Custom headers, one per line").fill("X-Team: payments")
    await edit.get_by_label("Rate limit per second (empty: none)").fill("5")
    await edit.get_by_role("button", name="Save changes").click()
    await expect(edit.get_by_role("status")).to_have_text("Saved.")
    # The value went to storage encrypted: shown as redacted, yet sent to the receiver.
    await expect(page.locator("dl.facts").first).to_contain_text("X-Team: [redacted]")
    saved = (await api.get(f"/v1/webhooks/{hook['id']}")).json()["data"]
    assert (saved["description"], saved["headers"], saved["rate_limit_per_second"]) == (
        "billing",
        {"X-Team": "[redacted]"},
        5,
    )
    # Opened afresh and saved again as shown, the header keeps its value.
    await page.reload()
    await edit.get_by_label("Description").fill("billing team")
    await expect(edit.get_by_label("Custom headers, one per line")).to_have_value(
        "X-Team: [redacted]"
    )
    await edit.get_by_role("button", name="Save changes").click()
    await expect(page.locator("dl.facts").first).to_contain_text("billing team")
    await page.get_by_role("button", name="Send test event").click()
    await expect(page.get_by_label("Response body")).to_have_text("hello from the receiver")
    assert receiver.requests_to("/edit")[-1].headers["x-team"] == "payments"

    await page.get_by_role("button", name="Disable").click()
    await expect(page.locator("dl.facts").first.locator(".badge")).to_have_text("disabled")
    assert (await api.get(f"/v1/webhooks/{hook['id']}")).json()["data"]["enabled"] is False
    await page.get_by_role("button", name="Enable").click()
    await expect(page.locator("dl.facts").first.locator(".badge")).to_have_text("enabled")

    receiver.answer(Reply(status=500), "/edit")
    event = await event_for(api, "space_edit")
    delivery_id = event["deliveries"][0]["id"]
    await wait_status(api, hook["id"], delivery_id, "failed")
    receiver.answer(Reply(status=200), "/edit")
    await page.get_by_role("button", name="Recover failed deliveries").click()
    await expect(page.get_by_role("status").filter(has_text="Requeued")).to_have_text(
        "Requeued 1 failed deliveries."
    )
    await wait_status(api, hook["id"], delivery_id, "delivered")

    await page.get_by_role("button", name="Delete webhook").click()
    await page.get_by_role("button", name="Press again to delete").click()
    await expect(page.get_by_role("heading", name="Webhooks")).to_be_visible()
    assert (await api.get(f"/v1/webhooks/{hook['id']}")).status_code == 404


async def test_lists_page_through_more_than_a_page(
    page: Page, api: httpx.AsyncClient, receiver: Receiver
) -> None:
    hook = await webhook(api, receiver.url("/many"), "space_many")
    await asyncio.gather(*(event_for(api, "space_many") for _ in range(51)))
    await sign_in(page, ADMIN)
    await page.goto("/console#/deliveries?tenant_id=space_many")
    rows = page.locator("tbody tr")
    await expect(rows).to_have_count(50)
    await page.get_by_role("link", name="Next page").click()
    await expect(rows).to_have_count(1)
    await expect(rows).to_contain_text(hook["id"])
    await page.get_by_role("link", name="First page").click()
    await expect(rows).to_have_count(50)

    # Recent events page by twenty, newest first.
    await page.goto("/console#/events")
    await expect(rows).to_have_count(20)
    newest = await rows.first.text_content()
    await page.get_by_role("link", name="Next page").click()
    await expect(rows).to_have_count(20)
    await expect(rows.first).not_to_have_text(newest or "")


async def test_the_console_fits_a_phone_screen(page: Page) -> None:
    await page.set_viewport_size({"width": 390, "height": 844})
    await sign_in(page, ADMIN)
    await expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390
    await shot(page, "phone")


async def test_the_api_reference_lists_every_operation_and_one_opens(
    page: Page, api: httpx.AsyncClient
) -> None:
    refused: list[str] = []
    page.on("console", lambda m: refused.append(m.text) if "Content Security" in m.text else None)
    spec = (await api.get("/openapi.json")).json()
    methods = {"get", "post", "put", "patch", "delete"}
    operations = [method for item in spec["paths"].values() for method in item if method in methods]
    assert spec["openapi"].startswith("3.1") and len(operations) > 30

    await page.goto("/docs")
    # The relay API, read as OpenAPI 3.1: every operation listed, none refused.
    await expect(page.locator(".info .title")).to_contain_text(spec["info"]["title"])
    await expect(page.locator(".opblock")).to_have_count(len(operations))
    await expect(page.get_by_text("Unable to render this definition")).to_have_count(0)

    posting = page.locator(".opblock").filter(has_text="Post an event")
    await posting.locator(".opblock-summary").click()
    await expect(posting.get_by_text("Request body")).to_be_visible()
    await expect(posting.get_by_role("button", name="Try it out")).to_be_visible()
    await expect(posting.locator(".response").filter(has_text="202").first).to_be_visible()
    # Under the console's policy, nothing was blocked on the way.
    assert refused == []


async def test_a_webhook_page_shows_how_many_attempts_relay_makes_to_it_at_once(
    page: Page, api: httpx.AsyncClient, receiver: Receiver
) -> None:
    hook = await webhook(api, receiver.url("/at-once"), "space_at_once")
    await page.goto(f"/console#/webhooks/{hook['id']}")
    await page.get_by_label("API token").fill(ADMIN)
    await page.keyboard.press("Enter")

    facts = page.locator("dl.facts").first
    await expect(facts).to_contain_text("4 attempts in flight at most now (adapts up to 64)")
    # A change's answer does not say it: the page keeps the figure it read.
    await page.get_by_role("button", name="Disable").click()
    await expect(facts.locator(".badge")).to_have_text("disabled")
    await expect(facts).to_contain_text("4 attempts in flight at most now (adapts up to 64)")


async def test_the_overview_shows_live_figures_and_failing_webhooks(
    page: Page, api: httpx.AsyncClient
) -> None:
    broken = await webhook(api, f"http://127.0.0.1:{closed_port()}/gone", "space_broken")
    event = await event_for(api, "space_broken")
    await wait_status(api, broken["id"], event["deliveries"][0]["id"], "failed")
    # Figures come from history, which the worker writes a moment after the delivery ends.
    for _ in range(200):
        own = await api.get("/v1/stats", params={"webhook_id": broken["id"]})
        if own.json()["data"]["totals"]["deliveries"].get("failed") == 1:
            break
        await asyncio.sleep(0.1)
    stats = (await api.get("/v1/stats")).json()["data"]["totals"]

    await sign_in(page, ADMIN)
    cards = page.locator(".card")
    await expect(cards.filter(has_text="Events accepted")).to_contain_text(
        str(stats["events_accepted"])
    )
    await expect(cards.filter(has_text="Failed")).to_contain_text(
        str(stats["deliveries"]["failed"])
    )
    troubled = page.get_by_role("row").filter(has_text=broken["url"])
    await expect(troubled).to_contain_text("failing")
    await expect(page.get_by_role("img", name=re.compile("Events accepted"))).to_be_visible()
    await shot(page, "overview")

    # A newcomer's way from the overview to a failed delivery's retry button.
    await page.get_by_role("link", name="Failed deliveries").click()
    row = page.get_by_role("row").filter(has_text=broken["id"])
    await row.get_by_role("link").first.click()
    await expect(page.get_by_role("heading", name="Delivery")).to_be_visible()
    await expect(page.get_by_text("Connection refused").first).to_be_visible()
    await expect(page.get_by_role("button", name="Retry")).to_be_visible()


async def test_chart_points_show_their_values_on_hover_and_focus(
    page: Page, api: httpx.AsyncClient, receiver: Receiver
) -> None:
    hook = await webhook(api, receiver.url("/charted"), "space_charted")
    event = await event_for(api, "space_charted")
    await wait_status(api, hook["id"], event["deliveries"][0]["id"], "delivered")

    await sign_in(page, ADMIN)
    await refresh_every(page, 600_000)  # the figures stay as drawn while they are read
    await page.goto("/console#/overview?window=day")
    accepted = page.locator("figure").filter(has_text="Events accepted per")
    readout = accepted.locator(".readout")
    await expect(readout).to_be_hidden()
    bar = accepted.locator(".point").last
    await bar.hover()
    await expect(readout).to_be_visible()
    await expect(readout).to_have_text(re.compile(r"^\d\d:\d\d: events [1-9]\d*$"))
    assert await readout.text_content() == await bar.get_attribute("aria-label")

    # From the keyboard: focus moves point to point and the readout follows it.
    rate = page.locator("figure").filter(has_text="Attempt success rate")
    await page.mouse.move(0, 0)
    await rate.locator(".point").last.focus()
    await expect(rate.locator(".readout")).to_have_text(
        re.compile(r"^\d\d:\d\d: success rate \d+%$")
    )
    await expect(readout).to_be_hidden()


async def test_who_may_frame_the_console_is_a_setting(make_client: ClientFactory) -> None:
    default = await make_client()
    csp = (await default.get("/console")).headers["content-security-policy"]
    assert csp.endswith("frame-ancestors 'none'")
    client = await make_client(console_frame_ancestors="'self' https://app.example")
    for path in ("/console", "/console/assets/console.css"):
        csp = (await client.get(path)).headers["content-security-policy"]
        assert csp.endswith("frame-ancestors 'self' https://app.example"), path


def test_the_frame_ancestors_setting_cannot_add_directives() -> None:
    with pytest.raises(ConfigError, match="RELAY_CONSOLE_FRAME_ANCESTORS"):
        load_settings(console_frame_ancestors="'self'; script-src *")


async def settled_stats(api: httpx.AsyncClient, finished: int, **params: str) -> dict[str, Any]:
    """GET /v1/stats once history holds `finished` finished deliveries of its scope."""
    for _ in range(200):
        stats: dict[str, Any] = (await api.get("/v1/stats", params=params)).json()["data"]
        if sum(stats["totals"]["deliveries"].values()) >= finished:
            return stats
        await asyncio.sleep(0.1)
    raise AssertionError(f"history did not catch up: {stats['totals']}")


async def portal_link(api: httpx.AsyncClient, tenant: str) -> str:
    response = await api.post("/v1/portal-sessions", json={"tenant_id": tenant})
    assert response.status_code == 201, response.text
    url: str = response.json()["data"]["url"]
    return url


async def test_the_event_catalog_reads_out_each_types_fields_and_example(
    page: Page, api: httpx.AsyncClient
) -> None:
    schema = {
        "type": "object",
        "required": ["order_id", "lines"],
        "properties": {
            "order_id": {"type": "string", "minLength": 1, "description": "The shop's order."},
            "lines": {"type": "array", "items": {"type": "integer"}},
            "channel": {"enum": ["web", "store"]},
        },
    }
    body = {"name": "console.ordered", "description": "An order was placed.", "schema": schema}
    assert (await api.post("/v1/event-types", json=body)).status_code == 201

    await sign_in(page, ADMIN)
    await page.get_by_role("link", name="Event types").click()
    failed = page.get_by_role("region", name="post.failed")
    await expect(failed).to_contain_text("A post could not be published")
    # Fields come out of the schema as rows, nested ones under their parent's name.
    message = failed.get_by_role("row").filter(has_text="error.message")
    await expect(message.get_by_role("cell").nth(1)).to_have_text("string")
    await expect(message.get_by_role("cell").nth(2)).to_have_text("required")
    platform = failed.get_by_role("row").filter(has_text="platform")
    await expect(platform.get_by_role("cell").nth(1)).to_have_text("non-empty string")
    await expect(platform.get_by_role("cell").nth(2)).to_have_text("optional, may be null")
    media = page.get_by_role("region", name="media.uploaded")
    await expect(media.get_by_role("row").filter(has_text="mime")).to_contain_text(
        "string like image/jpeg"
    )
    await expect(media.get_by_label("Example of media.uploaded")).to_contain_text('"med_51xk7"')

    ordered = page.get_by_role("region", name="console.ordered")
    await expect(ordered).to_contain_text("registered")
    row = ordered.get_by_role("row").filter(has_text="order_id")
    await expect(row).to_contain_text("The shop's order.")
    await expect(ordered.get_by_role("row").filter(has_text="lines")).to_contain_text(
        "list of integer"
    )
    await expect(ordered.get_by_role("row").filter(has_text="channel")).to_contain_text(
        'one of "web", "store"'
    )
    await shot(page, "event-types")
    # The schema itself is there for those who want it, folded away.
    await ordered.get_by_text("JSON Schema").click()
    await expect(ordered.locator("pre")).to_contain_text('"minLength": 1')

    # A customer in the portal reads the same catalog.
    await page.goto(await portal_link(api, "space_catalog"))
    await expect(page.locator("#who")).to_contain_text("Portal session")
    await page.get_by_role("link", name="Event types").click()
    await expect(page.get_by_role("region", name="post.published")).to_contain_text("post_id")


async def test_a_webhooks_page_charts_its_own_success_rate_and_latency(
    page: Page, api: httpx.AsyncClient, receiver: Receiver
) -> None:
    receiver.answer(Reply(status=500), "/charted-down")
    up = await webhook(api, receiver.url("/charted-up"), "space_charted")
    down = await webhook(api, receiver.url("/charted-down"), "space_charted")
    event = await event_for(api, "space_charted")
    by_webhook = {d["webhook_id"]: d["id"] for d in event["deliveries"]}
    await wait_status(api, up["id"], by_webhook[up["id"]], "delivered")
    await wait_status(api, down["id"], by_webhook[down["id"]], "failed")
    await settled_stats(api, 1, webhook_id=up["id"])
    await settled_stats(api, 1, webhook_id=down["id"])

    await sign_in(page, ADMIN)
    await page.goto(f"/console#/webhooks/{down['id']}")
    figures = page.get_by_role("region", name="Success rate and latency")
    await expect(figures.get_by_role("status")).to_contain_text(
        "0.0 % of 3 attempts in the last hour succeeded"
    )
    await expect(figures.get_by_role("status")).to_contain_text("0 deliveries delivered, 1 failed")
    await expect(
        figures.get_by_role("img", name=re.compile("Attempt success rate"))
    ).to_be_visible()
    await expect(figures.get_by_role("img", name=re.compile("Attempt latency"))).to_be_visible()
    await shot(page, "webhook-figures")
    await figures.get_by_role("button", name="Last day").click()
    await expect(figures.get_by_role("status")).to_contain_text("attempts in the last day")

    await page.goto(f"/console#/webhooks/{up['id']}")
    await expect(figures.get_by_role("status")).to_contain_text(
        "100.0 % of 1 attempts in the last hour succeeded"
    )
    await expect(
        figures.get_by_role("img", name=re.compile("Attempt success rate. 100.0 %"))
    ).to_be_visible()

    # The webhook's owner sees the same in the portal.
    await page.goto(await portal_link(api, "space_charted"))
    await expect(page.locator("#who")).to_contain_text("Portal session")
    await page.get_by_role("link", name=receiver.url("/charted-down")).click()
    await expect(figures.get_by_role("status")).to_contain_text("0.0 % of 3 attempts")


async def test_a_portal_session_sees_its_own_tenants_overview_and_no_admin_pages(
    page: Page, api: httpx.AsyncClient, receiver: Receiver
) -> None:
    mine = await webhook(api, receiver.url("/overview-mine"), "space_overview_mine")
    theirs = await webhook(api, f"http://127.0.0.1:{closed_port()}/gone", "space_overview_theirs")
    sent = [await event_for(api, "space_overview_mine") for _ in range(2)]
    other = await event_for(api, "space_overview_theirs")
    for event in sent:
        await wait_status(api, mine["id"], event["deliveries"][0]["id"], "delivered")
    await wait_status(api, theirs["id"], other["deliveries"][0]["id"], "failed")
    everyone = await settled_stats(api, 3)
    assert everyone["totals"]["events_accepted"] > 2
    await settled_stats(api, 2, tenant_id="space_overview_mine")

    await page.goto(await portal_link(api, "space_overview_mine"))
    await expect(page.locator("#who")).to_contain_text("Portal session")
    for admin_only in ("Tokens", "Portal links", "Audit log"):
        await expect(page.get_by_role("link", name=admin_only)).to_have_count(0)
    await page.get_by_role("link", name="Overview", exact=True).click()
    cards = page.locator(".card")
    await expect(cards.filter(has_text="Events accepted").locator(".value")).to_have_text("2")
    await expect(cards.filter(has_text="Delivered").locator(".value")).to_have_text("2")
    await expect(cards.filter(has_text="Failed").locator(".value")).to_have_text("0")
    await expect(page.get_by_text("No webhook is failing or disabled.")).to_be_visible()
    await expect(page.get_by_text(theirs["url"])).to_have_count(0)
    await shot(page, "portal-overview")

    # Pages for admins answer a tenant as the API does.
    await page.goto("/console#/tokens")
    await expect(page.get_by_role("alert")).to_contain_text("403")


async def test_an_admin_issues_a_token_once_revokes_it_and_opens_a_portal_link(
    page: Page, api: httpx.AsyncClient, receiver: Receiver
) -> None:
    await sign_in(page, ADMIN)
    await page.get_by_role("link", name="Tokens").click()
    await page.get_by_label("Role").select_option("ingest")
    await page.get_by_label("Name").fill("console uploader")
    await page.get_by_role("button", name="Create token").click()
    created = page.get_by_role("status").filter(has_text="Copy the token now")
    secret = await created.locator("code.secret").text_content()
    assert secret and secret.startswith("rly_")
    row = page.get_by_role("row").filter(has_text="console uploader")
    await expect(row).to_contain_text("ingest")
    async with httpx.AsyncClient(base_url=str(api.base_url)) as client:
        bearer = {"authorization": f"Bearer {secret}"}
        assert (await client.get("/v1/event-types", headers=bearer)).status_code == 200
        # Shown once: the list, read again, never has it.
        await page.reload()
        await expect(row).to_contain_text("never")
        assert secret not in await page.content()
        await shot(page, "tokens")

        await row.get_by_role("button", name="Revoke").click()
        await row.get_by_role("button", name="Press again to revoke").click()
        await expect(row).to_have_count(0)
        assert (await client.get("/v1/event-types", headers=bearer)).status_code == 401

    await webhook(api, receiver.url("/linked"), "space_linked")
    await page.get_by_role("link", name="Portal links").click()
    await expect(page.get_by_role("heading", name="Portal links")).to_be_visible()
    await page.get_by_label("Tenant", exact=True).fill("space_linked")
    await page.get_by_role("button", name="Create portal link").click()
    shown = page.get_by_label("Portal link", exact=True)
    await expect(shown).to_have_value(re.compile(r"/console#token=rly_"))
    url = await shown.input_value()
    assert url.startswith(str(api.base_url))
    await shot(page, "portal-links")
    await page.goto(url)
    await expect(page.locator("#who")).to_contain_text("Portal session")
    await expect(page.get_by_role("link", name=receiver.url("/linked"))).to_be_visible()


async def test_the_audit_log_filters_and_pages_through_who_changed_what(
    page: Page, api: httpx.AsyncClient, receiver: Receiver
) -> None:
    hook = await webhook(api, receiver.url("/audited"), "space_audited")
    for n in range(50):
        response = await api.patch(f"/v1/webhooks/{hook['id']}", json={"description": f"v{n}"})
        assert response.status_code == 200, response.text
    rotated = await api.post(f"/v1/webhooks/{hook['id']}/rotate-secret", json={})
    assert rotated.status_code == 200, rotated.text
    for _ in range(200):  # the trail reaches history a moment later
        listed = await api.get("/v1/audit-log", params={"tenant_id": "space_audited", "limit": 100})
        if len(listed.json()["data"]) == 52:
            break
        await asyncio.sleep(0.1)

    await sign_in(page, ADMIN)
    await page.get_by_role("link", name="Audit log").click()
    filters = page.get_by_role("search", name="Filter the audit log")
    await filters.get_by_label("Tenant").fill("space_audited")
    await filters.get_by_role("button", name="Filter").click()
    rows = page.locator("tbody tr")
    await expect(rows).to_have_count(50)
    await expect(rows.first).to_contain_text("webhook.secret.rotate")
    await expect(rows.first).to_contain_text("tok_bootstrap")
    await page.get_by_role("link", name="Next page").click()
    await expect(rows).to_have_count(2)
    await expect(rows.last).to_contain_text("webhook.create")
    await shot(page, "audit")

    await filters.get_by_label("Action").fill("webhook.secret.rotate")
    await filters.get_by_role("button", name="Filter").click()
    await expect(rows).to_have_count(1)
    await expect(page).to_have_url(re.compile("action=webhook.secret.rotate"))
    await rows.get_by_role("link", name=hook["id"]).click()
    await expect(page.get_by_role("heading", name=re.compile("Webhook"))).to_contain_text(
        receiver.url("/audited")
    )
    await page.go_back()
    await filters.get_by_label("Until").fill("2001-01-01T00:00")
    await filters.get_by_role("button", name="Filter").click()
    await expect(page.get_by_text("No entries match these filters.")).to_be_visible()
