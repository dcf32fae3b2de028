"""History in PostgreSQL: finished deliveries leave Redis, and stay readable and actionable.

Everything runs for real: a worker subprocess delivers to a loopback receiver, its history
writer moves what finished to PostgreSQL, and the API reads it back.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
import redis.asyncio

from relay import audit, ids
from relay.delivery import handover as handover_module
from relay.delivery.archive import Archive
from relay.delivery.handover import Handover, HistoryHandover
from relay.delivery.model import Attempt, Settlement, Status, Transition
from relay.delivery.store import DeliveryStore, NewEvent, PlannedDelivery, script_text
from relay.errors import Unavailable
from relay.history import migrations, partitions, reader, writer
from relay.history.db import Database, open_pool
from relay.metrics import Counts
from relay.store import keys
from relay.timefmt import rfc3339
from tests.fixtures import ClientFactory
from tests.flows import Workers, post_event, wait_status, webhook
from tests.receivers import Receiver, Reply
from tests.support import PostgresServer, RedisServer, postgres_dir


async def _gone_from_redis(redis_client: redis.asyncio.Redis, timeout: float = 20) -> None:
    """Wait until nothing that has ended is left in Redis: no delivery, event or stream entry."""
    deadline = time.monotonic() + timeout
    while True:
        left = [
            k
            async for k in redis_client.scan_iter(match="relay:*")
            if k.startswith((b"relay:dlv:", b"relay:evt:"))
        ]
        waiting = (
            await redis_client.xlen(keys.HISTORY) if await redis_client.exists(keys.HISTORY) else 0
        )
        if not left and not waiting:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"still in redis: {left[:5]}, {waiting} stream entries")
        await asyncio.sleep(0.1)


async def _history_is_whole(conn: asyncpg.Connection, webhook_id: str, total: int) -> None:
    """Every delivery delivered and written once, with its event, and each of its attempts
    once (a delivery sent twice, as at least once allows, logs both attempts)."""
    delivered = await conn.fetchval(
        "SELECT count(*) FROM deliveries WHERE webhook_id = $1 AND status = 'delivered'",
        webhook_id,
    )
    assert delivered == total
    assert await conn.fetchval("SELECT count(*) FROM events") == total
    per_delivery = await conn.fetch(
        "SELECT count(*) AS n, count(DISTINCT number) AS numbers, max(d.attempt_count) AS made "
        "FROM attempts a JOIN deliveries d ON d.id = a.delivery_id GROUP BY a.delivery_id"
    )
    assert len(per_delivery) == total
    assert all(r["n"] == r["numbers"] == r["made"] for r in per_delivery)


async def _delivery(admin: httpx.AsyncClient, delivery_id: str) -> dict[str, Any]:
    response = await admin.get(f"/v1/deliveries/{delivery_id}")
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


async def test_a_finished_delivery_leaves_redis_and_is_read_from_history(
    admin: httpx.AsyncClient,
    workers: Workers,
    redis_client: redis.asyncio.Redis,
    history_db: asyncpg.Connection,
) -> None:
    async with Receiver() as rx:
        hook = await webhook(admin, rx.url("/hook"))
        await workers(1)
        accepted = (await post_event(admin, id="up-1")).json()["data"]
        [planned] = accepted["deliveries"]
        await rx.wait_for(1, timeout=20)
        await _gone_from_redis(redis_client)

    delivery = await _delivery(admin, planned["id"])
    assert delivery["status"] == "delivered" and delivery["attempt_count"] == 1
    [attempt] = delivery["attempts"]
    assert attempt["number"] == 1 and attempt["status_code"] == 200
    assert attempt["request_headers"]["webhook-id"] == accepted["id"]

    event = (await admin.get(f"/v1/events/{accepted['id']}")).json()["data"]
    assert event["data"] == {"post_id": "p_1"}
    assert event["deliveries"] == [
        {"id": planned["id"], "webhook_id": hook["id"], "status": "delivered"}
    ]
    listed = (await admin.get(f"/v1/webhooks/{hook['id']}/deliveries")).json()
    assert [d["id"] for d in listed["data"]] == [planned["id"]]
    assert listed["next_cursor"] is None
    by_status = await admin.get("/v1/deliveries", params={"status": "delivered"})
    assert [d["id"] for d in by_status.json()["data"]] == [planned["id"]]
    events = (await admin.get("/v1/events", params={"type": "post.published"})).json()
    assert [e["id"] for e in events["data"]] == [accepted["id"]]

    # Redis keeps the upstream id only a short while longer; history finds the first event.
    [upstream_key] = [k async for k in redis_client.scan_iter(match="relay:evtup:*")]
    assert 0 < await redis_client.ttl(upstream_key) <= 60
    await redis_client.delete(upstream_key)
    again = await post_event(admin, id="up-1")
    assert again.status_code == 200 and again.json()["data"]["id"] == accepted["id"]
    assert await history_db.fetchval("SELECT count(*) FROM deliveries") == 1
    assert await history_db.fetchval("SELECT count(*) FROM attempts") == 1
    assert await history_db.fetchval("SELECT count(*) FROM events") == 1


async def test_each_attempts_trigger_is_kept_in_history_and_read_back(
    admin: httpx.AsyncClient,
    workers: Workers,
    redis_client: redis.asyncio.Redis,
    history_db: asyncpg.Connection,
) -> None:
    async with Receiver() as rx:
        rx.answer(Reply(500))
        hook = await webhook(admin, rx.url("/hook"))
        await workers(1, RELAY_RETRY_SCHEDULE="60")
        [planned] = (await post_event(admin)).json()["data"]["deliveries"]
        await rx.wait_for(1, timeout=20)
        await wait_status(admin, hook["id"], planned["id"], "pending")  # its next in a minute
        rx.answer(Reply(200))
        path = f"/v1/webhooks/{hook['id']}/deliveries/{planned['id']}/retry"
        assert (await admin.post(path)).status_code == 202
        await wait_status(admin, hook["id"], planned["id"], "delivered")
        await _gone_from_redis(redis_client)

    delivery = await _delivery(admin, planned["id"])
    assert [(a["number"], a["trigger"]) for a in delivery["attempts"]] == [
        (1, "scheduled"),
        (2, "manual"),
    ]
    rows = await history_db.fetch("SELECT number, trigger FROM attempts ORDER BY number")
    assert [(r["number"], r["trigger"]) for r in rows] == [(1, "scheduled"), (2, "manual")]


async def test_retries_and_recover_bring_back_deliveries_that_only_history_holds(
    admin: httpx.AsyncClient,
    workers: Workers,
    redis_client: redis.asyncio.Redis,
) -> None:
    async with Receiver() as rx:
        rx.answer(Reply(500))
        hook = await webhook(admin, rx.url("/hook"))
        await workers(1)
        first, second, third = [
            (await post_event(admin, data={"post_id": str(i)})).json()["data"] for i in range(3)
        ]
        for event in (first, second, third):
            await wait_status(admin, hook["id"], event["deliveries"][0]["id"], "failed")
        await _gone_from_redis(redis_client)
        rx.answer(Reply(200))

        # A single delivery: a fresh schedule, its earlier attempts kept and numbered on.
        one = first["deliveries"][0]["id"]
        retried = await admin.post(f"/v1/webhooks/{hook['id']}/deliveries/{one}/retry")
        assert retried.status_code == 202, retried.text
        done = await wait_status(admin, hook["id"], one, "delivered")
        assert [a["status_code"] for a in done["attempts"]] == [500, 500, 500, 500, 200]
        assert [a["number"] for a in done["attempts"]] == [1, 2, 3, 4, 5]

        # An event's failed deliveries.
        again = await admin.post(f"/v1/events/{second['id']}/retry")
        assert again.status_code == 202, again.text
        await wait_status(admin, hook["id"], second["deliveries"][0]["id"], "delivered")

        # Recover: every failed delivery in a window, here the last one left.
        since = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
        recovered = await admin.post(f"/v1/webhooks/{hook['id']}/recover", json={"since": since})
        assert recovered.status_code == 202, recovered.text
        assert recovered.json()["data"]["requeued"] == 1
        await wait_status(admin, hook["id"], third["deliveries"][0]["id"], "delivered")
        await _gone_from_redis(redis_client)

    statuses = await admin.get(f"/v1/webhooks/{hook['id']}/deliveries")
    assert [d["status"] for d in statuses.json()["data"]] == ["delivered"] * 3
    # A delivered one cannot be canceled, even from history.
    canceled = await admin.post(f"/v1/webhooks/{hook['id']}/deliveries/{one}/cancel")
    assert canceled.status_code == 409
    assert canceled.json()["detail"].startswith("The delivery is delivered")


async def test_retention_drops_a_day_and_the_api_then_answers_404(
    admin: httpx.AsyncClient,
    workers: Workers,
    redis_client: redis.asyncio.Redis,
    history_db: asyncpg.Connection,
) -> None:
    async with Receiver() as rx:
        hook = await webhook(admin, rx.url("/hook"))
        await workers(1)
        event = (await post_event(admin)).json()["data"]
        delivery_id = event["deliveries"][0]["id"]
        await wait_status(admin, hook["id"], delivery_id, "delivered")
        await _gone_from_redis(redis_client)

    today = datetime.now(UTC).date()
    assert await partitions.drop_before(history_db, today) == []  # nothing older than today
    dropped = await partitions.drop_before(history_db, today + timedelta(days=1))
    assert f"deliveries_p{today:%Y%m%d}" in dropped
    assert (await admin.get(f"/v1/deliveries/{delivery_id}")).status_code == 404
    assert (await admin.get(f"/v1/events/{event['id']}")).status_code == 404
    assert (await admin.get("/v1/deliveries")).json()["data"] == []


async def test_retention_keeps_no_list_waiting_behind_a_day_it_drops(
    postgres_server: PostgresServer, history_db: asyncpg.Connection
) -> None:
    today = datetime.now(UTC).date()
    old, kept = today - timedelta(days=40), today - timedelta(days=1)
    await partitions.ensure(history_db, [old, kept])
    reading = await asyncpg.connect(postgres_server.url)
    listing = await asyncpg.connect(postgres_server.url)
    try:
        # A long report reads the deliveries (and so every partition) when retention comes.
        report = reading.transaction()
        await report.start()
        await reading.fetch("SELECT * FROM deliveries LIMIT 1")
        dropping = asyncio.create_task(
            partitions.drop_before(history_db, today - timedelta(days=30))
        )
        await asyncio.sleep(0.3)
        # Retention waits for the report; a list that comes meanwhile does not wait for either.
        began = time.monotonic()
        await asyncio.wait_for(listing.fetch("SELECT id FROM deliveries LIMIT 50"), 5)
        assert time.monotonic() - began < 0.5
        assert not dropping.done()
        await report.commit()
        assert await asyncio.wait_for(dropping, 10) == sorted(
            f"{table}_p{old:%Y%m%d}" for table in partitions.TABLES
        )
    finally:
        await reading.close()
        await listing.close()
    names = {r["relname"] for r in await history_db.fetch(partitions._PARTITIONS, ["deliveries"])}
    assert names >= {f"deliveries_p{kept:%Y%m%d}"} and f"deliveries_p{old:%Y%m%d}" not in names


async def test_retention_finishes_a_day_a_stopped_pass_left_half_dropped(
    postgres_server: PostgresServer, history_db: asyncpg.Connection
) -> None:
    today = datetime.now(UTC).date()
    days = [today - timedelta(days=n) for n in (42, 41, 40)]
    await partitions.ensure(history_db, days)
    pending, detached, whole = (f"deliveries_p{day:%Y%m%d}" for day in days)
    # A pass stopped between the two steps of one detach, and after another's detach.
    await history_db.execute(f"ALTER TABLE deliveries DETACH PARTITION {detached}")
    reading = await asyncpg.connect(postgres_server.url)
    try:
        report = reading.transaction()
        await report.start()
        await reading.fetch("SELECT * FROM deliveries LIMIT 1")
        await history_db.execute("SET statement_timeout = 500")
        with pytest.raises(asyncpg.QueryCanceledError):
            await history_db.execute(
                f"ALTER TABLE deliveries DETACH PARTITION {pending} CONCURRENTLY"
            )
        await history_db.execute("RESET statement_timeout")
        await report.commit()
    finally:
        await reading.close()
    rows = await history_db.fetch(partitions._PARTITIONS, ["deliveries"])
    assert {r["relname"]: r["detaching"] for r in rows}[pending] is True

    dropped = await partitions.drop_before(history_db, today - timedelta(days=30))
    assert {pending, detached, whole} <= set(dropped)
    left = await history_db.fetchval(
        "SELECT count(*) FROM pg_class WHERE relname = ANY($1::text[])", [pending, detached, whole]
    )
    assert left == 0


async def test_a_retention_pass_stopped_waiting_for_its_lock_leaves_the_pool_and_lock_free(
    history_db: asyncpg.Connection, postgres_server: PostgresServer
) -> None:
    # The pool hands connections back as they were left (no reset query): a pass stopped while
    # it waits for the partitions' session lock ends its connection rather than risk handing
    # the lock on with it, and the pool goes on with a new one.
    pool = await open_pool(postgres_server.url, size=1)
    try:
        await history_db.execute("SELECT pg_advisory_lock($1)", partitions._LOCK)

        async def retention_pass() -> None:
            async with pool.acquire() as conn:
                await partitions.drop_detached(conn)

        stopped = asyncio.create_task(retention_pass())
        for _ in range(1000):  # until the pass waits for the lock
            if await history_db.fetchval(_WAITING_PID):
                break
            await asyncio.sleep(0.01)
        stopped.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stopped
        await history_db.execute("SELECT pg_advisory_unlock($1)", partitions._LOCK)

        await asyncio.wait_for(retention_pass(), 10)
        assert await history_db.fetchval("SELECT pg_try_advisory_lock($1)", partitions._LOCK)
    finally:
        await pool.close()


async def test_tenants_never_see_each_others_history(
    admin: httpx.AsyncClient,
    make_client: Any,
    token_for: Any,
    workers: Workers,
    redis_client: redis.asyncio.Redis,
) -> None:
    async with Receiver() as rx:
        mine = await webhook(admin, rx.url("/mine"), tenant="t_mine")
        theirs = await webhook(admin, rx.url("/theirs"), tenant="t_theirs")
        await workers(1)
        own = (await post_event(admin, tenant="t_mine")).json()["data"]
        other = (await post_event(admin, tenant="t_theirs")).json()["data"]
        await rx.wait_for(2, timeout=20)
        await _gone_from_redis(redis_client)

    tenant = await make_client(token=await token_for("tenant", "t_mine"))
    listed = (await tenant.get("/v1/deliveries")).json()["data"]
    assert [d["id"] for d in listed] == [own["deliveries"][0]["id"]]
    events = (await tenant.get("/v1/events")).json()["data"]
    assert [e["id"] for e in events] == [own["id"]]
    other_delivery = other["deliveries"][0]["id"]
    assert (await tenant.get(f"/v1/deliveries/{other_delivery}")).status_code == 404
    assert (await tenant.get(f"/v1/events/{other['id']}")).status_code == 404
    assert (await tenant.get(f"/v1/webhooks/{theirs['id']}/deliveries")).status_code == 404
    assert (await tenant.get(f"/v1/webhooks/{mine['id']}/deliveries")).status_code == 200


async def test_history_has_every_delivery_once_after_a_writer_is_killed_mid_batch(
    admin: httpx.AsyncClient,
    workers: Workers,
    redis_client: redis.asyncio.Redis,
    history_db: asyncpg.Connection,
) -> None:
    total = 300
    async with Receiver() as rx:
        hook = await webhook(admin, rx.url("/hook"))
        [doomed] = await workers(1)
        for start in range(0, total, 50):
            batch = await asyncio.gather(
                *(post_event(admin, data={"post_id": str(i)}) for i in range(start, start + 50))
            )
            assert all(r.status_code == 202 for r in batch)
            if start == 100:
                await rx.wait_for(60, timeout=20)
                doomed.send_signal(signal.SIGKILL)
        await asyncio.to_thread(doomed.wait, 10)
        await workers(1)
        # What the killed writer held is adopted once it has been idle long enough.
        await _gone_from_redis(redis_client, timeout=60)

    await _history_is_whole(history_db, hook["id"], total)


async def _accepted_long_ago(
    history_db: asyncpg.Connection, upstream_id: str, tenant: str = "space_42"
) -> str:
    """The id of an event accepted two days ago under `upstream_id`: only history remembers it."""
    long_ago = datetime.now(UTC) - timedelta(days=2)
    old_id = ids.new_id("evt", int(long_ago.timestamp() * 1000))
    await partitions.ensure(history_db, [long_ago.date()])
    payload = orjson.dumps({"id": old_id, "type": "post.published", "data": {"post_id": "p_old"}})
    await history_db.execute(
        "INSERT INTO events (tenant_id, id, created_at, type, upstream_id, payload, delivery_ids)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7)",
        tenant,
        old_id,
        reader.id_time(old_id),
        "post.published",
        upstream_id,
        payload,
        [],
    )
    return old_id


async def test_an_upstream_id_is_remembered_by_history_once_redis_lets_it_go(
    admin: httpx.AsyncClient, history_db: asyncpg.Connection
) -> None:
    old_id = await _accepted_long_ago(history_db, "up-old")
    again = await post_event(admin, id="up-old")
    assert again.status_code == 200, again.text
    assert again.json()["data"]["id"] == old_id
    assert again.json()["data"]["data"] == {"post_id": "p_old"}
    # Another tenant's upstream id of the same value is its own.
    other = await post_event(admin, tenant="space_7", id="up-old")
    assert other.status_code == 202


async def test_upstream_ids_history_remembers_are_found_for_a_batch_and_for_posts_at_once(
    admin: httpx.AsyncClient, history_db: asyncpg.Connection
) -> None:
    # A batch asks history about all its upstream ids at once, and posts made at the same
    # moment ask together: each event still gets its own answer.
    old = {up: await _accepted_long_ago(history_db, up) for up in ("up-a", "up-b", "up-c")}
    old["up-7"] = await _accepted_long_ago(history_db, "up-b", tenant="space_7")

    def event(upstream_id: str, tenant: str = "space_42") -> dict[str, object]:
        data = {"post_id": "p_new"}
        return {"type": "post.published", "tenant_id": tenant, "id": upstream_id, "data": data}

    events = [event("up-a"), event("up-new"), event("up-b", "space_7"), event("up-b")]
    answer = await admin.post("/v1/events/batch", json={"events": events})
    assert answer.status_code == 207, answer.text
    results = answer.json()["data"]
    assert [r["status"] for r in results] == [200, 202, 200, 200]
    found = [r["data"]["id"] for r in results]
    assert [found[0], found[2], found[3]] == [old["up-a"], old["up-7"], old["up-b"]]
    assert found[1] not in old.values()

    posts = await asyncio.gather(*(post_event(admin, id=up) for up in ("up-c", "up-new-2", "up-a")))
    assert [p.status_code for p in posts] == [200, 202, 200]
    assert [posts[0].json()["data"]["id"], posts[2].json()["data"]["id"]] == [
        old["up-c"],
        old["up-a"],
    ]


async def test_an_event_is_accepted_when_its_upstream_id_lookup_in_history_is_canceled(
    admin: httpx.AsyncClient, history_db: asyncpg.Connection, postgres_server: PostgresServer
) -> None:
    # A query canceled under relay (a statement timeout, an operator, a server on its way down)
    # is history being away for a moment, as when it cannot be reached: never a 500.
    other = await asyncpg.connect(postgres_server.url)
    try:
        holding = other.transaction()
        await holding.start()
        await other.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
        posting = asyncio.create_task(post_event(admin, id="up-canceled"))
        for _ in range(1000):  # until the lookup waits for the lock
            if waiting := await history_db.fetchval(_WAITING_PID):
                break
            await asyncio.sleep(0.01)
        assert await history_db.fetchval("SELECT pg_cancel_backend($1)", waiting)
        accepted = await asyncio.wait_for(posting, 30)
        await holding.rollback()
    finally:
        await other.close()
    assert accepted.status_code == 202, accepted.text


async def test_events_are_accepted_while_postgresql_ends_relays_connections_mid_query(
    admin: httpx.AsyncClient, history_db: asyncpg.Connection
) -> None:
    # A server that ends a connection in the middle of a query (a backend terminated, a server
    # killed) leaves asyncpg's protocol half-way and it raises an internal client error, not
    # a connection error: still history away for a moment, never a 500.
    ending = asyncio.Event()

    async def end_lookups() -> int:
        ended = 0
        while not ending.is_set():
            ended += await history_db.fetchval(_END_LOOKUPS)
            await asyncio.sleep(0.01)
        return ended

    terminating = asyncio.create_task(end_lookups())
    try:
        answers = await asyncio.gather(*(post_event(admin, id=f"up-ended-{n}") for n in range(300)))
    finally:
        ending.set()
    assert await terminating > 0
    assert sorted({a.status_code for a in answers}) == [202], [
        a.text for a in answers if a.status_code != 202
    ][:3]


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL of the test's own, migrated, which it may stop and start again."""
    with postgres_dir() as directory:
        server = PostgresServer(directory).start()
        with ThreadPoolExecutor(1) as thread:
            thread.submit(asyncio.run, migrations.apply(server.url)).result()
        yield server
        server.stop()


