"""Accepting an event: validate it, fan it out to the tenant's webhooks, store it durably."""

from __future__ import annotations

from typing import Any

import orjson
import pydantic

from relay import logs, tracing
from relay.delivery.store import NewEvent, PlannedDelivery
from relay.events import EVENT_TYPES, envelope, validate_event
from relay.ids import new_id
from relay.services import Services
from relay.store.events import StoredEvent
from relay.store.idempotency import Commit
from relay.timefmt import now, rfc3339
from relay.validation import TenantId
from relay.webhooks import fan_out


class EventIn(pydantic.BaseModel):
    """`POST /v1/events`: an upstream event; `id` makes repeats harmless."""

    model_config = pydantic.ConfigDict(extra="forbid")

    type: str
    tenant_id: TenantId
    data: Any
    # PostgreSQL text holds no NUL: an id with one could never be written to history.
    id: str | None = pydantic.Field(None, min_length=1, max_length=255, pattern=r"^[^\x00]+$")


async def accept(
    ctx: Services, spec: EventIn, commit: Commit[dict[str, object]] | None = None
) -> tuple[dict[str, object], bool]:
    """Store the event with a delivery per matching webhook; (view, created).

    A repeated upstream id creates nothing and returns the first event (created False).
    `commit` stores the request's answer to the created event's view with it.
    """
    # Built-in types cost no Redis call; a registered one is one GET, so a PATCH applies at once.
    registered = None if spec.type in EVENT_TYPES else await ctx.event_types.get(spec.type)
    data = validate_event(spec.type, spec.data, registered)
    targets, undeliverable = fan_out(await ctx.webhooks.of_tenant(spec.tenant_id), spec.type)
    moment = now()
    now_ms = int(moment.timestamp() * 1000)
    if spec.id is not None and (
        earlier := await ctx.events.first_with_upstream_id(spec.tenant_id, spec.id)
    ):
        return await event_view(ctx, earlier), False
    event_id = new_id("evt", now_ms)
    created_at = rfc3339(moment)
    event = NewEvent(
        id=event_id,
        type=spec.type,
        tenant_id=spec.tenant_id,
        created_at=created_at,
        created_ms=now_ms,
        upstream_id=spec.id,
        payload=envelope(event_id, spec.type, spec.tenant_id, data, created_at),
        traceparent=tracing.traceparent(),
        request_id=logs.request_id(),
    )
    logs.annotate(tenant_id=spec.tenant_id, event_id=event_id)
    planned = [PlannedDelivery(new_id("dlv", now_ms), w.id) for w in targets]
    view = _view(event.id, event.type, event.tenant_id, event.created_at, spec.id, data)
    view["deliveries"] = [
        {"id": d.id, "webhook_id": d.webhook_id, "status": "pending"} for d in planned
    ]
    view["undeliverable"] = undeliverable
    answer = None if commit is None else commit.lua(view)
    first = await ctx.deliveries.accept(event, planned, answer)
    if first is not None:
        return await event_view(ctx, await ctx.events.get(first)), False
    ctx.counts.add(f"events_accepted:{spec.type}")
    if undeliverable is not None:
        ctx.counts.add(f"events_undelivered:{undeliverable.value}")
    return view, True


def _view(
    event_id: str,
    type_name: str,
    tenant_id: str,
    created_at: str,
    upstream_id: str | None,
    data: object,
) -> dict[str, object]:
    return {
        "id": event_id,
        "type": type_name,
        "tenant_id": tenant_id,
        "created_at": created_at,
        "upstream_id": upstream_id,
        "data": data,
    }


def event_summary(event: StoredEvent) -> dict[str, object]:
    """An event as a list shows it: without its deliveries."""
    return _view(
        event.id,
        event.type,
        event.tenant_id,
        event.created_at,
        event.upstream_id,
        orjson.loads(event.payload)["data"],
    )


async def event_view(ctx: Services, event: StoredEvent) -> dict[str, object]:
    """An event as the API shows it, with its deliveries' current status."""
    view = event_summary(event)
    view["deliveries"] = [
        {"id": d.id, "webhook_id": d.webhook_id, "status": d.status.value}
        for d in await ctx.deliveries.many(event.delivery_ids)
    ]
    return view
