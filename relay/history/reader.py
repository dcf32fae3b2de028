"""Reading history: the `Archive` the delivery and event stores fall back to.

Every query names the partitions it needs through `created_at` (the time in an id), and every
list is an index range scan newest first, so a page costs the same on a day or on a year.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from relay import ids
from relay.audit import Actor, AuditEntry
from relay.delivery.model import Delivery, Status
from relay.delivery.store import DeliveryFilter
from relay.history.db import POSTGRES_AWAY, Database
from relay.store.audit import AuditQuery
from relay.store.events import EventFilter, StoredEvent
from relay.timefmt import rfc3339

log = logging.getLogger("relay.history")


def id_time(value: str) -> datetime:
    """The moment in an id: the `created_at` of its row."""
    return datetime.fromtimestamp(ids.created_ms(value) / 1000, UTC)


def _known(value: str, prefix: str) -> datetime | None:
    """The moment of an id of this kind; None for anything that cannot be one (no lookup)."""
    if not ids.has_prefix(value, prefix):
        return None
    try:
        return id_time(value)
    except (ValueError, OverflowError):  # well formed, but past the year 9999
        return None


def _stamp(moment: datetime | None) -> str | None:
    return rfc3339(moment) if moment else None


def _delivery(row: asyncpg.Record) -> Delivery:
    return Delivery(
        id=row["id"],
        event_id=row["event_id"],
        webhook_id=row["webhook_id"],
        tenant_id=row["tenant_id"],
        event_type=row["event_type"],
        status=Status(row["status"]),
        attempt_count=row["attempt_count"],
        cycle_start=row["cycle_start"],
        next_attempt_at=None,
        last_status_code=row["last_status_code"],
        last_error=row["last_error"],
        created_at=rfc3339(row["created_at"]),
        updated_at=rfc3339(row["updated_at"]),
        delivered_at=_stamp(row["delivered_at"]),
    )


def _event(row: asyncpg.Record) -> StoredEvent:
    return StoredEvent(
        id=row["id"],
        type=row["type"],
        tenant_id=row["tenant_id"],
        created_at=rfc3339(row["created_at"]),
        upstream_id=row["upstream_id"],
        payload=bytes(row["payload"]),
        delivery_ids=list(row["delivery_ids"]),
    )


# The last millisecond a timestamp can name, counted in whole milliseconds.
_LAST_MS = (datetime.max.replace(tzinfo=UTC) - datetime.fromtimestamp(0, UTC)) // timedelta(
    milliseconds=1
)


class _Where:
    """A WHERE clause built one condition at a time, with numbered parameters."""

    def __init__(self) -> None:
        self.conditions: list[str] = []
        self.args: list[Any] = []

    def param(self, value: Any) -> str:
        """A numbered parameter holding `value`, for use in the statement."""
        self.args.append(value)
        return f"${len(self.args)}"

    def add(self, condition: str, value: Any) -> None:
        """Add `condition`, where `$` stands for `value`'s parameter."""
        self.conditions.append(condition.replace("$", self.param(value)))

    def window(
        self, prefix: str, before: str | None, since_ms: int | None, until_ms: int | None
    ) -> None:
        """Ids below the cursor, made within [since, until]: bounds on both id and partition."""
        if before is not None:
            self.add("id < $", before)
        if since_ms is not None:
            self.add("id >= $", ids.time_floor(prefix, since_ms))
            self.add("created_at >= $", datetime.fromtimestamp(since_ms / 1000, UTC))
        if until_ms is not None:
            self.add("id < $", ids.time_floor(prefix, until_ms + 1))
            # A window to the calendar's last millisecond (9999-12-31T23:59:59.999Z) has no
            # later moment to bound the partitions by, and needs none.
            if until_ms < _LAST_MS:
                self.add("created_at < $", datetime.fromtimestamp((until_ms + 1) / 1000, UTC))

    @property
    def sql(self) -> str:
        return " AND ".join(self.conditions) if self.conditions else "true"


@dataclass(frozen=True, slots=True)
class Query:
    """One statement and its parameters: what a read runs (and what EXPLAIN is asked about)."""

    sql: str
    args: tuple[Any, ...]


def _newest_first(table: str, where: _Where, limit: int) -> Query:
    # One row more than the page tells whether there is a next one.
    return Query(
        f"SELECT * FROM {table} WHERE {where.sql} ORDER BY id DESC LIMIT {int(limit) + 1}",
        tuple(where.args),
    )


def _selecting(query: DeliveryFilter) -> _Where:
    """The conditions on a delivery's tenant, webhook and event type, those `query` sets."""
    where = _Where()
    for column in ("tenant_id", "webhook_id", "event_type"):
        value = getattr(query, column)
        if value:
            where.add(f"{column} = $", value)
    return where