async def test_deliveries_flow_while_postgresql_is_down_and_history_catches_up(
    make_client: ClientFactory,
    workers: Workers,
    redis_client: redis.asyncio.Redis,
    own_postgres: PostgresServer,
) -> None:
    admin = await make_client(database_url=own_postgres.url)
    async with Receiver() as rx:
        hook = await webhook(admin, rx.url("/hook"))
        await workers(1, RELAY_DATABASE_URL=own_postgres.url)
        for n in range(5):
            assert (await post_event(admin, data={"post_id": str(n)})).status_code == 202
        await rx.wait_for(5, timeout=20)
        await _gone_from_redis(redis_client)

        await asyncio.to_thread(own_postgres.stop)
        # Ingest and delivery do not need history: events are accepted and delivered.
        for n in range(5, 25):
            assert (await post_event(admin, data={"post_id": str(n)})).status_code == 202
        await rx.wait_for(25, timeout=20)
        ready = await admin.get("/readyz")
        assert ready.status_code == 503 and "PostgreSQL" in ready.json()["detail"]
        metrics = (await admin.get("/metrics")).text
        assert "relay_postgres_up 0.0" in metrics
        # What only history holds cannot be read now: a 503 to retry, never a 500.
        early = await admin.get(f"/v1/webhooks/{hook['id']}/deliveries")
        assert early.status_code == 503, early.text
        assert early.headers["retry-after"]
        waiting = await redis_client.xlen(keys.HISTORY)
        assert waiting >= 20, waiting  # 20 events and their 20 deliveries, waiting in Redis

        await asyncio.to_thread(own_postgres.start)
        await _gone_from_redis(redis_client, timeout=30)

    assert (await admin.get("/readyz")).status_code == 200
    listed = await admin.get(f"/v1/webhooks/{hook['id']}/deliveries", params={"limit": 100})
    assert [d["status"] for d in listed.json()["data"]] == ["delivered"] * 25
    assert len({r.headers["webhook-id"] for r in rx.requests}) == 25


