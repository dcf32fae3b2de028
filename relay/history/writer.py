"""The history writer: moves records that reached their end from Redis to PostgreSQL.

Scripts that end a record add its kind and id to a Redis stream in the same atomic step. Each
worker reads the stream as one consumer of a group, in batches of whatever came since the last
one (up to `BATCH` entries), writes the batch in one PostgreSQL transaction, and only then
releases the records from Redis and acknowledges their entries (`release.lua`). A writer whose
write failed tries the same entries again first; one that dies between the two leaves its
entries pending, and another writer adopts them after `ADOPT_AFTER_MS`. Writing a record twice
leaves one row (every insert is keyed), so a repeat after a crash or a lost reply is harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg

from relay.delivery.handover import Handover, HistoryHandover
from relay.delivery.model import Status, attempt_view
from relay.delivery.outage import REDIS_AWAY, Backoff
from relay.history import partitions
from relay.history.db import POSTGRES_AWAY
from relay.history.reader import id_time
from relay.ids import created_ms
from relay.metrics import DURATION_BUCKETS, Counts
from relay.store import codec

log = logging.getLogger("relay.history")

BATCH = 1000
# After a batch smaller than BATCH, a writer waits this long before reading again, so that the
# next batch gathers what came meanwhile: one transaction and one release for many records
# rather than for each (records reach PostgreSQL's lists this much later, at most).
LINGER_SECONDS = 0.1
# How long a writer waits for a record when none is there: it answers as soon as one comes,
# so this only sets how often an idle writer asks Redis (once a second).
BLOCK_MS = 1000
# A writer holding entries this long without releasing them has died: another takes them over.
ADOPT_AFTER_MS = 15_000
_ADOPT_EVERY_SECONDS = 10.0
# What PostgreSQL refuses for what a record holds (a value out of a column's range, a broken
# constraint), not for its own state: written again, it would be refused again, and every batch
# after it with it. Such a record is held apart (see `HistoryWriter.flush`).
_REFUSED = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError)
# How often a writer puts held records back to be tried again (and once as it starts): a
# record refused for a reason since mended (a migration, a dropped constraint) goes in then.
RETURN_HELD_EVERY_SECONDS = 600.0

# Each insert counts what it newly wrote into the per-minute `stats`, in the same statement:
# a record written again after a crash inserts nothing, so it is not counted twice.
_COUNT = """
INSERT INTO stats (tenant_id, minute, webhook_id, kind, label, bucket, n, duration_ms)
SELECT tenant_id, date_trunc('minute', at), webhook_id, '{kind}', label, bucket, count(*),
       sum(duration_ms)
FROM new WHERE {counted} GROUP BY 1, 2, 3, 5, 6
ON CONFLICT (tenant_id, minute, webhook_id, kind, label, bucket) DO UPDATE
SET n = stats.n + EXCLUDED.n, duration_ms = stats.duration_ms + EXCLUDED.duration_ms
"""

_EVENTS = """
WITH new AS (
INSERT INTO events (tenant_id, id, created_at, type, upstream_id, payload, delivery_ids)
SELECT e.tenant_id, e.id, e.created_at, e.type, e.upstream_id, e.payload,
       ARRAY(SELECT jsonb_array_elements_text(e.delivery_ids::jsonb))
FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::text[], $6::bytea[],
            $7::text[])
     AS e(tenant_id, id, created_at, type, upstream_id, payload, delivery_ids)
