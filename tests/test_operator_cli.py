"""The operator CLI against a real `relay dev` (API, worker, Redis): output and exit status."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.receivers import Receiver, Reply
from tests.support import Dev, run_relay, start_dev, stop_dev

# One test process runs the module, so that its `relay dev` starts once.
pytestmark = [pytest.mark.system, pytest.mark.xdist_group("operator_cli")]


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dev]:
    # A long second step: a delivery that failed once stays pending, for `cancel`.
    running = start_dev(tmp_path_factory.mktemp("cli") / "data", RELAY_RETRY_SCHEDULE="600")
    yield running
    stop_dev(running)


@pytest.fixture
async def api(dev: Dev) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"authorization": f"Bearer {dev.token}"}
    async with httpx.AsyncClient(base_url=dev.url, headers=headers) as client:
        yield client


def _env(dev: Dev, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    return {**env, "RELAY_URL": dev.url, "RELAY_TOKEN": dev.token, **extra}


async def relay(dev: Dev, *args: str, code: int = 0, **env: str) -> str:
    """Run `relay <args>`, check its exit status, and return what it printed for that status."""
    done = await run_relay(list(args), _env(dev, **env))
    out, err = done.stdout.decode(), done.stderr.decode()
    assert done.returncode == code, (args, done.returncode, out, err)
    assert "Traceback" not in err
    return out if code == 0 else err


async def _delivery(
    api: httpx.AsyncClient, delivery_id: str, status: str, attempts: int = 1
) -> dict[str, Any]:
    for _ in range(400):
        data: dict[str, Any] = (await api.get(f"/v1/deliveries/{delivery_id}")).json()["data"]
        if data["status"] == status and data["attempt_count"] >= attempts:
            return data
        await asyncio.sleep(0.05)
    raise AssertionError(f"{delivery_id} is {data['status']}, not {status}")


async def _hook(api: httpx.AsyncClient, url: str, tenant: str) -> str:
    made = await api.post("/v1/webhooks", json={"url": url, "tenant_id": tenant})
    assert made.status_code == 201, made.text
    hook_id: str = made.json()["data"]["id"]
    return hook_id


async def _post(api: httpx.AsyncClient, tenant: str) -> dict[str, Any]:
    body = {"type": "post.published", "tenant_id": tenant, "data": {"post_id": "p_1"}}
    response = await api.post("/v1/events", json=body)
    assert response.status_code == 202, response.text
    event: dict[str, Any] = response.json()["data"]
    return event


async def test_every_operator_command_against_a_running_relay(
    dev: Dev, api: httpx.AsyncClient
) -> None:
    async with Receiver() as rx:
        rx.answer(Reply(410), path="/gone")  # fails the delivery at once, disables the webhook
        rx.answer(Reply(500), path="/broken")  # fails once, then waits 600 s: stays pending
        gone = await _hook(api, rx.url("/gone"), "t_gone")
        broken = await _hook(api, rx.url("/broken"), "t_broken")
        fine = await _hook(api, rx.url("/fine"), "t_fine")
        since = (await api.get(f"/v1/webhooks/{gone}")).json()["data"]["created_at"]
        failed = [(await _post(api, "t_gone"))["deliveries"][0]["id"] for _ in range(2)]
        waiting = (await _post(api, "t_broken"))["deliveries"][0]["id"]
        event = await _post(api, "t_fine")
        for delivery_id in failed:
            await _delivery(api, delivery_id, "failed")
        await _delivery(api, event["deliveries"][0]["id"], "delivered")
        await _delivery(api, waiting, "pending")  # its first attempt made and failed

        # deliveries list: a table by default, JSON with --json, each filter applied.
        listed = await relay(dev, "deliveries", "list")
        header = listed.splitlines()[0].split()
        assert header[:4] == ["ID", "WEBHOOK_ID", "EVENT_TYPE", "STATUS"]
        assert all(d in listed for d in [*failed, waiting])
        only_failed = json.loads(
            await relay(dev, "deliveries", "list", "--status", "failed", "--json")
        )
        assert [d["id"] for d in only_failed["data"]] == failed[::-1]
        by_hook = await relay(dev, "deliveries", "list", "--webhook", broken)
        assert waiting in by_hook and failed[0] not in by_hook
        assert failed[0] in await relay(dev, "deliveries", "list", "--since", since)
        bad = await relay(dev, "deliveries", "list", "--since", "yesterday", code=1)
        assert "since" in bad

        # cancel: a pending delivery is canceled; a second cancel is refused by the API.
        assert "canceled" in await relay(dev, "deliveries", "cancel", waiting)
        refused = await relay(dev, "deliveries", "cancel", waiting, code=1)
        assert "only a pending delivery can be canceled" in refused

        # webhooks: the 410 disabled `gone`; enable it again, disable `fine`.
        hooks = await relay(dev, "webhooks", "list")
        assert all(h in hooks for h in (gone, broken, fine))
        assert gone in await relay(dev, "webhooks", "enable", gone)
        rx.answer(Reply(200), path="/gone")
        shown = json.loads(await relay(dev, "webhooks", "disable", fine, "--json"))
        assert shown["enabled"] is False

        # retry one failed delivery, then recover the other through the time window.
        assert failed[0] in await relay(dev, "deliveries", "retry", failed[0])
        await _delivery(api, failed[0], "delivered")
        assert "requeued 1" in await relay(dev, "recover", gone, "--since", since)
        await _delivery(api, failed[1], "delivered")

        # events get: the event and its deliveries.
        shown_event = await relay(dev, "events", "get", event["id"])
        assert event["id"] in shown_event and event["deliveries"][0]["id"] in shown_event

        # tokens: list, revoke, and a second revoke is the API's 404.
        issued = (await api.post("/v1/tokens", json={"role": "ingest", "name": "ci"})).json()
        token_id = issued["data"]["id"]
        assert token_id in await relay(dev, "tokens", "list")
        assert token_id in await relay(dev, "tokens", "revoke", token_id)
        assert "No such token" in await relay(dev, "tokens", "revoke", token_id, code=1)
        assert "No such delivery" in await relay(
            dev, "deliveries", "retry", "dlv_" + "0" * 26, code=1
        )


async def test_usage_errors_exit_2(dev: Dev) -> None:
    assert "RELAY_TOKEN" in await relay(dev, "webhooks", "list", code=2, RELAY_TOKEN="")
    await relay(dev, "deliveries", code=2)
    await relay(dev, "recover", "wh_x", code=2)  # --since is required


async def test_a_token_the_api_refuses_exits_1_with_its_detail(dev: Dev) -> None:
    said = await relay(dev, "tokens", "list", code=1, RELAY_TOKEN="rly_wrong")
    assert "unknown or has been revoked" in said


async def test_deliveries_get_shows_a_delivery_with_its_attempts(
    dev: Dev, api: httpx.AsyncClient
) -> None:
    async with Receiver() as rx:
        rx.answer(Reply(503), path="/flaky")
        await _hook(api, rx.url("/flaky"), "t_get")
        delivery_id = (await _post(api, "t_get"))["deliveries"][0]["id"]
        await _delivery(api, delivery_id, "pending")  # its first attempt made and failed

    shown = await relay(dev, "deliveries", "get", delivery_id)
    head, _, attempts = shown.partition("attempts:")
    assert delivery_id in head and "pending" in head
    rows = attempts.strip().splitlines()
    assert rows[0].split()[:3] == ["NUMBER", "STARTED_AT", "STATUS_CODE"]
    assert rows[1].split()[0] == "1" and "503" in rows[1].split()
    assert "scheduled" in rows[1].split()
    as_json = json.loads(await relay(dev, "deliveries", "get", delivery_id, "--json"))
    assert as_json["id"] == delivery_id and as_json["attempts"][0]["status_code"] == 503
    assert "No such delivery" in await relay(dev, "deliveries", "get", "dlv_" + "0" * 26, code=1)


async def test_times_may_be_given_as_a_while_ago(dev: Dev, api: httpx.AsyncClient) -> None:
    async with Receiver() as rx:
        hook_id = await _hook(api, rx.url("/ago"), "t_ago")
        delivery_id = (await _post(api, "t_ago"))["deliveries"][0]["id"]
    for since in ("30m", "1h", "2d", "1w"):
        assert delivery_id in await relay(dev, "deliveries", "list", "--since", since)
    assert delivery_id not in await relay(dev, "deliveries", "list", "--until", "1h")
    listed = await relay(dev, "deliveries", "list", "--since", "1h", "--until", "0s", "--json")
    assert delivery_id in [d["id"] for d in json.loads(listed)["data"]]
    assert "requeued 0" in await relay(dev, "recover", hook_id, "--since", "2d", "--until", "1m")


async def test_an_unknown_status_is_a_usage_error_listing_the_statuses(dev: Dev) -> None:
    said = await relay(dev, "deliveries", "list", "--status", "faild", code=2)
    assert "faild" in said
    assert all(s in said for s in ("pending", "delivering", "delivered", "failed", "canceled"))


async def test_a_missing_variable_is_named_with_what_it_holds(dev: Dev, tmp_path: Path) -> None:
    no_token = await relay(dev, "webhooks", "list", code=2, RELAY_TOKEN="")
    assert "RELAY_TOKEN (an API token" in no_token
    assert "RELAY_URL" not in no_token and "base URL" not in no_token
    no_url = await relay(dev, "webhooks", "list", code=2, RELAY_URL="")
    assert "RELAY_URL (the API's base URL" in no_url
    assert "RELAY_TOKEN" not in no_url and "API token" not in no_url
    # Neither, and no `relay dev` on the data dir to fall back on: both named.
    neither = await relay(
        dev, "webhooks", "list", code=2, RELAY_URL="", RELAY_TOKEN="", RELAY_DATA_DIR=str(tmp_path)
    )
    assert "RELAY_URL (the API's base URL" in neither and "RELAY_TOKEN (an API token" in neither
    assert "no `relay dev` is running" in neither


async def test_with_neither_variable_set_it_uses_the_relay_dev_on_the_data_dir(dev: Dev) -> None:
    env = {"RELAY_URL": "", "RELAY_TOKEN": "", "RELAY_DATA_DIR": str(dev.data_dir)}
    listed = await relay(dev, "deliveries", "list", **env)
    assert listed.splitlines()[0].split()[:2] == ["ID", "WEBHOOK_ID"]
    # A relay dev given its admin token by the environment: the same variable names it here.
    refused = await relay(dev, "tokens", "list", code=1, RELAY_ADMIN_TOKEN="rly_other", **env)
    assert "unknown or has been revoked" in refused


def test_an_operator_command_loads_no_server_code(dev: Dev) -> None:
    # Each of these costs tens of milliseconds at start-up; one HTTP call needs none of them.
    heavy = ("starlette", "uvicorn", "opentelemetry", "redis", "asyncpg", "pydantic", "arq")
    probe = (
        "import sys; from relay.cli import main; status = main(['tokens', 'list']); "
        f"print(status, sorted({{m.split('.')[0] for m in sys.modules}} & set({heavy!r})))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], env=_env(dev), capture_output=True, text=True, timeout=30
    )
    assert done.stdout.splitlines()[-1] == "0 []", done.stdout + done.stderr


async def test_events_send_posts_a_file_in_batches_and_prints_each_lines_result(
    dev: Dev, api: httpx.AsyncClient, tmp_path: Path
) -> None:
    def event(**fields: Any) -> str:
        return json.dumps({"type": "post.published", "tenant_id": "t_send", **fields})

    lines = [
        event(data={"post_id": "p_1"}, id="send-1"),
        "",
        event(data={}),
        event(data={"post_id": "p_3"}),
        event(data={"post_id": "p_1"}, id="send-1"),  # in the second batch, a repeat of line 1
    ]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")
    argv = ["events", "send", "--file", str(path), "--batch", "2"]

    sent = await run_relay([*argv, "--json"], _env(dev))
    assert sent.returncode == 1, sent.stderr  # one event was refused
    rows = json.loads(sent.stdout)
    assert [(r["line"], r["status"]) for r in rows] == [(1, 202), (3, 422), (4, 202), (5, 200)]
    assert rows[3]["id"] == rows[0]["id"]
    assert "data.post_id: Field required" in rows[1]["detail"]
    shown = (await api.get(f"/v1/events/{rows[2]['id']}")).json()["data"]
    assert shown["data"] == {"post_id": "p_3"}

    again = await run_relay(argv, _env(dev))
    printed = again.stdout.decode()
    assert again.returncode == 1
    assert printed.splitlines()[0].split() == ["LINE", "STATUS", "ID", "DETAIL"]
    assert rows[0]["id"] in printed and "3 of 4 events accepted, 1 refused" in printed

    path.write_text(event(data={"post_id": "p_5"}) + "\n")
    assert "1 of 1 events accepted" in await relay(dev, "events", "send", "--file", str(path))
    path.write_text(event(data={"post_id": "p_6"}) + "\n{not json\n")
    said = await relay(dev, "events", "send", "--file", str(path), code=2)
    assert "line 2" in said
    listed = (await api.get("/v1/events", params={"tenant_id": "t_send"})).json()["data"]
    assert "p_6" not in [e["data"]["post_id"] for e in listed]


async def _failed_count(api: httpx.AsyncClient, webhook_id: str) -> int:
    failed, cursor = 0, None
    while True:
        params = {"webhook_id": webhook_id, "status": "failed", "limit": 100, "cursor": cursor}
        page = (await api.get("/v1/deliveries", params=params)).json()
        failed += len(page["data"])
        if not (cursor := page["next_cursor"]):
            return failed


async def test_recover_counts_every_delivery_it_sent_again_not_only_the_first_batch(
    dev: Dev, api: httpx.AsyncClient
) -> None:
    # More than the 200 a recovery requeues at once: the rest go in the background.
    count = 201
    async with Receiver() as rx:
        # Fails them all, the webhook disabled by the first answer; late enough for every event
        # to be posted first (an event posted after it has no delivery to the webhook).
        rx.answer(Reply(410, delay=5), path="/many")
        hook = await _hook(api, rx.url("/many"), "t_many")
        since = (await api.get(f"/v1/webhooks/{hook}")).json()["data"]["created_at"]
        made = 0
        for start in range(0, count, 100):
            batch = [
                {"type": "post.published", "tenant_id": "t_many", "data": {"post_id": f"p_{n}"}}
                for n in range(start, min(count, start + 100))
            ]
            posted = await api.post("/v1/events/batch", json={"events": batch})
            assert posted.status_code == 207, posted.text
            made += sum(len(item["data"]["deliveries"]) for item in posted.json()["data"])
        assert made == count
        for _ in range(600):  # a minute: the suite may keep both cores busy meanwhile
            if await _failed_count(api, hook) == count:
                break
            await asyncio.sleep(0.1)
        listed = (await api.get("/v1/deliveries", params={"webhook_id": hook})).json()["data"]
        assert await _failed_count(api, hook) == count, {d["status"] for d in listed}

        rx.answer(Reply(200), path="/many")
        assert hook in await relay(dev, "webhooks", "enable", hook)
        said = await relay(dev, "recover", hook, "--since", since)
        assert f"requeued {count} failed deliveries" in said


def _recovery_answer(status: str, requeued: int) -> Reply:
    """What the API answers about a recovery, for a receiver standing in for it."""
    recovery = {
        "id": "rcv_01JDX3C2Q6V0M7W9Z4B8K5N1TA",
        "webhook_id": "wh_stalled",
        "tenant_id": None,
        "event_type": None,
        "status": status,
        "requeued": requeued,
        "since": "2026-01-01T00:00:00Z",
        "until": "2026-01-02T00:00:00Z",
        "url": "/v1/recoveries/rcv_01JDX3C2Q6V0M7W9Z4B8K5N1TA",
    }
    body = json.dumps({"data": recovery}).encode()
    return Reply(200, headers={"content-type": "application/json"}, body=body)


def _env_for(api: Receiver) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    return {**env, "RELAY_URL": api.url(""), "RELAY_TOKEN": "rk_any"}


async def test_recover_stops_following_a_recovery_whose_count_stops_and_says_where_it_is() -> None:
    # No worker carries this recovery on: the API says "running, 200 so far" for ever.
    async with Receiver() as api:
        api.answer(_recovery_answer("running", 200))
        args = ["recover", "wh_stalled", "--since", "1h", "--wait", "1"]
        done = await run_relay(args, _env_for(api))
    out = done.stdout.decode()
    assert done.returncode == 0, (out, done.stderr.decode())
    assert "still running: requeued 200 failed deliveries so far, none in the last 1 s" in out
    assert "follow it with GET /v1/recoveries/rcv_01JDX3C2Q6V0M7W9Z4B8K5N1TA" in out
    assert [r.method for r in api.requests][:2] == ["POST", "GET"]


async def test_recover_follows_a_recovery_past_its_wait_while_the_count_moves() -> None:
    async with Receiver() as api:
        api.answer(_recovery_answer("done", 212))
        # Twelve reads, 0.25 s apart, each one further on: three seconds, against a 1 s wait.
        for n in range(200, 212):
            api.fail(1, _recovery_answer("running", n))
        args = ["recover", "wh_moving", "--since", "1h", "--wait", "1"]
        done = await run_relay(args, _env_for(api))
    out = done.stdout.decode()
    assert done.returncode == 0, (out, done.stderr.decode())
    assert "requeued 212 failed deliveries" in out
    assert len(api.requests) == 13


@pytest.mark.parametrize("wait", ["-1", "soon", "nan"])
async def test_recover_refuses_a_wait_that_is_no_number_of_seconds(wait: str) -> None:
    async with Receiver() as api:
        done = await run_relay(["recover", "wh_x", "--since", "1h", "--wait", wait], _env_for(api))
    assert done.returncode == 2
    assert "not a number of seconds" in done.stderr.decode()
    assert api.requests == []
