"""The delivery engine under faults: Redis killed, workers paused or stopped, clocks that disagree,
secrets that cannot be decrypted, endpoints that hang — and still every delivery ends, once logged.

Real API (in process), real `relay worker` subprocesses, real redis-server, real receivers.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio

from relay.secrets import generate_master_key
from relay.store import keys
from tests.fixtures import ClientFactory
from tests.flows import Workers, post_event, wait_status, webhook
from tests.receivers import Receiver, Reply
from tests.support import RedisServer, free_port, relay_env, spawn_relay, wait_until

Json = dict[str, Any]


async def _delivery(client: httpx.AsyncClient, hook: Json, delivery_id: str) -> Json:
    response = await client.get(f"/v1/webhooks/{hook['id']}/deliveries/{delivery_id}")
    assert response.status_code == 200, response.text
    data: Json = response.json()["data"]
    return data


async def _accepted(client: httpx.AsyncClient, tenant: str = "space_42") -> Json:
    response = await post_event(client, tenant)
    assert response.status_code == 202, response.text
    data: Json = response.json()["data"]
    return data


def _only_delivery(event: Json) -> str:
    [delivery] = event["deliveries"]
    delivery_id: str = delivery["id"]
    return delivery_id


async def _unfinished(client: httpx.AsyncClient, hook: Json) -> bool:
    for status in ("pending", "delivering"):
        page = await client.get(
            f"/v1/webhooks/{hook['id']}/deliveries", params={"status": status, "limit": 1}
        )
        if page.json()["data"]:
            return True
    return False


async def _commands(client: redis.asyncio.Redis) -> int:
    stats = await client.info("commandstats")
    return sum(int(v["calls"]) for v in stats.values())


async def test_a_worker_rides_out_redis_killed_and_restarted(
    make_client: ClientFactory, workers: Workers, own_redis: RedisServer
) -> None:
    client = await make_client(redis_url=own_redis.url)
    [worker] = await workers(1, RELAY_REDIS_URL=own_redis.url)
    async with Receiver() as rx:
        rx.answer(Reply(200, delay=0.5))
        await webhook(client, rx.url("/hook"))
        before = [(await _accepted(client))["id"] for _ in range(5)]
        await rx.wait_for(1, timeout=15)
        await asyncio.sleep(1.2)  # past the AOF's one-second fsync of what was accepted
        assert own_redis.process
        own_redis.process.kill()  # kill -9, with attempts in flight
        await asyncio.to_thread(own_redis.process.wait, 10)
        await asyncio.sleep(1)
        await asyncio.to_thread(own_redis.start)
        after = [(await _accepted(client))["id"] for _ in range(5)]
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            if {r.headers["webhook-id"] for r in rx.requests} >= set(before + after):
                break
            await asyncio.sleep(0.2)
        assert worker.poll() is None, "the worker must not exit when Redis restarts"
    assert {r.headers["webhook-id"] for r in rx.requests} >= set(before + after)


async def test_a_lost_delivery_is_found_behind_a_backlog_of_waiting_ones(
    admin: httpx.AsyncClient, workers: Workers, redis_client: redis.asyncio.Redis
) -> None:
    await workers(1, RELAY_ENDPOINT_CONCURRENCY="1")
    async with Receiver() as rx:
        rx.answer(Reply(200, delay=30), path="/hang")
        await webhook(admin, rx.url("/hang"), tenant="busy")
        healthy = await webhook(admin, rx.url("/ok"), tenant="calm")
        for _ in range(12):
            await asyncio.gather(*(post_event(admin, "busy") for _ in range(50)))  # 600
        event = await _accepted(admin, "calm")
        delivery_id = _only_delivery(event)
        # Its queue entry is lost (a crash between writes, an operator's mistake).
        async for key in redis_client.scan_iter(f"arq:job:{delivery_id}*"):
            await redis_client.delete(key)
        for member in await redis_client.zrange("relay:queue", 0, -1):
            if member.decode().startswith(delivery_id):
                await redis_client.zrem("relay:queue", member)
        await wait_status(admin, healthy["id"], delivery_id, "delivered", timeout=30)


async def test_a_delivery_outlives_retention_while_its_schedule_runs(
    make_client: ClientFactory, workers: Workers, redis_client: redis.asyncio.Redis
) -> None:
    two_days = "172800"
    client = await make_client(retention_days="1", retry_schedule=two_days)
    await workers(1, RELAY_RETENTION_DAYS="1", RELAY_RETRY_SCHEDULE=two_days)
    async with Receiver() as rx:
        rx.answer(Reply(500))
        hook = await webhook(client, rx.url("/hook"))
        event = await _accepted(client)
        delivery_id = _only_delivery(event)
        await rx.wait_for(1, timeout=15)
        deadline = time.monotonic() + 10
        while (found := await _delivery(client, hook, delivery_id))["attempt_count"] < 1:
            assert time.monotonic() < deadline, found
            await asyncio.sleep(0.05)
    assert found["status"] == "pending"
    next_attempt = datetime.fromisoformat(found["next_attempt_at"].replace("Z", "+00:00"))
    assert next_attempt.timestamp() - time.time() > 86_400  # past the retention window
    # In flight, it has no TTL at all: it leaves Redis once history has its ending, never by
    # expiring (nor by a volatile-* eviction policy, which only takes keys with a TTL).
    for key in (
        f"relay:dlv:{delivery_id}",
        f"relay:dlv:{delivery_id}:att",
        f"relay:evt:{event['id']}",
    ):
        assert await redis_client.ttl(key) == -1, key


@pytest.mark.system
async def test_an_undecryptable_secret_is_a_failed_attempt_logged_once(
    admin: httpx.AsyncClient, redis_server: RedisServer, tmp_path: Path
) -> None:
    async with Receiver() as rx:
        hook = await webhook(admin, rx.url("/hook"))
        event = await _accepted(admin)
        delivery_id = _only_delivery(event)
        # The worker lacks the master key the secret was sealed with.
        env = relay_env(
            redis_server.url,
            RELAY_ALLOW_PRIVATE_TARGETS="true",
            RELAY_RETRY_SCHEDULE="0.2,0.2,0.2",
            RELAY_SECRET_KEYS=generate_master_key(),
        )
        log = tmp_path / "worker.log"
        with log.open("wb") as out:
            worker = spawn_relay(["worker"], env, stdout=out, stderr=subprocess.STDOUT)
            try:
                failed = await wait_status(admin, hook["id"], delivery_id, "failed", timeout=20)
            finally:
                worker.send_signal(signal.SIGTERM)
                await asyncio.to_thread(worker.wait, 15)
        assert rx.requests == []
    assert failed["attempt_count"] == 4
    assert "decrypt" in failed["last_error"], failed["last_error"]
    assert all("decrypt" in a["error"] for a in failed["attempts"])
    # One complaint for the operator; each attempt's own line carries its error as well.
    complaints = [ln for ln in log.read_text().splitlines() if '"level":"error"' in ln]
    assert len(complaints) == 1 and "cannot be decrypted" in complaints[0], log.read_text()


async def test_deliveries_waiting_for_a_busy_endpoint_cost_next_to_nothing(
    admin: httpx.AsyncClient, workers: Workers, redis_client: redis.asyncio.Redis
) -> None:
    await workers(1, RELAY_ENDPOINT_CONCURRENCY="1", RELAY_DELIVERY_TIMEOUT="5")
    async with Receiver() as rx:
        rx.answer(Reply(200, delay=30))
        await webhook(admin, rx.url("/hang"))
        for _ in range(6):
            await asyncio.gather(*(post_event(admin) for _ in range(50)))
        await rx.wait_for(1, timeout=15)
        await asyncio.sleep(1)
        before = await _commands(redis_client)
        await asyncio.sleep(3)
        spent = await _commands(redis_client) - before
        metrics = (await admin.get("/metrics")).text
    # 300 deliveries wait behind one attempt in flight: idle polling, not work per delivery.
    assert spent < 300, spent
    # Parked, they still count as pending.
    assert "relay_deliveries_pending 300.0" in metrics, metrics


async def test_a_free_worker_starts_due_deliveries_behind_ones_running_elsewhere(
    admin: httpx.AsyncClient, workers: Workers
) -> None:
    # One tenant may fill a worker here: what is under test is the worker, not the tenant's cap.
    env = {
        "RELAY_ENDPOINT_CONCURRENCY": "500",
        "RELAY_TENANT_CONCURRENCY": "500",
        "RELAY_DELIVERY_TIMEOUT": "25",
    }
    async with Receiver() as rx:
        rx.answer(Reply(200, delay=25), path="/hang")
        await webhook(admin, rx.url("/hang"), tenant="busy")
        healthy = await webhook(admin, rx.url("/ok"), tenant="calm")
        await workers(1, **env)
        await asyncio.gather(*(post_event(admin, "busy") for _ in range(100)))
        await rx.wait_for(100, timeout=20)  # the first worker is full
        await workers(1, **env)
        event = await _accepted(admin, "calm")
        await wait_status(admin, healthy["id"], _only_delivery(event), "delivered", timeout=15)


async def test_a_worker_overtaken_after_a_pause_cannot_overwrite_the_new_attempt(
    admin: httpx.AsyncClient, workers: Workers
) -> None:
    env = {"RELAY_DELIVERY_TIMEOUT": "3"}
    async with Receiver() as rx:
        rx.answer(Reply(200, delay=30))
        hook = await webhook(admin, rx.url("/hook"))
        [paused] = await workers(1, **env)
        event = await _accepted(admin)
        delivery_id = _only_delivery(event)
        await rx.wait_for(1, timeout=15)
        paused.send_signal(signal.SIGSTOP)
        try:
            rx.answer(Reply(200, delay=2))
            await workers(1, **env)
            await rx.wait_for(2, timeout=40)  # the lease ran out: another worker took over
        finally:
            paused.send_signal(signal.SIGCONT)  # it settles its stale attempt first
        await wait_status(admin, hook["id"], delivery_id, "delivered", timeout=20)
        # The stalled attempt comes back timed out, after the lease ran out: it is logged as an
        # attempt of its own, and the new one's 200 still decides.
        done = await _delivery(admin, hook, delivery_id)
        deadline = time.monotonic() + 20
        while done["attempt_count"] < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            done = await _delivery(admin, hook, delivery_id)
    assert sorted(a["number"] for a in done["attempts"]) == [1, 2]
    assert done["attempt_count"] == 2 and done["last_status_code"] == 200
    assert sorted(a["status_code"] or 0 for a in done["attempts"]) == [0, 200]


async def test_retries_keep_their_schedule_on_a_worker_whose_clock_is_behind(
    admin: httpx.AsyncClient, workers: Workers
) -> None:
    async with Receiver() as rx:
        rx.answer(Reply(500))
        await webhook(admin, rx.url("/hook"))
        await workers(
            1,
            RELAY_RETRY_SCHEDULE="3,3",
            LD_PRELOAD="/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
            FAKETIME="-60s",
            FAKETIME_DONT_FAKE_MONOTONIC="1",
        )
        await _accepted(admin)
        first, second = await rx.wait_for(2, timeout=20)
    # 3 s ± 20 %: a clock a minute behind must not make the retry come at once.
    assert second.received_at - first.received_at >= 2.3


async def test_sigterm_lets_the_attempt_in_flight_finish_and_be_logged(
    admin: httpx.AsyncClient, workers: Workers
) -> None:
    async with Receiver() as rx:
        rx.answer(Reply(200, delay=1))
        hook = await webhook(admin, rx.url("/hook"))
        [worker] = await workers(1)
        event = await _accepted(admin)
        await rx.wait_for(1, timeout=15)
        worker.send_signal(signal.SIGTERM)  # a deploy, mid-attempt
        code = await asyncio.to_thread(worker.wait, 15)
        done = await _delivery(admin, hook, _only_delivery(event))
    assert code == 0
    assert done["status"] == "delivered", done
    assert [a["status_code"] for a in done["attempts"]] == [200]


async def test_recover_runs_in_batches_and_reports_progress(
    admin: httpx.AsyncClient, workers: Workers
) -> None:
    await workers(1, RELAY_RETRY_SCHEDULE="0.05")
    async with Receiver() as rx:
        rx.answer(Reply(500))
        hook = await webhook(admin, rx.url("/hook"))
        total = 450
        for _ in range(total // 50):
            await asyncio.gather(*(post_event(admin) for _ in range(50)))
        deadline = time.monotonic() + 90
        while len(rx.requests) < 2 * total or await _unfinished(admin, hook):
            assert time.monotonic() < deadline, len(rx.requests)
            await asyncio.sleep(0.5)
        rx.answer(Reply(200))
        response = await admin.post(
            f"/v1/webhooks/{hook['id']}/recover", json={"since": "2000-01-01T00:00:00Z"}
        )
        assert response.status_code == 202, response.text
        started = response.json()["data"]
        assert started["requeued"] < total  # the first batch only; the rest in the background
        assert response.headers["location"] == started["url"]
        deadline = time.monotonic() + 60
        while (progress := (await admin.get(started["url"])).json()["data"])["status"] != "done":
            assert time.monotonic() < deadline, progress
            await asyncio.sleep(0.2)
    assert progress["requeued"] == total


async def test_each_attempt_records_its_url_and_outlives_its_webhook(
    admin: httpx.AsyncClient, workers: Workers
) -> None:
    await workers(1)
    async with Receiver() as rx:
        url = rx.url("/first")
        hook = await webhook(admin, url)
        event = await _accepted(admin)
        delivery_id = _only_delivery(event)
        await wait_status(admin, hook["id"], delivery_id, "delivered")
        deleted = await admin.delete(f"/v1/webhooks/{hook['id']}")
        assert deleted.status_code == 200
        # The log of a deleted webhook stays readable until retention ends.
        kept = await _delivery(admin, hook, delivery_id)
    assert [a["url"] for a in kept["attempts"]] == [url]


async def test_test_sends_are_marked_and_listed(admin: httpx.AsyncClient) -> None:
    async with Receiver() as rx:
        rx.answer(Reply(201, body=b"thanks"))
        url = rx.url("/hook")
        hook = await webhook(admin, url)
        sent = await admin.post("/v1/webhooks/test", json={"webhook_id": hook["id"]})
        assert sent.status_code == 200, sent.text
        [request] = rx.requests
    assert request.headers["webhook-test"] == "true"
    listed = await admin.get(f"/v1/webhooks/{hook['id']}/tests")
    assert listed.status_code == 200
    [test] = listed.json()["data"]
    assert test["status_code"] == 201 and test["response_body"] == "thanks"
    assert test["event_id"] == sent.json()["data"]["event_id"] == request.headers["webhook-id"]
    assert test["url"] == url


@pytest.mark.system
async def test_a_worker_started_before_redis_waits_for_it(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    server = RedisServer(tmp_path / "late-redis", port=free_port())
    env = relay_env(server.url, RELAY_ALLOW_PRIVATE_TARGETS="true")
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        worker = spawn_relay(["worker"], env, stdout=out, stderr=subprocess.STDOUT)
        try:
            # However long the machine takes to start it, the worker says it waits, and stays.
            waiting = await asyncio.to_thread(
                wait_until,
                lambda: [ln for ln in log.read_text().splitlines() if "waiting for redis" in ln],
                30,
            )
            assert worker.poll() is None, log.read_text()
            assert all("Traceback" not in line for line in waiting), log.read_text()
            await asyncio.to_thread(server.start)
            client = await make_client(redis_url=server.url)
            async with Receiver() as rx:
                await webhook(client, rx.url("/hook"))
                event = await _accepted(client)
                [request] = await rx.wait_for(1, timeout=20)
            assert request.headers["webhook-id"] == event["id"]
        finally:
            worker.send_signal(signal.SIGTERM)
            await asyncio.to_thread(worker.wait, 15)
            server.stop()
    assert "Traceback" not in log.read_text()


@pytest.mark.system
async def test_a_due_delivery_whose_record_is_gone_is_logged_and_counted(
    admin: httpx.AsyncClient,
    redis_server: RedisServer,
    redis_client: redis.asyncio.Redis,
    tmp_path: Path,
) -> None:
    async with Receiver() as rx:
        await webhook(admin, rx.url("/hook"))
        lost = _only_delivery(await _accepted(admin))
        kept = await _accepted(admin)
        # As a Redis that may evict does when full, or one that lost writes it had not persisted.
        assert await redis_client.delete(keys.delivery(lost)) == 1
        env = relay_env(redis_server.url, RELAY_ALLOW_PRIVATE_TARGETS="true")
        log = tmp_path / "worker.log"
        with log.open("wb") as out:
            worker = spawn_relay(["worker"], env, stdout=out, stderr=subprocess.STDOUT)
            try:
                [request] = await rx.wait_for(1, timeout=20)
                deadline = time.monotonic() + 20
                while (
                    "relay_deliveries_missing_total 1.0" not in (await admin.get("/metrics")).text
                ):
                    assert time.monotonic() < deadline, "the lost delivery was never counted"
                    await asyncio.sleep(0.5)
            finally:
                worker.send_signal(signal.SIGTERM)
                await asyncio.to_thread(worker.wait, 15)
    assert request.headers["webhook-id"] == kept["id"]
    errors = [ln for ln in log.read_text().splitlines() if '"level":"error"' in ln]
    assert len(errors) == 1, log.read_text()
    assert f'"delivery_id":"{lost}"' in errors[0] and "gone from Redis" in errors[0], errors