ON CONFLICT DO NOTHING
RETURNING tenant_id, created_at AS at, '' AS webhook_id, type AS label, 0 AS bucket,
          0 AS duration_ms
)""" + _COUNT.format(kind="event", counted="true")

# Deliveries and attempts, a row or more each per delivery, go as one JSON text a statement:
# asyncpg encodes an array parameter value by value, with an abstract-class check on each,
# which cost the worker three times the CPU of orjson's text (PostgreSQL's work is the same).
# Events keep arrays: their payloads are bytes, which JSON does not carry.
# Times that the records hold as unix ms go as such (`_MS`), and PostgreSQL makes them
# timestamps: the worker makes no datetime for them. ms / 1000.0 comes back to the microsecond
# exactly (a double is off by far less than the half microsecond to_timestamp rounds to).
_MS = "ms"
_DELIVERY_COLUMNS = (
    *(("tenant_id", "text"), ("id", "text"), ("created_at", _MS)),
    *(("event_id", "text"), ("webhook_id", "text"), ("event_type", "text"), ("status", "text")),
    *(("attempt_count", "int"), ("cycle_start", "int"), ("last_status_code", "int")),
    *(("last_error", "text"), ("updated_at", _MS), ("delivered_at", _MS)),
)
_ATTEMPT_COLUMNS = (
    *(("tenant_id", "text"), ("delivery_id", "text"), ("number", "int")),
    *(("created_at", _MS), ("webhook_id", "text"), ("started_at", "timestamptz")),
    *(("duration_ms", "int"), ("status_code", "int"), ("error", "text")),
    *(("response_body", "text"), ("request_headers", "jsonb"), ("url", "text")),
    ("trigger", "text"),
)


def _names(columns: Sequence[tuple[str, str]]) -> str:
    return ", ".join(name for name, _ in columns)


def _recordset(columns: Sequence[tuple[str, str]]) -> str:
    """The rows of the JSON text in $1, as a table of `columns`, times made from unix ms."""
    typed = ", ".join(f"{name} {'bigint' if kind == _MS else kind}" for name, kind in columns)
    values = ", ".join(
        f"to_timestamp({name} / 1000.0)" if kind == _MS else name for name, kind in columns
    )
    return f"SELECT {values} FROM json_to_recordset($1::json) AS r({typed})"


def _json_rows(columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[object]]) -> str:
    """`rows` as the JSON text `_recordset(columns)` reads."""
    names = [name for name, _ in columns]
    return codec.dumps([dict(zip(names, row, strict=True)) for row in rows]).decode()


# A delivery's row is written as pending with its event, then as it ends (and again if it is
# retried): the newer state wins, never an older one. Endings are counted; the same ending
# written again changes nothing, so it is not counted again.
_DELIVERIES = f"""
WITH new AS (
INSERT INTO deliveries ({_names(_DELIVERY_COLUMNS)})
{_recordset(_DELIVERY_COLUMNS)}
ON CONFLICT (tenant_id, id, created_at) DO UPDATE SET
    status = EXCLUDED.status, attempt_count = EXCLUDED.attempt_count,
    cycle_start = EXCLUDED.cycle_start, last_status_code = EXCLUDED.last_status_code,
    last_error = EXCLUDED.last_error, updated_at = EXCLUDED.updated_at,
    delivered_at = EXCLUDED.delivered_at
WHERE deliveries.updated_at < EXCLUDED.updated_at
RETURNING tenant_id, updated_at AS at, webhook_id, status AS label, 0 AS bucket,
          0 AS duration_ms
)""" + _COUNT.format(kind="delivery", counted="label <> 'pending'")

# Latency buckets are the bounds of relay_attempt_duration_seconds, in ms ($2).
_ATTEMPTS = f"""
WITH new AS (
INSERT INTO attempts ({_names(_ATTEMPT_COLUMNS)})
{_recordset(_ATTEMPT_COLUMNS)}
ON CONFLICT DO NOTHING
RETURNING tenant_id, started_at AS at, webhook_id,
          coalesce((status_code / 100)::text || 'xx', 'error') AS label,
          width_bucket(duration_ms, $2::int[]) AS bucket, duration_ms
)""" + _COUNT.format(kind="attempt", counted="true")
_AUDIT = """
INSERT INTO audit (tenant_id, id, created_at, at, action, token_id, role, object_id, request_id)
SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[], $5::text[],
                     $6::text[], $7::text[], $8::text[], $9::text[])
