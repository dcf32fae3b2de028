"""/v1/stats: the figures the console's overview draws, from the per-minute counters in history.

Admins see everyone's or narrow to a tenant; a tenant token sees its own tenant's only. Either
may narrow to one webhook it may see (another tenant's is a 404)."""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response

from relay import stats
from relay.api.bodies import ok
from relay.api.pagination import id_schema
from relay.api.routing import OWNERS, Operation, Param
from relay.api.shapes import Count, OneOf, Shape, Timestamp
from relay.api.webhooks import Webhook, visible_webhook
from relay.errors import Invalid
from relay.resources import resources
from relay.stats import WINDOWS, Scope, overview
from relay.timefmt import now
from relay.tokens import Principal


class DeliveryCounts(Shape):
    """Deliveries that finished, by how (every status in relay.delivery.model.FINISHED)."""

    delivered: Count
    failed: Count
    canceled: Count


class Figures(Shape):
    """Events, attempts, finished deliveries, success rate and latency over a span of time."""

    source: ClassVar[type | tuple[type, ...] | None] = stats.Figures

    events_accepted: Count
    attempts: Count
    attempts_succeeded: Count
    success_rate: Annotated[float, Field(ge=0, le=1)] | None
    deliveries: DeliveryCounts
    latency_p50_ms: Count | None
    latency_p95_ms: Count | None


class _Start(Shape):
    start: Timestamp


# After Figures in the bases: a point's `start` comes first, as in every answer so far.
class Point(Figures, _Start):
    """One point of a chart: the figures of the step that starts at `start`."""

    source = stats.Point


class TroubledWebhook(Webhook):
    """A webhook that is failing or disabled."""

    added = frozenset({"failing_since"})

    failing_since: Timestamp | None


class Stats(Shape):
    """The overview: figures over the last hour or day, and what needs care."""

    source = stats.Overview
    added = frozenset({"webhooks"})

    window: Annotated[str, OneOf(tuple(WINDOWS))]
    since: Timestamp
    until: Timestamp
    step_seconds: Count
    totals: Figures
    series: list[Point]
    backlog: Count
    webhooks: list[TroubledWebhook]


async def _scope(request: Request, principal: Principal) -> Scope:
    tenant_id = principal.tenant_scope(request.query_params.get("tenant_id") or None)
    webhook_id = request.query_params.get("webhook_id")
    if not webhook_id:
        return Scope(tenant_id)
    webhook = await visible_webhook(request, principal, webhook_id)
    return Scope(webhook.tenant_id, webhook.id)


async def get_stats(request: Request, principal: Principal) -> Response:
    """Totals and a chart series for the last hour or day, the backlog and troubled webhooks."""
    name = request.query_params.get("window") or "hour"
    window = WINDOWS.get(name)
    if window is None:
        raise Invalid("Unknown window.", {"window": [f"one of {', '.join(WINDOWS)}"]})
    scope = await _scope(request, principal)
    found = await overview(resources(request), window, now(), scope)
    troubled = [TroubledWebhook.read(w, failing_since=since) for w, since in found.troubled]
    return ok(Stats.read(found, webhooks=troubled))


OPERATIONS = [
    Operation(
        "GET",
        "/v1/stats",
        get_stats,
        "Delivery figures over the last hour or day",
        OWNERS,
        "operations",
        answers=Stats,
        looks_up=True,
        params=(
            Param("window", schema={"type": "string", "enum": list(WINDOWS)}),
            Param("tenant_id", description="an admin's view of one tenant"),
            Param(
                "webhook_id",
                schema=id_schema("wh"),
                description="one webhook's attempts, deliveries and backlog (no events)",
            ),
        ),
    ),
]
