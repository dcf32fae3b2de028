"""/v1/events: upstream services post events; owners read them and retry failed deliveries."""

from __future__ import annotations

from typing import Any, ClassVar

import orjson
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response

from relay.api.bodies import listing, ok, read_json, read_model
from relay.api.errors import problem_fields
from relay.api.idempotency import commit, in_steps
from relay.api.pagination import id_param, page_params, page_request
from relay.api.routing import OWNERS, Operation, Param, reserve_segment
from relay.api.shapes import Count, DeliveryId, EventId, HttpStatus, Shape, Timestamp, WebhookId
from relay.api.times import TIME, query_ms
from relay.api.trail import Audit
from relay.config import Settings
from relay.delivery import actions
from relay.delivery.accept import (
    Accepted,
    DeliveryState,
    Outcome,
    Posted,
    Tracked,
    accept,
    accept_batch,
    event_summary,
    event_view,
)
from relay.delivery.model import Status
from relay.errors import Invalid, PayloadTooLarge, RelayError
from relay.resources import resources
from relay.roles import Role
from relay.store.events import EventFilter, StoredEvent
from relay.tokens import Principal
from relay.validation import TenantId, parse_object
from relay.webhooks import Undeliverable

ID = (id_param("evt"),)
BATCH_PATH = "/v1/events/batch"
# The routes upstream services post events to: most of all requests.
INGEST = {("POST", "/v1/events"), ("POST", BATCH_PATH)}
POSTERS = frozenset({Role.ADMIN, Role.INGEST})
READERS = frozenset({Role.ADMIN, Role.INGEST, Role.TENANT})


# /v1/events/batch is an operation of its own (POST): routes name `{id:event}`.
reserve_segment("event", "batch")


class EventIn(BaseModel):
    """`POST /v1/events`: an upstream event; `id` makes repeats harmless."""

    model_config = ConfigDict(extra="forbid")

    type: str
    tenant_id: TenantId
    data: Any
    # PostgreSQL text holds no NUL: an id with one could never be written to history.
    id: str | None = Field(None, min_length=1, max_length=255, pattern=r"^[^\x00]+$")


class BatchIn(BaseModel):
    """`POST /v1/events/batch`: events each accepted or refused on its own, as `POST
    /v1/events` would, in one request."""

    model_config = ConfigDict(extra="forbid")

    events: list[EventIn] = Field(
        min_length=1,
        description="At most RELAY_MAX_BATCH_EVENTS (default 100) events; each at most "
        "RELAY_MAX_BODY_BYTES as JSON",
    )


class EventSummary(Shape):
    """An event as a list shows it."""

    source: ClassVar[type | tuple[type, ...] | None] = Posted
    as_is = True

    id: EventId
    type: str
    tenant_id: TenantId
    created_at: Timestamp
    upstream_id: str | None
    data: dict[str, Any]


class EventDelivery(Shape):
    """One of an event's deliveries, and where it is."""

    source = DeliveryState
    as_is = True

    id: DeliveryId
    webhook_id: WebhookId
    status: Status


class Event(EventSummary):
    """An event with its deliveries' current status."""

    source: ClassVar[type | tuple[type, ...] | None] = Tracked

    deliveries: list[EventDelivery]


class AcceptedEvent(Event):
    """An event just accepted, with why it goes nowhere if it does."""

    source = Accepted

    # Absent from the answer to a repeated upstream id, which shows the first event as it is now.
    undeliverable: Undeliverable | None = Field(
        None,
        description="Set when the event has no deliveries: no_webhooks (the tenant has none), "
        "no_subscribers (none subscribes to this type) or webhooks_disabled",
    )


class BatchResult(Shape):
    """What became of one event of a batch, as `POST /v1/events` would have answered it alone:
    its status, with the event (202 accepted, 200 a repeat of its upstream `id`) or with the
    problem that refused it (`type` … `errors`: 413 too large, 422 invalid, 503 not taken now)."""

    status: HttpStatus
    data: AcceptedEvent | None = None
    type: str | None = None
    title: str | None = None
    detail: str | None = None
    code: str | None = None
    errors: dict[str, list[str]] | None = None


class RetriedEvent(Event):
    """An event whose failed deliveries went again."""

    added = frozenset({"requeued"})
    as_is = False

    requeued: Count


async def _visible_event(request: Request, principal: Principal) -> StoredEvent:
    event = await resources(request).events.get(request.path_params["id"])
    principal.check_visible(event.tenant_id, "event")
    return event


def _accepted(event: Accepted) -> Response:
    return ok(event, 202)


async def post_event(request: Request, principal: Principal) -> Response:
    """Accept an event: 202 once it and its deliveries are durably stored; 200 for a repeat."""
    spec = await read_model(request, EventIn)
    event, created = await accept(resources(request), spec, commit(_accepted), principal.check)
    # A repeat of an upstream id shows the first event as it is now, without `undeliverable`.
    return ok(event, 202 if created else 200)