def delivery_list(query: DeliveryFilter, limit: int, before: str | None) -> Query:
    """The statement behind a page of the delivery log."""
    where = _selecting(query)
    if query.status is not None:
        # History keeps a delivery in flight as pending, whichever state it is in now.
        stored = Status.PENDING if query.status is Status.DELIVERING else query.status
        where.add("status = $", stored.value)
    where.window("dlv", before, query.since_ms, query.until_ms)
    return _newest_first("deliveries", where, limit)


def failed_after(query: DeliveryFilter, after: str, count: int) -> Query:
    """The statement behind one batch of a recovery: ids of the deliveries `query` selects
    after `after`, oldest first, that may have failed — failed, or in flight (history keeps
    those as pending, and they may have failed since)."""
    where = _selecting(query)
    where.conditions.append("status IN ('failed', 'pending')")
    where.add("id > $", after)
    # The cursor is at or after `since`, so it bounds the partitions read from below.
    where.add("created_at >= $", id_time(after))
    where.window("dlv", None, None, query.until_ms)
    return Query(
        f"SELECT id FROM deliveries WHERE {where.sql} ORDER BY id LIMIT {int(count)}",
        tuple(where.args),
    )


def event_list(query: EventFilter, limit: int, before: str | None) -> Query:
    """The statement behind a page of events."""
    where = _Where()
    if query.tenant_id:
        where.add("tenant_id = $", query.tenant_id)
    if query.type:
        where.add("type = $", query.type)
    if query.upstream_id is not None:
        where.add("upstream_id = $", query.upstream_id)
    where.window("evt", before, query.since_ms, query.until_ms)
    return _newest_first("events", where, limit)


def audit_list(query: AuditQuery, limit: int, before: str | None) -> Query:
    """The statement behind a page of the audit trail."""
    where = _Where()
    if query.tenant_id is not None:
        where.add("tenant_id = $", query.tenant_id)
    if query.action:
        where.add("action = $", query.action)
    where.window("aud", before, query.since_ms, query.until_ms)
    return _newest_first("audit", where, limit)


def _audit(row: asyncpg.Record) -> AuditEntry:
    return AuditEntry(
        id=row["id"],
        at=rfc3339(row["at"]),
        action=row["action"],
        actor=Actor(row["token_id"], row["role"]),
        object_id=row["object_id"],
        tenant_id=row["tenant_id"] or None,
        request_id=row["request_id"],
    )


DELIVERY_BY_ID = "SELECT * FROM deliveries WHERE id = $1 AND created_at = $2"
EVENT_BY_ID = "SELECT * FROM events WHERE id = $1 AND created_at = $2"
ATTEMPTS = (
    "SELECT * FROM attempts WHERE tenant_id = $1 AND delivery_id = $2 AND created_at = $3 "
    "ORDER BY number"
)
# The first event of each (tenant, upstream id) pair asked for, in one query for many pairs.
EVENTS_BY_UPSTREAM_ID = """
SELECT DISTINCT ON (e.tenant_id, e.upstream_id) e.*
FROM events e JOIN unnest($1::text[], $2::text[]) AS asked(tenant_id, upstream_id)
  ON e.tenant_id = asked.tenant_id AND e.upstream_id = asked.upstream_id
WHERE e.upstream_id IS NOT NULL
ORDER BY e.tenant_id, e.upstream_id, e.created_at
"""


async def _page(db: Database, query: Query, limit: int) -> tuple[list[asyncpg.Record], str | None]:
    rows = await (await db.pool()).fetch(query.sql, *query.args)
    if len(rows) > limit:
        return rows[:limit], rows[limit - 1]["id"]
    return rows, None


