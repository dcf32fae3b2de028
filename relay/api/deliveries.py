"""Delivery logs and operator actions: list, inspect, retry, cancel, recover."""

from __future__ import annotations

from typing import Annotated, Literal

import pydantic
from pydantic import Field, StringConstraints, WithJsonSchema
from starlette.requests import Request
from starlette.responses import Response

from relay.api.bodies import listing, ok, read_model
from relay.api.pagination import id_param, id_schema, page_params, page_request
from relay.api.routing import OWNERS, Operation, Param
from relay.api.shapes import (
    Count,
    DeliveryId,
    EventId,
    Headers,
    HttpStatus,
    Shape,
    Timestamp,
    WebhookId,
)
from relay.api.times import TIME, query_ms
from relay.api.trail import Audit
from relay.api.webhooks import ID, visible_webhook
from relay.delivery import actions, model, recovery
from relay.delivery.model import Status, Trigger
from relay.delivery.store import DeliveryFilter
from relay.errors import Invalid, NotFound
from relay.ids import pattern as id_pattern
from relay.resources import resources
from relay.timefmt import parse_rfc3339
from relay.tokens import Principal
from relay.validation import TenantId


class RecoverWindow(pydantic.BaseModel):
    """`POST /v1/webhooks/{id}/recover`: failed deliveries created in this window go again."""

    model_config = pydantic.ConfigDict(extra="forbid")

    since: str
    until: str | None = None


_MOMENT = WithJsonSchema({"type": "string", "format": "date-time"})


class RecoverySelection(pydantic.BaseModel):
    """`POST /v1/recoveries`: the failed deliveries that match go again, as the delivery list
    filters them (every field optional; a tenant token's are its own tenant's)."""

    model_config = pydantic.ConfigDict(extra="forbid")

    webhook_id: str | None = pydantic.Field(None, pattern=id_pattern("wh"))
    tenant_id: TenantId | None = None
    # Nothing relay stores can hold a NUL character, so no filter has one.
    event_type: str | None = pydantic.Field(None, max_length=255, pattern=r"^[^\x00]*$")
    since: Annotated[str, _MOMENT] | None = None
    until: Annotated[str, _MOMENT] | None = pydantic.Field(
        None, description="Not before `since` (422 otherwise)"
    )


class Attempt(Shape):
    """One try at a delivery: what was sent and what the endpoint answered."""

    # Read from the attempt log's records (model.Attempt's fields, in their order).
    source = model.Attempt

    number: Annotated[int, Field(ge=1)]
    started_at: Timestamp
    duration_ms: Count
    status_code: HttpStatus | None
    error: str | None
    response_body: str = Field(
        description="The start of the response: RELAY_CAPTURE_RESPONSE_BYTES (4 KiB)"
    )
    request_headers: Headers = Field(
        description="What was sent; the webhook's custom headers show '[redacted]' for a value"
    )
    # Optional: attempts logged before relay recorded it have none.
    url: str = Field("", description="Where the attempt went (empty if none was made)")
    trigger: Trigger = Field(
        description="What made it: the retry schedule, or an operator's retry of a pending "
        "delivery (manual: outside the schedule, which it neither uses up nor moves)"
    )


class Delivery(Shape):
    """One event on its way to one webhook."""

    source = model.Delivery

    id: DeliveryId
    event_id: EventId
    webhook_id: WebhookId
    tenant_id: TenantId
    event_type: str
    status: Status
    attempt_count: Count
    next_attempt_at: Timestamp | None
    last_status_code: HttpStatus | None
    last_error: str | None
    created_at: Timestamp
    updated_at: Timestamp
    delivered_at: Timestamp | None


class DeliveryWithAttempts(Delivery):
    """A delivery with its attempt log, oldest first."""

    added = frozenset({"attempts"})

    attempts: list[Attempt]