ON CONFLICT DO NOTHING
"""
BUCKET_BOUNDS_MS = [round(le * 1000) for le in DURATION_BUCKETS]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _moment(stamp: str | None) -> datetime | None:
    # Stamps relay wrote itself (timefmt.rfc3339), so the C parser reads them: the general
    # RFC 3339 reader, for what clients send, takes twenty times as long.
    return datetime.fromisoformat(stamp) if stamp else None


def _json(value: object) -> str:
    return codec.dumps(value).decode()


def _columns(rows: Sequence[Sequence[object]]) -> list[list[object]]:
    """Rows as one list per column, for unnest."""
    return [list(column) for column in zip(*rows, strict=True)]


def _ms(value: object) -> int | None:
    # A record's number as text, or as a number where a script passed one through; "" for none.
    return int(value) if value not in ("", None) else None  # type: ignore[call-overload]


def _delivery_rows(handed: Sequence[Handover]) -> list[tuple[Any, ...]]:
    """Each delivery's newest state in the batch: as pending with its event, or as it ended or
    came back in flight (one statement may not write a row twice). Times in unix ms."""
    newest: dict[str, tuple[Any, ...]] = {}
    for h in handed:
        if (e := h.event) is not None:
            accepted = created_ms(e.id)
            for delivery_id, webhook_id in h.fanout:
                newest[delivery_id] = (
                    *(e.tenant_id, delivery_id, created_ms(delivery_id), e.id, webhook_id, e.type),
                    *(Status.PENDING.value, 0, 0, None, None, accepted, None),
                )
        if (d := h.delivery) is not None:
            row = (
                *(d["tenant_id"], d["id"], created_ms(d["id"]), d["event_id"], d["webhook_id"]),
                *(d["event_type"], Status(d["status"]).value, int(d["attempt_count"])),
                *(int(d["cycle_start"]), _ms(d.get("last_status_code"))),
                *(d.get("last_error") or None, int(d["updated_ms"]), _ms(d.get("delivered_ms"))),
            )
            if d["id"] not in newest or newest[d["id"]][11] <= row[11]:
                newest[d["id"]] = row
    return list(newest.values())


def _attempt_rows(handed: Sequence[Handover]) -> list[tuple[Any, ...]]:
    return [
        (
            *(d["tenant_id"], d["id"], a["number"], created_ms(d["id"]), d["webhook_id"]),
            *(a["started_at"], a["duration_ms"], a["status_code"], a["error"]),
            *(a["response_body"], a["request_headers"], a["url"], a["trigger"].value),
        )
        for h in handed
        if (d := h.delivery) is not None
        for a in map(attempt_view, h.attempts)
    ]


def _day(ms: int) -> date:
    return partitions.day_of(_EPOCH + timedelta(milliseconds=ms))


async def write(pool: asyncpg.Pool, handed: Sequence[Handover], made: set[date]) -> None:
    """Write a batch of records in one transaction (a repeat leaves the same rows).

    `made`: the days whose partitions this writer knows exist; those the batch needs beyond
    them are made first (and added). A day dropped by retention since is made again.
    """
    event_rows = [
        # An array of arrays would be read as a two-dimensional array: the ids go as JSON text.
        (e.tenant_id, e.id, id_time(e.id), e.type, e.upstream_id, e.payload, _json(e.delivery_ids))
        for h in handed
        if (e := h.event) is not None
    ]
    delivery_rows = _delivery_rows(handed)
    attempt_rows = _attempt_rows(handed)
    audit_rows = [
        (
            *(a.tenant_id or "", a.id, id_time(a.id), _moment(a.at), a.action),
            *(a.actor.token_id, a.actor.role, a.object_id, a.request_id),
        )
        for h in handed
        if (a := h.audit) is not None
    ]
    # Rows go to the day of their id; what they count, to the day it happened.
    moments: list[datetime | None] = [r[2] for r in event_rows + audit_rows]
    moments += [_moment(r[5]) for r in attempt_rows]
    days = {partitions.day_of(m) for m in moments if m is not None}
    days |= {_day(ms) for r in delivery_rows for ms in (r[2], r[11])}
    rows = (event_rows, delivery_rows, attempt_rows, audit_rows)
    async with pool.acquire() as conn:
        for retries_left in (1, 0):
            try:
                await _insert(conn, days - made, *rows)
                break
            # No partition for a row: retention dropped one, so make every day's again. Or a
            # deadlock: making a day's partitions locks each table whole, and a writer or a
            # list holding one of them while it waits for another is a cycle PostgreSQL breaks
            # by rolling one side back. Either way nothing was written, and the inserts can
            # simply go again.
            except (asyncpg.CheckViolationError, asyncpg.DeadlockDetectedError):
                if not retries_left:
                    raise
                made.clear()
        made |= days


async def _insert(
    conn: asyncpg.Connection,
    missing: set[date],
    event_rows: list[tuple[Any, ...]],
    delivery_rows: list[tuple[Any, ...]],
    attempt_rows: list[tuple[Any, ...]],
    audit_rows: list[tuple[Any, ...]],
) -> None:
    """Make the `missing` days' partitions, then insert the rows in one transaction."""
    if missing:
        await partitions.ensure(conn, missing)
    async with conn.transaction():
        if event_rows:
            await conn.execute(_EVENTS, *_columns(event_rows))
        if delivery_rows:
            await conn.execute(_DELIVERIES, _json_rows(_DELIVERY_COLUMNS, delivery_rows))
        if attempt_rows:
            await conn.execute(
                _ATTEMPTS, _json_rows(_ATTEMPT_COLUMNS, attempt_rows), BUCKET_BOUNDS_MS
            )
        if audit_rows:
            await conn.execute(_AUDIT, *_columns(audit_rows))


