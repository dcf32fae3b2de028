"""A large event reaches every webhook without holding Redis up for anyone else."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import httpx
import orjson
import redis.asyncio

from tests.flows import Workers, webhook
from tests.receivers import Receiver

TENANT = "space_large"
MIB = 1_048_576


def _event_of(size: int) -> bytes:
    """A `post.published` request body of exactly `size` bytes."""

    def body(text: str) -> bytes:
        data = {"post_id": "p_1", "text": text}
        return orjson.dumps({"type": "post.published", "tenant_id": TENANT, "data": data})

    return body("x" * (size - len(body(""))))


async def _in_history(conn: asyncpg.Connection, event_id: str) -> bytes:
    """The event's payload once the history writer has written it."""
    deadline = time.monotonic() + 30
    while (
        payload := await conn.fetchval("SELECT payload FROM events WHERE id = $1", event_id)
    ) is None:
        assert time.monotonic() < deadline, "the event never reached history"
        await asyncio.sleep(0.1)
    return bytes(payload)


async def _output_bytes(redis_client: redis.asyncio.Redis) -> int:
    return int((await redis_client.info("stats"))["total_net_output_bytes"])


async def test_a_1_mib_event_reaches_100_webhooks_and_redis_sends_its_payload_a_few_times(
    admin: httpx.AsyncClient,
    workers: Workers,
    redis_client: redis.asyncio.Redis,
    history_db: asyncpg.Connection,
) -> None:
    await workers()
    async with Receiver() as rx:
        await asyncio.gather(*(webhook(admin, rx.url(f"/{n}"), TENANT) for n in range(100)))
        body = _event_of(MIB)  # RELAY_MAX_BODY_BYTES' default
        before = await _output_bytes(redis_client)
        response = await admin.post(
            "/v1/events", content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code == 202, response.text[:300]
        event = response.json()["data"]
        assert len(event["deliveries"]) == 100
        requests = await rx.wait_for(100, timeout=60)
        stored = await _in_history(history_db, event["id"])
        sent = await _output_bytes(redis_client) - before
    assert sorted(r.path for r in requests) == sorted(f"/{n}" for n in range(100))
    data = orjson.loads(requests[0].body)["data"]
    assert data == orjson.loads(body)["data"]
    assert {r.body for r in requests} == {requests[0].body}
    assert {r.headers["webhook-id"] for r in requests} == {event["id"]}
    assert stored == requests[0].body
    # The payload leaves Redis once for the claim and once for the history writer, not once
    # per delivery (which was 100 MiB, built by one script while every other client waited).
    assert sent < 8 * MIB, sent