async def post_batch(request: Request, principal: Principal) -> Response:
    """Accept each event of a batch on its own: 207 with one result per event, in order."""
    ctx = resources(request)
    items = batch_items(await read_json(request), ctx.settings)
    outcomes = await accept_batch(ctx, items, in_steps(), principal.check)
    return ok([_result(o) for o in outcomes], 207)


def _result(outcome: Outcome) -> dict[str, object]:
    if isinstance(outcome, RelayError):
        return problem_fields(outcome)
    event, created = outcome
    return {"status": 202 if created else 200, "data": event}


def batch_items(body: object, settings: Settings) -> list[EventIn | RelayError]:
    """The events of a batch, each parsed or refused on its own (a 413 past
    RELAY_MAX_BODY_BYTES, a 422 naming its fields); Invalid when the body is not a batch of 1
    to RELAY_MAX_BATCH_EVENTS events."""
    if not isinstance(body, dict):
        raise Invalid("The body must be a JSON object.", {"body": ["must be an object"]})
    errors = {name: ["Extra inputs are not permitted"] for name in body if name != "events"}
    events = body.get("events")
    most = settings.max_batch_events
    if not isinstance(events, list):
        errors["events"] = ["must be a list of events"]
    elif not 1 <= len(events) <= most:
        errors["events"] = [
            f"must hold 1 to {most} events (RELAY_MAX_BATCH_EVENTS); this one holds {len(events)}"
        ]
    if errors or not isinstance(events, list):
        raise Invalid(f'The body must be {{"events": [...]}} with 1 to {most} events.', errors)
    return [_item(raw, settings.max_body_bytes) for raw in events]


def _item(raw: object, max_bytes: int) -> EventIn | RelayError:
    # An event of a batch is held to what it would be held to posted alone.
    if len(orjson.dumps(raw)) > max_bytes:
        return PayloadTooLarge(
            f"The event is larger than {max_bytes} bytes (RELAY_MAX_BODY_BYTES)."
        )
    try:
        return parse_object(EventIn, raw)
    except Invalid as refused:
        return refused


async def list_events(request: Request, principal: Principal) -> Response:
    """Events newest first, by type, upstream id and time; a tenant token sees its own."""
    page = page_request(request, "evt")
    query = EventFilter(
        tenant_id=principal.tenant_scope(request.query_params.get("tenant_id") or None),
        type=request.query_params.get("type") or None,
        upstream_id=request.query_params.get("id") or None,
        since_ms=query_ms(request, "since"),
        until_ms=query_ms(request, "until"),
    )
    found, cursor = await resources(request).events.page(query, page.limit, page.cursor)
    return listing([event_summary(e) for e in found], cursor)


async def get_event(request: Request, principal: Principal) -> Response:
    """An event with its deliveries."""
    return ok(await event_view(resources(request), await _visible_event(request, principal)))


async def retry_event(request: Request, principal: Principal) -> Response:
    """Send this event's failed deliveries again; delivered ones are left alone."""
    ctx = resources(request)
    event = await _visible_event(request, principal)
    requeued = await actions.retry_failures(ctx, event)
    return ok(RetriedEvent.read(await event_view(ctx, event), requeued=requeued), 202)


OPERATIONS = [
    Operation(
        "POST",
        "/v1/events",
        post_event,
        "Post an event",
        POSTERS,
        "events",
        answers=AcceptedEvent,
        body=EventIn,
        status=202,
        also_succeeds=(
            (200, "A repeat of an upstream `id`: the first event; nothing new is created"),
        ),
        replicated=True,
        token_checked=True,
    ),
    Operation(
        "POST",
        BATCH_PATH,
        post_batch,
        "Post a batch of events",
        POSTERS,
        "events",
        answers=BatchResult,
        body=BatchIn,
        status=207,
        per_item=True,
        replicated=True,
        token_checked=True,
    ),
    Operation(
        "GET",
        "/v1/events",
        list_events,
        "List events",
        OWNERS,
        "events",
        answers=EventSummary,
        looks_up=True,
        params=(
            *page_params("evt"),
            Param("type", description="Only events of this type"),
            Param("id", description="Only events posted with this upstream id"),
            Param("tenant_id", description="Only this tenant's events"),
            *TIME,
        ),
        list_of=True,
    ),
    Operation(
        "GET",
        "/v1/events/{id:event}",
        get_event,
        "Get an event and its deliveries",
        READERS,
        "events",
        answers=Event,
        params=ID,
    ),
    Operation(
        "POST",
        "/v1/events/{id}/retry",
        retry_event,
        "Retry an event's failed deliveries",
        OWNERS,
        "events",
        answers=RetriedEvent,
        params=ID,
        status=202,
        audit=Audit("event.retry"),
        # Batches; again, it restarts only deliveries still failed.
        repeats=True,
    ),
]