class Recovery(Shape):
    """Failed deliveries of a time window being sent again — one webhook's, or those a filter
    selects — and how far that has got."""

    source = model.Recovery
    added = frozenset({"url"})

    id: Annotated[str, StringConstraints(pattern=id_pattern("rcv"))]
    webhook_id: WebhookId | None = Field(description="Only this webhook's deliveries; null: any")
    tenant_id: TenantId | None = Field(description="Only this tenant's deliveries; null: any")
    event_type: str | None = Field(description="Only deliveries of this event type; null: any")
    status: Literal["running", "done"]
    requeued: Count = Field(description="Failed deliveries sent again so far")
    since: Timestamp
    until: Timestamp
    url: str = Field(description="Where to GET the recovery's progress")


def _window(since: str | None, until: str | None) -> tuple[int | None, int | None]:
    """[since, until] as unix milliseconds (None where open); 422 when it ends before it starts."""
    start = parse_rfc3339(since, "since") if since is not None else None
    end = parse_rfc3339(until, "until") if until is not None else None
    if start is not None and end is not None and end < start:
        raise Invalid("The window ends before it starts.", {"until": ["must not be before since"]})
    return (
        int(start.timestamp() * 1000) if start else None,
        int(end.timestamp() * 1000) if end else None,
    )


def _recovery(found: model.Recovery) -> Recovery:
    # One webhook's recovery is found under that webhook too, and is shown there.
    base = f"/v1/webhooks/{found.webhook_id}" if found.webhook_id else "/v1"
    return Recovery.read(found, url=f"{base}/recoveries/{found.id}")


def _started(started: model.Recovery) -> Response:
    answer = _recovery(started)
    return ok(answer, 202, headers={"location": answer.url})


def _status(request: Request) -> Status | None:
    value = request.query_params.get("status")
    if not value:
        return None
    try:
        return Status(value)
    except ValueError:
        choices = ", ".join(s.value for s in Status)
        raise Invalid("Unknown status.", {"status": [f"one of {choices}"]}) from None


def _page(found: list[model.Delivery], cursor: str | None) -> Response:
    return listing([Delivery.read(d) for d in found], cursor)


async def _visible_delivery(request: Request, principal: Principal) -> model.Delivery:
    # By the delivery's own tenant, so that the log of a deleted webhook stays readable until
    # retention ends.
    delivery = await resources(request).deliveries.get(request.path_params["delivery_id"])
    if delivery.webhook_id != request.path_params["id"]:
        raise NotFound("No such delivery.")
    principal.check_visible(delivery.tenant_id, "delivery")
    return delivery


async def webhook_deliveries(request: Request, principal: Principal) -> Response:
    """One webhook's deliveries, newest first, filtered by status, event type and time."""
    webhook = await visible_webhook(request, principal, request.path_params["id"])
    page = page_request(request, "dlv")
    query = DeliveryFilter(
        webhook_id=webhook.id,
        tenant_id=webhook.tenant_id,
        status=_status(request),
        event_type=request.query_params.get("event_type") or None,
        since_ms=query_ms(request, "since"),
        until_ms=query_ms(request, "until"),
    )
    return _page(*await resources(request).deliveries.page(query, page.limit, page.cursor))


async def all_deliveries(request: Request, principal: Principal) -> Response:
    """The operator view: deliveries across webhooks, by webhook, tenant and status."""
    page = page_request(request, "dlv")
    webhook_id = request.query_params.get("webhook_id")
    tenant_id = principal.tenant_scope(request.query_params.get("tenant_id") or None)
    if webhook_id:
        webhook = await visible_webhook(request, principal, webhook_id)
        webhook_id, tenant_id = webhook.id, webhook.tenant_id
    query = DeliveryFilter(
        webhook_id=webhook_id,
        tenant_id=tenant_id,
        status=_status(request),
        event_type=request.query_params.get("event_type") or None,
        since_ms=query_ms(request, "since"),
        until_ms=query_ms(request, "until"),
    )
    return _page(*await resources(request).deliveries.page(query, page.limit, page.cursor))


