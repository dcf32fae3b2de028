"""Overload and outages: per-token rate limits, and Redis stopped or paused."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
import redis
import redis.asyncio

from relay.app import OPERATIONS
from relay.delivery.model import Transition
from relay.delivery.store import script_text
from relay.store import keys
from tests.fixtures import ClientFactory
from tests.flows import Workers, post_event, wait_status, webhook
from tests.receivers import Receiver, Reply
from tests.support import PausingProxy, RedisServer, wait_until


async def test_a_token_over_its_rate_gets_429_with_retry_after(
    make_client: ClientFactory,
    token_for,  # type: ignore[no-untyped-def]
) -> None:
    noisy = await make_client(token=await token_for("ingest"), api_rate_limit="5")
    quiet = await make_client(token=await token_for("ingest"), api_rate_limit="5")
    # Within one wall-clock second, so the window cannot roll over mid-burst.
    await asyncio.sleep(1 - time.time() % 1)
    answers = [await noisy.get("/v1/events/evt_x") for _ in range(8)]
    limited = [r for r in answers if r.status_code == 429]
    assert len(limited) == 3
    assert limited[0].headers["retry-after"] == "1"
    assert limited[0].headers["content-type"] == "application/problem+json"
    assert limited[0].json()["code"] == "rate_limited"
    # Another token is not affected by its neighbour's burst.
    assert (await quiet.get("/v1/events/evt_x")).status_code == 404
    await asyncio.sleep(1.1)
    assert (await noisy.get("/v1/events/evt_x")).status_code == 404


async def test_paused_redis_means_quick_503s_and_nothing_lost(
    make_client: ClientFactory, workers: Workers, own_redis: RedisServer
) -> None:
    server = own_redis
    client = await make_client(redis_url=server.url)
    [worker] = await workers(1, RELAY_REDIS_URL=server.url)
    async with Receiver() as rx:
        await webhook(client, rx.url("/hook"))
        before = (await post_event(client)).json()["data"]["id"]
        await rx.wait_for(1)

        server.pause()
        started = time.monotonic()
        during = await post_event(client)
        took = time.monotonic() - started
        ready = await client.get("/readyz")
        await asyncio.sleep(3)  # the worker keeps polling a Redis that does not answer
        server.resume()

        assert during.status_code == 503, during.text
        assert during.headers["content-type"] == "application/problem+json"
        assert took < 2.0, took
        assert ready.status_code == 503

        after = await post_event(client)
        assert after.status_code == 202
        await rx.wait_for(2, timeout=30)
        assert worker.poll() is None, "the worker must survive the outage"
    received = {r.headers["webhook-id"] for r in rx.requests}
    assert {before, after.json()["data"]["id"]} <= received


async def test_stopped_redis_then_back(
    make_client: ClientFactory, workers: Workers, own_redis: RedisServer
) -> None:
    server = own_redis
    client = await make_client(redis_url=server.url)
    [worker] = await workers(1, RELAY_REDIS_URL=server.url)
    async with Receiver() as rx:
        await webhook(client, rx.url("/hook"))
        accepted = (await post_event(client)).json()["data"]["id"]
        await asyncio.to_thread(server.stop)
        down = await post_event(client)
        assert down.status_code == 503
        await asyncio.sleep(2)
        await asyncio.to_thread(server.start)
        again = await post_event(client)
        assert again.status_code == 202
        await rx.wait_for(2, timeout=30)
        assert worker.poll() is None
    assert {accepted, again.json()["data"]["id"]} <= {r.headers["webhook-id"] for r in rx.requests}


def _spin(port: int) -> None:
    """Run a script that never ends by itself, until SCRIPT KILL stops it."""
    client = redis.Redis(port=port)
    with contextlib.suppress(redis.RedisError):
        client.eval("while true do end", 0)
    client.close()


def _kill_script(client: redis.Redis) -> bool:
    try:
        client.script_kill()
    except redis.RedisError:  # NOTBUSY: nothing running (yet)
        return False
    return True


async def _answers_503_problems(client: httpx.AsyncClient, tenant: str) -> None:
    requests = [
        client.build_request(
            "POST", "/v1/webhooks", json={"url": "https://a.example.com/", "tenant_id": tenant}
        ),
        client.build_request(
            "POST",
            "/v1/webhooks",
            json={"url": "https://b.example.com/", "tenant_id": tenant},
            headers={"Idempotency-Key": "during-failover"},
        ),
        client.build_request(
            "POST",
            "/v1/events",
            json={"type": "post.published", "tenant_id": tenant, "data": {"post_id": 1}},
        ),
    ]
    for request in requests:
        response = await client.send(request)
        assert response.status_code == 503, (request.url, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["retry-after"] == "1"
        assert response.json()["code"] == "unavailable"


async def test_a_demoted_primary_answers_503_not_500(
    make_client: ClientFactory,
    own_redis: RedisServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = await make_client(redis_url=own_redis.url)
    await webhook(client, "https://hooks.example.com/", tenant="t1")
    new_primary = RedisServer(tmp_path / "new-primary").start()
    try:
        # A failover: the old primary becomes a replica of the new one and refuses writes.
        demoted = redis.Redis(port=own_redis.port)
        demoted.replicaof("127.0.0.1", new_primary.port)
        wait_until(lambda: demoted.info("replication")["master_link_status"] == "up")
        demoted.close()
        await _answers_503_problems(client, "t1")
    finally:
        new_primary.stop()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_busy_script_answers_503_not_500(
    make_client: ClientFactory, own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    client = await make_client(redis_url=own_redis.url)
    await webhook(client, "https://hooks.example.com/", tenant="t1")
    admin = redis.Redis(port=own_redis.port)
    admin.config_set("busy-reply-threshold", 100)
    # Another client's script that never ends: Redis answers everyone else BUSY.
    spinning = threading.Thread(target=_spin, args=(own_redis.port,), daemon=True)
    spinning.start()
    try:
        await asyncio.sleep(0.3)
        await _answers_503_problems(client, "t1")
    finally:
        wait_until(lambda: _kill_script(admin))
        spinning.join(10)
        admin.close()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def _fill_until_refused(client: httpx.AsyncClient, server: RedisServer) -> redis.Redis:
    """Post events into a Redis whose maxmemory is just above what it holds, until it refuses
    them; then keep it over the limit, as a full Redis stays until someone acts. Its client,
    to empty it again."""
    admin = redis.Redis(port=server.port)
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", admin.info("memory")["used_memory"] + 256 * 1024)
    answers: list[int] = []
    while len(answers) < 1000 and 503 not in answers:
        body = {"post_id": f"p_{len(answers)}", "text": "x" * 2000}
        answers.append((await post_event(client, data=body)).status_code)
    assert set(answers) == {202, 503}, sorted(set(answers))
    admin.config_set("maxmemory", admin.info("memory")["used_memory"] // 2)
    return admin


def _path(template: str, ids: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)(:\w+)?\}", lambda m: ids[m[1]], template)


async def test_a_full_redis_answers_503_on_every_route_and_says_why(
    make_client: ClientFactory, own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    client = await make_client(redis_url=own_redis.url)
    hook = await webhook(client, "https://hooks.example.com/", tenant="space_42")
    token = (await client.post("/v1/tokens", json={"role": "ingest"})).json()["data"]["id"]
    event = (await post_event(client)).json()["data"]
    ids = {
        "id": hook["id"],
        "delivery_id": event["deliveries"][0]["id"],
        "recovery_id": "rcv_0",
        "name": "post.published",
    }
    admin = await _fill_until_refused(client, own_redis)
    try:
        for op in OPERATIONS:
            path = _path(op.path, ids)
            if op.path == "/v1/tokens/{id:token}":
                path = f"/v1/tokens/{token}"
            elif op.path.startswith("/v1/events/"):
                path = _path(op.path, {"id": event["id"]})
            response = await client.request(op.method, path, json={})
            assert response.status_code == 503, (op.method, path, response.text)
            assert response.headers["content-type"] == "application/problem+json"
            assert response.headers["retry-after"] == "1"
            assert response.json()["code"] == "unavailable"
        # Past the rate limiter too: each write refused by the script or command making it.
        unlimited = await make_client(redis_url=own_redis.url, api_rate_limit="0")
        for method, path, body, headers in [
            ("POST", "/v1/events", _event_body(), {}),
            ("POST", "/v1/events", _event_body(), {"Idempotency-Key": "while-full"}),
            ("POST", "/v1/webhooks", {"url": "https://b.example.com/", "tenant_id": "t"}, {}),
            ("PATCH", f"/v1/webhooks/{hook['id']}", {"description": "full"}, {}),
            ("POST", "/v1/tokens", {"role": "admin"}, {}),
        ]:
            response = await unlimited.request(method, path, json=body, headers=headers)
            assert response.status_code == 503, (method, path, response.text)
            assert response.json()["code"] == "unavailable"
        assert (await client.get("/healthz")).status_code == 200
    finally:
        admin.config_set("maxmemory", 0)
        admin.close()
    assert (await post_event(client)).status_code == 202
    said = [r.getMessage() for r in caplog.records if r.name == "relay.api"]
    assert any("redis is out of memory" in line for line in said), said
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def _event_body() -> dict[str, object]:
    return {"type": "post.published", "tenant_id": "space_42", "data": {"post_id": "p_full"}}


async def test_readiness_fails_while_redis_is_full_and_says_so(
    make_client: ClientFactory, own_redis: RedisServer
) -> None:
    client = await make_client(redis_url=own_redis.url)
    assert (await client.get("/readyz")).status_code == 200
    admin = await _fill_until_refused(client, own_redis)
    try:
        full = await client.get("/readyz")
    finally:
        admin.config_set("maxmemory", 0)
        admin.close()
    assert full.status_code == 503
    assert full.headers["content-type"] == "application/problem+json"
    assert "Redis is out of memory" in full.json()["detail"]
    assert (await client.get("/readyz")).status_code == 200


def _value(scrape: str, name: str) -> float | None:
    match = re.search(rf"^{name} (\S+)$", scrape, re.M)
    return float(match[1]) if match else None


async def test_metrics_count_what_a_full_redis_refuses_while_it_is_full(
    make_client: ClientFactory, own_redis: RedisServer
) -> None:
    client = await make_client(redis_url=own_redis.url)
    assert _value((await client.get("/metrics")).text, "relay_redis_oom_errors_total") == 0
    admin = await _fill_until_refused(client, own_redis)
    try:
        first = (await client.get("/metrics")).text
        for _ in range(3):
            assert (await client.get("/v1/webhooks")).status_code == 503
        then = (await client.get("/metrics")).text
    finally:
        admin.config_set("maxmemory", 0)
        admin.close()
    assert _value(first, "relay_redis_up") == 1
    refused = _value(first, "relay_redis_oom_errors_total")
    assert refused is not None and refused >= 1
    assert _value(then, "relay_redis_oom_errors_total") == refused + 3


async def test_workers_wait_for_a_full_redis_and_are_seen_doing_so(
    make_client: ClientFactory, workers: Workers, own_redis: RedisServer
) -> None:
    client = await make_client(redis_url=own_redis.url)
    await webhook(client, "https://hooks.example.com/")
    admin = await _fill_until_refused(client, own_redis)
    try:
        scrape = (await client.get("/metrics")).text
        by_api = _value(scrape, "relay_redis_oom_errors_total")
        [worker] = await workers(1, RELAY_REDIS_URL=own_redis.url)

        deadline = time.monotonic() + 20
        while (_value(scrape, "relay_redis_oom_errors_total") or 0) <= (by_api or 0):
            assert time.monotonic() < deadline, "the worker's refused claims were never counted"
            assert worker.poll() is None
            await asyncio.sleep(0.2)
            scrape = (await client.get("/metrics")).text
        assert _value(scrape, "relay_workers") == 1
        assert _value(scrape, "relay_deliveries_pending") == _value(scrape, "relay_deliveries_due")
    finally:
        admin.config_set("maxmemory", 0)
        admin.close()
    assert worker.poll() is None


async def test_a_full_redis_still_lets_the_history_writer_drain_it(
    make_client: ClientFactory, workers: Workers, own_redis: RedisServer
) -> None:
    client = await make_client(redis_url=own_redis.url)

    async def backlog() -> float | None:
        return _value((await client.get("/metrics")).text, "relay_history_backlog")

    async def drained() -> None:
        deadline = time.monotonic() + 20
        while await backlog() != 0:
            assert time.monotonic() < deadline, f"{await backlog()} records still wait in Redis"
            await asyncio.sleep(0.2)

    # A worker that has written history once, then stops: what comes next waits for history.
    [first] = await workers(1, RELAY_REDIS_URL=own_redis.url)
    assert (await post_event(client)).status_code == 202
    await drained()
    first.send_signal(signal.SIGTERM)
    await asyncio.to_thread(first.wait, 15)

    admin = await _fill_until_refused(client, own_redis)
    try:
        waiting = await backlog()
        assert waiting is not None and waiting > 10
        await workers(1, RELAY_REDIS_URL=own_redis.url)
        await drained()
        assert (await client.get("/readyz")).status_code == 503  # still over its maxmemory
    finally:
        admin.config_set("maxmemory", 0)
        admin.close()


async def test_a_claim_whose_reply_is_lost_costs_seconds_not_a_lease(
    make_client: ClientFactory, workers: Workers, own_redis: RedisServer
) -> None:
    client = await make_client(redis_url=own_redis.url)
    claim = f'"rate":"{keys.ENDPOINT_RATE_PREFIX}"'.encode()  # only a claim's argument names it
    async with Receiver() as rx, PausingProxy(own_redis, claim, 2.0) as proxy:
        hook = await webhook(client, rx.url("/hook"))
        accepted = [(await post_event(client)).json()["data"] for _ in range(20)]
        # As on any Redis a worker has used: otherwise the frozen claim would only be told
        # NOSCRIPT, and the worker would load the script and claim again.
        direct = redis.asyncio.Redis.from_url(own_redis.url)
        await direct.script_load(script_text(Transition.CLAIM.value))
        await direct.aclose()
        # Redis freezes with the worker's first claim in its socket: the worker gives up on it
        # after 1.5 s, and Redis runs it once thawed, leasing all 20 to a reply nobody reads.
        # The attempt's lease is RELAY_DELIVERY_TIMEOUT + 8 s: 23 s.
        await workers(
            1,
            RELAY_REDIS_URL=proxy.url,
            RELAY_DELIVERY_TIMEOUT="15",
            RELAY_ENDPOINT_CONCURRENCY="20",
        )
        await asyncio.wait_for(proxy.resumed.wait(), 30)
        await rx.wait_for(20, timeout=40)
        took = max(r.received_at for r in rx.requests) - proxy.resumed_at
        for event in accepted:
            await wait_status(client, hook["id"], event["deliveries"][0]["id"], "delivered")
    assert took < 10, f"the last delivery came {took:.1f} s after Redis was back"
    assert {r.headers["webhook-id"] for r in rx.requests} == {e["id"] for e in accepted}


async def test_an_attempt_longer_than_a_claims_lease_keeps_its_delivery_and_its_slot(
    admin: httpx.AsyncClient, workers: Workers
) -> None:
    # A claim leases for 5 s; an attempt that outlasts it holds its delivery, and its endpoint's
    # only slot, for the attempt's whole lease (RELAY_DELIVERY_TIMEOUT + 8 s).
    await workers(2, RELAY_DELIVERY_TIMEOUT="10", RELAY_ENDPOINT_CONCURRENCY="1")
    async with Receiver() as rx:
        rx.answer(Reply(delay=6.5))
        hook = await webhook(admin, rx.url("/slow"))
        accepted = [(await post_event(admin)).json()["data"] for _ in range(2)]
        for event in accepted:
            await wait_status(admin, hook["id"], event["deliveries"][0]["id"], "delivered", 30)
    first, second = rx.requests
    assert [r.headers["webhook-id"] for r in rx.requests] == [e["id"] for e in accepted]
    assert second.received_at - first.received_at > 6
