"""What an operator does to deliveries: retry one, cancel one, retry an event's failures."""

from __future__ import annotations

from dataclasses import replace

from relay.delivery.model import RETRYABLE, Delivery, Status
from relay.delivery.recovery import RECOVER_BATCH
from relay.errors import Conflict
from relay.resources import Resources
from relay.store.events import StoredEvent
from relay.timefmt import from_timestamp


async def retry(svc: Resources, delivery: Delivery) -> Delivery:
    """A finished delivery starts a fresh schedule now (history kept); a pending one gets a
    manual attempt now, which leaves its schedule as it was (one due already just goes)."""
    now_ms, [outcome] = await svc.deliveries.restart([delivery.id], RETRYABLE)
    if outcome not in ("ok", "manual"):
        raise Conflict(f"The delivery is {outcome}; it can be retried once its attempt ends.")
    # As the transition wrote it: a worker may take it the next moment.
    stamp = from_timestamp(now_ms / 1000)
    if outcome == "manual":
        return replace(delivery, updated_at=stamp)
    cycle_start = delivery.cycle_start if delivery.status is Status.PENDING else None
    return replace(
        delivery,
        status=Status.PENDING,
        cycle_start=delivery.attempt_count if cycle_start is None else cycle_start,
        next_attempt_at=stamp,
        updated_at=stamp,
        delivered_at=None,
    )


async def cancel(svc: Resources, delivery: Delivery) -> Delivery:
    """Cancel a pending delivery: it is never sent afterwards."""
    outcome = await svc.deliveries.cancel(delivery.id)
    if outcome == "missing":  # it has left Redis: it ended, as history says
        outcome = delivery.status.value
    if outcome != "ok":
        raise Conflict(f"The delivery is {outcome}; only a pending delivery can be canceled.")
    return await svc.deliveries.get(delivery.id)


async def retry_failures(svc: Resources, event: StoredEvent) -> int:
    """Send an event's failed deliveries again; how many went."""
    failed_only = frozenset({Status.FAILED})
    requeued = 0
    for start in range(0, len(event.delivery_ids), RECOVER_BATCH):
        chunk = event.delivery_ids[start : start + RECOVER_BATCH]
        requeued += (await svc.deliveries.restart(chunk, failed_only))[1].count("ok")
    return requeued