async def _with_attempts(request: Request, delivery: model.Delivery) -> Response:
    # The log's records, as history and Redis keep them: one logged before attempts recorded
    # their url has none (nor gets one here).
    attempts = await resources(request).deliveries.attempts(delivery)
    return ok(DeliveryWithAttempts.read(delivery, attempts=attempts))


async def get_delivery(request: Request, principal: Principal) -> Response:
    """A delivery with its attempt log."""
    return await _with_attempts(request, await _visible_delivery(request, principal))


async def get_delivery_by_id(request: Request, principal: Principal) -> Response:
    """A delivery with its attempt log, by its id alone; another tenant's is a 404."""
    delivery = await resources(request).deliveries.get(request.path_params["id"])
    principal.check_visible(delivery.tenant_id, "delivery")
    return await _with_attempts(request, delivery)


async def retry_delivery(request: Request, principal: Principal) -> Response:
    """A finished delivery starts again, a pending one gets a manual attempt now; 409 while
    delivering."""
    delivery = await _visible_delivery(request, principal)
    return ok(Delivery.read(await actions.retry(resources(request), delivery)), 202)


async def cancel_delivery(request: Request, principal: Principal) -> Response:
    """Cancel a pending delivery: it is never sent afterwards."""
    delivery = await _visible_delivery(request, principal)
    return ok(Delivery.read(await actions.cancel(resources(request), delivery)))


async def recover_webhook(request: Request, principal: Principal) -> Response:
    """Send again every failed delivery of the webhook created in [since, until]."""
    window = await read_model(request, RecoverWindow)
    webhook = await visible_webhook(request, principal, request.path_params["id"])
    since_ms, until_ms = _window(window.since, window.until)
    selection = DeliveryFilter(
        webhook_id=webhook.id, tenant_id=webhook.tenant_id, since_ms=since_ms, until_ms=until_ms
    )
    return _started(await recovery.recover(resources(request), selection))


async def start_recovery(request: Request, principal: Principal) -> Response:
    """Send again every failed delivery the filter selects: a bulk retry of a filtered list."""
    spec = await read_model(request, RecoverySelection)
    since_ms, until_ms = _window(spec.since, spec.until)
    tenant_id = principal.tenant_scope(spec.tenant_id or None)
    webhook_id = spec.webhook_id or None
    if webhook_id:
        webhook = await visible_webhook(request, principal, webhook_id)
        if tenant_id not in (None, webhook.tenant_id):
            raise Invalid("The webhook is another tenant's.", {"webhook_id": ["not this tenant's"]})
        webhook_id, tenant_id = webhook.id, webhook.tenant_id
    selection = DeliveryFilter(
        webhook_id=webhook_id,
        tenant_id=tenant_id,
        event_type=spec.event_type or None,
        since_ms=since_ms,
        until_ms=until_ms,
    )
    return _started(await recovery.recover(resources(request), selection))


async def _visible_recovery(request: Request, principal: Principal) -> dict[str, str]:
    record = await resources(request).recoveries.recovery(request.path_params["recovery_id"])
    # One of every tenant's (tenant_id empty) is an admin's alone.
    principal.check_visible(record["tenant_id"], "recovery")
    return record


async def get_recovery(request: Request, principal: Principal) -> Response:
    """How far a recovery has got."""
    return ok(_recovery(recovery.recovery_view(await _visible_recovery(request, principal))))


async def get_webhook_recovery(request: Request, principal: Principal) -> Response:
    """How far a recovery of this webhook's deliveries has got."""
    webhook = await visible_webhook(request, principal, request.path_params["id"])
    record = await _visible_recovery(request, principal)
    if record["webhook_id"] != webhook.id:
        raise NotFound("No such recovery.")
    return ok(_recovery(recovery.recovery_view(record)))