async def test_past_the_history_backlog_bound_new_events_are_refused_not_stored(
    redis_client: redis.asyncio.Redis, archive: Archive
) -> None:
    store = DeliveryStore(
        redis_client, 3600, 3600, archive, history_backlog=3, backlog_check_seconds=0
    )

    def event() -> NewEvent:
        created = "2026-01-01T00:00:00.000Z"
        return NewEvent(ids.new_id("evt"), "post.published", "t1", created, 0, None, b"{}")

    for _ in range(3):  # each accepted event waits for the writer, which is not running
        assert await store.accept(event(), []) is None
    with pytest.raises(Unavailable, match="waiting to be written to PostgreSQL"):
        await store.accept(event(), [])
    assert await redis_client.xlen(keys.HISTORY) == 3


async def test_the_audit_trail_moves_to_history_and_reads_the_same(
    admin: httpx.AsyncClient,
    make_client: ClientFactory,
    token_for: Any,
    workers: Workers,
    redis_client: redis.asyncio.Redis,
    history_db: asyncpg.Connection,
) -> None:
    mine = await webhook(admin, "http://127.0.0.1:9/mine", tenant="t_mine")
    await webhook(admin, "http://127.0.0.1:9/theirs", tenant="t_theirs")
    tenant = await make_client(token=await token_for("tenant", "t_mine"))
    before = (await admin.get("/v1/audit-log")).json()["data"]
    await workers(1)
    deadline = time.monotonic() + 20
    while await redis_client.exists(*[keys.audit_entry(e["id"]) for e in before]):
        assert time.monotonic() < deadline, "the audit trail never left Redis"
        await asyncio.sleep(0.1)

    assert await history_db.fetchval("SELECT count(*) FROM audit") == len(before) == 3
    after = (await admin.get("/v1/audit-log")).json()["data"]
    assert after == before
    own = (await tenant.get("/v1/audit-log")).json()["data"]
    # Its webhook and its token, nothing of the other tenant's.
    assert {e["tenant_id"] for e in own} == {"t_mine"} and len(own) == 2
    assert mine["id"] in {e["object_id"] for e in own}
    created = await admin.get("/v1/audit-log", params={"action": "webhook.create"})
    assert len(created.json()["data"]) == 2


