"""RELAY_REDIS_MIN_REPLICAS: an event is answered 202 only once that many replicas hold it;
503 when they do not acknowledge in time, and its retry is not stored twice."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from relay.delivery.archive import Archive
from relay.delivery.handover import HistoryHandover
from relay.delivery.store import DeliveryStore, NewEvent, PlannedDelivery
from relay.store.connect import connect_redis
from relay.store.replicas import NotReplicated, Replicas
from relay.timefmt import now, rfc3339
from tests.fixtures import ClientFactory
from tests.flows import post_event, webhook
from tests.support import RedisServer, wait_until


@pytest.fixture
def replica(own_redis: RedisServer, tmp_path: Path) -> Iterator[RedisServer]:
    """A replica of the test's own Redis, holding a copy of it."""
    server = RedisServer(tmp_path / "replica", replica_of=own_redis.port).start()
    wait_until(server.in_sync)
    yield server
    server.stop()


async def _client(make_client: ClientFactory, primary: RedisServer) -> httpx.AsyncClient:
    client = await make_client(redis_url=primary.url, redis_min_replicas="1")
    await webhook(client, "https://hooks.example.com/")
    return client


def _not_replicated(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"] == "1"
    assert response.json()["code"] == "unavailable"
    assert "RELAY_REDIS_MIN_REPLICAS" in response.json()["detail"]


async def test_an_event_no_replica_acknowledges_is_a_503_and_its_retry_is_stored_once(
    make_client: ClientFactory, own_redis: RedisServer, replica: RedisServer
) -> None:
    client = await _client(make_client, own_redis)
    # Connected, but frozen: it acknowledges nothing.
    replica.pause()
    try:
        started = time.monotonic()
        first = await post_event(client, id="upstream-1")
        took = time.monotonic() - started
        # The retry finds the first event, but it is no more replicated than it was.
        again = await post_event(client, id="upstream-1")
    finally:
        replica.resume()
    _not_replicated(first)
    assert took < 2.0, took
    _not_replicated(again)

    held = await post_event(client, id="upstream-1")
    assert held.status_code == 200, held.text
    listed = (await client.get("/v1/events", params={"id": "upstream-1"})).json()["data"]
    assert [e["id"] for e in listed] == [held.json()["data"]["id"]]


async def test_a_replay_under_an_idempotency_key_waits_for_the_replica_too(
    make_client: ClientFactory, own_redis: RedisServer, replica: RedisServer
) -> None:
    client = await _client(make_client, own_redis)
    body = {"type": "post.published", "tenant_id": "space_42", "data": {"post_id": "p_1"}}
    key = {"Idempotency-Key": "post-once"}
    replica.pause()
    try:
        first = await client.post("/v1/events", json=body, headers=key)
        replay = await client.post("/v1/events", json=body, headers=key)
    finally:
        replica.resume()
    _not_replicated(first)
    _not_replicated(replay)

    held = await client.post("/v1/events", json=body, headers=key)
    assert held.status_code == 202, held.text
    assert held.headers["idempotent-replayed"] == "true"
    listed = (await client.get("/v1/events")).json()["data"]
    assert [e["id"] for e in listed] == [held.json()["data"]["id"]]


async def test_history_takes_a_record_only_once_the_replica_holds_it(
    own_redis: RedisServer, replica: RedisServer, archive: Archive
) -> None:
    client = connect_redis(own_redis.url)
    replicas = Replicas(client, 1)
    store = DeliveryStore(client, 3600, 3600, archive, replicas=replicas)
    handover = HistoryHandover(client, replicas)
    event = NewEvent("evt_1", "post.published", "t1", rfc3339(now()), 0, None, b"{}")
    replica.pause()
    try:
        with pytest.raises(NotReplicated):
            await store.accept(event, [PlannedDelivery("dlv_1", "wh_1")])
        # Written on the primary alone: a failover now could take it, so history waits.
        with pytest.raises(NotReplicated):
            await handover.handed_over("writer", 100, None)
    finally:
        replica.resume()
    # The entry it read is its own to write once the replica holds it.
    handed = await handover.unreleased("writer", 100)
    assert [h.event.id for h in handed if h.event] == [event.id]
    await client.aclose()
