"""/v1/events: upstream services post events; owners read them and retry failed deliveries."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from relay.api import shapes
from relay.api.bodies import listing, ok, read_json, read_model
from relay.api.errors import problem_fields
from relay.api.idempotency import commit, in_steps
from relay.api.pagination import id_param, page_params, page_request
from relay.api.routing import OWNERS, Operation, Param, reserve_segment
from relay.api.times import TIME, query_ms
from relay.audit import Audit
from relay.delivery import actions
from relay.delivery.accept import (
    BatchIn,
    EventIn,
    Outcome,
    accept,
    accept_batch,
    batch_items,
    event_summary,
    event_view,
)
from relay.errors import RelayError
from relay.resources import resources
from relay.roles import Role
from relay.store.events import EventFilter, StoredEvent
from relay.tokens import Principal

ID = (id_param("evt"),)
BATCH_PATH = "/v1/events/batch"
POSTERS = frozenset({Role.ADMIN, Role.INGEST})
READERS = frozenset({Role.ADMIN, Role.INGEST, Role.TENANT})


# /v1/events/batch is an operation of its own (POST): routes name `{id:event}`.
reserve_segment("event", "batch")


async def _visible_event(request: Request, principal: Principal) -> StoredEvent:
    event = await resources(request).events.get(request.path_params["id"])
    principal.check_visible(event.tenant_id, "event")
    return event


def _accepted(view: dict[str, object]) -> Response:
    return ok(view, 202)


async def post_event(request: Request, principal: Principal) -> Response:
    """Accept an event: 202 once it and its deliveries are durably stored; 200 for a repeat."""
    spec = await read_model(request, EventIn)
    view, created = await accept(resources(request), spec, commit(_accepted), principal.check)
    return _accepted(view) if created else ok(view, 200)


async def post_batch(request: Request, principal: Principal) -> Response:
    """Accept each event of a batch on its own: 207 with one result per event, in order."""
    ctx = resources(request)
    items = batch_items(await read_json(request), ctx.settings)
    outcomes = await accept_batch(ctx, items, in_steps(), principal.check)
    return ok([_result(o) for o in outcomes], 207)


def _result(outcome: Outcome) -> dict[str, object]:
    if isinstance(outcome, RelayError):
        return problem_fields(outcome)
    view, created = outcome
    return {"status": 202 if created else 200, "data": view}


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
    return ok({**await event_view(ctx, event), "requeued": requeued}, 202)


OPERATIONS = [
    Operation(
        "POST",
        "/v1/events",
        post_event,
        "Post an event",
        POSTERS,
        "events",
        answers=shapes.AcceptedEvent,
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
        answers=shapes.BatchResult,
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
        answers=shapes.EventSummary,
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
        answers=shapes.Event,
        params=ID,
    ),
    Operation(
        "POST",
        "/v1/events/{id}/retry",
        retry_event,
        "Retry an event's failed deliveries",
        OWNERS,
        "events",
        answers=shapes.RetriedEvent,
        params=ID,
        status=202,
        audit=Audit("event.retry"),
        # Batches; again, it restarts only deliveries still failed.
        repeats=True,
    ),
]