async def test_history_is_whole_once_after_redis_is_killed_with_records_on_their_way(
    make_client: ClientFactory,
    workers: Workers,
    own_redis: RedisServer,
    history_db: asyncpg.Connection,
) -> None:
    admin = await make_client(redis_url=own_redis.url)
    total = 60
    async with Receiver() as rx:
        rx.answer(Reply(200, delay=0.05))
        hook = await webhook(admin, rx.url("/hook"))
        await workers(1, RELAY_REDIS_URL=own_redis.url)
        for start in range(0, total, 20):
            batch = await asyncio.gather(
                *(post_event(admin, data={"post_id": str(i)}) for i in range(start, start + 20))
            )
            assert all(r.status_code == 202 for r in batch)
        await rx.wait_for(20, timeout=20)
        # Past the AOF's one-second fsync, so every accept is on disk; deliveries, releases and
        # acknowledgements are still happening when Redis dies.
        await asyncio.sleep(1.2)
        await asyncio.to_thread(own_redis.kill)
        await asyncio.to_thread(own_redis.start)
        client = redis.asyncio.Redis.from_url(own_redis.url)
        try:
            await _gone_from_redis(client, timeout=60)
        finally:
            await client.aclose()

    await _history_is_whole(history_db, hook["id"], total)
    # Each delivery counted once in the figures, however often its record was written.
    counted = await history_db.fetchval(
        "SELECT sum(n) FROM stats WHERE kind = 'delivery' AND label = 'delivered'"
    )
    assert counted == total