class PostgresArchive:
    """History in PostgreSQL, as the stores read it."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def delivery(self, delivery_id: str) -> Delivery | None:
        """A delivery by id, or None."""
        when = _known(delivery_id, "dlv")
        if when is None:
            return None
        row = await (await self._db.pool()).fetchrow(DELIVERY_BY_ID, delivery_id, when)
        return _delivery(row) if row else None

    async def deliveries(self, delivery_ids: Sequence[str]) -> list[Delivery]:
        """The deliveries of these ids that history holds."""
        known = {i: when for i in delivery_ids if (when := _known(i, "dlv")) is not None}
        wanted = list(known)
        if not wanted:
            return []
        rows = await (await self._db.pool()).fetch(
            "SELECT * FROM deliveries WHERE id = ANY($1::text[]) "
            "AND created_at = ANY($2::timestamptz[])",
            wanted,
            sorted({known[i] for i in wanted}),
        )
        return [_delivery(r) for r in rows]

    async def attempts(self, delivery: Delivery) -> list[dict[str, object]]:
        """A delivery's attempts, oldest first."""
        rows = await (await self._db.pool()).fetch(
            ATTEMPTS,
            delivery.tenant_id,
            delivery.id,
            id_time(delivery.id),
        )
        return [
            {
                "number": r["number"],
                "started_at": rfc3339(r["started_at"]),
                "duration_ms": r["duration_ms"],
                "status_code": r["status_code"],
                "error": r["error"],
                "response_body": r["response_body"],
                "request_headers": r["request_headers"],
                "url": r["url"],
                "trigger": r["trigger"],
            }
            for r in rows
        ]

    async def delivery_page(
        self, query: DeliveryFilter, limit: int, before: str | None
    ) -> tuple[list[Delivery], str | None]:
        """Matching deliveries below `before`, newest first; the cursor if more."""
        rows, cursor = await _page(self._db, delivery_list(query, limit, before), limit)
        return [_delivery(r) for r in rows], cursor

    async def failed_after(self, query: DeliveryFilter, after: str, count: int) -> list[str]:
        """Ids of the deliveries `query` selects after `after` that may have failed, oldest
        first."""
        statement = failed_after(query, after, count)
        rows = await (await self._db.pool()).fetch(statement.sql, *statement.args)
        return [r["id"] for r in rows]

    async def event(self, event_id: str) -> StoredEvent | None:
        """An event by id, or None."""
        when = _known(event_id, "evt")
        if when is None:
            return None
        row = await (await self._db.pool()).fetchrow(EVENT_BY_ID, event_id, when)
        return _event(row) if row else None

    async def events_with_upstream_ids(
        self, pairs: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], StoredEvent]:
        """The event each (tenant, upstream id) pair was first accepted as, of those history has.

        None found while PostgreSQL is away: accepting events must not wait for history, and
        Redis still remembers the upstream ids of every event not yet written there.
        """
        tenants = [tenant for tenant, _ in pairs]
        upstream_ids = [upstream_id for _, upstream_id in pairs]
        try:
            rows = await (await self._db.pool()).fetch(EVENTS_BY_UPSTREAM_ID, tenants, upstream_ids)
        except POSTGRES_AWAY as exc:
            log.warning("cannot look for upstream ids in history (%s); accepting as new", exc)
            return {}
        return {(row["tenant_id"], row["upstream_id"]): _event(row) for row in rows}

    async def event_page(
        self, query: EventFilter, limit: int, before: str | None
    ) -> tuple[list[StoredEvent], str | None]:
        """Matching events below `before`, newest first; the cursor if more."""
        rows, cursor = await _page(self._db, event_list(query, limit, before), limit)
        return [_event(r) for r in rows], cursor

    async def audit_page(
        self, query: AuditQuery, limit: int, before: str | None
    ) -> tuple[list[AuditEntry], str | None]:
        """Matching audit entries below `before`, newest first; the cursor if more."""
        rows, cursor = await _page(self._db, audit_list(query, limit, before), limit)
        return [_audit(r) for r in rows], cursor


def counter_rows(
    first: int, step: int, points: int, tenant_id: str | None, webhook_id: str | None
) -> Query:
    """The statement summing the per-minute stats of a chart's points, of everyone, one
    tenant or one webhook."""
    where = _Where()
    start, length = where.param(first), where.param(step)
    where.conditions.append(f"minute >= to_timestamp({start})")
    where.add("minute < to_timestamp($)", first + step * points)
    if tenant_id is not None:
        where.add("tenant_id = $", tenant_id)
    if webhook_id is not None:
        where.add("webhook_id = $", webhook_id)
    return Query(
        f"SELECT (extract(epoch FROM minute)::bigint - {start}) / {length} AS point, "
        f"kind, label, bucket, sum(n)::bigint AS n FROM stats WHERE {where.sql} "
        "GROUP BY 1, 2, 3, 4",
        tuple(where.args),
    )


async def counters(
    db: Database,
    first: int,
    step: int,
    points: int,
    bounds: Sequence[float],
    tenant_id: str | None = None,
    webhook_id: str | None = None,
) -> list[Counter[str]]:
    """Per point of a chart from `first` (unix s), `points` of `step` seconds: the counters
    the overview's figures are made of, from the per-minute stats (`bounds`: latency buckets,
    in seconds, as Prometheus names them), narrowed to a tenant or a webhook when named."""
    query = counter_rows(first, step, points, tenant_id, webhook_id)
    rows = await (await db.pool()).fetch(query.sql, *query.args)
    series: list[Counter[str]] = [Counter() for _ in range(points)]
    for row in rows:
        c, n = series[row["point"]], row["n"]
        if row["kind"] == "event":
            c[f"events_accepted:{row['label']}"] += n
        elif row["kind"] == "delivery":
            c[f"deliveries:{row['label']}"] += n
        else:
            c[f"attempts:{row['label']}"] += n
            c["attempt_seconds_count"] += n
            # width_bucket's bucket b holds durations below bound b (0-based): each bound from
            # there up counts it, as Prometheus's cumulative buckets do.
            for le in bounds[row["bucket"] :]:
                c[f"attempt_seconds_bucket:{le}"] += n
    return series
