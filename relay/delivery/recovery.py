"""Recovery: every failed delivery of a webhook, tenant or event type in a time window goes
again, the first batch at once and the rest as a background job that saves its progress."""

from __future__ import annotations

from relay import ids
from relay.delivery.model import Recovery, Status
from relay.delivery.store import DeliveryFilter
from relay.resources import Resources
from relay.timefmt import from_timestamp

# Deliveries one recovery step restarts with one script call.
RECOVER_BATCH = 200
RECOVER_JOB = "recover"
# The `until` of a recovery given none: later than any delivery.
_NO_END_MS = 2**47


def _selection(record: dict[str, str]) -> DeliveryFilter:
    """The deliveries a recovery record sends again (its `since` is in its cursor)."""
    return DeliveryFilter(
        webhook_id=record["webhook_id"] or None,
        tenant_id=record["tenant_id"] or None,
        status=Status.FAILED,
        event_type=record.get("event_type") or None,
        until_ms=int(record["until_ms"]),
    )


async def _recover_step(
    svc: Resources, selection: DeliveryFilter, cursor: str
) -> tuple[str, int, bool]:
    """Restart the failed deliveries of one batch; (new cursor, how many went, finished)."""
    batch = await svc.deliveries.failed_after(selection, cursor, RECOVER_BATCH)
    if not batch:
        return cursor, 0, True
    _, outcomes = await svc.deliveries.restart(batch, frozenset({Status.FAILED}))
    return batch[-1], outcomes.count("ok"), len(batch) < RECOVER_BATCH


async def recover(svc: Resources, selection: DeliveryFilter) -> Recovery:
    """Send again every failed delivery `selection` names (its webhook, tenant and event type
    when set) created in [since, until].

    The first batch goes at once; a larger selection carries on as a background job whose
    progress `recovery_view` shows.
    """
    since_ms = selection.since_ms or 0
    until_ms = _NO_END_MS if selection.until_ms is None else selection.until_ms
    recovery_id = ids.new_id("rcv")
    record: dict[str, str] = {
        "id": recovery_id,
        "webhook_id": selection.webhook_id or "",
        "tenant_id": selection.tenant_id or "",
        "event_type": selection.event_type or "",
        "since_ms": str(since_ms),
        "until_ms": str(until_ms),
    }
    cursor, requeued, done = await _recover_step(
        svc, _selection(record), ids.time_floor("dlv", since_ms)
    )
    await svc.recoveries.start_recovery(
        recovery_id,
        {
            **record,
            "cursor": cursor,
            "requeued": requeued,
            "status": "done" if done else "running",
        },
    )
    if not done:
        await svc.jobs.enqueue(RECOVER_JOB, recovery_id, recovery_id)
    return recovery_view(await svc.recoveries.recovery(recovery_id))


async def continue_recovery(svc: Resources, recovery_id: str) -> None:
    """Run a recovery's remaining batches, saving progress after each (a re-run resumes)."""
    record = await svc.recoveries.recovery(recovery_id)
    cursor, requeued = record["cursor"], int(record["requeued"])
    done = record["status"] == "done"
    while not done:
        cursor, went, done = await _recover_step(svc, _selection(record), cursor)
        requeued += went
        await svc.recoveries.recovery_progress(recovery_id, cursor, requeued, done)


def recovery_view(record: dict[str, str]) -> Recovery:
    """A recovery from its progress record."""
    return Recovery(
        id=record["id"],
        webhook_id=record["webhook_id"] or None,
        tenant_id=record["tenant_id"] or None,
        event_type=record.get("event_type") or None,
        status=record["status"],
        requeued=int(record["requeued"]),
        since=from_timestamp(int(record["since_ms"]) / 1000),
        until=from_timestamp(int(record["until_ms"]) / 1000),
    )