async def _today_dropped(history_db: asyncpg.Connection) -> tuple[date, Handover]:
    """Today's partitions dropped, as retention drops a day; and an entry of today to write."""
    today = datetime.now(UTC).date()
    await partitions.ensure(history_db, [today])
    await partitions.drop_before(history_db, today + timedelta(days=1))
    entry = audit.entry("webhook.create", audit.Actor("tok_1", "admin"), "wh_1", "t1", None)
    return today, Handover("1-0", audit=entry)


async def test_a_writer_that_remembers_a_day_retention_dropped_makes_it_again(
    postgres_server: PostgresServer, history_db: asyncpg.Connection
) -> None:
    today, handed = await _today_dropped(history_db)
    made = {today}  # as a writer that wrote before the drop remembers it
    pool = await asyncpg.create_pool(postgres_server.url, min_size=1, max_size=1)
    try:
        await writer.write(pool, [handed], made)
    finally:
        await pool.close()
    assert await history_db.fetchval("SELECT count(*) FROM audit") == 1
    assert made == {today}


# Sessions of this database waiting for a lock (the server may serve other databases too).
_WAITING_HERE = """
SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database
WHERE NOT l.granted AND d.datname = current_database()
"""
# Every backend whose last query was the API's upstream-id lookup, ended; how many.
_END_LOOKUPS = """
SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
WHERE pid <> pg_backend_pid() AND query LIKE '%AS asked(tenant_id, upstream_id)%'
"""

