"""Delivery logs and operator actions: list, inspect, retry, cancel, recover."""

from __future__ import annotations

import pydantic
from starlette.requests import Request
from starlette.responses import Response

from relay.api import shapes
from relay.api.bodies import listing, ok, read_model
from relay.api.pagination import id_param, id_schema, page_params, page_request
from relay.api.routing import Operation, Param
from relay.api.times import TIME, query_ms
from relay.api.webhooks import ID, OWNERS, visible_webhook
from relay.audit import Audit
from relay.delivery import service
from relay.delivery.model import Delivery, Status
from relay.delivery.store import DeliveryFilter
from relay.errors import Invalid, NotFound
from relay.services import services
from relay.timefmt import parse_rfc3339
from relay.tokens import Principal


class RecoverWindow(pydantic.BaseModel):
    """`POST /v1/webhooks/{id}/recover`: failed deliveries created in this window go again."""

    model_config = pydantic.ConfigDict(extra="forbid")

    since: str
    until: str | None = None


def _status(request: Request) -> Status | None:
    value = request.query_params.get("status")
    if not value:
        return None
    try:
        return Status(value)
    except ValueError:
        choices = ", ".join(s.value for s in Status)
        raise Invalid("Unknown status.", {"status": [f"one of {choices}"]}) from None


def _page(found: list[Delivery], cursor: str | None) -> Response:
    return listing([d.public() for d in found], cursor)


async def _visible_delivery(request: Request, principal: Principal) -> Delivery:
    # By the delivery's own tenant, so that the log of a deleted webhook stays readable until
    # retention ends.
    delivery = await services(request).deliveries.get(request.path_params["delivery_id"])
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
    return _page(*await services(request).deliveries.page(query, page.limit, page.cursor))


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
    return _page(*await services(request).deliveries.page(query, page.limit, page.cursor))


async def _with_attempts(request: Request, delivery: Delivery) -> Response:
    attempts = await services(request).deliveries.attempts(delivery)
    return ok({**delivery.public(), "attempts": attempts})


async def get_delivery(request: Request, principal: Principal) -> Response:
    """A delivery with its attempt log."""
    return await _with_attempts(request, await _visible_delivery(request, principal))


async def get_delivery_by_id(request: Request, principal: Principal) -> Response:
    """A delivery with its attempt log, by its id alone; another tenant's is a 404."""
    delivery = await services(request).deliveries.get(request.path_params["id"])
    principal.check_visible(delivery.tenant_id, "delivery")
    return await _with_attempts(request, delivery)


async def retry_delivery(request: Request, principal: Principal) -> Response:
    """A finished delivery starts again, a pending one gets a manual attempt now; 409 while
    delivering."""
    delivery = await _visible_delivery(request, principal)
    return ok((await service.retry(services(request), delivery)).public(), 202)


async def cancel_delivery(request: Request, principal: Principal) -> Response:
    """Cancel a pending delivery: it is never sent afterwards."""
    delivery = await _visible_delivery(request, principal)
    return ok((await service.cancel(services(request), delivery)).public())


async def recover_webhook(request: Request, principal: Principal) -> Response:
    """Send again every failed delivery of the webhook created in [since, until]."""
    window = await read_model(request, RecoverWindow)
    webhook = await visible_webhook(request, principal, request.path_params["id"])
    since = parse_rfc3339(window.since, "since")
    until = parse_rfc3339(window.until, "until") if window.until else None
    if until is not None and until < since:
        raise Invalid("The window ends before it starts.", {"until": ["must not be before since"]})
    since_ms = int(since.timestamp() * 1000)
    until_ms = int(until.timestamp() * 1000) if until else 2**47
    view = await service.recover(services(request), webhook, since_ms, until_ms)
    return ok(view, 202, headers={"location": str(view["url"])})


async def get_recovery(request: Request, principal: Principal) -> Response:
    """How far a recovery has got."""
    webhook = await visible_webhook(request, principal, request.path_params["id"])
    record = await services(request).deliveries.recovery(request.path_params["recovery_id"])
    if record["webhook_id"] != webhook.id:
        raise NotFound("No such recovery.")
    return ok(service.recovery_view(record))


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
        answers=shapes.Delivery,
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
        answers=shapes.Delivery,
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
        answers=shapes.DeliveryWithAttempts,
        params=(id_param("dlv"),),
    ),
    Operation(
        "GET",
        "/v1/webhooks/{id}/deliveries/{delivery_id}",
        get_delivery,
        "Get a delivery with its attempts",
        OWNERS,
        "deliveries",
        answers=shapes.DeliveryWithAttempts,
        params=DELIVERY,
    ),
    Operation(
        "POST",
        "/v1/webhooks/{id}/deliveries/{delivery_id}/retry",
        retry_delivery,
        "Retry a delivery",
        OWNERS,
        "deliveries",
        answers=shapes.Delivery,
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
        answers=shapes.Delivery,
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
        answers=shapes.Recovery,
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
        get_recovery,
        "Get a recovery's progress",
        OWNERS,
        "deliveries",
        answers=shapes.Recovery,
        params=(*ID, id_param("rcv", "recovery_id")),
    ),
]