class HistoryWriter:
    """One worker's share of the history writing, until stopped."""

    def __init__(
        self, store: HistoryHandover, pool: asyncpg.Pool, consumer: str, counts: Counts
    ) -> None:
        self._store = store
        self._pool = pool
        self._consumer = consumer
        self._counts = counts
        # Days whose partitions exist, so a batch does not ask the catalog each time.
        self._partitions: set[date] = set()

    async def run(self, stopping: asyncio.Event) -> None:
        """Write and release batches until `stopping` is set; outages are waited out."""
        backoff = Backoff()
        adopted_at = returned_at = 0.0
        # After a failed write the batch is still this writer's: it goes first, until none is.
        retrying = False
        while not stopping.is_set():
            try:
                if time.monotonic() - returned_at > RETURN_HELD_EVERY_SECONDS:
                    returned_at = time.monotonic()
                    await self._store.return_held(BATCH)
                if retrying:
                    handed = await self._store.unreleased(self._consumer, BATCH)
                    retrying = bool(handed)
                elif time.monotonic() - adopted_at > _ADOPT_EVERY_SECONDS:
                    adopted_at = time.monotonic()
                    handed = await self._store.adopt(self._consumer, ADOPT_AFTER_MS, BATCH)
                else:
                    handed = await self._store.handed_over(self._consumer, BATCH, BLOCK_MS)
                if handed:
                    retrying = True
                    await self.flush(handed)
                    retrying = False
                backoff.reset()
                if 0 < len(handed) < BATCH:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stopping.wait(), LINGER_SECONDS)
            except REDIS_AWAY as exc:
                log.warning("redis unavailable to the history writer (%s); retrying", exc)
                # Entries it may have read meanwhile (not yet on the replicas relay waits for,
                # or their answer lost) are this writer's now: they go first.
                retrying = True
                await backoff.wait()
            except POSTGRES_AWAY as exc:
                self._counts.add("history_write_errors")
                log.warning("postgresql unavailable to the history writer (%s); retrying", exc)
                await backoff.wait()
            except asyncpg.PostgresError as exc:
                # Not an outage: a bug or a full disk. Say so loudly, keep the records, retry.
                self._counts.add("history_write_errors")
                log.error("the history writer could not write a batch: %s", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), 5.0)

    async def flush(self, handed: Sequence[Handover]) -> None:
        """Write one batch to PostgreSQL, then let it go from Redis.

        A batch PostgreSQL refuses for what one of its records holds is halved until that
        record is alone: the rest is written and released, and that one is held apart, kept in
        Redis, and tried again later (`RETURN_HELD_EVERY_SECONDS`). One record, whoever sent
        what is in it, never stops history for everyone. Finding it costs two writes a halving.
        """
        try:
            await write(self._pool, handed, self._partitions)
        except _REFUSED as exc:
            if len(handed) == 1:
                if not await self._hold(handed[0], exc):
                    raise  # so many held that PostgreSQL refuses everything: stop here
                return
            half = len(handed) // 2
            await self.flush(handed[:half])
            await self.flush(handed[half:])
            return
        await self._store.release(handed)

    async def _hold(self, handed: Handover, exc: Exception) -> bool:
        if not await self._store.hold(handed, f"{type(exc).__name__}: {exc}"):
            return False
        self._counts.add("history_records_held")
        # PostgreSQL's message names the column and rule, as relay's own errors do; the record
        # itself stays in Redis, for `relay_history_held` to count and an operator to see.
        log.error(
            "postgresql refused the record of history entry %s (%s): it is held apart, kept in "
            "redis and tried again in %d minutes; the rest of its batch was written",
            handed.entry_id,
            exc,
            RETURN_HELD_EVERY_SECONDS // 60,
        )
        return True