_WAITING_PID = """
SELECT l.pid FROM pg_locks l JOIN pg_database d ON d.oid = l.database
WHERE NOT l.granted AND d.datname = current_database() LIMIT 1
"""


async def _until_waiting(history_db: asyncpg.Connection, sessions: int) -> None:
    for _ in range(3000):
        if await history_db.fetchval(_WAITING_HERE) >= sessions:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"fewer than {sessions} sessions wait for a lock")


async def test_a_writer_making_a_days_partitions_goes_again_when_postgresql_breaks_a_deadlock(
    postgres_server: PostgresServer, history_db: asyncpg.Connection
) -> None:
    _, handed = await _today_dropped(history_db)
    timeout_ms = await history_db.fetchval(
        "SELECT setting::int FROM pg_settings WHERE name = 'deadlock_timeout'"
    )
    pool = await asyncpg.create_pool(postgres_server.url, min_size=1, max_size=1)
    other, gate = [await asyncpg.connect(postgres_server.url) for _ in range(2)]
    try:
        # Two sessions each hold a table the writer must lock to make today's partitions; it
        # meets the gate's first, holding `events` by then.
        held, gated = other.transaction(), gate.transaction()
        await held.start()
        await other.execute("LOCK TABLE attempts IN ROW EXCLUSIVE MODE")
        await gated.start()
        await gate.execute("LOCK TABLE deliveries IN ROW EXCLUSIVE MODE")
        writing = asyncio.create_task(writer.write(pool, [handed], set()))
        await _until_waiting(history_db, 1)
        # The other session waits for `events`. PostgreSQL looks for a cycle once per wait, a
        # deadlock timeout after it began: let both waits' looks pass while there is none...
        asking = asyncio.create_task(other.execute("LOCK TABLE events IN ACCESS SHARE MODE"))
        await _until_waiting(history_db, 2)
        await asyncio.sleep(2 * timeout_ms / 1000 + 1)
        # ...then let the writer on, to the other's table: the cycle is the writer's to find,
        # so it is the writer that is rolled back, and the other gets `events`.
        await gated.commit()
        await asyncio.wait_for(asking, 30)
        await held.commit()
        await asyncio.wait_for(writing, 30)
    finally:
        await other.close()
        await gate.close()
        await pool.close()
    assert await history_db.fetchval("SELECT count(*) FROM audit") == 1


async def test_a_retry_brings_back_a_delivery_whose_event_history_has_not_written_yet(
    redis_client: redis.asyncio.Redis, archive: Archive, postgres_server: PostgresServer
) -> None:
    store = DeliveryStore(redis_client, 3600, 3600, archive)
    handover = HistoryHandover(redis_client)
    await redis_client.set(
        keys.webhook("wh_1"), orjson.dumps({"id": "wh_1", "enabled": True, "tenant_id": "t1"})
    )
    created = datetime.now(UTC)
    event = NewEvent(ids.new_id("evt"), "post.published", "t1", rfc3339(created), 0, None, b"{}")
    delivery_id = ids.new_id("dlv")
    await store.accept(event, [PlannedDelivery(delivery_id, "wh_1")])
    [claim] = (await store.claim("w", 10, lease_ms=60_000, concurrency=4)).claims
    attempt = Attempt(1, rfc3339(created), 5, 500, None, "", {}, "http://127.0.0.1/")
    failed = Settlement(Status.FAILED, attempt, None, 500, "HTTP 500", endpoint_ok=False)
    assert (await store.settle(claim, failed)).written
    # The delivery's entry is written and released; its event's is not yet (another writer
    # holds it): history has the delivery, only Redis the event.
    handed = await handover.handed_over("writer", 10, 10)
    [finished] = [h for h in handed if h.delivery is not None]
    database = Database(postgres_server.url)
    try:
        await writer.write(await database.pool(), [finished], set())
    finally:
        await database.aclose()
    await handover.release([finished])
    assert not await redis_client.exists(keys.delivery(delivery_id))

    _, [outcome] = await store.restart([delivery_id], frozenset({Status.FAILED}))
    assert outcome == "ok"
    again = await store.get(delivery_id)
    assert again.status is Status.PENDING and again.attempt_count == 1
    # Held by its delivery in flight again and by its own entry, which history has yet to write.
    assert await redis_client.hget(keys.event(event.id), "live") == b"2"


async def test_a_large_payload_stays_out_of_the_history_stream_and_history_has_it_whole(
    redis_client: redis.asyncio.Redis, archive: Archive, postgres_server: PostgresServer
) -> None:
    store = DeliveryStore(redis_client, 3600, 3600, archive, payload_bytes_per_call=250_000)
    handover = HistoryHandover(redis_client, payload_bytes_per_call=250_000)
    created = rfc3339(datetime.now(UTC))
    payloads = [orjson.dumps({"text": "x" * size}) for size in (100, *[100_000] * 5)]
    events = [
        NewEvent(ids.new_id("evt"), "post.published", "t1", created, 0, None, payload)
        for payload in payloads
    ]
    for event in events:
        await store.accept(event, [])

    # The writer reads up to a thousand entries in one call: a large payload's entry holds
    # its size, not the payload.
    entries = await redis_client.xrange(keys.HISTORY)
    assert len(entries) == 6
    assert max(sum(len(k) + len(v) for k, v in f.items()) for _, f in entries) < 1024
    handed = await handover.handed_over("writer", 10, None)
    assert [h.event.payload for h in handed if h.event] == payloads
    database = Database(postgres_server.url)
    try:
        await writer.write(await database.pool(), handed, set())
        await handover.release(handed)
        rows = await (await database.pool()).fetch("SELECT id, payload FROM events")
    finally:
        await database.aclose()
    assert {r["id"]: r["payload"] for r in rows} == {e.id: e.payload for e in events}
    assert not [k async for k in redis_client.scan_iter(match=keys.event("*"))]


