"""Every list the API offers reads history through an index, on tables of a realistic size.

180,000 deliveries over three days (50 tenants, 500 webhooks), their attempts and 60,000
events are loaded with COPY; then each statement the reader runs is EXPLAINed as PostgreSQL
would run it, and no plan may read a whole partition.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from relay import ids
from relay.delivery.model import Status
from relay.delivery.store import DeliveryFilter
from relay.history import partitions, reader
from relay.store.events import EventFilter

DAYS, PER_DAY = 3, 60_000
TENANTS = [f"t_{n}" for n in range(50)]
TYPES = ["post.published", "post.failed", "media.uploaded", "custom.ordered"]
STATUSES = ["delivered"] * 45 + ["failed"] * 4 + ["canceled"]
NOW = datetime.now(UTC)


def _rows(rng: random.Random) -> Iterator[tuple[tuple[Any, ...], ...]]:
    """(event, delivery, attempt) rows, one of each per delivery; every third makes an event."""
    for n in range(DAYS * PER_DAY):
        moment = NOW - timedelta(days=n % DAYS, seconds=rng.randrange(86_000))
        ms = int(moment.timestamp() * 1000)
        at = datetime.fromtimestamp(ms / 1000, UTC)
        tenant = rng.choice(TENANTS)
        webhook = f"wh_{tenant}_{rng.randrange(10)}"
        event_id, delivery_id = ids.new_id("evt", ms), ids.new_id("dlv", ms)
        kind = rng.choice(TYPES)
        status = rng.choice(STATUSES)
        event = (tenant, event_id, at, kind, f"up-{n}", b"{}", [delivery_id])
        delivery = (tenant, delivery_id, at, event_id, webhook, kind, status, 1, 0, 200, None, at)
        attempt = (tenant, delivery_id, 1, at, webhook, at, 12, 200, None, "", "{}", "http://x/")
        yield (event if n % 3 == 0 else ()), delivery, attempt


@pytest.fixture(scope="module")
async def loaded(postgres_server: Any) -> dict[str, Any]:
    """The tables filled once for the module (other tests empty them before they run)."""
    conn = await asyncpg.connect(postgres_server.url)
    try:
        await partitions.ensure(conn, [(NOW - timedelta(days=d)).date() for d in range(DAYS + 1)])
        events, deliveries, attempts = [], [], []
        for event, delivery, attempt in _rows(random.Random(7)):
            if event:
                events.append(event)
            deliveries.append(delivery)
            attempts.append(attempt)
        await conn.copy_records_to_table(
            "events",
            records=events,
            columns=[
                "tenant_id",
                "id",
                "created_at",
                "type",
                "upstream_id",
                "payload",
                "delivery_ids",
            ],
        )
        await conn.copy_records_to_table(
            "deliveries",
            records=deliveries,
            columns=[
                "tenant_id",
                "id",
                "created_at",
                "event_id",
                "webhook_id",
                "event_type",
                "status",
                "attempt_count",
                "cycle_start",
                "last_status_code",
                "last_error",
                "updated_at",
            ],
        )
        await conn.copy_records_to_table(
            "attempts",
            records=attempts,
            columns=[
                "tenant_id",
                "delivery_id",
                "number",
                "created_at",
                "webhook_id",
                "started_at",
                "duration_ms",
                "status_code",
                "error",
                "response_body",
                "request_headers",
                "url",
            ],
        )
        await conn.execute("ANALYZE events; ANALYZE deliveries; ANALYZE attempts")
        sample = deliveries[len(deliveries) // 2]
        return {"delivery": sample, "event": events[len(events) // 2], "url": postgres_server.url}
    finally:
        await conn.close()


def _scans(plan: dict[str, Any]) -> Iterator[tuple[str, str]]:
    yield plan["Node Type"], plan.get("Relation Name", "")
    for child in plan.get("Plans", []):
        yield from _scans(child)


async def _plan(url: str, query: reader.Query) -> list[tuple[str, str]]:
    """(node, relation) of the plan; a sequential scan of a partition that is all but empty
    (a day made ahead, the edge of the window) is what the planner should do, and is left out."""
    conn = await asyncpg.connect(url)
    try:
        raw = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {query.sql}", *query.args)
        sizes = dict(await conn.fetch("SELECT relname, reltuples FROM pg_class"))
    finally:
        await conn.close()
    return [
        (node, relation)
        for node, relation in _scans(json.loads(raw)[0]["Plan"])
        if node != "Seq Scan" or sizes.get(relation, 0) > 1000
    ]


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _queries(loaded: dict[str, Any]) -> dict[str, reader.Query]:
    tenant, delivery_id, at, _, webhook = loaded["delivery"][:5]
    event = loaded["event"]
    day_ago = NOW - timedelta(days=1)
    return {
        "a webhook's failed deliveries": reader.delivery_list(
            DeliveryFilter(webhook_id=webhook, tenant_id=tenant, status=Status.FAILED), 50, None
        ),
        "a tenant's deliveries in a time range": reader.delivery_list(
            DeliveryFilter(tenant_id=tenant, since_ms=_ms(day_ago), until_ms=_ms(NOW)), 50, None
        ),
        "a tenant's deliveries, second page": reader.delivery_list(
            DeliveryFilter(tenant_id=tenant), 50, delivery_id
        ),
        "a tenant's deliveries of one event type": reader.delivery_list(
            DeliveryFilter(tenant_id=tenant, event_type="media.uploaded"), 50, None
        ),
        "every delivery, newest first": reader.delivery_list(DeliveryFilter(), 50, None),
        "a tenant's events of a type": reader.event_list(
            EventFilter(tenant_id=event[0], type="post.failed"), 50, None
        ),
        "an event by upstream id": reader.event_list(
            EventFilter(tenant_id=event[0], upstream_id=event[4]), 50, None
        ),
        "upstream ids, as accepts look them up": reader.Query(
            reader.EVENTS_BY_UPSTREAM_ID, ([event[0], event[0]], [event[4], "not-seen"])
        ),
        "one delivery's attempts": reader.Query(reader.ATTEMPTS, (tenant, delivery_id, at)),
        "a delivery by id": reader.Query(reader.DELIVERY_BY_ID, (delivery_id, at)),
        "an event by id": reader.Query(reader.EVENT_BY_ID, (event[1], event[2])),
        "a webhook's recovery": reader.failed_after(
            DeliveryFilter(webhook_id=webhook, tenant_id=tenant, until_ms=_ms(NOW)),
            ids.time_floor("dlv", _ms(day_ago)),
            200,
        ),
        "a tenant's recovery of one event type": reader.failed_after(
            DeliveryFilter(tenant_id=tenant, event_type="media.uploaded", until_ms=_ms(NOW)),
            ids.time_floor("dlv", _ms(day_ago)),
            200,
        ),
        "a recovery of every tenant's deliveries": reader.failed_after(
            DeliveryFilter(until_ms=_ms(NOW)), ids.time_floor("dlv", _ms(day_ago)), 200
        ),
    }


async def test_every_list_query_reads_an_index_not_a_whole_table(loaded: dict[str, Any]) -> None:
    plans = {name: await _plan(loaded["url"], q) for name, q in _queries(loaded).items()}
    whole = {name: nodes for name, nodes in plans.items() if any(n == "Seq Scan" for n, _ in nodes)}
    assert not whole, whole
    assert all(any("Index" in n for n, _ in nodes) for nodes in plans.values()), plans