DELIVERY = (*ID, id_param("dlv", "delivery_id"))
STATUS = Param("status", schema={"type": "string", "enum": [s.value for s in Status]})

OPERATIONS = [
    Operation(
        "GET",
        "/v1/webhooks/{id}/deliveries",
        webhook_deliveries,
        "List a webhook's deliveries",
        OWNERS,
        "deliveries",
        answers=Delivery,
        params=(*ID, *page_params("dlv"), STATUS, Param("event_type"), *TIME),
        list_of=True,
    ),
    Operation(
        "GET",
        "/v1/deliveries",
        all_deliveries,
        "List deliveries",
        OWNERS,
        "deliveries",
        answers=Delivery,
        looks_up=True,
        params=(
            *page_params("dlv"),
            Param("webhook_id", schema=id_schema("wh")),
            Param("tenant_id"),
            STATUS,
            Param("event_type"),
            *TIME,
        ),
        list_of=True,
    ),
    Operation(
        "GET",
        "/v1/deliveries/{id}",
        get_delivery_by_id,
        "Get a delivery with its attempts",
        OWNERS,
        "deliveries",
        answers=DeliveryWithAttempts,
        params=(id_param("dlv"),),
    ),
    Operation(
        "GET",
        "/v1/webhooks/{id}/deliveries/{delivery_id}",
        get_delivery,
        "Get a delivery with its attempts",
        OWNERS,
        "deliveries",
        answers=DeliveryWithAttempts,
        params=DELIVERY,
    ),
    Operation(
        "POST",
        "/v1/webhooks/{id}/deliveries/{delivery_id}/retry",
        retry_delivery,
        "Retry a delivery",
        OWNERS,
        "deliveries",
        answers=Delivery,
        params=DELIVERY,
        status=202,
        audit=Audit("delivery.retry"),
        # Again, it finds the delivery pending and asks for a manual attempt once more (its
        # schedule untouched); one that was delivered meanwhile goes once more, which
        # at-least-once receivers dedupe by its id.
        repeats=True,
    ),
    Operation(
        "POST",
        "/v1/webhooks/{id}/deliveries/{delivery_id}/cancel",
        cancel_delivery,
        "Cancel a pending delivery",
        OWNERS,
        "deliveries",
        answers=Delivery,
        params=DELIVERY,
        audit=Audit("delivery.cancel"),
        # Again, it finds the delivery canceled and changes nothing (409 says so).
        repeats=True,
    ),
    Operation(
        "POST",
        "/v1/webhooks/{id}/recover",
        recover_webhook,
        "Resend failed deliveries of a time window",
        OWNERS,
        "deliveries",
        answers=Recovery,
        body=RecoverWindow,
        params=ID,
        status=202,
        audit=Audit("webhook.recover", object_field="webhook_id"),
        # Batches that may outlive the request; again, it restarts only deliveries still
        # failed, so those the first run restarted are left alone.
        repeats=True,
    ),
    Operation(
        "GET",
        "/v1/webhooks/{id}/recoveries/{recovery_id}",
        get_webhook_recovery,
        "Get a recovery's progress",
        OWNERS,
        "deliveries",
        answers=Recovery,
        params=(*ID, id_param("rcv", "recovery_id")),
    ),
    Operation(
        "POST",
        "/v1/recoveries",
        start_recovery,
        "Resend the failed deliveries a filter selects",
        OWNERS,
        "deliveries",
        answers=Recovery,
        looks_up=True,
        body=RecoverySelection,
        status=202,
        audit=Audit("deliveries.recover"),
        # Batches that may outlive the request; again, it restarts only deliveries still
        # failed, so those the first run restarted are left alone.
        repeats=True,
    ),
    Operation(
        "GET",
        "/v1/recoveries/{recovery_id}",
        get_recovery,
        "Get a recovery's progress",
        OWNERS,
        "deliveries",
        answers=Recovery,
        params=(id_param("rcv", "recovery_id"),),
    ),
]