async def test_a_large_events_entry_read_again_after_its_event_left_redis_is_let_go(
    redis_client: redis.asyncio.Redis, archive: Archive
) -> None:
    store = DeliveryStore(redis_client, 3600, 3600, archive)
    handover = HistoryHandover(redis_client)
    created = rfc3339(datetime.now(UTC))
    payload = orjson.dumps({"text": "x" * 10_000})
    event = NewEvent(ids.new_id("evt"), "post.published", "t1", created, 0, None, payload)
    await store.accept(event, [])
    [first] = await handover.handed_over("slow", 10, None)
    assert first.event is not None and first.event.payload == payload
    # Another writer adopted the entry, wrote the event and let it go from Redis; the slow
    # writer reads the entry again, and finds nothing left to write.
    await redis_client.delete(keys.event(event.id))
    [again] = await handover.unreleased("slow", 10)
    assert again.entry_id == first.entry_id and again.event is None and again.delivery is None
    await handover.release([again])
    assert await redis_client.xlen(keys.HISTORY) == 0


async def _failed_into_history(
    store: DeliveryStore,
    redis_client: redis.asyncio.Redis,
    postgres_server: PostgresServer,
    payloads: list[bytes],
    fanout: int,
) -> list[str]:
    """Events of these payloads, each fanned out to `fanout` webhooks, whose deliveries failed
    and then left Redis, with their events, for history; the delivery ids."""
    hooks = [f"wh_{n}" for n in range(fanout)]
    for hook in hooks:
        record = {"id": hook, "enabled": True, "tenant_id": "t1"}
        await redis_client.set(keys.webhook(hook), orjson.dumps(record))
    created = datetime.now(UTC)
    delivery_ids = []
    for payload in payloads:
        event = NewEvent(
            ids.new_id("evt"), "post.published", "t1", rfc3339(created), 0, None, payload
        )
        planned = [PlannedDelivery(ids.new_id("dlv"), hook) for hook in hooks]
        await store.accept(event, planned)
        delivery_ids += [d.id for d in planned]
    attempt = Attempt(1, rfc3339(created), 5, 500, None, "", {}, "http://127.0.0.1/")
    failed = Settlement(Status.FAILED, attempt, None, 500, "HTTP 500", endpoint_ok=False)
    while claims := (await store.claim("w", 100, lease_ms=60_000, concurrency=100)).claims:
        for claim in claims:
            assert (await store.settle(claim, failed)).written
    database = Database(postgres_server.url)
    handover = HistoryHandover(redis_client)
    try:
        while handed := await handover.handed_over("writer", 1000, None):
            await writer.write(await database.pool(), handed, set())
            await handover.release(handed)
    finally:
        await database.aclose()
    assert not [k async for k in redis_client.scan_iter(match="relay:evt:*")]
    # Loaded, as on any Redis a retry has run on: a first call would be told NOSCRIPT and
    # made again.
    await redis_client.script_load(script_text(Transition.RESTART.value))
    return delivery_ids


async def _calls(redis_client: redis.asyncio.Redis) -> tuple[int, int]:
    """Scripts Redis has run, and bytes it has read from its clients, so far."""
    scripts = (await redis_client.info("commandstats")).get("cmdstat_evalsha", {"calls": 0})
    read = (await redis_client.info("stats"))["total_net_input_bytes"]
    return int(scripts["calls"]), int(read)


async def test_a_retry_brings_an_events_payload_back_once_for_all_its_deliveries(
    redis_client: redis.asyncio.Redis, archive: Archive, postgres_server: PostgresServer
) -> None:
    store = DeliveryStore(redis_client, 3600, 3600, archive)
    payload = orjson.dumps({"text": "x" * 100_000})
    delivery_ids = await _failed_into_history(store, redis_client, postgres_server, [payload], 20)

    scripts, read = await _calls(redis_client)
    _, outcomes = await store.restart(delivery_ids, frozenset({Status.FAILED}))
    after_scripts, after_read = await _calls(redis_client)

    assert outcomes == ["ok"] * 20
    assert after_scripts - scripts == 1
    # Once, not once per delivery: Redis decodes the call's argument while everyone waits.
    assert after_read - read < 2 * len(payload), after_read - read
    claims = (await store.claim("w", 100, lease_ms=60_000, concurrency=100)).claims
    assert sorted(c.delivery_id for c in claims) == sorted(delivery_ids)
    assert {c.payload for c in claims} == {payload}


async def test_a_retry_of_many_large_events_comes_back_in_calls_of_bounded_payload(
    redis_client: redis.asyncio.Redis, archive: Archive, postgres_server: PostgresServer
) -> None:
    store = DeliveryStore(redis_client, 3600, 3600, archive, payload_bytes_per_call=250_000)
    payloads = [orjson.dumps({"n": n, "text": "x" * 100_000}) for n in range(5)]
    delivery_ids = await _failed_into_history(store, redis_client, postgres_server, payloads, 2)

    scripts, _ = await _calls(redis_client)
    _, outcomes = await store.restart(delivery_ids, frozenset({Status.FAILED}))
    after_scripts, _ = await _calls(redis_client)

    assert outcomes == ["ok"] * 10
    assert after_scripts - scripts == 3  # two events' payloads a call, and the fifth alone
    claims = []
    while taken := (await store.claim("w", 100, lease_ms=60_000, concurrency=100)).claims:
        claims += taken
    assert sorted(c.delivery_id for c in claims) == sorted(delivery_ids)
    assert {c.payload for c in claims} == set(payloads)


async def test_a_record_postgresql_refuses_is_held_apart_while_the_rest_of_history_goes_on(
    redis_client: redis.asyncio.Redis,
    archive: Archive,
    postgres_server: PostgresServer,
    history_db: asyncpg.Connection,
) -> None:
    store = DeliveryStore(redis_client, 3600, 3600, archive)
    handover = HistoryHandover(redis_client)
    await redis_client.set(
        keys.webhook("wh_1"), orjson.dumps({"id": "wh_1", "enabled": True, "tenant_id": "t1"})
    )
    # PostgreSQL refuses attempts sent to one URL: a rule that stands for anything a record may
    # hold that PostgreSQL will not take.
    refused_url, good_url = "http://127.0.0.1/refused", "http://127.0.0.1/"
    await history_db.execute(
        f"ALTER TABLE attempts ADD CONSTRAINT refused_url CHECK (url <> '{refused_url}')"
    )
    created = rfc3339(datetime.now(UTC))
    delivery_ids = [ids.new_id("dlv") for _ in range(5)]
    for delivery_id in delivery_ids:
        event = NewEvent(ids.new_id("evt"), "post.published", "t1", created, 0, None, b"{}")
        await store.accept(event, [PlannedDelivery(delivery_id, "wh_1")])
    claims = (await store.claim("w", 10, lease_ms=60_000, concurrency=10)).claims
    assert len(claims) == 5
    refused = claims[2].delivery_id
    for claim in claims:
        url = refused_url if claim.delivery_id == refused else good_url
        attempt = Attempt(1, created, 5, 500, None, "", {}, url)
        failed = Settlement(Status.FAILED, attempt, None, 500, "HTTP 500", endpoint_ok=False)
        assert (await store.settle(claim, failed)).written

    counts = Counts()
    database = Database(postgres_server.url)
    try:
        history = writer.HistoryWriter(handover, await database.pool(), "writer", counts)
        # One batch of all ten entries (five events, five finished deliveries).
        await history.flush(await handover.handed_over("writer", 100, None))

        # The rest of the batch is in history and gone from Redis; the refused delivery's
        # record is kept in Redis, and its entry is held apart with PostgreSQL's reason.
        attempts = await history_db.fetch("SELECT delivery_id, url FROM attempts")
        assert sorted(a["delivery_id"] for a in attempts) == sorted(set(delivery_ids) - {refused})
        left = [d for d in delivery_ids if await redis_client.exists(keys.delivery(d))]
        assert left == [refused]
        [(_, held)] = await redis_client.xrange(keys.HISTORY_HELD)
        assert held[b"i"] == refused.encode()
        assert b"CheckViolationError" in held[b"why"] and b"refused_url" in held[b"why"]
        assert await redis_client.xlen(keys.HISTORY) == 0
        assert (await redis_client.xpending(keys.HISTORY, keys.HISTORY_GROUP))["pending"] == 0
        assert counts.take()["history_records_held"] == 1

        # Once PostgreSQL takes it, a writer puts it back as it starts, and writes it.
        await history_db.execute("ALTER TABLE attempts DROP CONSTRAINT refused_url")
        stopping = asyncio.Event()
        running = asyncio.create_task(
            writer.HistoryWriter(handover, await database.pool(), "writer", counts).run(stopping)
        )
        try:
            deadline = time.monotonic() + 30
            while await redis_client.exists(keys.delivery(refused)):
                assert time.monotonic() < deadline, "the held record never reached history"
                await asyncio.sleep(0.05)
        finally:
            stopping.set()
            await running
    finally:
        await database.aclose()
    rows = await history_db.fetch("SELECT url FROM attempts WHERE delivery_id = $1", refused)
    assert [r["url"] for r in rows] == [refused_url]
    assert await redis_client.xlen(keys.HISTORY_HELD) == 0


async def test_past_the_held_bound_a_refused_record_stops_its_writer_as_it_always_did(
    redis_client: redis.asyncio.Redis,
    archive: Archive,
    postgres_server: PostgresServer,
    history_db: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # So many held means PostgreSQL refuses everything: the writer stops at the record, which
    # stays in the stream, where the history backlog's bound counts it and refuses new events.
    monkeypatch.setattr(handover_module, "HELD_MAX", 0)
    store = DeliveryStore(redis_client, 3600, 3600, archive)
    handover = HistoryHandover(redis_client)
    await history_db.execute("ALTER TABLE events ADD CONSTRAINT refused_type CHECK (type <> 'x')")
    created = rfc3339(datetime.now(UTC))
    await store.accept(NewEvent(ids.new_id("evt"), "x", "t1", created, 0, None, b"{}"), [])
    database = Database(postgres_server.url)
    try:
        history = writer.HistoryWriter(handover, await database.pool(), "writer", Counts())
        with pytest.raises(asyncpg.CheckViolationError):
            await history.flush(await handover.handed_over("writer", 100, None))
    finally:
        await database.aclose()
    assert await redis_client.xlen(keys.HISTORY) == 1
    assert (await redis_client.xpending(keys.HISTORY, keys.HISTORY_GROUP))["pending"] == 1
    assert not await redis_client.exists(keys.HISTORY_HELD)
